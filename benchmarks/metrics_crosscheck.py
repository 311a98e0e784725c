"""Cross-check lcar_deploy.metrics against wsolevaluation's own BoxEvaluator, and time the sweep.

Usage::

    git clone https://github.com/clovaai/wsolevaluation /tmp/wsolevaluation
    python benchmarks/metrics_crosscheck.py --wsolevaluation /tmp/wsolevaluation [--num-maps 60]

Nothing of wsolevaluation is copied here: the script imports its ``evaluation`` module from the
given checkout. Two shims make that code run today: ``np.float`` (removed in NumPy 1.24) is
aliased to ``np.float64``, and when the ``munch`` package is missing a minimal stand-in (a dict
with attribute access, all ``configure_metadata`` needs) is registered.

Synthetic data: random score maps (Gaussian blobs, rings with holes, blobs cut by the border,
cubic-upsampled 7x7 noise, noisy blobs, constant and all-zero maps) with 1-3 integer GT boxes in a
random original image size, the first one often fitted to the map so that high IoUs occur. Both
evaluators see the same float64 maps and the same integer GT boxes (wsolevaluation's metadata
format); wsolevaluation resizes them with its ``resize_bbox``, we with
:func:`lcar_deploy.metrics.scale_boxes`. The comparison is exact: the number of correct images at
every (threshold, IoU threshold) pair, for V1 (largest contour) and V2 (all contours).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np

from lcar_deploy.metrics import BoxAccuracyAccumulator, cam_threshold_grid, scale_boxes

SIZE = 224
IOU_THRESHOLDS = [30, 50, 70, 80, 90]


def random_map(rng: np.random.Generator, kind: int) -> np.ndarray:
    """A float64 ``(224, 224)`` map in ``[0, 1]`` of one of seven kinds (``kind % 7``).

    0 smooth Gaussian blobs, 1 rings (holes), 2 blobs cut by the border, 3 cubic-upsampled 7x7
    noise (a CAM's look), 4 blobs with pixel noise (hundreds of contours), 5 constant, 6 zero.
    """
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    kind %= 7
    if kind == 5:
        return np.full((SIZE, SIZE), rng.uniform(0.0, 1.0))
    if kind == 6:
        return np.zeros((SIZE, SIZE))
    if kind == 3:
        scoremap = cv2.resize(rng.random((7, 7)), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    else:
        scoremap = np.zeros((SIZE, SIZE))
        for _ in range(int(rng.integers(1, 4))):
            low, high = (-40, SIZE + 40) if kind == 2 else (0, SIZE)
            cy, cx = rng.uniform(low, high, size=2)
            sigma = rng.uniform(8, 50)
            dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
            if kind == 1:
                dist2 = (np.sqrt(dist2) - rng.uniform(15, 60)) ** 2
            scoremap += rng.uniform(0.3, 1.0) * np.exp(-dist2 / (2 * sigma**2))
        if kind == 4:
            scoremap += 0.05 * rng.random((SIZE, SIZE))
    scoremap -= scoremap.min()
    peak = scoremap.max()
    return scoremap / peak if peak > 0 else scoremap


def random_gt(rng: np.random.Generator, scoremap: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
    """Original ``(width, height)`` and 1-3 integer ``x0y0x1y1`` boxes inside it.

    The first box is, for two images in three, the extent of ``scoremap > q`` (random ``q``)
    brought to the original size and jittered by a few pixels, so high IoUs occur; the others are
    uniform random.
    """
    width, height = (int(v) for v in rng.integers(120, 640, size=2))
    boxes = []
    ys, xs = np.nonzero(scoremap > rng.uniform(0.2, 0.8))
    if len(xs) and rng.random() < 2 / 3:
        extent = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
        extent *= np.array([width, height, width, height]) / SIZE
        extent += rng.integers(-3, 4, size=4)
        x0, x1 = np.clip(np.sort(extent[[0, 2]]), 0, width - 1).astype(int)
        y0, y1 = np.clip(np.sort(extent[[1, 3]]), 0, height - 1).astype(int)
        boxes.append([int(x0), int(y0), int(x1), int(y1)])
    while len(boxes) < int(rng.integers(1, 4)) or not boxes:
        x0, x1 = np.sort(rng.integers(0, width, size=2))
        y0, y1 = np.sort(rng.integers(0, height, size=2))
        boxes.append([int(x0), int(y0), int(x1), int(y1)])
    return (width, height), np.array(boxes, dtype=np.int64)


def import_wsolevaluation(checkout: Path) -> types.ModuleType:
    """Import ``evaluation`` from a wsolevaluation checkout, with the two shims described above."""
    if not hasattr(np, "float"):
        np.float = np.float64  # type: ignore[attr-defined]
    try:
        importlib.import_module("munch")
    except ImportError:
        stand_in = types.ModuleType("munch")

        class Munch(dict):
            __getattr__ = dict.__getitem__
            __setattr__ = dict.__setitem__

        stand_in.Munch = Munch  # type: ignore[attr-defined]
        sys.modules["munch"] = stand_in
    sys.path.insert(0, str(checkout))
    return importlib.import_module("evaluation")


def write_metadata(folder: Path, sizes: list[tuple[int, int]], gts: list[np.ndarray]) -> None:
    """wsolevaluation metadata: image_ids.txt, image_sizes.txt, localization.txt."""
    ids = [f"img{i:04d}.jpg" for i in range(len(sizes))]
    (folder / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (folder / "image_sizes.txt").write_text(
        "".join(f"{i},{w},{h}\n" for i, (w, h) in zip(ids, sizes, strict=True))
    )
    lines = [
        f"{i},{x0},{y0},{x1},{y1}\n"
        for i, gt in zip(ids, gts, strict=True)
        for x0, y0, x1, y1 in gt.tolist()
    ]
    (folder / "localization.txt").write_text("".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wsolevaluation", type=Path, required=True, help="checkout path")
    parser.add_argument("--num-maps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    evaluation = import_wsolevaluation(args.wsolevaluation)
    rng = np.random.default_rng(args.seed)
    maps = [random_map(rng, k) for k in range(args.num_maps)]
    sizes, gts = zip(*(random_gt(rng, m) for m in maps), strict=True)
    thresholds = cam_threshold_grid(0.01)

    ours = BoxAccuracyAccumulator(cam_thresholds=thresholds, iou_thresholds=IOU_THRESHOLDS)
    ms_per_kind: dict[int, list[float]] = {}
    for index, (scoremap, size, gt) in enumerate(zip(maps, sizes, gts, strict=True)):
        start = time.perf_counter()
        ours.add_scoremap(scoremap, scale_boxes(gt, size, (SIZE, SIZE)))
        ms_per_kind.setdefault(index % 7, []).append((time.perf_counter() - start) * 1e3)

    all_equal = True
    with tempfile.TemporaryDirectory() as tmp:
        write_metadata(Path(tmp), list(sizes), list(gts))
        metadata = evaluation.configure_metadata(tmp)
        for version, multi_contour in ((1, False), (2, True)):
            theirs = evaluation.BoxEvaluator(
                metadata=metadata,
                dataset_name="CUB",
                split="test",
                cam_threshold_list=list(thresholds),
                iou_threshold_list=IOU_THRESHOLDS,
                mask_root=tmp,
                multi_contour_eval=multi_contour,
            )
            start = time.perf_counter()
            for scoremap, image_id in zip(maps, theirs.image_ids, strict=True):
                theirs.accumulate(scoremap, image_id)
            theirs_ms = (time.perf_counter() - start) / len(maps) * 1e3
            their_max = theirs.compute()
            for delta, their_acc in zip(IOU_THRESHOLDS, their_max, strict=True):
                our_counts = (ours.ious(version) >= delta / 100).sum(axis=0)
                same_curve = np.array_equal(our_counts, theirs.num_correct[delta])
                our_acc = ours.max_box_acc(delta, version)
                all_equal &= same_curve and bool(np.isclose(our_acc, their_acc, rtol=0, atol=1e-9))
                print(
                    f"V{version} IoU>={delta}%: ours {our_acc:6.2f}  wsolevaluation "
                    f"{their_acc:6.2f}  per-threshold counts identical: {same_curve}"
                )
            print(f"V{version}: wsolevaluation {theirs_ms:.2f} ms/image")
    print(f"ours, V1 and V2 together, {len(thresholds)} thresholds, ms/image by map kind:")
    for kind, times in sorted(ms_per_kind.items()):
        print(f"  kind {kind}: median {np.median(times):.2f}, mean {np.mean(times):.2f}")
    print("AGREE" if all_equal else "DISAGREE")
    return 0 if all_equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
