"""A generated corpus of bad and awkward image inputs; nothing binary is committed.

:func:`make_corpus` writes every case into a folder and returns what the tools must do with
each one: a case with ``error`` set must give a ``status: error`` record whose message matches
it, a case without must be localized (its ``size`` is the upright (W, H) the record reports).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HUGE_SIZE = (12000, 9000)
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Case:
    """One corpus entry.

    name: path relative to the corpus root, as ``localize`` reports it (``os.fsdecode``).
    what: what the entry is, in words.
    error: regex the error message must match; None when the image must be localized.
    size: the upright (W, H) an ok record must report.
    """

    name: str
    what: str
    error: str | None = None
    size: tuple[int, int] | None = None


def jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_big_png(path: Path, width: int, height: int) -> None:
    """A valid 8-bit grayscale PNG of any size, streamed row by row (never held in memory)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` pixels, with one row of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def bomb_jpeg(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``width`` x ``height`` pixels."""
    data = bytearray(jpeg_bytes(Image.new("RGB", (16, 16))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def write_huge_jpeg(path: Path, size: tuple[int, int] = HUGE_SIZE) -> None:
    """A real grayscale JPEG of ``size`` with a dark rectangle (the encoder needs W*H bytes)."""
    image = Image.new("L", size, 200)
    w, h = size
    ImageDraw.Draw(image).rectangle((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=30)
    image.save(path, format="JPEG", quality=50)


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """JPEG whose stored pixels are ``upright`` turned 90 degrees counter-clockwise, with EXIF
    orientation 6 (display rotated 90 degrees clockwise): a viewer shows ``upright``."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    return jpeg_bytes(stored, quality=100, subsampling=0, exif=exif.tobytes())


def animated_gif(photo: Image.Image) -> bytes:
    frames = [photo.convert("P"), photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def make_corpus(root: Path, photo: np.ndarray) -> list[Case]:
    """Write the corpus under ``root`` (created) from ``photo`` ((H, W, 3) uint8 RGB)."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(photo)
    size = rgb.size
    cases: list[Case] = []

    def add(
        name: str,
        data: bytes,
        what: str,
        error: str | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        cases.append(Case(name, what, error, size))

    good_jpeg = jpeg_bytes(rgb, quality=90)
    add("empty.jpg", b"", "0-byte file", r"empty file")
    add("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], "JPEG cut in half", r"truncated")
    add("text.jpg", b"this is a text file, not a JPEG\n", "text named .jpg", r"cannot identify")

    rgba = rgb.convert("RGBA")
    alpha = np.full((size[1], size[0]), 255, np.uint8)
    alpha[:, : size[0] // 3] = 0
    rgba.putalpha(Image.fromarray(alpha))
    add("alpha.png", _png(rgba), "RGBA PNG, a third transparent", size=size)
    gray16 = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
    add("gray16.png", _png(Image.fromarray(gray16)), "16-bit grayscale PNG", size=size)
    add("gray.jpg", jpeg_bytes(rgb.convert("L")), "8-bit grayscale JPEG", size=size)
    add("cmyk.jpg", jpeg_bytes(rgb.convert("CMYK")), "CMYK JPEG", size=size)
    add("palette.gif", _gif(rgb.convert("P")), "palette GIF", size=size)
    palette_png = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette_png.info["transparency"] = 0
    add("palette.png", _png(palette_png), "palette PNG with a transparent index", size=size)
    add("png_data.jpg", _png(rgb), "PNG data named .jpg", size=size)
    add("exif_rotated.jpg", exif_rotated_jpeg(rgb), "EXIF orientation 6 JPEG", size=size)
    upright = jpeg_bytes(rgb, quality=100, subsampling=0)
    add("upright.jpg", upright, "the same photo upright, no EXIF (reference)", size=size)
    add("tiny_1x1.png", _png(rgb.resize((1, 1))), "1x1 PNG", size=(1, 1))
    add("tiny_8x8.jpg", jpeg_bytes(rgb.resize((8, 8))), "8x8 JPEG", size=(8, 8))
    add("animated.gif", animated_gif(rgb), "animated GIF, 2 frames", size=size)
    add("folder.jpg/inside.png", _png(rgb), "image in a folder named folder.jpg", size=size)
    add(os.fsdecode(b"caf\xe9.jpg"), good_jpeg, "non-UTF-8 file name (Latin-1 bytes)", size=size)

    too_large = r"image too large \(Image size \(\d+ pixels\) exceeds limit"
    add("bomb.png", bomb_png(40000, 40000), "PNG header claiming 40000x40000", too_large)
    add("bomb.jpg", bomb_jpeg(60000, 60000), "JPEG header claiming 60000x60000", too_large)
    write_huge_jpeg(root / "huge.jpg")
    cases.append(Case("huge.jpg", "12000x9000 JPEG", size=HUGE_SIZE))
    write_big_png(root / "huge.png", *HUGE_SIZE)
    cases.append(Case("huge.png", "12000x9000 PNG", r"12000x9000 pixels is over the limit"))

    (root / "loop.jpg").symlink_to("loop.jpg")
    cases.append(Case("loop.jpg", "symlink to itself", r"cannot open.*symbolic links"))
    (root / "dangling.jpg").symlink_to("nowhere.jpg")
    cases.append(
        Case(
            "dangling.jpg", "symlink to a missing file", r"broken symbolic link \(to nowhere\.jpg\)"
        )
    )
    os.mkfifo(root / "fifo.jpg")
    cases.append(Case("fifo.jpg", "FIFO named .jpg (open would block)", r"not a regular file"))
    # A folder loop named like an image: symlinked folders are not followed, so it gives no line.
    (root / "folder.jpg" / "parent.jpg").symlink_to("..")
    return cases


def make_unreadable(root: Path, photo: np.ndarray) -> Case:
    """A JPEG with mode 000: unreadable for every user but root."""
    path = root / "unreadable.jpg"
    path.write_bytes(jpeg_bytes(Image.fromarray(photo)))
    path.chmod(0)
    return Case("unreadable.jpg", "file with mode 000", r"permission denied")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _gif(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="GIF")
    return buffer.getvalue()
