"""Backbone throughput: torch eager vs onnxruntime, same bundle, same inputs, one run.

    python benchmarks/backbone.py [--bundle DIR] [--threads 2] [--repeats 5]

Prints images/s for batch 1 and 16 and the ratio onnxruntime / torch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lcar_deploy.bundle import Bundle
from lcar_deploy.export.exporter import export_bundle
from lcar_deploy.models.backbones import default_config
from lcar_deploy.models.model import build_model


def images_per_second(fn, batch: np.ndarray, repeats: int) -> float:
    fn(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle to time (default: export a fresh one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.bundle or export_bundle(Path(tmp) / "bundle")
        bundle = Bundle.load(path)
        session = bundle.session(device="cpu", threads=args.threads)
        config = default_config(bundle.backbone, bundle.input_size)
        model = build_model(config)
        size = bundle.input_size
        print(
            f"backbone {bundle.backbone} at {size}px, {args.threads} threads, "
            f"providers {session.providers}"
        )
        print(f"{'batch':>5} {'torch img/s':>12} {'ort img/s':>10} {'ort/torch':>9}")
        for batch_size in (1, 16):
            batch = np.random.default_rng(0).random((batch_size, 3, size, size), dtype=np.float32)

            def eager(x: np.ndarray) -> None:
                with torch.inference_mode():
                    model(torch.from_numpy(x))

            t = images_per_second(eager, batch, args.repeats)
            o = images_per_second(session.run, batch, args.repeats)
            print(f"{batch_size:>5} {t:>12.1f} {o:>10.1f} {o / t:>9.2f}")


if __name__ == "__main__":
    main()
