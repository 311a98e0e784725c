"""Backbone fine-tuning with the localizer loss: does it pay on this data?

    python benchmarks/finetune_stages.py --dataset cub --root ../shared/data/CUB_200_2011 \\
        [--stages 2] [--epochs 3] [--lr 1e-4] [--area 0] [--background 0] [--threads 2]

The localizer is self-trained on the train split as ``lcar-deploy train`` does (class-agnostic
rounds, frozen features: :mod:`localizer_probe`). Then the last ``--stages`` stages of the
EfficientNet-Lite0 (1: ``blocks.6``, 2: ``blocks.5``-``blocks.6``) are trained together with
the head's linear layer (started from the fitted one) on the labels a further round would use
(ARM's refinement of the head's train maps, object >= 0.6, background <= 0.3, the rest
ignored), per-cell BCE; batch norm statistics stay frozen. The stages' input is computed once
per image and mirror and cached; the head's other layers (``blocks.2``, ``blocks.4``) read the
frozen cache, and the fine-tuned stage is flip-averaged as the pipeline's flip sees it.

BAS-style terms (Zhu et al. 2022), optional: ``--area`` w times the mean foreground probability
(area constraint), ``--background`` w times the ImageNet classifier's probability of the image's
top class on the background-weighted pooled features (background activation suppression; the
class is the classifier's own top-1 on the whole image: no label is read).

Rows (GT-known, GT@70, GT@90, MaxBoxAccV2, swept after ARM as the bundle refines the map):
the frozen localizer and the fine-tuned one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from localizer_probe import Probe, gt_boxes, probe_parser, report, run_probe, swept
from torch import nn
from tqdm import tqdm

from lcar_deploy.bundle import cache_dir
from lcar_deploy.datasets import Dataset
from lcar_deploy.image_io import load_rgb, resize_rgb, to_chw_float
from lcar_deploy.io import write_atomic
from lcar_deploy.training.features import dataset_identity
from lcar_deploy.training.localizer import predict

LAST_BLOCK = 6


def stage_inputs(probe: Probe, dataset: Dataset, stages: int) -> np.ndarray:
    """(N, 2, C, h, w) float16: the input of the fine-tuned stages for each image and its
    mirror, cached beside the localizer's features."""
    first = LAST_BLOCK + 1 - stages
    key = hashlib.sha256(
        json.dumps([dataset_identity(dataset), probe.config.input_size, first]).encode()
    ).hexdigest()[:16]
    path = cache_dir() / "features" / f"finetune-{dataset.kind}-{dataset.split}-{key}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    model, size, out = probe.backbone, probe.config.input_size, None
    records = dataset.records
    with torch.inference_mode():
        for start in tqdm(range(0, len(records), 8), desc=f"stage inputs {dataset.split}"):
            chunk = records[start : start + 8]
            x = torch.from_numpy(
                np.stack([to_chw_float(resize_rgb(load_rgb(r.path), size)) for r in chunk])
            )
            for view, image in enumerate((x, torch.flip(x, dims=(3,)))):
                h = model.model.bn1(model.model.conv_stem((image - model._mean) / model._std))
                for block in model.model.blocks[:first]:
                    h = block(h)
                if out is None:
                    out = np.zeros((len(records), 2, *h.shape[1:]), np.float16)
                out[start : start + len(chunk), view] = h.numpy().astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, out)

    write_atomic(path, save)
    return out


class TunedTop(nn.Module):
    """The fine-tuned stages, their head-side output and the head's linear layer."""

    def __init__(self, probe: Probe, stages: int) -> None:
        super().__init__()
        blocks = probe.backbone.model.blocks
        self.blocks = nn.Sequential(*blocks[LAST_BLOCK + 1 - stages :])
        self.conv_head, self.bn2 = probe.backbone.model.conv_head, probe.backbone.model.bn2
        self.classifier = probe.backbone.model.classifier
        self.fc = nn.Linear(probe.head.fc.in_features, 1)
        self.fc.load_state_dict(probe.head.fc.state_dict())
        self.grid = probe.head.grid
        self.frozen_dims = sum(probe.head.dims[:-1])

    def forward(
        self, inputs: torch.Tensor, frozen: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """inputs (B, 2, C, h, w) views, frozen (B, g, g, frozen_dims) -> logits (B, g, g) and
        each view's last-stage output."""
        parts, outs = [], []
        for view in range(2):
            h = self.blocks(inputs[:, view])
            outs.append(h)
            h = F.interpolate(F.normalize(h, dim=1), size=(self.grid, self.grid),
                              mode="bilinear", align_corners=False)  # fmt: skip
            parts.append(torch.flip(h, dims=(3,)) if view else h)
        last = (0.5 * (parts[0] + parts[1])).permute(0, 2, 3, 1)
        return self.fc(torch.cat([frozen, last], dim=-1))[..., 0], outs

    def background_activation(self, last: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Mean probability of each image's top class on its background-weighted features."""
        features = self.bn2(self.conv_head(last))
        top = self.classifier(features.mean(dim=(2, 3))).argmax(1).detach()
        background = 1 - F.interpolate(torch.sigmoid(logits)[:, None], size=features.shape[-2:],
                                       mode="area")  # fmt: skip
        pooled = (features * background).sum((2, 3)) / background.sum((2, 3)).clamp_min(1e-6)
        return self.classifier(pooled).softmax(1).gather(1, top[:, None]).mean()


def fine_tune(
    top: TunedTop,
    inputs: np.ndarray,
    frozen: np.ndarray,
    labels: np.ndarray,
    args: argparse.Namespace,
) -> None:
    params = list(top.blocks.parameters())
    for p in top.parameters():
        p.requires_grad_(False)
    for p in [*params, *top.fc.parameters()]:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": args.lr}, {"params": top.fc.parameters(), "lr": 1e-3}],
        weight_decay=1e-4,
    )
    top.train()
    for module in top.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        order = torch.randperm(len(inputs), generator=generator).numpy()
        total = 0.0
        for start in range(0, len(order), 16):
            idx = np.sort(order[start : start + 16])
            x = torch.from_numpy(np.asarray(inputs[idx], np.float32))
            f = torch.from_numpy(np.asarray(frozen[idx][..., : top.frozen_dims], np.float32))
            y = torch.from_numpy(labels[idx].astype(np.float32))
            logits, outs = top(x, f)
            keep = y >= 0
            loss = F.binary_cross_entropy_with_logits(logits[keep], y[keep])
            if args.area:
                loss = loss + args.area * torch.sigmoid(logits).mean()
            if args.background:
                loss = loss + args.background * top.background_activation(outs[0], logits)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        print(f"  epoch {epoch + 1}/{args.epochs}: loss {total / len(order):.4f}", flush=True)
    top.eval()


@torch.inference_mode()
def tuned_maps(top: TunedTop, inputs: np.ndarray, frozen: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(inputs), 32):
        x = torch.from_numpy(np.asarray(inputs[start : start + 32], np.float32))
        f = torch.from_numpy(
            np.asarray(frozen[start : start + 32][..., : top.frozen_dims], np.float32)
        )
        out.append(torch.sigmoid(top(x, f)[0]).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--stages", type=int, choices=(1, 2), default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4, help="the stages' AdamW rate")
    parser.add_argument("--area", type=float, default=0.0)
    parser.add_argument("--background", type=float, default=0.0)
    args = parser.parse_args()
    probe, start = run_probe(args)
    labels = probe.next_labels(args.threads)
    train_inputs = stage_inputs(probe, probe.train_set, args.stages)
    test_inputs = stage_inputs(probe, probe.test_set, args.stages)
    top = TunedTop(probe, args.stages)
    check = tuned_maps(top, test_inputs[:8], probe.test.features[:8])
    frozen_maps = predict(probe.head, probe.test.features)
    print(f"stage inputs ({time.perf_counter() - start:.0f} s); untuned top vs head: max diff "
          f"{np.abs(check - frozen_maps[:8]).max():.1e}", flush=True)  # fmt: skip
    fine_tune(top, train_inputs, probe.train.features, labels, args)
    print(f"fine-tuned ({time.perf_counter() - start:.0f} s)", flush=True)
    gts = gt_boxes(probe.test_set)
    name = f"fine-tuned, {args.stages} stages, {args.epochs} ep, lr {args.lr}"
    if args.area or args.background:
        name += f", area {args.area}, background {args.background}"
    table = {
        "frozen localizer + ARM": swept(probe.refined(frozen_maps, False, args.threads), gts),
        f"{name} + ARM": swept(
            probe.refined(tuned_maps(top, test_inputs, probe.test.features), False, args.threads),
            gts,
        ),
    }
    print(f"done ({time.perf_counter() - start:.0f} s)")
    report(table, args.out, width=len(name) + 6)


if __name__ == "__main__":
    main()
