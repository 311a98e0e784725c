"""Frozen-backbone features for training the SD-CAM heads, computed once and cached on disk.

Both heads only need two vectors per image view: the global feature ``g`` (Dg) and the mean of
the grid ``m`` (D). The teacher reads ``concat(g, m)`` (eq. 3); the student's logits are the
global average pool of a per-cell linear map, ``mean_cells(W x + b) = W m + b`` (eq. 5), so
training it on ``m`` is exact. The cache therefore holds (N, V, Dg) and (N, V, D) float32 arrays,
kilobytes per image, whatever the grid size.

Views (the augmentation kept with cached features), for an image of the split:

- view 0: the test-time input, the whole image resized to S x S (no crop, docs/method.md,
  section 1);
- ``flip``: + view 1, view 0 mirrored left-right;
- ``crop``: + views 1 (flip) and ``2 .. 1 + crop_views``: the paper's recipe scaled to S, the
  image resized to ``round(S * 256 / 224)`` square, a random S x S crop, mirrored with
  probability 1/2; the crops are drawn from a generator seeded by (seed, image index, view).

Training draws one view per image per epoch; validation and test use view 0 only.

An image that cannot be decoded is skipped and listed (:attr:`FeatureSet.skipped`) as long as
such images are at most ``max_bad_share`` of the split; past that the split is an error.

The cache file is ``{cache_dir}/{kind}-{split}-{key}.pt``, ``key`` a hash of everything that
changes the features: backbone, input size, grid layer, weights file (path, size, mtime),
dataset kind, root, metadata folder, split, the image ids, and the views.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from tqdm import tqdm

from ..datasets import Dataset, DatasetError
from ..image_io import ImageError, load_rgb, resize_rgb, to_chw_float
from ..io import write_atomic
from ..models.backbones import BackboneConfig
from ..names import AUGMENTS

CACHE_FORMAT_VERSION = 1
CROP_RESIZE_RATIO = 256 / 224


@dataclass(frozen=True)
class ViewSpec:
    """Which views of every image are computed.

    augment: ``none`` (view 0), ``flip`` (+ mirror) or ``crop`` (+ mirror + ``crop_views`` random
        crops of the 256 -> 224 recipe scaled to S). seed: seeds the random crops.
    """

    augment: str = "flip"
    crop_views: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if self.crop_views < 0:
            raise ValueError(f"crop_views must be >= 0, got {self.crop_views}")

    @property
    def num_views(self) -> int:
        return {"none": 1, "flip": 2, "crop": 2 + self.crop_views}[self.augment]


@dataclass(frozen=True)
class FeatureSet:
    """Cached features of one split.

    global_feat: (N, V, Dg) float32; grid_mean: (N, V, D) float32; labels: (N,) int64
    contiguous labels; image_ids: the N ids; path: the cache file. The N images are the
    split's decodable ones; skipped: (image id, reason) of the others.
    """

    global_feat: torch.Tensor
    grid_mean: torch.Tensor
    labels: torch.Tensor
    image_ids: list[str]
    path: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image_ids)


def make_view(rgb: np.ndarray, size: int, view: int, rng_seed: tuple[int, ...]) -> np.ndarray:
    """(H, W, 3) uint8 image -> view ``view`` as (3, S, S) float32 in [0, 1] (module docstring)."""
    if view == 0:
        return to_chw_float(resize_rgb(rgb, size))
    if view == 1:
        return to_chw_float(resize_rgb(rgb, size)[:, ::-1])
    rng = np.random.default_rng(rng_seed)
    big = max(size, round(size * CROP_RESIZE_RATIO))
    resized = resize_rgb(rgb, big)
    top, left = (int(v) for v in rng.integers(0, big - size + 1, size=2))
    crop = resized[top : top + size, left : left + size]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return to_chw_float(crop)


class _ViewImages(TorchDataset):
    """(image index, view) pairs -> (index, view, (3, S, S) tensor, error): an image that
    cannot be decoded gives zeros and its reason ("" for the others)."""

    def __init__(self, paths: list[Path], size: int, views: ViewSpec) -> None:
        self.paths = paths
        self.size = size
        self.views = views
        self.items = [(i, v) for i in range(len(paths)) for v in range(views.num_views)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> tuple[int, int, torch.Tensor, str]:
        index, view = self.items[item]
        try:
            rgb = load_rgb(self.paths[index])
        except ImageError as exc:
            return index, view, torch.zeros(3, self.size, self.size), str(exc)
        image = make_view(rgb, self.size, view, (self.views.seed, index, view))
        return index, view, torch.from_numpy(image), ""


def _weights_identity(weights: str | Path | None) -> str:
    if weights is None:
        return "embedded"
    path = Path(weights).resolve()
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def dataset_identity(dataset: Dataset) -> list[str]:
    """What a cache of ``dataset``'s images depends on: kind, root, metadata folder, split and a
    hash of the image ids."""
    ids = hashlib.sha256("\n".join(r.image_id for r in dataset).encode()).hexdigest()
    return [dataset.kind, str(dataset.root), str(dataset.metadata), dataset.split, ids]


def cache_key(
    dataset: Dataset, backbone: BackboneConfig, weights: str | Path | None, views: ViewSpec
) -> str:
    """Hash of everything the cached features depend on (module docstring)."""
    key = {
        "version": CACHE_FORMAT_VERSION,
        "backbone": backbone.name,
        "input_size": backbone.input_size,
        "grid_layer": backbone.grid_layer,
        "weights": _weights_identity(weights),
        "dataset": dataset_identity(dataset),
        "views": [views.augment, views.crop_views if views.augment == "crop" else 0, views.seed],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@torch.inference_mode()
def compute_features(
    backbone: nn.Module,
    dataset: Dataset,
    input_size: int,
    views: ViewSpec,
    *,
    batch_size: int = 8,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, dict[int, str]]:
    """Run the frozen backbone over every view: (N, V, Dg) global, (N, V, D) grid means and
    {image index: reason} of the images that could not be decoded (their rows are zeros).

    The backbone runs in channels-last memory format (faster on CPU for the depthwise
    convolutions of efficientnet_lite0, and no page-fault storm); small batches (the default
    8) are faster than large ones on CPU for the same reason (timings: docs/experiments/2026-12-speed-and-memory.md,
    "Speed and memory").
    """
    loader = DataLoader(
        _ViewImages([r.path for r in dataset], input_size, views),
        batch_size=batch_size,
        num_workers=workers,
    )
    n, v = len(dataset), views.num_views
    global_feat = grid_mean = torch.empty(0)
    errors: dict[int, str] = {}
    bar = tqdm(
        total=n * v,
        desc=f"features {dataset.kind}/{dataset.split}",
        unit="img",
        disable=not progress,
    )
    backbone = backbone.to(device, memory_format=torch.channels_last)
    with bar:
        for index, view, images, reasons in loader:
            errors.update((int(i), r) for i, r in zip(index, reasons, strict=True) if r)
            out = backbone(images.to(device).contiguous(memory_format=torch.channels_last))
            g, m = out["global"].float().cpu(), out["grid"].float().mean(dim=(1, 2)).cpu()
            if not global_feat.numel():
                global_feat = torch.zeros(n, v, g.shape[1])
                grid_mean = torch.zeros(n, v, m.shape[1])
            global_feat[index, view] = g
            grid_mean[index, view] = m
            bar.update(len(index))
    return global_feat, grid_mean, errors


def cached_features(
    dataset: Dataset,
    backbone_config: BackboneConfig,
    weights: str | Path | None,
    views: ViewSpec,
    cache_dir: Path,
    build: Callable[[], nn.Module],
    *,
    batch_size: int = 8,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
    max_bad_share: float = 0.01,
) -> FeatureSet:
    """Load the split's features from the cache, or compute them with ``build()`` (the frozen
    backbone, built only on a cache miss) and store them (atomically).

    Undecodable images are left out of the returned set and listed in ``skipped``; when they
    are more than ``max_bad_share`` of the split, :class:`DatasetError` names the first few.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(dataset, backbone_config, weights, views)
    path = cache_dir / f"{dataset.kind}-{dataset.split}-{key}.pt"
    ids = [r.image_id for r in dataset]
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("key") == key and payload.get("image_ids") == ids:
            errors = {int(i): r for i, r in payload.get("errors", {}).items()}
            return _decodable(
                dataset, payload["global"], payload["grid_mean"], errors, path, max_bad_share
            )
    global_feat, grid_mean, errors = compute_features(
        build(),
        dataset,
        backbone_config.input_size,
        views,
        batch_size=batch_size,
        workers=workers,
        device=device,
        progress=progress,
    )
    payload = {"key": key, "image_ids": ids, "global": global_feat, "grid_mean": grid_mean}
    payload["errors"] = {str(i): r for i, r in errors.items()}
    write_atomic(path, lambda tmp: torch.save(payload, tmp))
    return _decodable(dataset, global_feat, grid_mean, errors, path, max_bad_share)


def _decodable(
    dataset: Dataset,
    global_feat: torch.Tensor,
    grid_mean: torch.Tensor,
    errors: dict[int, str],
    path: Path,
    max_bad_share: float,
) -> FeatureSet:
    """The feature set without the images in ``errors``; an error past ``max_bad_share``."""
    ids = [r.image_id for r in dataset]
    if len(errors) > max_bad_share * len(ids):
        first = "; ".join(errors[i] for i in sorted(errors)[:3])
        raise DatasetError(
            f"{dataset.kind}/{dataset.split}: {len(errors)} of {len(ids)} images cannot be "
            f"decoded, more than the {max_bad_share:.1%} allowed (e.g. {first})"
        )
    keep = torch.tensor([i not in errors for i in range(len(ids))], dtype=torch.bool)
    return FeatureSet(
        global_feat[keep],
        grid_mean[keep],
        torch.from_numpy(dataset.labels)[keep],
        [image_id for image_id, k in zip(ids, keep.tolist(), strict=True) if k],
        path,
        [(ids[i], errors[i]) for i in sorted(errors)],
    )
