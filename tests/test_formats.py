"""convert: every format read back by a real client (pycocotools and COCOeval, supervision's
YOLO and VOC loaders, Label Studio's task schema), repeatable and atomic; malformed lines;
hostile runs (an --out that is the run, its predictions or the user's files; paths and masks
that leave the run; FIFOs; decompression bombs; JSON Python cannot hold; names XML cannot
hold), run as separate processes where a crash or a hang is possible."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import supervision as sv
from helpers import invoke, run_cli
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lcar_deploy.errors import ConvertError, OutputError
from lcar_deploy.formats import convert_predictions, read_predictions
from lcar_deploy.io import write_mark

# Two images: a.jpg (80 x 60) with two objects of class 7 "cat", sub/b.png (50 x 40) with one of
# class 3 "dog"; c.jpg has no object; d.jpg failed.
OBJECTS = {
    "a.jpg": [([10, 5, 29, 24], 0.9), ([50, 30, 69, 49], 0.4)],
    "sub/b.png": [([0, 0, 19, 9], 0.7)],
}
SIZES = {"a.jpg": (80, 60), "sub/b.png": (50, 40), "c.jpg": (30, 30)}
CLASSES = {"a.jpg": (7, "cat"), "sub/b.png": (3, "dog"), "c.jpg": (7, "cat")}


def _mask(rel: str) -> np.ndarray:
    width, height = SIZES[rel]
    mask = np.zeros((height, width), bool)
    for (x0, y0, x1, y1), _ in OBJECTS.get(rel, []):
        mask[y0 + 2 : y1 - 1, x0 + 1 : x1] = True  # inside its box, a little smaller
    return mask


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A localize output folder written by hand: images, masks, run.json, predictions.jsonl."""
    images, out = tmp_path / "images", tmp_path / "out"
    (images / "sub").mkdir(parents=True)
    (out / "masks" / "sub").mkdir(parents=True)
    lines = []
    for rel, (width, height) in SIZES.items():
        Image.new("RGB", (width, height), (90, 120, 30)).save(images / rel)
        Image.fromarray(_mask(rel).astype(np.uint8) * 255).save(out / "masks" / f"{rel}.png")
        objects = OBJECTS.get(rel, [])
        class_id, name = CLASSES[rel]
        lines.append(
            {
                "path": rel,
                "status": "ok",
                "image_size": [width, height],
                "class_id": class_id,
                "class_name": name,
                "score": objects[0][1] if objects else None,
                "no_object": not objects,
                "box": objects[0][0] if objects else None,
                "boxes": [b for b, _ in objects],
                "box_scores": [s for _, s in objects],
                "mask": f"masks/{rel}.png",
            }
        )
    lines.append({"path": "d.jpg", "status": "error", "error": "d.jpg: broken"})
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (out / "run.json").write_text(json.dumps({"images": str(images)}))
    return out


def _ground_truth(path: Path, predicted: dict) -> None:
    """The GT of the run in COCO form: the predicted boxes and masks themselves."""
    from pycocotools import mask as mask_utils

    annotations = []
    for image in predicted["images"]:
        rel = image["file_name"]
        mask = _mask(rel)
        for box, _ in OBJECTS.get(rel, []):
            x0, y0, x1, y1 = box
            region = np.zeros(mask.shape, np.uint8, order="F")
            region[y0 : y1 + 1, x0 : x1 + 1] = mask[y0 : y1 + 1, x0 : x1 + 1]
            rle = mask_utils.encode(region)
            category = next(
                c["id"] for c in predicted["categories"] if c["name"] == CLASSES[rel][1]
            )
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": category,
                    "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                    "area": int(mask_utils.area(rle)),
                    "iscrowd": 0,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
            )
    gt = {**predicted, "annotations": annotations}
    path.write_text(json.dumps(gt))


def test_coco_loads_in_pycocotools_and_cocoeval_scores_it(run: Path) -> None:
    (target,) = convert_predictions(run / "predictions.jsonl", "coco")
    assert target == run / "coco.json"
    document = json.loads(target.read_text())
    coco = COCO(str(target))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["dog", "cat"]  # by class id
    assert len(coco.getImgIds()) == 3  # the failed image is left out, c.jpg kept without boxes
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [a["bbox"] for a in first] == [[10, 5, 20, 20], [50, 30, 20, 20]]
    assert [a["score"] for a in first] == [0.9, 0.4]
    decoded = coco.annToMask(first[0])
    expected = _mask("a.jpg") & (np.arange(80) <= 29)[None, :] & (np.arange(60) <= 24)[:, None]
    np.testing.assert_array_equal(decoded.astype(bool), expected)
    gt_path = run / "gt.json"
    _ground_truth(gt_path, document)
    gt = COCO(str(gt_path))
    for kind in ("bbox", "segm"):
        results = gt.loadRes(document["annotations"])
        evaluator = COCOeval(gt, results, kind)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert evaluator.stats[0] == pytest.approx(1.0)  # AP: the predictions are the GT


def test_cocoeval_sees_a_wrong_box(run: Path) -> None:
    document = json.loads(convert_predictions(run / "predictions.jsonl", "coco")[0].read_text())
    gt_path = run / "gt.json"
    _ground_truth(gt_path, document)
    document["annotations"][0]["bbox"] = [40, 40, 5, 5]
    gt = COCO(str(gt_path))
    evaluator = COCOeval(gt, gt.loadRes(document["annotations"]), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[1] < 0.9  # AP50 drops: one of three boxes misses


def _boxes_by_image(dataset: sv.DetectionDataset) -> dict[str, list[list[float]]]:
    return {Path(path).name: sorted(det.xyxy.round(3).tolist()) for path, _, det in dataset}


def _expected_xyxy() -> dict[str, list[list[float]]]:
    """Far-edge boxes (what supervision holds) of every image, by flat file name."""
    flat = {"a.jpg": "a.jpg", "sub/b.png": "sub__b.png", "c.jpg": "c.jpg"}
    return {
        flat[rel]: sorted(
            [[x0, y0, x1 + 1, y1 + 1] for (x0, y0, x1, y1), _ in OBJECTS.get(rel, [])]
        )
        for rel in SIZES
    }


def test_yolo_loads_in_supervision_with_the_same_boxes(run: Path) -> None:
    (folder,) = convert_predictions(run / "predictions.jsonl", "yolo")
    dataset = sv.DetectionDataset.from_yolo(
        images_directory_path=str(folder / "images"),
        annotations_directory_path=str(folder / "labels"),
        data_yaml_path=str(folder / "data.yaml"),
    )
    assert dataset.classes == ["dog", "cat"]
    got = _boxes_by_image(dataset)
    for name, boxes in _expected_xyxy().items():
        np.testing.assert_allclose(got[name], boxes, atol=0.01)
    classes = {Path(p).name: d.class_id.tolist() for p, _, d in dataset}
    assert classes["a.jpg"] == [1, 1] and classes["sub__b.png"] == [0]
    assert (folder / "labels" / "c.txt").read_text() == ""


def test_voc_loads_in_supervision_with_the_same_boxes(run: Path) -> None:
    (folder,) = convert_predictions(run / "predictions.jsonl", "voc")
    dataset = sv.DetectionDataset.from_pascal_voc(
        images_directory_path=str(folder / "JPEGImages"),
        annotations_directory_path=str(folder / "Annotations"),
    )
    assert sorted(dataset.classes) == ["cat", "dog"]
    got = _boxes_by_image(dataset)
    for name, boxes in _expected_xyxy().items():
        np.testing.assert_allclose(got[name], boxes, atol=0.01)
    xml = (folder / "Annotations" / "a.xml").read_text()
    assert "<xmin>11</xmin>" in xml and "<xmax>30</xmax>" in xml  # 1-based, inclusive


# Label Studio's import format for pre-annotated tasks (labelstud.io, "Import pre-annotated
# data": tasks with predictions of rectanglelabels results in percent of the image).
LABEL_STUDIO_TASKS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["data", "predictions"],
        "properties": {
            "data": {
                "type": "object",
                "required": ["image"],
                "properties": {"image": {"type": "string"}},
            },
            "predictions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["result"],
                    "properties": {
                        "model_version": {"type": "string"},
                        "score": {"type": "number"},
                        "result": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["from_name", "to_name", "type", "value"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "from_name": {"const": "label"},
                                    "to_name": {"const": "image"},
                                    "type": {"const": "rectanglelabels"},
                                    "original_width": {"type": "integer", "minimum": 1},
                                    "original_height": {"type": "integer", "minimum": 1},
                                    "image_rotation": {"type": "number"},
                                    "score": {"type": ["number", "null"]},
                                    "value": {
                                        "type": "object",
                                        "required": [
                                            "x",
                                            "y",
                                            "width",
                                            "height",
                                            "rectanglelabels",
                                        ],
                                        "properties": {
                                            **{
                                                k: {"type": "number", "minimum": 0, "maximum": 100}
                                                for k in ("x", "y", "width", "height")
                                            },
                                            "rotation": {"type": "number"},
                                            "rectanglelabels": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                                "minItems": 1,
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_label_studio_tasks_match_its_schema_in_percent(run: Path) -> None:
    (target,) = convert_predictions(run / "predictions.jsonl", "labelstudio", url_prefix="/data/")
    tasks = json.loads(target.read_text())
    jsonschema.validate(tasks, LABEL_STUDIO_TASKS)
    assert [t["data"]["image"] for t in tasks] == ["/data/a.jpg", "/data/sub/b.png", "/data/c.jpg"]
    first = tasks[0]["predictions"][0]["result"][0]
    assert first["value"]["x"] == pytest.approx(12.5) and first["value"]["width"] == 25.0
    assert first["value"]["y"] == pytest.approx(100 * 5 / 60)
    assert first["value"]["rectanglelabels"] == ["cat"] and first["score"] == 0.9
    assert tasks[2]["predictions"][0]["result"] == []


def test_min_score_and_repeatable_atomic_outputs(run: Path) -> None:
    first = convert_predictions(run / "predictions.jsonl", "coco")[0].read_bytes()
    assert convert_predictions(run / "predictions.jsonl", "coco")[0].read_bytes() == first
    kept = json.loads(
        convert_predictions(run / "predictions.jsonl", "coco", min_score=0.5)[0].read_text()
    )
    assert [a["score"] for a in kept["annotations"]] == [0.9, 0.7]
    (folder,) = convert_predictions(run / "predictions.jsonl", "yolo")
    (folder / "labels" / "a.txt").write_text("edited")
    convert_predictions(run / "predictions.jsonl", "yolo")
    assert (folder / "labels" / "a.txt").read_text().count("\n") == 2  # replaced whole
    (folder / "mine.txt").write_text("the user's")
    with pytest.raises(OutputError, match=r"holds mine\.txt, which lcar-deploy did not write"):
        convert_predictions(run / "predictions.jsonl", "yolo")
    assert (folder / "mine.txt").read_text() == "the user's"
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", r"predictions.jsonl:2: not JSON"),
        ('{"path": "x.jpg", "status": "ok", "image_size": [10]}', r":2: image_size \[10\]"),
        (
            '{"path": "x.jpg", "status": "ok", "image_size": [10, 10], "class_id": 1, '
            '"class_name": "a", "boxes": [[0, 0, 10, 5]], "box_scores": [0.5]}',
            r":2: box \[0, 0, 10, 5\] is not inside the 10 x 10 image",
        ),
        ('{"path": "a.jpg", "status": "error"}', r":2: a.jpg again \(first on line 1\)"),
    ],
)
def test_malformed_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    good = {"path": "a.jpg", "status": "ok", "image_size": [10, 10], "boxes": []}
    file = tmp_path / "predictions.jsonl"
    file.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(ConvertError, match=message):
        read_predictions(file)


def test_yolo_needs_to_know_where_the_images_are(run: Path) -> None:
    (run / "run.json").unlink()
    with pytest.raises(ConvertError, match="give --images"):
        convert_predictions(run / "predictions.jsonl", "yolo")
    images = Path(read_predictions(run / "predictions.jsonl").folder).parent / "images"
    assert convert_predictions(run / "predictions.jsonl", "yolo", images=images)[0].is_dir()


def test_cli_convert(run: Path) -> None:
    code, stdout, _ = invoke(
        "convert", run / "predictions.jsonl", "--to", "voc", "--out", run / "v"
    )
    assert code == 0 and stdout.strip() == str(run / "v")
    code, _, stderr = invoke("convert", run / "nothing.jsonl", "--to", "coco")
    assert code == 1 and "nothing.jsonl: predictions file not found" in stderr


# --- train/val splits for a detector ----------------------------------------------------------

# A run of several classes: 10 cats (class 7), 5 dogs (class 3), 1 owl (class 1), 4 images with
# no object, one failed image; every box scored 0.8 except the dogs' second box (0.2).
SPLIT_CLASSES = {"cat": (7, 10), "dog": (3, 5), "owl": (1, 1)}


def _split_records() -> list[dict]:
    records = []
    for name, (class_id, count) in SPLIT_CLASSES.items():
        for k in range(count):
            boxes = [[2, 3, 11, 9]] + ([[0, 0, 3, 3]] if name == "dog" else [])
            records.append(
                {
                    "path": f"{name}/{name}{k:02d}.jpg",
                    "status": "ok",
                    "image_size": [24, 16],
                    "class_id": class_id,
                    "class_name": name,
                    "no_object": False,
                    "boxes": boxes,
                    "box_scores": [0.8, 0.2][: len(boxes)],
                }
            )
    for k in range(4):
        records.append(
            {
                "path": f"empty/e{k}.jpg",
                "status": "ok",
                "image_size": [24, 16],
                "class_id": 7,
                "class_name": "cat",
                "no_object": True,
                "boxes": [],
                "box_scores": [],
            }
        )
    records.append({"path": "broken.jpg", "status": "error", "error": "broken"})
    return records


def _write_run(out: Path, images: Path, records: list[dict]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "run.json").write_text(json.dumps({"images": str(images)}))
    return out / "predictions.jsonl"


@pytest.fixture
def classes_run(tmp_path: Path) -> Path:
    """predictions.jsonl of :func:`_split_records`, its images written."""
    images = tmp_path / "images"
    records = _split_records()
    for record in records:
        (images / record["path"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 16), (90, 120, 30)).save(images / record["path"])
    return _write_run(tmp_path / "out", images, records)


def _group(path: str) -> str:
    """The class of an image of :func:`_split_records` by its path ("empty": no object)."""
    return path.split("/")[0]


def _per_group(dataset: sv.DetectionDataset) -> dict[str, int]:
    """Images per class of a YOLO split read back (flat names: ``cat__cat00.jpg``)."""
    groups = [Path(path).name.split("__")[0] for path, _, _ in dataset]
    return {g: groups.count(g) for g in set(groups)}


@pytest.mark.parametrize(
    ("fraction", "val"),
    [
        (0.2, {"cat": 2, "dog": 1, "empty": 1}),  # 2.0, 1.0, 0.2 -> 0, 0.8 -> 1
        (0.3, {"cat": 3, "dog": 2, "empty": 1}),  # dog 1.5 rounds half up
        (0.9, {"cat": 9, "dog": 4, "empty": 3}),  # n - 1 at most: each keeps one in train
    ],
)
def test_yolo_split_is_stratified_in_ultralytics_layout(
    classes_run: Path, fraction: float, val: dict[str, int]
) -> None:
    import yaml

    (folder,) = convert_predictions(classes_run, "yolo", val_fraction=fraction, seed=3)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.iterdir()) == [
        ".lcar-deploy",
        "data.yaml",
        "images",
        "labels",
    ]
    data = yaml.safe_load((folder / "data.yaml").read_text())
    assert data == {
        "path": str(folder.resolve()),
        "train": "images/train",
        "val": "images/val",
        "nc": 3,
        "names": ["owl", "dog", "cat"],
    }
    total = {"cat": 10, "dog": 5, "owl": 1, "empty": 4}
    for part, expected in [("val", val), ("train", {g: total[g] - val.get(g, 0) for g in total})]:
        images, labels = folder / "images" / part, folder / "labels" / part
        dataset = sv.DetectionDataset.from_yolo(
            images_directory_path=str(images),
            annotations_directory_path=str(labels),
            data_yaml_path=str(folder / "data.yaml"),
        )
        assert _per_group(dataset) == {g: n for g, n in expected.items() if n}
        for path, _, detections in dataset:
            name = Path(path).name
            group = name.split("__")[0]
            boxes = {"dog": 2, "empty": 0}.get(group, 1)
            assert len(detections) == boxes, name
            if boxes:
                assert set(detections.class_id.tolist()) == {data["names"].index(group)}
        assert {p.stem for p in images.iterdir()} == {p.stem for p in labels.iterdir()}
    background = [p for p in (folder / "labels").rglob("empty__*.txt")]
    assert len(background) == 4 and all(p.read_text() == "" for p in background)
    assert f"{sum(val.values())} val images" in (folder / "data.yaml").read_text()


def _val_of(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "images" / "val").iterdir())


def test_split_depends_on_the_seed_not_on_the_order_of_the_lines(
    classes_run: Path, tmp_path: Path
) -> None:
    first = _val_of(convert_predictions(classes_run, "yolo", val_fraction=0.3, seed=5)[0])
    shuffled = _split_records()
    np.random.default_rng(0).shuffle(shuffled)
    other = _write_run(tmp_path / "other", tmp_path / "images", shuffled)
    again = convert_predictions(other, "yolo", val_fraction=0.3, seed=5)[0]
    assert _val_of(again) == first
    assert snapshot(again / "labels") == snapshot(classes_run.parent / "yolo" / "labels")
    seeds = {
        tuple(_val_of(convert_predictions(other, "yolo", val_fraction=0.3, seed=s)[0]))
        for s in range(4)
    }
    assert len(seeds) == 4  # each seed its own split
    coco = [convert_predictions(p, "coco", val_fraction=0.3, seed=5) for p in (classes_run, other)]
    val_names = [
        sorted(i["file_name"] for i in json.loads(files[1].read_text())["images"]) for files in coco
    ]
    assert val_names[0] == val_names[1]
    assert [n.replace("/", "__") for n in val_names[0]] == first  # COCO and YOLO agree


def test_coco_split_reads_back_with_ids_of_the_unsplit_file(classes_run: Path) -> None:
    (whole,) = convert_predictions(classes_run, "coco")
    files = convert_predictions(classes_run, "coco", val_fraction=0.25, seed=1)
    out = classes_run.parent
    assert files == [out / "coco_train.json", out / "coco_val.json"]
    documents = [json.loads(f.read_text()) for f in files]
    unsplit = json.loads(whole.read_text())
    assert [d["info"]["split"] for d in documents] == ["train", "val"]
    for key in ("images", "annotations"):
        ids = sorted(x["id"] for d in documents for x in d[key])
        assert ids == [x["id"] for x in unsplit[key]]  # disjoint, together the whole file
        merged = sorted((x for d in documents for x in d[key]), key=lambda x: x["id"])
        assert merged == unsplit[key]
    for document in documents:
        assert document["categories"] == unsplit["categories"]
        image_ids = {i["id"] for i in document["images"]}
        assert all(a["image_id"] in image_ids for a in document["annotations"])
    # cat 10 -> 3 (2.5 halves up), dog 5 -> 1, owl 1 -> 0, empty 4 -> 1
    val = [_group(i["file_name"]) for i in documents[1]["images"]]
    assert {g: val.count(g) for g in set(val)} == {"cat": 3, "dog": 1, "empty": 1}
    images = Path(json.loads((out / "run.json").read_text())["images"])
    for file, document in zip(files, documents, strict=True):
        dataset = sv.DetectionDataset.from_coco(
            images_directory_path=str(images), annotations_path=str(file)
        )
        assert len(dataset) == len(document["images"])
        assert sum(len(d) for _, _, d in dataset) == len(document["annotations"])
        coco = COCO(str(file))
        assert sorted(coco.getImgIds()) == sorted(i["id"] for i in document["images"])


def test_min_score_is_applied_before_the_split(classes_run: Path) -> None:
    lines = [json.loads(line) for line in classes_run.read_text().splitlines()]
    for record in lines:
        if record["path"].startswith("cat/"):
            record["box_scores"] = [0.1]  # under --min-score: background images
    classes_run.write_text("".join(json.dumps(r) + "\n" for r in lines))
    train, val = convert_predictions(classes_run, "coco", min_score=0.5, val_fraction=0.5, seed=0)
    documents = [json.loads(f.read_text()) for f in (train, val)]
    assert [c["name"] for c in documents[0]["categories"]] == ["owl", "dog"]
    assert all(a["score"] >= 0.5 for d in documents for a in d["annotations"])
    val_groups = [_group(i["file_name"]) for i in documents[1]["images"]]
    # 14 background images (10 cats, 4 empty) -> 7; dog 5 -> 3 (2.5 halves up); owl stays
    assert len([g for g in val_groups if g in ("cat", "empty")]) == 7
    assert val_groups.count("dog") == 3 and "owl" not in val_groups


def test_no_split_keeps_the_layout_and_says_val_is_the_training_images(
    classes_run: Path,
) -> None:
    import yaml

    (folder,) = convert_predictions(classes_run, "yolo")
    text = (folder / "data.yaml").read_text()
    assert text.startswith("# No held-out split: val is the training images")
    data = yaml.safe_load(text)
    assert data["train"] == data["val"] == "images"  # Ultralytics requires a val entry
    assert {p.name for p in (folder / "images").iterdir()} >= {"cat__cat00.jpg", "empty__e0.jpg"}
    convert_predictions(classes_run, "yolo", val_fraction=0.2)
    assert not (folder / "images" / "cat__cat00.jpg").exists()  # replaced whole
    assert len(list((folder / "labels").rglob("*.txt"))) == 20
    (folder / "images" / "val" / "mine.jpg").write_bytes(b"the user's")
    with pytest.raises(OutputError, match=r"holds images/val/mine\.jpg, which lcar-deploy did"):
        convert_predictions(classes_run, "yolo")
    assert (folder / "images" / "val" / "mine.jpg").read_bytes() == b"the user's"


def test_coco_split_never_writes_over_the_users_files(classes_run: Path) -> None:
    out = classes_run.parent
    (out / "coco_val.json").write_text('{"mine": 1}')
    code, _, stderr = invoke("convert", classes_run, "--to", "coco", "--val-fraction", "0.2")
    assert_clear_error(code, stderr, "coco_val.json: exists and is not a coco file")
    assert not (out / "coco_train.json").exists()  # checked before anything is written
    assert (out / "coco_val.json").read_text() == '{"mine": 1}'
    code, stdout, _ = invoke(
        "convert", classes_run, "--to", "coco", "--val-fraction", "0.2", "--out", out / "d.json"
    )
    assert code == 0 and stdout.split() == [str(out / "d_train.json"), str(out / "d_val.json")]
    before = (out / "d_val.json").read_bytes()
    convert_predictions(classes_run, "coco", out / "d.json", val_fraction=0.2)  # its own: again
    assert (out / "d_val.json").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--val-fraction", "1"], "val fraction must be in [0, 1)"),
        (["--val-fraction", "1.5"], "val fraction must be in [0, 1)"),
        (["--val-fraction", "-0.1"], "val fraction must be in [0, 1)"),
        (["--val-fraction", "nan"], "val fraction must be in [0, 1)"),
        (["--val-fraction", "0.2", "--to", "voc"], "split (val fraction 0.2) is written only"),
        (["--val-fraction", "0.01"], "val fraction 0.01 puts none of the 20 images in val"),
    ],
)
def test_cli_refuses_a_val_fraction_it_cannot_use(
    classes_run: Path, args: list[str], says: str
) -> None:
    to = [] if "--to" in args else ["--to", "yolo"]
    code, _, stderr = invoke("convert", classes_run, *to, *args)
    assert_clear_error(code, stderr, says)
    assert sorted(p.name for p in classes_run.parent.iterdir()) == [
        "predictions.jsonl",
        "run.json",
    ]


def test_convert_help_explains_the_split() -> None:
    code, stdout, _ = invoke("convert", "--help")
    text = " ".join(stdout.split())
    assert code == 0
    assert "--to yolo --val-fraction 0.2 --seed 0" in text
    assert "--seed" in text and "images/train" in text and "coco_val.json" in text


# --- hostile runs: nothing lost, nothing read or linked outside, bounded messages -------------


def convert_cli(*args: str | Path, timeout: float = 120) -> tuple[int, str]:
    """``lcar-deploy convert ARGS`` as a separate process: (exit code, stderr)."""
    return run_cli("convert", *args, timeout=timeout)


def assert_clear_error(code: int, stderr: str, *expected: str) -> None:
    """Exit 1 with one bounded error line, no traceback, naming what it should."""
    assert code == 1, stderr
    assert stderr.startswith("error: ") and "Traceback" not in stderr, stderr
    assert len(stderr.strip()) < 300 and stderr.count("\n") == 1, stderr
    for text in expected:
        assert text in stderr, stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(folder.rglob("*"))
    }


def test_convert_never_writes_over_the_run_or_the_users_files(run: Path, tmp_path: Path) -> None:
    predictions = run / "predictions.jsonl"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"the user's photo")
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    before = snapshot(tmp_path)
    for to, out, says in [
        ("yolo", run, "out: exists and is not an empty folder nor a convert-yolo output"),
        ("voc", predictions, "predictions.jsonl: exists and is not a folder"),
        ("coco", predictions, "predictions.jsonl: exists and is not a coco file written by"),
        ("labelstudio", run / "run.json", "run.json: exists and is not a labelstudio file"),
        ("yolo", mine, "mine: exists and is not an empty folder nor a convert-yolo output"),
        ("coco", tmp_path / "notes.json", "notes.json: exists and is not a coco file"),
        ("coco", mine, "mine: exists and is not a coco file"),
        ("yolo", tmp_path / "images", "images: exists and is not an empty folder"),
    ]:
        code, _, stderr = invoke("convert", predictions, "--to", to, "--out", out)
        assert_clear_error(code, stderr, says)
    write_mark(run, "localize")
    code, _, stderr = invoke("convert", predictions, "--to", "yolo", "--out", run)
    assert_clear_error(code, stderr, "is a localize output of lcar-deploy, not a convert-yolo")
    (run / ".lcar-deploy").unlink()
    assert snapshot(tmp_path) == before  # nothing deleted, overwritten or left behind
    for to in ("coco", "labelstudio", "yolo", "voc"):  # its own outputs: written again
        for _ in range(2):
            code, _, stderr = invoke("convert", predictions, "--to", to)
            assert code == 0, stderr


def test_convert_out_that_cannot_be_written(run: Path, tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for to, out, says in [
        ("yolo", Path("/proc/self"), "/proc/self: is a link (a folder replaced whole is never"),
        ("voc", Path("/proc/self/fd"), "/proc/self/fd: exists and is not an empty folder"),
        ("coco", Path("/proc/self/coco.json"), "cannot write"),
        ("voc", loop, "loop: is a link that leads to no folder"),
        ("coco", loop, "loop: exists and is not a coco file"),
    ]:
        code, stderr = convert_cli(run / "predictions.jsonl", "--to", to, "--out", out)
        assert_clear_error(code, stderr, says)


def rewrite(run: Path, change: dict, rel: str = "a.jpg") -> None:
    """Change the record of ``rel`` in the run's predictions."""
    lines = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    for record in lines:
        if record["path"] == rel:
            record.update(change)
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.mark.parametrize("to", ["yolo", "voc"])
def test_only_the_runs_images_are_linked(run: Path, tmp_path: Path, to: str) -> None:
    images = tmp_path / "images"
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not for the dataset")
    (images / "leak.jpg").symlink_to(secret)
    (images / "notes.txt").write_text("not an image")
    for path, says in [
        ("../secret.jpg", "../secret.jpg: not inside the image folder"),
        (str(secret), "secret.jpg: not inside the image folder"),
        ("/etc/shadow", "/etc/shadow: not inside the image folder"),
        ("leak.jpg", "leak.jpg: not inside the image folder"),
        ("notes.txt", "notes.txt: not named like an image"),
    ]:
        rewrite(run, {"path": path})
        code, _, stderr = invoke("convert", run / "predictions.jsonl", "--to", to)
        assert_clear_error(code, stderr, says)
        rewrite(run, {"path": "a.jpg"}, path)
        assert not (run / to).exists()
        assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_coco_reads_only_the_runs_own_masks(run: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    Image.fromarray(np.full((60, 80), 255, np.uint8)).save(outside)
    (run / "masks" / "linked.png").symlink_to(outside)
    for mask, says in [
        ("../outside.png", "mask '../outside.png' is not a file in the run's masks/"),
        (str(outside), "is not a file in the run's masks/"),
        ("masks/../../outside.png", "is not a file in the run's masks/"),
        ("masks/linked.png", "masks/linked.png: the mask of a.jpg is not in the run's masks/"),
    ]:
        rewrite(run, {"mask": mask})
        code, _, stderr = invoke("convert", run / "predictions.jsonl", "--to", "coco")
        assert_clear_error(code, stderr, says)
    assert not (run / "coco.json").exists()


def png_header(width: int, height: int) -> bytes:
    """The first bytes of a grey PNG of that size, no pixel data: a decompression bomb's
    header, which is all that a size check may read."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


@pytest.mark.parametrize("kind", ["fifo", "bomb", "bomb in its record", "folder", "truncated"])
def test_a_mask_that_cannot_be_read_is_a_clear_error(run: Path, kind: str) -> None:
    mask = run / "masks" / "a.jpg.png"
    mask.unlink()
    if kind == "fifo":
        os.mkfifo(mask)
    elif kind == "folder":
        mask.mkdir()
    elif kind == "truncated":
        mask.write_bytes(png_header(80, 60))
    else:
        mask.write_bytes(png_header(60_000, 60_000))
    if kind == "bomb in its record":
        rewrite(run, {"image_size": [60_000, 60_000]})
    code, stderr = convert_cli(run / "predictions.jsonl", "--to", "coco", timeout=60)
    assert_clear_error(code, stderr, "masks/a.jpg.png")
    assert not (run / "coco.json").exists()


def test_a_fifo_as_predictions_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "predictions.jsonl"
    os.mkfifo(fifo)
    code, stderr = convert_cli(fifo, "--to", "coco", timeout=60)
    assert_clear_error(
        code, stderr, r"predictions.jsonl: cannot read (not a regular file (a FIFO))"
    )


GOOD = '{"path": "a.jpg", "status": "ok", "image_size": [10, 10], "boxes": []}'


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("[" * 200_000 + "]" * 200_000, ":2: not JSON Python can read (nested deeper than 64)"),
        ('{"path": "x.jpg", "status": "ok", "image_size": [' + "7" * 5000 + ", 5]}", "digits"),
        (
            '{"path": "x.jpg", "status": "ok", "image_size": [10, 10], "class_id": 1, '
            '"class_name": "a", "boxes": [[' + "9" * 400 + ', 0, 1, 1]], "box_scores": [0.5]}',
            ":2: box [99999",
        ),
        ('{"path": "x.jpg", "status": "ok", "image_size": [' + "8" * 400 + ", 5]}", "larger than"),
        ('{"path": "x\\u0000.jpg", "status": "ok", "image_size": [10, 10]}', "is not a file name"),
        (
            '{"path": "x.jpg", "status": "ok", "image_size": [10, 10], "mask": "masks/\\u0000"}',
            "mask",
        ),
        ('{"path": "x.jpg", "status": "ok", "image_size": [NaN, 10]}', "NaN is not a number"),
        ('{"path": "x.jpg", "status": "ok", "image_size": [' + "1, " * 5_000_000 + "1]}", ":2:"),
        ('{"path": "' + "\\u001b[31m" * 100_000 + '", "status": "ok"}', ":2: image_size None"),
        ("x" * 50_000_000, ":2: not JSON (Expecting value at character 0)"),
    ],
)
def test_hostile_lines_are_named_and_bounded(tmp_path: Path, line: str, says: str) -> None:
    file = tmp_path / "predictions.jsonl"
    file.write_text(GOOD + "\n" + line + "\n")
    code, stderr = convert_cli(file, "--to", "coco")
    assert_clear_error(code, stderr, says, "predictions.jsonl:2:")
    assert "\x1b" not in stderr


def test_voc_and_yolo_take_control_characters_and_bytes_that_are_not_utf8(
    run: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    raw = os.fsdecode(b"caf\xe9\x01.jpg")  # Latin-1 bytes and a control character
    Image.new("RGB", (80, 60)).save(images / raw, format="JPEG")
    rewrite(run, {"path": raw, "class_name": "cat\x07\nbell", "mask": None})
    rewrite(run, {"class_name": "cat\x07\nbell"}, "c.jpg")
    for to in ("voc", "yolo"):
        code, stderr = convert_cli(run / "predictions.jsonl", "--to", to)
        assert code == 0, stderr
    dataset = sv.DetectionDataset.from_pascal_voc(
        images_directory_path=str(run / "voc" / "JPEGImages"),
        annotations_directory_path=str(run / "voc" / "Annotations"),
    )
    assert "cat\\x07\\nbell" in dataset.classes and len(dataset) == 3
    xml = next((run / "voc" / "Annotations").glob("caf*.xml")).read_text()
    assert "<filename>caf\\udce9\\x01.jpg</filename>" in xml
    assert os.path.exists(run / "voc" / "JPEGImages" / "caf\\udce9\\x01.jpg")
    names = {p.name for p in (run / "yolo" / "images").iterdir()}
    assert raw in names  # YOLO keeps the file name's bytes
