"""A PSOL-style box head against the learned localizer, on a test split.

    python benchmarks/box_head.py --dataset cub --root ../shared/data/CUB_200_2011 [--threads 2]
    python benchmarks/box_head.py --dataset ilsvrc --root ../shared/data/ILSVRC-mini --blend

PSOL (Zhang et al. 2020) trains a class-agnostic box regressor on pseudo boxes. Here the pseudo
boxes are the pipeline's own: the foreground head is self-trained on the train split as
``lcar-deploy train`` does (:func:`lcar_deploy.training.localizer.self_train`, the same cached
features), its train maps are refined by ARM as a trained bundle refines them, and the box of
each refined map at the bundle's box threshold is the target (no box annotation is read). The
regressor reads the same frozen multi-scale features as the head (pooled 2 x 2), through a
small conv net and global pooling, and gives (cx, cy, w, h) in [0, 1]; L1 + GIoU loss, AdamW,
mirrored features and boxes as augmentation, a fixed number of epochs (no validation split: the
labels are pseudo labels). ``--blend`` refines the head's map averaged with the round-0 CAM
(``foreground_cam``, as ILSVRC bundles without class maps and the default bundle do).

Rows (GT-known, GT@70, GT@90, MaxBoxAccV2; the box rows are scored at their own box, no
sweep): the head + ARM swept (the localizer, lever 1), its box at the bundle's threshold, the
regressed box, and the regressed box on the train split against its own pseudo boxes (the fit).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from localizer_probe import boxes_scored, gt_boxes, probe_parser, report, run_probe, swept
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from lcar_deploy.boxes import threshold_boxes
from lcar_deploy.metrics import EVAL_SIZE
from lcar_deploy.training.localizer import predict


def map_boxes(maps: np.ndarray, threshold: float) -> np.ndarray:
    """(N, 4) float boxes in [0, 1] (inclusive pixel corners / size) of each map's V1 box."""
    size = maps.shape[-1]
    out = np.zeros((len(maps), 4), np.float32)
    for i, score_map in enumerate(maps):
        box, _, _ = threshold_boxes(np.asarray(score_map, np.float32), threshold)
        if box is None:
            box = (0, 0, size - 1, size - 1)
        out[i] = np.asarray(box, np.float32) / (size - 1)
    return out


def to_pixels(boxes: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    px = np.rint(np.clip(boxes, 0, 1) * (size - 1)).astype(np.int64)
    px[:, 2:] = np.maximum(px[:, 2:], px[:, :2])
    return px


class BoxRegressor(nn.Module):
    """(B, g, g, D) features -> (B, 4) boxes (x0, y0, x1, y1) in [0, 1]."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, width, 1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4),
        )  # fmt: skip

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cx, cy, w, h = torch.sigmoid(self.net(features.permute(0, 3, 1, 2))).unbind(1)
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1).clamp(0, 1)


def pooled(features: np.ndarray, chunk: int = 64) -> torch.Tensor:
    """(N, g, g, D) float16 memmap -> (N, g/2, g/2, D) float16 tensor, 2 x 2 averages."""
    out = []
    for start in range(0, len(features), chunk):
        f = torch.from_numpy(np.asarray(features[start : start + chunk], np.float32))
        out.append(F.avg_pool2d(f.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1).half())
    return torch.cat(out)


def mirrored(features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flipped = boxes.clone()
    flipped[:, 0], flipped[:, 2] = 1 - boxes[:, 2], 1 - boxes[:, 0]
    return torch.flip(features, dims=(2,)), flipped


def fit_regressor(
    features: torch.Tensor, boxes: torch.Tensor, epochs: int, width: int, lr: float, seed: int
) -> BoxRegressor:
    torch.manual_seed(seed)
    model = BoxRegressor(features.shape[-1], width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    steps = epochs * ((len(features) + 31) // 32)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        total = 0.0
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            x, y = features[idx].float(), boxes[idx]
            if torch.rand((), generator=generator) < 0.5:
                x, y = mirrored(x, y)
            pred = model(x)
            loss = F.l1_loss(pred, y) + generalized_box_iou_loss(pred, y, reduction="mean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f}", flush=True)
    return model.eval()


@torch.inference_mode()
def regress(model: BoxRegressor, features: torch.Tensor) -> np.ndarray:
    parts = [model(features[s : s + 64].float()) for s in range(0, len(features), 64)]
    return torch.cat(parts).numpy()


def main() -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    probe, start = run_probe(args)
    threshold = probe.settings.box_threshold
    train_refined = probe.refined(predict(probe.head, probe.train.features), True, args.threads)
    test_refined = probe.refined(predict(probe.head, probe.test.features), False, args.threads)
    pseudo = map_boxes(train_refined, threshold)
    print(f"pseudo boxes ({time.perf_counter() - start:.0f} s)", flush=True)

    test_gt = gt_boxes(probe.test_set)
    table = {
        "localizer + ARM (swept)": swept(test_refined, test_gt),
        f"localizer + ARM box at {threshold}": boxes_scored(
            to_pixels(map_boxes(test_refined, threshold)), test_gt
        ),
    }
    train_features, test_features = pooled(probe.train.features), pooled(probe.test.features)
    model = fit_regressor(train_features, torch.from_numpy(pseudo), args.epochs, args.width,
                          args.lr, args.seed)  # fmt: skip
    table["box head"] = boxes_scored(to_pixels(regress(model, test_features)), test_gt)
    table["box head on train, vs its pseudo boxes"] = boxes_scored(
        to_pixels(regress(model, train_features)), [b[None] for b in to_pixels(pseudo)]
    )
    print(f"done ({time.perf_counter() - start:.0f} s)")
    report(table, args.out)


if __name__ == "__main__":
    main()
