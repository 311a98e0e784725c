"""int8 vs float32 backbone speed: ms per image of two bundles' onnxruntime sessions (CPU).

Both sessions run in one process on the same inputs (real images of --images, preprocessed as
the pipeline does, cycled to fill a batch), at batch 1 and 16, with the same thread count; each
time is the fastest of the repeats (the run least disturbed by other load on a shared machine),
divided by the batch size. Also prints how far the int8 outputs are from the float32 ones.

    python benchmarks/int8.py --float ~/.cache/lcar-deploy/bundles/default-efficientnet_lite0-384-localizer-<digest> \\
        --int8 /tmp/int8/int8-default --images /tmp/int8/ilsvrc-calib [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lcar_deploy.bundle import Bundle
from lcar_deploy.image_io import image_extensions, load_rgb, resize_rgb, to_chw_float


def load_inputs(folder: Path, size: int, count: int) -> np.ndarray:
    extensions = set(image_extensions())
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in extensions)[:count]
    images = [to_chw_float(resize_rgb(load_rgb(p), size)) for p in files]
    return np.stack([images[i % len(images)] for i in range(count)])


def best_ms(run: object, images: np.ndarray, repeats: int) -> float:
    run(images)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return 1000 * min(times) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float", dest="float32", type=Path, required=True)
    parser.add_argument("--int8", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    float32, int8 = Bundle.load(args.float32), Bundle.load(args.int8)
    if float32.input_size != int8.input_size:
        raise SystemExit("the two bundles have different input sizes")
    print(f"int8: {int8.quantization}")
    images = load_inputs(args.images, float32.input_size, 16)
    sessions = {
        "float32": float32.session(device="cpu", threads=args.threads),
        "int8": int8.session(device="cpu", threads=args.threads),
    }
    out = {name: s.run(images[:4]) for name, s in sessions.items()}
    for name, value in out["float32"].items():
        diff = out["int8"][name] - value
        rel = np.sqrt(np.mean(diff**2)) / np.sqrt(np.mean(value**2))
        print(f"  {name:10s} RMS error {100 * rel:5.1f} % of the float32 RMS")
    if "logits" in out["float32"]:
        same = out["float32"]["logits"].argmax(1) == out["int8"]["logits"].argmax(1)
        print(f"  top-1 class agrees on {int(same.sum())}/{len(same)} images")
    print(f"ms/image, {args.threads} threads, best of {args.repeats}")
    for batch in (1, 16):
        ms = {name: best_ms(s.run, images[:batch], args.repeats) for name, s in sessions.items()}
        ratio = ms["float32"] / ms["int8"]
        print(
            f"  batch {batch:2d}: float32 {ms['float32']:7.1f}  int8 {ms['int8']:7.1f}  "
            f"float32/int8 {ratio:4.2f}x"
        )


if __name__ == "__main__":
    main()
