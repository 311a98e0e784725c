"""Pipeline, localize and eval on small inputs (a small bundle, synthetic scenes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_scene
from PIL import Image

from lcar_deploy.bundle import Bundle
from lcar_deploy.datasets import load_dataset
from lcar_deploy.evaluation import iter_outcomes, run_evaluation, write_outputs
from lcar_deploy.localize import LocalizeOptions, localize_folder, read_done
from lcar_deploy.names import STAGES
from lcar_deploy.pipeline import (
    METHODS,
    Localizer,
    PipelineConfig,
    merge_flipped,
)
from lcar_deploy.stages.arm import ArmConfig
from lcar_deploy.stages.sgrm import SgrmConfig

FAST = {"arm": {"iterations": 10}, "sgrm": {"max_steps": 30}}


def test_config_from_bundle_settings() -> None:
    config = PipelineConfig.from_settings(
        {"arm": {"dilations": [1, 2], "iterations": 7}, "arm_input": "cam"}, method="arm"
    )
    assert config.arm == ArmConfig(dilations=(1, 2), iterations=7)
    assert config.arm_input == "cam" and config.method == "arm"
    assert config.sgrm == SgrmConfig()
    with pytest.raises(ValueError, match="setting bogus: unknown setting"):
        PipelineConfig.from_settings({"bogus": 1})
    with pytest.raises(ValueError, match="method"):
        PipelineConfig(method="crf")


def test_merge_flipped_averages_mirrored_cells() -> None:
    cams = np.array([[[[1.0, 2.0, 3.0]]]], dtype=np.float32)
    grid = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    merged = merge_flipped(
        {"cams": cams, "logits": np.array([[1.0]], np.float32), "grid": grid},
        {"cams": cams * 10, "logits": np.array([[3.0]], np.float32), "grid": grid + 4},
    )
    np.testing.assert_array_equal(merged["cams"], [[[[15.5, 11.0, 6.5]]]])
    np.testing.assert_array_equal(merged["logits"], [[2.0]])
    # grid is (B, h, w, D): cells (w) swap, channels (D) stay: (0,1)+(6,7), (2,3)+(4,5).
    np.testing.assert_array_equal(merged["grid"], [[[[3.0, 4.0], [3.0, 4.0]]]])
    assert merged["cams"].dtype == np.float32
    with pytest.raises(ValueError, match="unknown output 'extra'"):
        merge_flipped({"extra": cams}, {"extra": cams})
    with pytest.raises(ValueError, match="differ"):
        merge_flipped({"cams": cams}, {"cams": cams[..., :2]})
    with pytest.raises(ValueError, match="different outputs"):
        merge_flipped({"cams": cams}, {"grid": grid})


def test_flip_makes_maps_mirror_equivariant(small_bundle: Path) -> None:
    bundle = Bundle.load(small_bundle)
    image = synthetic_scene(size=(96, 128), seed=3)[0]
    mirrored = np.ascontiguousarray(image[:, ::-1])
    for flip in (True, False):
        config = PipelineConfig.from_settings(FAST, flip=flip)
        localizer = Localizer(bundle, config, device="cpu", threads=2)
        results = localizer.run_methods([image, mirrored], [281, 281], ("cam", "arm"))
        for method in ("cam", "arm"):
            a, b = (loc.map for loc in results[method])
            gap = float(np.abs(a - b[:, ::-1]).max())
            # With flip the two runs see the same pair of images: equal up to rounding.
            assert gap < 1e-4 if flip else gap > 1e-3, (method, flip, gap)


def test_every_method_from_one_run(small_bundle: Path) -> None:
    bundle = Bundle.load(small_bundle)
    localizer = Localizer(bundle, PipelineConfig.from_settings(FAST), device="cpu", threads=2)
    images = [synthetic_scene(seed=s)[0] for s in range(3)]
    results = localizer.run_methods(images)
    assert set(results) == set(METHODS)
    # ARM refines the CAM here: the graph cut, run for its own method, is no stage of ARM's.
    assert localizer.arm_input == "cam"
    timed = {
        "cam": ("backbone", "cam"),
        "graphcut": ("backbone", "cam", "graph_cut"),
        "arm": ("backbone", "cam", "arm"),
        "lcar": ("backbone", "cam", "arm", "sgrm"),
    }
    for method, per_image in results.items():
        assert len(per_image) == 3
        for loc in per_image:
            assert loc.map.shape == (224, 224) and loc.map.dtype == np.float32
            assert loc.map.min() >= 0.0 and loc.map.max() <= 1.0
            assert loc.mask.shape == (224, 224) and loc.mask.dtype == bool
            assert 0 <= loc.class_id < 1000 and 0.0 < loc.class_score <= 1.0
            assert loc.no_object == (loc.box is None) == (loc.boxes == [])
            assert len(loc.box_scores) == len(loc.boxes)
            if loc.box is not None:
                x0, y0, x1, y1 = loc.box
                assert 0 <= x0 <= x1 <= 223 and 0 <= y0 <= y1 <= 223
                assert loc.box_score == loc.box_scores[0] >= 0.1
            assert tuple(loc.timings_ms) == timed[method]
    assert all(loc.sgrm_steps >= 1 for loc in results["lcar"])
    settings = {**FAST, "arm_input": "graphcut"}
    cut = Localizer(bundle, PipelineConfig.from_settings(settings), device="cpu", threads=2)
    assert tuple(cut.run(images[:1])[0].timings_ms) == STAGES[:-1]  # the default method, arm
    full = PipelineConfig.from_settings(settings, method="lcar")
    cut = Localizer(bundle, full, device="cpu", threads=2)
    assert tuple(cut.run(images[:1])[0].timings_ms) == STAGES
    given = localizer.run(images[:1], [281])[0]
    assert given.class_id == 281 and given.predicted_class_id == results["lcar"][0].class_id


def test_localize_folder_writes_and_resumes(small_bundle: Path, tmp_path: Path) -> None:
    src = tmp_path / "images"
    (src / "nested").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "nested/b.png", "c.webp"]):
        Image.fromarray(synthetic_scene(size=(90 + 10 * i, 130), seed=i)[0]).save(src / name)
    (src / "notes.txt").write_text("not an image")
    bundle = Bundle.load(small_bundle)
    localizer = Localizer(
        bundle, PipelineConfig.from_settings(FAST, method="arm"), device="cpu", threads=2
    )
    out = tmp_path / "out"
    options = LocalizeOptions(batch_size=2, save_masks=True, overlays=True, limit=2)
    first = localize_folder(localizer, src, out, options, progress=False)
    assert (first.ok, first.errors) == (2, 0)
    second = localize_folder(localizer, src, out, LocalizeOptions(save_masks=True), progress=False)
    assert (second.ok, second.skipped) == (1, 2)
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in lines) == ["a.jpg", "c.webp", "nested/b.png"]
    for record in lines:
        width, height = record["image_size"]
        x0, y0, x1, y1 = record["box"]
        assert 0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height
        mask = np.asarray(Image.open(out / record["mask"]))
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
    assert sorted(p.name for p in (out / "overlays").rglob("*.jpg")) == ["a.jpg.jpg", "c.webp.jpg"]
    assert json.loads((out / "summary.json").read_text())["ok"] == 1


def test_partial_last_line_is_dropped_on_resume(tmp_path: Path) -> None:
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text('{"path": "a.jpg", "status": "ok"}\n{"path": "b.jp')
    assert read_done(predictions, retry_errors=False) == {"a.jpg": "ok"}
    assert predictions.read_text() == '{"path": "a.jpg", "status": "ok"}\n'


def _tiny_wsol_dataset(root: Path, count: int = 4) -> None:
    (root / "val").mkdir(parents=True)
    meta = root / "metadata" / "test"
    meta.mkdir(parents=True)
    ids, labels, boxes, sizes = [], [], [], []
    for i in range(count):
        image, mask = synthetic_scene(size=(100, 140), seed=i)
        name = f"val/{i}.png"
        Image.fromarray(image).save(root / name)
        rows, cols = np.nonzero(mask)
        ids.append(name)
        labels.append(f"{name},281")
        boxes.append(f"{name},{cols.min()},{rows.min()},{cols.max()},{rows.max()}")
        sizes.append(f"{name},140,100")
    for file, lines in [
        ("image_ids.txt", ids),
        ("class_labels.txt", labels),
        ("localization.txt", boxes),
        ("image_sizes.txt", sizes),
    ]:
        (meta / file).write_text("\n".join(lines) + "\n")


def test_eval_writes_every_output(small_bundle: Path, tmp_path: Path) -> None:
    _tiny_wsol_dataset(tmp_path / "data")
    dataset = load_dataset("ilsvrc", tmp_path / "data", "test")
    bundle = Bundle.load(small_bundle)
    config = PipelineConfig.from_settings(FAST)
    out = tmp_path / "eval"
    out.mkdir()
    outcomes = iter_outcomes(bundle, config, dataset, METHODS, batch_size=3, device="cpu")
    result = run_evaluation(outcomes, METHODS, out, len(dataset), progress=False, examples=4)
    write_outputs(result, dataset, out, "test", {"command": "pytest"})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and metrics["command"] == "pytest"
    for method in METHODS:
        m = metrics["methods"][method]
        assert m["num_images"] == 4 and 0.0 <= m["gt"]["50"] <= 100.0
        assert m["top1_cls"] in (0.0, 25.0, 50.0, 75.0, 100.0)
        assert m["sweep"] == (method != "lcar") and m["ms_per_image"] > 0
    maps = np.load(out / "maps.npz")
    assert list(maps["ids"]) == [f"val/{i}.png" for i in range(4)]
    assert maps["maps_arm"].shape == (4, 224, 224) and maps["maps_arm"].dtype == np.float16
    assert set(np.unique(maps["maps_lcar"])) <= {0.0, 1.0}
    report = (out / "report.md").read_text()
    assert all(f"| {m} |" in report for m in METHODS)
    assert (out / "threshold_curves.png").stat().st_size > 0
    assert (out / "examples.png").stat().st_size > 0


def test_blend_maps_averages_the_min_max_scaled_maps() -> None:
    from lcar_deploy.pipeline import blend_maps

    coarse = np.array([[[0.0, 2.0], [2.0, 4.0]]], np.float32)  # constant rows of 2x2 -> 4x4
    cam = np.zeros((1, 4, 4), np.float32)
    cam[0, 0, 0] = 3.0
    got = blend_maps(coarse, cam)
    assert got.shape == (1, 4, 4) and got.dtype == np.float32
    assert got[0, 0, 0] == pytest.approx(0.5 * (0.0 + 1.0))
    assert got[0, 3, 3] == pytest.approx(0.5 * (1.0 + 0.0))
    flat = blend_maps(np.ones((1, 2, 2), np.float32), cam)  # a constant map scales to 0
    assert flat[0, 0, 0] == pytest.approx(0.5) and flat[0, 3, 3] == 0.0


def test_coarse_map_reads_each_images_own_class_map() -> None:
    from lcar_deploy.pipeline import blend_maps, coarse_map

    rng = np.random.default_rng(0)
    out = {
        "foreground": rng.random((2, 3, 3), dtype=np.float32),
        "foreground_classes": rng.random((2, 4, 3, 3), dtype=np.float32),
    }
    cam = rng.random((2, 6, 6), dtype=np.float32)
    e_low = rng.random((2, 3, 3), dtype=np.float32)
    own = out["foreground_classes"][[0, 1], [3, 1]]
    np.testing.assert_array_equal(coarse_map("class_foreground", out, [3, 1], cam, e_low), own)
    np.testing.assert_array_equal(
        coarse_map("class_foreground_cam", out, [3, 1], cam, e_low), blend_maps(own, cam)
    )
    np.testing.assert_array_equal(
        coarse_map("foreground_cam", out, [3, 1], cam, e_low), blend_maps(out["foreground"], cam)
    )
    assert coarse_map("foreground", out, [3, 1], cam, e_low) is out["foreground"]
    assert coarse_map("cam", out, [3, 1], cam, e_low) is cam
    assert coarse_map("graphcut", out, [3, 1], cam, e_low) is e_low


def test_objects_one_all_and_no_object() -> None:
    from lcar_deploy.config import PipelineConfig
    from lcar_deploy.pipeline import objects

    score_map = np.full((60, 60), 0.05, np.float32)
    score_map[5:25, 5:30] = 1.0  # the main object
    score_map[35:55, 35:50] = 0.9  # a second object
    score_map[2, 55] = 1.0  # a speck
    mask = score_map > 0.5
    main = (5, 5, 29, 24)
    one = objects(score_map, mask, main, PipelineConfig(boxes="one"))
    every = objects(score_map, mask, main, PipelineConfig(boxes="all"))
    assert [b for b, _ in one] == [main]
    assert [b for b, _ in every] == [main, (35, 35, 49, 54)]  # the speck is no object
    assert every[0][1] == one[0][1] > every[1][1] >= 0.1
    assert objects(score_map, mask, main, PipelineConfig(min_box_score=0.9)) == []
    assert objects(score_map, mask, None, PipelineConfig()) == []


def test_fusion_blends_the_cut_into_arms_map(small_bundle: Path, small_photo: np.ndarray) -> None:
    """With a fusion weight, ``arm`` is :func:`fuse` of the unfused ARM map and the graph cut's
    map (unoriented: TokenCut's rule), and its timings include the graph cut."""
    from lcar_deploy.stages.fusion import FusionConfig, fuse

    cut = {"graph_cut": {"orient": "tokencut"}}
    plain = Localizer.from_bundle(small_bundle, settings=cut, threads=1)
    fused = Localizer.from_bundle(
        small_bundle, settings={**cut, "fusion": {"weight": 0.5, "min_agreement": 0.0}}, threads=1
    )
    assert fused.fuses and not plain.fuses
    ref = plain.run_methods([small_photo], methods=("graphcut", "arm"))
    got = fused.run_methods([small_photo], methods=("arm",))["arm"][0]
    expected = fuse(
        ref["arm"][0].map[None],
        ref["graphcut"][0].map[None],
        FusionConfig(weight=0.5, min_agreement=0.0),
        fused.config.box_threshold,
    )[0]
    np.testing.assert_allclose(got.map, expected, atol=1e-6)
    assert not np.allclose(got.map, ref["arm"][0].map)
    assert "graph_cut" in got.timings_ms and "graph_cut" not in ref["arm"][0].timings_ms
