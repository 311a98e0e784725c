"""Training of the foreground head: self-training on the pipeline's own maps.

The foreground head (:class:`lcar_deploy.models.heads.ForegroundHead`) is a class-agnostic
localizer learnt from class labels only (docs/method.md, section 7; the measurements:
docs/experiments/2026-12-localizer.md). No box or mask annotation is ever used:

- round 0 fits it on the CAM's confident cells of the train split (object: map > ``cam_high``,
  background: map < ``cam_low``, the rest ignored) or, with ``cam_source = "graphcut"`` (the
  self-supervised ViTs, whose CAM is weak), on ARM's refinement of the graph cut (TokenCut's
  orientation, no CAM), banded as the later rounds are;
- each further round refines the previous head's maps of the train split with ARM (the
  pipeline's own settings; averaged first with the image's CAM when the bundle's ARM refines
  that blend, ``foreground_cam``), keeps the reliable bands (object >= ``high``, background <=
  ``low``, the rest ignored) and fits again, from scratch;
- with class maps (enough images per class), the class rounds then fit one layer per class on
  that class's images, the same way: labels from ARM on the last class-agnostic maps, then on
  the class maps; each averaged first with the image's class CAM when the bundle's ARM refines
  that blend (``class_foreground_cam``), so the labels come from the map the bundle refines.

Features: the head's input (:meth:`ForegroundHead.features`) of every train image and of its
mirror, mirrored back and averaged, as the pipeline's test-time flip sees them; likewise the CAM
head's input grid (the CAM head is linear, so its CAMs of the averaged grid are the flip's).
Both are cached as float16 (``2 grid^2 D`` and ``2 h w Dg`` bytes per image) and read back in
chunks.

The fit is a logistic regression by L-BFGS on every ``cell_stride``-th cell along each axis:
deterministic (no seed), a few seconds per round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..datasets import Dataset
from ..image_io import load_rgb, resize_rgb, to_chw_float
from ..models.backbones import BackboneConfig, backbone_spec, list_backbones
from ..models.heads import ForegroundHead, Heads
from ..pipeline import blend_maps
from ..stages.arm import ArmConfig, refine
from ..stages.cam import CamConfig, cam_map, upsample
from ..stages.graph_cut import GraphCutConfig, eigenvector_scoremap, second_eigenvector
from .config import LocalizerConfig

LOCALIZER_CACHE_VERSION = 3


@dataclass
class TrainSplitMaps:
    """What the rounds need of the train split.

    features: (N, g, g, D) float16, flip-averaged head inputs (a memmap); cams: (N, g, g)
    float32 round-0 maps in [0, 1] (the CAM, or the graph cut's eigenvector map); images: (N, W, W, 3) uint8 RGB at the pipeline's work size;
    grid: (N, h, w, Dg) float16 flip-averaged CAM-head inputs (a memmap; ``None``: not kept).
    """

    features: np.ndarray
    cams: np.ndarray
    images: np.ndarray
    grid: np.ndarray | None = None


def concatenated(parts: list[TrainSplitMaps]) -> TrainSplitMaps:
    """Several train splits as one (read into memory when there are several), for the
    class-agnostic rounds: the CAM grids are left out then."""
    if len(parts) == 1:
        return parts[0]
    return TrainSplitMaps(
        np.concatenate([np.asarray(p.features) for p in parts]),
        np.concatenate([p.cams for p in parts]),
        np.concatenate([np.asarray(p.images) for p in parts]),
    )


def empty_head(
    backbone: nn.Module,
    config: BackboneConfig,
    layers: tuple[str, ...] | None,
    classes: int = 0,
) -> ForegroundHead:
    """An untrained :class:`ForegroundHead` fitting ``backbone`` (widths from a dummy forward),
    with ``classes`` class maps."""
    spec = backbone_spec(config.name)
    layers = layers or spec.foreground_layers
    with torch.no_grad():
        stages = backbone(torch.zeros(1, 3, config.input_size, config.input_size))["stages"]
    unknown = [layer for layer in layers if layer not in stages]
    if unknown:
        raise ValueError(f"{config.name} has no layer {unknown[0]!r}; choose from {list(stages)}")
    dims = [int(stages[layer].shape[1]) for layer in layers]
    return ForegroundHead(list(layers), dims, config.input_size // spec.foreground_stride, classes)


def _mirror(x: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.flip(x, dims=(axis,))


def _heads_identity(heads: Heads | None) -> str | None:
    """A digest of the trained heads' weights (their CAMs are round 0's labels)."""
    if heads is None:
        return None
    digest = hashlib.sha256()
    for name, value in sorted(heads.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _cache_key(
    dataset: Dataset,
    config: BackboneConfig,
    weights: str | Path | None,
    head: ForegroundHead,
    cfg: LocalizerConfig,
    work: int,
    heads: Heads | None = None,
) -> str:
    """What the cache depends on, round 0's labels included: the CAM's source and, for the
    trained heads, their weights; for the graph cut, its settings."""
    from .features import _weights_identity, dataset_identity

    key = {
        "version": LOCALIZER_CACHE_VERSION,
        "backbone": asdict(config),
        "weights": _weights_identity(weights),
        "dataset": dataset_identity(dataset),
        "layers": list(head.layers),
        "grid": head.grid,
        "cam": [cfg.cam_source, cfg.top_k],
        "heads": _heads_identity(heads) if cfg.cam_source == "heads" else None,
        "graph_cut": asdict(GraphCutConfig()) if cfg.cam_source == "graphcut" else None,
        "work_size": work,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@torch.inference_mode()
def train_split_maps(
    dataset: Dataset,
    backbone: Callable[[], nn.Module],
    config: BackboneConfig,
    weights: str | Path | None,
    heads: Heads | None,
    head: ForegroundHead,
    cfg: LocalizerConfig,
    cache_dir: Path,
    work_size: int,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> TrainSplitMaps:
    """Features, round-0 CAMs and work-size images of ``dataset``, cached under ``cache_dir``."""
    if cfg.cam_source == "imagenet" and not backbone_spec(config.name).has_classifier:
        with_classifier = [n for n in list_backbones() if backbone_spec(n).has_classifier]
        raise ValueError(
            f"cam_source='imagenet' needs an ImageNet classifier ({', '.join(with_classifier)}), "
            f"not {config.name}"
        )
    key = _cache_key(dataset, config, weights, head, cfg, work_size, heads)
    base = cache_dir / f"localizer-{dataset.kind}-{dataset.split}-{key}"
    paths = {
        name: base.with_name(f"{base.name}-{name}.npy")
        for name in ("features", "cams", "rgb", "grid")
    }
    done = base.with_name(f"{base.name}.done")
    if not done.exists():
        _compute_maps(
            dataset, backbone(), config, heads, head, cfg, paths, work_size, batch_size, progress
        )
        done.touch()
    return TrainSplitMaps(
        np.load(paths["features"], mmap_mode="r"),
        np.load(paths["cams"]),
        np.load(paths["rgb"], mmap_mode="r"),
        np.load(paths["grid"], mmap_mode="r"),
    )


def _compute_maps(
    dataset: Dataset,
    model: nn.Module,
    config: BackboneConfig,
    heads: Heads | None,
    head: ForegroundHead,
    cfg: LocalizerConfig,
    paths: dict[str, Path],
    work_size: int,
    batch_size: int,
    progress: bool,
) -> None:
    cache = paths["features"].parent
    cache.mkdir(parents=True, exist_ok=True)
    n, g, dim = len(dataset.records), head.grid, sum(head.dims)
    feats = np.lib.format.open_memmap(
        paths["features"], mode="w+", dtype=np.float16, shape=(n, g, g, dim)
    )
    rgb = np.lib.format.open_memmap(
        paths["rgb"], mode="w+", dtype=np.uint8, shape=(n, work_size, work_size, 3)
    )
    grid = None
    cams = np.zeros((n, g, g), np.float32)
    cam_cfg = CamConfig(size=work_size, top_k=cfg.top_k if cfg.cam_source == "imagenet" else 1)
    records = dataset.records
    for start in tqdm(range(0, n, batch_size), desc="foreground features", disable=not progress):
        chunk = records[start : start + batch_size]
        images = [load_rgb(r.path) for r in chunk]
        x = torch.from_numpy(
            np.stack([to_chw_float(resize_rgb(im, config.input_size)) for im in images])
        )
        views = [model(x), model(_mirror(x, 3))]
        f = 0.5 * (
            head.features(views[0]["stages"]) + _mirror(head.features(views[1]["stages"]), 2)
        )
        feats[start : start + len(chunk)] = f.numpy().astype(np.float16)
        cam_in = 0.5 * (views[0]["grid"] + _mirror(views[1]["grid"], 2))
        if grid is None:
            grid = np.lib.format.open_memmap(
                paths["grid"], mode="w+", dtype=np.float16, shape=(n, *cam_in.shape[1:])
            )
        grid[start : start + len(chunk)] = cam_in.numpy().astype(np.float16)
        maps = _round0_maps(model, heads, views, chunk, cfg, cam_cfg)
        for i, full in enumerate(maps):
            cams[start + i] = _to_grid(full[None], g)[0]
            rgb[start + i] = resize_rgb(images[i], work_size)
    feats.flush()
    rgb.flush()
    if grid is not None:
        grid.flush()
    np.save(paths["cams"], cams)
    del feats, rgb, grid


def _round0_maps(
    model: nn.Module,
    heads: Heads | None,
    views: list[dict],
    chunk: list,
    cfg: LocalizerConfig,
    cam: CamConfig,
) -> list[np.ndarray]:
    """Round 0's map of each image of a batch at ``cam.size``, from the backbone's outputs on
    the images and on their mirrors (``views``): the graph cut's eigenvector map (TokenCut's
    orientation) of the flip-averaged affinity features, or the CAM (ImageNet classifier's
    top-k, or the trained heads' of the image's label)."""
    if cfg.cam_source == "graphcut":
        affinity = 0.5 * (views[0]["affinity"] + _mirror(views[1]["affinity"], 2))
        cut = GraphCutConfig()
        return [
            eigenvector_scoremap(second_eigenvector(a.numpy(), cut), cam.size) for a in affinity
        ]
    if cfg.cam_source == "imagenet":
        grid_cams = [
            model.model.classifier(v["stages"]["head"].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            for v in views
        ]
        logits = 0.5 * (views[0]["logits"] + views[1]["logits"])
    else:
        grid_cams = [heads.cam(v["grid"])[0] for v in views]
        logits = 0.5 * sum(
            heads.teacher(heads.teacher_features(v["global"], v["grid"])) for v in views
        )
    merged = 0.5 * (grid_cams[0] + _mirror(grid_cams[1], 3))
    return [
        cam_map(
            merged[i].numpy(),
            logits[i].numpy(),
            cam,
            None if cfg.cam_source == "imagenet" else record.label,
        ).map
        for i, record in enumerate(chunk)
    ]


def _to_grid(maps: np.ndarray, grid: int) -> np.ndarray:
    """(N, H, W) -> (N, grid, grid) by area averaging."""
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    return F.interpolate(t, size=(grid, grid), mode="area")[:, 0].numpy()


@torch.inference_mode()
def class_cams(
    heads: Heads, grid: np.ndarray, classes: np.ndarray, cam: CamConfig, chunk: int = 64
) -> np.ndarray:
    """(N, size, size) float16 CAM of each train image's own class (``classes``: (N,) bundle
    class index; ``grid``: :attr:`TrainSplitMaps.grid`) at ``cam.size``, as the pipeline's CAM
    stage gives it with the class known."""
    own = dataclasses.replace(cam, top_k=1)
    out = np.zeros((len(grid), cam.size, cam.size), np.float16)
    for start in range(0, len(grid), chunk):
        cams, logits = heads.cam(
            torch.from_numpy(np.asarray(grid[start : start + chunk], np.float32))
        )
        for i, (c, z) in enumerate(zip(cams.numpy(), logits.numpy(), strict=True)):
            out[start + i] = cam_map(c, z, own, int(classes[start + i])).map
    return out


def work_size_cams(data: TrainSplitMaps) -> np.ndarray:
    """(N, W, W) float16: the round-0 CAMs of ``data`` (the CAM ``foreground_cam`` blends)
    upsampled from the head's grid to the work size of ``data.images`` as the pipeline
    upsamples its maps."""
    size = data.images.shape[1]
    out = np.zeros((len(data.cams), size, size), np.float16)
    for i, cam in enumerate(data.cams):
        out[i] = upsample(cam, size, "bilinear")
    return out


def bands(maps: np.ndarray, high: float, low: float, strict: bool) -> np.ndarray:
    """(N, g, g) int8 labels: 1 object, 0 background, -1 ignored."""
    labels = np.full(maps.shape, -1, np.int8)
    if strict:
        labels[maps > high] = 1
        labels[maps < low] = 0
    else:
        labels[maps >= high] = 1
        labels[maps <= low] = 0
    return labels


def fit_head(
    head: ForegroundHead, features: np.ndarray, labels: np.ndarray, cfg: LocalizerConfig
) -> dict:
    """Fit ``head`` (its class-agnostic layer) in place on the labelled cells; stats of the fit."""
    weight, bias, stats = _fit_linear(features, labels, np.arange(len(features)), cfg)
    with torch.no_grad():
        head.fc.weight.copy_(weight[None])
        head.fc.bias.copy_(bias)
    return stats


def fit_class_maps(
    head: ForegroundHead,
    features: np.ndarray,
    labels: np.ndarray,
    classes: np.ndarray,
    cfg: LocalizerConfig,
) -> list[dict]:
    """Fit each class's layer of ``head.class_fc`` in place on the labelled cells of that class's
    images (``classes``: (N,) bundle class index per image); per-class stats."""
    stats = []
    for c in range(head.classes):
        try:
            weight, bias, fitted = _fit_linear(features, labels, np.flatnonzero(classes == c), cfg)
        except ValueError as exc:
            raise ValueError(f"class map {c}: {exc}") from None
        with torch.no_grad():
            head.class_fc.weight[c].copy_(weight)
            head.class_fc.bias[c].copy_(bias[0])
        stats.append(fitted)
    return stats


def labelled_cells(
    features: np.ndarray, labels: np.ndarray, rows: np.ndarray, stride: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The labelled cells (every ``stride``-th per axis) of images ``rows``: float32 features
    (M, D), labels (M,) and each cell's image index (M,), in image order."""
    xs, ys, images = [], [], []
    for start in range(0, len(rows), 64):
        part = rows[start : start + 64]
        y = labels[part, ::stride, ::stride]
        keep = y >= 0
        f = np.asarray(features[part][:, ::stride, ::stride])
        xs.append(f[keep])
        ys.append(y[keep])
        images.append(np.broadcast_to(part[:, None, None], y.shape)[keep])
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32))
    y = torch.from_numpy(np.concatenate(ys).astype(np.float32))
    return x, y, np.concatenate(images)


def _fit_linear(
    features: np.ndarray, labels: np.ndarray, rows: np.ndarray, cfg: LocalizerConfig
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Logistic regression by L-BFGS on the labelled cells of images ``rows``: weight (D,),
    bias (1,), stats."""
    x, y, _ = labelled_cells(features, labels, rows, cfg.cell_stride)
    positive = float(y.mean()) if len(y) else 0.0
    if not 0.0 < positive < 1.0:
        raise ValueError("the pseudo labels hold only one class; widen the bands")
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=cfg.max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def objective() -> torch.Tensor:
        ce = F.binary_cross_entropy_with_logits(x @ weight + bias, y)
        return ce + cfg.l2 * weight.pow(2).sum()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        loss = float(objective())
    return (
        weight.detach(),
        bias.detach(),
        {"cells": len(y), "positive_share": positive, "loss": loss},
    )


@torch.inference_mode()
def predict(
    head: ForegroundHead, features: np.ndarray, classes: np.ndarray | None = None, chunk: int = 64
) -> np.ndarray:
    """(N, g, g) float32 maps of the head on cached features: class-agnostic, or with
    ``classes`` ((N,) class index per image) each image's class map."""
    out = []
    for start in range(0, len(features), chunk):
        f = torch.from_numpy(np.asarray(features[start : start + chunk], dtype=np.float32))
        if classes is None:
            logits = head.fc(f)[..., 0]
        else:
            c = torch.from_numpy(np.asarray(classes[start : start + chunk], dtype=np.int64))
            logits = (f * head.class_fc.weight[c][:, None, None]).sum(-1)
            logits = logits + head.class_fc.bias[c][:, None, None]
        out.append(torch.sigmoid(logits).numpy())
    return np.concatenate(out)


def refined_maps(
    maps: np.ndarray,
    images: np.ndarray,
    arm: ArmConfig,
    threads: int | None,
    *,
    cams: np.ndarray | None = None,
    at_grid: bool = True,
    chunk: int = 32,
) -> np.ndarray:
    """ARM refinement (as the pipeline runs it on the foreground map, or with ``cams``, (N, W,
    W) maps at the work size, on its blend with them, ``arm_input = *_foreground_cam``), at the
    work size of ``images`` or, with ``at_grid``, back at the grid of ``maps``."""
    out = []
    for start in range(0, len(maps), chunk):
        rgb = np.asarray(images[start : start + chunk], dtype=np.float32) / 255.0
        chw = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))
        coarse = maps[start : start + chunk]
        if cams is not None:
            coarse = blend_maps(coarse, np.asarray(cams[start : start + chunk], np.float32))
        refined = np.asarray(refine(coarse, chw, arm, num_threads=threads))
        out.append(_to_grid(refined, maps.shape[-1]) if at_grid else refined)
    return np.concatenate(out)


def self_train(
    head: ForegroundHead,
    data: TrainSplitMaps,
    cfg: LocalizerConfig,
    arm: ArmConfig,
    *,
    classes: np.ndarray | None = None,
    cams: np.ndarray | None = None,
    class_cams: np.ndarray | None = None,
    threads: int | None = None,
    checkpoint: Callable[[str, ForegroundHead], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Round 0 on the CAM bands, then ``cfg.rounds`` rounds on ARM's refinement; with class maps
    in ``head`` (``classes``: (N,) class index per train image), ``cfg.class_rounds`` fits of
    them after, their labels from ARM on the maps blended with ``class_cams`` ((N, W, W), each
    image's class CAM at the work size of ``data.images``: :func:`class_cams`) when given;
    likewise the class-agnostic rounds' labels on the blend with ``cams`` ((N, W, W), the CAM
    the bundle's ``foreground_cam`` blends: :func:`work_size_cams`). Per-round stats;
    ``checkpoint(name, head)`` after each fit (``round{r}``, ``class-round{r}``).

    ``arm`` is the pipeline's ARM (the paper's ``k`` = 50), not the fewer iterations a bundle
    with the head runs on its maps (``MAP_SETTINGS``): the smoother maps are the better labels
    (docs/experiments/2026-12-localizer.md, "ARM and SGRM on the learned localizer's maps")."""
    if head.classes and (classes is None or len(classes) != len(data.features)):
        raise ValueError("a head with class maps needs the class index of every train image")
    for name, given in (("cams", cams), ("class_cams", class_cams)):
        if given is not None and given.shape != data.images.shape[:3]:
            raise ValueError(
                f"{name} must be one work-size map per train image, {data.images.shape[:3]}, "
                f"got {given.shape}"
            )
    class_rounds = cfg.class_rounds if head.classes else 0
    fits = [("round", r, None) for r in range(cfg.rounds + 1)]
    fits += [("class-round", r, classes) for r in range(class_rounds)]
    history = []
    if cfg.cam_source == "graphcut":
        refined = refined_maps(data.cams, data.images, arm, threads)
        labels = bands(refined, cfg.high, cfg.low, strict=False)
    else:
        labels = bands(data.cams, cfg.cam_high, cfg.cam_low, strict=True)
    for step, (kind, round_index, own) in enumerate(
        tqdm(fits, desc="foreground rounds", disable=not progress)
    ):
        if own is None:
            stats = fit_head(head, data.features, labels, cfg)
        else:
            per_class = fit_class_maps(head, data.features, labels, own, cfg)
            stats = {
                "cells": sum(p["cells"] for p in per_class),
                "positive_share": float(np.mean([p["positive_share"] for p in per_class])),
                "loss": float(np.mean([p["loss"] for p in per_class])),
                "classes": len(per_class),
            }
        stats["round"] = round_index
        stats["class_maps"] = own is not None
        stats["ignored_share"] = float((labels < 0).mean())
        history.append(stats)
        if checkpoint is not None:
            checkpoint(f"{kind}{round_index}", head)
        if step < len(fits) - 1:
            blend = class_cams if fits[step + 1][2] is not None else cams
            maps = refined_maps(
                predict(head, data.features, own), data.images, arm, threads, cams=blend
            )
            labels = bands(maps, cfg.high, cfg.low, strict=False)
    return history
