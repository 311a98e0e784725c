"""ARM speed: ms per 224 x 224 image, reference (torch) vs C++ (1 and 2 threads) [vs CUDA].

All backends run in one process on the same inputs (E_h and images), for dilations (1,) and
AFA's (1, 2, 4, 8, 12, 24); each time is the fastest of the repeats of one batch (the run least
disturbed by other load on a shared machine), divided by the batch size. The reference is timed
in float32 (what a plain torch port such as PAR runs) and in float64 (the tested reference), with
torch limited to the same thread count as the C++ run.

    python benchmarks/arm.py [--images 2] [--repeats 3] [--size 224] [--iterations 50]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from lcar_deploy.stages import arm
from lcar_deploy.stages.arm import AFA_DILATIONS, ArmConfig


def make_inputs(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Structured random images (n, 3, size, size) in [0, 1] and E_h (n, size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    blob = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.1).astype(np.float32)
    colours = rng.random((n, 3, 1, 1), dtype=np.float32)
    noise = rng.random((n, 3, size, size), dtype=np.float32)
    images = np.clip(0.6 * blob * colours + 0.4 * noise, 0.0, 1.0).astype(np.float32)
    e_low = torch.from_numpy(rng.standard_normal((n, 14, 14)).astype(np.float32))
    e_h = arm.upsample_eigenmap(e_low, (size, size)).numpy()
    return images, e_h


def best_ms(fn: Callable[[], object], repeats: int, per: int) -> float:
    """Fastest wall time of fn() in ms over the repeats, divided by per (after a warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times) / per


def with_torch_threads(threads: int, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def cuda_ms(images: np.ndarray, e_h: np.ndarray, cfg: ArmConfig, repeats: int) -> float:
    """Best ms per image of the CUDA backend (inputs already on the GPU, synchronised)."""
    img = torch.from_numpy(images).cuda()
    e = torch.from_numpy(e_h).cuda()

    def run() -> None:
        arm.refine_cuda(e, img, cfg)
        torch.cuda.synchronize()

    return best_ms(run, repeats, len(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2, help="batch size (images per call)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()

    if "cpp" not in arm.available_backends():
        raise SystemExit("the C++ ARM extension is not built (pip install -e .)")
    images, e_h = make_inputs(args.images, args.size)
    img_t, e_t = torch.from_numpy(images), torch.from_numpy(e_h)
    use_cuda = arm.cuda_usable()
    print(
        f"ARM, {args.images} images of {args.size}x{args.size}, {args.iterations} iterations, "
        f"best of {args.repeats}; ms per image; x = reference f32 / C++ at the same threads"
    )
    columns = ("ref f64", 10), ("ref f32", 10), ("C++", 9), ("x f32", 8), ("x f64", 8)
    header = f"{'dilations':<22}{'thr':>4}" + "".join(f"{name:>{width}}" for name, width in columns)
    print(header + (f"{'CUDA':>9}" if use_cuda else ""))
    for dilations in [(1,), AFA_DILATIONS]:
        cfg = ArmConfig(dilations=dilations, iterations=args.iterations)
        for threads in (1, 2):
            ref64 = best_ms(
                with_torch_threads(threads, partial(arm.refine_reference, e_t, img_t, cfg)),
                args.repeats,
                args.images,
            )
            ref32 = best_ms(
                with_torch_threads(
                    threads, partial(arm.refine_reference, e_t, img_t, cfg, dtype=torch.float32)
                ),
                args.repeats,
                args.images,
            )
            cpp = best_ms(
                partial(arm.refine_cpp, e_h, images, cfg, num_threads=threads),
                args.repeats,
                args.images,
            )
            line = (
                f"{dilations!s:<22}{threads:>4}{ref64:>10.1f}{ref32:>10.1f}{cpp:>9.2f}"
                f"{ref32 / cpp:>7.1f}x{ref64 / cpp:>7.1f}x"
            )
            if use_cuda and threads == 1:
                line += f"{cuda_ms(images, e_h, cfg, args.repeats):>9.3f}"
            print(line, flush=True)
        ref = arm.refine_reference(e_t, img_t, cfg).numpy()
        diff = float(np.abs(arm.refine_cpp(e_h, images, cfg) - ref).max())
        print(f"{'':<26}max |C++ - reference f64| = {diff:.2e}")


if __name__ == "__main__":
    main()
