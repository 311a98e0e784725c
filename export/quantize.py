"""int8 static quantization of a bundle's float32 ONNX graph, calibrated on the user's images.

The calibration images go through the pipeline's own preprocessing (``load_rgb``,
``resize_rgb``, ``to_chw_float`` at the bundle's input size). onnxruntime's quantizer is
imported only here, so that nothing else pays for it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageError, QuantizationError
from ..image_io import image_extensions, load_rgb, resize_rgb, to_chw_float
from ..names import QUANTIZE_METHODS

DEFAULT_CALIBRATION_COUNT = 64
METHOD = QUANTIZE_METHODS[0]


def _spread_order(n: int, count: int) -> list[int]:
    """Indices 0..n-1: ``count`` evenly spread ones first, then the rest (stand-ins for
    images that do not decode)."""
    first = sorted({int(i) for i in np.linspace(0, n - 1, num=min(count, n)).round()})
    chosen = set(first)
    return first + [i for i in range(n) if i not in chosen]


def calibration_images(folder: Path, input_size: int, count: int) -> list[np.ndarray]:
    """Up to ``count`` images of ``folder`` (its sub-folders too), evenly spread over the
    sorted file list, each as a (3, S, S) float32 array; QuantizationError when the folder is
    missing or holds no decodable image."""
    folder = Path(folder)
    if count < 1:
        raise QuantizationError(f"calibration image count must be at least 1, got {count}")
    if not folder.is_dir():
        raise QuantizationError(f"{folder}: calibration image folder not found")
    extensions = set(image_extensions())
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    images: list[np.ndarray] = []
    for index in _spread_order(len(files), count):
        if len(images) == count:
            break
        try:
            rgb = load_rgb(files[index])
        except (ImageError, OSError):
            continue
        images.append(to_chw_float(resize_rgb(rgb, input_size)))
    if not images:
        raise QuantizationError(
            f"{folder}: no decodable image to calibrate the int8 graph on "
            f"({len(files)} image files found)"
        )
    return images


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over preprocessed images, one at a time."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self._images = images
        self._iter: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iter, None)
        return None if image is None else {"image": image[None]}

    def rewind(self) -> None:
        self._iter = iter(self._images)


def quantize_int8(model: Path, images: list[np.ndarray]) -> dict[str, Any]:
    """Replace the float32 graph at ``model`` by its int8 one (QDQ, per-channel 7-bit weights,
    min/max calibration over ``images``); returns the manifest's ``quantization`` entry."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = Path(model)
    with tempfile.TemporaryDirectory(prefix="lcar-quant-", dir=model.parent) as work:
        quantized = Path(work) / "model.int8.onnx"
        quantize_static(
            str(model),
            str(quantized),
            _Reader(images),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # 7-bit weights: x86 CPUs without VNNI (AVX2 only) saturate u8 x s8 products in
            # int16 (VPMADDUBSW); docs/experiments/2026-12-int8.md, "int8 bundles".
            reduce_range=True,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=False,
        )
        quantized.replace(model)
    return {"kind": "int8", "method": METHOD, "calibration_images": len(images)}


def quantize_bundle(
    source: Path,
    out: Path,
    calibration_dir: Path,
    count: int = DEFAULT_CALIBRATION_COUNT,
) -> Path:
    """An int8 copy at ``out`` of the float32 bundle ``source`` (same outputs, classes and
    settings), calibrated on ``count`` images of ``calibration_dir``."""
    import json
    import shutil

    from ..bundle import MANIFEST, Bundle, BundleError, sha256_file

    bundle = Bundle.load(source)
    if bundle.quantization is not None:
        raise QuantizationError(f"{bundle.path}: is already quantized ({bundle.quantization})")
    if "model.onnx" not in bundle.manifest["files"]:
        raise QuantizationError(f"{bundle.path}: has no model.onnx to quantize")
    out = Path(out)
    if out.exists():
        raise BundleError(f"{out}: exists; choose another folder for the int8 copy")
    images = calibration_images(calibration_dir, bundle.input_size, count)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copyfile(bundle.path / "model.onnx", tmp / "model.onnx")
        manifest = dict(bundle.manifest)
        manifest["quantization"] = quantize_int8(tmp / "model.onnx", images)
        manifest["files"] = {"model.onnx": {"sha256": sha256_file(tmp / "model.onnx")}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
