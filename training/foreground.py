"""The foreground head: class-agnostic object probability, self-trained on CAM pseudo labels.

Beyond the paper (docs/method.md, section 7): with frozen supervised features the CAM finds the
discriminative part, not the whole object. A logistic regression over the L2-normalised affinity
features, fitted on the whole train split with the cells where the CAM is confident (object:
map > high, background: map < low; the rest ignored), learns what "object" looks like across the
dataset and marks the object's other parts too. No box or mask annotation is used.

Pseudo labels come from ``imagenet`` (the embedded backbone's ImageNet classifier,
softmax-weighted top-k CAM, as used at test time) or ``heads`` (the trained CAM head's map of
the image's label).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..datasets import Dataset
from ..image_io import load_rgb, resize_rgb, to_chw_float
from ..models.backbones import BackboneConfig, backbone_spec, build_backbone, list_backbones
from ..models.heads import Heads
from ..stages.cam import CamConfig, cam_map, upsample

PSEUDO_SOURCES = ("imagenet", "heads")


@dataclass(frozen=True)
class ForegroundConfig:
    """Pseudo labels and fit of the foreground head.

    high, low: CAM thresholds (min-max normalised map) of object / background cells.
    pseudo: ``imagenet`` (embedded classifier, top_k classes) or ``heads`` (trained CAM head,
        the image's label).
    top_k: classes of the ImageNet CAM.
    l2: weight of the L2 penalty on the weights; max_iter: L-BFGS iterations.
    """

    high: float = 0.5
    low: float = 0.1
    pseudo: str = "imagenet"
    top_k: int = 5
    l2: float = 1e-3
    max_iter: int = 200

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ValueError(f"need 0 <= low < high <= 1, got low={self.low}, high={self.high}")
        if self.pseudo not in PSEUDO_SOURCES:
            raise ValueError(f"pseudo must be one of {', '.join(PSEUDO_SOURCES)}")


def collect_pseudo_labels(
    dataset: Dataset,
    backbone_config: BackboneConfig,
    weights: str | None,
    heads: Heads,
    config: ForegroundConfig,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Affinity features (N, ha, wa, Da) float16 and CAM maps at that grid (N, ha, wa) float32."""
    if config.pseudo == "imagenet":
        if not backbone_spec(backbone_config.name).has_classifier:
            with_classifier = [n for n in list_backbones() if backbone_spec(n).has_classifier]
            raise ValueError(
                f"pseudo='imagenet' needs an ImageNet classifier ({', '.join(with_classifier)}), "
                f"not {backbone_config.name}"
            )
        source = BackboneConfig(
            backbone_config.name, backbone_config.input_size, "head", backbone_config.affinity_layer
        )
    else:
        source = backbone_config
    backbone = build_backbone(source, weights)
    cam_cfg = CamConfig(size=224, top_k=config.top_k if config.pseudo == "imagenet" else 1)
    size = backbone_config.input_size
    features, maps = [], []
    records = dataset.records
    for start in tqdm(
        range(0, len(records), batch_size), desc="foreground labels", disable=not progress
    ):
        chunk = records[start : start + batch_size]
        x = torch.from_numpy(
            np.stack([to_chw_float(resize_rgb(load_rgb(r.path), size)) for r in chunk])
        )
        with torch.no_grad():
            out = backbone(x)
            if config.pseudo == "imagenet":
                cams = backbone.model.classifier(out["grid"]).permute(0, 3, 1, 2)
                logits = out["logits"]
            else:
                cams, _ = heads.cam(out["grid"])
                logits = heads.teacher(heads.teacher_features(out["global"], out["grid"]))
        grid_side = out["affinity"].shape[1:3]
        for i, record in enumerate(chunk):
            gt = None if config.pseudo == "imagenet" else record.label
            full = cam_map(cams[i].numpy(), logits[i].numpy(), cam_cfg, gt).map
            maps.append(upsample(full, tuple(grid_side), "bilinear").astype(np.float32))
        features.append(out["affinity"].numpy().astype(np.float16))
    return np.concatenate(features), np.stack(maps)


def fit_foreground(
    features: np.ndarray, cam_maps: np.ndarray, config: ForegroundConfig
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Class-balanced logistic regression on the confident cells.

    features: (N, ha, wa, Da); cam_maps: (N, ha, wa) in [0, 1].
    Returns weight (1, Da), bias (1,), and stats (cells used, positive share, final loss).
    """
    x = torch.from_numpy(features.reshape(-1, features.shape[-1]).astype(np.float32))
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)
    y = torch.from_numpy(cam_maps.reshape(-1))
    keep = (y > config.high) | (y < config.low)
    x, target = x[keep], (y[keep] > config.high).float()
    positive = float(target.mean()) if len(target) else 0.0
    if not 0.0 < positive < 1.0:
        raise ValueError("pseudo labels hold only one class; lower 'high' or raise 'low'")
    balance = torch.where(target > 0, 0.5 / positive, 0.5 / (1.0 - positive))
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=config.max_iter)

    def objective() -> torch.Tensor:
        ce = torch.nn.functional.binary_cross_entropy_with_logits(
            x @ weight + bias, target, reduction="none"
        )
        return (balance * ce).mean() + config.l2 * weight.pow(2).sum()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        final = float(objective())
    stats = {"cells": len(target), "positive_share": positive, "loss": final}
    return weight.detach()[None], bias.detach(), stats
