"""Shared fixtures: the real data lives beside the checkout in ../shared/data (never copied);
photos, the generated bad-image corpus and broken bundles are made once per session.

Plain helpers (``invoke``, ``FAST``, ``records_of``, ``image_folder``, ...) are in ``helpers.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from bad_inputs import Case, make_corpus
from helpers import make_bad_bundles
from PIL import Image


def shared_data_root() -> Path:
    """Where the real CUB / ILSVRC subsets are: $LCAR_SHARED_DATA or ../shared/data."""
    env = os.environ.get("LCAR_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if not (root / "CUB_200_2011").is_dir():
        pytest.skip(f"real data not found at {root}")
    return root


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded backbone with its ImageNet classifier, exported at a small input size."""
    from lcar_deploy.export.exporter import export_bundle

    return export_bundle(tmp_path_factory.mktemp("bundles") / "small", input_size=96)


@pytest.fixture(scope="session")
def bad_bundles(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Broken copies of the small bundle: ``helpers.BUNDLE_ERRORS`` says what each one is."""
    return make_bad_bundles(small_bundle, tmp_path_factory.mktemp("bad-bundles"))


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """scikit-image's cat photo, 451 x 300 (read-only: shared by every test)."""
    image = skimage.data.chelsea()
    image.setflags(write=False)
    return image


@pytest.fixture(scope="session")
def small_photo(photo: np.ndarray) -> np.ndarray:
    """The cat photo at 160 x 106 (read-only)."""
    image = np.asarray(Image.fromarray(photo).resize((160, 106)))
    image.setflags(write=False)
    return image


@pytest.fixture(scope="session")
def image_corpus(
    tmp_path_factory: pytest.TempPathFactory, photo: np.ndarray
) -> tuple[Path, list[Case]]:
    """The bad and awkward images of ``bad_inputs.make_corpus``: (folder, cases)."""
    root = tmp_path_factory.mktemp("corpus")
    return root, make_corpus(root, photo)


def synthetic_scene(
    size: tuple[int, int] = (120, 160), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A coloured ellipse on a striped, noisy background: (H, W, 3) uint8 image, (H, W) mask."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    background = 90 + 40 * np.sin(xx / 3.0)[..., None] + rng.normal(0, 12, (h, w, 3))
    mask = ((yy - 0.55 * h) / (0.3 * h)) ** 2 + ((xx - 0.45 * w) / (0.28 * w)) ** 2 <= 1
    image = np.where(
        mask[..., None], np.array([220, 60, 40]) + rng.normal(0, 8, (h, w, 3)), background
    )
    return np.clip(image, 0, 255).astype(np.uint8), mask
