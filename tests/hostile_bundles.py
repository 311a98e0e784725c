"""A corpus of hostile bundles, made from one valid bundle (nothing binary is committed).

``CASES`` names each case and says what its error must name and say; :func:`make_corpus`
builds every case as a bundle folder under ``root/cases``. Files a bundle must never make
lcar-deploy open (a "secret", a model copy, external tensor data) lie under ``root/outside``.
The untouched ``model.onnx`` of a case is a hard link to the valid bundle's (as far as the case
is concerned, a plain file of its own folder).
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

MANIFEST = "manifest.json"
MODEL = "model.onnx"


@dataclass(frozen=True)
class Corpus:
    """What the cases are made from, and where outside files go."""

    valid: Path
    outside: Path
    base: dict[str, Any]

    @property
    def secret(self) -> Path:
        return self.outside / "secret.txt"

    @property
    def size(self) -> int:
        return self.base["input_size"]


Edit = Callable[[dict[str, Any], Corpus], object]


@dataclass(frozen=True)
class Spec:
    """One hostile bundle: the valid one, ``write`` (files listed with their sha256), then
    ``edit`` on the manifest, then ``finish`` on the folder."""

    blames: str  # the bundle file the error names
    reason: str  # regex the error message matches
    edit: Edit | None = None
    write: Callable[[Corpus], dict[str, bytes]] | None = None
    model: bool = True  # hard link the valid model.onnx
    finish: Callable[[Path, Corpus], object] | None = None


@dataclass(frozen=True)
class Case:
    name: str
    path: Path  # the bundle folder
    blames: str
    reason: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def tiny_model(
    size: int, *, extra_input: bool = False, external: str | None = None, image_type: int = 1
) -> bytes:
    """An ONNX graph ``image`` (B, 3, S, S) -> ``affinity`` = image * weight.

    extra_input: also take an input ``extra``. external: store ``weight`` as external data at
    this location (relative to the model's folder); the caller writes the data file.
    image_type: the element type declared for ``image`` (1: float).
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
    model.graph.input[0].type.tensor_type.elem_type = image_type
    if external is not None:
        external_data_helper.convert_model_to_external_data(
            model, all_tensors_to_one_file=True, location=external, size_threshold=0
        )
        model.graph.initializer[0].ClearField("raw_data")
    return model.SerializeToString()


# --- manifest edits and folder touches ---------------------------------------------------------


def set_key(key: str, value: object) -> Edit:
    return lambda m, c: m.update({key: value})


def list_file(name: Callable[[Corpus], str], sha: Callable[[Corpus], str]) -> Edit:
    return lambda m, c: m["files"].update({name(c): {"sha256": sha(c)}})


def secret_sha(c: Corpus) -> str:
    return sha256(c.secret.read_bytes())


def set_classes(cut_ids: int, cut_names: int) -> Edit:
    """Drop the last ``cut_ids`` class ids and ``cut_names`` class names."""

    def edit(m: dict[str, Any], c: Corpus) -> None:
        classes = m["classes"]
        classes["ids"] = classes["ids"][: len(classes["ids"]) - cut_ids]
        classes["names"] = classes["names"][: len(classes["names"]) - cut_names]

    return edit


def set_outputs(**changes: object) -> Edit:
    return lambda m, c: m["outputs"].update(changes)


def fewer_classes_everywhere(m: dict[str, Any], c: Corpus) -> None:
    """One class fewer in the class list and in every class output: consistent, but not the
    graph."""
    set_classes(1, 1)(m, c)
    for name in ("logits", "cam_logits", "cams"):
        m["outputs"][name][1] -= 1


def raw_manifest(text: Callable[[Corpus], str]) -> Callable[[Path, Corpus], object]:
    return lambda folder, c: (folder / MANIFEST).write_text(text(c))


def sparse(name: str, size: int) -> Callable[[Path, Corpus], object]:
    def make(folder: Path, c: Corpus) -> None:
        (folder / name).touch()
        os.truncate(folder / name, size)

    return make


def symlink_model(folder: Path, c: Corpus) -> None:
    (folder / MODEL).symlink_to(c.outside / MODEL)


def symlink_manifest(folder: Path, c: Corpus) -> None:
    (folder / MANIFEST).rename(c.outside / MANIFEST)
    (folder / MANIFEST).symlink_to(c.outside / MANIFEST)


def model_in_subfolder(folder: Path, c: Corpus) -> None:
    (folder / "sub").mkdir()
    link_or_copy(c.valid / MODEL, folder / "sub" / MODEL)


def huge_integer(c: Corpus) -> str:
    text = json.dumps(c.base)
    return text.replace(f'"input_size": {c.size}', '"input_size": ' + "9" * 5000)


NOT_PLAIN = r"files entry .* is not a plain file name in the bundle folder"
SYMLINK = r"is a symbolic link"
NOT_REGULAR = r"not a regular file"
OVER_CAP = r"larger than the limit"
UNREADABLE = r"unreadable manifest"
SHA_ENTRY = r"files entry 'model.onnx' needs a 'sha256' of 64 hex digits"
INPUT_SIZE = r"'input_size' must be an integer in \[32, 2048\]"
MEAN = r"'mean' must be 3 finite numbers"
WRONG_SHA = "0" * 64

CASES: dict[str, Spec] = {
    "dotdot": Spec(
        MANIFEST, NOT_PLAIN, list_file(lambda c: "../../outside/secret.txt", secret_sha)
    ),
    "absolute": Spec(MANIFEST, NOT_PLAIN, list_file(lambda c: str(c.secret), secret_sha)),
    "absolute-wrong-sha": Spec(
        MANIFEST, NOT_PLAIN, list_file(lambda c: str(c.secret), lambda c: WRONG_SHA)
    ),
    "separator": Spec(
        MANIFEST,
        NOT_PLAIN,
        list_file(lambda c: "sub/model.onnx", lambda c: c.base["files"][MODEL]["sha256"]),
        finish=model_in_subfolder,
    ),
    "backslash": Spec(MANIFEST, NOT_PLAIN, list_file(lambda c: "..\\secret.txt", secret_sha)),
    "unprintable-name": Spec(MANIFEST, NOT_PLAIN, list_file(lambda c: "\ud800\n", secret_sha)),
    "dot": Spec(MANIFEST, NOT_PLAIN, list_file(lambda c: ".", lambda c: WRONG_SHA)),
    "symlinked-model": Spec(MODEL, SYMLINK, model=False, finish=symlink_model),
    "symlinked-manifest": Spec(MANIFEST, SYMLINK, finish=symlink_manifest),
    "fifo-model": Spec(
        MODEL, NOT_REGULAR, model=False, finish=lambda folder, c: os.mkfifo(folder / MODEL)
    ),
    "directory-model": Spec(
        MODEL, NOT_REGULAR, model=False, finish=lambda folder, c: (folder / MODEL).mkdir()
    ),
    "missing-model": Spec(MODEL, r"listed in the manifest but missing", model=False),
    "over-cap-model": Spec(MODEL, OVER_CAP, model=False, finish=sparse(MODEL, MAX_FILE_BYTES + 1)),
    "over-cap-manifest": Spec(MANIFEST, OVER_CAP, finish=sparse(MANIFEST, MAX_MANIFEST_BYTES + 1)),
    "not-json": Spec(MANIFEST, UNREADABLE, finish=raw_manifest(lambda c: "{'format_version': 1,")),
    "deep-nesting": Spec(
        MANIFEST,
        UNREADABLE,
        finish=raw_manifest(lambda c: '{"settings": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    ),
    "huge-integer": Spec(MANIFEST, UNREADABLE, finish=raw_manifest(huge_integer)),
    "not-an-object": Spec(
        MANIFEST, r"manifest must be a JSON object", finish=raw_manifest(lambda c: "[]")
    ),
    "newer-format": Spec(MANIFEST, r"bundle format 99 is newer", set_key("format_version", 99)),
    "format-string": Spec(MANIFEST, r"no integer 'format_version'", set_key("format_version", "1")),
    **{
        f"missing-{key}": Spec(MANIFEST, f"missing key '{key}'", lambda m, c, key=key: m.pop(key))
        for key in REQUIRED_KEYS
    },
    "files-list": Spec(MANIFEST, r"'files' must be an object", set_key("files", [MODEL])),
    "files-empty": Spec(MANIFEST, r"lists neither model.onnx nor model.ts", set_key("files", {})),
    "entry-without-sha": Spec(MANIFEST, SHA_ENTRY, set_key("files", {MODEL: {}})),
    "sha-not-string": Spec(MANIFEST, SHA_ENTRY, set_key("files", {MODEL: {"sha256": 123}})),
    "sha-short": Spec(MANIFEST, SHA_ENTRY, set_key("files", {MODEL: {"sha256": "abc"}})),
    "entry-a-string": Spec(MANIFEST, SHA_ENTRY, set_key("files", {MODEL: WRONG_SHA})),
    "settings-list": Spec(MANIFEST, r"'settings' must be a JSON object", set_key("settings", [])),
    "heads-string": Spec(MANIFEST, r"'heads' must be a JSON object", set_key("heads", "x")),
    "backbone-number": Spec(
        MANIFEST, r"'backbone' must be a non-empty string", set_key("backbone", 7)
    ),
    "input-size-abc": Spec(MANIFEST, INPUT_SIZE, set_key("input_size", "abc")),
    "input-size-negative": Spec(MANIFEST, INPUT_SIZE, set_key("input_size", -5)),
    "input-size-huge": Spec(MANIFEST, INPUT_SIZE, set_key("input_size", 100_000)),
    "input-size-float": Spec(MANIFEST, INPUT_SIZE, set_key("input_size", 96.0)),
    "input-size-bool": Spec(MANIFEST, INPUT_SIZE, set_key("input_size", True)),
    "mean-two": Spec(MANIFEST, MEAN, set_key("mean", [0.5, 0.5])),
    "mean-nan": Spec(MANIFEST, MEAN, set_key("mean", [0.5, float("nan"), 0.5])),
    "std-string": Spec(MANIFEST, r"'std' must be 3 finite numbers", set_key("std", "0.5")),
    "std-zero": Spec(MANIFEST, r"'std' must be > 0", set_key("std", [0.5, 0.0, 0.5])),
    "affinity-backbone-size": Spec(
        MANIFEST,
        r"'affinity_backbone' must be an object with a non-empty 'name' and an integer",
        set_key("affinity_backbone", {"name": "dinov2_vits14", "input_size": "336"}),
    ),
    "affinity-backbone-keys": Spec(
        MANIFEST,
        r"'affinity_backbone' must be an object",
        set_key("affinity_backbone", {"name": "dinov2_vits14", "input_size": 224, "path": "/"}),
    ),
    "classes-short": Spec(
        MANIFEST, r"output 'logits' has \d+ classes but 'classes' lists \d+", set_classes(1, 1)
    ),
    "ids-names-mismatch": Spec(MANIFEST, r"'classes' has \d+ ids but \d+ names", set_classes(0, 1)),
    "ids-strings": Spec(
        MANIFEST,
        r"'classes.ids' must be a list of integers",
        lambda m, c: m["classes"].update(ids=[str(i) for i in m["classes"]["ids"]]),
    ),
    "ids-duplicate": Spec(
        MANIFEST,
        r"'classes.ids' has duplicates",
        lambda m, c: m["classes"].update(ids=[0] * len(m["classes"]["ids"])),
    ),
    "classes-list": Spec(MANIFEST, r"'classes' must be a JSON object", set_key("classes", [])),
    "outputs-list": Spec(
        MANIFEST, r"'outputs' must be a non-empty object", set_key("outputs", ["grid"])
    ),
    "unknown-output": Spec(MANIFEST, r"unknown output 'bogus'", set_outputs(bogus=["batch", 1])),
    "output-wrong-rank": Spec(
        MANIFEST,
        r"output 'grid' must be \[batch, 3 positive ints\]",
        set_outputs(grid=["batch", 3, 3]),
    ),
    "output-negative": Spec(
        MANIFEST,
        r"output 'global' must be \[batch, 1 positive ints\]",
        set_outputs(**{"global": ["batch", -1280]}),
    ),
    "grid-size-mismatch": Spec(
        MANIFEST, r"'grid_size' \[4, 4\] disagrees", set_key("grid_size", [4, 4])
    ),
    "cams-without-logits": Spec(
        MANIFEST,
        r"both 'cams' and 'logits'",
        lambda m, c: (m["outputs"].pop("logits"), m["outputs"].pop("cam_logits")),
    ),
    "not-onnx": Spec(
        MODEL,
        r"not an ONNX model",
        write=lambda c: {MODEL: np.random.default_rng(0).bytes(4096)},
    ),
    "external-data": Spec(
        MODEL,
        r"tensor 'weight' uses external data",
        write=lambda c: {MODEL: tiny_model(c.size, external="../../outside/weights.bin")},
    ),
    "extra-graph-input": Spec(
        MODEL,
        r"graph inputs are \['image', 'extra'\], expected only 'image'",
        lambda m, c: m.update(
            outputs={"affinity": ["batch", 3, c.size, c.size]}, affinity_size=[3, c.size]
        ),
        write=lambda c: {MODEL: tiny_model(c.size, extra_input=True)},
    ),
    "image-unknown-type": Spec(
        MODEL,
        r"graph input 'image' is 999 \[.*\], but .* needs FLOAT",
        lambda m, c: m.update(
            outputs={"affinity": ["batch", 3, c.size, c.size]}, affinity_size=[3, c.size]
        ),
        write=lambda c: {MODEL: tiny_model(c.size, image_type=999)},
    ),
    "input-size-not-the-graph": Spec(
        MODEL,
        r"graph input 'image' is FLOAT \[.*\], but .* input_size 128",
        set_key("input_size", 128),
    ),
    "output-not-in-graph": Spec(
        MODEL,
        r"the manifest's output 'foreground' is not among the graph's",
        set_outputs(foreground=["batch", 6, 6]),
    ),
    "output-shape-not-the-graph": Spec(
        MODEL, r"output 'logits' is .* in the graph but", fewer_classes_everywhere
    ),
}


def make_corpus(valid: Path, root: Path) -> tuple[Path, list[Case]]:
    """Every case of ``CASES`` made from the bundle ``valid``: (the outside folder, cases)."""
    corpus = Corpus(valid, root / "outside", json.loads((valid / MANIFEST).read_text()))
    corpus.outside.mkdir(parents=True)
    corpus.secret.write_text("a file outside every bundle\n")
    link_or_copy(valid / MODEL, corpus.outside / MODEL)
    (corpus.outside / "weights.bin").write_bytes(np.full(3, 2.0, np.float32).tobytes())
    cases = []
    for name, spec in CASES.items():
        folder = root / "cases" / name
        folder.mkdir(parents=True)
        manifest = copy.deepcopy(corpus.base)
        written = spec.write(corpus) if spec.write else {}
        for file, data in written.items():
            (folder / file).write_bytes(data)
            manifest["files"][file] = {"sha256": sha256(data)}
        if spec.model and MODEL not in written:
            link_or_copy(valid / MODEL, folder / MODEL)
        if spec.edit is not None:
            spec.edit(manifest, corpus)
        (folder / MANIFEST).write_text(json.dumps(manifest))
        if spec.finish is not None:
            spec.finish(folder, corpus)
        cases.append(Case(name, folder, spec.blames, spec.reason))
    return corpus.outside, cases
