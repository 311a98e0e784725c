"""Per-stage speed of every method, SGRM's reference loop vs its fast path, and localize's
throughput with and without the pipelined engine, in one run; with ``--compare``, ms/image of every
method for each of several bundles (e.g. one per backbone) on the same images, side by side.

    python benchmarks/pipeline.py [--bundle DIR] [--images 50] [--threads 2] [--batch-size 8]
                                  [--compare DIR [DIR ...]]

Runs on the first N CUB test images of ../shared/data (or $LCAR_SHARED_DATA), all methods
sharing one pass (the stages they have in common run once, as in `lcar-deploy eval`), and
prints ms/image of each stage, of each method, and ``lcar`` over the backbone with the
test-time flip (the ``backbone`` stage). Then times SGRM alone on the same refined maps
(reference loop, one image at a time, vs batched; masks compared), the backbone + CAM stages
with and without the flip (PipelineConfig.flip), and `localize`'s steady-state throughput
(method lcar, from the second batch's result on) with the plain loop and pipelined
(lcar_deploy.engines: decoding and the backbone of the next batch on a second thread).
``--compare`` instead times each named bundle with its own settings and prints each method's
ms/image and its ratio to the first bundle's.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lcar_deploy.bundle import load_bundle
from lcar_deploy.config import PipelineConfig
from lcar_deploy.datasets import load_dataset
from lcar_deploy.image_io import load_rgb, resize_rgb
from lcar_deploy.localize import LocalizeOptions, localize_results
from lcar_deploy.names import METHODS, STAGES, method_stages
from lcar_deploy.pipeline import Localizer, LocalizerSpec
from lcar_deploy.stages.sgrm import sgrm_batched, sgrm_reference


def shared_data() -> Path:
    env = os.environ.get("LCAR_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def stage_times(
    localizer: Localizer,
    images: list[np.ndarray],
    batch_size: int,
    methods: tuple[str, ...] = METHODS,
) -> tuple[dict[str, float], float, list[np.ndarray], list[int]]:
    """Every method of ``methods`` on ``images`` in one pass: summed ms per stage, wall seconds,
    ARM's maps and SGRM's steps."""
    stage_ms = dict.fromkeys(STAGES, 0.0)
    refined, steps = [], []
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        results = localizer.run_methods(batch, methods=methods)
        for j in range(len(batch)):  # each stage once, from a method that runs it
            timed = {s: ms for m in methods for s, ms in results[m][j].timings_ms.items()}
            for stage, ms in timed.items():
                stage_ms[stage] += ms
            steps.append(results["lcar"][j].sgrm_steps)
        refined.extend(loc.map for loc in results["arm"])
    return stage_ms, time.perf_counter() - start, refined, steps


def compare_bundles(
    paths: list[Path], images: list[np.ndarray], threads: int, batch_size: int
) -> None:
    """ms/image of every method for each bundle (its own settings), same images, one run; a
    bundle without heads has no ``cam``."""
    rows = []
    for path in paths:
        bundle = load_bundle(path, print)
        localizer = Localizer(
            bundle, PipelineConfig.from_settings(bundle.settings), device="cpu", threads=threads
        )
        methods = tuple(m for m in METHODS if m != "cam" or bundle.has_heads)
        localizer.run_methods(images[:batch_size], methods=methods)  # warm-up
        stage_ms = stage_times(localizer, images, batch_size, methods)[0]
        per_method = {
            m: sum(stage_ms[s] for s in method_stages(m, localizer.arm_uses_cut)) / len(images)
            for m in methods
        }
        quantized = " int8" if bundle.manifest.get("quantization") else ""
        other = bundle.manifest.get("affinity_backbone")
        cut = f" + {other['name']} S={other['input_size']}" if other else ""
        rows.append((f"{bundle.backbone} S={bundle.input_size}{cut}{quantized}", per_method))
    print(f"\nms/image per method and bundle ({len(images)} images, {threads} threads)")
    width = max(36, *(len(name) + 2 for name, _ in rows))
    print(f"{'bundle':<{width}}" + "".join(f"{m:>10}" for m in METHODS) + f"{'arm/first':>11}")
    for name, per_method in rows:
        ratio = per_method["arm"] / rows[0][1]["arm"]
        cells = "".join(
            f"{per_method[m]:>10.0f}" if m in per_method else f"{'-':>10}" for m in METHODS
        )
        print(f"{name:<{width}}{cells}{ratio:>11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="default: the default bundle")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--compare", type=Path, nargs="+", help="bundles to time side by side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compare:
        data = load_dataset("cub", shared_data() / "CUB_200_2011", "test", limit=args.images)
        compare_bundles(
            args.compare, [load_rgb(r.path) for r in data], args.threads, args.batch_size
        )
        return
    bundle = load_bundle(args.bundle, print)
    config = PipelineConfig.from_settings(bundle.settings)
    localizer = Localizer(bundle, config, device="cpu", threads=args.threads)
    data = load_dataset("cub", shared_data() / "CUB_200_2011", "test", limit=args.images)
    images = [load_rgb(r.path) for r in data]
    print(
        f"{len(images)} CUB test images, bundle {bundle.path} ({bundle.backbone}, "
        f"S={bundle.input_size}), {args.threads} threads, providers {localizer.providers}"
    )

    stage_ms, wall, refined, steps = stage_times(localizer, images, args.batch_size)
    affinity = []
    for i in range(0, len(images), args.batch_size):  # SGRM's semantic input, for the check below
        affinity.extend(localizer.backbone_outputs(images[i : i + args.batch_size])["affinity"])
    n = len(images)
    print(f"\nms/image per stage (all methods in one pass: {1000 * wall / n:.0f} ms/image wall)")
    print(" ".join(f"{s:>10}" for s in STAGES))
    print(" ".join(f"{stage_ms[s] / n:>10.1f}" for s in STAGES))
    print(f"\nms/image per method (sum of the stages it runs; ARM's input: {localizer.arm_input})")
    for method in METHODS:
        stages = method_stages(method, localizer.arm_uses_cut)
        print(f"{method:>10} {sum(stage_ms[s] for s in stages) / n:>8.1f}   {' + '.join(stages)}")
    print(f"SGRM mean steps to stop: {np.mean(steps):.1f}")
    lcar_ms = sum(stage_ms[s] for s in method_stages("lcar", localizer.arm_uses_cut)) / n
    backbone_ms = stage_ms["backbone"] / n
    print(
        f"lcar / backbone with flip: {lcar_ms:.1f} / {backbone_ms:.1f} = "
        f"{lcar_ms / backbone_ms:.2f}"
    )

    cam_ms = {}
    for flip in (False, True):
        cam_only = Localizer(
            bundle, replace(config, method="cam", flip=flip), device="cpu", threads=args.threads
        )
        cam_only.run(images[: args.batch_size])
        start = time.perf_counter()
        for i in range(0, n, args.batch_size):
            cam_only.run(images[i : i + args.batch_size])
        cam_ms[flip] = 1000 * (time.perf_counter() - start) / n
    print(
        f"\nbackbone + CAM: no flip {cam_ms[False]:.0f} ms/image, flip {cam_ms[True]:.0f} "
        f"ms/image ({cam_ms[True] / cam_ms[False]:.2f}x)"
    )

    work = config.work_size
    rgb = np.stack([resize_rgb(im, work) for im in images]).astype(np.float32) / 255.0
    maps = np.stack(refined).astype(np.float32)
    start = time.perf_counter()
    ref = [
        sgrm_reference(rgb[i], maps[i], config.sgrm, seed=config.sgrm_seed, affinity=affinity[i])
        for i in range(n)
    ]
    t_ref = (time.perf_counter() - start) / n
    start = time.perf_counter()
    fast = []
    for i in range(0, n, args.batch_size):
        fast += sgrm_batched(
            rgb[i : i + args.batch_size],
            maps[i : i + args.batch_size],
            config.sgrm,
            seeds=[config.sgrm_seed] * len(maps[i : i + args.batch_size]),
            affinity=affinity[i : i + args.batch_size],
        )
    t_fast = (time.perf_counter() - start) / n
    ious = [
        (a.mask & b.mask).sum() / max((a.mask | b.mask).sum(), 1)
        for a, b in zip(ref, fast, strict=True)
    ]
    same = sum(np.array_equal(a.mask, b.mask) for a, b in zip(ref, fast, strict=True))
    print(
        f"\nSGRM reference {1000 * t_ref:.0f} ms/image, fast path {1000 * t_fast:.0f} ms/image, "
        f"speed-up {t_ref / t_fast:.1f}x, mask IoU fast vs reference {np.mean(ious):.3f} "
        f"({same} of {n} masks equal)"
    )

    spec = LocalizerSpec(bundle, replace(config, method="lcar"), "cpu")
    todo = [(r.path, r.path.name, None) for r in data]
    options = LocalizeOptions(batch_size=args.batch_size)
    print(f"\nlocalize, method lcar, {n} images, {args.threads} threads (steady state)")
    print(f"{'engine local':<22}{'img/s':>8}{'ms/image':>10}   busy")
    for overlap in (False, True):
        results = localize_results(spec, todo, options, threads=args.threads, overlap=overlap)
        start = time.perf_counter()
        first = start
        for count, _ in enumerate(results, 1):
            if count == args.batch_size:
                first = time.perf_counter()
        end = time.perf_counter()
        rate = (n - args.batch_size) / (end - first)
        busy = ", ".join(f"{k} {100 * v / (end - start):.0f}%" for k, v in results.busy.items())
        name = "pipelined" if overlap else "plain loop"
        print(f"{name:<22}{rate:>8.2f}{1000 / rate:>10.1f}   {busy or '-'}")


if __name__ == "__main__":
    main()
