"""Make the generic localizer shipped for the default bundle
(:mod:`lcar_deploy.models.generic_localizer`).

    python -m lcar_deploy.training.generic_localizer \\
        --train cub=../shared/data/CUB_200_2011 --train ilsvrc=../shared/data/ILSVRC-mini

The foreground head's self-training (:mod:`.localizer`, :data:`.config.GENERIC_LOCALIZER`) on
several train splits together, class-agnostic: round 0 on the embedded classifier's top-5 CAM,
then rounds on ARM's refinement of the head's own maps blended with that CAM, the map the
default bundle's ARM refines (``foreground_cam``). No label of any kind is read, not even the
class. Features are cached as ``lcar-deploy train`` caches them. Writes the file the
default export attaches (``--out``, default: the package's own file for the backbone).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path

import torch

from ..bundle import cache_dir
from ..config import preset
from ..datasets import load_dataset
from ..models.backbones import build_backbone, default_config
from ..models.generic_localizer import generic_localizer_path, save_generic_localizer
from .config import GENERIC_LOCALIZER, LocalizerConfig
from .localizer import (
    concatenated,
    empty_head,
    self_train,
    train_split_maps,
    work_size_cams,
)


def make_generic_localizer(
    sources: list[tuple[str, str]],
    out: Path | None = None,
    *,
    backbone: str = "efficientnet_lite0",
    cfg: LocalizerConfig | None = None,
    threads: int | None = 1,
    progress: bool = True,
) -> Path:
    """Self-train the generic localizer on the train splits ``sources`` ((kind, root) pairs)
    and write it to ``out``; returns the path."""
    cfg = cfg or GENERIC_LOCALIZER
    if threads is not None:
        torch.set_num_threads(threads)
    config = default_config(backbone)
    build = functools.cache(lambda: build_backbone(config))  # built once, on first use
    head = empty_head(build(), config, cfg.layers)
    pipeline = preset("default")
    parts, used = [], []
    for kind, root in sources:
        train = load_dataset(kind, root, "train")
        parts.append(
            train_split_maps(
                train,
                build,
                config,
                None,
                None,
                head,
                cfg,
                cache_dir() / "features",
                pipeline.work_size,
                progress=progress,
            )
        )
        used.append({"dataset": kind, "split": "train", "images": len(train.records)})
    start = time.perf_counter()
    data = concatenated(parts)
    history = self_train(
        head, data, cfg, pipeline.arm, cams=work_size_cams(data), threads=threads, progress=progress
    )
    out = out or generic_localizer_path(backbone, config.input_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "trained_on": used,
        "localizer": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items()},
        "rounds_history": history,
        "seconds": round(time.perf_counter() - start, 1),
    }
    save_generic_localizer(head, backbone, config.input_size, out, info)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="append", required=True, metavar="KIND=ROOT")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--settings", default="{}", help="LocalizerConfig fields, JSON")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sources = []
    for item in args.train:
        kind, sep, root = item.partition("=")
        if not sep:
            parser.error(f"--train takes KIND=ROOT, got {item!r}")
        sources.append((kind, root))
    cfg = dataclasses.replace(GENERIC_LOCALIZER, **json.loads(args.settings))
    path = make_generic_localizer(
        sources, args.out, backbone=args.backbone, cfg=cfg, threads=args.threads
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
