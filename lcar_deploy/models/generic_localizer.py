"""The generic localizer: a foreground head shipped inside the package for the default bundle.

A :class:`~lcar_deploy.models.heads.ForegroundHead` self-trained, class-agnostically, on every
train split we have (CUB and ILSVRC-mini; images and the embedded classifier's CAM only, no box
or mask), so that the untrained default bundle also has a learned localizer to blend with its
ImageNet CAM (``arm_input = foreground_cam``). It is made by
``python -m lcar_deploy.training.generic_localizer`` (:mod:`lcar_deploy.training.
generic_localizer`); why and how well: docs/experiments/2026-12-localizer.md, "A generic localizer for the default
bundle".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .backbones import BackboneConfig
from .heads import ForegroundHead, HeadsError
from .safe_load import load_file

GENERIC_LOCALIZER_FORMAT_VERSION = 1
GENERIC_LOCALIZER_DIR = Path(__file__).with_name("data")


def generic_localizer_path(backbone: str, input_size: int) -> Path:
    """Where the generic localizer of ``backbone`` at input size ``input_size`` is shipped."""
    return GENERIC_LOCALIZER_DIR / f"localizer-{backbone}-{input_size}.pt"


def save_generic_localizer(
    head: ForegroundHead, backbone: str, input_size: int, path: Path, info: dict[str, Any]
) -> None:
    """Write ``head`` with what it reads and how it was made (``info``: JSON-ready)."""
    torch.save(
        {
            "format_version": GENERIC_LOCALIZER_FORMAT_VERSION,
            "backbone": backbone,
            "input_size": input_size,
            "layers": list(head.layers),
            "dims": list(head.dims),
            "grid": head.grid,
            "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            "info": info,
        },
        path,
    )


def load_generic_localizer(
    backbone: str, input_size: int, path: Path | None = None
) -> tuple[ForegroundHead, dict[str, Any]] | None:
    """The shipped head and its ``info`` for this backbone and input size; None when none is
    shipped. A file that does not hold a head for them raises :class:`HeadsError`."""
    path = path or generic_localizer_path(backbone, input_size)
    if not path.is_file():
        return None
    payload = load_file(path, HeadsError, "generic localizer")
    expected = (GENERIC_LOCALIZER_FORMAT_VERSION, backbone, input_size)
    found = tuple(
        payload.get(k) if isinstance(payload, dict) else None
        for k in ("format_version", "backbone", "input_size")
    )
    if found != expected:
        raise HeadsError(
            f"{path}: generic localizer (format, backbone, input size) {found}, expected {expected}"
        )
    try:
        head = ForegroundHead(list(payload["layers"]), list(payload["dims"]), int(payload["grid"]))
        head.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise HeadsError(f"{path}: not a generic localizer ({exc})") from exc
    return head.eval(), dict(payload.get("info", {}))


def generic_localizer_info(config: BackboneConfig) -> dict[str, Any]:
    """What the bundle's manifest records of the generic localizer attached for ``config``."""
    shipped = load_generic_localizer(config.name, config.input_size)
    if shipped is None:
        raise HeadsError(
            f"no generic localizer is shipped for {config.name} at {config.input_size}"
        )
    return {
        "kind": "generic",
        "file": generic_localizer_path(config.name, config.input_size).name,
        **shipped[1],
    }
