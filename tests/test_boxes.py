"""Mask and box helpers (lcar_deploy/boxes.py), on masks small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lcar_deploy.boxes import (
    box_to_original,
    component_boxes,
    connected_components,
    mask_to_box,
    mask_to_original,
    threshold_boxes,
)


def two_tied_pairs() -> np.ndarray:
    """Two 2-pixel components: A at row 0 (x 5..6), B at row 1 (x 0..1).

    A comes first in raster order; OpenCV's labelling meets B first (it scans 2 x 2 blocks, and
    B's block is the first one on rows 0-1).
    """
    mask = np.zeros((3, 8), dtype=bool)
    mask[0, 5:7] = True
    mask[1, 0:2] = True
    return mask


# ------------------------------------------------------------------------ connected_components


def test_components_labels_sizes_and_boxes() -> None:
    mask = two_tied_pairs()
    components = connected_components(mask)
    assert len(components) == 2
    assert components.sizes.tolist() == [2, 2]
    assert components.boxes.tolist() == [[0, 1, 1, 1], [5, 0, 6, 0]]  # OpenCV's order: B, A
    assert components.first_pixels().tolist() == [8, 5]  # B at y 1 x 0, A at y 0 x 5
    assert components.largest_first().tolist() == [1, 0]  # raster order on the tie: A first
    assert set(np.unique(components.labels[mask])) == {1, 2}
    assert not components.labels[~mask].any()


def test_diagonal_neighbours_join_only_with_8_connectivity() -> None:
    mask = np.eye(3, dtype=bool)
    assert connected_components(mask).boxes.tolist() == [[0, 0, 2, 2]]
    four = connected_components(mask, connectivity=4)
    assert four.boxes.tolist() == [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]]
    assert four.sizes.tolist() == [1, 1, 1]


def test_empty_and_bad_masks() -> None:
    for mask in (np.zeros((4, 5), dtype=bool), np.zeros((0, 3), dtype=bool)):
        components = connected_components(mask)
        assert len(components) == 0
        assert components.boxes.shape == (0, 4)
        assert components.labels.shape == mask.shape
        assert components.largest_first().tolist() == []
    with pytest.raises(ValueError, match="2-D"):
        connected_components(np.ones((2, 2, 2), dtype=bool))


# ------------------------------------------------------------------------------ component_boxes


def test_component_boxes_largest_first() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:3, 1:3] = True
    mask[5:9, 4:11] = True
    mask[0, 11] = True
    assert component_boxes(mask) == [(4, 5, 10, 8), (1, 1, 2, 2), (11, 0, 11, 0)]
    assert component_boxes(np.zeros((4, 4), dtype=bool)) == []


def test_component_boxes_ties_in_raster_order() -> None:
    assert component_boxes(two_tied_pairs()) == [(5, 0, 6, 0), (0, 1, 1, 1)]
    # One-pixel components, all tied: row by row, left to right.
    mask = np.zeros((3, 3), dtype=bool)
    mask[2, 0] = mask[0, 2] = mask[0, 0] = True
    assert component_boxes(mask) == [(0, 0, 0, 0), (2, 0, 2, 0), (0, 2, 0, 2)]


def test_component_boxes_join_diagonal_neighbours() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # one diagonal line of 3
    mask[4, 4] = True
    assert component_boxes(mask) == [(0, 0, 2, 2), (4, 4, 4, 4)]
    assert all(isinstance(v, int) for box in component_boxes(mask) for v in box)


# ---------------------------------------------------------------------------------- mask_to_box


def test_mask_to_box_largest_vs_all() -> None:
    mask = np.zeros((60, 80), dtype=bool)
    mask[5:15, 10:30] = True  # 200 px
    mask[40:42, 50:53] = True  # 6 px
    assert mask_to_box(mask, "largest") == (10, 5, 29, 14)
    assert mask_to_box(mask, "all") == (10, 5, 52, 41)
    # Diagonal neighbours belong to the same (8-connected) component.
    mask[15, 30] = True
    mask[16, 31] = True
    assert mask_to_box(mask, "largest") == (10, 5, 31, 16)
    assert mask_to_box(mask.astype(np.uint8), "largest") == (10, 5, 31, 16)


def test_mask_to_box_empty_and_single_pixel() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    assert mask_to_box(mask, "largest") is None
    assert mask_to_box(mask, "all") is None
    mask[3, 7] = True
    assert mask_to_box(mask, "largest") == (7, 3, 7, 3)
    assert mask_to_box(mask, "all") == (7, 3, 7, 3)
    with pytest.raises(ValueError):
        mask_to_box(mask, "biggest")  # type: ignore[arg-type]


def test_mask_to_box_ties_go_to_the_first_in_raster_order() -> None:
    """SGRM's box on a tie is ``component_boxes``' first box (A), whatever OpenCV's labelling
    order (B first), so an lcar result's ``box`` is always its ``boxes[0]``."""
    mask = two_tied_pairs()
    assert mask_to_box(mask, "largest") == (5, 0, 6, 0) == component_boxes(mask)[0]
    assert mask_to_box(mask, "all") == (0, 0, 6, 1)
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = rng.random((12, 12)) < 0.3
        assert mask_to_box(mask, "largest") == component_boxes(mask)[0]


# ------------------------------------------------------------------------------ threshold_boxes


def test_threshold_boxes_are_the_evaluations_boxes() -> None:
    score_map = np.zeros((224, 224))
    score_map[10:20, 30:50] = 1.0  # x 30..49, y 10..19
    score_map[100:102, 100:101] = 0.6
    box, boxes, mask = threshold_boxes(score_map, 0.5)
    # wsolevaluation's box: the contour's boundingRect (x, y, w, h) -> [x, y, x + w, y + h].
    assert box == (30, 10, 50, 20)
    assert boxes == [(30, 10, 50, 20), (100, 100, 101, 102)]
    assert mask.sum() == 200 + 2 and mask[10:20, 30:50].all()
    # The threshold is relative to the map's maximum.
    box, boxes, mask = threshold_boxes(score_map * 0.5, 0.5)
    assert box == (30, 10, 50, 20) and mask.sum() == 202


def test_threshold_boxes_of_an_empty_map() -> None:
    box, boxes, mask = threshold_boxes(np.zeros((224, 224)), 0.5)
    assert box is None and boxes == []
    assert mask.shape == (224, 224) and mask.dtype == bool and not mask.any()


# ------------------------------------------------------------------ back to the image's pixels


def test_box_to_original_covers_the_same_pixels() -> None:
    assert box_to_original((0, 0, 223, 223), 224, (448, 112)) == [0, 0, 447, 111]
    assert box_to_original((56, 112, 111, 167), 224, (448, 448)) == [112, 224, 223, 335]
    assert box_to_original((10, 10, 10, 10), 224, (100, 100)) == [4, 4, 4, 4]
    # Work 4 -> 8 pixels: each work pixel is two original ones.
    assert box_to_original((1, 1, 2, 2), 4, (8, 8)) == [2, 2, 5, 5]
    # Work 4 -> 2: work pixel 1 is half of original pixel 0, pixels 1..2 touch both.
    assert box_to_original((1, 0, 1, 0), 4, (2, 2)) == [0, 0, 0, 0]
    assert box_to_original((1, 0, 2, 0), 4, (2, 2)) == [0, 0, 1, 0]
    # Work 4 -> 6: the last work pixel ends on the last original pixel.
    assert box_to_original((3, 3, 3, 3), 4, (6, 6)) == [4, 4, 5, 5]


def test_box_to_original_holds_the_mask_to_original_of_the_box() -> None:
    """The original-pixel box holds every pixel that the box's mask resizes to."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        work = int(rng.integers(1, 40))
        size = (int(rng.integers(1, 120)), int(rng.integers(1, 120)))
        x0, x1 = sorted(int(v) for v in rng.integers(0, work, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, work, 2))
        mask = np.zeros((work, work), dtype=bool)
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
        ox0, oy0, ox1, oy1 = box_to_original((x0, y0, x1, y1), work, size)
        assert 0 <= ox0 <= ox1 < size[0] and 0 <= oy0 <= oy1 < size[1]
        big = mask_to_original(mask, size)
        outside = big.copy()
        outside[oy0 : oy1 + 1, ox0 : ox1 + 1] = False
        assert not outside.any()


def test_mask_to_original_size_and_orientation() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[0:2, 2:4] = True  # the top right quarter
    big = mask_to_original(mask, (8, 2))  # (W, H) in, (H, W) out
    assert big.shape == (2, 8) and big.dtype == bool
    np.testing.assert_array_equal(big, [[0, 0, 0, 0, 1, 1, 1, 1], [0] * 8])
    tall = mask_to_original(mask, (2, 8))
    assert tall.shape == (8, 2)
    np.testing.assert_array_equal(tall, [[0, 1]] * 4 + [[0, 0]] * 4)
    assert mask_to_original(mask, (4, 4)).tolist() == mask.tolist()


def test_box_scores_rank_a_standing_out_object_above_a_speck_and_a_flat_map() -> None:
    from lcar_deploy.boxes import box_scores

    score_map = np.full((50, 50), 0.1, np.float32)
    score_map[10:30, 10:30] = 0.9  # the object: 400 pixels
    score_map[40:42, 40:42] = 0.9  # a speck: 4 pixels
    mask = score_map > 0.5
    obj, speck = box_scores(score_map, mask, [(10, 10, 29, 29), (40, 40, 41, 41)])
    # (0.9 - 0.1) * share: 400 / 404 and 4 / 404 of the mask
    assert obj == pytest.approx(0.8 * 400 / 404) and speck == pytest.approx(0.8 * 4 / 404)
    assert box_scores(score_map, mask, [(0, 0, 5, 5)]) == [0.0]  # no mask pixel in the box
    flat = np.full((50, 50), 0.5, np.float32)
    assert box_scores(flat, flat > 0.4, [(0, 0, 49, 49)]) == [pytest.approx(0.5)]
    assert box_scores(flat, np.zeros((50, 50), bool), [(0, 0, 1, 1)]) == [0.0]
    faint = score_map * 0.1 + 0.45  # the same shapes, hardly above the background
    (weak,) = box_scores(faint, mask, [(10, 10, 29, 29)])
    assert weak == pytest.approx(obj * 0.1, rel=1e-4) and weak < 0.1
