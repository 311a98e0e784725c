"""``lcar-deploy convert``: ``predictions.jsonl`` -> COCO, YOLO, Pascal VOC or Label Studio.

``predictions.jsonl`` stays the source of truth: every format is written from it alone (and
from the images and masks it names), so a conversion can be run again at any time and gives
the same files. Each output appears whole or not at all: a file is written to a temporary
name and renamed (:func:`lcar_deploy.io.write_atomic`); a folder is built beside its target
and swapped in.

- ``coco``: ``coco.json``, a COCO detection file (``images``, ``categories``,
  ``annotations`` with ``bbox`` ``[x, y, w, h]``, ``area``, ``score`` and, when the run saved
  masks, ``segmentation`` as RLE from pycocotools). Loadable by ``COCO()`` (a dataset) and its
  ``annotations`` by ``COCO.loadRes`` (results for ``COCOeval``). Split: ``coco_train.json``
  and ``coco_val.json``, the ids of the unsplit file.
- ``yolo``: ``yolo/`` with ``images/`` (links to the images), ``labels/*.txt`` (one
  ``class cx cy w h`` line per box, normalised) and ``data.yaml``; lines written by
  supervision. Split: ``images/train``, ``images/val``, ``labels/train``, ``labels/val``.
- ``voc``: ``voc/`` with ``JPEGImages/`` (links) and ``Annotations/*.xml``, written by
  supervision (1-based inclusive pixel corners, the VOC devkit's).
- ``labelstudio``: ``labelstudio.json``, Label Studio tasks with pre-annotations
  (``predictions``: ``rectanglelabels`` results in percent of the image, ``score``).

Confinement: only files inside the run's image root (``run.json``'s ``images`` or
``images=``), named like images, are linked, and only the run's own ``masks/`` are read; a
path that climbs out (``..``, absolute, a link leaving the root) is an error naming the line.
A folder output is written only where :func:`lcar_deploy.io.replace_folder` allows (absent,
empty, or an earlier conversion to the same format); a file output only where it is absent or
an earlier conversion to the same format (recognised by its first bytes): ``predictions.jsonl``,
the run folder and the user's files are never overwritten.

Box conventions: a record's box is inclusive pixels ``[x0, y0, x1, y1]``; it covers the
continuous rectangle ``[x0, x1 + 1) x [y0, y1 + 1)``, which is what COCO, YOLO and Label Studio
describe. Images with ``status: error`` are left out (counted in the summary); an image with
no object is kept, with no box. Every schema: docs/formats.md.

Train/val split (yolo and coco, :func:`split_images`): each class's images, and the images
with no box, are split apart by the fraction, a class of one image staying in train; which
images go to val depends only on the seed and the paths, never on the order of the lines.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .errors import ConvertError, OutputError, printable
from .io import json_text, open_regular, parse_json, read_regular, replace_folder, write_atomic
from .names import OUTPUT_FORMATS

TARGETS = {
    "coco": "coco.json",
    "yolo": "yolo",
    "voc": "voc",
    "labelstudio": "labelstudio.json",
}
"""Where each format goes, beside ``predictions.jsonl`` unless told otherwise."""
assert tuple(TARGETS) == OUTPUT_FORMATS

RUN_INFO = "run.json"
MASKS = "masks"
MAX_RUN_INFO_BYTES = 16 << 20
MAX_SIDE = 2**31 - 1
"""Largest image side (and class id) a record may give: what PNG and TIFF can hold."""
MAX_MASK_PIXELS = 2 * 89_478_485
"""Largest mask read (Pillow's own decompression-bomb limit): a run writes none larger."""
SIGNATURES = {
    "coco": b'{"info": {"description": "lcar-deploy predictions"',
    "labelstudio": b'[{"predictions": [{"model_version": "lcar-deploy"',
}
"""How a file output of an earlier conversion begins: only such a file is overwritten."""
SPLITS = ("train", "val")
"""The parts of a split conversion, in the order written."""
SPLIT_FORMATS = ("coco", "yolo")
"""The formats a conversion can split into train and val."""
LABEL_STUDIO_NAMES = ("label", "image")
"""``from_name`` / ``to_name`` of the Label Studio results: a labelling config
``<Image name="image" value="$image"/><RectangleLabels name="label" toName="image">``."""


@dataclass(frozen=True)
class Detection:
    """One kept box of an image: inclusive pixel box, score, class."""

    box: tuple[int, int, int, int]
    score: float | None
    class_id: int
    class_name: str


@dataclass(frozen=True)
class ImageEntry:
    """One localized image of ``predictions.jsonl``: its relative path, (W, H), boxes and
    the mask file (relative to the predictions' folder) when the run saved masks."""

    path: str
    size: tuple[int, int]
    detections: tuple[Detection, ...]
    mask: str | None


@dataclass(frozen=True)
class Predictions:
    """A ``predictions.jsonl`` read for conversion.

    images: the ``ok`` images in file order; failed: how many lines were ``status: error``;
    classes: (class id, name) of every class with a box, by class id; folder: where the file
    is; images_root: the folder the paths are relative to (``run.json``'s ``images``), or None
    (root_problem: why, when ``run.json`` is there but unusable).
    """

    images: list[ImageEntry]
    failed: int
    classes: list[tuple[int, str]]
    folder: Path
    images_root: Path | None
    root_problem: str = ""


def _bad(path: Path, lineno: int, reason: str) -> ConvertError:
    return ConvertError(f"{printable(path, 100)}:{lineno}: {reason}")


def _shown(value: Any) -> str:
    """A value of a record for a message: its JSON, bounded."""
    return printable(repr(value), 80)


def _plain_relative(text: str) -> bool:
    """Whether ``text`` is a relative path that stays where it is joined (no ``..``, not
    absolute, no empty or NUL part)."""
    if not text or "\0" in text:
        return False
    pure = PurePosixPath(text)
    return not pure.is_absolute() and ".." not in pure.parts and not text.endswith("/")


def _box(path: Path, lineno: int, value: Any, size: tuple[int, int]) -> tuple[int, int, int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise _bad(path, lineno, f"box {_shown(value)} is not [x0, y0, x1, y1] of integers")
    x0, y0, x1, y1 = value
    if not (0 <= x0 <= x1 < size[0] and 0 <= y0 <= y1 < size[1]):
        raise _bad(
            path, lineno, f"box {_shown(value)} is not inside the {size[0]} x {size[1]} image"
        )
    return x0, y0, x1, y1


def _entry(path: Path, lineno: int, record: dict, min_score: float) -> ImageEntry:
    size = record.get("image_size")
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise _bad(path, lineno, f"image_size {_shown(size)} is not [width, height]")
    if max(size) > MAX_SIDE:
        raise _bad(path, lineno, f"image_size {_shown(size)} is larger than any image")
    width, height = size
    boxes = record.get("boxes", [])
    scores = record.get("box_scores")
    if not isinstance(boxes, list):
        raise _bad(path, lineno, "boxes is not a list")
    if scores is None:  # a file from before box scores: its "score" was the class's
        scores = [None] * len(boxes)
    if not isinstance(scores, list) or len(scores) != len(boxes):
        raise _bad(path, lineno, "box_scores does not give one score per box")
    class_id, class_name = record.get("class_id"), record.get("class_name")
    if boxes and not (isinstance(class_id, int) and isinstance(class_name, str)):
        raise _bad(path, lineno, "boxes without a class (class_id and class_name are needed)")
    if boxes and not 0 <= class_id <= MAX_SIDE:
        raise _bad(path, lineno, f"class_id {_shown(class_id)} is not a class id")
    detections = []
    for value, score in zip(boxes, scores, strict=True):
        if score is not None and not (isinstance(score, int | float) and 0 <= score <= 1):
            raise _bad(path, lineno, f"box score {_shown(score)} is not a number in [0, 1]")
        if score is not None and score < min_score:
            continue
        box = _box(path, lineno, value, (width, height))
        detections.append(Detection(box, score, class_id, class_name))
    mask = record.get("mask")
    if mask is not None and not (
        isinstance(mask, str)
        and _plain_relative(mask)
        and PurePosixPath(mask).parts[0] == MASKS
        and len(PurePosixPath(mask).parts) > 1
    ):
        raise _bad(path, lineno, f"mask {_shown(mask)} is not a file in the run's {MASKS}/")
    return ImageEntry(record["path"], (width, height), tuple(detections), mask)


def read_predictions(path: str | Path, min_score: float = 0.0) -> Predictions:
    """Read and check ``predictions.jsonl`` (:class:`ConvertError` naming the line at fault);
    boxes scored below ``min_score`` are dropped."""
    path = Path(path)
    try:
        data = read_regular(path)
    except FileNotFoundError:
        raise ConvertError(f"{printable(path)}: predictions file not found") from None
    except OSError as exc:
        raise ConvertError(f"{printable(path)}: cannot read ({exc.strerror or exc})") from None
    images: list[ImageEntry] = []
    failed = 0
    seen: dict[str, int] = {}
    classes: dict[int, str] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except ValueError as exc:
            raise _bad(path, lineno, str(exc)) from None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise _bad(path, lineno, "not a prediction record (no path)")
        rel = record["path"]
        if not rel or "\0" in rel:
            raise _bad(path, lineno, f"path {_shown(rel)} is not a file name")
        if rel in seen:
            raise _bad(path, lineno, f"{printable(rel)} again (first on line {seen[rel]})")
        seen[rel] = lineno
        if record.get("status") != "ok":
            failed += 1
            continue
        entry = _entry(path, lineno, record, min_score)
        for det in entry.detections:
            if classes.setdefault(det.class_id, det.class_name) != det.class_name:
                raise _bad(path, lineno, f"class id {det.class_id} has two names")
        images.append(entry)
    root, problem = _images_root(path.parent / RUN_INFO)
    return Predictions(images, failed, sorted(classes.items()), path.parent, root, problem)


def _images_root(info: Path) -> tuple[Path | None, str]:
    """``run.json``'s ``images`` folder, or None and why not (empty: no ``run.json``)."""
    try:
        record = parse_json(read_regular(info, limit=MAX_RUN_INFO_BYTES))
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    except ValueError as exc:
        return None, str(exc)
    images = record.get("images") if isinstance(record, dict) else None
    if not isinstance(images, str) or not images or "\0" in images:
        return None, f"images {_shown(images)} is not a folder"
    return Path(images), ""


def _categories(preds: Predictions) -> dict[int, int]:
    """{class id: index} of the classes with a box, in class id order."""
    return {cid: i for i, (cid, _) in enumerate(preds.classes)}


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, its links followed, lies inside ``folder`` (also resolved)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):
        return False


def _mask(preds: Predictions, entry: ImageEntry) -> np.ndarray | None:
    """The image's saved mask (H, W) bool, None when the run saved none. Only a regular file
    inside the run's ``masks/`` is read, its size checked before it is decoded."""
    if entry.mask is None:
        return None
    import warnings

    from PIL import Image

    file = preds.folder / entry.mask
    shown = printable(file)
    if not _inside(file, preds.folder / MASKS) or (preds.folder / MASKS).is_symlink():
        raise ConvertError(
            f"{shown}: the mask of {printable(entry.path)} is not in the run's "
            f"{MASKS}/ (a link leaves it)"
        )
    try:
        with os.fdopen(open_regular(file), "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as image:
                if image.size != entry.size:
                    raise ConvertError(f"{shown}: mask is {image.size}, the image {entry.size}")
                if entry.size[0] * entry.size[1] > MAX_MASK_PIXELS:
                    raise ConvertError(f"{shown}: mask of {entry.size} is too large to read")
                mask = np.asarray(image.convert("L")) > 127
    except ConvertError:
        raise
    except Exception as exc:  # Pillow's decoders raise many types on malformed data
        reason = getattr(exc, "strerror", None) or printable(exc, 100)
        raise ConvertError(
            f"{shown}: cannot read the mask of {printable(entry.path)} ({reason})"
        ) from None
    return mask


def coco_document(preds: Predictions) -> dict[str, Any]:
    """The COCO detection document of ``preds`` (module docstring)."""
    from pycocotools import mask as mask_utils

    index = _categories(preds)
    images, annotations = [], []
    for image_id, entry in enumerate(preds.images, 1):
        width, height = entry.size
        images.append({"id": image_id, "file_name": entry.path, "width": width, "height": height})
        mask = _mask(preds, entry) if entry.detections else None
        for det in entry.detections:
            x0, y0, x1, y1 = det.box
            w, h = x1 - x0 + 1, y1 - y0 + 1
            annotation: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": index[det.class_id] + 1,
                "bbox": [x0, y0, w, h],
                "area": w * h,
                "iscrowd": 0,
                "score": det.score,
            }
            if mask is not None:
                region = np.zeros(mask.shape, dtype=np.uint8, order="F")
                region[y0 : y1 + 1, x0 : x1 + 1] = mask[y0 : y1 + 1, x0 : x1 + 1]
                rle = mask_utils.encode(region)
                annotation["area"] = int(mask_utils.area(rle))
                annotation["segmentation"] = {
                    "size": [height, width],
                    "counts": rle["counts"].decode("ascii"),
                }
            annotations.append(annotation)
    categories = [
        {"id": i + 1, "name": name, "supercategory": "object", "class_id": cid}
        for i, (cid, name) in enumerate(preds.classes)
    ]
    return {
        "info": {"description": "lcar-deploy predictions", "version": "1"},
        "images": images,
        "categories": categories,
        "annotations": annotations,
    }


def split_images(preds: Predictions, val_fraction: float, seed: int = 0) -> dict[str, str]:
    """{relative path: ``"train"`` or ``"val"``} for every image of ``preds``, stratified.

    The images are grouped by class (an image's boxes share one class), the images with no
    box (``no_object``, or every box under ``--min-score``) forming one more group. Of a group
    of n images, ``round(n * val_fraction)`` (halves up), at most n - 1, go to val: a class
    of one image stays in train. Which ones: those whose ``sha256(seed, path)`` sorts first,
    so the split depends on the seed and the paths alone, not on the order of the lines.
    """
    groups: dict[int | None, list[str]] = {}
    for entry in preds.images:
        group = entry.detections[0].class_id if entry.detections else None
        groups.setdefault(group, []).append(entry.path)

    def rank(path: str) -> tuple[bytes, str]:
        key = f"{seed}\0{path}".encode("utf-8", "surrogatepass")
        return hashlib.sha256(key).digest(), path

    split: dict[str, str] = {}
    for paths in groups.values():
        paths.sort(key=rank)
        held_out = min(math.floor(len(paths) * val_fraction + 0.5), len(paths) - 1)
        for k, path in enumerate(paths):
            split[path] = "val" if k < held_out else "train"
    return split


def split_coco(document: dict[str, Any], split: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``document`` (:func:`coco_document`) cut into {part: document} for each of
    :data:`SPLITS`: every image and its annotations keep their ids (unique across the parts,
    so that the parts can be merged back), every part has all the categories."""
    part_of = {image["id"]: split[image["file_name"]] for image in document["images"]}
    return {
        part: {
            **document,
            "images": [i for i in document["images"] if part_of[i["id"]] == part],
            "annotations": [a for a in document["annotations"] if part_of[a["image_id"]] == part],
        }
        for part in SPLITS
    }


def split_file(target: Path, part: str) -> Path:
    """The file of ``part`` of a split file output: ``coco.json`` -> ``coco_train.json``."""
    return target.with_name(f"{target.stem}_{part}{target.suffix}")


def label_studio_tasks(preds: Predictions, url_prefix: str = "") -> list[dict[str, Any]]:
    """Label Studio tasks with one prediction each (module docstring); ``data.image`` is
    ``url_prefix`` + the image's relative path."""
    from_name, to_name = LABEL_STUDIO_NAMES
    tasks = []
    for entry in preds.images:
        width, height = entry.size
        results = []
        for k, det in enumerate(entry.detections):
            x0, y0, x1, y1 = det.box
            results.append(
                {
                    "id": f"r{k}",
                    "type": "rectanglelabels",
                    "from_name": from_name,
                    "to_name": to_name,
                    "original_width": width,
                    "original_height": height,
                    "image_rotation": 0,
                    "value": {
                        "x": 100.0 * x0 / width,
                        "y": 100.0 * y0 / height,
                        "width": 100.0 * (x1 - x0 + 1) / width,
                        "height": 100.0 * (y1 - y0 + 1) / height,
                        "rotation": 0,
                        "rectanglelabels": [det.class_name],
                    },
                    "score": det.score,
                }
            )
        scores = [d.score for d in entry.detections if d.score is not None]
        tasks.append(  # "predictions" first: SIGNATURES recognises the file by it
            {
                "predictions": [
                    {
                        "model_version": "lcar-deploy",
                        "score": min(scores) if scores else 0.0,
                        "result": results,
                    }
                ],
                "data": {"image": url_prefix + entry.path},
            }
        )
    return tasks


def _flat_names(preds: Predictions, xml: bool = False) -> dict[str, str]:
    """{relative path: file name without folders} for the YOLO / VOC folders, which are flat
    (``a/b.jpg`` -> ``a__b.jpg``; ``xml``: characters XML cannot hold, such as control
    characters or bytes that are not UTF-8, escaped as :func:`printable` does); ConvertError
    when two images would share a file stem."""
    names: dict[str, str] = {}
    stems: dict[str, str] = {}
    for entry in preds.images:
        flat = entry.path.replace(os.sep, "__")
        if xml:
            flat = printable(flat, len(flat) * 12)
        stem = os.path.splitext(flat)[0]
        if stem in stems:
            raise ConvertError(
                f"{printable(stems[stem])} and {printable(entry.path)} would share the label "
                f"file {printable(stem)}: rename one"
            )
        stems[stem] = entry.path
        names[entry.path] = flat
    return names


def _image_source(root: Path, rel: str) -> Path:
    """The image ``rel`` of the run, checked to be a regular file inside ``root`` and named
    like an image: nothing else is ever linked."""
    from .image_io import image_extensions

    source = root / rel
    if not _plain_relative(rel) or not _inside(source, root):
        raise ConvertError(
            f"{printable(rel)}: not inside the image folder {printable(root)} (a path or a "
            "link that leaves it); only the run's images are linked"
        )
    if not rel.lower().endswith(image_extensions()):
        raise ConvertError(f"{printable(rel)}: not named like an image; only images are linked")
    try:
        info = source.stat()
    except OSError:
        raise ConvertError(
            f"{printable(source)}: image of {printable(rel)} not found (is --images right?)"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise ConvertError(f"{printable(source)}: image of {printable(rel)} is not a regular file")
    return source.resolve()


def _link_images(
    preds: Predictions,
    images_root: Path | None,
    folder: Path,
    xml: bool = False,
    split: dict[str, str] | None = None,
) -> dict[str, str]:
    """Links to every image in ``folder`` (``split``: in ``folder/<its part>``, every part's
    folder made, even empty) under its flat name; {relative path: flat name}."""
    root = images_root or preds.images_root
    if root is None:
        why = f" ({preds.root_problem})" if preds.root_problem else ""
        raise ConvertError(
            f"{printable(preds.folder / RUN_INFO)}: does not say where the images are{why}; "
            "give --images"
        )
    names = _flat_names(preds, xml)
    sources = {rel: _image_source(root, rel) for rel in names}
    folder.mkdir(parents=True)
    for part in SPLITS if split else ():
        (folder / part).mkdir()
    for rel, flat in names.items():
        (folder / (split[rel] if split else "") / flat).symlink_to(sources[rel])
    return names


def _detections(entry: ImageEntry, index: dict[int, int]) -> Any:
    import supervision as sv

    if not entry.detections:
        return sv.Detections.empty()
    xyxy = np.array([d.box for d in entry.detections], dtype=np.float64)
    xyxy[:, 2:] += 1  # inclusive pixels -> far edges
    return sv.Detections(
        xyxy=xyxy,
        class_id=np.array([index[d.class_id] for d in entry.detections], dtype=int),
        confidence=np.array([d.score or 0.0 for d in entry.detections], dtype=np.float32),
    )


def write_yolo(
    preds: Predictions,
    folder: Path,
    images_root: Path | None = None,
    final: Path | None = None,
    split: dict[str, str] | None = None,
    comment: str = "",
) -> None:
    """``folder/images`` (links), ``folder/labels/*.txt``, ``folder/data.yaml`` (its ``path``:
    ``final``, where the folder will be, default ``folder``); with ``split`` ({relative path:
    part}), ``images/<part>`` and ``labels/<part>`` for each of :data:`SPLITS`. ``comment``
    heads ``data.yaml``."""
    import yaml
    from supervision.dataset.formats.yolo import detections_to_yolo_annotations

    index = _categories(preds)
    names = _link_images(preds, images_root, folder / "images", split=split)
    labels = folder / "labels"
    labels.mkdir()
    for part in SPLITS if split else ():
        (labels / part).mkdir()
    for entry in preds.images:
        width, height = entry.size
        lines = detections_to_yolo_annotations(_detections(entry, index), (height, width))
        stem = os.path.splitext(names[entry.path])[0]
        label = labels / (split[entry.path] if split else "") / f"{stem}.txt"
        label.write_text("".join(f"{line}\n" for line in lines))
    data = {
        "path": str((final or folder).resolve()),
        "train": "images/train" if split else "images",
        "val": "images/val" if split else "images",
        "nc": len(preds.classes),
        "names": [name for _, name in preds.classes],
    }
    heading = "".join(f"# {line}\n" for line in comment.splitlines())
    (folder / "data.yaml").write_text(heading + yaml.safe_dump(data, sort_keys=False))


def write_voc(
    preds: Predictions, folder: Path, images_root: Path | None = None, final: Path | None = None
) -> None:
    """``folder/JPEGImages`` (links) and ``folder/Annotations/*.xml``; names with characters
    XML cannot hold are escaped (:func:`_flat_names`)."""
    from supervision.dataset.formats.pascal_voc import detections_to_pascal_voc

    index = _categories(preds)
    classes = [printable(name, len(name) * 12) for _, name in preds.classes]
    names = _link_images(preds, images_root, folder / "JPEGImages", xml=True)
    annotations = folder / "Annotations"
    annotations.mkdir()
    for entry in preds.images:
        width, height = entry.size
        flat = names[entry.path]
        xml = detections_to_pascal_voc(_detections(entry, index), classes, flat, (height, width, 3))
        (annotations / f"{os.path.splitext(flat)[0]}.xml").write_text(xml)


def convert_predictions(
    predictions: str | Path,
    to: str,
    out: str | Path | None = None,
    *,
    images: str | Path | None = None,
    min_score: float = 0.0,
    url_prefix: str = "",
    val_fraction: float = 0.0,
    seed: int = 0,
) -> list[Path]:
    """Write ``predictions`` (a ``predictions.jsonl``) in the format ``to`` (coco | yolo | voc
    | labelstudio) to ``out`` (default: :data:`TARGETS` beside the file); returns what was
    written: ``[out]``, or for a split COCO file the files of :data:`SPLITS`
    (:func:`split_file`).

    ``images``: the folder the record paths are relative to (default: ``run.json``'s, needed
    by yolo and voc, which link the images); ``min_score``: drop boxes scored below it (before
    the split); ``url_prefix``: put before each path in Label Studio's ``data.image``;
    ``val_fraction`` (in [0, 1), coco and yolo): hold out that share of each class for
    validation (:func:`split_images`, with ``seed``); 0 writes one set, as without a split.
    Raises :class:`ConvertError` for a malformed file (the line named) or option, and
    :class:`OutputError` when the output cannot be written.
    """
    if to not in TARGETS:
        raise ConvertError(f"unknown format {to!r}; choose one of {', '.join(TARGETS)}")
    if not 0.0 <= min_score <= 1.0:
        raise ConvertError(f"min_score must be in [0, 1], got {min_score}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConvertError(
            f"val fraction must be in [0, 1) (the share of each class held out for "
            f"validation; 0: no split), got {printable(val_fraction, 40)}"
        )
    if val_fraction and to not in SPLIT_FORMATS:
        raise ConvertError(
            f"a train/val split (val fraction {val_fraction}) is written only for "
            f"{' and '.join(SPLIT_FORMATS)}, not {to}"
        )
    preds = read_predictions(predictions, min_score)
    target = Path(out) if out is not None else preds.folder / TARGETS[to]
    root = Path(images).resolve() if images is not None else None
    split = split_images(preds, val_fraction, seed) if val_fraction else None
    if split is not None and "val" not in split.values():
        raise ConvertError(
            f"val fraction {val_fraction} puts none of the {len(preds.images)} images in val "
            "(each class keeps one image in train, counts are rounded); give a larger one"
        )
    try:
        if to in ("coco", "labelstudio"):
            return _write_file(preds, to, target, url_prefix, split, (val_fraction, seed))

        def build(tmp: Path) -> None:
            if to == "yolo":
                comment = _split_comment(split, val_fraction, seed)
                write_yolo(preds, tmp, root, target.resolve(), split, comment)
            else:
                write_voc(preds, tmp, root, target.resolve())

        replace_folder(target, build, f"convert-{to}")
    except OSError as exc:
        raise OutputError(
            f"{printable(exc.filename or target)}: cannot write ({exc.strerror or exc})"
        ) from None
    return [target]


def _split_comment(split: dict[str, str] | None, val_fraction: float, seed: int) -> str:
    """What ``data.yaml`` says about its split (YOLO only)."""
    if split is None:
        return (
            "No held-out split: val is the training images (Ultralytics requires a val\n"
            "entry). lcar-deploy convert --val-fraction F --seed S writes a stratified one."
        )
    counts = [sum(1 for p in split.values() if p == part) for part in SPLITS]
    return (
        f"Split by lcar-deploy convert --val-fraction {val_fraction} --seed {seed}\n"
        f"(stratified by class): {counts[0]} train images, {counts[1]} val images."
    )


def _write_file(
    preds: Predictions,
    to: str,
    target: Path,
    url_prefix: str,
    split: dict[str, str] | None,
    how: tuple[float, int],
) -> list[Path]:
    """The file output(s) of :func:`convert_predictions`: each target checked before any is
    written, each written whole."""
    if to == "coco":
        document = coco_document(preds)
        if split is None:
            documents = {target: document}
        else:
            val_fraction, seed = how
            documents = {
                split_file(target, part): {
                    **part_document,
                    "info": {
                        **document["info"],
                        "split": part,
                        "val_fraction": val_fraction,
                        "seed": seed,
                    },
                }
                for part, part_document in split_coco(document, split).items()
            }
    else:
        documents = {target: label_studio_tasks(preds, url_prefix)}
    texts = {}
    for file, value in documents.items():
        check_file_target(file, to)
        try:
            texts[file] = json_text(value)
        except ValueError as exc:
            raise ConvertError(f"{printable(file)}: {exc}") from None
    for file, text in texts.items():
        write_atomic(file, lambda tmp, text=text: tmp.write_text(text))
    return list(texts)


def check_file_target(target: Path, to: str) -> None:
    """:class:`OutputError` unless ``target`` is absent or a regular file an earlier
    conversion to ``to`` wrote (it begins with :data:`SIGNATURES`' bytes): predictions, the
    run's other files and the user's files are never overwritten."""
    try:
        info = target.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"{printable(target)}: cannot be used ({exc.strerror or exc})") from None
    head = b""
    if stat.S_ISREG(info.st_mode):
        try:
            with os.fdopen(open_regular(target, follow=False), "rb") as f:
                head = f.read(len(SIGNATURES[to]))
        except OSError:
            head = b""
    if head != SIGNATURES[to] and not (to == "labelstudio" and head.strip() == b"[]"):
        raise OutputError(
            f"{printable(target)}: exists and is not a {to} file written by lcar-deploy convert "
            "(it would be overwritten); choose another --out"
        )
