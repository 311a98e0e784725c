"""``lcar-deploy convert``: ``predictions.jsonl`` -> COCO, YOLO, Pascal VOC or Label Studio.

``predictions.jsonl`` stays the source of truth: every format is written from it alone (and
from the images and masks it names), so a conversion can be run again at any time and gives
the same files. Each output appears whole or not at all: a file is written to a temporary
name and renamed (:func:`lcar_deploy.io.write_atomic`); a folder is built beside its target
and swapped in.

- ``coco``: ``coco.json``, a COCO detection file (``images``, ``categories``,
  ``annotations`` with ``bbox`` ``[x, y, w, h]``, ``area``, ``score`` and, when the run saved
  masks, ``segmentation`` as RLE from pycocotools). Loadable by ``COCO()`` (a dataset) and its
  ``annotations`` by ``COCO.loadRes`` (results for ``COCOeval``).
- ``yolo``: ``yolo/`` with ``images/`` (links to the images), ``labels/*.txt`` (one
  ``class cx cy w h`` line per box, normalised) and ``data.yaml``; lines written by
  supervision.
- ``voc``: ``voc/`` with ``JPEGImages/`` (links) and ``Annotations/*.xml``, written by
  supervision (1-based inclusive pixel corners, the VOC devkit's).
- ``labelstudio``: ``labelstudio.json``, Label Studio tasks with pre-annotations
  (``predictions``: ``rectanglelabels`` results in percent of the image, ``score``).

Box conventions: a record's box is inclusive pixels ``[x0, y0, x1, y1]``; it covers the
continuous rectangle ``[x0, x1 + 1) x [y0, y1 + 1)``, which is what COCO, YOLO and Label Studio
describe. Images with ``status: error`` are left out (counted in the summary); an image with
no object is kept, with no box. Every schema: docs/formats.md.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConvertError, OutputError
from .io import replace_folder, write_atomic
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
    is; images_root: the folder the paths are relative to (``run.json``'s ``images``), or None.
    """

    images: list[ImageEntry]
    failed: int
    classes: list[tuple[int, str]]
    folder: Path
    images_root: Path | None


def _bad(path: Path, lineno: int, reason: str) -> ConvertError:
    return ConvertError(f"{path}:{lineno}: {reason}")


def _box(path: Path, lineno: int, value: Any, size: tuple[int, int]) -> tuple[int, int, int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise _bad(path, lineno, f"box {value!r} is not [x0, y0, x1, y1] of integers")
    x0, y0, x1, y1 = value
    if not (0 <= x0 <= x1 < size[0] and 0 <= y0 <= y1 < size[1]):
        raise _bad(path, lineno, f"box {value} is not inside the {size[0]} x {size[1]} image")
    return x0, y0, x1, y1


def _entry(path: Path, lineno: int, record: dict, min_score: float) -> ImageEntry:
    size = record.get("image_size")
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and v > 0 for v in size)
    ):
        raise _bad(path, lineno, f"image_size {size!r} is not [width, height]")
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
    detections = []
    for value, score in zip(boxes, scores, strict=True):
        if score is not None and not (isinstance(score, int | float) and 0 <= score <= 1):
            raise _bad(path, lineno, f"box score {score!r} is not a number in [0, 1]")
        if score is not None and score < min_score:
            continue
        box = _box(path, lineno, value, (width, height))
        detections.append(Detection(box, score, class_id, class_name))
    mask = record.get("mask")
    return ImageEntry(
        record["path"], (width, height), tuple(detections), mask if isinstance(mask, str) else None
    )


def read_predictions(path: str | Path, min_score: float = 0.0) -> Predictions:
    """Read and check ``predictions.jsonl`` (:class:`ConvertError` naming the line at fault);
    boxes scored below ``min_score`` are dropped."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: predictions file not found")
    images: list[ImageEntry] = []
    failed = 0
    seen: dict[str, int] = {}
    classes: dict[int, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{path}: cannot read ({exc})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(path, lineno, f"not JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise _bad(path, lineno, "not a prediction record (no path)")
        if record["path"] in seen:
            raise _bad(
                path, lineno, f"{record['path']} again (first on line {seen[record['path']]})"
            )
        seen[record["path"]] = lineno
        if record.get("status") != "ok":
            failed += 1
            continue
        entry = _entry(path, lineno, record, min_score)
        for det in entry.detections:
            if classes.setdefault(det.class_id, det.class_name) != det.class_name:
                raise _bad(path, lineno, f"class id {det.class_id} has two names")
        images.append(entry)
    root = None
    info = path.parent / RUN_INFO
    with contextlib.suppress(OSError, ValueError, TypeError):
        images_root = json.loads(info.read_text()).get("images")
        root = Path(images_root) if isinstance(images_root, str) else None
    return Predictions(images, failed, sorted(classes.items()), path.parent, root)


def _categories(preds: Predictions) -> dict[int, int]:
    """{class id: index} of the classes with a box, in class id order."""
    return {cid: i for i, (cid, _) in enumerate(preds.classes)}


def _mask(preds: Predictions, entry: ImageEntry) -> np.ndarray | None:
    """The image's saved mask (H, W) bool, None when the run saved none."""
    if entry.mask is None:
        return None
    from PIL import Image

    file = preds.folder / entry.mask
    try:
        with Image.open(file) as image:
            mask = np.asarray(image.convert("L")) > 127
    except OSError as exc:
        raise ConvertError(f"{file}: cannot read the mask of {entry.path} ({exc})") from None
    if mask.shape != (entry.size[1], entry.size[0]):
        raise ConvertError(f"{file}: mask is {mask.shape[::-1]}, the image {entry.size}")
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
        tasks.append(
            {
                "data": {"image": url_prefix + entry.path},
                "predictions": [
                    {
                        "model_version": "lcar-deploy",
                        "score": min(scores) if scores else 0.0,
                        "result": results,
                    }
                ],
            }
        )
    return tasks


def _flat_names(preds: Predictions) -> dict[str, str]:
    """{relative path: file name without folders} for the YOLO / VOC folders, which are flat
    (``a/b.jpg`` -> ``a__b.jpg``); ConvertError when two images would share a file stem."""
    names: dict[str, str] = {}
    stems: dict[str, str] = {}
    for entry in preds.images:
        flat = entry.path.replace(os.sep, "__")
        stem = os.path.splitext(flat)[0]
        if stem in stems:
            raise ConvertError(
                f"{stems[stem]} and {entry.path} would share the label file {stem}: rename one"
            )
        stems[stem] = entry.path
        names[entry.path] = flat
    return names


def _link_images(preds: Predictions, images_root: Path | None, folder: Path) -> dict[str, str]:
    """Links to every image in ``folder`` under its flat name; {relative path: flat name}."""
    root = images_root or preds.images_root
    if root is None:
        raise ConvertError(
            f"{preds.folder / RUN_INFO}: does not say where the images are; give --images"
        )
    names = _flat_names(preds)
    folder.mkdir(parents=True)
    for rel, flat in names.items():
        source = (root / rel).resolve()
        if not source.is_file():
            raise ConvertError(f"{source}: image of {rel} not found (is --images right?)")
        (folder / flat).symlink_to(source)
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
    preds: Predictions, folder: Path, images_root: Path | None = None, final: Path | None = None
) -> None:
    """``folder/images`` (links), ``folder/labels/*.txt``, ``folder/data.yaml`` (its ``path``:
    ``final``, where the folder will be, default ``folder``)."""
    import yaml
    from supervision.dataset.formats.yolo import detections_to_yolo_annotations

    index = _categories(preds)
    names = _link_images(preds, images_root, folder / "images")
    labels = folder / "labels"
    labels.mkdir()
    for entry in preds.images:
        width, height = entry.size
        lines = detections_to_yolo_annotations(_detections(entry, index), (height, width))
        stem = os.path.splitext(names[entry.path])[0]
        (labels / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))
    data = {
        "path": str((final or folder).resolve()),
        "train": "images",
        "val": "images",
        "nc": len(preds.classes),
        "names": [name for _, name in preds.classes],
    }
    (folder / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def write_voc(
    preds: Predictions, folder: Path, images_root: Path | None = None, final: Path | None = None
) -> None:
    """``folder/JPEGImages`` (links) and ``folder/Annotations/*.xml``."""
    from supervision.dataset.formats.pascal_voc import detections_to_pascal_voc

    index = _categories(preds)
    classes = [name for _, name in preds.classes]
    names = _link_images(preds, images_root, folder / "JPEGImages")
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
) -> Path:
    """Write ``predictions`` (a ``predictions.jsonl``) in the format ``to`` (coco | yolo | voc
    | labelstudio) to ``out`` (default: :data:`TARGETS` beside the file); returns ``out``.

    ``images``: the folder the record paths are relative to (default: ``run.json``'s, needed
    by yolo and voc, which link the images); ``min_score``: drop boxes scored below it;
    ``url_prefix``: put before each path in Label Studio's ``data.image``. Raises
    :class:`ConvertError` for a malformed file (the line named) and :class:`OutputError` when
    the output cannot be written.
    """
    if to not in TARGETS:
        raise ConvertError(f"unknown format {to!r}; choose one of {', '.join(TARGETS)}")
    if not 0.0 <= min_score <= 1.0:
        raise ConvertError(f"min_score must be in [0, 1], got {min_score}")
    preds = read_predictions(predictions, min_score)
    target = Path(out) if out is not None else preds.folder / TARGETS[to]
    root = Path(images).resolve() if images is not None else None
    try:
        if to in ("coco", "labelstudio"):
            document = (
                coco_document(preds) if to == "coco" else label_studio_tasks(preds, url_prefix)
            )
            text = json.dumps(document)
            write_atomic(target, lambda tmp: tmp.write_text(text))
        else:
            writer = write_yolo if to == "yolo" else write_voc
            replace_folder(target, lambda tmp: writer(preds, tmp, root, target.resolve()))
    except OSError as exc:
        raise OutputError(
            f"{exc.filename or target}: cannot write ({exc.strerror or exc})"
        ) from None
    return target
