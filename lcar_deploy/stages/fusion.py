"""ARM's map fused with the graph cut where the two agree.

A trained bundle's ARM map ``A`` (its learned localizer and class CAM, refined) finds the
object in almost every image, but its edges are soft; the graph cut on a self-supervised ViT's
keys (DINOv2's) misses the object in some images and, where it finds it, follows its outline.
Per image, with ``G`` the graph cut's eigenvector map at work size, min-max scaled:

1. the two foregrounds: ``A >= arm_threshold`` (the pipeline's ``box_threshold`` unless set)
   and ``G >= cut_threshold``; the cut's side is the one (``G``'s foreground or the rest)
   whose IoU with ``A``'s is larger, and ``G`` is flipped to ``1 - G`` when it is the rest;
2. ``agreement`` = that IoU;
3. ``F = (1 - weight) A + weight G`` when ``agreement >= min_agreement``, else ``A``.

Where the cut found another region than ``A`` the image keeps ``A``; where both found the
object the cut's outline sharpens it. Why these values: docs/method.md, section 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config_check import check_fields, check_range


@dataclass(frozen=True)
class FusionConfig:
    """Settings of the fusion of ARM's map with the graph cut (:func:`fuse`).

    weight: the graph cut's share of the fused map where the two agree, in [0, 1]; 0: off (the
        ARM map as is). Bundles whose graph cut comes from DINOv2 record 0.5.
    min_agreement: the IoU of the two foregrounds from which an image is fused, in [0, 1].
    cut_threshold: the graph cut map's foreground threshold for that IoU, in (0, 1).
    arm_threshold: the ARM map's foreground threshold for that IoU, in [0, 1); 0: the
        pipeline's ``box_threshold``. ``lcar-deploy calibrate`` sets it to the box threshold it
        measured the fused maps with, so that a calibrated box threshold does not change them.
    """

    weight: float = 0.0
    min_agreement: float = 0.4
    cut_threshold: float = 0.2
    arm_threshold: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self)
        check_range(self, "weight", 0.0, 1.0)
        check_range(self, "min_agreement", 0.0, 1.0)
        check_range(self, "cut_threshold", 0.0, 1.0, low_open=True, high_open=True)
        check_range(self, "arm_threshold", 0.0, 1.0, high_open=True)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def oriented_agreement(
    arm_map: np.ndarray, cut_map: np.ndarray, arm_threshold: float, cut_threshold: float
) -> tuple[np.ndarray, float]:
    """``cut_map`` turned to the side of the cut that agrees with ``arm_map`` (steps 1-2 of the
    module docstring) and that agreement, the IoU of the two foregrounds."""
    fg = arm_map >= arm_threshold
    cut_fg = cut_map >= cut_threshold
    same, flipped = _iou(fg, cut_fg), _iou(fg, ~cut_fg)
    if flipped > same:
        return 1.0 - cut_map, flipped
    return cut_map, same


def fuse(
    arm_maps: np.ndarray, cut_maps: np.ndarray, config: FusionConfig, box_threshold: float
) -> np.ndarray:
    """The fused maps (B, H, W) float32 of ARM's maps and the graph cut's, both (B, H, W) in
    [0, 1] (the module docstring); ``arm_maps`` unchanged where ``config.weight`` is 0.
    ``box_threshold``: the pipeline's, the ARM map's foreground threshold unless
    ``config.arm_threshold`` is set."""
    arm_maps = np.asarray(arm_maps, dtype=np.float32)
    if config.weight == 0:
        return arm_maps
    arm_threshold = config.arm_threshold or box_threshold
    fused = []
    for arm_map, cut_map in zip(arm_maps, np.asarray(cut_maps, dtype=np.float32), strict=True):
        cut_map, agreement = oriented_agreement(
            arm_map, cut_map, arm_threshold, config.cut_threshold
        )
        if agreement >= config.min_agreement:
            arm_map = (1.0 - config.weight) * arm_map + config.weight * cut_map
        fused.append(arm_map)
    return np.stack(fused).astype(np.float32)
