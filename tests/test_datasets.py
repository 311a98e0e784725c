"""Dataset loaders: real-data counts and conventions, malformed metadata, synthetic layouts."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from lcar_deploy.datasets import CUB_FILES, DatasetError, Record, load_dataset, load_labelled


def test_cub_real_counts_and_boxes(shared_data: Path) -> None:
    root = shared_data / "CUB_200_2011"
    train = load_dataset("cub", root, "train")
    test = load_dataset("cub", root, "test")
    assert (len(train), len(test)) == (1500, 702)
    assert train.num_classes == test.num_classes == 50
    assert train.class_ids == list(range(1, 51))
    assert train.class_names[0] == "Black_footed_Albatross"
    assert all(r.path.is_file() for r in test.records[:20])
    assert all(len(r.boxes) == 1 for r in test)
    # image 1 of bounding_boxes.txt is "38.4 17.3 208.0 194.6" (x y w h): x1 = x + w
    first = test[0]
    assert first.image_id == "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    np.testing.assert_allclose(first.boxes, [[38.4, 17.3, 246.4, 211.9]])
    assert first.class_id == 1 and first.label == 0 and first.size is None
    with pytest.raises(DatasetError, match="original size unknown"):
        first.scaled_boxes()
    assert np.bincount(test.labels, minlength=50).min() > 0


def test_scaled_boxes_are_clipped_to_the_image() -> None:
    record = Record("a.jpg", Path("a.jpg"), 1, 0, np.array([[10.0, 5.0, 320.0, 213.0]]))
    # x1 = W and y1 = H become W - 1 and H - 1 first: int(319 * 224 / 320), int(212 * 224 / 213)
    np.testing.assert_array_equal(record.scaled_boxes(224, (320, 213)), [[7, 5, 223, 222]])


@pytest.mark.slow
def test_cub_boxes_past_the_border(shared_data: Path) -> None:
    from PIL import Image

    from lcar_deploy.metrics import scale_boxes

    root = shared_data / "CUB_200_2011"
    for split, unclipped_past in (("test", 9), ("train", 17)):
        past = clipped_past = 0
        for record in load_dataset("cub", root, split):
            with Image.open(record.path) as image:
                size = image.size
            past += bool((scale_boxes(record.boxes, size)[:, 2:] > 223).any())
            clipped_past += bool((record.scaled_boxes(224, size)[:, 2:] > 223).any())
        assert (past, clipped_past) == (unclipped_past, 0), split


def test_ilsvrc_real_counts_boxes_sizes_names(shared_data: Path) -> None:
    root = shared_data / "ILSVRC-mini"
    train = load_dataset("ilsvrc", root, "train")
    test = load_dataset("ilsvrc", root, "test")
    assert (len(train), len(test)) == (1500, 250)
    assert train.class_ids == test.class_ids == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    assert test.class_names[0].startswith("tench")
    assert sum(len(r.boxes) > 0 for r in test) == 249
    assert sum(len(r.boxes) for r in test) == 406
    assert max(len(r.boxes) for r in test) > 1
    assert all(r.size == (224, 224) for r in test)
    rec = test[0]
    assert rec.image_id == "val/ILSVRC2012_val_00006697.JPEG" and rec.path.is_file()
    np.testing.assert_array_equal(rec.scaled_boxes(224), [[73, 137, 156, 192]])
    assert all(len(r.boxes) == 0 for r in train.records[:10])


def test_limit_spreads_over_classes(shared_data: Path) -> None:
    test = load_dataset("cub", shared_data / "CUB_200_2011", "test", limit=10)
    assert len(test) == 10
    assert len({r.class_id for r in test}) == 10


def _copy_cub_metadata(shared_data: Path, tmp_path: Path) -> Path:
    meta = tmp_path / "cub_meta"
    meta.mkdir()
    for name in CUB_FILES:
        shutil.copy(shared_data / "CUB_200_2011" / name, meta / name)
    return meta


def _replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("name", "lineno", "text", "message"),
    [
        ("bounding_boxes.txt", 3, "4 71.7 57.6 163.2", "expected 5 fields"),
        ("bounding_boxes.txt", 2, "2 89.0 abc 97.9 169.0", "'abc' is not a number"),
        ("image_class_labels.txt", 5, "x 1", "image id 'x' is not an integer"),
        ("image_class_labels.txt", 1, "1 999", "class id 999 is not in classes.txt"),
        ("train_test_split.txt", 7, "9 2", "train flag '2' is not 0 or 1"),
        ("images.txt", 2, "1 duplicate.jpg", "image id 1 appears twice"),
    ],
)
def test_cub_malformed_line_names_file_and_line(
    shared_data: Path, tmp_path: Path, name: str, lineno: int, text: str, message: str
) -> None:
    meta = _copy_cub_metadata(shared_data, tmp_path)
    _replace_line(meta / name, lineno, text)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("cub", shared_data / "CUB_200_2011", "test", metadata=meta)
    assert f"{meta / name}:{lineno}:" in str(info.value)


def test_cub_missing_file(shared_data: Path, tmp_path: Path) -> None:
    meta = _copy_cub_metadata(shared_data, tmp_path)
    (meta / "train_test_split.txt").unlink()
    with pytest.raises(DatasetError, match=r"train_test_split\.txt: metadata file not found"):
        load_dataset("cub", shared_data / "CUB_200_2011", "train", metadata=meta)


def test_ilsvrc_malformed_localization(shared_data: Path, tmp_path: Path) -> None:
    meta = tmp_path / "metadata"
    shutil.copytree(shared_data / "ILSVRC-mini" / "metadata", meta)
    loc = meta / "test" / "localization.txt"
    _replace_line(loc, 4, "val/x.JPEG,1,2,3")
    with pytest.raises(DatasetError, match=re.escape(f"{loc}:4: expected path,x0,y0,x1,y1")):
        load_dataset("ilsvrc", shared_data / "ILSVRC-mini", "test", metadata=meta)
    _replace_line(loc, 4, "val/x.JPEG,10,2,3,4")
    with pytest.raises(DatasetError, match=re.escape(f"{loc}:4: box")):
        load_dataset("ilsvrc", shared_data / "ILSVRC-mini", "test", metadata=meta)
    shutil.copy(shared_data / "ILSVRC-mini" / "metadata" / "test" / "localization.txt", loc)
    sizes = meta / "test" / "image_sizes.txt"
    _replace_line(sizes, 2, "val/y.JPEG,224")
    with pytest.raises(DatasetError, match=re.escape(f"{sizes}:2: expected 3 comma-separated")):
        load_dataset("ilsvrc", shared_data / "ILSVRC-mini", "test", metadata=meta)


def test_wsol_layout_synthetic(tmp_path: Path) -> None:
    """Generic wsolevaluation layout: ids as names, OpenImages-style masks, class union."""
    split = tmp_path / "metadata" / "test"
    split.mkdir(parents=True)
    (tmp_path / "metadata" / "train").mkdir()
    (split / "image_ids.txt").write_text("a/1.jpg\na/2.jpg\n")
    (split / "class_labels.txt").write_text("a/1.jpg,7\na/2.jpg,3\n")
    (split / "localization.txt").write_text(
        "a/1.jpg,m/1_a.png,m/1_ignore.png\na/1.jpg,m/1_b.png,\n"
    )
    (tmp_path / "metadata" / "train" / "class_labels.txt").write_text("b/1.jpg,5\n")
    data = load_dataset("wsol", tmp_path, "test")
    assert data.class_ids == [3, 5, 7] and data.class_names == ["3", "5", "7"]
    assert [r.label for r in data] == [2, 0]
    assert data[0].masks == (tmp_path / "m/1_a.png", tmp_path / "m/1_b.png")
    assert data[0].boxes.shape == (0, 4) and data[1].masks == ()
    with pytest.raises(DatasetError, match="split folder not found"):
        load_dataset("wsol", tmp_path, "val")
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("coco", tmp_path)
    (split / "class_labels.txt").write_text("a/1.jpg,7\n")
    with pytest.raises(DatasetError, match=r"no class label for a/2\.jpg"):
        load_dataset("wsol", tmp_path, "test")


def _jpeg(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (10, 200, 30)).save(path)
    return path


def test_folder_classes_from_folder_names_and_shared_by_splits(tmp_path: Path) -> None:
    for rel in ("train/cat/a.jpg", "train/dog/b.jpg", "train/dog/deep/c.png", "test/dog/d.jpg"):
        _jpeg(tmp_path / rel)
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    train = load_dataset("folder", tmp_path, "train")
    test = load_dataset("folder", tmp_path, "test")
    assert train.class_names == test.class_names == ["cat", "dog"]  # every split's folders
    assert [(r.image_id, r.class_id, r.label) for r in train] == [
        ("cat/a.jpg", 0, 0),
        ("dog/b.jpg", 1, 1),
        ("dog/deep/c.png", 1, 1),
    ]
    assert [(r.image_id, r.class_id) for r in test] == [("dog/d.jpg", 1)]
    assert all(r.boxes.shape == (0, 4) for r in train)
    # no split folder: the root holds the classes, for every split
    flat = load_dataset("folder", tmp_path / "train", "test")
    assert len(flat) == 3 and flat.class_names == ["cat", "dog"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            ["cat/a.jpg", "loose.jpg"],
            r"images directly in the folder \(loose.jpg\); put each image",
        ),
        (["cat/a.jpg", "dog/readme.txt"], r"dog: class folder 'dog' has no images"),
        ([], r"no class folders"),
    ],
)
def test_folder_errors(tmp_path: Path, files: list[str], message: str) -> None:
    tmp_path.mkdir(exist_ok=True)
    for rel in files:
        if rel.endswith(".txt"):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("x")
        else:
            _jpeg(tmp_path / rel)
    with pytest.raises(DatasetError, match=message):
        load_dataset("folder", tmp_path, "train")


def test_csv_list_with_header_boxes_and_several_objects(tmp_path: Path) -> None:
    _jpeg(tmp_path / "imgs" / "a.jpg")
    absolute = _jpeg(tmp_path / "elsewhere" / "b.jpg")
    lines = [
        "path,class,x0,y0,x1,y1",
        "imgs/a.jpg,cat,1,2,10,20",
        "imgs/a.jpg,cat,20,2,30,20",
        f"{absolute},dog",
    ]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    data = load_dataset("csv", tmp_path / "list.csv")
    assert data.class_names == ["cat", "dog"] and data.root == tmp_path
    first, second = data.records
    assert first.path == tmp_path / "imgs" / "a.jpg" and first.class_id == 0
    np.testing.assert_array_equal(first.boxes, [[1, 2, 10, 20], [20, 2, 30, 20]])
    assert second.path == absolute and second.class_id == 1 and second.boxes.shape == (0, 4)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["a.jpg,cat", "a.jpg,cat"], r"list.csv:2: duplicate path 'a.jpg' \(first on line 1\)"),
        (["a.jpg,cat,0,0,5,5", "a.jpg,dog,1,1,5,5"], r"list.csv:2: duplicate path"),
        (["a.jpg,cat,0,0"], r"list.csv:1: expected path,class or path,class,x0,y0,x1,y1"),
        (["a.jpg,cat,9,0,5,5"], r"list.csv:1: box .* is not x0,y0,x1,y1"),
        (["a.jpg,"], r"list.csv:1: empty path or class"),
    ],
)
def test_csv_errors(tmp_path: Path, lines: list[str], message: str) -> None:
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset("csv", tmp_path / "list.csv")


def test_folder_view_of_real_cub(shared_data: Path, tmp_path: Path) -> None:
    """An ImageFolder of links to the CUB test images: same images, classes from the folders."""
    cub = load_dataset("cub", shared_data / "CUB_200_2011", "test", limit=30)
    for record in cub:
        link = tmp_path / "test" / record.image_id
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(record.path)
    view = load_dataset("folder", tmp_path, "test")
    assert sorted(r.image_id for r in view) == sorted(r.image_id for r in cub)
    names = {r.image_id: view.class_names[r.label] for r in view}
    assert all(names[r.image_id].split(".", 1)[1] == cub.class_names[r.label] for r in cub)


def test_folder_walk_stays_inside_the_root(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Links to folders outside the root and link loops are left out and named; a link to a
    folder inside is walked once; a link to an image file is kept (a view of a dataset)."""
    root = tmp_path / "root"
    _jpeg(root / "train" / "cat" / "a.jpg")
    _jpeg(root / "train" / "cat" / "deep" / "b.jpg")
    _jpeg(tmp_path / "outside" / "secret.jpg")
    _jpeg(tmp_path / "photo.jpg")
    (root / "train" / "escape").symlink_to(tmp_path / "outside")  # a class leading out
    (root / "train" / "cat" / "up").symlink_to(tmp_path / "outside")  # a sub-folder too
    (root / "train" / "cat" / "again").symlink_to(root / "train" / "cat")  # a cycle
    (root / "train" / "cat" / "deep" / "knot").symlink_to(root / "train" / "cat" / "deep" / "knot")
    (root / "train" / "cat" / "linked.jpg").symlink_to(tmp_path / "photo.jpg")
    with caplog.at_level("WARNING", logger="lcar_deploy.datasets"):
        data = load_dataset("folder", root, "train")
    assert data.class_names == ["cat"]
    assert [r.image_id for r in data] == ["cat/a.jpg", "cat/linked.jpg", "cat/deep/b.jpg"]
    assert sorted(data.skipped) == [
        "train/cat/again (a folder walked already, through a link)",
        "train/cat/deep/knot (a symbolic link loop)",
        "train/cat/up (a link to a folder outside)",
        "train/escape (a link to a folder outside)",
    ]
    (message,) = caplog.messages
    assert message.startswith(f"warning: {root}: left out 4 entries: ")
    assert message.endswith(" and 1 more") and len(message) < 300


def test_folder_links_out_of_the_root_and_loops_as_roots(tmp_path: Path) -> None:
    _jpeg(tmp_path / "elsewhere" / "cat" / "a.jpg")
    root = tmp_path / "root"
    root.mkdir()
    (root / "train").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=r"train: the split folder is a link that leads out"):
        load_dataset("folder", root, "train")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for kind in ("folder", "csv"):
        with pytest.raises(DatasetError, match=r"loop: cannot be resolved"):
            load_dataset(kind, tmp_path / "loop")
    with pytest.raises(DatasetError, match=r"loop: cannot be resolved"):
        load_labelled("folder", tmp_path / "loop")


def test_a_folder_that_cannot_be_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Made unreadable by refusing its listing: the tests may run as root, which reads all."""
    import os

    _jpeg(tmp_path / "cat" / "a.jpg")
    _jpeg(tmp_path / "cat" / "private" / "b.jpg")
    _jpeg(tmp_path / "dog" / "c.jpg")
    scandir = os.scandir
    refused = {str(tmp_path / "cat" / "private"), str(tmp_path / "dog")}

    def unreadable(path=".", *args):
        if os.fspath(path) in refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path, *args)

    monkeypatch.setattr(os, "scandir", unreadable)
    with pytest.raises(DatasetError, match=r"dog: class folder 'dog' has no images \(left out: "):
        load_dataset("folder", tmp_path, "train")
    refused.remove(str(tmp_path / "dog"))
    with caplog.at_level("WARNING", logger="lcar_deploy.datasets"):
        data = load_labelled("folder", tmp_path)
    assert [r.image_id for r in data] == ["cat/a.jpg", "dog/c.jpg"]
    assert data.skipped == ("cat/private (cannot read: Permission denied)",)
    assert "left out 1 entry: cat/private (cannot read: Permission denied)" in caplog.text


def test_names_with_control_characters_are_escaped_in_messages(tmp_path: Path) -> None:
    (tmp_path / "ca\nt\x1b[31m").mkdir()
    (tmp_path / "ca\nt\x1b[31m" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError) as info:
        load_dataset("folder", tmp_path, "train")
    message = str(info.value)
    assert "ca\\nt\\x1b[31m" in message and "\n" not in message and "\x1b" not in message


def test_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    (tmp_path / "list.csv").write_text("\ufeffpath,class\na.jpg,cat\n", encoding="utf-8")
    data = load_dataset("csv", tmp_path / "list.csv")
    assert [(r.image_id, data.class_names[r.label]) for r in data] == [("a.jpg", "cat")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (",".join(["a.jpg", "cat", *["7"] * 10_000]), r"list.csv:1: expected path,class or"),
        ("a.jpg," + "c" * 200_000, r"list.csv:1: not a CSV line \(field larger than"),
        ("a\x1b[2J.jpg,cat,0", r"list.csv:1: expected .* fields: 'a\\x1b\[2J\.jpg,cat,0'"),
        ("a.jpg,cat,0,0,1e999,1", r"list.csv:1: box coordinate '1e999' is not finite"),
    ],
)
def test_csv_messages_are_bounded_and_escaped(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "list.csv").write_text(line + "\n")
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("csv", tmp_path / "list.csv")
    text = str(info.value)
    assert len(text) < 300 + len(str(tmp_path)) and text.isprintable()


def test_metadata_that_is_no_regular_file_is_named(tmp_path: Path) -> None:
    """A FIFO would block the read: refused from its stat, never opened."""
    import os

    split = tmp_path / "metadata" / "test"
    split.mkdir(parents=True)
    os.mkfifo(split / "image_ids.txt")
    with pytest.raises(DatasetError, match=r"image_ids\.txt: metadata file expected, found not a"):
        load_dataset("wsol", tmp_path, "test")
    (split / "image_ids.txt").unlink()
    (split / "image_ids.txt").mkdir()
    with pytest.raises(DatasetError, match=r"image_ids\.txt: metadata file expected, found a fold"):
        load_dataset("wsol", tmp_path, "test")
