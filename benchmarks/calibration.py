"""Calibrated values against the test-set optimum (docs/experiments/2026-12-own-datasets.md, "Calibration").

``calibrate`` chooses ARM's box threshold and SGRM's label band on held-out images with boxes;
the same function run on the test images gives the test-set optimum and the test accuracy at
every threshold and band, so the calibrated values are scored on the test set from that run.

- CUB: calibrated on 100 train images (spread over the split), tested on the 702 test images.
- ILSVRC-mini: its train images have no boxes, so 100 of the 250 test images (spread) are
  the calibration images and the other 150 the test set (disjoint).

    python benchmarks/calibration.py --data ../shared/data --cub-bundle /path/to/cub-bundle \
        --work /tmp/calibration --threads 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

METADATA_FILES = ("image_ids.txt", "class_labels.txt", "localization.txt", "image_sizes.txt")


def split_wsol(root: Path, meta: Path, calibration: int) -> None:
    """``meta/calib`` (``calibration`` test images, spread) and ``meta/held`` (the others)."""
    source = root / "metadata" / "test"
    ids = (source / "image_ids.txt").read_text().split()
    picked = {ids[int(i)] for i in np.linspace(0, len(ids) - 1, calibration).round()}
    for name, keep in (("calib", picked), ("held", set(ids) - picked)):
        (meta / name).mkdir(parents=True, exist_ok=True)
        for file in METADATA_FILES:
            lines = (source / file).read_text().splitlines()
            kept = [line for line in lines if line.split(",")[0] in keep]
            (meta / name / file).write_text("\n".join(kept) + "\n")


def compare(name: str, calib, test) -> dict:
    """The calibrated values scored on the test run, next to the test optimum."""
    chosen_t = calib.box_threshold
    best_t = test.grid[int(np.argmax(test.curves["arm"]))]  # the plain optimum
    return {
        "set": name,
        "calibration_images": calib.images,
        "test_images": test.images,
        "arm_threshold": {"calibrated": chosen_t, "test_optimum": best_t},
        "arm_gt_known": {
            "at_calibrated": round(test.accuracy_at("arm", chosen_t), 1),
            "at_test_optimum": round(test.accuracy_at("arm", best_t), 1),
            "at_bundle": round(test.accuracy_at("arm", test.before["box_threshold"]), 1),
            "bundle_threshold": test.before["box_threshold"],
        },
        "band": {"calibrated": list(calib.band), "test_optimum": list(test.band)},
        "lcar_gt_known": {
            "at_calibrated": round(test.band_accuracy(calib.band), 1),
            "at_test_optimum": round(test.band_accuracy(test.band), 1),
            "at_bundle": round(test.before["lcar_gt_known"], 1),
            "bundle_band": test.before["band"],
        },
        "other_map_methods": {
            m: {
                "calibrated": calib.thresholds[m],
                "at_calibrated": round(test.accuracy_at(m, calib.thresholds[m]), 1),
                "test_optimum": test.grid[int(np.argmax(test.curves[m]))],
                "at_test_optimum": round(max(test.curves[m]), 1),
            }
            for m in test.thresholds
            if m != "arm"
        },
        "seconds": {"calibration": calib.seconds, "test": test.seconds},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder")
    parser.add_argument("--cub-bundle", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/calibration"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("cub", "ilsvrc"), default=None)
    args = parser.parse_args()

    from lcar_deploy.calibration import calibrate
    from lcar_deploy.datasets import load_dataset
    from lcar_deploy.evaluation import uses_gt_class
    from lcar_deploy.pipeline import Localizer

    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    curves = {}
    if args.only in (None, "cub"):
        localizer = Localizer.from_bundle(args.cub_bundle, device="cpu", threads=args.threads)
        cub = args.data / "CUB_200_2011"
        train = load_dataset("cub", cub, "train", limit=100)
        test = load_dataset("cub", cub, "test")
        gt = uses_gt_class(localizer.bundle, test)
        calib = calibrate(localizer, train, gt_class=gt, progress=False)
        print("cub calibrated", calib.box_threshold, calib.band, flush=True)
        tested = calibrate(localizer, test, gt_class=gt, progress=False)
        results.append(compare("CUB (100 train -> 702 test)", calib, tested))
        curves["cub"] = {"calibration": calib.to_dict(), "test": tested.to_dict()}
        print(json.dumps(results[-1], indent=2), flush=True)
    if args.only in (None, "ilsvrc"):
        localizer = Localizer.from_bundle(device="cpu", threads=args.threads)
        root = args.data / "ILSVRC-mini"
        meta = args.work / "ilsvrc-metadata"
        split_wsol(root, meta, 100)
        calib_set = load_dataset("ilsvrc", root, "calib", metadata=meta)
        held = load_dataset("ilsvrc", root, "held", metadata=meta)
        gt = uses_gt_class(localizer.bundle, held)
        calib = calibrate(localizer, calib_set, gt_class=gt, progress=False)
        print("ilsvrc calibrated", calib.box_threshold, calib.band, flush=True)
        tested = calibrate(localizer, held, gt_class=gt, progress=False)
        results.append(compare("ILSVRC-mini (100 test -> the other 150)", calib, tested))
        curves["ilsvrc"] = {"calibration": calib.to_dict(), "test": tested.to_dict()}
        print(json.dumps(results[-1], indent=2), flush=True)
    (args.work / "calibration.json").write_text(json.dumps(results, indent=2))
    (args.work / "curves.json").write_text(json.dumps(curves))


if __name__ == "__main__":
    main()
