"""The deployable bundle: a folder with ``manifest.json``, ``model.onnx`` and maybe ``model.ts``.

``manifest.json`` holds the format version, the backbone and its input size, mean/std, the grid
sizes, the class ids and names, stage settings, the sha256 of every file and the versions of
the tools that wrote it. A bundle is untrusted input, and loading checks all of it before the
graph is handed to onnxruntime: the manifest against its schema; every listed file being a
plain, regular file in the bundle folder itself (no paths, no symbolic links, size-capped)
before any is opened; the sha256 of each; and ``model.onnx``'s declared inputs and outputs
against the manifest (external tensor data is refused). Any failure is a :class:`BundleError`
naming the file and the reason.

This module needs only numpy and onnxruntime (torch is not imported; onnx is, to check the graph).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError, OutputError, printable
from .names import DEVICES, QUANTIZE, QUANTIZE_METHODS
from .threads import check_threads

BUNDLE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_FILE_BYTES = 2 << 30  # also protobuf's limit on one ONNX file
MAX_MANIFEST_BYTES = 64 << 20
INPUT_SIZES = (32, 2048)
REQUIRED_KEYS = ("backbone", "input_size", "mean", "std", "files", "outputs")
# The outputs the pipeline knows, with their rank; axis 1 of the class outputs runs over classes.
OUTPUT_RANKS = {
    "global": 2,
    "grid": 4,
    "affinity": 4,
    "logits": 2,
    "cam_logits": 2,
    "cams": 4,
    "foreground": 3,
    "foreground_classes": 4,
}
CLASS_OUTPUTS = ("logits", "cam_logits", "cams", "foreground_classes")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


CACHE_FIX = "cannot be the cache folder ({reason}); set LCAR_DEPLOY_CACHE to a folder you can write"


def cache_dir() -> Path:
    """Per-user cache: ``$LCAR_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/lcar-deploy``, else
    ``~/.cache/lcar-deploy``. :class:`OutputError` when it cannot be one: a file, a symbolic
    link loop, or (it or the nearest folder above it that exists) not writable."""
    env = os.environ.get("LCAR_DEPLOY_CACHE")
    if env:
        path = Path(env)
    else:
        try:
            base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        except RuntimeError:  # no HOME and no password entry
            raise OutputError(
                "no home folder to keep the cache in; set LCAR_DEPLOY_CACHE to a folder"
            ) from None
        path = Path(base) / "lcar-deploy"
    _check_cache(path)
    return path


def _check_cache(path: Path) -> None:
    """OutputError unless ``path``, or the nearest folder above it that exists, is a folder
    this user can write (the cache's folders are made when first written)."""
    existing = path
    while True:
        try:
            info = existing.stat()
            break
        except FileNotFoundError:
            if existing.parent == existing:
                return
            existing = existing.parent
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise OutputError(f"{printable(path)}: {CACHE_FIX.format(reason=reason)}") from None
    if not stat.S_ISDIR(info.st_mode):
        reason = "not a folder" if existing == path else f"{printable(existing)} is not a folder"
        raise OutputError(f"{printable(path)}: {CACHE_FIX.format(reason=reason)}")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "not writable" if existing == path else f"{printable(existing)} is not writable"
        raise OutputError(f"{printable(path)}: {CACHE_FIX.format(reason=reason)}")


DEFAULT_BUNDLE_NAME = "default-efficientnet_lite0-384-localizer"


def default_bundle_dir() -> Path:
    """Where ``lcar-deploy export`` with no ``--out`` writes, and ``localize`` looks.

    The folder names the default bundle's backbone, input size and generic localizer, then a
    digest of the settings its export records (:func:`~lcar_deploy.config.
    generic_localizer_settings`) and of the shipped generic localizer's file, so that a cached
    default bundle from an older default is not reused after the default or the localizer
    changes (tests/test_export.py checks it)."""
    from .config import generic_localizer_settings
    from .models.backbones import BackboneConfig
    from .models.generic_localizer import generic_localizer_path

    config = BackboneConfig()
    digest = hashlib.sha256(json.dumps(generic_localizer_settings(), sort_keys=True).encode())
    shipped = generic_localizer_path(config.name, config.input_size)
    if shipped.is_file():
        digest.update(shipped.read_bytes())
    digest = digest.hexdigest()[:8]
    return cache_dir() / "bundles" / f"{DEFAULT_BUNDLE_NAME}-{digest}"


def load_bundle(
    path: str | Path | None = None, notify: Callable[[str], None] | None = None
) -> Bundle:
    """The bundle at ``path``, or the default bundle (:func:`default_bundle_dir`), exported on
    first use; ``notify`` (e.g. ``print``) is told what that first export does and how long it
    took."""
    if path is not None:
        return Bundle.load(path)
    target = default_bundle_dir()
    fix = "delete that folder to export it again, or set LCAR_DEPLOY_CACHE"
    if not (target / MANIFEST).is_file():
        if os.path.lexists(target) and not (target.is_dir() and not any(target.iterdir())):
            raise BundleError(
                f"{printable(target)}: the cached default bundle has no {MANIFEST} (an export "
                f"that was cut short?); {fix}"
            )
        import contextlib
        import io
        import time

        from .export.exporter import export_bundle

        say = notify or (lambda _: None)
        say(
            "first run: exporting the embedded EfficientNet-Lite0 with its ImageNet classifier "
            f"and generic localizer to ONNX in {target} (once, about half a minute) ..."
        )
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                export_bundle(target)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise OutputError(
                f"{printable(target)}: cannot write the default bundle ({reason}); set "
                "LCAR_DEPLOY_CACHE to a folder you can write"
            ) from None
        say(f"default bundle ready in {time.perf_counter() - start:.0f} s")
    try:
        return Bundle.load(target)
    except BundleError as exc:
        reason = printable(str(exc).removeprefix(f"{target}{os.sep}"), 100)
        raise BundleError(
            f"{printable(target)}: the cached default bundle is unusable ({reason}); {fix}"
        ) from None


def _show(value: object, limit: int = 60) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_plain_name(name: str) -> bool:
    """A file of the bundle folder itself: no separator, not ``.``/``..``, not absolute."""
    return name not in ("", ".", "..") and name.isprintable() and not any(c in name for c in "/\\")


def _outputs_problem(outputs: object) -> str | None:
    if not isinstance(outputs, dict) or not outputs:
        return f"'outputs' must be a non-empty object name -> shape, got {_show(outputs)}"
    for name, shape in outputs.items():
        if name not in OUTPUT_RANKS:
            return f"unknown output {name!r} (known: {', '.join(OUTPUT_RANKS)})"
        rank = OUTPUT_RANKS[name]
        if not (
            isinstance(shape, list)
            and len(shape) == rank
            and (isinstance(shape[0], str) or _is_int(shape[0]))
            and all(_is_int(d) and d > 0 for d in shape[1:])
        ):
            return f"output {name!r} must be [batch, {rank - 1} positive ints], got {_show(shape)}"
    if "affinity" not in outputs:
        return "'outputs' lacks 'affinity' (the graph cut's input)"
    if ("cams" in outputs) != ("logits" in outputs):
        return "'outputs' must have both 'cams' and 'logits' or neither"
    if "foreground_classes" in outputs and not {"foreground", "cams"} <= outputs.keys():
        return "'outputs' has 'foreground_classes' without 'foreground' and 'cams'"
    return None


def _classes_problem(classes: object, outputs: dict[str, list]) -> str | None:
    if not isinstance(classes, dict):
        return f"'classes' must be a JSON object, got {_show(classes)}"
    ids, names = classes.get("ids", []), classes.get("names", [])
    if not (isinstance(ids, list) and all(map(_is_int, ids))):
        return f"'classes.ids' must be a list of integers, got {_show(ids)}"
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return f"'classes.names' must be a list of strings, got {_show(names)}"
    if len(ids) != len(names):
        return f"'classes' has {len(ids)} ids but {len(names)} names"
    if len(set(ids)) != len(ids):
        return "'classes.ids' has duplicates"
    if not isinstance(classes.get("dataset"), (str, type(None))):
        return f"'classes.dataset' must be a string or null, got {_show(classes['dataset'])}"
    for name in CLASS_OUTPUTS:
        if name in outputs and outputs[name][1] != len(ids):
            return f"output {name!r} has {outputs[name][1]} classes but 'classes' lists {len(ids)}"
    return None


def _files_problem(files: object) -> str | None:
    if not isinstance(files, dict):
        return f"'files' must be an object name -> {{\"sha256\": ...}}, got {_show(files)}"
    for name, info in files.items():
        if not _is_plain_name(name):
            return f"files entry {name!r} is not a plain file name in the bundle folder"
        digest = info.get("sha256") if isinstance(info, dict) else None
        if not (isinstance(digest, str) and SHA256_HEX.fullmatch(digest)):
            return f"files entry {name!r} needs a 'sha256' of 64 hex digits, got {_show(info)}"
    if not {"model.onnx", "model.ts"} & set(files):
        return "lists neither model.onnx nor model.ts"
    return None


QUANTIZATION_KEYS = ("kind", "method", "calibration_images")


def _quantization_problem(quantization: object) -> str | None:
    """An int8 bundle's record: exactly kind, method and the calibration image count."""
    if not isinstance(quantization, dict) or set(quantization) != set(QUANTIZATION_KEYS):
        return (
            f"'quantization' must be an object with exactly {', '.join(QUANTIZATION_KEYS)}, "
            f"got {_show(quantization)}"
        )
    kinds = [k for k in QUANTIZE if k != "none"]
    if quantization["kind"] not in kinds:
        return f"'quantization.kind' must be one of {kinds}, got {_show(quantization['kind'])}"
    if quantization["method"] not in QUANTIZE_METHODS:
        return (
            f"'quantization.method' must be one of {list(QUANTIZE_METHODS)}, "
            f"got {_show(quantization['method'])}"
        )
    count = quantization["calibration_images"]
    if not (_is_int(count) and count >= 1):
        return f"'quantization.calibration_images' must be an integer >= 1, got {_show(count)}"
    return None


def manifest_problem(manifest: object) -> str | None:
    """What is wrong with a parsed manifest (the first thing found), or None."""
    if not isinstance(manifest, dict):
        return "manifest must be a JSON object"
    version = manifest.get("format_version")
    if not _is_int(version) or version < 1:
        return "no integer 'format_version'"
    if version > BUNDLE_FORMAT_VERSION:
        return (
            f"bundle format {version} is newer than this lcar-deploy reads "
            f"({BUNDLE_FORMAT_VERSION}); upgrade lcar-deploy or re-export the bundle"
        )
    for key in REQUIRED_KEYS:
        if key not in manifest:
            return f"missing key {key!r}"
    if not isinstance(manifest["backbone"], str) or not manifest["backbone"]:
        return f"'backbone' must be a non-empty string, got {_show(manifest['backbone'])}"
    size, (low, high) = manifest["input_size"], INPUT_SIZES
    if not (_is_int(size) and low <= size <= high):
        return f"'input_size' must be an integer in [{low}, {high}], got {_show(size)}"
    other = manifest.get("affinity_backbone")
    if other is not None and not (
        isinstance(other, dict)
        and set(other) == {"name", "input_size"}
        and isinstance(other["name"], str)
        and other["name"]
        and _is_int(other["input_size"])
        and low <= other["input_size"] <= high
    ):
        return (
            "'affinity_backbone' must be an object with a non-empty 'name' and an integer "
            f"'input_size' in [{low}, {high}], got {_show(other)}"
        )
    for key in ("mean", "std"):
        value = manifest[key]
        if not (isinstance(value, list) and len(value) == 3 and all(map(_is_finite, value))):
            return f"{key!r} must be 3 finite numbers, got {_show(value)}"
    if min(manifest["std"]) <= 0:
        return f"'std' must be > 0, got {_show(manifest['std'])}"
    outputs = manifest["outputs"]
    problem = (
        _outputs_problem(outputs)
        or _classes_problem(manifest.get("classes", {}), outputs)
        or _files_problem(manifest["files"])
    )
    if problem:
        return problem
    for key in ("grid", "affinity"):
        grid = manifest.get(f"{key}_size")
        if grid is not None and key in outputs and grid != outputs[key][1:3]:
            return f"'{key}_size' {_show(grid)} disagrees with output {key!r} {outputs[key]}"
    if "quantization" in manifest:
        problem = _quantization_problem(manifest["quantization"])
        if problem:
            return problem
        if "model.onnx" not in manifest["files"]:
            return "'quantization' is recorded but the bundle lists no model.onnx"
    for key in ("settings", "heads", "versions"):
        if not isinstance(manifest.get(key, {}), dict):
            return f"{key!r} must be a JSON object, got {_show(manifest[key])}"
    return None


def _check_plain_file(file: Path, cap: int, missing: str) -> None:
    """BundleError unless ``file`` is a regular file (not a link) of at most ``cap`` bytes."""
    try:
        info = file.lstat()
    except FileNotFoundError:
        raise BundleError(f"{printable(file)}: {missing}") from None
    except OSError as exc:
        raise BundleError(f"{printable(file)}: cannot stat ({exc.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        raise BundleError(
            f"{printable(file)}: is a symbolic link; a bundle must hold its files itself"
        )
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{printable(file)}: not a regular file")
    if info.st_size > cap:
        raise BundleError(
            f"{printable(file)}: {info.st_size} bytes, larger than the limit of {cap}"
        )


def _read_plain_file(file: Path, cap: int) -> bytes:
    """At most ``cap`` bytes of ``file``, opened without following a symbolic link."""
    # Checked by _check_plain_file already; NOFOLLOW and NONBLOCK cover a swap since then.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        with os.fdopen(os.open(file, flags | getattr(os, "O_BINARY", 0)), "rb") as f:
            data = f.read(cap + 1)
    except OSError as exc:
        raise BundleError(f"{printable(file)}: cannot read ({exc.strerror})") from None
    if len(data) > cap:
        raise BundleError(f"{printable(file)}: larger than the limit of {cap} bytes")
    return data


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of an ONNX graph: initializers and node attributes, subgraphs too."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any) -> Iterator[Any]:
    # An unset message field reads as an empty message, which holds no tensor.
    for node in nodes:
        for attr in node.attribute:
            yield from (attr.t, *attr.tensors)
            for sparse in (attr.sparse_tensor, *attr.sparse_tensors):
                yield from (sparse.values, sparse.indices)
            for sub in (attr.g, *attr.graphs):
                yield from _tensors(sub)


def _dims(value: Any) -> list[int | str] | None:
    """The declared shape of a graph input or output (None if undeclared)."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]


def _shapes_agree(graph: list[int | str] | None, manifest: list[int | str]) -> bool:
    """Same rank and the same sizes where both are fixed (0 in ONNX: unknown)."""
    if graph is None:
        return True
    if len(graph) != len(manifest):
        return False
    pairs = zip(graph, manifest, strict=True)
    return all(g == m for g, m in pairs if isinstance(g, int) and g and _is_int(m))


def graph_problem(data: bytes, manifest: dict[str, Any]) -> str | None:
    """What is wrong with the ONNX graph ``data`` given its (checked) manifest, or None."""
    import onnx

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError differs between its backends
        return f"not an ONNX model ({exc or type(exc).__name__})"
    graph = model.graph
    tensors = [*_tensors(graph), *(t for f in model.functions for t in _node_tensors(f.node))]
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            return f"tensor {tensor.name!r} uses external data (refused: it lies outside the file)"
    initialized = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initialized]
    if [v.name for v in inputs] != ["image"]:
        return f"graph inputs are {[v.name for v in inputs]}, expected only 'image'"
    size, dims = manifest["input_size"], _dims(inputs[0])
    elem_type = inputs[0].type.tensor_type.elem_type
    dtype = {v: k for k, v in onnx.TensorProto.DataType.items()}.get(elem_type, str(elem_type))
    if dtype != "FLOAT" or dims is None or len(dims) != 4 or dims[1:] != [3, size, size]:
        return (
            f"graph input 'image' is {dtype} {dims}, but the manifest's input_size {size} "
            f"needs FLOAT [batch, 3, {size}, {size}]"
        )
    declared = {v.name: _dims(v) for v in graph.output}
    for name, shape in manifest["outputs"].items():
        if name not in declared:
            return f"the manifest's output {name!r} is not among the graph's {list(declared)}"
        if not _shapes_agree(declared[name], shape):
            return f"output {name!r} is {declared[name]} in the graph but {shape} in the manifest"
    return None


@dataclass(frozen=True)
class Bundle:
    """A validated bundle on disk. Use :meth:`load`."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Bundle:
        """Check and load the bundle at ``path``; ``verify=False`` skips reading the listed
        files (their sha256 and the graph check), not the manifest and file-type checks."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise BundleError(f"{printable(path)}: bundle folder not found")
        _check_plain_file(manifest_path, MAX_MANIFEST_BYTES, "missing (not a bundle folder?)")
        try:
            manifest = json.loads(_read_plain_file(manifest_path, MAX_MANIFEST_BYTES))
        except (ValueError, RecursionError) as exc:  # JSON, UTF-8, int digits, nesting
            raise BundleError(
                f"{printable(manifest_path)}: unreadable manifest ({printable(exc, 100)})"
            ) from None
        problem = manifest_problem(manifest)
        if problem:
            raise BundleError(f"{printable(manifest_path)}: {problem}")
        bundle = cls(path, manifest)
        for name in manifest["files"]:
            _check_plain_file(path / name, MAX_FILE_BYTES, "listed in the manifest but missing")
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check that every listed file has its recorded sha256, then check the ONNX graph."""
        graph = None
        for name, info in self.manifest["files"].items():
            file = self.path / name
            data = _read_plain_file(file, MAX_FILE_BYTES)
            if hashlib.sha256(data).hexdigest() != info["sha256"]:
                raise BundleError(
                    f"{printable(file)}: sha256 does not match the manifest (file changed or "
                    "corrupt)"
                )
            if name == "model.onnx":
                graph = data
        problem = None if graph is None else graph_problem(graph, self.manifest)
        if problem:
            raise BundleError(f"{printable(self.path / 'model.onnx')}: {problem}")

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
    def quantization(self) -> dict[str, Any] | None:
        """The int8 record (kind, method, calibration_images), or None for float32."""
        value = self.manifest.get("quantization")
        return dict(value) if value else None

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.manifest.get("settings", {}))

    def class_index(self, class_id: int) -> int:
        """Output index of a dataset class id; BundleError for an id the bundle lacks."""
        ids = self.class_ids
        if class_id not in ids:
            raise BundleError(
                f"{printable(self.path)}: class id {class_id} is not among the bundle's "
                f"{len(ids)} classes"
            )
        return ids.index(class_id)

    def session(self, device: str = "auto", threads: int | None = None) -> OnnxRunner:
        if "model.onnx" not in self.manifest["files"]:
            raise BundleError(
                f"{printable(self.path)}: has no model.onnx (exported with --format torchscript)"
            )
        model = self.path / "model.onnx"
        _check_plain_file(model, MAX_FILE_BYTES, "listed in the manifest but missing")
        # onnxruntime gets the bytes checked here, not the path: the file could change between
        # the check and a later open.
        data = _read_plain_file(model, MAX_FILE_BYTES)
        if hashlib.sha256(data).hexdigest() != self.manifest["files"]["model.onnx"]["sha256"]:
            raise BundleError(
                f"{printable(model)}: sha256 does not match the manifest (file changed or corrupt)"
            )
        return OnnxRunner(model, self.outputs, device=device, threads=threads, data=data)


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
        self,
        model_path: Path,
        outputs: list[str],
        device: str = "auto",
        threads: int | None = None,
        data: bytes | None = None,
    ) -> None:
        """``data``: the model's bytes, when already read (``model_path`` then names it in
        messages); else the file at ``model_path`` is loaded."""
        import onnxruntime as ort

        threads = check_threads(threads)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.output_names = outputs
        providers = select_providers(device)
        try:
            self.session = ort.InferenceSession(
                str(model_path) if data is None else data, sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise BundleError(
                f"{printable(model_path)}: onnxruntime cannot load it ({printable(exc, 100)})"
            ) from None
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
