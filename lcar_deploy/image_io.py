"""Image decoding with clear errors, and the resize every stage shares.

Every image becomes upright 8-bit RGB: EXIF orientation is applied (boxes are reported in
the upright image's pixels), alpha is composited on white, 16-bit, grayscale, CMYK and
palette images are converted, and an animated image gives its first frame. Huge images are
refused before their pixels are decoded (``max_pixels``), except JPEGs, which are decoded
at a reduced scale (``draft``) so that memory stays bounded.

TIFFs that Pillow cannot read (floating-point or planar RGB samples, ...) or misreads
(uncompressed planar 16-bit) are decoded by ``tifffile``: the first page, its size checked
before its data is read, its samples converted to 8 bits by the same rules.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError, printable

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
"""The common image extensions; :func:`image_extensions` adds the others Pillow reads."""
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_JPEG_DRAFT_SIDE = 2048
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class LoadedImage:
    """rgb: (H, W, 3) uint8, upright. original_size: (W, H) of the upright image on disk."""

    rgb: np.ndarray
    original_size: tuple[int, int]


# Formats Pillow registers but cannot decode on its own: video, PostScript without Ghostscript.
_NOT_DECODED = ("MPEG",)
# Formats whose decoder is an optional part of a Pillow build: {format: Pillow feature}.
_CODEC_FEATURES = {"AVIF": "avif", "WEBP": "webp", "JPEG2000": "jpg_2000"}


@functools.cache
def image_extensions() -> tuple[str, ...]:
    """Lower-case extensions of the files taken for images: :data:`IMAGE_EXTENSIONS` and every
    extension of a format this Pillow opens and decodes (AVIF, TGA, QOI, PPM, ...).

    Left out: Pillow's stub formats (identified, but decoded only by a handler registered
    from outside: HDF5, GRIB, BUFR, WMF), video, PostScript when Ghostscript is missing, and
    formats whose codec this Pillow build lacks.
    """
    from PIL import EpsImagePlugin, ImageFile, features

    extensions = dict.fromkeys(IMAGE_EXTENSIONS)
    for extension, format in sorted(Image.registered_extensions().items()):
        opener = Image.OPEN.get(format)
        if opener is None or format in _NOT_DECODED:
            continue
        if isinstance(opener[0], type) and issubclass(opener[0], ImageFile.StubImageFile):
            continue
        if format == "EPS" and not EpsImagePlugin.has_ghostscript():
            continue
        if format in _CODEC_FEATURES:
            with contextlib.suppress(ValueError):  # a feature this Pillow does not know
                if not features.check_module(_CODEC_FEATURES[format]):
                    continue
        extensions[extension.lower()] = None
    return tuple(extensions)


def _integers_to_uint8(values: np.ndarray, full_16bit: bool) -> np.ndarray:
    """Integer samples -> uint8. ``full_16bit``: 16-bit data by its full range (0..65535 ->
    0..255, not stretched per image); otherwise values up to 255 are kept as they are and
    larger ones scaled by max(their maximum, 65535). Negative values become 0."""
    arr = values.astype(np.float64)
    top = float(arr.max()) if arr.size else 0.0
    peak = max(top, 65535.0) if full_16bit or top > 255 else 255.0
    return np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _floats_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float samples -> uint8: data within [0, 1] (the usual range of float images) times
    255, other data as :func:`_integers_to_uint8` takes 32-bit integers. NaN and infinities
    become 0."""
    arr = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(arr.max()) if arr.size else 0.0
    if top <= 1.0:
        return np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _integers_to_uint8(arr, full_16bit=False)


def _samples_to_uint8(values: np.ndarray) -> np.ndarray:
    """Samples of any numeric type -> uint8 by the rules of :func:`_to_rgb`."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if values.dtype.kind == "f":
        return _floats_to_uint8(values)
    if values.dtype.kind in "iu":
        return _integers_to_uint8(values, full_16bit=values.dtype == np.uint16)
    raise ValueError(f"unsupported sample type {values.dtype}")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):
        image = Image.fromarray(_integers_to_uint8(np.asarray(image), image.mode != "I"))
    if image.mode == "F":
        image = Image.fromarray(_floats_to_uint8(np.asarray(image)))
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
            target = printable(path.readlink())
            raise ImageError(f"{printable(path)}: broken symbolic link (to {target})") from exc
        raise ImageError(f"{printable(path)}: file not found") from exc
    except OSError as exc:
        raise ImageError(f"{printable(path)}: cannot open ({_reason(exc)})") from exc
    _check_kind(path, info)


def _check_kind(path: Path, info: os.stat_result) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{printable(path)}: is a directory")
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "special")
        raise ImageError(f"{printable(path)}: not a regular file ({kind})")
    if info.st_size == 0:
        raise ImageError(f"{printable(path)}: empty file")


def _reason(exc: OSError) -> str:
    return printable(exc.strerror or exc, 100)


def _open_nonblocking(path: str | bytes, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading when it is a non-empty regular file (:func:`check_file`
    first, so that no FIFO or device is opened); :class:`ImageError` otherwise. Opened without
    blocking and checked again on the open file: a FIFO swapped in after the check neither
    blocks the open nor is read."""
    check_file(path)
    try:
        file = open(path, "rb", opener=_open_nonblocking)  # noqa: SIM115 (returned open)
    except PermissionError:
        raise ImageError(f"{printable(path)}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{printable(path)}: cannot open ({_reason(exc)})") from None
    try:
        _check_kind(path, os.fstat(file.fileno()))
    except BaseException:
        file.close()
        raise
    return file


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
    try:
        with open_regular(path) as file, warnings.catch_warnings():
            # PIL warns above Image.MAX_IMAGE_PIXELS; max_pixels is the limit that applies here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                width, height = image.size
                if image.format in ("JPEG", "MPO") and max(width, height) > jpeg_draft_side:
                    image.draft("RGB", (jpeg_draft_side, jpeg_draft_side))
                if image.size[0] * image.size[1] > max_pixels:
                    raise ImageError(
                        f"{printable(path)}: {width}x{height} pixels is over the limit of "
                        f"{max_pixels}"
                    )
                # After the size check: a PNG's getexif() decodes the whole image.
                orientation = image.getexif().get(EXIF_ORIENTATION, 1)
                if image.format == "TIFF" and _pillow_misreads(image):
                    raise _PillowMisreads("Pillow mixes up the planes of this TIFF")
                image.seek(0)
                image.load()
                image = ImageOps.exif_transpose(image)
                rgb = np.asarray(_to_rgb(image))
    except ImageError:
        raise
    except PermissionError as exc:
        raise ImageError(f"{printable(path)}: permission denied") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{printable(path)}: image too large ({printable(exc, 100)})") from exc
    except Exception as exc:  # PIL's decoders raise many types on malformed data
        reason = printable(str(exc) or type(exc).__name__, 100)
        if _is_tiff(path):
            return _load_tiff(path, max_pixels, reason)
        raise ImageError(f"{printable(path)}: cannot decode image ({reason})") from exc
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ImageError(f"{printable(path)}: decoded to an unusable shape {rgb.shape}")
    return LoadedImage(rgb=np.ascontiguousarray(rgb), original_size=(width, height))


_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders
# Samples per pixel of the largest usual page (RGBA): more data than that is refused unread.
_MAX_SAMPLES = 4
# TIFF orientation tag -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class _PillowMisreads(Exception):
    """A TIFF that Pillow opens but decodes to wrong pixels: tifffile decodes it."""


def _pillow_misreads(image: Image.Image) -> bool:
    """Uncompressed planar TIFFs of more than 8 bits per sample: Pillow's own decoder mixes
    up their planes (compressed ones go through libtiff, which reads them right)."""
    tags = getattr(image, "tag_v2", {})
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    return tags.get(284) == 2 and tags.get(259, 1) == 1 and max(bits, default=8) > 8


def _is_tiff(path: Path) -> bool:
    try:
        with open_regular(path) as f:
            return f.read(4) in _TIFF_MAGIC
    except (OSError, ImageError):
        return False


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """tifffile logs what it finds odd in a file; the ImageError says what matters."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _load_tiff(path: Path, max_pixels: int, pil_reason: str) -> LoadedImage:
    """The first page of a TIFF that PIL could not read, decoded by tifffile."""
    import tifffile

    try:
        with open_regular(path) as file, _quiet_tifffile(), tifffile.TiffFile(file) as tif:
            page = tif.pages[0]
            width, height = page.imagewidth, page.imagelength
            if width * height > max_pixels:
                raise ImageError(
                    f"{printable(path)}: {width}x{height} pixels is over the limit of {max_pixels}"
                )
            if page.size > _MAX_SAMPLES * max_pixels:
                raise ImageError(
                    f"{printable(path)}: first page {page.shape} of {page.dtype} is over the "
                    f"limit of {max_pixels} pixels of {_MAX_SAMPLES} samples"
                )
            data = page.asarray()
            orientation = page.tags.get(274)
            image = _tiff_page_image(page, data)
    except ImageError:
        raise
    except Exception as exc:  # tifffile raises many types on malformed data too
        reason = printable(exc or type(exc).__name__, 100)
        raise ImageError(
            f"{printable(path)}: cannot decode image ({pil_reason}; tifffile: {reason})"
        ) from exc
    transpose = _UPRIGHT.get(orientation.value if orientation is not None else 1)
    if transpose is not None:
        image = image.transpose(transpose)
    rgb = np.asarray(_to_rgb(image))
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ImageError(f"{printable(path)}: decoded to an unusable shape {rgb.shape}")
    return LoadedImage(rgb=np.ascontiguousarray(rgb), original_size=(rgb.shape[1], rgb.shape[0]))


def _tiff_page_image(page, data: np.ndarray) -> Image.Image:
    """A tifffile page's array (axes ``page.axes``) as a PIL image of 8-bit samples."""
    from tifffile import COMPRESSION, PHOTOMETRIC

    axes = page.axes
    # Of the other axes (planes of a volume, ...), the first entry, as of the pages.
    data = data[tuple(slice(None) if axis in "YXS" else 0 for axis in axes)]
    kept = [axis for axis in axes if axis in "YXS"]
    data = np.moveaxis(data, kept.index("S"), -1) if "S" in kept else data[..., None]
    photometric = page.photometric
    if photometric == PHOTOMETRIC.PALETTE and page.colormap is not None:
        colormap = np.asarray(page.colormap)
        palette = _integers_to_uint8(colormap.T, full_16bit=colormap.dtype == np.uint16)
        return Image.fromarray(palette[np.clip(data[..., 0], 0, len(palette) - 1)])
    values = np.ascontiguousarray(_samples_to_uint8(data))
    samples = values.shape[-1]
    has_alpha = bool(page.extrasamples) and page.extrasamples[0] in (1, 2)
    if photometric == PHOTOMETRIC.SEPARATED and samples >= 4:
        cmyk = np.ascontiguousarray(values[..., :4])
        return Image.frombytes("CMYK", (cmyk.shape[1], cmyk.shape[0]), cmyk.tobytes())
    if photometric == PHOTOMETRIC.YCBCR and samples >= 3 and page.compression != COMPRESSION.JPEG:
        ycbcr = np.ascontiguousarray(values[..., :3])
        return Image.frombytes("YCbCr", (ycbcr.shape[1], ycbcr.shape[0]), ycbcr.tobytes())
    if photometric in (PHOTOMETRIC.RGB, PHOTOMETRIC.YCBCR) and samples >= 3:
        return Image.fromarray(values[..., : 4 if has_alpha and samples > 3 else 3])
    gray = values[..., 0]
    if photometric == PHOTOMETRIC.MINISWHITE:
        gray = 255 - gray
    if has_alpha and samples > 1:
        return Image.fromarray(np.stack([gray, values[..., 1]], axis=-1))
    return Image.fromarray(gray)


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
