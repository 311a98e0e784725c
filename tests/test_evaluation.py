"""eval's scoring path: maps scored as computed, images without a GT box counted; eval over
real images mixed with bad ones (each failure named, the rest scored), and with a bad bundle."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import Case
from helpers import BUNDLE_ERRORS, FAST, invoke
from PIL import Image

from lcar_deploy import cli
from lcar_deploy.config import PipelineConfig
from lcar_deploy.datasets import Record
from lcar_deploy.evaluation import ImageOutcome, evaluate_batch, report_markdown, run_evaluation
from lcar_deploy.metrics import BoxAccuracyAccumulator
from lcar_deploy.pipeline import Localization

GT = np.array([[50, 50, 99, 99]])


def strip_map(strip_value: float) -> np.ndarray:
    """1.0 on the GT box, ``strip_value`` on a strip to its right, 0 elsewhere (float32)."""
    score_map = np.zeros((224, 224), np.float32)
    score_map[50:100, 50:100] = 1.0
    score_map[50:100, 100:180] = strip_value
    return score_map


class FakeLocalizer:
    """Returns a fixed map for every image, as Localizer.run_methods does."""

    def __init__(self, score_map: np.ndarray) -> None:
        self.config = PipelineConfig()
        self.score_map = score_map

    def run_methods(self, images, class_ids, methods):
        mask = self.score_map > 0.5
        loc = Localization(None, None, None, None, self.score_map, mask, None, [], {})
        return {m: [loc] * len(images) for m in methods}


def test_maps_are_scored_in_float32(tmp_path: Path) -> None:
    # 52/255 - 1e-6: uint8 51 in float32 (outside the mask at threshold 0.2, level 51), but
    # float16 rounds it up to uint8 52 (inside): the box then takes in the strip.
    score_map = strip_map(np.float32(52 / 255 - 1e-6))
    assert int(score_map[60, 150] * 255) == 51
    assert int(np.float32(np.float16(score_map[60, 150])) * 255) == 52
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((224, 224, 3), np.uint8)).save(path)
    record = Record("a.png", path, 0, 0, GT.astype(np.float64), size=(224, 224))

    outcomes = evaluate_batch(FakeLocalizer(score_map), [record], ("arm",), gt_class=False)
    (tmp_path / "eval").mkdir()
    result = run_evaluation(iter(outcomes), ("arm",), tmp_path / "eval", 1, progress=False)

    expected = BoxAccuracyAccumulator()
    expected.add_scoremap(score_map, GT)
    rounded = BoxAccuracyAccumulator()
    rounded.add_scoremap(score_map.astype(np.float16).astype(np.float32), GT)
    curve = result.metrics["methods"]["arm"]["curves"]["v1"]["50"]
    assert curve == expected.to_dict(include_curves=True)["curves"]["v1"]["50"]
    assert curve != rounded.to_dict(include_curves=True)["curves"]["v1"]["50"]
    assert curve[20] == 100.0
    stored = np.load(tmp_path / "eval" / "maps.npz")["maps_arm"]
    assert stored.dtype == np.float16 and stored.shape == (1, 224, 224)


def test_images_without_a_gt_box_are_counted(tmp_path: Path) -> None:
    score_map = strip_map(0.0)
    outcomes = [
        ImageOutcome("a", GT, maps={"arm": score_map}),
        ImageOutcome("b", GT, maps={"arm": score_map}),
        ImageOutcome("no-box", np.zeros((0, 4), np.int64), maps={"arm": score_map}),
        ImageOutcome("bad", np.zeros((0, 4), np.int64), error="bad: cannot decode image"),
    ]
    result = run_evaluation(iter(outcomes), ("arm",), tmp_path, len(outcomes), progress=False)
    metrics = result.metrics
    assert (metrics["num_images"], metrics["num_without_gt"], metrics["num_errors"]) == (3, 1, 1)
    assert metrics["methods"]["arm"]["num_images"] == 2
    report = report_markdown(metrics, "t")
    assert "2 images evaluated, 1 without a ground-truth box (not scored), 1 failed." in report


# --- eval over bad images, with a bad bundle ------------------------------------------------------


@pytest.mark.slow
def test_eval_with_bad_images(
    shared_data: Path, image_corpus: tuple[Path, list[Case]], small_bundle: Path, tmp_path: Path
) -> None:
    source = shared_data / "ILSVRC-mini"
    meta_in = source / "metadata" / "test"
    real = (meta_in / "image_ids.txt").read_text().split()[:3]
    labels = dict(line.split(",") for line in (meta_in / "class_labels.txt").read_text().split())
    root = tmp_path / "data"
    (root / "val").mkdir(parents=True)
    for image_id in real:
        (root / image_id).symlink_to(source / image_id)
    corpus_root, _ = image_corpus
    bad = {
        "val/empty.JPEG": ("empty.jpg", r"empty file"),
        "val/truncated.JPEG": ("truncated.jpg", r"truncated"),
        "val/text.JPEG": ("text.jpg", r"cannot identify"),
        "val/huge.png": ("huge.png", r"over the limit"),
        "val/fifo.JPEG": (None, r"not a regular file \(a FIFO\)"),
        "val/missing.JPEG": (None, r"file not found"),
    }
    for image_id, (name, _) in bad.items():
        if name is not None:
            (root / image_id).symlink_to(corpus_root / name)
    os.mkfifo(root / "val" / "fifo.JPEG")
    shutil.copy(corpus_root / "tiny_1x1.png", root / "val" / "tiny.png")
    ids = [*real[:2], *bad, "val/tiny.png", real[2]]
    meta = root / "metadata" / "test"
    meta.mkdir(parents=True)
    (meta / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (meta / "class_labels.txt").write_text("".join(f"{i},{labels.get(i, '0')}\n" for i in ids))
    boxes = [
        line
        for line in (meta_in / "localization.txt").read_text().splitlines()
        if line.split(",")[0] in real
    ]
    boxes += [f"{i},0,0,0,0" for i in [*bad, "val/tiny.png"]]
    (meta / "localization.txt").write_text("\n".join(boxes) + "\n")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "notes.txt").write_text("kept")

    code, report, stderr = invoke(
        "eval", "--dataset", "ilsvrc", "--root", root, "--bundle", small_bundle,
        "--methods", "cam,arm", "--out", out, "--batch-size", "4", *FAST,
    )  # fmt: skip
    assert code == cli.EXIT_SOME_IMAGES_FAILED, stderr
    assert f"4 images evaluated, {len(bad)} failed." in report
    assert f"{len(bad)} images failed, e.g. {root / 'val' / 'empty.JPEG'}: empty file" in stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and metrics["methods"]["arm"]["num_images"] == 4
    errors = {e["image_id"]: e["error"] for e in metrics["errors"]}
    assert set(errors) == set(bad)
    for image_id, (_, reason) in bad.items():
        assert re.search(reason, errors[image_id]), errors[image_id]
    assert list(np.load(out / "maps.npz")["ids"]) == [*real[:2], "val/tiny.png", real[2]]
    assert (out / "notes.txt").read_text() == "kept"


@pytest.mark.slow
def test_bad_bundle_in_eval_and_unknown_class(
    bad_bundles: dict[str, Path],
    small_bundle: Path,
    image_corpus: tuple[Path, list[Case]],
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    meta = root / "metadata" / "test"
    meta.mkdir(parents=True)
    shutil.copy(image_corpus[0] / "upright.jpg", root / "a.jpg")
    (meta / "image_ids.txt").write_text("a.jpg\n")
    (meta / "class_labels.txt").write_text("a.jpg,281\n")
    args = ["eval", "--dataset", "ilsvrc", "--root", root, "--out", tmp_path / "eval", *FAST]
    code, _, stderr = invoke(*args, "--bundle", bad_bundles["tampered"])
    assert code == cli.EXIT_ERROR and re.search(BUNDLE_ERRORS["tampered"], stderr), stderr
    code, _, stderr = invoke("localize", root, "--bundle", small_bundle, "--class", "99999", *FAST)
    assert code == cli.EXIT_ERROR
    assert "class id 99999 is not among the bundle's 1000 classes" in stderr


def test_a_map_method_is_also_reported_at_the_runs_own_threshold(tmp_path: Path) -> None:
    """A strip at 0.6 beside the object: thresholds >= 0.6 box the object alone (IoU 1),
    lower ones box object and strip (IoU 50 / 130 < 0.5)."""
    outcomes = [ImageOutcome("a", GT, maps={"arm": strip_map(0.6)})]
    low = run_evaluation(iter(outcomes), ("arm",), tmp_path, 1, progress=False, box_threshold=0.5)
    arm = low.metrics["methods"]["arm"]
    assert arm["gt_known"] == 100.0 and arm["gt_known_threshold"] == pytest.approx(0.6)
    assert (arm["setting_threshold"], arm["gt_known_at_setting"]) == (0.5, 0.0)
    assert "| 0.60 | 0.0 (0.50) |" in report_markdown(low.metrics, "t")
    outcomes = [ImageOutcome("a", GT, maps={"arm": strip_map(0.6)})]
    high = run_evaluation(iter(outcomes), ("arm",), tmp_path, 1, progress=False, box_threshold=0.7)
    assert high.metrics["methods"]["arm"]["gt_known_at_setting"] == 100.0
    # Every GT column at the setting: at 0.5 the box holds the strip too (IoU 50 / 130).
    assert arm["gt_at_setting"] == {"30": 100.0, "50": 0.0, "70": 0.0, "80": 0.0, "90": 0.0}
    assert high.metrics["methods"]["arm"]["gt_at_setting"]["90"] == 100.0
    low.metrics["default_method"] = "arm"
    report = report_markdown(low.metrics, "t")
    assert "| **arm** (default) | threshold 0.50 | 0.0 | 0.0 | 0.0 | 0.0 |" in report


def test_named_classes_are_matched_to_the_bundles_by_name(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lcar_deploy.datasets import load_dataset
    from lcar_deploy.evaluation import uses_gt_class, with_bundle_classes

    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "list.csv").write_text("a.png,dog,0,0,3,3\nb.png,cat,1,1,4,4\n")
    data = load_dataset("csv", tmp_path / "list.csv")
    assert data.class_names == ["cat", "dog"] and [r.class_id for r in data] == [1, 0]
    bundle = SimpleNamespace(
        has_heads=True, class_names=["bird", "dog", "cat"], class_ids=[5, 7, 9], class_dataset="csv"
    )
    assert uses_gt_class(bundle, data)
    mapped = with_bundle_classes(data, bundle)
    assert [r.class_id for r in mapped] == [7, 9]  # dog, cat: the bundle's ids
    assert mapped.class_ids == [7, 9] and mapped.class_names == ["dog", "cat"]
    assert [r.label for r in mapped] == [0, 1]
    other = SimpleNamespace(**{**vars(bundle), "class_names": ["bird", "dog", "emu"]})
    assert not uses_gt_class(other, data)  # "cat" unknown: the predicted class is used


def test_eval_on_a_csv_list_with_boxes(small_bundle: Path, tmp_path: Path) -> None:
    from conftest import synthetic_scene

    from lcar_deploy.bundle import Bundle

    name = Bundle.load(small_bundle).class_names[3]
    lines = []
    for seed in range(2):
        image, mask = synthetic_scene(seed=seed)
        Image.fromarray(image).save(tmp_path / f"s{seed}.png")
        ys, xs = np.nonzero(mask)
        lines.append(f's{seed}.png,"{name}",{xs.min()},{ys.min()},{xs.max()},{ys.max()}')
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    code, stdout, stderr = invoke(
        "eval", "--dataset", "csv", "--root", tmp_path / "list.csv", "--bundle", small_bundle,
        "--methods", "cam,arm", "--out", out, *FAST,
    )  # fmt: skip
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["dataset"]["kind"] == "csv"
    arm = metrics["methods"]["arm"]
    assert arm["num_images"] == 2 and arm["setting_threshold"] == 0.5
    assert 0.0 <= arm["gt_known_at_setting"] <= arm["gt_known"]
    assert "GT(0.5) at setting" in stdout
