"""calibrate: the threshold and band chosen are the best on the images given, written into a
copy of the bundle (the bundle itself unchanged); too few images, bad bands, the bundle as its
own output are refused; an --out that is not new, empty or an earlier calibrated copy is
refused before calibrating; the command line; the real CUB train split (slow)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import synthetic_scene
from helpers import FAST, invoke
from PIL import Image

from lcar_deploy.bundle import Bundle
from lcar_deploy.calibration import (
    OUTPUT_KIND,
    CalibrationConfig,
    band_values,
    best_index,
    calibrate,
    calibrated_config,
    check_output,
    run_calibration,
)
from lcar_deploy.config import PipelineConfig
from lcar_deploy.datasets import load_dataset
from lcar_deploy.errors import DatasetError, OutputError, SettingError
from lcar_deploy.io import MARK
from lcar_deploy.pipeline import Localizer
from lcar_deploy.stages.fusion import FusionConfig

BANDS = CalibrationConfig(bands=((0.25, 0.5), (0.5, 0.7)), min_images=3)


def scenes_csv(root: Path, class_name: str, count: int = 4) -> Path:
    """``count`` synthetic ellipse scenes with their GT boxes in a CSV list."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for seed in range(count):
        image, mask = synthetic_scene(size=(96, 128), seed=seed)
        Image.fromarray(image).save(root / f"s{seed}.png")
        ys, xs = np.nonzero(mask)
        lines.append(f's{seed}.png,"{class_name}",{xs.min()},{ys.min()},{xs.max()},{ys.max()}')
    lines.append(f's0.png,"{class_name}",0,0,3,3')  # a second object on one image
    (root / "list.csv").write_text("\n".join(lines[:1] + lines[-1:] + lines[1:-1]) + "\n")
    return root / "list.csv"


def test_choices_are_the_best_on_the_images_and_go_into_a_copy(
    small_bundle: Path, tmp_path: Path
) -> None:
    bundle = Bundle.load(small_bundle)
    data = load_dataset("csv", scenes_csv(tmp_path / "scenes", bundle.class_names[1]))
    localizer = Localizer.from_bundle(small_bundle, device="cpu", threads=2)
    result = calibrate(localizer, data, gt_class=False, config=BANDS, progress=False)
    assert result.images == 4
    for method, curve in result.curves.items():
        best = result.grid[best_index(curve, BANDS.smooth)]
        assert result.thresholds[method] == pytest.approx(best)
    assert result.box_threshold == result.thresholds["arm"]
    own = (localizer.config.sgrm.gamma_l1, localizer.config.sgrm.gamma_h1)
    tried = [(b["low"], b["high"]) for b in result.bands]
    assert tried[0] == own and set(tried) >= {(0.25, 0.5), (0.5, 0.7)}
    best_band = max(result.bands, key=lambda b: b["gt_known"])["gt_known"]
    assert result.band_accuracy(result.band) == best_band
    assert result.before["gt_known"] == result.accuracy_at("arm", localizer.config.box_threshold)

    manifest_before = (small_bundle / "manifest.json").read_bytes()
    again, written = run_calibration(
        data,
        bundle=small_bundle,
        out=tmp_path / "calibrated",
        device="cpu",
        threads=2,
        config=BANDS,
        progress=False,
    )
    assert (small_bundle / "manifest.json").read_bytes() == manifest_before
    copy = Bundle.load(written)
    assert copy.settings["box_threshold"] == again.box_threshold
    assert (copy.settings["sgrm"]["gamma_l1"], copy.settings["sgrm"]["gamma_h2"]) == again.band
    assert copy.manifest["calibration"]["images"] == 4
    report = json.loads((written / "calibration.json").read_text())
    assert report["chosen"]["box_threshold"] == again.box_threshold
    loc = Localizer.from_bundle(written, device="cpu", threads=1)
    assert loc.config.box_threshold == again.box_threshold


def test_a_calibrated_fusion_keeps_the_threshold_its_maps_were_measured_at() -> None:
    chosen = SimpleNamespace(box_threshold=0.42, band=(0.3, 0.6))
    fused = PipelineConfig(box_threshold=0.3, fusion=FusionConfig(weight=0.5))
    calibrated = calibrated_config(fused, chosen)
    assert calibrated.box_threshold == 0.42
    assert calibrated.fusion == FusionConfig(weight=0.5, arm_threshold=0.3)
    pinned = replace(fused, fusion=FusionConfig(weight=0.5, arm_threshold=0.25))
    assert calibrated_config(pinned, chosen).fusion.arm_threshold == 0.25
    unfused = calibrated_config(PipelineConfig(box_threshold=0.3), chosen)
    assert unfused.fusion == FusionConfig()


def test_best_index_prefers_a_plateau_to_a_spike_when_smoothed() -> None:
    curve = [0, 0, 90, 0, 0, 0, 80, 82, 81, 80, 0]
    assert best_index(curve, 0) == 2  # the plain argmax: the spike
    assert best_index(curve, 1) == 7  # the middle of the plateau
    assert best_index([5, 5, 5], 2) == 0  # ties: the lowest


def test_refusals(small_bundle: Path, tmp_path: Path) -> None:
    bundle = Bundle.load(small_bundle)
    data = load_dataset("csv", scenes_csv(tmp_path / "scenes", bundle.class_names[1], count=2))
    localizer = Localizer.from_bundle(small_bundle, device="cpu", threads=2)
    with pytest.raises(DatasetError, match="2 images with a box could be used, calibrate needs"):
        calibrate(localizer, data, gt_class=False, config=BANDS, progress=False)
    with pytest.raises(SettingError, match="calibrate chooses a map method's threshold"):
        calibrate(localizer, data, method="lcar", config=BANDS, progress=False)
    with pytest.raises(SettingError, match=r"\(0.5, 0.4\) is not \(low, high\)"):
        CalibrationConfig(bands=((0.5, 0.4),))
    with pytest.raises(SettingError, match="setting smooth: must be >= 0"):
        CalibrationConfig(smooth=-1)
    with pytest.raises(SettingError, match=r"'0.5-0.6' is not LOW/HIGH"):
        band_values(["0.5-0.6"])
    few = CalibrationConfig(bands=((0.25, 0.5),), min_images=1)
    with pytest.raises(SettingError, match="is the bundle itself"):
        run_calibration(data, bundle=small_bundle, out=small_bundle, config=few, progress=False)


def test_cli(small_bundle: Path, tmp_path: Path) -> None:
    bundle = Bundle.load(small_bundle)
    listed = scenes_csv(tmp_path / "scenes", bundle.class_names[1])
    args = ["calibrate", "--dataset", "csv", "--root", listed, "--bundle", small_bundle]
    code, stdout, stderr = invoke(
        *args, "--out", tmp_path / "cal", "--bands", "0.25/0.5", "--min-images", "3", *FAST
    )
    assert code == 0, stderr
    assert stdout.strip() == str(tmp_path / "cal") and "box_threshold (arm)" in stderr
    code, _, stderr = invoke(*args, "--out", tmp_path / "x", "--bands", "0.9/0.1", *FAST)
    assert code == 1 and "setting bands: (0.9, 0.1) is not (low, high)" in stderr


@pytest.mark.slow
def test_real_cub_train_boxes(shared_data: Path, tmp_path: Path) -> None:
    """20 CUB train images with boxes, the embedded classifier's bundle: ARM's calibrated
    threshold is at least as good there as the bundle's 0.5."""
    data = load_dataset("cub", shared_data / "CUB_200_2011", "train", limit=20)
    localizer = Localizer.from_bundle(device="cpu", threads=2)
    config = CalibrationConfig(bands=((0.25, 0.5),), min_images=10)
    result = calibrate(localizer, data, gt_class=False, config=config, progress=False)
    assert result.images == 20
    assert result.accuracy_at("arm", result.box_threshold) >= result.before["gt_known"]


def test_out_is_new_empty_or_an_earlier_calibrated_copy(small_bundle: Path, tmp_path: Path) -> None:
    """Checked before calibrating: a folder of the user's, an exported bundle, /proc/self are
    refused with nothing changed; an earlier calibrated copy (only its files) is ours."""
    bundle = Bundle.load(small_bundle)
    listed = scenes_csv(tmp_path / "scenes", bundle.class_names[1], count=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    exported = tmp_path / "exported"
    shutil.copytree(small_bundle, exported)
    before = {p: p.read_bytes() for p in [*mine.iterdir(), *exported.iterdir()]}
    args = ["calibrate", "--dataset", "csv", "--root", listed, "--bundle", small_bundle, *FAST]
    for out, says in [
        (mine, "mine: exists and is not an empty folder nor a calibrate output"),
        (exported, "exported: exists and is not an empty folder nor a calibrate output"),
        (Path("/proc/self"), "/proc/self: is a link (a folder replaced whole is never a link)"),
        (listed, "list.csv: exists and is not a folder"),
    ]:
        code, _, stderr = invoke(*args, "--out", out)
        assert code == 1 and says in stderr and len(stderr) < 300, stderr
    assert {p: p.read_bytes() for p in before} == before
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / MARK).write_text(json.dumps({"kind": OUTPUT_KIND, "files": ["manifest.json"]}))
    (copy / "manifest.json").write_text("{}")
    check_output(copy, bundle)
    (copy / "extra.onnx").write_text("not written by calibrate")
    with pytest.raises(OutputError, match=r"holds extra\.onnx, which lcar-deploy did not write"):
        check_output(copy, bundle)
