"""Write a bundle: backbone + heads -> ``model.onnx`` (+ ``model.ts``) + ``manifest.json``."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..bundle import BUNDLE_FORMAT_VERSION, MANIFEST, BundleError, sha256_file
from ..config import generic_localizer_settings, merge_settings, preset, resolve_config, settings_of
from ..errors import QuantizationError, SettingError
from ..models.backbones import BackboneConfig, backbone_spec, check_input_size, default_config
from ..models.generic_localizer import generic_localizer_info
from ..models.heads import load_heads
from ..models.model import LcarModel, build_model
from ..names import EXPORT_FORMATS, QUANTIZE
from .quantize import DEFAULT_CALIBRATION_COUNT, calibration_images, quantize_int8


def export_onnx(model: LcarModel, input_size: int, path: Path, opset: int = 18) -> None:
    """ONNX graph with input ``image`` (B, 3, S, S) and dynamic batch."""
    example = torch.rand(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["image"],
        output_names=list(model.output_names),
        dynamic_shapes={"images": {0: batch}},
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def export_torchscript(model: LcarModel, input_size: int, path: Path) -> None:
    """TorchScript (traced) with the same outputs, as a tuple in ``output_names`` order."""
    example = torch.rand(2, 3, input_size, input_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still asked for
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(path))


def _versions() -> dict[str, str]:
    import onnx
    import timm

    from .. import __version__

    return {
        "lcar_deploy": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnx": onnx.__version__,
    }


def _class_namespace(heads_info: dict[str, Any] | None, has_heads: bool) -> str | None:
    """What the bundle's class ids refer to: ``imagenet`` (ImageNet ids), ``cub``, ..."""
    if not has_heads:
        return None
    dataset = (heads_info or {}).get("dataset")
    kind = dataset.get("kind") if isinstance(dataset, dict) else dataset
    if kind is None or kind == "ilsvrc":
        return "imagenet"
    return str(kind)


def _output_shapes(model: LcarModel, input_size: int) -> dict[str, list[int | str]]:
    with torch.no_grad():
        values = model(torch.zeros(1, 3, input_size, input_size))
    return {
        name: ["batch", *v.shape[1:]] for name, v in zip(model.output_names, values, strict=True)
    }


def check_bundle_target(out: Path, option: str = "--out") -> None:
    """BundleError unless ``out`` is absent, an empty folder or a bundle (replaced by export)."""
    out = Path(out)
    is_bundle = (out / MANIFEST).is_file()
    if out.exists() and not is_bundle and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: exists and is not a bundle folder; choose another {option}")


def write_bundle(
    model: LcarModel,
    config: BackboneConfig,
    out: Path,
    *,
    formats: str = "onnx",
    opset: int = 18,
    settings: dict[str, Any] | None = None,
    heads_info: dict[str, Any] | None = None,
    preset: str | None = None,
    calibration: list[Any] | None = None,
) -> Path:
    """Export ``model`` into the bundle folder ``out``, atomically (temp folder + rename).
    ``settings``: the full stage settings the bundle runs with, written from ``preset``.
    ``calibration``: preprocessed images (:func:`calibration_images`) to quantize the ONNX
    graph to int8 on (None: float32)."""
    if formats not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {formats!r}")
    if calibration is not None and formats != "onnx":
        raise QuantizationError(
            f"--quantize int8 quantizes the ONNX graph only; use --format onnx, not {formats!r}"
        )
    out = Path(out)
    check_bundle_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files = []
        if formats in ("onnx", "both"):
            export_onnx(model, config.input_size, tmp / "model.onnx", opset)
            files.append("model.onnx")
        quantization = None
        if calibration is not None:
            quantization = quantize_int8(tmp / "model.onnx", calibration)
        if formats in ("torchscript", "both"):
            export_torchscript(model, config.input_size, tmp / "model.ts")
            files.append("model.ts")
        backbone = model.backbone
        shapes = _output_shapes(model, config.input_size)
        heads_cfg = model.heads.config if model.heads is not None else None
        manifest = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backbone": config.name,
            "input_size": config.input_size,
            "grid_layer": config.grid_layer,
            "affinity_layer": (config.affinity_config() or config).affinity_layer,
            **(
                {
                    "affinity_backbone": {
                        "name": config.affinity_backbone,
                        "input_size": config.affinity_input_size,
                    }
                }
                if config.affinity_backbone
                else {}
            ),
            "mean": list(backbone.mean),
            "std": list(backbone.std),
            "grid_size": shapes["grid"][1:3],
            "affinity_size": shapes["affinity"][1:3],
            "outputs": shapes,
            "classes": {
                "dataset": _class_namespace(heads_info, has_heads=heads_cfg is not None),
                "ids": heads_cfg.class_ids if heads_cfg else [],
                "names": heads_cfg.class_names if heads_cfg else [],
            },
            "heads": heads_info or {"kind": "none" if heads_cfg is None else "classifier"},
            "settings": settings or {},
            "preset": preset,
            "opset": opset,
            **({"quantization": quantization} if quantization else {}),
            "files": {name: {"sha256": sha256_file(tmp / name)} for name in files},
            "versions": _versions(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{time.time_ns()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_affinity_backbone(name: str | None, input_size: int | None) -> BackboneConfig | None:
    """The config of a graph-cut backbone ``name`` at ``input_size`` (None: none), checked
    before anything is built or trained; SettingError naming the reason."""
    if name is None:
        if input_size is not None:
            raise SettingError("affinity_input_size", "needs --affinity-backbone")
        return None
    try:
        other = default_config(name, input_size)
    except ValueError as exc:
        raise SettingError("affinity_backbone", str(exc)) from None
    check_input_size(other.name, other.input_size)
    return other


def export_bundle(
    out: Path,
    *,
    backbone: str = "efficientnet_lite0",
    input_size: int | None = None,
    weights: str | None = None,
    heads_path: str | None = None,
    formats: str = "onnx",
    opset: int = 18,
    random_init: bool = False,
    settings: dict[str, Any] | None = None,
    quantize: str = "none",
    calibration_dir: Path | None = None,
    calibration_count: int = DEFAULT_CALIBRATION_COUNT,
    generic_localizer: bool = True,
    affinity_backbone: str | None = None,
    affinity_input_size: int | None = None,
) -> Path:
    """Build the model from names and files, then :func:`write_bundle`.

    Without ``heads_path``, the embedded classifier is the bundle's heads, with the generic
    localizer and its settings (``MAP_SETTINGS["foreground_cam"]``) when one is shipped for
    the backbone and input size and ``generic_localizer`` is on.

    ``quantize="int8"``: static int8 quantization of the ONNX graph, calibrated on
    ``calibration_count`` images of the folder ``calibration_dir``, evenly spread.

    With ``heads_path``, the backbone's input size and layers come from the heads file
    (``input_size``, if given, must agree).

    ``affinity_backbone``: a second backbone whose features feed the graph cut, at
    ``affinity_input_size`` (:attr:`BackboneConfig.affinity_backbone`); the bundle records its
    spec's settings over the first's (DINOv2's: the cut oriented by TokenCut's rule, ARM's map
    fused with it).
    """
    if input_size is not None:
        check_input_size(backbone, input_size)
    other = check_affinity_backbone(affinity_backbone, affinity_input_size)
    heads = None
    heads_info = None
    if heads_path is not None:
        heads, extra = load_heads(heads_path)
        hc = heads.config
        if hc.backbone != backbone:
            raise BundleError(
                f"{heads_path}: heads were trained for backbone {hc.backbone!r}, not {backbone!r}"
            )
        if input_size is not None and input_size != hc.input_size:
            raise BundleError(
                f"{heads_path}: heads were trained at input size {hc.input_size}, not {input_size}"
            )
        config = BackboneConfig(backbone, hc.input_size, hc.grid_layer, hc.affinity_layer)
        heads_info = {"kind": "trained", "source": str(heads_path), **extra}
        settings = merge_settings(extra.get("settings", {}), settings or {})
    else:
        config = default_config(backbone, input_size)
    spec_settings = backbone_spec(backbone).settings
    if other is not None:
        config = replace(
            config,
            affinity_backbone=other.name,
            affinity_input_size=other.input_size,
        )
        spec_settings = merge_settings(spec_settings, backbone_spec(other.name).settings)
    settings = merge_settings(spec_settings, settings or {})
    check_input_size(config.name, config.input_size)
    # The ImageNet classifier as heads: its CAMs call for the classifier preset.
    name = "classifier" if heads is None and backbone_spec(backbone).has_classifier else "default"
    base = settings_of(preset(name))
    resolved = settings_of(resolve_config(base, settings=settings or {}))
    calibration = None
    if quantize not in QUANTIZE:
        raise QuantizationError(f"quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if quantize == "int8":
        if calibration_dir is None:
            raise QuantizationError("--quantize int8 needs --calibration-images DIR")
        if formats != "onnx":
            raise QuantizationError(
                f"--quantize int8 quantizes the ONNX graph only; use --format onnx, not {formats!r}"
            )
        calibration = calibration_images(calibration_dir, config.input_size, calibration_count)
    model = build_model(
        config, weights, heads, random_init=random_init, generic_localizer=generic_localizer
    )
    if heads is None and model.heads is not None and model.heads.foreground is not None:
        heads_info = {"kind": "classifier", "localizer": generic_localizer_info(config)}
        # ARM refines the mean of the localizer's map and the class CAM, which picks the object.
        resolved = generic_localizer_settings(settings)
    return write_bundle(
        model,
        config,
        out,
        formats=formats,
        opset=opset,
        settings=resolved,
        heads_info=heads_info,
        preset=name,
        calibration=calibration,
    )
