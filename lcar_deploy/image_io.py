"""Image decoding with clear errors, and the resize every stage shares.

Every image becomes upright 8-bit RGB: EXIF orientation is applied (boxes are reported in
the upright image's pixels), alpha is composited on white, 16-bit, grayscale, CMYK and
palette images are converted, and an animated image gives its first frame. Huge images are
refused before their pixels are decoded (``max_pixels``), except JPEGs, which are decoded
at a reduced scale (``draft``) so that memory stays bounded.
"""

from __future__ import annotations

import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_JPEG_DRAFT_SIDE = 2048
EXIF_ORIENTATION = 0x0112


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class LoadedImage:
    """rgb: (H, W, 3) uint8, upright. original_size: (W, H) of the upright image on disk."""

    rgb: np.ndarray
    original_size: tuple[int, int]


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):
        # 16-bit data by its full range (0..65535 -> 0..255, not stretched per image); a 32-bit
        # "I" image holding 8-bit values as is, larger values by their own maximum
        arr = np.asarray(image, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        peak = 255.0 if image.mode == "I" and top <= 255 else max(top, 65535.0)
        image = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_file(path: Path) -> None:
    """Raise :class:`ImageError` unless ``path`` is a non-empty regular file (links followed).

    Done before opening: opening a FIFO would block, a device could be read forever.
    """
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        if path.is_symlink():
            raise ImageError(f"{path}: broken symbolic link (to {path.readlink()})") from exc
        raise ImageError(f"{path}: file not found") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path}: is a directory")
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "special")
        raise ImageError(f"{path}: not a regular file ({kind})")
    if info.st_size == 0:
        raise ImageError(f"{path}: empty file")


def load_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    jpeg_draft_side: int = DEFAULT_JPEG_DRAFT_SIDE,
) -> LoadedImage:
    """Decode ``path`` to upright RGB uint8. Raises :class:`ImageError` with file and reason.

    Size guard: only the header is read before the check. A JPEG larger than
    ``jpeg_draft_side`` is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, the
    strongest reduction that keeps both sides >= ``jpeg_draft_side``); any image whose
    decoded size is still over ``max_pixels`` is refused. PIL's own limit (2 x
    ``Image.MAX_IMAGE_PIXELS``, about 179 M pixels) refuses larger images of every format
    when the header is read.
    """
    path = Path(path)
    check_file(path)
    try:
        with warnings.catch_warnings():
            # PIL warns above Image.MAX_IMAGE_PIXELS; max_pixels is the limit that applies here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                orientation = image.getexif().get(EXIF_ORIENTATION, 1)
                width, height = image.size
                if image.format in ("JPEG", "MPO") and max(width, height) > jpeg_draft_side:
                    image.draft("RGB", (jpeg_draft_side, jpeg_draft_side))
                if image.size[0] * image.size[1] > max_pixels:
                    raise ImageError(
                        f"{path}: {width}x{height} pixels is over the limit of {max_pixels}"
                    )
                image.seek(0)
                image.load()
                image = ImageOps.exif_transpose(image)
                rgb = np.asarray(_to_rgb(image))
    except ImageError:
        raise
    except PermissionError as exc:
        raise ImageError(f"{path}: permission denied") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: image too large ({exc})") from exc
    except Exception as exc:  # PIL's decoders raise many types on malformed data
        raise ImageError(f"{path}: cannot decode image ({exc or type(exc).__name__})") from exc
    if orientation in (5, 6, 7, 8):
        width, height = height, width
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
