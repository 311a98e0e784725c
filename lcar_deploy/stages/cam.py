"""SD-CAM maps and seeds from a bundle's ``cams`` output (eq. 2; docs/method.md, section 2).

The bundle gives ``cams`` (B, C, h, w): the CAM head applied to every grid cell, and ``logits``
(B, C): the classifier (MLP head, or the backbone's own classifier without trained heads).
For one image:

1. pick the map: the class of :func:`select_class` (the GT class for GT-known, else the
   classifier's prediction) or, with ``top_k > 1``, the softmax-weighted sum of the maps of the
   ``top_k`` most probable classes (beyond the paper: useful when the classifier's classes are
   not the dataset's, e.g. the embedded ImageNet classifier on CUB; the GT class is then not used);
2. upsample the (h, w) map to ``size`` x ``size`` (cubic as wsolevaluation's ``cv2.resize``, or
   bilinear), then min-max normalise it to [0, 1] (wsolevaluation's order: resize, normalise);
3. seed ``M_seed = M > beta`` (eq. 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from ..config_check import check_fields, check_range

Interpolation = Literal["cubic", "bilinear"]
INTERPOLATIONS = {"cubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}


@dataclass(frozen=True)
class CamConfig:
    """Settings of the SD-CAM map and seed.

    beta: seed threshold on the min-max normalised map, eq. 2 (paper 0.6).
    size: side of the output map in pixels (evaluation at 224).
    interpolation: ``cubic`` (as wsolevaluation's ``cv2.resize`` for CAMs) or ``bilinear``
        (half-pixel centres, as ``cv2.INTER_LINEAR`` and torch's ``align_corners=False``).
    top_k: 1 = the map of one class; k > 1 = softmax-weighted top-k classes (beyond the
        paper, docs/method.md, section 2), with the softmax of the logits restricted to the
        k classes and renormalised to sum 1.
    """

    beta: float = 0.6
    size: int = 224
    interpolation: Interpolation = "cubic"
    top_k: int = 1

    def __post_init__(self) -> None:
        check_fields(self)
        check_range(self, "beta", 0.0, 1.0)
        check_range(self, "size", 1)
        check_range(self, "top_k", 1)


@dataclass(frozen=True)
class CamResult:
    """map: (size, size) float64 in [0, 1]; seed: (size, size) bool (eq. 2);
    classes: the class indices used; weights: their weights (sum 1)."""

    map: np.ndarray
    seed: np.ndarray
    classes: np.ndarray
    weights: np.ndarray


def minmax_normalize(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] as float64; a constant (or empty-range) map becomes all zeros."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def upsample(values: np.ndarray, size: int | tuple[int, int], interpolation: str) -> np.ndarray:
    """(h, w) map -> (H, W) float64 with cv2 (``size`` int = square, tuple = (H, W))."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}")
    height, width = (size, size) if isinstance(size, int) else size
    values = np.ascontiguousarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"map must be (h, w), got shape {values.shape}")
    return cv2.resize(values, (width, height), interpolation=INTERPOLATIONS[interpolation])


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def select_class(logits: np.ndarray, gt_index: int | None = None) -> int:
    """The map's class: ``gt_index`` when given (GT-known), else argmax of ``logits`` (C,)."""
    return int(np.argmax(logits)) if gt_index is None else int(gt_index)


def class_weights(
    logits: np.ndarray, top_k: int, gt_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(classes (k,), weights (k,)) of the map: one class with weight 1 when ``top_k == 1``,
    else the ``top_k`` most probable classes, softmax restricted to them and renormalised."""
    logits = np.asarray(logits, dtype=np.float64)
    if top_k == 1:
        return np.array([select_class(logits, gt_index)]), np.ones(1)
    classes = np.argsort(-logits, kind="stable")[:top_k]
    probs = softmax(logits)[classes]
    return classes, probs / probs.sum()


def cam_map(
    cams: np.ndarray,
    logits: np.ndarray,
    config: CamConfig | None = None,
    gt_index: int | None = None,
) -> CamResult:
    """SD-CAM map and seed of one image.

    Args:
        cams: (C, h, w) raw class activation maps (the bundle's ``cams`` for one image).
        logits: (C,) classifier logits, used for the predicted class and the top-k weights.
        config: see :class:`CamConfig` (default: the paper's settings).
        gt_index: output index of the GT class (GT-known); ignored when ``top_k > 1``.

    Returns:
        :class:`CamResult` with the (size, size) map in [0, 1] and the seed ``map > beta``.
    """
    config = config or CamConfig()
    cams = np.asarray(cams, dtype=np.float64)
    if cams.ndim != 3:
        raise ValueError(f"cams must be (C, h, w), got shape {cams.shape}")
    if np.shape(logits) != cams.shape[:1]:
        raise ValueError(f"logits must be ({cams.shape[0]},), got shape {np.shape(logits)}")
    if gt_index is not None and not 0 <= gt_index < cams.shape[0]:
        raise ValueError(f"gt_index {gt_index} is outside 0..{cams.shape[0] - 1}")
    classes, weights = class_weights(logits, min(config.top_k, cams.shape[0]), gt_index)
    raw = np.tensordot(weights, cams[classes], axes=1)
    scaled = minmax_normalize(upsample(raw, config.size, config.interpolation))
    return CamResult(scaled, scaled > config.beta, classes, weights)
