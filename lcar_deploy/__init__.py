"""lcar-deploy: weakly-supervised object localization with LCAR.

The few names a user needs, imported on first use (``import lcar_deploy`` stays light)::

    import lcar_deploy

    loc = lcar_deploy.Localizer.from_bundle()  # the default bundle, or a bundle folder
    r = loc.localize("bird.jpg")  # or an RGB uint8 array; class_id= optional
    r.box, r.score, r.boxes, r.box_scores, r.no_object, r.mask  # in the image's own pixels

    lcar_deploy.evaluate("cub", "CUB_200_2011", bundle="bundles/cub", out="runs/eval-cub")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Localizer": "lcar_deploy.pipeline",
    "Result": "lcar_deploy.pipeline",
    "PipelineConfig": "lcar_deploy.config",
    "preset": "lcar_deploy.config",
    "Bundle": "lcar_deploy.bundle",
    "load_bundle": "lcar_deploy.bundle",
    "export_bundle": "lcar_deploy.export.exporter",
    "evaluate": "lcar_deploy.evaluation",
    "LcarError": "lcar_deploy.errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lcar_deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
