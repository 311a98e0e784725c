"""Masks and boxes: every mask / box helper of the package, in one place for all callers.

A box is ``(x0, y0, x1, y1)`` in inclusive pixel coordinates: a one-pixel box has
``x0 == x1``. Masks are (H, W) arrays whose non-zero pixels are the foreground.

- :func:`connected_components` is the one connected-component routine (OpenCV's labelling,
  8-connected unless asked for 4). Everything below that needs components uses it.
- :func:`component_boxes`: the box of every 8-connected component, largest first.
- :func:`mask_to_box`: one box of a mask, that of its largest component or of all of it (SGRM's
  box).
- :func:`threshold_boxes`: a score map's result at one threshold, as the evaluation scores it.
- :func:`box_scores`: each box's confidence, from the map and the mask it was cut from.
- :func:`box_to_original` / :func:`mask_to_original`: from the work size to the image's pixels.

Not here: the boxes of wsolevaluation (:func:`lcar_deploy.metrics.binary_to_boxes`,
:func:`lcar_deploy.metrics.scoremap_to_boxes`) are the bounding rectangles of OpenCV contours,
hole contours included, ordered by contour area. They are not a connected-component routine
but the evaluation's own definition of the V1 / V2 boxes, and stay as they are in
:mod:`lcar_deploy.metrics`; :func:`threshold_boxes` uses them so that a map method's box is the
box the evaluation scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from .metrics import scoremap_to_boxes

Box = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)``, inclusive pixel coordinates."""

BoxMode = Literal["largest", "all"]
"""Which box :func:`mask_to_box` gives: of the largest component, or of all foreground."""


@dataclass(frozen=True)
class Components:
    """The connected components of a mask, in labelling order.

    Attributes:
        labels: (H, W) int32; 0 is the background, ``i + 1`` marks component ``i``.
        sizes: (n,) int64 pixel count of each component.
        boxes: (n, 4) int64 inclusive ``(x0, y0, x1, y1)`` of each component.
    """

    labels: np.ndarray
    sizes: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.sizes)

    def first_pixels(self) -> np.ndarray:
        """(n,) flat index (``y * W + x``) of each component's first pixel in raster order."""
        flat = self.labels.ravel()
        first = np.full(len(self) + 1, flat.size, dtype=np.int64)
        np.minimum.at(first, flat, np.arange(flat.size, dtype=np.int64))
        return first[1:]

    def largest_first(self) -> np.ndarray:
        """(n,) component indices by decreasing size; equal sizes in raster order of their
        first pixel (the component met first when reading the mask row by row wins)."""
        return np.lexsort((self.first_pixels(), -self.sizes))


def connected_components(mask: np.ndarray, connectivity: Literal[4, 8] = 8) -> Components:
    """Label the connected components of a 2-D mask.

    ``connectivity=8`` joins diagonal neighbours too, ``4`` only the pixels that share a side.
    The labelling order is OpenCV's (``cv2.connectedComponentsWithStats``): it scans the mask
    in 2 x 2 blocks, so it is not always the raster order of the components' first pixels;
    use :meth:`Components.largest_first` for an order that does not depend on it.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if not mask.any():
        empty = np.zeros(0, dtype=np.int64)
        return Components(np.zeros(mask.shape, dtype=np.int32), empty, empty.reshape(0, 4))
    image = np.ascontiguousarray(mask != 0, dtype=np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(image, connectivity=connectivity)
    x, y, w, h, area = stats[1:].astype(np.int64).T
    return Components(labels, area, np.stack([x, y, x + w - 1, y + h - 1], axis=1))


def component_boxes(mask: np.ndarray) -> list[Box]:
    """Boxes of every 8-connected component of a mask, largest first.

    Components of the same size come in raster order of their first pixel.
    """
    components = connected_components(mask)
    return [tuple(int(v) for v in components.boxes[i]) for i in components.largest_first()]


def mask_to_box(mask: np.ndarray, mode: BoxMode = "largest") -> Box | None:
    """One bounding box of a mask.

    Args:
        mask: (H, W) bool or {0, 1}.
        mode: ``"largest"``: box of the largest 8-connected component, ``component_boxes(mask)[0]``
            (by pixel count; among components of the same size, the first in raster order);
            ``"all"``: box of all foreground pixels.

    Returns:
        ``(x0, y0, x1, y1)`` inclusive pixel coordinates, or None when the mask is empty.
    """
    if mode not in ("largest", "all"):
        raise ValueError(f"unknown box mode {mode!r}")
    components = connected_components(mask)
    if not len(components):
        return None
    if mode == "all":
        x0, y0 = components.boxes[:, :2].min(axis=0)
        x1, y1 = components.boxes[:, 2:].max(axis=0)
        return int(x0), int(y0), int(x1), int(y1)
    x0, y0, x1, y1 = components.boxes[int(components.largest_first()[0])]
    return int(x0), int(y0), int(x1), int(y1)


def threshold_boxes(
    score_map: np.ndarray, threshold: float
) -> tuple[Box | None, list[Box], np.ndarray]:
    """A map method's user-facing result at ``threshold``: (V1 box, V2 boxes, mask).

    The boxes are wsolevaluation's (:func:`lcar_deploy.metrics.scoremap_to_boxes`); the mask is
    the map above ``threshold`` times its maximum. An empty mask gives ``(None, [], mask)``.
    """
    v1, v2 = scoremap_to_boxes(score_map, [threshold])
    peak = float(score_map.max())
    mask = score_map > threshold * peak if peak > 0 else np.zeros(score_map.shape, dtype=bool)
    if not mask.any():
        return None, [], mask
    return tuple(v1[0][0].tolist()), [tuple(b) for b in v2[0].tolist()], mask


def box_scores(score_map: np.ndarray, mask: np.ndarray, boxes: list[Box]) -> list[float]:
    """The confidence in [0, 1] of each box cut from ``mask`` (a region of ``score_map``).

    A box's region is the mask inside the box. Its score is the region's *contrast*, the mean
    map value on the region minus the mean off the mask (the background), times its *share*,
    the region's pixels over the mask's: a box stands out when the map is high on it and low
    elsewhere, and when it holds most of what the map found (a speck beside the object scores
    low). Clipped to [0, 1]; an empty region scores 0. Why this rule, and how well it ranks
    good boxes above bad ones: docs/experiments/2026-12-own-datasets.md, "Box scores".
    """
    score_map = np.asarray(score_map, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    total = int(mask.sum())
    if total == 0:
        return [0.0] * len(boxes)
    background = float(score_map[~mask].mean()) if total < mask.size else 0.0
    scores = []
    for x0, y0, x1, y1 in boxes:
        region = mask[y0 : y1 + 1, x0 : x1 + 1]
        count = int(region.sum())
        if count == 0:
            scores.append(0.0)
            continue
        inside = float(score_map[y0 : y1 + 1, x0 : x1 + 1][region].mean())
        value = (inside - background) * count / total
        scores.append(float(min(max(value, 0.0), 1.0)))
    return scores


def box_to_original(box: Box, work_size: int, original_size: tuple[int, int]) -> list[int]:
    """Inclusive work-pixel box -> inclusive box in the original (W, H) image's pixels.

    The result covers every original pixel that the box's work pixels cover: the left / top
    edge rounds down, the right / bottom edge rounds up, clipped to the image.
    """
    sx, sy = original_size[0] / work_size, original_size[1] / work_size
    x0, y0, x1, y1 = box
    return [
        int(np.floor(x0 * sx)),
        int(np.floor(y0 * sy)),
        min(int(np.ceil((x1 + 1) * sx)) - 1, original_size[0] - 1),
        min(int(np.ceil((y1 + 1) * sy)) - 1, original_size[1] - 1),
    ]


def mask_to_original(mask: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Work-size bool mask -> (H, W) bool mask of the original (W, H) image (nearest)."""
    from PIL import Image

    image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(image.resize(original_size, Image.NEAREST)) > 0
