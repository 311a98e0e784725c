"""Benchmark of SGRM (lcar_deploy/stages/sgrm.py): reference loop vs the batched fast path.

On ~10 real CUB images at 224 x 224, with a stand-in for the refined map (the other stages are
not needed): ``box`` = the GT box, blurred (sigma 10 px); ``grabcut`` = a GrabCut mask from the
GT box, area-downsampled to 14 x 14, bicubic-upsampled and blurred (sigma 4 px), which looks
like an upsampled patch-grid map. Prints, per path, ms/image split into superpixels
(Felzenszwalb, CPU, the same for every path) and optimisation, the mean number of SGD steps to
the stop rule, and the mask IoU of each batched run against the reference.

    python benchmarks/sgrm.py --images 10 --threads 1
    python benchmarks/sgrm.py --images 10 --paper  # the paper's settings, not the defaults
    python benchmarks/sgrm.py --device cuda --batches 1 8 32

Times are wall-clock, best of ``--repeats``; the process CPU time is printed beside them since
a shared machine's wall time includes waiting for a core.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch

from lcar_deploy.stages.sgrm import (
    PAPER_CUB,
    SgrmConfig,
    SgrmResult,
    sgrm_batched,
    sgrm_reference,
    superpixels,
)

T = TypeVar("T")
SIZE = 224


def load_cub(root: Path, n_images: int, map_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``n_images`` CUB test images (spread over the classes) and stand-in refined maps.

    Returns:
        ``(images (B, 224, 224, 3) float32 in [0, 1], maps (B, 224, 224) float32 in [0, 1])``.
    """
    cub = root / "CUB_200_2011"
    names = dict(line.split() for line in (cub / "images.txt").read_text().splitlines())
    split = dict(line.split() for line in (cub / "train_test_split.txt").read_text().splitlines())
    boxes = {
        line.split()[0]: [float(v) for v in line.split()[1:]]
        for line in (cub / "bounding_boxes.txt").read_text().splitlines()
    }
    test_ids = [i for i in sorted(names, key=int) if split[i] == "0"]
    chosen = test_ids[:: max(1, len(test_ids) // n_images)][:n_images]
    images, maps = [], []
    for image_id in chosen:
        bgr = cv2.imread(str(cub / "images" / names[image_id]))
        height, width = bgr.shape[:2]
        x, y, w, h = boxes[image_id]
        bgr = cv2.resize(bgr, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        x0, y0 = int(x * SIZE / width), int(y * SIZE / height)
        x1, y1 = (
            min(int((x + w) * SIZE / width), SIZE - 1),
            min(int((y + h) * SIZE / height), SIZE - 1),
        )
        if map_kind == "box":
            fg = np.zeros((SIZE, SIZE), dtype=np.float32)
            fg[y0 : y1 + 1, x0 : x1 + 1] = 1.0
            coarse = cv2.GaussianBlur(fg, (0, 0), 10)
        else:
            gc_mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
            bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
            rect = (x0, y0, x1 - x0, y1 - y0)
            cv2.grabCut(bgr, gc_mask, rect, bgd, fgd, 5, cv2.GC_INIT_WITH_RECT)
            fg = ((gc_mask == cv2.GC_FGD) | (gc_mask == cv2.GC_PR_FGD)).astype(np.float32)
            small = cv2.resize(fg, (14, 14), interpolation=cv2.INTER_AREA)
            coarse = cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
            coarse = cv2.GaussianBlur(coarse, (0, 0), 4)
        coarse = (coarse - coarse.min()) / max(float(coarse.max() - coarse.min()), 1e-8)
        images.append(bgr[..., ::-1].astype(np.float32) / 255)
        maps.append(coarse.astype(np.float32))
    return np.stack(images), np.stack(maps)


def timed(fn: Callable[[], T], repeats: int, device: torch.device) -> tuple[T, float, float]:
    """Run ``fn`` ``repeats`` times; its last result, the best wall and CPU seconds."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return out, best_wall, best_cpu


def stand_in_affinity(maps: np.ndarray, dim: int = 112, grid: int = 24) -> np.ndarray:
    """Stand-in backbone affinity features for SGRM's semantic channels (``sgrm.features``):
    each map at ``grid`` x ``grid`` along one random direction, plus noise (the embedded
    backbone's ``blocks.4`` is 112-d at 24 x 24). Only its shape matters for the timing."""
    rng = np.random.default_rng(0)
    small = np.stack([cv2.resize(m, (grid, grid), interpolation=cv2.INTER_AREA) for m in maps])
    noise = rng.normal(0, 0.3, (len(maps), grid, grid, dim))
    return (small[..., None] * rng.normal(size=dim) + noise).astype(np.float32)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--map", choices=["box", "grabcut"], default="grabcut")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--paper", action="store_true", help="the paper's settings (PAPER_CUB)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = PAPER_CUB if args.paper else SgrmConfig()
    images, maps = load_cub(args.root, args.images, args.map)
    affinity = stand_in_affinity(maps)
    n = len(images)
    seeds = list(range(n))
    print(
        f"{n} CUB images at {SIZE}x{SIZE}, map={args.map}, threads={args.threads}, "
        f"device={device}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"config: {cfg}")

    segments, sp_wall, sp_cpu = timed(
        lambda: [superpixels(i, cfg) for i in images], args.repeats, torch.device("cpu")
    )
    n_segments = np.mean([s.max() + 1 for s in segments])
    print(
        f"\nsuperpixels: {sp_wall / n * 1e3:.1f} ms/image (cpu {sp_cpu / n * 1e3:.1f}), "
        f"{n_segments:.0f} segments/image on average"
    )

    columns = [("path", 14), ("optim ms/img", 13), ("(cpu)", 8), ("total ms/img", 14)]
    columns += [("steps", 7), ("conv.", 7), ("IoU vs ref", 12)]
    header = "".join(f"{name:>{w}}" if i else f"{name:<{w}}" for i, (name, w) in enumerate(columns))
    print("\n" + header + "\n" + "-" * len(header))

    def row(name: str, results: list[SgrmResult], wall: float, cpu: float, agree: str) -> None:
        steps = np.mean([r.steps for r in results])
        conv = np.mean([r.converged for r in results])
        total = (wall + sp_wall) / n * 1e3
        print(
            f"{name:<14}{wall / n * 1e3:>13.1f}{cpu / n * 1e3:>8.0f}{total:>14.1f}"
            f"{steps:>7.1f}{conv:>7.2f}{agree:>12}"
        )

    reference: list[SgrmResult] | None = None
    if not args.no_reference:

        def run_reference() -> list[SgrmResult]:
            return [
                sgrm_reference(image, refined, cfg, seed=seed, segments=seg, affinity=aff)
                for image, refined, seed, seg, aff in zip(
                    images, maps, seeds, segments, affinity, strict=True
                )
            ]

        reference, wall, cpu = timed(run_reference, args.repeats, torch.device("cpu"))
        row("reference", reference, wall, cpu, "-")
    for batch in args.batches:

        def run_batched(batch: int = batch) -> list[SgrmResult]:
            out: list[SgrmResult] = []
            for k in range(0, n, batch):
                sl = slice(k, k + batch)
                out += sgrm_batched(
                    images[sl],
                    maps[sl],
                    cfg,
                    device=device,
                    seeds=seeds[sl],
                    segments=segments[sl],
                    affinity=affinity[sl],
                )
            return out

        results, wall, cpu = timed(run_batched, args.repeats, device)
        agree = "-"
        if reference is not None:
            ious = [mask_iou(a.mask, b.mask) for a, b in zip(results, reference, strict=True)]
            agree = f"{np.mean(ious):.4f}"
        row(f"batched B={batch}", results, wall, cpu, agree)


if __name__ == "__main__":
    main()
