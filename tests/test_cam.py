"""SD-CAM maps and seeds (eq. 2) from raw ``cams``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lcar_deploy.stages.cam import (
    CamConfig,
    cam_map,
    class_weights,
    minmax_normalize,
    select_class,
    softmax,
    upsample,
)


def synthetic_cams() -> tuple[np.ndarray, np.ndarray]:
    """3 classes on a 7 x 7 grid: class c peaks in a different corner; class 1 is predicted."""
    cams = np.zeros((3, 7, 7))
    cams[0, 0, 0] = 5.0
    cams[1, 3, 3] = 4.0
    cams[2, 6, 6] = 3.0
    return cams, np.array([0.5, 2.0, 1.0])


def test_predicted_and_gt_class() -> None:
    cams, logits = synthetic_cams()
    predicted = cam_map(cams, logits)
    assert predicted.classes.tolist() == [1]
    assert predicted.map.shape == (224, 224)
    assert predicted.map.min() == 0.0 and predicted.map.max() == 1.0
    peak = np.unravel_index(np.argmax(predicted.map), predicted.map.shape)
    assert all(96 <= p <= 128 for p in peak)  # the centre cell covers pixels 96..127
    gt = cam_map(cams, logits, gt_index=2)
    assert gt.classes.tolist() == [2]
    assert np.unravel_index(np.argmax(gt.map), gt.map.shape)[0] > 192
    assert select_class(logits) == 1 and select_class(logits, 0) == 0


def test_seed_is_map_above_beta() -> None:
    cams, logits = synthetic_cams()
    for beta in (0.2, 0.6):
        result = cam_map(cams, logits, CamConfig(beta=beta, size=64))
        np.testing.assert_array_equal(result.seed, result.map > beta)
    assert (
        cam_map(cams, logits, CamConfig(beta=0.6)).seed.sum()
        < cam_map(cams, logits, CamConfig(beta=0.2)).seed.sum()
    )


def test_cubic_is_wsolevaluation_resize_then_normalise() -> None:
    rng = np.random.default_rng(0)
    cams = rng.normal(size=(4, 7, 7))
    logits = rng.normal(size=4)
    result = cam_map(cams, logits, CamConfig(interpolation="cubic"), gt_index=3)
    resized = cv2.resize(cams[3], (224, 224), interpolation=cv2.INTER_CUBIC)
    expected = (resized - resized.min()) / (resized.max() - resized.min())
    np.testing.assert_allclose(result.map, expected, atol=1e-12)
    bilinear = cam_map(cams, logits, CamConfig(interpolation="bilinear", size=70), gt_index=3)
    assert bilinear.map.shape == (70, 70)
    # half-pixel centres (align_corners=False): the corner pixel keeps the corner cell value
    assert upsample(np.eye(2), 4, "bilinear")[0, 0] == 1.0


def test_topk_softmax_weighted() -> None:
    rng = np.random.default_rng(1)
    cams = rng.normal(size=(10, 5, 5))
    logits = rng.normal(size=10)
    config = CamConfig(top_k=3, size=5, interpolation="bilinear")
    result = cam_map(cams, logits, config, gt_index=0)  # gt ignored for top-k
    top = np.argsort(-logits)[:3]
    weights = softmax(logits)[top] / softmax(logits)[top].sum()
    np.testing.assert_array_equal(result.classes, top)
    np.testing.assert_allclose(result.weights, weights)
    expected = minmax_normalize(np.tensordot(weights, cams[top], axes=1))
    np.testing.assert_allclose(result.map, expected, atol=1e-12)
    classes, w = class_weights(logits, 1)
    assert classes.tolist() == [int(np.argmax(logits))] and w.tolist() == [1.0]


def test_constant_map_and_errors() -> None:
    assert (minmax_normalize(np.full((3, 3), 2.0)) == 0).all()
    cams = np.ones((2, 4, 4))
    assert (cam_map(cams, np.zeros(2)).map == 0).all()
    with pytest.raises(ValueError, match="logits must be"):
        cam_map(cams, np.zeros(3))
    with pytest.raises(ValueError, match="gt_index"):
        cam_map(cams, np.zeros(2), gt_index=2)
    with pytest.raises(ValueError, match="interpolation"):
        CamConfig(interpolation="nearest")
    with pytest.raises(ValueError, match="beta"):
        CamConfig(beta=1.5)
