"""``lcar-deploy localize`` and its output folder: one run at a time, a full or read-only disk,
a resume made differently, Ctrl-C and SIGTERM, TIFFs Pillow cannot read, files that are not
images.

Runs use the ``cam`` or ``arm`` method of the small session bundle on small images. The tests
that need a real small or read-only file system mount a tmpfs and are skipped where mounting is
not permitted; their always-run twins make the system calls fail instead (monkeypatched), which
exercises the same handling of the same errors, not the file system.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import tifffile
from PIL import Image, features
from typer.testing import CliRunner

from lcar_deploy import cli
from lcar_deploy.bundle import sha256_file
from lcar_deploy.image_io import ImageError, load_image

FAST = ["--device", "cpu", "--threads", "2", "--quiet"]


def invoke(*args: str | Path) -> tuple[int, str, str]:
    """Run ``lcar-deploy ARGS`` in this process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def lcar_deploy_command() -> list[str]:
    script = Path(sys.executable).with_name("lcar-deploy")
    return [str(script)] if script.is_file() else [shutil.which("lcar-deploy") or "lcar-deploy"]


def records_of(out: Path) -> list[dict]:
    """The lines of ``predictions.jsonl``; each must be complete JSON."""
    data = (out / "predictions.jsonl").read_bytes()
    assert not data or data.endswith(b"\n"), "partial last line"
    return [json.loads(line) for line in data.splitlines()]


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def assert_files_match_records(out: Path) -> None:
    """Every mask and overlay on disk belongs to a record, and every record's files exist."""
    named = set()
    for record in records_of(out):
        for key in ("mask", "overlay"):
            if key in record:
                named.add(out / record[key])
                assert (out / record[key]).is_file(), record[key]
    on_disk = {p for folder in ("masks", "overlays") for p in (out / folder).rglob("*.*")}
    assert on_disk <= named, on_disk - named


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.fromarray(skimage.data.chelsea()).resize((160, 106)))


def image_folder(root: Path, photo: np.ndarray, count: int) -> Path:
    """``count`` different JPEGs of the photo (shifted) in ``root``."""
    root.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.roll(photo, 23 * i, axis=1)).save(root / f"img{i:02d}.jpg")
    return root


def base_args(src: Path, out: Path, bundle: Path, method: str = "cam") -> list[str | Path]:
    return ["localize", src, "--out", out, "--bundle", bundle, "--method", method, *FAST]


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``path`` (skips the test where mounting is not permitted)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# --- one run at a time -------------------------------------------------------------------------


def test_a_second_run_on_a_held_output_folder_is_refused(
    small_bundle: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    """Another process holds OUT/.lock (as a running localize does): the run stops at once."""
    src = image_folder(tmp_path / "images", photo, 2)
    out = tmp_path / "out"
    out.mkdir()
    holder_code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(out / ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        code, _, stderr = invoke(*base_args(src, out, small_bundle))
    finally:
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()
    assert code == cli.EXIT_ERROR, stderr
    assert f"error: {out}: another localize run (pid {holder.pid}) is writing to this folder" in (
        stderr
    )
    assert not (out / "predictions.jsonl").exists()
    code, _, stderr = invoke(*base_args(src, out, small_bundle))  # released: this run goes on
    assert code == 0, stderr
    assert len(records_of(out)) == 2


@pytest.mark.slow
def test_two_runs_started_at_once_write_every_image_once(
    small_bundle: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    count = 12
    src = image_folder(tmp_path / "images", photo, count)
    out = tmp_path / "out"
    command = [*lcar_deploy_command(), *map(str, base_args(src, out, small_bundle, "arm"))]
    command += ["--batch-size", "1"]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    for run in runs:
        run.stderr.close()
    assert sorted(r["path"] for r in records_of(out)) == [f"img{i:02d}.jpg" for i in range(count)]
    for code, stderr in results:
        # the second run either found the folder held, or started once the first had finished
        assert code == 0 or (code == cli.EXIT_ERROR and "is writing to this folder" in stderr), (
            stderr
        )
    assert not temp_files(out)


# --- a full disk, a read-only folder ------------------------------------------------------------


def test_full_disk_stops_cleanly_and_the_rerun_completes(
    small_bundle: Path, photo: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up while a record line is written (part of it written, then ENOSPC),
    and later while an overlay is written: each time the run stops with one line naming the
    file, the lines before are intact, nothing half-written is left."""
    src = image_folder(tmp_path / "images", photo, 5)
    out = tmp_path / "out"
    args = [*base_args(src, out, small_bundle), "--overlays", "--batch-size", "2"]
    real_write = os.write
    lines = {"written": 0}

    def full_after_two_lines(fd: int, data: bytes) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.endswith("predictions.jsonl"):
            return real_write(fd, data)
        lines["written"] += 1
        if lines["written"] <= 2:
            return real_write(fd, data)
        if lines["written"] == 3:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full_after_two_lines)
    code, _, stderr = invoke(*args)
    monkeypatch.undo()
    assert code == cli.EXIT_ERROR, stderr
    assert stderr.startswith(
        f"error: {out / 'predictions.jsonl'}: no space left on device (stopped after 2 of 5 "
        "images of this run;"
    ), stderr
    assert "free some space, then run the same command again to resume" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert [r["path"] for r in records_of(out)] == ["img00.jpg", "img01.jpg"]
    assert_files_match_records(out)  # img02's overlay went with its line
    assert not temp_files(out)

    real_write_bytes = Path.write_bytes

    def full_in_an_overlay(self: Path, data: bytes) -> int:
        if self.name.startswith(".img03.jpg.jpg.") and self.name.endswith(".tmp"):
            real_write_bytes(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_in_an_overlay)
    code, _, stderr = invoke(*args)
    monkeypatch.undo()
    assert code == cli.EXIT_ERROR, stderr
    assert stderr.startswith(
        f"error: {out / 'overlays' / 'img03.jpg.jpg'}: no space left on device (stopped after "
        "1 of 3 images of this run;"
    ), stderr
    assert [r["path"] for r in records_of(out)] == ["img00.jpg", "img01.jpg", "img02.jpg"]
    assert_files_match_records(out)
    assert not temp_files(out)

    code, _, stderr = invoke(*args)  # space freed
    assert code == 0, stderr
    assert "2 ok, 0 failed, 3 already done" in stderr
    assert [r["path"] for r in records_of(out)] == [f"img{i:02d}.jpg" for i in range(5)]
    assert_files_match_records(out)
    assert len(list((out / "overlays").iterdir())) == 5


@pytest.mark.slow
def test_full_disk_on_a_small_tmpfs(small_bundle: Path, photo: np.ndarray, tmp_path: Path) -> None:
    """A real full file system: a tmpfs with a few pages left."""
    count = 8
    src = image_folder(tmp_path / "images", photo, count)
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))  # 16 pages left: a few images
        out = disk / "out"
        args = [*base_args(src, out, small_bundle), "--overlays", "--save-masks"]
        code, _, stderr = invoke(*args)
        assert code == cli.EXIT_ERROR, stderr
        assert re.match(rf"error: {re.escape(str(out))}/\S+: no space left on device", stderr)
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
        assert 1 <= len(records_of(out)) < count
        assert_files_match_records(out)
        assert not temp_files(out)
        filler.unlink()
        code, _, stderr = invoke(*args)
        assert code == 0, stderr
        records = records_of(out)
        assert sorted(r["path"] for r in records) == [f"img{i:02d}.jpg" for i in range(count)]
        assert_files_match_records(out)
        assert not temp_files(out)


def read_only_by_patch(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every open for writing under ``out`` fail with EROFS, as on a read-only mount."""
    real_open = os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def refuse_writes(path, flags, *args, **kwargs):
        if flags & writing and Path(os.fsdecode(path)).is_relative_to(out):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_writes)


@pytest.mark.parametrize("how", ["mode 555", "patched EROFS", "read-only tmpfs"])
def test_read_only_output_folder(
    how: str,
    small_bundle: Path,
    photo: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An output folder with one image done turns read-only; the resume is a clean error."""
    if how == "mode 555" and os.geteuid() == 0:
        pytest.skip("running as root: mode 555 does not stop root writing")
    src = image_folder(tmp_path / "images", photo, 2)
    with tmpfs(tmp_path / "disk", "size=4m") if how == "read-only tmpfs" else _no_mount():
        out = tmp_path / ("disk" if how == "read-only tmpfs" else "out") / "out"
        args = base_args(src, out, small_bundle)
        code, _, stderr = invoke(*args, "--limit", "1")
        assert code == 0, stderr
        before = (out / "predictions.jsonl").read_bytes()
        if how == "mode 555":
            out.chmod(0o555)
        elif how == "patched EROFS":
            read_only_by_patch(out, monkeypatch)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(out.parent)], check=True)
        try:
            code, _, stderr = invoke(*args)
        finally:
            monkeypatch.undo()
            if how == "mode 555":
                out.chmod(0o755)
        reason = "permission denied" if how == "mode 555" else "read-only file system"
        assert code == cli.EXIT_ERROR, stderr
        assert stderr.startswith(f"error: {out}: cannot write to the output folder ({reason})")
        assert "Traceback" not in stderr
        assert (out / "predictions.jsonl").read_bytes() == before


@contextmanager
def _no_mount() -> Iterator[None]:
    yield None


# --- a resume made differently -----------------------------------------------------------------


def changed_bundle(small_bundle: Path, folder: Path) -> Path:
    """A copy of the small bundle whose model file differs (its doc string), same outputs."""
    import onnx

    shutil.copytree(small_bundle, folder)
    model = onnx.load(str(folder / "model.onnx"))
    model.doc_string = "a different export"
    onnx.save(model, str(folder / "model.onnx"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.onnx"]["sha256"] = sha256_file(folder / "model.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_resume_made_differently_is_refused_and_force_starts_over(
    small_bundle: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    src = image_folder(tmp_path / "images", photo, 3)
    out = tmp_path / "out"
    files = ["--save-masks", "--overlays"]
    code, _, stderr = invoke(*base_args(src, out, small_bundle), *files, "--limit", "2")
    assert code == 0, stderr
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "cam" and run["class_id"] is None
    assert run["settings"]["flip"] is True and run["settings"]["method"] == "cam"
    assert run["bundle"]["sha256"]["model.onnx"] == sha256_file(small_bundle / "model.onnx")
    first = (out / "predictions.jsonl").read_bytes()
    other = changed_bundle(small_bundle, tmp_path / "other-bundle")
    refused = [
        (base_args(src, out, small_bundle, "arm"), "method cam before, arm now"),
        ([*base_args(src, out, small_bundle), "--settings", '{"flip": false}'],
         "setting flip true before, false now"),
        ([*base_args(src, out, small_bundle), "--settings", '{"cam": {"beta": 0.5}}'],
         "setting cam.beta 0.6 before, 0.5 now"),
        ([*base_args(src, out, small_bundle), "--class", "281"],
         "class predicted before, 281 now"),
        (base_args(src, out, other),
         f"bundle {small_bundle} before, {other} now (their model files differ)"),
    ]  # fmt: skip
    for args, difference in refused:
        code, _, stderr = invoke(*args)
        assert code == cli.EXIT_ERROR, (args, stderr)
        assert stderr.startswith(f"error: {out}: holds the results of a run made differently ("), (
            stderr
        )
        assert difference in stderr, stderr
        assert "--force to start over" in stderr
        assert (out / "predictions.jsonl").read_bytes() == first
    # How a stage is computed may change: the same results.
    code, _, stderr = invoke(*base_args(src, out, small_bundle), "--arm-backend", "reference")
    assert code == 0, stderr
    assert "1 ok, 0 failed, 2 already done" in stderr

    (out / "notes.txt").write_text("mine")
    (out / "masks" / "mine.png").write_bytes(b"not written by lcar-deploy")
    code, _, stderr = invoke(*base_args(src, out, small_bundle, "arm"), "--force", "--save-masks")
    assert code == 0, stderr
    assert "3 ok, 0 failed, 0 already done" in stderr
    records = records_of(out)
    assert len(records) == 3 and {r["method"] for r in records} == {"arm"}
    assert json.loads((out / "run.json").read_text())["method"] == "arm"
    assert not (out / "overlays").exists()  # the earlier overlays were the folder's only files
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "img00.jpg.png",
        "img01.jpg.png",
        "img02.jpg.png",
        "mine.png",
    ]
    assert (out / "notes.txt").read_text() == "mine"


# --- Ctrl-C and SIGTERM ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_run_says_how_far_it_got(
    sig: signal.Signals, small_bundle: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    count = 12
    src = image_folder(tmp_path / "images", photo, count)
    out = tmp_path / "out"
    args = [*base_args(src, out, small_bundle, "arm"), "--batch-size", "1", "--save-masks"]
    predictions = out / "predictions.jsonl"
    proc = subprocess.Popen(
        [*lcar_deploy_command(), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # a child started from a shell's background job would inherit SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if predictions.exists() and predictions.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr_bytes = proc.communicate(timeout=60)
    stderr = stderr_bytes.decode()
    assert proc.returncode == 128 + sig, stderr
    done = len(records_of(out))
    assert 1 <= done < count
    assert stderr.strip().splitlines()[-1:] == [
        f"interrupted: {done} of {count} images done this run, written to {predictions}; "
        "run the same command again to resume"
    ]
    assert "Traceback" not in stderr
    assert_files_match_records(out)
    assert not temp_files(out)
    code, _, stderr = invoke(*args)
    assert code == 0, stderr
    assert f"{count - done} ok, 0 failed, {done} already done" in stderr
    assert len(records_of(out)) == count


# --- TIFFs Pillow cannot read ------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Truncated File Read:UserWarning")
def test_tiffs_pillow_refuses_are_decoded_by_tifffile(
    photo: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = photo.astype(np.float64) / 255.0
    second = first[::-1]
    planar = tmp_path / "multipage_rgb.tif"  # like scikit-image's sample: float64, planar RGB
    pages = np.stack([first, second]).transpose(0, 3, 1, 2)
    tifffile.imwrite(planar, pages, photometric="rgb", planarconfig="separate")
    with pytest.raises(OSError, match="cannot identify image file"):
        Image.open(planar)
    image = load_image(planar)
    assert image.original_size == (photo.shape[1], photo.shape[0])
    assert np.array_equal(image.rgb, photo)  # the first page, 0..1 -> 0..255

    rgb16 = tmp_path / "rgb16_planar.tif"
    words = photo.astype(np.uint16) * 257
    tifffile.imwrite(rgb16, words.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    assert np.abs(load_image(rgb16).rgb.astype(int) - photo).max() <= 1  # full 16-bit range

    gray = tmp_path / "gray_float.tif"  # Pillow reads it (mode F): 0..1 must not turn black
    values = photo.mean(axis=2) / 255.0
    tifffile.imwrite(gray, values.astype(np.float32))
    assert np.abs(load_image(gray).rgb[..., 0] - np.round(values * 255)).max() <= 1

    def never(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("the pixels of a page over the limit were read")

    with monkeypatch.context() as patch:
        patch.setattr(tifffile.TiffPage, "asarray", never)
        with pytest.raises(ImageError, match=r"160x106 pixels is over the limit of 1000"):
            load_image(planar, max_pixels=1000)

    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(planar.read_bytes()[:300])
    with pytest.raises(ImageError) as info:
        load_image(truncated)
    message = str(info.value)
    assert message.startswith(f"{truncated}: cannot decode image (cannot identify image file")
    assert "; tifffile: " in message


def test_sample_folder_with_a_tiff_pillow_refuses(
    small_bundle: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(photo).save(src / "a.png")
    pages = np.stack([photo, photo[::-1]]).astype(np.float64).transpose(0, 3, 1, 2) / 255.0
    tifffile.imwrite(src / "b.tif", pages, photometric="rgb", planarconfig="separate")
    code, _, stderr = invoke(*base_args(src, tmp_path / "out", small_bundle))
    assert code == 0, stderr
    assert "2 ok, 0 failed" in stderr
    records = {r["path"]: r for r in records_of(tmp_path / "out")}
    assert records["b.tif"]["image_size"] == [photo.shape[1], photo.shape[0]]


# --- files that are not images -----------------------------------------------------------------


def test_files_that_are_not_images_and_failed_files_are_named(
    small_bundle: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    src = tmp_path / "images"
    (src / "docs").mkdir(parents=True)
    Image.fromarray(photo).save(src / "a.png")
    Image.fromarray(photo).save(src / "c.tga")  # a format Pillow reads, not in the common list
    (src / "docs" / "notes.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>\n')
    Image.fromarray(photo).save(src / "docs" / "paper.pdf")
    (src / "readme.txt").write_text("not an image")
    for i in range(4):
        (src / f"bad{i}.jpg").write_bytes(b"not a JPEG")
    out = tmp_path / "out"
    code, _, stderr = invoke(*base_args(src, out, small_bundle))
    assert code == cli.EXIT_SOME_IMAGES_FAILED, stderr
    assert "2 ok, 4 failed, 0 already done; " in stderr
    assert "; failed: bad0.jpg, bad1.jpg, bad2.jpg and 1 more (reasons in their error lines); " in (
        stderr
    )
    assert (
        "; skipped 3 files that are not images (readme.txt, docs/notes.svg, docs/paper.pdf); "
    ) in stderr
    assert sorted(r["path"] for r in records_of(out)) == [
        "a.png",
        "bad0.jpg",
        "bad1.jpg",
        "bad2.jpg",
        "bad3.jpg",
        "c.tga",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_not_images"] == 3
    code, _, stderr = invoke(*base_args(src, out, small_bundle))  # earlier failures named too
    assert code == cli.EXIT_SOME_IMAGES_FAILED
    assert "0 ok, 0 failed, 6 already done (4 of them failed); failed: bad0.jpg, bad1.jpg" in (
        stderr
    )


def test_avif_is_read(small_bundle: Path, photo: np.ndarray, tmp_path: Path) -> None:
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    src = tmp_path / "images"
    src.mkdir()
    try:
        Image.fromarray(photo).save(src / "a.avif")
    except (OSError, KeyError, ValueError) as exc:
        pytest.skip(f"this Pillow cannot write AVIF ({exc})")
    code, _, stderr = invoke(*base_args(src, tmp_path / "out", small_bundle))
    assert code == 0, stderr
    assert "1 ok, 0 failed" in stderr and "not an image" not in stderr
    assert records_of(tmp_path / "out")[0]["image_size"] == [photo.shape[1], photo.shape[0]]
