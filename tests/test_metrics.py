"""Box metrics (wsolevaluation semantics): hand-computed boxes, IoUs and accuracies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lcar_deploy.metrics import (
    BoxAccuracyAccumulator,
    binary_to_boxes,
    box_iou,
    cam_threshold_grid,
    check_box_convention,
    check_scoremap,
    scale_boxes,
    scoremap_to_boxes,
)

SIZE = 224


def uint8_levels(levels: np.ndarray) -> np.ndarray:
    """A float score map whose ``uint8`` cast is exactly ``levels`` (values ``(u + 0.5) / 255``)."""
    return (levels.astype(np.float64) + 0.5) / 255.0


def rect_map(value_rects: list[tuple[float, int, int, int, int]]) -> np.ndarray:
    """A 224x224 map, zero but for ``value`` on pixels ``x0..x1-1``, ``y0..y1-1`` (in order)."""
    scoremap = np.zeros((SIZE, SIZE))
    for value, x0, y0, x1, y1 in value_rects:
        scoremap[y0:y1, x0:x1] = value
    return scoremap


# ---------------------------------------------------------------------------------------- IoU
class TestBoxIou:
    def test_identical_and_single_pixel(self) -> None:
        assert box_iou([0, 0, 9, 9], [0, 0, 9, 9])[0, 0] == 1.0
        assert box_iou([3, 3, 3, 3], [3, 3, 3, 3])[0, 0] == 1.0

    def test_partial_overlap_inclusive(self) -> None:
        # 10x10 boxes (inclusive corners), 5x5 overlap: 25 / (100 + 100 - 25)
        assert box_iou([0, 0, 9, 9], [5, 5, 14, 14])[0, 0] == pytest.approx(25 / 175)

    def test_disjoint_is_zero(self) -> None:
        assert box_iou([0, 0, 4, 4], [10, 10, 14, 14])[0, 0] == 0.0
        # disjoint in x only: the clamp stops a negative width times a positive height
        assert box_iou([0, 0, 4, 4], [10, 0, 14, 4])[0, 0] == 0.0

    def test_touching(self) -> None:
        # adjacent columns 0..4 and 5..9: no shared pixel
        assert box_iou([0, 0, 4, 4], [5, 0, 9, 4])[0, 0] == 0.0
        # sharing column 4 (inclusive): 5 pixels / (25 + 25 - 5)
        assert box_iou([0, 0, 4, 4], [4, 0, 8, 4])[0, 0] == pytest.approx(5 / 45)

    def test_contained(self) -> None:
        assert box_iou([0, 0, 9, 9], [2, 2, 5, 5])[0, 0] == pytest.approx(16 / 100)

    def test_pairwise_shape(self) -> None:
        ious = box_iou([[0, 0, 9, 9], [0, 0, 4, 4]], [[0, 0, 9, 9], [5, 5, 14, 14], [0, 0, 4, 4]])
        expected = [[1.0, 25 / 175, 25 / 100], [25 / 100, 0.0, 1.0]]
        np.testing.assert_allclose(ious, expected)


class TestCheckBoxConvention:
    def test_returns_int64_n_by_4(self) -> None:
        boxes = check_box_convention(np.array([1.0, 2.0, 3.0, 4.0]))
        assert boxes.dtype == np.int64
        np.testing.assert_array_equal(boxes, [[1, 2, 3, 4]])

    @pytest.mark.parametrize(
        ("boxes", "message"),
        [
            ([-1, 0, 3, 3], "non-negative"),
            ([5, 0, 3, 3], "x0y0x1y1"),
            ([0, 5, 3, 3], "x0y0x1y1"),
            ([0, 0, 3], "shape"),
            ([[[0, 0, 3, 3]]], "shape"),
            ([0.5, 0, 3, 3], "integer"),
            ([np.nan, 0, 3, 3], "integer"),
            (np.array([True, False, True, True]), "integer or float"),
        ],
    )
    def test_rejects(self, boxes: object, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            check_box_convention(boxes)


class TestScaleBoxes:
    def test_int_truncation(self) -> None:
        # 100*224/500 = 44.8, 50*224/300 = 37.3, 499*224/500 = 223.6, 299*224/300 = 223.3
        np.testing.assert_array_equal(
            scale_boxes([100, 50, 499, 299], (500, 300)), [[44, 37, 223, 223]]
        )

    def test_fractional_cub_box_and_several_boxes(self) -> None:
        # 38.4*0.7 = 26.88, 17.3*224/240 = 16.15, 246.4*0.7 = 172.48, 211.9*224/240 = 197.77
        boxes = [[38.4, 17.3, 246.4, 211.9], [0, 0, 320, 240]]
        np.testing.assert_array_equal(
            scale_boxes(boxes, (320, 240)), [[26, 16, 172, 197], [0, 0, 224, 224]]
        )

    def test_other_target_size(self) -> None:
        np.testing.assert_array_equal(
            scale_boxes([10, 10, 20, 20], (100, 50), (50, 100)), [[5, 20, 10, 40]]
        )

    def test_rejects_bad_input(self) -> None:
        with pytest.raises(ValueError, match="non-negative"):
            scale_boxes([-1, 0, 3, 3], (10, 10))
        with pytest.raises(ValueError, match="positive"):
            scale_boxes([0, 0, 3, 3], (0, 10))


# ------------------------------------------------------------------------------ map -> boxes
class TestBinaryToBoxes:
    def test_rectangle(self) -> None:
        mask = np.zeros((SIZE, SIZE), bool)
        mask[10:20, 30:50] = True  # x 30..49, y 10..19: boundingRect (30, 10, 20, 10)
        v1, v2 = binary_to_boxes(mask)
        np.testing.assert_array_equal(v1, [[30, 10, 50, 20]])
        np.testing.assert_array_equal(v2, [[30, 10, 50, 20]])

    def test_border_clamped_to_223(self) -> None:
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[200:, 210:] = 1  # x + w = 224, y + h = 224 -> clamped to 223
        np.testing.assert_array_equal(binary_to_boxes(mask)[0], [[210, 200, 223, 223]])
        np.testing.assert_array_equal(binary_to_boxes(np.ones((SIZE, SIZE)))[0], [[0, 0, 223, 223]])

    def test_clamp_uses_map_size(self) -> None:
        np.testing.assert_array_equal(binary_to_boxes(np.ones((30, 40)))[0], [[0, 0, 39, 29]])

    def test_empty_mask(self) -> None:
        v1, v2 = binary_to_boxes(np.zeros((SIZE, SIZE)))
        np.testing.assert_array_equal(v1, [[0, 0, 0, 0]])
        np.testing.assert_array_equal(v2, [[0, 0, 0, 0]])

    def test_two_blobs_v1_largest_v2_all(self) -> None:
        mask = np.zeros((SIZE, SIZE), bool)
        mask[10:40, 10:60] = True  # big: [10, 10, 60, 40]
        mask[100:110, 150:160] = True  # small: [150, 100, 160, 110]
        v1, v2 = binary_to_boxes(mask)
        np.testing.assert_array_equal(v1, [[10, 10, 60, 40]])
        assert sorted(map(tuple, v2.tolist())) == [(10, 10, 60, 40), (150, 100, 160, 110)]

    def test_v2_largest_first_so_v1_leads(self) -> None:
        mask = np.zeros((SIZE, SIZE), bool)
        mask[5:55, 20:120] = True  # large, at the top: cv2 traces it last
        mask[200:205, 5:10] = True
        mask[100:120, 150:170] = True
        v1, v2 = binary_to_boxes(mask)
        np.testing.assert_array_equal(
            v2, [[20, 5, 120, 55], [150, 100, 170, 120], [5, 200, 10, 205]]
        )
        np.testing.assert_array_equal(v2[:1], v1)

    def test_hole_contour_counts_in_v2(self) -> None:
        mask = np.zeros((SIZE, SIZE), bool)
        mask[10:50, 10:50] = True
        mask[20:40, 20:40] = False  # hole; RETR_TREE traces it on the pixels around it (19..40)
        v1, v2 = binary_to_boxes(mask)
        np.testing.assert_array_equal(v1, [[10, 10, 50, 50]])
        assert sorted(map(tuple, v2.tolist())) == [(10, 10, 50, 50), (19, 19, 41, 41)]


class TestScoremapToBoxes:
    def test_two_levels(self) -> None:
        # A = 1.0 (uint8 255) x 20..99, y 20..59; B = 0.6 (uint8 153) x 150..169, y 150..169
        scoremap = rect_map([(1.0, 20, 20, 100, 60), (0.6, 150, 150, 170, 170)])
        v1, v2 = scoremap_to_boxes(scoremap, [0.5, 0.7])  # levels 127 (A and B), 178 (A)
        np.testing.assert_array_equal(v1[0], [[20, 20, 100, 60]])
        assert sorted(map(tuple, v2[0].tolist())) == [(20, 20, 100, 60), (150, 150, 170, 170)]
        np.testing.assert_array_equal(v1[1], [[20, 20, 100, 60]])
        np.testing.assert_array_equal(v2[1], [[20, 20, 100, 60]])

    def test_strictly_greater_than_floor_of_t_max(self) -> None:
        levels = np.zeros((SIZE, SIZE), np.int64)
        levels[0:10, 0:10] = 200  # max
        levels[50:60, 50:60] = 100  # == floor(0.5 * 200): excluded at t = 0.5
        levels[100:110, 100:110] = 101  # included at t = 0.5
        _, v2 = scoremap_to_boxes(uint8_levels(levels), [0.5, 0.495])
        assert sorted(map(tuple, v2[0].tolist())) == [(0, 0, 10, 10), (100, 100, 110, 110)]
        assert len(v2[1]) == 3  # floor(0.495 * 200) = 98: all three squares

    def test_all_zero_map(self) -> None:
        v1, v2 = scoremap_to_boxes(np.zeros((SIZE, SIZE)), cam_threshold_grid())
        assert len(v1) == len(v2) == 100
        assert all(np.array_equal(b, [[0, 0, 0, 0]]) for b in v1 + v2)

    def test_constant_maps(self) -> None:
        v1, _ = scoremap_to_boxes(np.full((SIZE, SIZE), 0.5), cam_threshold_grid())
        assert all(np.array_equal(b, [[0, 0, 223, 223]]) for b in v1)
        # 0.003 * 255 < 1: the uint8 map is all zero, no contour at any threshold
        v1, _ = scoremap_to_boxes(np.full((SIZE, SIZE), 0.003), cam_threshold_grid())
        assert all(np.array_equal(b, [[0, 0, 0, 0]]) for b in v1)

    def test_shared_masks_match_per_threshold_contours(self) -> None:
        yy, xx = np.mgrid[:SIZE, :SIZE]
        scoremap = np.exp(-((yy - 90.0) ** 2 + (xx - 130.0) ** 2) / (2 * 30.0**2))
        scoremap += 0.6 * np.exp(-((yy - 180.0) ** 2 + (xx - 40.0) ** 2) / (2 * 15.0**2))
        scoremap /= scoremap.max()
        thresholds = cam_threshold_grid()
        v1, v2 = scoremap_to_boxes(scoremap, thresholds)
        uint8_map = (scoremap * 255).astype(np.uint8)
        for t, box_v1, boxes_v2 in zip(thresholds, v1, v2, strict=True):
            ref_v1, ref_v2 = binary_to_boxes(uint8_map > int(t * uint8_map.max()))
            np.testing.assert_array_equal(box_v1, ref_v1)
            np.testing.assert_array_equal(boxes_v2, ref_v2)
        assert any(len(b) == 2 for b in v2)  # the sweep does see both blobs apart

    def test_float32_map_as_float64(self) -> None:
        scoremap = np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
        ours = scoremap_to_boxes(scoremap, [0.3, 0.9])
        ref = scoremap_to_boxes(scoremap.astype(np.float64), [0.3, 0.9])
        for a, b in zip(ours[0] + ours[1], ref[0] + ref[1], strict=True):
            np.testing.assert_array_equal(a, b)
        # t = 0.9: uint8 > 229, i.e. value >= 230 / 255: pixel index >= 45257 = 202 * 224 + 9
        np.testing.assert_array_equal(ours[0][1], [[0, 202, 223, 223]])

    @pytest.mark.parametrize(
        ("scoremap", "message"),
        [
            (np.full((SIZE, SIZE), np.nan), "NaN"),
            (np.full((4, 4), 1.5), r"\[0, 1\]"),
            (np.full((4, 4), -0.1), r"\[0, 1\]"),
            (np.full((4, 4), np.inf), r"\[0, 1\]"),
            (np.zeros((2, 4, 4)), "2-D"),
            (np.zeros((0, 4)), "2-D"),
            (np.zeros((4, 4), bool), "integer or float"),
        ],
    )
    def test_invalid_maps(self, scoremap: np.ndarray, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            check_scoremap(scoremap)
        with pytest.raises(ValueError, match=message):
            BoxAccuracyAccumulator().add_scoremap(scoremap, [0, 0, 3, 3])

    def test_nan_anywhere_is_an_error(self) -> None:
        scoremap = np.zeros((SIZE, SIZE))
        scoremap[5, 7] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            scoremap_to_boxes(scoremap, [0.5])


# ------------------------------------------------------------------------------- accumulator
# The tiny dataset: map N has an outer square 0.5 (uint8 127, x, y 20..119) with an inner square
# 1.0 (255, x, y 50..89). Thresholds 0.25 (level 63: box [20, 20, 120, 120]) and 0.75 (level 191:
# box [50, 50, 90, 90]). IoU of the two boxes: 41^2 / 101^2 = 1681 / 10201 = 0.1648.
NESTED = rect_map([(0.5, 20, 20, 120, 120), (1.0, 50, 50, 90, 90)])
OUTER_BOX = [20, 20, 120, 120]
INNER_BOX = [50, 50, 90, 90]
SMALL_IOU = 1681 / 10201


def tiny_dataset() -> BoxAccuracyAccumulator:
    """a: GT inner, b and c: GT outer, d: zero map, e: no GT. cls right for a, c, d."""
    acc = BoxAccuracyAccumulator(cam_thresholds=[0.25, 0.75], iou_thresholds=(10, 17, 50))
    assert acc.add_scoremap(NESTED, [INNER_BOX], cls_correct=True)
    assert acc.add_scoremap(NESTED, np.array([OUTER_BOX]), cls_correct=False)
    assert acc.add_scoremap(NESTED, [OUTER_BOX], cls_correct=True)
    assert acc.add_scoremap(np.zeros((SIZE, SIZE)), [[100, 100, 200, 200]], cls_correct=True)
    assert not acc.add_scoremap(NESTED, np.zeros((0, 4)), cls_correct=False)
    return acc


class TestAccumulator:
    def test_per_image_ious(self) -> None:
        acc = tiny_dataset()
        expected = [[SMALL_IOU, 1.0], [1.0, SMALL_IOU], [1.0, SMALL_IOU], [0.0, 0.0]]
        np.testing.assert_allclose(acc.ious(1), expected)
        np.testing.assert_allclose(acc.ious(2), expected)  # one contour per mask here
        assert acc.num_images == 4
        assert acc.num_without_gt == 1

    def test_curves_and_max_box_acc(self) -> None:
        acc = tiny_dataset()
        np.testing.assert_allclose(acc.accuracy_curve(50), [50.0, 25.0])
        np.testing.assert_allclose(acc.accuracy_curve(10), [75.0, 75.0])
        np.testing.assert_allclose(acc.accuracy_curve(17), [50.0, 25.0])
        assert acc.max_box_acc(50) == 50.0
        assert acc.best_threshold(50) == 0.25
        assert acc.best_threshold(10) == 0.25  # tie: the lowest threshold
        assert acc.gt_known() == 50.0
        assert acc.max_box_acc(30, version=2) == 50.0
        assert acc.max_box_acc(70, version=2) == 50.0
        assert acc.max_box_acc_v2() == 50.0

    def test_classification(self) -> None:
        acc = tiny_dataset()
        assert acc.top1_cls() == 75.0
        # at t = 0.25 b and c are localized; of those only c is classified right
        assert acc.top1_loc() == 25.0

    def test_to_dict(self) -> None:
        out = tiny_dataset().to_dict(include_curves=True)
        json.dumps(out)
        assert out["num_images"] == 4
        assert out["num_without_gt"] == 1
        assert out["sweep"] is True
        assert out["gt_known"] == 50.0
        assert out["gt_known_threshold"] == 0.25
        assert out["gt"] == {"10": 75.0, "17": 50.0, "50": 50.0}
        assert out["best_threshold"] == {"10": 0.25, "17": 0.25, "50": 0.25}
        assert out["v2"] == {"10": 75.0, "17": 50.0, "30": 50.0, "50": 50.0, "70": 50.0}
        assert out["max_box_acc_v2"] == 50.0
        assert out["top1_loc"] == 25.0
        assert out["top1_cls"] == 75.0
        assert out["cam_thresholds"] == [0.25, 0.75]
        assert out["curves"]["v1"]["50"] == [50.0, 25.0]
        assert "curves" not in tiny_dataset().to_dict()

    def test_multi_box_gt_takes_the_best(self) -> None:
        acc = BoxAccuracyAccumulator(cam_thresholds=[0.25, 0.75])
        acc.add_scoremap(NESTED, [INNER_BOX, OUTER_BOX])
        np.testing.assert_allclose(acc.ious(1), [[1.0, 1.0]])
        # a GT box far from both: IoU 0 whatever the other one does
        acc.add_scoremap(NESTED, [[200, 200, 223, 223], INNER_BOX])
        np.testing.assert_allclose(acc.ious(1)[1], [SMALL_IOU, 1.0])

    def test_v1_versus_v2_two_blobs(self) -> None:
        # A (big) and B (small, GT) both above t = 0.5; only A above t = 0.7
        scoremap = rect_map([(1.0, 20, 20, 100, 60), (0.6, 150, 150, 170, 170)])
        acc = BoxAccuracyAccumulator(cam_thresholds=[0.5, 0.7])
        acc.add_scoremap(scoremap, [[150, 150, 169, 169]])
        # predicted B box [150, 150, 170, 170] (21x21) vs GT (20x20): 400 / 441
        np.testing.assert_allclose(acc.ious(1), [[0.0, 0.0]])
        np.testing.assert_allclose(acc.ious(2), [[400 / 441, 0.0]])
        assert acc.max_box_acc(90, version=1) == 0.0
        assert acc.max_box_acc(90, version=2) == 100.0
        assert acc.best_threshold(90, version=2) == 0.5

    def test_empty_and_constant_maps_iou(self) -> None:
        acc = BoxAccuracyAccumulator(cam_thresholds=[0.0, 0.5])
        acc.add_scoremap(np.zeros((SIZE, SIZE)), [[0, 0, 9, 9]])  # box [0, 0, 0, 0]: 1 / 100
        acc.add_scoremap(np.full((SIZE, SIZE), 0.8), [[0, 0, 223, 223]])  # whole image
        np.testing.assert_allclose(acc.ious(1), [[0.01, 0.01], [1.0, 1.0]])

    def test_default_thresholds(self) -> None:
        acc = BoxAccuracyAccumulator()
        np.testing.assert_allclose(acc.cam_thresholds, np.arange(100) / 100)
        acc.add_scoremap(NESTED, [INNER_BOX])
        assert acc.ious(1).shape == (1, 100)
        # t = 0.50 is the first threshold whose level, floor(0.5 * 255) = 127, drops the outer 127s
        assert acc.best_threshold(90) == 0.5
        assert acc.accuracy_curve(90)[49] == 0.0

    def test_mask_and_box_path(self) -> None:
        acc = BoxAccuracyAccumulator()
        mask = np.zeros((SIZE, SIZE), bool)
        mask[50:90, 50:90] = True  # box [50, 50, 90, 90]
        assert acc.add_mask_box([INNER_BOX], mask=mask, cls_correct=True)
        assert acc.add_mask_box([OUTER_BOX], boxes=[INNER_BOX, OUTER_BOX], cls_correct=True)
        assert not acc.add_mask_box(np.zeros((0, 4)), mask=mask, cls_correct=True)
        np.testing.assert_allclose(acc.ious(1), [[1.0], [SMALL_IOU]])
        np.testing.assert_allclose(acc.ious(2), [[1.0], [1.0]])
        assert acc.gt_known() == 50.0
        assert acc.max_box_acc_v2() == 100.0
        assert acc.best_threshold(50) is None
        assert acc.top1_loc() == 50.0
        out = acc.to_dict(include_curves=True)
        assert out["sweep"] is False
        assert out["gt_known_threshold"] is None
        assert out["num_without_gt"] == 1
        assert "curves" not in out

    def test_misuse(self) -> None:
        acc = BoxAccuracyAccumulator(cam_thresholds=[0.5])
        with pytest.raises(ValueError, match="no image with a GT box"):
            acc.gt_known()
        acc.add_scoremap(NESTED, [INNER_BOX], cls_correct=True)
        with pytest.raises(ValueError, match="mix"):
            acc.add_mask_box([INNER_BOX], boxes=[INNER_BOX], cls_correct=True)
        with pytest.raises(ValueError, match="every image or for none"):
            acc.add_scoremap(NESTED, [INNER_BOX])
        with pytest.raises(ValueError, match="exactly one"):
            acc.add_mask_box([INNER_BOX])
        with pytest.raises(ValueError, match="x0y0x1y1"):
            acc.add_scoremap(NESTED, [[9, 0, 3, 3]], cls_correct=True)
        with pytest.raises(ValueError, match="version"):
            acc.ious(3)
        with pytest.raises(ValueError, match="integer percents"):
            acc.max_box_acc(0.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            BoxAccuracyAccumulator(cam_thresholds=[0.5, 1.5])
        assert acc.num_images == 1
