"""``image_io.load_image`` on the generated corpus of bad and awkward images
(``tests/bad_inputs.py``): each case decodes, upright and as 8-bit RGB, or fails with its reason
and the file's path; converted pixels match the photo; huge images keep memory bounded; a file
nobody may read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import HUGE_SIZE, Case, make_unreadable
from PIL import Image

from lcar_deploy.image_io import ImageError, load_image


def test_every_corpus_case_decodes_or_fails_with_its_reason(
    image_corpus: tuple[Path, list[Case]],
) -> None:
    root, cases = image_corpus
    for case in cases:
        if case.error is not None:
            with pytest.raises(ImageError, match=case.error) as info:
                load_image(root / case.name)
            assert str(info.value).startswith(str(root / case.name) + ":")
        else:
            image = load_image(root / case.name)
            assert image.original_size == case.size, case.name
            assert image.rgb.dtype == np.uint8 and image.rgb.ndim == 3, case.name
            assert image.rgb.shape[2] == 3 and image.rgb.flags.c_contiguous, case.name
            if case.size != HUGE_SIZE:  # (the huge JPEG is decoded at 1/4 scale)
                assert image.rgb.shape[:2] == case.size[::-1], case.name


def test_converted_pixels_match_the_photo(
    image_corpus: tuple[Path, list[Case]], photo: np.ndarray
) -> None:
    root, _ = image_corpus
    gray = np.asarray(Image.fromarray(photo).convert("L"), dtype=np.float64)

    def error(name: str, reference: np.ndarray) -> float:
        return float(np.abs(load_image(root / name).rgb.astype(np.float64) - reference).mean())

    assert error("exif_rotated.jpg", photo) < 2.0  # upright, not the stored (turned) pixels
    assert error("cmyk.jpg", photo) < 6.0  # not inverted
    assert error("gray16.png", gray[..., None]) < 1.0  # full 16-bit range, not stretched
    assert error("gray.jpg", gray[..., None]) < 4.0
    assert error("palette.png", photo) < 10.0 and error("palette.gif", photo) < 25.0
    flipped = photo[:, ::-1]
    assert error("animated.gif", photo) < error("animated.gif", flipped) / 2  # first frame
    alpha = load_image(root / "alpha.png").rgb
    third = photo.shape[1] // 3
    assert (alpha[:, :third] == 255).all()  # transparent -> white
    assert np.array_equal(alpha[:, third:], photo[:, third:])


def test_huge_images_keep_memory_bounded(image_corpus: tuple[Path, list[Case]]) -> None:
    """The 12000x9000 PNG is refused from its header; the JPEG is decoded at 1/4 scale."""
    root, _ = image_corpus
    script = (
        "import json, resource, sys\n"
        "from lcar_deploy.image_io import ImageError, load_image\n"
        "def peak_mb():\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "base = peak_mb()\n"
        "try:\n"
        "    load_image(sys.argv[1])\n"
        "    refused = None\n"
        "except ImageError as exc:\n"
        "    refused = str(exc)\n"
        "png = peak_mb()\n"
        "image = load_image(sys.argv[2])\n"
        "print(json.dumps({'base': base, 'png': png, 'jpeg': peak_mb(), 'refused': refused,\n"
        "    'shape': image.rgb.shape, 'size': image.original_size}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(root / "huge.png"), str(root / "huge.jpg")],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(done.stdout)
    assert "12000x9000 pixels is over the limit" in report["refused"]
    assert report["png"] - report["base"] < 20  # a decode would need 108 MB
    assert report["size"] == list(HUGE_SIZE) and report["shape"] == [2250, 3000, 3]
    assert report["jpeg"] - report["base"] < 100  # a full decode needs 108 + 324 MB


NOBODY = 65534


def load_error_as(path: Path, uid: int | None) -> str:
    """The :class:`ImageError` text of ``load_image(path)`` (``decoded`` if none), run as user
    ``uid`` in a forked child when given; ``cannot drop root: ...`` if the child cannot."""

    def attempt() -> str:
        try:
            load_image(path)
        except ImageError as exc:
            return str(exc)
        return "decoded"

    if uid is None:
        return attempt()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports through the pipe and exits without pytest's cleanup
        os.close(read_end)
        try:
            os.setgid(uid)
            os.setuid(uid)
            message = attempt()
        except OSError as exc:
            message = f"cannot drop root: {exc}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


def test_unreadable_file(photo: np.ndarray) -> None:
    """Mode 000. Root reads any file, so as root the read is done by a child process that has
    dropped to the user nobody."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        root.chmod(0o755)  # the folder is searchable by everyone, the file readable by no one
        case = make_unreadable(root, photo)
        message = load_error_as(root / case.name, NOBODY if os.geteuid() == 0 else None)
    if message.startswith("cannot drop root"):
        pytest.skip(f"running as root and {message}: mode 000 does not stop root")
    assert message == f"{root / case.name}: permission denied"


def test_oversized_png_is_refused_before_its_pixels_are_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import PngImagePlugin

    path = tmp_path / "big.png"
    Image.new("RGB", (64, 48), "red").save(path)  # no eXIf chunk: getexif() would decode it

    def no_decode(self: Image.Image) -> None:
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decode)
    with pytest.raises(ImageError, match="64x48 pixels is over the limit of 100"):
        load_image(path, max_pixels=100)


SWAPPED_FIFO = """
import os, sys
from pathlib import Path
import lcar_deploy.image_io as image_io
fifo = Path(sys.argv[1])
os.mkfifo(fifo)
image_io.check_file = lambda path: None  # the check passed: the file was swapped since
try:
    image_io.load_image(fifo)
except image_io.ImageError as exc:
    print(exc)
"""


def test_a_fifo_swapped_in_after_the_check_does_not_block(tmp_path: Path) -> None:
    """The open itself does not block and the open file is checked again: a child process,
    so that a blocking open fails the test instead of hanging it."""
    fifo = tmp_path / "photo.jpg"
    done = subprocess.run(
        [sys.executable, "-c", SWAPPED_FIFO, str(fifo)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{fifo}: not a regular file (a FIFO)"


def test_names_with_control_characters_are_escaped(tmp_path: Path, photo: np.ndarray) -> None:
    """A name with a newline and a terminal escape cannot fake a line or colour a terminal."""
    bad = tmp_path / "x\nerror: all lost\x1b[2J.jpg"
    bad.write_bytes(b"not a JPEG at all")
    with pytest.raises(ImageError) as info:
        load_image(bad)
    message = str(info.value)
    assert message.isprintable() and "x\\nerror: all lost\\x1b[2J.jpg: cannot decode" in message
    fifo = tmp_path / "pipe\r.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=r"pipe\\r\.jpg: not a regular file \(a FIFO\)"):
        load_image(fifo)
