"""What the localizer benchmarks share: a self-trained localizer on cached features, and scoring.

Imported by ``box_head.py``, ``class_head.py``, ``finetune_stages.py`` and
``localizer_rounds.py`` (run from the repository root as ``python benchmarks/<script>.py``,
which puts this folder on the path).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lcar_deploy.bundle import cache_dir
from lcar_deploy.config import PipelineConfig, preset, resolve_config, settings_of
from lcar_deploy.datasets import Dataset, load_dataset
from lcar_deploy.image_io import load_image
from lcar_deploy.metrics import EVAL_SIZE, BoxAccuracyAccumulator
from lcar_deploy.models.backbones import BackboneConfig, build_backbone, default_config
from lcar_deploy.models.heads import ForegroundHead
from lcar_deploy.training.config import MAP_SETTINGS, LocalizerConfig
from lcar_deploy.training.localizer import (
    TrainSplitMaps,
    bands,
    empty_head,
    predict,
    refined_maps,
    self_train,
    train_split_maps,
    work_size_cams,
)


@dataclass
class Probe:
    """A localizer self-trained on a train split as ``lcar-deploy train`` trains it (class-agnostic
    rounds), with what the benchmarks read: both splits' cached maps, the bundle's settings for
    that map (``foreground``, or ``foreground_cam`` with ``blend``) and the CAMs blended."""

    head: ForegroundHead
    backbone: nn.Module
    config: BackboneConfig
    train: TrainSplitMaps
    test: TrainSplitMaps
    train_set: Dataset
    test_set: Dataset
    settings: PipelineConfig
    cfg: LocalizerConfig
    train_cams: np.ndarray | None
    test_cams: np.ndarray | None

    def refined(self, maps: np.ndarray, on_train: bool, threads: int) -> np.ndarray:
        """ARM's refinement of (N, g, g) maps of a split as the bundle runs it, at the work size."""
        data, cams = (self.train, self.train_cams) if on_train else (self.test, self.test_cams)
        return refined_maps(maps, data.images, self.settings.arm, threads, cams=cams,
                            at_grid=False)  # fmt: skip

    def next_labels(self, threads: int) -> np.ndarray:
        """(N, g, g) labels a further round would fit: the bands of ARM (the paper's ``k``, as
        the rounds use) on the head's train maps."""
        maps = refined_maps(predict(self.head, self.train.features), self.train.images,
                            preset("default").arm, threads, cams=self.train_cams)  # fmt: skip
        return bands(maps, self.cfg.high, self.cfg.low, strict=False)


def trained_probe(kind: str, root: Path, test_split: str, blend: bool, threads: int) -> Probe:
    cfg = LocalizerConfig(class_rounds=0)
    config = default_config("efficientnet_lite0")
    backbone = functools.cache(lambda: build_backbone(config))
    head = empty_head(backbone(), config, cfg.layers)
    cache = cache_dir() / "features"
    work = preset("default").work_size
    maps = {}
    for split in ("train", test_split):
        dataset = load_dataset(kind, root, split)
        maps[split] = dataset, train_split_maps(dataset, backbone, config, None, None, head, cfg,
                                                cache, work)  # fmt: skip
    train, test = maps["train"][1], maps[test_split][1]
    arm_input = "foreground_cam" if blend else "foreground"
    settings = resolve_config(settings_of(preset("default")), settings=MAP_SETTINGS[arm_input])
    train_cams = work_size_cams(train) if blend else None
    test_cams = work_size_cams(test) if blend else None
    self_train(head, train, cfg, preset("default").arm, cams=train_cams, threads=threads)
    return Probe(head, backbone(), config, train, test, maps["train"][0], maps[test_split][0],
                 settings, cfg, train_cams, test_cams)  # fmt: skip


def probe_parser(doc: str) -> argparse.ArgumentParser:
    """The options every localizer benchmark takes; a script adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--blend", action="store_true", help="refine the CAM blend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    return parser


def run_probe(args: argparse.Namespace) -> tuple[Probe, float]:
    """:func:`trained_probe` for :func:`probe_parser`'s options; the probe and the start time."""
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    probe = trained_probe(args.dataset, args.root, args.test_split, args.blend, args.threads)
    print(f"localizer trained ({time.perf_counter() - start:.0f} s)", flush=True)
    return probe, start


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


def boxes_scored(boxes: np.ndarray, gts: list[np.ndarray]) -> list[float]:
    """:func:`summary` of one (4,) integer box per image, scored at itself."""
    acc = BoxAccuracyAccumulator()
    for box, gt in zip(boxes, gts, strict=True):
        acc.add_mask_box(gt, boxes=np.asarray(box, np.int64))
    return summary(acc)


def report(table: dict[str, list[float]], out: Path | None, width: int = 40) -> None:
    """Print the table's rows (and write it as JSON to ``out``)."""
    print("columns: GT-known, GT@70, GT@90, MaxBoxAccV2")
    for name, values in table.items():
        print(f"{name:>{width}}: {values}")
    if out:
        out.write_text(json.dumps(table, indent=1))
