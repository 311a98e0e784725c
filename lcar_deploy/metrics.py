"""Box-localization metrics with the semantics of wsolevaluation (Choe et al., CVPR 2020).

Conventions (docs/method.md, section 8):

* Boxes are integer ``[x0, y0, x1, y1]`` arrays of shape ``(N, 4)``, ``x1 >= x0``, ``y1 >= y0``,
  with *inclusive* corners: a box covers ``(x1 - x0 + 1) * (y1 - y0 + 1)`` pixels, and the
  intersection of two boxes is ``max(0, ...)``-clamped per axis (``+1`` pixel convention).
* Ground-truth boxes are brought to the evaluation size with ``int(x * 224 / W)`` per coordinate
  (:func:`scale_boxes`). An image may have several GT boxes; its IoU is the maximum over them.
* A score map is a float ``(H, W)`` array in ``[0, 1]``. It is cast to ``uint8`` as
  ``(map * 255).astype(uint8)``; at threshold ``t`` the foreground is the pixels whose ``uint8``
  value is ``> int(t * max(uint8 map))`` (``cv2.threshold(..., THRESH_BINARY)``); contours come
  from ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` (hole contours included, as there).
  A contour's box is ``[x, y, min(x + w, W - 1), min(y + h, H - 1)]`` from ``cv2.boundingRect``.
  V1 keeps only the contour of largest ``cv2.contourArea`` (the first one on ties), V2 keeps every
  contour; with no contour the single box ``[0, 0, 0, 0]`` is used.
* MaxBoxAcc(delta) is, over the score-map thresholds ``t`` (default ``[0, 1)`` step ``0.01``), the
  highest percentage of images whose IoU is ``>= delta / 100``; ``delta`` is an integer percent.

Choices this module makes where the reference leaves room (all documented on the accumulator):

* GT-known loc and the paper's GT(delta) use V1 (one box per image, the CAM protocol the paper
  follows); MaxBoxAccV2 uses V2 at delta 30/50/70, as Choe et al. Both versions are reported.
* The best threshold is the lowest ``t`` reaching the maximum.
* Top-1 loc counts an image when its class prediction is right and its V1 IoU at the GT-known best
  threshold is ``>= 0.5``. With a right prediction the predicted class is the GT class, so the GT
  class's map is the map to pass.
* Images without a GT box are not evaluated (neither localization nor classification), and counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import ArrayLike

EVAL_SIZE = 224
"""wsolevaluation's evaluation size: every map and GT box is scored at EVAL_SIZE x EVAL_SIZE."""


def _is_real_dtype(dtype: np.dtype) -> bool:
    """Integer (not bool) or floating dtype."""
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def check_box_convention(boxes: ArrayLike, name: str = "boxes") -> np.ndarray:
    """Validate integer ``x0y0x1y1`` boxes and return them as an ``int64`` array.

    Args:
        boxes: shape ``(4,)`` or ``(N, 4)``; an integer dtype, or floats with integral values.
        name: what the boxes are, for error messages.

    Returns:
        ``int64`` array of shape ``(N, 4)``.

    Raises:
        ValueError: wrong shape, non-finite or non-integral values, negative coordinates, or
            ``x1 < x0`` / ``y1 < y0``.
    """
    arr = np.asarray(boxes)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (4,) or (N, 4); got {np.shape(boxes)}.")
    if not _is_real_dtype(arr.dtype):
        raise ValueError(f"{name} must be integer or float; got dtype {arr.dtype}.")
    if not np.issubdtype(arr.dtype, np.integer) and (
        not np.isfinite(arr).all() or (arr != np.round(arr)).any()
    ):
        raise ValueError(
            f"{name} must hold integer pixel coordinates (scale GT boxes with scale_boxes)."
        )
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise ValueError(f"{name}: coordinates must be non-negative.")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise ValueError(f"{name} do not follow the x0y0x1y1 convention (x1 >= x0, y1 >= y0).")
    return arr


def box_iou(boxes_a: ArrayLike, boxes_b: ArrayLike) -> np.ndarray:
    """Pairwise IoU with inclusive corners (``+1`` pixel) and the intersection clamped at 0.

    Args:
        boxes_a: integer boxes, shape ``(A, 4)`` or ``(4,)``.
        boxes_b: integer boxes, shape ``(B, 4)`` or ``(4,)``.

    Returns:
        ``float64`` array of shape ``(A, B)``. Valid boxes cover at least one pixel, so the union
        is never empty.
    """
    a = check_box_convention(boxes_a, "boxes_a")[:, None, :]
    b = check_box_convention(boxes_b, "boxes_b")[None, :, :]
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter)


def scale_boxes(
    boxes: ArrayLike,
    image_size: tuple[int, int],
    resize_size: tuple[int, int] = (EVAL_SIZE, EVAL_SIZE),
) -> np.ndarray:
    """Bring boxes from the original image to the resized one: ``int(x * new_w / w)`` per value.

    Args:
        boxes: ``x0y0x1y1`` boxes in original pixels, shape ``(4,)`` or ``(N, 4)``; floats allowed
            (CUB's annotations are fractional).
        image_size: original ``(width, height)``.
        resize_size: evaluated ``(width, height)``.

    Returns:
        ``int64`` boxes of shape ``(N, 4)`` (truncated toward zero, as ``int()``).
    """
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (4,) or (N, 4); got {np.shape(boxes)}.")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError("boxes must be finite and non-negative.")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise ValueError("boxes do not follow the x0y0x1y1 convention (x1 >= x0, y1 >= y0).")
    width, height = (float(v) for v in image_size)
    new_width, new_height = (float(v) for v in resize_size)
    if min(width, height, new_width, new_height) <= 0:
        raise ValueError(f"sizes must be positive; got {image_size} -> {resize_size}.")
    factors = np.array([new_width, new_height, new_width, new_height])
    sizes = np.array([width, height, width, height])
    return (arr * factors / sizes).astype(np.int64)


def check_scoremap(scoremap: ArrayLike) -> np.ndarray:
    """Validate a score map and return it as ``float64`` (wsolevaluation evaluates float64 maps).

    Args:
        scoremap: real ``(H, W)`` array with values in ``[0, 1]`` (e.g. a min-max normalised CAM).

    Returns:
        ``float64`` array of shape ``(H, W)``.

    Raises:
        ValueError: not 2-D, empty, NaN or infinite values, or values outside ``[0, 1]``.
    """
    arr = np.asarray(scoremap)
    if not _is_real_dtype(arr.dtype):
        raise ValueError(f"score map must be integer or float; got dtype {arr.dtype}.")
    arr = arr.astype(np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"score map must be a non-empty 2-D (H, W) array; got shape {arr.shape}.")
    if np.isnan(arr).any():
        raise ValueError("score map contains NaN.")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(
            f"score map must be in [0, 1] (min-max normalise it); "
            f"got min {arr.min()}, max {arr.max()}."
        )
    return arr


def cam_threshold_grid(step: float = 0.01) -> np.ndarray:
    """Score-map thresholds ``np.arange(0, 1, step)`` (wsolevaluation's ``cam_curve_interval``)."""
    if not 0.0 < step < 1.0:
        raise ValueError(f"step must be in (0, 1); got {step}.")
    return np.arange(0.0, 1.0, step)


def _check_cam_thresholds(thresholds: ArrayLike) -> np.ndarray:
    """Validate score-map thresholds (non-empty 1-D, in ``[0, 1]``); returns float64 ``(T,)``."""
    arr = np.asarray(thresholds, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence; got shape {arr.shape}.")
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr > 1).any():
        raise ValueError("thresholds must be finite and in [0, 1].")
    return arr


def binary_to_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of a binary mask's contours.

    Args:
        mask: ``(H, W)`` mask; any non-zero pixel is foreground (bool or integer dtype).

    Returns:
        ``(box_v1, boxes_v2)``: ``int64`` arrays of shapes ``(1, 4)`` (the contour of largest
        ``cv2.contourArea``, first on ties) and ``(M, 4)`` (every contour of
        ``RETR_TREE``/``CHAIN_APPROX_SIMPLE``, holes included, largest area first, so
        ``boxes_v2[0]`` is ``box_v1``). Corners are
        ``[x, y, min(x + w, W - 1), min(y + h, H - 1)]``. An empty mask gives ``[[0, 0, 0, 0]]``
        for both.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D (H, W) array; got shape {mask.shape}.")
    return _contour_boxes(np.ascontiguousarray(mask != 0, dtype=np.uint8))


def _contour_boxes(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`binary_to_boxes` of a contiguous ``(H, W)`` uint8 image (non-zero = foreground)."""
    height, width = image.shape
    contours = cv2.findContours(image, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return np.zeros((1, 4), dtype=np.int64), np.zeros((1, 4), dtype=np.int64)
    boxes = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64)
    boxes[:, 2:] += boxes[:, :2]
    np.minimum(boxes[:, 2:], (width - 1, height - 1), out=boxes[:, 2:])
    # Largest contour first (stable, so the first of equal areas leads, as wsolevaluation's
    # argmax): boxes_v2[0] is then the V1 box; the order changes no metric.
    order = np.argsort([-cv2.contourArea(c) for c in contours], kind="stable")
    boxes = boxes[order]
    return boxes[:1], boxes


class _Sweep:
    """The distinct binary masks of one score map over a list of thresholds.

    Thresholds whose foreground is the same pixel set share one contour extraction: with the
    ``uint8`` map the foreground at level ``v`` is ``map > v``, nested in ``v``, so two levels give
    the same mask exactly when they leave the same number of pixels above them.

    Attributes:
        uint8_map: ``(H, W)`` uint8 map.
        levels: ``(U,)`` one integer level per distinct mask.
        inverse: ``(T,)`` index into ``levels`` for every threshold.
    """

    def __init__(self, scoremap: ArrayLike, thresholds: np.ndarray) -> None:
        self.uint8_map = (check_scoremap(scoremap) * 255).astype(np.uint8)
        all_levels = np.floor(thresholds * float(self.uint8_map.max())).astype(np.int64)
        counts = np.bincount(self.uint8_map.ravel(), minlength=256)
        pixels_above = self.uint8_map.size - np.cumsum(counts)
        _, first, self.inverse = np.unique(
            pixels_above[all_levels], return_index=True, return_inverse=True
        )
        self.levels = all_levels[first]

    def boxes(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(box_v1 (1, 4), boxes_v2 (M, 4))`` for every distinct mask, in ``levels`` order."""
        return [
            _contour_boxes(cv2.threshold(self.uint8_map, int(level), 255, cv2.THRESH_BINARY)[1])
            for level in self.levels
        ]


def scoremap_to_boxes(
    scoremap: ArrayLike, thresholds: ArrayLike
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Boxes of a score map at each threshold (wsolevaluation's ``compute_bboxes_from_scoremaps``).

    Args:
        scoremap: ``(H, W)`` floats in ``[0, 1]``.
        thresholds: ``(T,)`` score-map thresholds in ``[0, 1]``.

    Returns:
        ``(boxes_v1, boxes_v2)``: two lists of length ``T`` holding ``int64`` arrays of shapes
        ``(1, 4)`` and ``(M_t, 4)``.
    """
    sweep = _Sweep(scoremap, _check_cam_thresholds(thresholds))
    per_mask = sweep.boxes()
    return [per_mask[i][0] for i in sweep.inverse], [per_mask[i][1] for i in sweep.inverse]


def _best_iou(boxes: list[np.ndarray], gt_boxes: np.ndarray) -> np.ndarray:
    """Per box set, the best IoU of any of its boxes with any GT box.

    Args:
        boxes: ``U`` arrays of shape ``(M_u, 4)``, ``M_u >= 1``.
        gt_boxes: ``(K, 4)``.

    Returns:
        ``(U,)`` float64.
    """
    sizes = np.array([len(b) for b in boxes])
    best_per_box = box_iou(np.concatenate(boxes, axis=0), gt_boxes).max(axis=1)
    return np.maximum.reduceat(best_per_box, np.concatenate([[0], np.cumsum(sizes)[:-1]]))


class BoxAccuracyAccumulator:
    """Streaming box-accuracy evaluation: one image at a time, metrics at the end.

    Per image it keeps only the best IoU (max over GT boxes, and for V2 over contours) at every
    score-map threshold, for V1 and V2: two ``(N, T)`` float64 arrays (``16 * N * T`` bytes: 80 MB
    for 50,000 images and 100 thresholds), from which any delta can be evaluated afterwards.
    Thresholds that leave the same foreground share one ``cv2.findContours``. Two kinds of input, not to be mixed in one accumulator:

    * :meth:`add_scoremap`: a score map swept over ``cam_thresholds`` (CAM, graph cut, ARM);
    * :meth:`add_mask_box`: a method's own mask or box, no sweep (LCAR): ``T = 1``.

    Metric choices (see the module docstring): GT-known and GT(delta) use V1; MaxBoxAccV2 is the
    mean of V2 over ``v2_iou_thresholds``; the best threshold is the lowest reaching the maximum;
    top-1 loc uses V1 at the GT-known best threshold. Accuracies are percentages.

    Args:
        cam_thresholds: score-map thresholds in ``[0, 1]``; ``None`` = ``np.arange(0, 1, 0.01)``.
        iou_thresholds: IoU thresholds (integer percent) reported by :meth:`to_dict`.
        gt_known_iou_threshold: the IoU threshold (percent) of GT-known loc and top-1 loc.
        v2_iou_thresholds: IoU thresholds (percent) averaged by MaxBoxAccV2.
    """

    def __init__(
        self,
        cam_thresholds: ArrayLike | None = None,
        iou_thresholds: Sequence[int] = (30, 50, 70, 80, 90),
        gt_known_iou_threshold: int = 50,
        v2_iou_thresholds: Sequence[int] = (30, 50, 70),
    ) -> None:
        self.cam_thresholds = _check_cam_thresholds(
            cam_threshold_grid() if cam_thresholds is None else cam_thresholds
        )
        self.iou_thresholds = tuple(_check_iou_threshold(d) for d in iou_thresholds)
        self.gt_known_iou_threshold = _check_iou_threshold(gt_known_iou_threshold)
        self.v2_iou_thresholds = tuple(_check_iou_threshold(d) for d in v2_iou_thresholds)
        if not self.iou_thresholds or not self.v2_iou_thresholds:
            raise ValueError("iou_thresholds and v2_iou_thresholds must not be empty.")
        self.num_without_gt = 0
        self._sweep: bool | None = None
        self._rows_v1: list[np.ndarray] = []
        self._rows_v2: list[np.ndarray] = []
        self._cls_correct: list[bool | None] = []
        self._stacked: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ input
    def add_scoremap(
        self, scoremap: ArrayLike, gt_boxes: ArrayLike, cls_correct: bool | None = None
    ) -> bool:
        """Sweep one score map over the thresholds and record its best IoUs.

        Args:
            scoremap: ``(H, W)`` floats in ``[0, 1]`` at the GT boxes' resolution (224x224).
            gt_boxes: integer ``(K, 4)`` boxes in the map's pixels (``K = 0``: image skipped).
            cls_correct: whether the top-1 class prediction is right (for top-1 loc / cls);
                give it for every image or for none.

        Returns:
            ``False`` when the image had no GT box and was only counted, else ``True``.
        """
        gt = self._gt_or_none(gt_boxes)
        if gt is None:
            return False
        self._set_mode(sweep=True)
        sweep = _Sweep(scoremap, self.cam_thresholds)
        per_mask = sweep.boxes()
        iou_v1 = _best_iou([v1 for v1, _ in per_mask], gt)[sweep.inverse]
        iou_v2 = _best_iou([v2 for _, v2 in per_mask], gt)[sweep.inverse]
        self._append(iou_v1, iou_v2, cls_correct)
        return True

    def add_mask_box(
        self,
        gt_boxes: ArrayLike,
        *,
        mask: np.ndarray | None = None,
        boxes: ArrayLike | None = None,
        cls_correct: bool | None = None,
    ) -> bool:
        """Record a method's own output, with no threshold sweep (exactly one of mask / boxes).

        Args:
            gt_boxes: integer ``(K, 4)`` boxes in the output's pixels (``K = 0``: image skipped).
            mask: ``(H, W)`` foreground mask (non-zero = object); boxes from its contours as in
                :func:`binary_to_boxes` (V1 largest contour, V2 all contours).
            boxes: the method's integer boxes ``(M, 4)`` or ``(4,)``: V1 is ``boxes[0]``, V2 all.
            cls_correct: as in :meth:`add_scoremap`.

        Returns:
            ``False`` when the image had no GT box and was only counted, else ``True``.
        """
        if (mask is None) == (boxes is None):
            raise ValueError("give exactly one of mask and boxes.")
        gt = self._gt_or_none(gt_boxes)
        if gt is None:
            return False
        self._set_mode(sweep=False)
        if mask is not None:
            box_v1, boxes_v2 = binary_to_boxes(np.asarray(mask))
        else:
            boxes_v2 = check_box_convention(boxes, "boxes")
            box_v1 = boxes_v2[:1]
        self._append(_best_iou([box_v1], gt), _best_iou([boxes_v2], gt), cls_correct)
        return True

    def _gt_or_none(self, gt_boxes: ArrayLike) -> np.ndarray | None:
        """Validated ``(K, 4)`` GT boxes, or ``None`` (and counted) when there are none."""
        if np.size(gt_boxes) == 0:
            self.num_without_gt += 1
            return None
        return check_box_convention(gt_boxes, "gt_boxes")

    def _set_mode(self, sweep: bool) -> None:
        if self._sweep is None:
            self._sweep = sweep
        elif self._sweep != sweep:
            raise ValueError("do not mix add_scoremap and add_mask_box in one accumulator.")

    def _append(self, iou_v1: np.ndarray, iou_v2: np.ndarray, cls_correct: bool | None) -> None:
        if self._cls_correct and (self._cls_correct[0] is None) != (cls_correct is None):
            raise ValueError("give cls_correct for every image or for none.")
        self._rows_v1.append(iou_v1)
        self._rows_v2.append(iou_v2)
        self._cls_correct.append(None if cls_correct is None else bool(cls_correct))
        self._stacked = None

    # ---------------------------------------------------------------- results
    @property
    def num_images(self) -> int:
        """Images evaluated (those with at least one GT box)."""
        return len(self._rows_v1)

    @property
    def is_sweep(self) -> bool:
        """Whether the inputs were score maps swept over thresholds (else masks / boxes)."""
        self._require_images()
        return bool(self._sweep)

    def ious(self, version: int = 1) -> np.ndarray:
        """Best IoU per image and threshold: ``(N, T)`` float64 (``T = 1`` for masks / boxes)."""
        self._require_images()
        if self._stacked is None:
            self._stacked = (np.stack(self._rows_v1), np.stack(self._rows_v2))
        return self._stacked[_check_version(version) - 1]

    def accuracy_curve(self, iou_threshold: int, version: int = 1) -> np.ndarray:
        """Percentage of images with IoU ``>= iou_threshold / 100`` at each threshold: ``(T,)``."""
        ious = self.ious(version)
        return (ious >= _check_iou_threshold(iou_threshold) / 100).mean(axis=0) * 100.0

    def max_box_acc(self, iou_threshold: int, version: int = 1) -> float:
        """MaxBoxAcc (percent): the accuracy curve's maximum."""
        return float(self.accuracy_curve(iou_threshold, version).max())

    def best_threshold(self, iou_threshold: int, version: int = 1) -> float | None:
        """Lowest score-map threshold reaching MaxBoxAcc; ``None`` for masks / boxes."""
        curve = self.accuracy_curve(iou_threshold, version)
        return float(self.cam_thresholds[int(np.argmax(curve))]) if self.is_sweep else None

    def gt_known(self) -> float:
        """GT-known loc (percent): V1 MaxBoxAcc at ``gt_known_iou_threshold``."""
        return self.max_box_acc(self.gt_known_iou_threshold, version=1)

    def max_box_acc_v2(self) -> float:
        """MaxBoxAccV2 (percent): mean of V2 MaxBoxAcc over ``v2_iou_thresholds``."""
        return float(np.mean([self.max_box_acc(d, version=2) for d in self.v2_iou_thresholds]))

    def top1_cls(self) -> float | None:
        """Top-1 classification accuracy (percent), ``None`` without ``cls_correct``."""
        correct = self._cls_array()
        return None if correct is None else float(correct.mean() * 100.0)

    def top1_loc(self) -> float | None:
        """Top-1 loc (percent): class right and V1 IoU ``>= gt_known`` delta at its best threshold.

        ``None`` without ``cls_correct``.
        """
        correct = self._cls_array()
        if correct is None:
            return None
        delta = self.gt_known_iou_threshold
        column = int(np.argmax(self.accuracy_curve(delta, version=1)))
        localized = self.ious(1)[:, column] >= delta / 100
        return float((localized & correct).mean() * 100.0)

    def to_dict(self, include_curves: bool = False) -> dict:
        """JSON-ready summary for ``metrics.json``.

        Keys: ``num_images``, ``num_without_gt``, ``sweep``, ``gt_known``, ``gt_known_threshold``,
        ``gt`` / ``best_threshold`` (V1 per IoU threshold, the paper's GT(delta)), ``v2`` /
        ``best_threshold_v2`` (V2 per IoU threshold), ``max_box_acc_v2``, ``top1_loc``,
        ``top1_cls``; with ``include_curves`` (sweeps only) also ``cam_thresholds`` and
        ``curves`` = ``{"v1": {delta: [T]}, "v2": {...}}``.
        """
        deltas = sorted({*self.iou_thresholds, *self.v2_iou_thresholds})
        out: dict = {
            "num_images": self.num_images,
            "num_without_gt": self.num_without_gt,
            "sweep": self.is_sweep,
            "gt_known": self.gt_known(),
            "gt_known_threshold": self.best_threshold(self.gt_known_iou_threshold, 1),
            "gt": {str(d): self.max_box_acc(d, 1) for d in self.iou_thresholds},
            "best_threshold": {str(d): self.best_threshold(d, 1) for d in self.iou_thresholds},
            "v2": {str(d): self.max_box_acc(d, 2) for d in deltas},
            "best_threshold_v2": {str(d): self.best_threshold(d, 2) for d in deltas},
            "max_box_acc_v2": self.max_box_acc_v2(),
            "top1_loc": self.top1_loc(),
            "top1_cls": self.top1_cls(),
        }
        if include_curves and self.is_sweep:
            out["cam_thresholds"] = self.cam_thresholds.tolist()
            out["curves"] = {
                f"v{v}": {str(d): self.accuracy_curve(d, v).tolist() for d in deltas}
                for v in (1, 2)
            }
        return out

    def _cls_array(self) -> np.ndarray | None:
        self._require_images()
        if self._cls_correct[0] is None:
            return None
        return np.array(self._cls_correct, dtype=bool)

    def _require_images(self) -> None:
        if not self._rows_v1:
            raise ValueError(
                f"no image with a GT box was added ({self.num_without_gt} without GT boxes)."
            )


def _check_iou_threshold(delta: int) -> int:
    """An IoU threshold in integer percent, ``1..100``."""
    if isinstance(delta, bool) or not isinstance(delta, (int, np.integer)) or not 0 < delta <= 100:
        raise ValueError(f"IoU thresholds are integer percents in 1..100; got {delta!r}.")
    return int(delta)


def _check_version(version: int) -> int:
    if version not in (1, 2):
        raise ValueError(f"version must be 1 (largest contour) or 2 (all contours); got {version}.")
    return version
