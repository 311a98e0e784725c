"""The deployable bundle: a folder with ``manifest.json``, ``model.onnx`` and maybe ``model.ts``.

``manifest.json`` holds the format version, the backbone and its input size, mean/std, the grid
sizes, the class ids and names, stage settings, the sha256 of every file and the versions of
the tools that wrote it. Loading checks all of it: a missing or tampered file, or a manifest
from a newer format, is a :class:`BundleError` naming the file and the reason.

This module needs only numpy and onnxruntime (torch is not imported).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BUNDLE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEVICES = ("auto", "cpu", "cuda")


class BundleError(ValueError):
    """A bundle that is missing, incomplete, tampered with or from a newer format."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Per-user cache: ``$LCAR_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/lcar-deploy``."""
    env = os.environ.get("LCAR_DEPLOY_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lcar-deploy"


# Names the default bundle's backbone and input size, so that a cached default bundle from an
# older default is not reused after the default changes (tests/test_export.py checks it).
DEFAULT_BUNDLE_NAME = "default-efficientnet_lite0-384"


def default_bundle_dir() -> Path:
    """Where ``lcar-deploy export`` with no ``--out`` writes, and ``localize`` looks."""
    return cache_dir() / "bundles" / DEFAULT_BUNDLE_NAME


@dataclass(frozen=True)
class Bundle:
    """A validated bundle on disk. Use :meth:`load`."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Bundle:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise BundleError(f"{path}: bundle folder not found")
        if not manifest_path.is_file():
            raise BundleError(f"{manifest_path}: missing (not a bundle folder?)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{manifest_path}: unreadable manifest ({exc})") from exc
        if not isinstance(manifest, dict):
            raise BundleError(f"{manifest_path}: manifest must be a JSON object")
        version = manifest.get("format_version")
        if not isinstance(version, int):
            raise BundleError(f"{manifest_path}: no integer 'format_version'")
        if version > BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{manifest_path}: bundle format {version} is newer than this lcar-deploy "
                f"reads ({BUNDLE_FORMAT_VERSION}); upgrade lcar-deploy or re-export the bundle"
            )
        for key in ("backbone", "input_size", "mean", "std", "files", "outputs"):
            if key not in manifest:
                raise BundleError(f"{manifest_path}: missing key {key!r}")
        if not {"model.onnx", "model.ts"} & set(manifest["files"]):
            raise BundleError(f"{manifest_path}: lists neither model.onnx nor model.ts")
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check that every listed file exists and has its recorded sha256."""
        for name, info in self.manifest["files"].items():
            file = self.path / name
            if not file.is_file():
                raise BundleError(f"{file}: listed in the manifest but missing")
            if sha256_file(file) != info["sha256"]:
                raise BundleError(
                    f"{file}: sha256 does not match the manifest (file changed or corrupt)"
                )

    @property
    def backbone(self) -> str:
        return self.manifest["backbone"]

    @property
    def input_size(self) -> int:
        return int(self.manifest["input_size"])

    @property
    def outputs(self) -> list[str]:
        return list(self.manifest["outputs"])

    @property
    def has_heads(self) -> bool:
        return "cams" in self.manifest["outputs"]

    @property
    def class_ids(self) -> list[int]:
        return list(self.manifest.get("classes", {}).get("ids", []))

    @property
    def class_dataset(self) -> str | None:
        """What the class ids refer to: ``imagenet``, ``cub``, ... (None without heads)."""
        return self.manifest.get("classes", {}).get("dataset")

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.get("classes", {}).get("names", []))

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.manifest.get("settings", {}))

    def class_index(self, class_id: int) -> int:
        """Output index of a dataset class id; BundleError for an id the bundle lacks."""
        ids = self.class_ids
        if class_id not in ids:
            raise BundleError(
                f"{self.path}: class id {class_id} is not among the bundle's {len(ids)} classes"
            )
        return ids.index(class_id)

    def session(self, device: str = "auto", threads: int | None = None) -> OnnxRunner:
        if "model.onnx" not in self.manifest["files"]:
            raise BundleError(
                f"{self.path}: has no model.onnx (exported with --format torchscript)"
            )
        return OnnxRunner(self.path / "model.onnx", self.outputs, device=device, threads=threads)


def select_providers(device: str) -> list[str]:
    """onnxruntime providers for ``device`` (auto: CUDA when this onnxruntime has it)."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise BundleError(
            "device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
            f"(available: {available}); install lcar-deploy[gpu] instead of [cpu]"
        )
    if device == "cpu" or not has_cuda:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class OnnxRunner:
    """An onnxruntime session over a bundle's graph. ``run(images)`` -> dict of outputs."""

    def __init__(
        self, model_path: Path, outputs: list[str], device: str = "auto", threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.output_names = outputs
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=select_providers(device)
        )
        shape = self.session.get_inputs()[0].shape
        self.input_size = int(shape[-1])

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses (``session.get_providers()``)."""
        return self.session.get_providers()

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images: (B, 3, S, S) float32 RGB in [0, 1]."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(
                f"images must be (B, 3, {self.input_size}, {self.input_size}), got {images.shape}"
            )
        values = self.session.run(self.output_names, {"image": images})
        return dict(zip(self.output_names, values, strict=True))
