"""SGRM's fast path against another version of it, on cached real inputs: speed side by side
and whether the masks are the same.

    git show main:lcar_deploy/stages/sgrm.py > /tmp/sgrm_old.py
    python benchmarks/sgrm_versions.py --old /tmp/sgrm_old.py --cache DIR [--images 160]

``DIR`` holds what the pipeline hands SGRM for N images: ``rgb.npy`` (N, 224, 224, 3) uint8 at
work size, ``arm.npy`` (N, 224, 224) float32 refined maps, ``aff.npy`` (N, h, w, D) affinity
features (any float dtype). The two versions run alternately on the same batches of 8, as
``Localizer.run_methods`` calls ``sgrm_batched`` (``SgrmConfig()``, seed 0); prints ms/image
(wall and process CPU) of each and how many masks, step counts and boxes are equal.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from lcar_deploy.stages import sgrm as current


def load_version(path: Path) -> ModuleType:
    """``path`` (a copy of lcar_deploy/stages/sgrm.py) as a module of this package."""
    spec = importlib.util.spec_from_file_location("lcar_deploy.stages._sgrm_other", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the other sgrm.py")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--images", type=int, default=160, help="spread over the cache")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    versions = {"old": load_version(args.old), "new": current}
    rgb = np.load(args.cache / "rgb.npy", mmap_mode="r")
    arm = np.load(args.cache / "arm.npy", mmap_mode="r")
    aff = np.load(args.cache / "aff.npy", mmap_mode="r")
    chosen = np.linspace(0, len(rgb) - 1, min(args.images, len(rgb))).astype(int)
    n = len(chosen)
    wall = dict.fromkeys(versions, 0.0)
    cpu = dict.fromkeys(versions, 0.0)
    same = {"masks": 0, "steps": 0, "boxes": 0}
    for k in range(0, n, 8):
        rows = chosen[k : k + 8]
        images = rgb[rows].astype(np.float32) / 255
        maps, features = np.asarray(arm[rows]), aff[rows].astype(np.float32)
        order = list(versions) if k % 16 == 0 else list(versions)[::-1]
        results = {}
        for name in order:
            module = versions[name]
            tick, cpu_tick = time.perf_counter(), time.process_time()
            results[name] = module.sgrm_batched(
                images, maps, module.SgrmConfig(), seeds=[0] * len(rows), affinity=features
            )
            wall[name] += time.perf_counter() - tick
            cpu[name] += time.process_time() - cpu_tick
        for a, b in zip(results["old"], results["new"], strict=True):
            same["masks"] += bool(np.array_equal(a.mask, b.mask))
            same["steps"] += a.steps == b.steps
            same["boxes"] += a.box == b.box
    print(f"{n} cached inputs from {args.cache}, {args.threads} threads")
    for name in versions:
        print(f"{name}: {1000 * wall[name] / n:.1f} ms/image ({1000 * cpu[name] / n:.1f} cpu)")
    print(
        f"speed-up {wall['old'] / wall['new']:.2f}x; equal: {same['masks']} masks, "
        f"{same['steps']} step counts, {same['boxes']} boxes of {n}"
    )


if __name__ == "__main__":
    main()
