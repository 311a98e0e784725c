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
  in the split folder (no class), a folder with no class folder. Links to folders are followed
  only while they stay inside ``root``, each folder once; links leading out, link loops and
  sub-folders that cannot be read are left out, named in :attr:`Dataset.skipped` and in a
  logged warning (links to image files are kept wherever they lead).
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
import errno
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError, printable
from .metrics import EVAL_SIZE
from .names import DATASET_KINDS

DATASETS = DATASET_KINDS
LINE_SHOWN = 120
"""Characters of a metadata line (or one of its values) that a message quotes at most."""
SKIPPED_SHOWN = 3
"""Entries a folder walk left out that its warning names (then ``and N more``)."""
_log = logging.getLogger(__name__)
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
                f"{printable(self.image_id)}: original size unknown; pass image_size (read it "
                "from the image)"
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
    skipped: what a folder walk left out, ``name (reason)`` each (``folder``: links leading
        out of the root, folders that cannot be read, link loops), also logged as a warning.
    """

    kind: str
    root: Path
    split: str
    records: list[Record]
    class_ids: list[int]
    class_names: list[str]
    metadata: Path
    skipped: tuple[str, ...] = ()

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
    """(line number, stripped text) of the non-empty lines of ``path``, a regular file (a FIFO
    would block the read, a device could be read forever); a UTF-8 BOM, as spreadsheets write
    it, is dropped."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DatasetError(f"{printable(path)}: metadata file not found") from None
    except OSError as exc:
        raise DatasetError(f"{printable(path)}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise DatasetError(f"{printable(path)}: metadata file expected, found {what}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    try:
        with open(path, "rb", opener=lambda name, _: os.open(name, flags)) as file:
            text = file.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{printable(path)}: cannot read ({printable(exc, 100)})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _at(path: Path, lineno: int) -> str:
    """``file:line`` of a message."""
    return f"{printable(path)}:{lineno}"


def _quoted(value: object) -> str:
    """A value of a line (or the line) quoted in a message, escaped and bounded (a line of
    10,000 fields is not echoed whole)."""
    return printable(repr(value), LINE_SHOWN)


def _fields(path: Path, lineno: int, line: str, sep: str | None, count: int) -> list[str]:
    parts = line.split(sep) if sep is None else [p.strip() for p in line.split(sep)]
    if len(parts) != count:
        what = "comma-separated fields" if sep else "fields"
        raise DatasetError(
            f"{_at(path, lineno)}: expected {count} {what}, got {len(parts)}: {_quoted(line)}"
        )
    return parts


def _int(path: Path, lineno: int, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(
            f"{_at(path, lineno)}: {what} {_quoted(value)} is not an integer"
        ) from None


def _float(path: Path, lineno: int, value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(
            f"{_at(path, lineno)}: {what} {_quoted(value)} is not a number"
        ) from None
    if not np.isfinite(number):
        raise DatasetError(f"{_at(path, lineno)}: {what} {_quoted(value)} is not finite")
    return number


def _box(path: Path, lineno: int, values: list[str]) -> list[float]:
    x0, y0, x1, y1 = (_float(path, lineno, v, "box coordinate") for v in values)
    if min(x0, y0) < 0 or x1 < x0 or y1 < y0:
        raise DatasetError(
            f"{_at(path, lineno)}: box {_quoted(values)} is not x0,y0,x1,y1 with 0 <= x0 <= x1, "
            "0 <= y0 <= y1"
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
            raise DatasetError(f"{_at(path, lineno)}: expected 'id value', got {_quoted(line)}")
        key, value = parts
        image = _int(path, lineno, key, "image id")
        if image in table:
            raise DatasetError(f"{_at(path, lineno)}: image id {image} appears twice")
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
            raise DatasetError(f"{_at(path, lineno)}: negative box value in {_quoted(line)}")
        boxes[image] = [x, y, x + w, y + h]
    return boxes


def _load_cub(root: Path, split: str, metadata: Path | None) -> tuple[list[dict], dict[int, str]]:
    """Items of one CUB split, and {class id: name} of the classes in the label file."""
    if split not in ("train", "test"):
        raise DatasetError(f"CUB has splits 'train' and 'test', not {_quoted(split)}")
    meta = metadata or root
    images = _id_table(meta / "images.txt")
    labels_file, split_file = meta / "image_class_labels.txt", meta / "train_test_split.txt"
    names = _cub_names(meta / "classes.txt")
    labels = {}
    for image, (lineno, value) in _id_table(labels_file).items():
        labels[image] = _int(labels_file, lineno, value, "class id")
        if labels[image] not in names:
            raise DatasetError(
                f"{_at(labels_file, lineno)}: class id {labels[image]} is not in classes.txt"
            )
    is_train = {}
    for image, (lineno, value) in _id_table(split_file).items():
        if value not in ("0", "1"):
            raise DatasetError(
                f"{_at(split_file, lineno)}: train flag {_quoted(value)} is not 0 or 1"
            )
        is_train[image] = value == "1"
    boxes = _cub_boxes(meta / "bounding_boxes.txt")
    items = []
    for image, (_, rel) in images.items():
        for table, file in ((labels, labels_file), (is_train, split_file)):
            if image not in table:
                raise DatasetError(f"{printable(file)}: no line for image id {image} of images.txt")
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
        raise DatasetError(
            f"{printable(folder)}: split folder not found (splits here: {found or 'none'})"
        )
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
                    f"{_at(loc_file, lineno)}: expected path,x0,y0,x1,y1 (or path,mask,ignore), "
                    f"got {len(parts)} fields: {_quoted(line)}"
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
                raise DatasetError(
                    f"{_at(sizes_file, lineno)}: size must be positive: {_quoted(line)}"
                )
            sizes[image] = (width, height)
    items = []
    for image in image_ids:
        if image not in labels:
            raise DatasetError(
                f"{printable(labels_file)}: no class label for {printable(image)} of image_ids.txt"
            )
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


@dataclass
class _Walk:
    """A walk of an image folder tree under ``root`` (resolved): links to folders are followed
    only while their target stays inside ``root`` (a link to ``/`` would walk the whole file
    system), each folder is entered once (by device and inode, so a link loop ends), and what
    is left out is noted in ``skipped`` (``name (reason)``)."""

    root: Path
    skipped: list[str] = dataclasses.field(default_factory=list)
    visited: set[tuple[int, int]] = dataclasses.field(default_factory=set)

    def skip(self, path: Path, reason: str) -> None:
        try:
            name = path.relative_to(self.root).as_posix()
        except ValueError:
            name = str(path)
        self.skipped.append(f"{printable(name, 80)} ({reason})")

    def entries(self, folder: Path) -> list[tuple[Path, bool]]:
        """(path, is a folder) of the entries of ``folder`` by name, hidden folders left out,
        and links to a folder outside ``root`` and link loops left out (noted). A link to a
        file is kept wherever it leads (an image linked in, as a view of a dataset has them).
        OSError when ``folder`` cannot be read."""
        with os.scandir(folder) as scan:
            names = sorted(entry.name for entry in scan)
        found = []
        for name in names:
            path = folder / name
            try:
                is_folder = stat.S_ISDIR(path.stat().st_mode)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    self.skip(path, "a symbolic link loop")
                    continue
                is_folder = False  # a broken link: the image loader says so
            if is_folder and name.startswith("."):
                continue
            if is_folder and path.is_symlink() and not self.inside(path):
                self.skip(path, "a link to a folder outside")
                continue
            found.append((path, is_folder))
        return found

    def inside(self, path: Path) -> bool:
        """Whether ``path``, links resolved, lies in ``root``."""
        return Path(os.path.realpath(path)).is_relative_to(self.root)

    def enter(self, folder: Path) -> bool:
        """Whether ``folder`` is walked: False (noted) when it was walked already."""
        try:
            info = folder.stat()
        except OSError as exc:
            self.skip(folder, f"cannot read: {exc.strerror or type(exc).__name__}")
            return False
        key = (info.st_dev, info.st_ino)
        if key in self.visited:
            self.skip(folder, "a folder walked already, through a link")
            return False
        self.visited.add(key)
        return True

    def warn(self) -> None:
        """Log what was left out, if anything (a warning: stderr unless logging is set up)."""
        if self.skipped:
            count = len(self.skipped)
            shown = ", ".join(self.skipped[:SKIPPED_SHOWN])
            more = f" and {count - SKIPPED_SHOWN} more" if count > SKIPPED_SHOWN else ""
            _log.warning(
                "warning: %s: left out %d %s: %s%s",
                printable(self.root, 80),
                count,
                "entries" if count > 1 else "entry",
                shown,
                more,
            )


def _class_folders(folder: Path, walk: _Walk, exclude: Path | None = None) -> list[str]:
    """The class folders of an ImageFolder split folder, sorted (``exclude``, e.g. an output
    folder inside it, left out); DatasetError for an image lying in it directly (no class)."""
    from .image_io import image_extensions

    if not folder.is_dir():
        raise DatasetError(f"{printable(folder)}: image folder not found")
    try:
        entries = walk.entries(folder)
    except OSError as exc:
        raise DatasetError(
            f"{printable(folder)}: cannot read ({exc.strerror or type(exc).__name__})"
        ) from None
    extensions = image_extensions()
    loose = [
        p.name for p, is_folder in entries if not is_folder and p.name.lower().endswith(extensions)
    ]
    if loose:
        shown = ", ".join(printable(n, 60) for n in loose[:3])
        shown += f" and {len(loose) - 3} more" if len(loose) > 3 else ""
        raise DatasetError(
            f"{printable(folder)}: images directly in the folder ({shown}); put each image in "
            "the folder of its class (root/<class name>/image.jpg)"
        )
    skip = os.path.realpath(exclude) if exclude is not None else None
    classes = [p.name for p, is_folder in entries if is_folder and os.path.realpath(p) != skip]
    if not classes:
        raise DatasetError(
            f"{printable(folder)}: no class folders (expected root/<class name>/image.jpg)"
        )
    return classes


def _images_under(folder: Path, walk: _Walk) -> list[Path]:
    """Every file named like an image under ``folder`` (nested, sorted, in the order of a walk
    that lists a folder's files before its sub-folders)."""
    from .image_io import image_extensions

    extensions = image_extensions()
    found = []
    stack = [folder]
    while stack:
        current = stack.pop()
        if not walk.enter(current):
            continue
        try:
            entries = walk.entries(current)
        except OSError as exc:
            walk.skip(current, f"cannot read: {exc.strerror or type(exc).__name__}")
            continue
        found += [
            p for p, is_folder in entries if not is_folder and p.name.lower().endswith(extensions)
        ]
        stack += reversed([p for p, is_folder in entries if is_folder])
    return found


def _folder_split(root: Path, split: str) -> Path:
    """``root/split`` when it is a folder, else ``root``; DatasetError for a split folder that
    is a link leading out of ``root``."""
    folder = root / split
    if not folder.is_dir():
        return root
    if folder.is_symlink() and not _Walk(root).inside(folder):
        raise DatasetError(
            f"{printable(folder)}: the split folder is a link that leads out of {printable(root)}"
        )
    return folder


def _load_folder(
    root: Path, split: str | None, exclude: Path | None = None
) -> tuple[list[dict], list[str], list[str]]:
    """Items of an ImageFolder split, the class names of every split folder together
    (``split`` None: ``root`` is the split folder, its classes alone; ``exclude``: a folder
    that is no class), and what the walk left out (:class:`_Walk`), also logged."""
    walk = _Walk(root)
    folder = root if split is None else _folder_split(root, split)
    classes = _class_folders(folder, walk, exclude)
    names = set(classes)
    if folder != root:
        try:
            others = [p for p, is_folder in walk.entries(root) if is_folder and p != folder]
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise DatasetError(f"{printable(root)}: cannot read ({reason})") from None
        for other in others:
            names |= set(_class_folders(other, walk))
    items = []
    for name in classes:
        noted = len(walk.skipped)
        images = _images_under(folder / name, walk)
        if not images:
            why = f" (left out: {walk.skipped[noted]})" if len(walk.skipped) > noted else ""
            raise DatasetError(
                f"{printable(folder / name)}: class folder {printable(repr(name), 80)} has no "
                f"images{why}"
            )
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
    walk.warn()
    return items, sorted(names), walk.skipped


def _csv_fields(path: Path, lineno: int, line: str) -> list[str]:
    """The stripped fields of one CSV line (quotes as the csv module reads them: a class name
    with a comma is written ``"tabby, tabby cat"``)."""
    try:
        fields = next(csv.reader([line], skipinitialspace=True))
    except csv.Error as exc:  # a field over the csv module's size limit, a NUL byte
        raise DatasetError(
            f"{_at(path, lineno)}: not a CSV line ({exc}): {_quoted(line)}"
        ) from None
    return [field.strip() for field in fields]


def _load_csv(path: Path) -> tuple[list[dict], list[str]]:
    """Items of a ``path,class[,x0,y0,x1,y1]`` list and its class names, sorted."""
    rows = [(n, line, _csv_fields(path, n, line)) for n, line in _read_lines(path)]
    if rows and tuple(p.lower() for p in rows[0][2][:2]) == CSV_HEADER:
        rows = rows[1:]
    base = path.parent
    items: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    for lineno, line, parts in rows:
        if len(parts) not in (2, 6):
            raise DatasetError(
                f"{_at(path, lineno)}: expected path,class or path,class,x0,y0,x1,y1, got "
                f"{len(parts)} fields: {_quoted(line)}"
            )
        image, name = parts[:2]
        if not image or not name:
            raise DatasetError(f"{_at(path, lineno)}: empty path or class in {_quoted(line)}")
        box = _box(path, lineno, parts[2:]) if len(parts) == 6 else None
        if image in items:
            before = items[image]
            if box is None or not before["boxes"] or before["class_name"] != name:
                raise DatasetError(
                    f"{_at(path, lineno)}: duplicate path {_quoted(image)} (first on line "
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
    source = _resolved(source)
    if kind == "folder":
        if not source.is_dir():
            raise DatasetError(f"{printable(source)}: image folder not found")
        items, names, skipped = _load_folder(source, None, exclude)
        named = _named_dataset(kind, items, names, source, "all", source)
        return dataclasses.replace(named, skipped=tuple(skipped))
    if kind == "csv":
        if not source.is_file():
            raise DatasetError(f"{printable(source)}: CSV list not found")
        items, names = _load_csv(source)
        return _named_dataset(kind, items, names, source.parent, "all", source)
    raise DatasetError(f"labels come from 'folder' or 'csv', not {printable(repr(kind), 60)}")


def _resolved(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, absolute, links resolved; DatasetError for a link loop."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop
        raise DatasetError(
            f"{printable(path)}: cannot be resolved ({printable(exc, 100)})"
        ) from None


def _named_dataset(
    kind: str, items: list[dict], class_names: list[str], root: Path, split: str, meta: Path
) -> Dataset:
    """A dataset whose classes are known by name: ids ``0..C-1`` in ``class_names`` order."""
    if not items:
        raise DatasetError(f"{printable(meta)}: no images")
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
    if kind not in DATASETS:
        raise DatasetError(
            f"unknown dataset {printable(repr(kind), 60)}; choose one of {', '.join(DATASETS)}"
        )
    root = _resolved(root)
    meta = _resolved(metadata) if metadata is not None else None
    if kind == "csv":
        if not root.is_file():
            raise DatasetError(
                f"{printable(root)}: CSV list not found (--root is the file for csv)"
            )
    elif not root.is_dir():
        raise DatasetError(f"{printable(root)}: dataset root not found")
    if kind in ("folder", "csv"):
        if kind == "folder":
            items, class_names, skipped = _load_folder(root, split)
            folder = _folder_split(root, split)
            named = _named_dataset(kind, items, class_names, folder, split, folder)
            named = dataclasses.replace(named, skipped=tuple(skipped))
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
        raise DatasetError(f"{printable(meta_dir)}: split {_quoted(split)} has no images")
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
