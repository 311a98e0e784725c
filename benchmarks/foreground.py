"""Cost of the foreground head (the learned localizer) inside the exported graph.

    python benchmarks/foreground.py [--threads 2] [--repeats 5] [--input-size 384]

Exports the default bundle twice, without and with a foreground head of the default layers
(weights do not change the cost), runs both onnxruntime sessions on the same inputs in one run
and prints ms/image at batch 1 and 16 and the ratio with / without.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lcar_deploy.bundle import Bundle
from lcar_deploy.export.exporter import write_bundle
from lcar_deploy.models.backbones import default_config
from lcar_deploy.models.heads import with_foreground
from lcar_deploy.models.model import LcarModel, build_model
from lcar_deploy.training.localizer import empty_head


def ms_per_image(fn, batch: np.ndarray, repeats: int) -> float:
    fn(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(batch)
    return 1000.0 * (time.perf_counter() - start) / (repeats * len(batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--input-size", type=int, default=384)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = default_config("efficientnet_lite0", args.input_size)
    plain = build_model(config, generic_localizer=False)  # the default bundle has one: leave it out
    head = empty_head(plain.backbone, config, None)
    with_head = LcarModel(plain.backbone, with_foreground(plain.heads, head)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, model in (("without", plain), ("with", with_head)):
            path = write_bundle(model, config, Path(tmp) / name)
            sessions[name] = Bundle.load(path).session(device="cpu", threads=args.threads)
        print(
            f"efficientnet_lite0 at {args.input_size}px, {args.threads} threads; foreground head "
            f"{'+'.join(head.layers)} -> {head.grid}x{head.grid}"
        )
        print(f"{'batch':>5} {'without ms':>10} {'with ms':>8} {'with/without':>12}")
        for batch_size in (1, 16):
            rng = np.random.default_rng(0)
            batch = rng.random((batch_size, 3, args.input_size, args.input_size), np.float32)
            base = ms_per_image(sessions["without"].run, batch, args.repeats)
            full = ms_per_image(sessions["with"].run, batch, args.repeats)
            print(f"{batch_size:>5} {base:>10.1f} {full:>8.1f} {full / base:>12.3f}")


if __name__ == "__main__":
    main()
