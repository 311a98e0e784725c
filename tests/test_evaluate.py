"""eval's scoring path: maps scored as computed, images without a GT box counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lcar_deploy.config import PipelineConfig
from lcar_deploy.datasets import Record
from lcar_deploy.evaluate import ImageOutcome, evaluate_batch, report_markdown, run_evaluation
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
