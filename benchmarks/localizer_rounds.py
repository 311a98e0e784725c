"""Box accuracy of the foreground head after each self-training round, on a test split.

    python benchmarks/localizer_rounds.py --dataset cub --root ../shared/data/CUB_200_2011 \\
        [--rounds 3] [--threads 1] [--settings '{"high": 0.6}'] [--train-dataset ...]

Runs the same code as ``lcar-deploy train`` (:mod:`lcar_deploy.training.localizer`, features
cached in the same place) on the train split, then scores every round's map on the test split,
alone (``head``) and refined by ARM as a trained bundle runs it (``head+arm``), with the
evaluation's own scorer (GT-known, GT@70, GT@90, MaxBoxAccV2). The CAM map of round 0 is scored
too. ``--train-dataset kind=root`` (repeatable) trains on several train splits together (the
generic localizer of the default bundle). The end-to-end numbers of a trained bundle come from
``lcar-deploy eval``; this script shows what each round buys.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lcar_deploy.bundle import cache_dir
from lcar_deploy.config import preset, resolve_config, settings_of
from lcar_deploy.datasets import Dataset, load_dataset
from lcar_deploy.image_io import load_image
from lcar_deploy.metrics import EVAL_SIZE, BoxAccuracyAccumulator
from lcar_deploy.models.backbones import build_backbone, default_config
from lcar_deploy.models.heads import ForegroundHead
from lcar_deploy.training.config import MAP_SETTINGS, LocalizerConfig
from lcar_deploy.training.localizer import (
    concatenated,
    empty_head,
    predict,
    refined_maps,
    self_train,
    train_split_maps,
)


def gt_boxes(dataset: Dataset) -> list[np.ndarray]:
    """Each record's GT boxes at the evaluation size."""
    out = []
    for record in dataset.records:
        size = record.size or load_image(record.path).original_size
        out.append(record.scaled_boxes(EVAL_SIZE, size))
    return out


def summary(acc: BoxAccuracyAccumulator) -> list[float]:
    """GT-known, GT@70, GT@90, MaxBoxAccV2."""
    d = acc.to_dict()
    return [round(d["gt_known"], 1), round(d["gt"]["70"], 1), round(d["gt"]["90"], 1),
            round(d["max_box_acc_v2"], 1)]  # fmt: skip


def swept(maps: np.ndarray, gts: list[np.ndarray]) -> list[float]:
    """:func:`summary` of (N, 224, 224) maps, each swept over the threshold."""
    acc = BoxAccuracyAccumulator()
    for score_map, gt in zip(maps, gts, strict=True):
        acc.add_scoremap(np.asarray(score_map, np.float32), gt)
    return summary(acc)


def report(table: dict[str, list[float]], out: Path | None, width: int = 40) -> None:
    """Print the table's rows (and write it as JSON to ``out``)."""
    print("columns: GT-known, GT@70, GT@90, MaxBoxAccV2")
    for name, values in table.items():
        print(f"{name:>{width}}: {values}")
    if out:
        out.write_text(json.dumps(table, indent=1))


def upsampled(maps: np.ndarray) -> np.ndarray:
    up = F.interpolate(torch.from_numpy(maps)[:, None], size=(EVAL_SIZE, EVAL_SIZE),
                       mode="bilinear", align_corners=False)[:, 0].numpy()  # fmt: skip
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    return (up - lo) / np.maximum(hi - lo, 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--train-dataset", action="append", default=[], metavar="KIND=ROOT")
    parser.add_argument("--rounds", type=int, default=LocalizerConfig.rounds)
    parser.add_argument("--settings", default="{}", help="LocalizerConfig fields, JSON")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = LocalizerConfig(rounds=args.rounds, **json.loads(args.settings))
    config = default_config("efficientnet_lite0")
    backbone = functools.cache(lambda: build_backbone(config))  # built once, on first use

    head = empty_head(backbone(), config, cfg.layers)
    cache = cache_dir() / "features"
    work = preset("default").work_size
    sources = args.train_dataset or [f"{args.dataset}={args.root}"]
    train_parts = []
    for source in sources:
        kind, root = source.split("=", 1)
        train = load_dataset(kind, root, "train")
        train_parts.append(
            train_split_maps(train, backbone, config, None, None, head, cfg, cache, work)
        )
    test = load_dataset(args.dataset, args.root, args.test_split)
    test_maps = train_split_maps(test, backbone, config, None, None, head, cfg, cache, work)
    gts = gt_boxes(test)
    table = {"cam (round-0 labels)": swept(upsampled(test_maps.cams), gts)}
    start = time.perf_counter()
    # Each round's map is refined as a trained bundle refines it (the default preset with the
    # foreground map's settings).
    arm = resolve_config(settings_of(preset("default")), settings=MAP_SETTINGS["foreground"]).arm

    def score_round(name: str, fitted: ForegroundHead) -> None:
        maps = predict(fitted, test_maps.features)
        table[f"{name} head"] = swept(upsampled(maps), gts)
        refined = refined_maps(maps, test_maps.images, arm, args.threads, at_grid=False)
        table[f"{name} head+arm"] = swept(refined, gts)
        print(f"{name}: head {table[f'{name} head']}, head+arm {table[f'{name} head+arm']} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip

    self_train(head, concatenated(train_parts), cfg, preset("default").arm,
               threads=args.threads, checkpoint=score_round)  # fmt: skip
    report(table, args.out, width=24)


if __name__ == "__main__":
    main()
