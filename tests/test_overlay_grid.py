"""scripts/overlay_grid.py, the README's picture: it runs end to end on two images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "overlay_grid.py"


def load_script():
    spec = importlib.util.spec_from_file_location("overlay_grid", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_of_two_photos(small_bundle: Path, tmp_path: Path) -> None:
    overlay_grid = load_script()
    out = overlay_grid.main(
        [
            "--bundle", str(small_bundle), "--out", str(tmp_path / "grid.png"),
            "--skimage", "coffee.png,chelsea.png", "--cub", "0", "--ilsvrc", "0",
            "--threads", "1", "--data", str(tmp_path / "no-data"),
        ]
    )  # fmt: skip
    sheet = np.asarray(Image.open(out).convert("RGB"))
    w, h = overlay_grid.TILE
    assert sheet.shape == (h + overlay_grid.CAPTION, 2 * w, 3)
    for x in (0, w):
        tile, text = sheet[:h, x : x + w], sheet[h:, x : x + w]
        assert (tile < 250).any(axis=-1).mean() > 0.5  # a photo fills the tile
        assert (text < 80).all(axis=-1).sum() > 20  # a caption is written under it


def test_missing_data_is_left_out(tmp_path: Path) -> None:
    overlay_grid = load_script()
    assert overlay_grid.dataset_images(tmp_path, {"cub": 2, "ilsvrc": 2}) == []


def test_shared_data_images_evenly_spread(shared_data: Path) -> None:
    overlay_grid = load_script()
    images = overlay_grid.dataset_images(shared_data, {"cub": 3, "ilsvrc": 2})
    assert len(images) == 5 and all(p.is_file() for p in images)
    assert len({p.parent for p in images[:3]}) == 3  # three CUB classes, not one
