"""A corpus of hostile bundles, made from one valid bundle (nothing binary is committed).

Each case is a bundle folder under ``root/cases``. Files that a bundle must never make
lcar-deploy open (a sentinel "secret", a model copy, external tensor data) lie under
``root/outside``. The untouched ``model.onnx`` of a case is a hard link to the valid bundle's
(a plain file of the case folder, as far as the bundle is concerned).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lcar_deploy.bundle import MAX_FILE_BYTES, MAX_MANIFEST_BYTES, REQUIRED_KEYS

# What a case's error names: the manifest, or the model.
MANIFEST = "manifest.json"
MODEL = "model.onnx"


@dataclass(frozen=True)
class Case:
    name: str
    path: Path  # the bundle folder
    blames: str  # the bundle file the error names
    reason: str  # regex for the rest of the message


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def tiny_model(size: int, *, extra_input: bool = False, external: str | None = None) -> bytes:
    """An ONNX graph ``image`` (B, 3, S, S) -> ``affinity`` = image * weight.

    extra_input: also take an input ``extra``. external: store ``weight`` as external data at
    this location (relative to the model's folder); the caller writes the data file.
    """
    from onnx import TensorProto, external_data_helper, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((1, 3, 1, 1), 2.0, np.float32), "weight")
    shape = ["batch", 3, size, size]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)]
    nodes = [helper.make_node("Mul", ["image", "weight"], ["affinity"])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, shape))
        nodes = [
            helper.make_node("Mul", ["image", "weight"], ["scaled"]),
            helper.make_node("Add", ["scaled", "extra"], ["affinity"]),
        ]
    outputs = [helper.make_tensor_value_info("affinity", TensorProto.FLOAT, shape)]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if external is not None:
        external_data_helper.convert_model_to_external_data(
            model, all_tensors_to_one_file=True, location=external, size_threshold=0
        )
        model.graph.initializer[0].ClearField("raw_data")
    return model.SerializeToString()


def make_corpus(valid: Path, root: Path) -> tuple[Path, list[Case]]:
    """The hostile bundles made from the bundle ``valid``: (the outside folder, cases)."""
    outside = root / "outside"
    outside.mkdir(parents=True)
    secret = outside / "secret.txt"
    secret.write_text("a file outside every bundle\n")
    link_or_copy(valid / MODEL, outside / MODEL)
    base = json.loads((valid / MANIFEST).read_text())
    size = base["input_size"]
    cases: list[Case] = []

    def add(
        name: str,
        blames: str,
        reason: str,
        edit: Callable[[dict[str, Any]], object] | None = None,
        *,
        write: dict[str, bytes] | None = None,
        model: bool = True,
    ) -> Path:
        """A case folder: the valid model (unless ``model`` is False or ``write`` replaces
        it), the files in ``write`` (listed with their sha256), the manifest after ``edit``."""
        folder = root / "cases" / name
        folder.mkdir(parents=True)
        manifest = copy.deepcopy(base)
        for file, data in (write or {}).items():
            (folder / file).write_bytes(data)
            manifest["files"][file] = {"sha256": sha256(data)}
        if model and MODEL not in (write or {}):
            link_or_copy(valid / MODEL, folder / MODEL)
        if edit is not None:
            edit(manifest)
        (folder / MANIFEST).write_text(json.dumps(manifest))
        cases.append(Case(name, folder, blames, reason))
        return folder

    def listing(name: str, entry: str) -> Callable[[dict[str, Any]], object]:
        return lambda m: m["files"].update({name: entry})

    secret_sha = {"sha256": sha256(secret.read_bytes())}
    wrong_sha = {"sha256": "0" * 64}
    not_plain = r"files entry .* is not a plain file name in the bundle folder"
    add("dotdot", MANIFEST, not_plain, listing("../../outside/secret.txt", secret_sha))
    add("absolute", MANIFEST, not_plain, listing(str(secret), secret_sha))
    add("absolute-wrong-sha", MANIFEST, not_plain, listing(str(secret), wrong_sha))
    folder = add("separator", MANIFEST, not_plain, listing("sub/model.onnx", base["files"][MODEL]))
    (folder / "sub").mkdir()
    link_or_copy(valid / MODEL, folder / "sub" / MODEL)
    add("backslash", MANIFEST, not_plain, listing("..\\secret.txt", secret_sha))
    add("dot", MANIFEST, not_plain, listing(".", wrong_sha))

    link = r"is a symbolic link"
    add("symlinked-model", MODEL, link, model=False).joinpath(MODEL).symlink_to(outside / MODEL)
    folder = add("symlinked-manifest", MANIFEST, link)
    (folder / MANIFEST).rename(outside / "manifest.json")
    (folder / MANIFEST).symlink_to(outside / "manifest.json")
    os.mkfifo(add("fifo-model", MODEL, "not a regular file", model=False) / MODEL)
    (add("directory-model", MODEL, "not a regular file", model=False) / MODEL).mkdir()
    folder = add("over-cap-model", MODEL, r"larger than the limit", model=False)
    (folder / MODEL).touch()
    os.truncate(folder / MODEL, MAX_FILE_BYTES + 1)
    folder = add("over-cap-manifest", MANIFEST, r"larger than the limit")
    os.truncate(folder / MANIFEST, MAX_MANIFEST_BYTES + 1)
    add("missing-model", MODEL, r"listed in the manifest but missing", model=False)

    def set_key(key: str, value: object) -> Callable[[dict[str, Any]], object]:
        return lambda m: m.update({key: value})

    def raw(name: str, text: str) -> None:
        folder = add(name, MANIFEST, r"unreadable manifest")
        (folder / MANIFEST).write_text(text)

    raw("not-json", "{'format_version': 1,")
    raw("deep-nesting", '{"settings": ' + "[" * 100_000 + "]" * 100_000 + "}")
    raw(
        "huge-integer",
        json.dumps(base).replace(f'"input_size": {size}', '"input_size": ' + "9" * 5000),
    )
    folder = add("not-an-object", MANIFEST, r"manifest must be a JSON object")
    (folder / MANIFEST).write_text("[]")
    add("newer-format", MANIFEST, r"bundle format 99 is newer", set_key("format_version", 99))
    add("format-string", MANIFEST, r"no integer 'format_version'", set_key("format_version", "1"))
    for key in REQUIRED_KEYS:
        add(f"missing-{key}", MANIFEST, f"missing key '{key}'", lambda m, key=key: m.pop(key))

    sha_reason = r"files entry 'model.onnx' needs a 'sha256' of 64 hex digits"
    add("files-list", MANIFEST, r"'files' must be an object", set_key("files", [MODEL]))
    add("files-empty", MANIFEST, r"lists neither model.onnx nor model.ts", set_key("files", {}))
    add("entry-without-sha", MANIFEST, sha_reason, set_key("files", {MODEL: {}}))
    add("sha-not-string", MANIFEST, sha_reason, set_key("files", {MODEL: {"sha256": 123}}))
    add("sha-short", MANIFEST, sha_reason, set_key("files", {MODEL: {"sha256": "abc"}}))
    add("entry-a-string", MANIFEST, sha_reason, set_key("files", {MODEL: "0" * 64}))
    add("settings-list", MANIFEST, r"'settings' must be a JSON object", set_key("settings", []))
    add("heads-string", MANIFEST, r"'heads' must be a JSON object", set_key("heads", "x"))
    add(
        "backbone-number",
        MANIFEST,
        r"'backbone' must be a non-empty string",
        set_key("backbone", 7),
    )

    input_size = r"'input_size' must be an integer in \[32, 2048\]"
    for name, value in [("abc", "abc"), ("negative", -5), ("huge", 100_000), ("float", 96.0)]:
        add(f"input-size-{name}", MANIFEST, input_size, set_key("input_size", value))
    add("input-size-bool", MANIFEST, input_size, set_key("input_size", True))
    add("mean-two", MANIFEST, r"'mean' must be 3 finite numbers", set_key("mean", [0.5, 0.5]))
    add(
        "mean-nan",
        MANIFEST,
        r"'mean' must be 3 finite numbers",
        set_key("mean", [0.5, float("nan"), 0.5]),
    )
    add("std-string", MANIFEST, r"'std' must be 3 finite numbers", set_key("std", "0.5"))
    add("std-zero", MANIFEST, r"'std' must be > 0", set_key("std", [0.5, 0.0, 0.5]))

    ids, names = base["classes"]["ids"], base["classes"]["names"]
    n = len(ids)

    def classes(ids: list, names: list) -> Callable[[dict[str, Any]], object]:
        return lambda m: m["classes"].update(ids=ids, names=names)

    add(
        "classes-short",
        MANIFEST,
        rf"output 'logits' has {n} classes but 'classes' lists {n - 1}",
        classes(ids[:-1], names[:-1]),
    )
    add(
        "ids-names-mismatch",
        MANIFEST,
        rf"'classes' has {n} ids but {n - 1} names",
        classes(ids, names[:-1]),
    )
    add(
        "ids-strings",
        MANIFEST,
        r"'classes.ids' must be a list of integers",
        classes([str(i) for i in ids], names),
    )
    add("ids-duplicate", MANIFEST, r"'classes.ids' has duplicates", classes([0] * n, names))
    add("classes-list", MANIFEST, r"'classes' must be a JSON object", set_key("classes", []))

    def outputs(**changes: object) -> Callable[[dict[str, Any]], object]:
        return lambda m: m["outputs"].update(changes)

    add(
        "outputs-list",
        MANIFEST,
        r"'outputs' must be a non-empty object",
        set_key("outputs", ["grid"]),
    )
    add("unknown-output", MANIFEST, r"unknown output 'bogus'", outputs(bogus=["batch", 1]))
    add(
        "output-wrong-rank",
        MANIFEST,
        r"output 'grid' must be \[batch, 3 positive ints\]",
        outputs(grid=["batch", 3, 3]),
    )
    add(
        "output-negative",
        MANIFEST,
        r"output 'global' must be \[batch, 1 positive ints\]",
        outputs(**{"global": ["batch", -1280]}),
    )
    add(
        "grid-size-mismatch",
        MANIFEST,
        r"'grid_size' \[4, 4\] disagrees",
        set_key("grid_size", [4, 4]),
    )
    add(
        "cams-without-logits",
        MANIFEST,
        r"both 'cams' and 'logits'",
        lambda m: (m["outputs"].pop("logits"), m["outputs"].pop("cam_logits")),
    )

    add(
        "not-onnx", MODEL, r"not an ONNX model", write={MODEL: np.random.default_rng(0).bytes(4096)}
    )
    add(
        "external-data",
        MODEL,
        r"tensor 'weight' uses external data",
        write={MODEL: tiny_model(size, external="../../outside/weights.bin")},
    )
    (outside / "weights.bin").write_bytes(np.full(3, 2.0, np.float32).tobytes())
    add(
        "extra-graph-input",
        MODEL,
        r"graph inputs are \['image', 'extra'\], expected only 'image'",
        lambda m: m.update(outputs={"affinity": ["batch", 3, size, size]}, affinity_size=[3, size]),
        write={MODEL: tiny_model(size, extra_input=True)},
    )
    add(
        "input-size-not-the-graph",
        MODEL,
        rf"graph input 'image' is FLOAT \['batch', 3, {size}, {size}\].*input_size 128",
        set_key("input_size", 128),
    )
    add(
        "output-not-in-graph",
        MODEL,
        r"the manifest's output 'foreground' is not among the graph's",
        outputs(foreground=["batch", 6, 6]),
    )

    def fewer_classes(m: dict[str, Any]) -> None:
        classes(ids[:-1], names[:-1])(m)
        for name in ("logits", "cam_logits", "cams"):
            m["outputs"][name][1] = n - 1

    add(
        "output-shape-not-the-graph",
        MODEL,
        r"output 'logits' is .* in the graph but",
        fewer_classes,
    )
    return outside, cases
