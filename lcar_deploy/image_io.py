"""Image decoding with clear errors, and the resize every stage shares.

Every image becomes upright 8-bit RGB: EXIF orientation is applied (boxes are reported in
the upright image's pixels), alpha is composited on white, 16-bit, grayscale, CMYK and
palette images are converted, and an animated image gives its first frame. Huge images are
refused before their pixels are decoded (``max_pixels``), except JPEGs, which are decoded
at a reduced scale (``draft``) so that memory stays bounded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_JPEG_DRAFT_SIDE = 2048


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class LoadedImage:
    """rgb: (H, W, 3) uint8, upright. original_size: (W, H) of the upright image on disk."""

    rgb: np.ndarray
    original_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Factors from ``rgb`` pixels to original pixels (x, y); not 1 after a JPEG draft."""
        h, w = self.rgb.shape[:2]
        return self.original_size[0] / w, self.original_size[1] / h


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        peak = arr.max() if arr.size and arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / peak * 255.0, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    jpeg_draft_side: int = DEFAULT_JPEG_DRAFT_SIDE,
) -> LoadedImage:
    """Decode ``path`` to upright RGB uint8. Raises :class:`ImageError` with file and reason."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                exif_orientation = image.getexif().get(0x0112, 1)
                width, height = image.size
                if exif_orientation in (5, 6, 7, 8):
                    width, height = height, width
                if image.format == "JPEG" and max(width, height) > jpeg_draft_side:
                    image.draft("RGB", (jpeg_draft_side, jpeg_draft_side))
                elif width * height > max_pixels:
                    raise ImageError(
                        f"{path}: {width}x{height} pixels is over the limit of {max_pixels}"
                    )
                image.seek(0)
                image.load()
                image = ImageOps.exif_transpose(image)
                rgb = np.asarray(_to_rgb(image))
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: file not found") from exc
    except PermissionError as exc:
        raise ImageError(f"{path}: permission denied") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{path}: is a directory") from exc
    except Image.DecompressionBombWarning as exc:
        raise ImageError(f"{path}: image too large ({exc})") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = "empty file" if path.is_file() and path.stat().st_size == 0 else str(exc)
        raise ImageError(f"{path}: cannot decode image ({reason})") from exc
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ImageError(f"{path}: decoded to an unusable shape {rgb.shape}")
    return LoadedImage(rgb=np.ascontiguousarray(rgb), original_size=(width, height))


def load_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 upright RGB of ``path`` (see :func:`load_image`)."""
    return load_image(path).rgb


def resize_rgb(rgb: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (H, W, 3) uint8 to (size, size, 3) (or (h, w) given as a tuple)."""
    h, w = (size, size) if isinstance(size, int) else size
    if rgb.shape[:2] == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def to_chw_float(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0
