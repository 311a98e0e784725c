"""Dataset loaders for weakly-supervised localization (training and ``lcar-deploy eval``).

Two on-disk layouts, the ones the full datasets use:

- ``cub``: the official CUB-200-2011 layout under ``root`` (``images.txt``,
  ``image_class_labels.txt``, ``train_test_split.txt``, ``bounding_boxes.txt`` with
  ``id x y width height``, ``classes.txt``; images under ``root/images``). Boxes become
  ``x0 = x, y0 = y, x1 = x + width, y1 = y + height``, the conversion behind wsolevaluation's
  CUB ``localization.txt`` (image 1: ``60 27 325 304`` -> ``60,27,385,331``). The fractional
  values of the file are kept (wsolevaluation's own metadata rounds them to integers).
- ``ilsvrc`` / ``wsol``: the wsolevaluation layout, ``metadata/{split}/image_ids.txt``,
  ``class_labels.txt`` (``path,class_id``), ``localization.txt`` (``path,x0,y0,x1,y1``, one line
  per box, several lines for several objects) and, when present, ``image_sizes.txt``
  (``path,width,height``); paths are relative to ``root``. ``ilsvrc`` names classes by ImageNet
  index (timm's ImageNet info); ``wsol`` is the same reader with the ids as names, for other
  datasets in that layout. OpenImages-style ``localization.txt`` lines (``path,mask_path,
  ignore_path``) are read as mask paths (:attr:`Record.masks`), with no boxes.
- ``folder``: ImageFolder, ``root/<class name>/**/*.jpg`` (the class is the top folder under the
  split folder; images of a class may sit in sub-folders). The split folder is ``root/<split>``
  when it exists (``root/train``, ``root/test``), else ``root`` itself, for every split. Classes
  are the folder names of every split folder together (so train and test agree), sorted; ids
  ``0..C-1`` in that order. No boxes. Refused: a class folder with no image, an image directly
  in the split folder (no class), a folder with no class folder.
- ``csv``: ``root`` is a CSV file of ``path,class[,x0,y0,x1,y1]`` lines (an optional first
  line ``path,class,...`` is a header; fields are quoted as the csv module reads them, e.g. a
  class name with a comma); ``path`` is relative to the file's folder (or
  absolute), ``class`` a class name, the box inclusive ``x0,y0,x1,y1`` in original pixels. An
  image with several objects takes one line per box, every line with a box and the same class;
  any other repeated path is refused. Classes: the names in the file, sorted, ids ``0..C-1``.
  The file is the whole split, whatever ``split`` says.

Class ids are the dataset's own (CUB: 1..200, ILSVRC: 0..999); every dataset also maps the ids
that occur in its label files (all splits together, so train and test agree) to contiguous
labels ``0..C-1`` in increasing id order.

Boxes stay in original pixels; :meth:`Record.scaled_boxes` brings them to the evaluation size
with :func:`lcar_deploy.metrics.scale_boxes` (``int(x * 224 / W)``), the one implementation.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .metrics import EVAL_SIZE
from .names import DATASET_KINDS

DATASETS = DATASET_KINDS
CSV_HEADER = ("path", "class")
CUB_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "classes.txt",
)


@dataclass(frozen=True, eq=False)
class Record:
    """One image of a dataset.

    image_id: path relative to the image root, as written in the metadata.
    path: absolute path of the image file.
    class_id: the dataset's own class id; label: its contiguous index in ``0..C-1``.
    boxes: (K, 4) float64 ``x0 y0 x1 y1`` GT boxes in original pixels (K = 0: none).
    size: original ``(width, height)`` when the metadata gives it (``image_sizes.txt``),
        else ``None`` (read it from the image, e.g. ``load_image(path).original_size``).
    masks: GT mask files (OpenImages-style metadata), else empty.
    """

    image_id: str
    path: Path
    class_id: int
    label: int
    boxes: np.ndarray
    size: tuple[int, int] | None = None
    masks: tuple[Path, ...] = ()

    def scaled_boxes(
        self, resize_size: int = EVAL_SIZE, image_size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """(K, 4) int64 GT boxes at ``resize_size`` x ``resize_size`` (``int(x * S / W)``).

        Boxes are first clipped to the image, ``x <= W - 1`` and ``y <= H - 1``, as in
        wsolevaluation's metadata (CUB's ``x + width`` can reach ``W``, and a few boxes
        reach past it).
        ``image_size``: the original ``(width, height)``; defaults to :attr:`size`.
        """
        from .metrics import scale_boxes

        size = image_size or self.size
        if size is None:
            raise DatasetError(
                f"{self.image_id}: original size unknown; pass image_size (read it from the image)"
            )
        if len(self.boxes) == 0:
            return np.zeros((0, 4), dtype=np.int64)
        width, height = size
        clipped = np.minimum(self.boxes, [width - 1, height - 1, width - 1, height - 1])
        return scale_boxes(clipped, size, (resize_size, resize_size))


@dataclass(frozen=True)
class Dataset:
    """The records of one split, with the class table shared by every split.

    kind: ``cub`` / ``ilsvrc`` / ``wsol``; root: image root; split: ``train`` / ``test`` / ...
    records: the images, in metadata order.
    class_ids, class_names: the C classes, index = contiguous label.
    metadata: the metadata folder that was read.
    """

    kind: str
    root: Path
    split: str
    records: list[Record]
    class_ids: list[int]
    class_names: list[str]
    metadata: Path

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 contiguous labels."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines of ``path``."""
    if not path.is_file():
        raise DatasetError(f"{path}: metadata file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _fields(path: Path, lineno: int, line: str, sep: str | None, count: int) -> list[str]:
    parts = line.split(sep) if sep is None else [p.strip() for p in line.split(sep)]
    if len(parts) != count:
        what = "comma-separated fields" if sep else "fields"
        raise DatasetError(f"{path}:{lineno}: expected {count} {what}, got {len(parts)}: {line!r}")
    return parts


def _int(path: Path, lineno: int, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{path}:{lineno}: {what} {value!r} is not an integer") from None


def _float(path: Path, lineno: int, value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(f"{path}:{lineno}: {what} {value!r} is not a number") from None
    if not np.isfinite(number):
        raise DatasetError(f"{path}:{lineno}: {what} {value!r} is not finite")
    return number


def _box(path: Path, lineno: int, values: list[str]) -> list[float]:
    x0, y0, x1, y1 = (_float(path, lineno, v, "box coordinate") for v in values)
    if min(x0, y0) < 0 or x1 < x0 or y1 < y0:
        raise DatasetError(
            f"{path}:{lineno}: box {values} is not x0,y0,x1,y1 with 0 <= x0 <= x1, 0 <= y0 <= y1"
        )
    return [x0, y0, x1, y1]


def _subset(n: int, limit: int | None) -> list[int]:
    """Indices of an evenly spread subset of ``limit`` of ``n`` items (all when no limit)."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise DatasetError(f"limit must be >= 1, got {limit}")
    return sorted({int(i) for i in np.linspace(0, n - 1, limit).round()})


def _cub_names(classes_file: Path) -> dict[int, str]:
    names = {}
    for lineno, line in _read_lines(classes_file):
        cid, name = _fields(classes_file, lineno, line, None, 2)
        names[_int(classes_file, lineno, cid, "class id")] = name.split(".", 1)[-1]
    return names


def _id_table(path: Path) -> dict[int, tuple[int, str]]:
    """CUB ``id value`` lines -> {image id: (line number, value)}; duplicate ids are errors."""
    table: dict[int, tuple[int, str]] = {}
    for lineno, line in _read_lines(path):
        parts = line.split(None, 1)  # the value may hold spaces (a file name)
        if len(parts) != 2:
            raise DatasetError(f"{path}:{lineno}: expected 'id value', got {line!r}")
        key, value = parts
        image = _int(path, lineno, key, "image id")
        if image in table:
            raise DatasetError(f"{path}:{lineno}: image id {image} appears twice")
        table[image] = (lineno, value)
    return table


def _cub_boxes(path: Path) -> dict[int, list[float]]:
    """``bounding_boxes.txt`` (``id x y w h``) -> {image id: [x, y, x + w, y + h]}."""
    boxes: dict[int, list[float]] = {}
    for lineno, line in _read_lines(path):
        parts = _fields(path, lineno, line, None, 5)
        image = _int(path, lineno, parts[0], "image id")
        x, y, w, h = (_float(path, lineno, v, "box value") for v in parts[1:])
        if min(x, y, w, h) < 0:
            raise DatasetError(f"{path}:{lineno}: negative box value in {line!r}")
        boxes[image] = [x, y, x + w, y + h]
    return boxes


def _load_cub(root: Path, split: str, metadata: Path | None) -> tuple[list[dict], dict[int, str]]:
    """Items of one CUB split, and {class id: name} of the classes in the label file."""
    if split not in ("train", "test"):
        raise DatasetError(f"CUB has splits 'train' and 'test', not {split!r}")
    meta = metadata or root
    images = _id_table(meta / "images.txt")
    labels_file, split_file = meta / "image_class_labels.txt", meta / "train_test_split.txt"
    names = _cub_names(meta / "classes.txt")
    labels = {}
    for image, (lineno, value) in _id_table(labels_file).items():
        labels[image] = _int(labels_file, lineno, value, "class id")
        if labels[image] not in names:
            raise DatasetError(
                f"{labels_file}:{lineno}: class id {labels[image]} is not in classes.txt"
            )
    is_train = {}
    for image, (lineno, value) in _id_table(split_file).items():
        if value not in ("0", "1"):
            raise DatasetError(f"{split_file}:{lineno}: train flag {value!r} is not 0 or 1")
        is_train[image] = value == "1"
    boxes = _cub_boxes(meta / "bounding_boxes.txt")
    items = []
    for image, (_, rel) in images.items():
        for table, file in ((labels, labels_file), (is_train, split_file)):
            if image not in table:
                raise DatasetError(f"{file}: no line for image id {image} of images.txt")
        if is_train[image] != (split == "train"):
            continue
        items.append(
            {
                "image_id": rel,
                "path": root / "images" / rel,
                "class_id": labels[image],
                "boxes": [boxes[image]] if image in boxes else [],
                "size": None,
                "masks": (),
            }
        )
    return items, {cid: names[cid] for cid in sorted(set(labels.values()))}


def _wsol_class_labels(path: Path) -> dict[str, int]:
    table: dict[str, int] = {}
    for lineno, line in _read_lines(path):
        image, cid = _fields(path, lineno, line, ",", 2)
        table[image] = _int(path, lineno, cid, "class id")
    return table


def _load_wsol(root: Path, split: str, metadata: Path | None) -> tuple[list[dict], list[int]]:
    meta = metadata or root / "metadata"
    folder = meta / split
    if not folder.is_dir():
        found = sorted(p.name for p in meta.iterdir() if p.is_dir()) if meta.is_dir() else []
        raise DatasetError(f"{folder}: split folder not found (splits here: {found or 'none'})")
    ids_file = folder / "image_ids.txt"
    image_ids = [line for _, line in _read_lines(ids_file)]
    labels_file = folder / "class_labels.txt"
    labels = _wsol_class_labels(labels_file)
    boxes: dict[str, list[list[float]]] = {}
    masks: dict[str, list[Path]] = {}
    loc_file = folder / "localization.txt"
    if loc_file.is_file():
        for lineno, line in _read_lines(loc_file):
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 5:
                boxes.setdefault(parts[0], []).append(_box(loc_file, lineno, parts[1:]))
            elif len(parts) == 3:
                masks.setdefault(parts[0], []).append(root / parts[1])
            else:
                raise DatasetError(
                    f"{loc_file}:{lineno}: expected path,x0,y0,x1,y1 (or path,mask,ignore), "
                    f"got {len(parts)} fields: {line!r}"
                )
    sizes: dict[str, tuple[int, int]] = {}
    sizes_file = folder / "image_sizes.txt"
    if sizes_file.is_file():
        for lineno, line in _read_lines(sizes_file):
            image, w, h = _fields(sizes_file, lineno, line, ",", 3)
            width, height = (
                _int(sizes_file, lineno, w, "width"),
                _int(sizes_file, lineno, h, "height"),
            )
            if width < 1 or height < 1:
                raise DatasetError(f"{sizes_file}:{lineno}: size must be positive: {line!r}")
            sizes[image] = (width, height)
    items = []
    for image in image_ids:
        if image not in labels:
            raise DatasetError(f"{labels_file}: no class label for {image} of image_ids.txt")
        items.append(
            {
                "image_id": image,
                "path": root / image,
                "class_id": labels[image],
                "boxes": boxes.get(image, []),
                "size": sizes.get(image),
                "masks": tuple(masks.get(image, ())),
            }
        )
    class_ids = set(labels.values())
    if meta.is_dir():
        for other in sorted(meta.iterdir()):
            other_labels = other / "class_labels.txt"
            if other.is_dir() and other != folder and other_labels.is_file():
                class_ids |= set(_wsol_class_labels(other_labels).values())
    return items, sorted(class_ids)


def _class_folders(folder: Path, exclude: Path | None = None) -> list[str]:
    """The class folders of an ImageFolder split folder, sorted (``exclude``, e.g. an output
    folder inside it, left out); DatasetError for an image lying in it directly (no class)."""
    from .image_io import image_extensions

    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder not found")
    extensions = image_extensions()
    loose = sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(extensions)
    )
    if loose:
        shown = ", ".join(loose[:3]) + (f" and {len(loose) - 3} more" if len(loose) > 3 else "")
        raise DatasetError(
            f"{folder}: images directly in the folder ({shown}); put each image in the folder "
            "of its class (root/<class name>/image.jpg)"
        )
    skip = exclude.resolve() if exclude is not None else None
    classes = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.resolve() != skip
    )
    if not classes:
        raise DatasetError(f"{folder}: no class folders (expected root/<class name>/image.jpg)")
    return classes


def _images_under(folder: Path) -> list[Path]:
    """Every file named like an image under ``folder`` (nested, sorted; links to folders are
    not followed)."""
    from .image_io import image_extensions

    extensions = image_extensions()
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / n for n in sorted(filenames) if n.lower().endswith(extensions)]
    return found


def _folder_split(root: Path, split: str) -> Path:
    """``root/split`` when it is a folder, else ``root``."""
    return root / split if (root / split).is_dir() else root


def _load_folder(
    root: Path, split: str | None, exclude: Path | None = None
) -> tuple[list[dict], list[str]]:
    """Items of an ImageFolder split and the class names of every split folder together
    (``split`` None: ``root`` is the split folder, its classes alone; ``exclude``: a folder
    that is no class)."""
    folder = root if split is None else _folder_split(root, split)
    names = set(_class_folders(folder, exclude))
    if folder != root:
        for other in sorted(root.iterdir()):
            if other.is_dir() and other != folder and not other.name.startswith("."):
                names |= set(_class_folders(other))
    items = []
    for name in _class_folders(folder, exclude):
        images = _images_under(folder / name)
        if not images:
            raise DatasetError(f"{folder / name}: class folder {name!r} has no images")
        for path in images:
            items.append(
                {
                    "image_id": os.fsdecode(os.fsencode(path.relative_to(folder))),
                    "path": path,
                    "class_name": name,
                    "boxes": [],
                    "size": None,
                    "masks": (),
                }
            )
    return items, sorted(names)


def _csv_fields(line: str) -> list[str]:
    """The stripped fields of one CSV line (quotes as the csv module reads them: a class name
    with a comma is written ``"tabby, tabby cat"``)."""
    return [field.strip() for field in next(csv.reader([line], skipinitialspace=True))]


def _load_csv(path: Path) -> tuple[list[dict], list[str]]:
    """Items of a ``path,class[,x0,y0,x1,y1]`` list and its class names, sorted."""
    rows = [(n, line, _csv_fields(line)) for n, line in _read_lines(path)]
    if rows and tuple(p.lower() for p in rows[0][2][:2]) == CSV_HEADER:
        rows = rows[1:]
    base = path.parent
    items: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    for lineno, line, parts in rows:
        if len(parts) not in (2, 6):
            raise DatasetError(
                f"{path}:{lineno}: expected path,class or path,class,x0,y0,x1,y1, got "
                f"{len(parts)} fields: {line!r}"
            )
        image, name = parts[:2]
        if not image or not name:
            raise DatasetError(f"{path}:{lineno}: empty path or class in {line!r}")
        box = _box(path, lineno, parts[2:]) if len(parts) == 6 else None
        if image in items:
            before = items[image]
            if box is None or not before["boxes"] or before["class_name"] != name:
                raise DatasetError(
                    f"{path}:{lineno}: duplicate path {image!r} (first on line "
                    f"{first_line[image]}); only lines that each give a box of the same class "
                    "may repeat a path (one line per object)"
                )
            before["boxes"].append(box)
            continue
        first_line[image] = lineno
        items[image] = {
            "image_id": image,
            "path": Path(image) if Path(image).is_absolute() else base / image,
            "class_name": name,
            "boxes": [] if box is None else [box],
            "size": None,
            "masks": (),
        }
    return list(items.values()), sorted({item["class_name"] for item in items.values()})


def _imagenet_names(class_ids: list[int]) -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    bad = [c for c in class_ids if not 0 <= c < info.num_classes()]
    if bad:
        raise DatasetError(f"ILSVRC class ids must be ImageNet indices 0..999, got {bad[:5]}")
    return [info.index_to_description(c) for c in class_ids]


def load_labelled(kind: str, source: str | Path, exclude: Path | None = None) -> Dataset:
    """The images of a labelled folder or list, for ``localize --labels``: ``kind`` ``folder``
    (``source`` holds the class folders themselves: no split folder is looked for) or ``csv``
    (``source`` is the file). Records are in folder / file order; ``exclude``: a folder inside
    ``source`` that is no class (the output folder). Errors as :func:`load_dataset`'s."""
    source = Path(source).expanduser().resolve()
    if kind == "folder":
        if not source.is_dir():
            raise DatasetError(f"{source}: image folder not found")
        items, names = _load_folder(source, None, exclude)
        return _named_dataset(kind, items, names, source, "all", source)
    if kind == "csv":
        if not source.is_file():
            raise DatasetError(f"{source}: CSV list not found")
        items, names = _load_csv(source)
        return _named_dataset(kind, items, names, source.parent, "all", source)
    raise DatasetError(f"labels come from 'folder' or 'csv', not {kind!r}")


def _named_dataset(
    kind: str, items: list[dict], class_names: list[str], root: Path, split: str, meta: Path
) -> Dataset:
    """A dataset whose classes are known by name: ids ``0..C-1`` in ``class_names`` order."""
    if not items:
        raise DatasetError(f"{meta}: no images")
    index = {name: i for i, name in enumerate(class_names)}
    records = [
        Record(
            image_id=item["image_id"],
            path=item["path"],
            class_id=index[item["class_name"]],
            label=index[item["class_name"]],
            boxes=np.asarray(item["boxes"], dtype=np.float64).reshape(-1, 4),
        )
        for item in items
    ]
    return Dataset(kind, root, split, records, list(range(len(class_names))), class_names, meta)


def load_dataset(
    kind: str,
    root: str | Path,
    split: str = "test",
    *,
    metadata: str | Path | None = None,
    limit: int | None = None,
) -> Dataset:
    """Read one split of a dataset.

    Args:
        kind: ``cub``, ``ilsvrc``, ``wsol``, ``folder`` or ``csv`` (see the module docstring).
        root: dataset root (CUB: the folder with ``images.txt``; wsolevaluation layout: the
            folder the metadata paths are relative to; ``folder``: the ImageFolder root;
            ``csv``: the CSV file).
        split: ``train`` or ``test`` (wsolevaluation layout: any folder under the metadata).
        metadata: override of the metadata folder (CUB: the folder holding the five files;
            wsolevaluation: the folder holding ``{split}/``), default ``root`` /
            ``root/metadata``.
        limit: keep ``limit`` images spread evenly over the split (metadata order), so that a
            small limit still covers many classes.

    Raises:
        DatasetError: unknown kind or split, missing file, malformed line (file:line named),
            empty class folder, image with no class folder, duplicate CSV path.
    """
    root = Path(root).expanduser().resolve()
    meta = Path(metadata).expanduser().resolve() if metadata is not None else None
    if kind not in DATASETS:
        raise DatasetError(f"unknown dataset {kind!r}; choose one of {', '.join(DATASETS)}")
    if kind == "csv":
        if not root.is_file():
            raise DatasetError(f"{root}: CSV list not found (--root is the file for csv)")
    elif not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found")
    if kind in ("folder", "csv"):
        if kind == "folder":
            items, class_names = _load_folder(root, split)
            folder = _folder_split(root, split)
            named = _named_dataset(kind, items, class_names, folder, split, folder)
        else:
            items, class_names = _load_csv(root)
            named = _named_dataset(kind, items, class_names, root.parent, split, root)
        subset = _subset(len(named.records), limit)
        return dataclasses.replace(named, records=[named.records[i] for i in subset])
    if kind == "cub":
        items, names = _load_cub(root, split, meta)
        class_ids = sorted(names)
        class_names = [names[c] for c in class_ids]
        meta_dir = meta or root
    else:
        items, class_ids = _load_wsol(root, split, meta)
        class_names = (
            _imagenet_names(class_ids) if kind == "ilsvrc" else [str(c) for c in class_ids]
        )
        meta_dir = meta or root / "metadata"
    if not items:
        raise DatasetError(f"{meta_dir}: split {split!r} has no images")
    index = {cid: i for i, cid in enumerate(class_ids)}
    records = [
        Record(
            image_id=item["image_id"],
            path=item["path"],
            class_id=item["class_id"],
            label=index[item["class_id"]],
            boxes=np.asarray(item["boxes"], dtype=np.float64).reshape(-1, 4),
            size=item["size"],
            masks=item["masks"],
        )
        for item in (items[i] for i in _subset(len(items), limit))
    ]
    return Dataset(kind, root, split, records, class_ids, class_names, meta_dir)
