"""``lcar-deploy``: export bundles, localize objects in folders, evaluate, train heads.

Heavy modules (torch, onnxruntime, the pipeline) are imported inside the commands so that
``lcar-deploy --help`` is instant.

Exit codes: 0 success; 1 error (bad arguments, missing files, bad bundle); 3 the run finished
but some images failed (each one has a ``status: error`` line in ``predictions.jsonl``).
"""

from __future__ import annotations

import contextlib
import io
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

EXIT_ERROR = 1
EXIT_SOME_IMAGES_FAILED = 3

app = typer.Typer(
    name="lcar-deploy",
    help=(
        "Weakly-supervised object localization with LCAR (Coarse2Fine): tight boxes and masks "
        "from a model trained with class labels only.\n\n"
        "Typical use:\n\n"
        "  lcar-deploy export                      # write the default bundle (once)\n\n"
        "  lcar-deploy localize photos/ --out runs/photos --overlays\n\n"
        "  lcar-deploy train --dataset cub --root CUB_200_2011 --out heads/cub\n\n"
        "  lcar-deploy eval --dataset cub --root CUB_200_2011 --bundle bundles/cub"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Backbone(str, Enum):
    efficientnet_lite0 = "efficientnet_lite0"
    dino_vits16 = "dino_vits16"


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    both = "both"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print ``message`` to stderr and return the Exit to raise."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  lcar-deploy export                                 # default bundle to the cache\n\n"
        "  lcar-deploy export --input-size 384 --out bundles/lite0-384\n\n"
        "  lcar-deploy export --heads runs/cub/heads.pt --out bundles/cub --format both\n\n"
        "  lcar-deploy export --backbone dino_vits16 --weights dino_deitsmall16_pretrain.pth "
        "--heads heads.pt --out bundles/dino"
    )
)
def export(
    backbone: Annotated[
        Backbone, typer.Option(help="Backbone network.")
    ] = Backbone.efficientnet_lite0,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Local weights file (DINO or timm key format for dino_vits16). "
            "Default for efficientnet_lite0: the embedded ImageNet weights."
        ),
    ] = None,
    heads: Annotated[
        Path | None,
        typer.Option(help="heads.pt from `lcar-deploy train`. Default: the backbone's classifier."),
    ] = None,
    input_size: Annotated[
        int | None,
        typer.Option(
            help="Backbone input side S in pixels (default 320 for the CNN, 224 for DINO)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Bundle folder to write. Default: the per-user cache.")
    ] = None,
    format: Annotated[ExportFormat, typer.Option(help="Model files to write.")] = ExportFormat.onnx,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    random_init: Annotated[
        bool, typer.Option(hidden=True, help="Random backbone weights (tests only).")
    ] = False,
) -> None:
    """Export backbone + heads to a bundle (ONNX, optionally TorchScript) with a manifest."""
    from .bundle import BundleError, default_bundle_dir
    from .export.backbones import WeightsError
    from .export.exporter import export_bundle
    from .export.heads import HeadsError

    target = out or default_bundle_dir()
    if input_size is not None and input_size < 32:
        raise fail(f"--input-size must be at least 32, got {input_size}")
    typer.echo(f"exporting {backbone.value} to {target} ...", err=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            path = export_bundle(
                target,
                backbone=backbone.value,
                input_size=input_size,
                weights=str(weights) if weights else None,
                heads_path=str(heads) if heads else None,
                formats=format.value,
                opset=opset,
                random_init=random_init,
            )
    except (BundleError, WeightsError, HeadsError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(str(path))


def _not_implemented(command: str) -> typer.Exit:
    return fail(f"`lcar-deploy {command}` is not implemented yet")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def localize() -> None:
    """Localize objects in every image of a folder (not implemented yet)."""
    raise _not_implemented("localize")


@app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evaluate() -> None:
    """Evaluate localization on CUB or ILSVRC (not implemented yet)."""
    raise _not_implemented("eval")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train() -> None:
    """Train the SD-CAM heads on frozen features (not implemented yet)."""
    raise _not_implemented("train")


def main() -> None:
    app()
