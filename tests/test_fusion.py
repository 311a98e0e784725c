"""The fusion of ARM's map with the graph cut (lcar_deploy.stages.fusion)."""

from __future__ import annotations

import numpy as np
import pytest

from lcar_deploy.errors import SettingError
from lcar_deploy.stages.fusion import FusionConfig, fuse, oriented_agreement


def _square(top: int, left: int, side: int, size: int = 20, value: float = 1.0) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    m[top : top + side, left : left + side] = value
    return m


def test_agreeing_cut_is_averaged_in() -> None:
    arm = _square(4, 4, 10, value=0.8)
    cut = _square(5, 5, 8)
    out = fuse(arm[None], cut[None], FusionConfig(weight=0.5), box_threshold=0.3)[0]
    np.testing.assert_allclose(out, 0.5 * arm + 0.5 * cut)


def test_cut_of_the_other_side_is_flipped() -> None:
    arm = _square(4, 4, 10)
    cut = 1.0 - _square(5, 5, 8)  # the object is the low side of this cut
    oriented, agreement = oriented_agreement(arm, cut, 0.3, 0.2)
    np.testing.assert_array_equal(oriented, 1.0 - cut)
    assert agreement == pytest.approx(64 / 100)


def test_disagreeing_cut_leaves_the_arm_map() -> None:
    arm = _square(0, 0, 6)
    cut = _square(12, 12, 6)
    out = fuse(arm[None], cut[None], FusionConfig(weight=0.5), box_threshold=0.3)[0]
    np.testing.assert_array_equal(out, arm)


def test_agreement_threshold_decides_per_image() -> None:
    arm = np.stack([_square(4, 4, 10), _square(4, 4, 10)])
    cut = np.stack([_square(4, 4, 10), _square(4, 4, 5)])  # IoU 1 and 0.25
    out = fuse(arm, cut, FusionConfig(weight=1.0, min_agreement=0.5), box_threshold=0.3)
    np.testing.assert_array_equal(out[0], cut[0])
    np.testing.assert_array_equal(out[1], arm[1])


def test_arm_threshold_set_replaces_the_box_threshold() -> None:
    arm = np.maximum(_square(2, 2, 14, value=0.4), _square(4, 4, 10, value=0.8))
    cut = _square(4, 4, 10)  # IoU 100 / 196 with A >= 0.3, 1 with A >= 0.5
    config = FusionConfig(weight=0.5, min_agreement=0.6)
    follows = fuse(arm[None], cut[None], config, box_threshold=0.3)[0]
    np.testing.assert_array_equal(follows, arm)
    pinned = FusionConfig(weight=0.5, min_agreement=0.6, arm_threshold=0.5)
    out = fuse(arm[None], cut[None], pinned, box_threshold=0.3)[0]
    np.testing.assert_allclose(out, 0.5 * arm + 0.5 * cut)


def test_weight_zero_is_off() -> None:
    arm = _square(4, 4, 10, value=0.7)
    out = fuse(arm[None], _square(4, 4, 10)[None], FusionConfig(), box_threshold=0.3)
    np.testing.assert_array_equal(out[0], arm)


@pytest.mark.parametrize(
    "field, value",
    [("weight", 1.5), ("min_agreement", -0.1), ("cut_threshold", 1.0), ("arm_threshold", 1.0)],
)
def test_bad_settings_are_named(field: str, value: float) -> None:
    with pytest.raises(SettingError, match=field):
        FusionConfig(**{field: value})
