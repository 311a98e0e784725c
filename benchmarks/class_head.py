"""The class maps' last fit: one linear layer per class (the default) against a small MLP.

On a dataset with class maps (ILSVRC-mini), the class rounds run as ``lcar-deploy train`` runs
them (the trained CAM head of ``--heads``, the localizer's cached features), up to the labels
of the last class fit. The last fit is then made twice on the same labels: the library's
logistic regression per class, and an MLP over the same cells (a hidden ReLU layer of
``--hidden`` shared by the classes, one output per class, each cell's loss the BCE of its own
class's output; AdamW, one-cycle schedule), for each ``--seeds``. Each map is blended with the
image's class CAM and refined by ARM as the bundle refines it, and swept over the threshold on
the test split and on its even and odd halves.

    python benchmarks/class_head.py --dataset ilsvrc --root ../shared/data/ILSVRC-mini \
        --heads runs/train-ilsvrc/heads.pt --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from localizer_probe import gt_boxes, report, swept
from torch import nn

from lcar_deploy.bundle import cache_dir
from lcar_deploy.config import preset, resolve_config, settings_of
from lcar_deploy.datasets import load_dataset
from lcar_deploy.models.backbones import build_backbone, default_config
from lcar_deploy.models.heads import load_heads
from lcar_deploy.training.config import MAP_SETTINGS, LocalizerConfig
from lcar_deploy.training.localizer import (
    bands,
    class_cams,
    empty_head,
    fit_class_maps,
    labelled_cells,
    predict,
    refined_maps,
    self_train,
    train_split_maps,
)


def fit_mlp(
    cells: tuple[torch.Tensor, ...], classes: int, hidden: int, args: argparse.Namespace, seed: int
) -> nn.Module:
    x, y, own = cells
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, classes))
    optimizer = torch.optim.AdamW(net.parameters(), args.lr, weight_decay=args.weight_decay)
    batch = 4096
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=args.epochs * -(-len(y) // batch)
    )
    for _ in range(args.epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), batch):
            rows = order[start : start + batch]
            logits = net(x[rows]).gather(1, own[rows, None].long())[:, 0]
            loss = F.binary_cross_entropy_with_logits(logits, y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return net


@torch.no_grad()
def mlp_maps(net: nn.Module, features: np.ndarray, classes: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(features), 32):
        f = torch.from_numpy(np.asarray(features[start : start + 32], np.float32))
        c = torch.from_numpy(classes[start : start + 32])
        out.append(torch.sigmoid(net(f)[torch.arange(len(c)), :, :, c]).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--heads", required=True, type=Path, help="the trained heads.pt")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    heads, _ = load_heads(args.heads)
    cfg = LocalizerConfig()
    config = default_config("efficientnet_lite0")
    backbone = functools.cache(lambda: build_backbone(config))
    pipeline = preset("default")
    cam = dataclasses.replace(pipeline.cam, size=pipeline.work_size)
    index = {class_id: i for i, class_id in enumerate(heads.config.class_ids)}
    n_classes = len(index)
    split = {}
    for name in ("train", args.test_split):
        dataset = load_dataset(args.dataset, args.root, name)
        head = empty_head(backbone(), config, cfg.layers, n_classes)
        maps = train_split_maps(dataset, backbone, config, None, heads, head, cfg,
                                cache_dir() / "features", pipeline.work_size)  # fmt: skip
        classes = np.array([index[r.class_id] for r in dataset.records], np.int64)
        split[name] = dataset, maps, classes, class_cams(heads, maps.grid, classes, cam)
    test_set, test, test_classes, test_cams = split[args.test_split]
    arm = resolve_config(settings_of(pipeline), settings=MAP_SETTINGS["class_foreground_cam"]).arm
    gts = gt_boxes(test_set)
    scored = [i for i, gt in enumerate(gts) if len(gt)]
    halves = {"all": scored, "even": [i for i in scored if i % 2 == 0],
              "odd": [i for i in scored if i % 2 == 1]}  # fmt: skip
    table = {}

    def score(name: str, maps: np.ndarray) -> None:
        refined = refined_maps(maps, test.images, arm, args.threads,
                               cams=np.asarray(test_cams, np.float32), at_grid=False)  # fmt: skip
        for half, rows in halves.items():
            table[f"{name}, {half}"] = swept(refined[rows], [gts[i] for i in rows])
        print(name, [table[f"{name}, {h}"] for h in halves], flush=True)

    _, train, classes, cams = split["train"]
    cams = np.asarray(cams, np.float32)
    head = empty_head(backbone(), config, cfg.layers, n_classes)
    earlier = dataclasses.replace(cfg, class_rounds=cfg.class_rounds - 1)
    self_train(head, train, earlier, pipeline.arm, classes=classes, class_cams=cams,
               threads=args.threads)  # fmt: skip
    last_maps = refined_maps(predict(head, train.features, classes), train.images, pipeline.arm,
                             args.threads, cams=cams)  # fmt: skip
    labels = bands(last_maps, cfg.high, cfg.low, strict=False)
    fit_class_maps(head, train.features, labels, classes, cfg)
    score("linear (default)", predict(head, test.features, test_classes))
    x, y, images = labelled_cells(train.features, labels, np.arange(len(labels)), cfg.cell_stride)
    cells = x, y, torch.from_numpy(classes[images])
    for hidden in args.hidden:
        for seed in args.seeds:
            net = fit_mlp(cells, n_classes, hidden, args, seed)
            score(f"mlp {hidden}, seed {seed}", mlp_maps(net, test.features, test_classes))
    report(table, args.out, width=28)


if __name__ == "__main__":
    main()
