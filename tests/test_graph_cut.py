"""TokenCut normalized cut on synthetic feature grids."""

from __future__ import annotations

import numpy as np
import pytest

from lcar_deploy.errors import SettingError
from lcar_deploy.stages.graph_cut import (
    GraphCutConfig,
    affinity_graph,
    cut_eigenvector,
    eigenvector_scoremap,
    orient_eigenvector,
    second_eigenvector,
    tokencut_box,
)


def two_region_features(
    mask: np.ndarray, dim: int = 64, noise: float = 0.3, seed: int = 0
) -> np.ndarray:
    """(h, w, dim) features: one prototype inside ``mask``, another outside, plus noise."""
    rng = np.random.default_rng(seed)
    inside, outside = rng.normal(size=dim), rng.normal(size=dim)
    features = np.where(mask[..., None], inside, outside)
    return features + noise * rng.normal(size=(*mask.shape, dim))


def square_mask(h: int = 20, w: int = 20) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[5:12, 4:15] = True
    return mask


@pytest.mark.parametrize("solver", ["eigh", "normalized"])
def test_recovers_two_regions(solver: str) -> None:
    mask = square_mask()
    vector = second_eigenvector(two_region_features(mask), GraphCutConfig(solver=solver))
    assert vector.shape == mask.shape
    part = vector > vector.mean()
    # the raw eigenvector may come with either sign: the partition is the regions either way
    assert (part == mask).all() or (part == ~mask).all()


def test_both_signs_give_the_same_oriented_vector() -> None:
    mask = square_mask()
    graph = affinity_graph(two_region_features(mask), 0.2, 1e-5)
    raw = cut_eigenvector(graph, "eigh")
    np.testing.assert_array_equal(orient_eigenvector(raw), orient_eigenvector(-raw))
    oriented = orient_eigenvector(raw)
    seed = np.argmax(np.abs(oriented))
    assert oriented[seed] > oriented.mean()
    for sign in (1.0, -1.0):
        result = tokencut_box((sign * raw).reshape(mask.shape))
        assert (result.component == result.bipartition).all()
        assert result.bipartition[result.seed]
        assert (result.bipartition == mask).all() or (result.bipartition == ~mask).all()


def test_solvers_agree_up_to_sign_and_are_d_normalised() -> None:
    features = two_region_features(square_mask(), noise=0.8)
    graph = affinity_graph(features, 0.2, 1e-5)
    a, b = cut_eigenvector(graph, "eigh"), cut_eigenvector(graph, "normalized")
    assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-8
    np.testing.assert_allclose(a @ (graph.sum(1) * a), 1.0, rtol=1e-8)
    np.testing.assert_allclose(a @ graph.sum(1), 0.0, atol=1e-8)


def test_binary_graph() -> None:
    features = np.array([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]])
    graph = affinity_graph(features, tau=0.2, eps=1e-5)
    # cosines: f1.f2 = 0.994, f1.f3 = 0, f2.f3 = 0.110
    np.testing.assert_array_equal(graph, [[1, 1, 1e-5], [1, 1, 1e-5], [1e-5, 1e-5, 1]])
    assert affinity_graph(features, tau=0.05, eps=1e-5)[1, 2] == 1


def test_tokencut_box_of_the_object_component() -> None:
    mask = square_mask()
    features = two_region_features(mask)
    result = tokencut_box(second_eigenvector(features))
    assert (result.component == mask).all()
    # rows 5..11, cols 4..14 of a 20 x 20 grid in a 224 x 224 image (11.2 px per cell)
    np.testing.assert_array_equal(result.box, [44, 56, 167, 133])
    assert tokencut_box(second_eigenvector(features), size=(20, 20)).box.tolist() == [4, 5, 14, 11]


def test_component_holding_the_seed_only() -> None:
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:5, 1:5] = True
    mask[8:11, 8:11] = True
    vector = np.where(mask, 1.0, -0.3)
    vector[2, 2] = 2.0  # the seed lies in the first blob
    result = tokencut_box(vector, size=(12, 12))
    assert result.seed == (2, 2)
    assert result.component.sum() == 16
    assert result.box.tolist() == [1, 1, 4, 4]


def test_scoremap_range_and_config_checks() -> None:
    vector = second_eigenvector(two_region_features(square_mask()))
    scoremap = eigenvector_scoremap(vector, 224)
    assert scoremap.shape == (224, 224)
    assert scoremap.min() == 0.0 and scoremap.max() == 1.0
    with pytest.raises(ValueError, match="solver"):
        GraphCutConfig(solver="lobpcg")
    with pytest.raises(ValueError, match="features must be"):
        second_eigenvector(np.zeros((4, 4)))


def test_orientation_setting() -> None:
    assert GraphCutConfig().orient == "cam"
    assert GraphCutConfig(orient="tokencut").orient == "tokencut"
    with pytest.raises(SettingError, match="orient"):
        GraphCutConfig(orient="largest")
