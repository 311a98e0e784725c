"""``lcar-deploy localize`` and its output folder: the generated bad-image corpus mixed with
real images, the full method on tiny images, a failing image, a killed run resumed,
``--retry-errors``, one run at a time, a full or read-only disk, an output folder that cannot
be created, a resume made differently, Ctrl-C and SIGTERM, TIFFs Pillow cannot read, files that
are not images; the output folder's rule (new, empty or an earlier run; never the input), links
and FIFOs placed in it, CSV paths that climb, hostile run.json and predictions lines.

Runs use the ``cam`` or ``arm`` method of the small session bundle on small images; the full
``lcar`` method runs once, on tiny images. The tests that need a real small or read-only file
system mount a tmpfs and are skipped where mounting is not permitted; their always-run twins
make the system calls fail instead (monkeypatched), which exercises the same handling of the
same errors, not the file system.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import struct
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
from bad_inputs import Case, jpeg_bytes
from helpers import FAST, image_folder, invoke, lcar_deploy_command, records_of, run_cli
from PIL import Image, features

from lcar_deploy import cli
from lcar_deploy.bundle import Bundle, sha256_file
from lcar_deploy.config import PipelineConfig
from lcar_deploy.datasets import load_dataset
from lcar_deploy.evaluation import evaluate_batch
from lcar_deploy.image_io import ImageError, load_image
from lcar_deploy.io import write_mark
from lcar_deploy.localize import (
    OUTPUT_KIND,
    LocalizeOptions,
    _round,
    find_images,
    localize_folder,
    output_name,
)
from lcar_deploy.pipeline import BackboneRun, Localizer
from lcar_deploy.stages.sgrm import SgrmConfig


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


# --- the bad-image corpus mixed with real images, tiny images, a failing image --------------------


def png_size(path: Path) -> tuple[int, int]:
    """(W, H) from a PNG's header, without decoding it."""
    with path.open("rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def iou(a: list[int], b: list[int]) -> float:
    """Inclusive-pixel IoU of two [x0, y0, x1, y1] boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(w, 0) * max(h, 0)
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area - inter)


@pytest.fixture(scope="module")
def real_images(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    """Real photos: scikit-image's samples, and CUB / ILSVRC images when the data is here."""
    folder = tmp_path_factory.mktemp("real")
    paths = []
    for name in ("astronaut", "coffee"):
        paths.append(folder / f"{name}.png")
        Image.fromarray(getattr(skimage.data, name)()).save(paths[-1])
    try:
        data = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        return paths
    paths += sorted((data / "CUB_200_2011" / "images").rglob("*.jpg"))[:2]
    paths += sorted((data / "ILSVRC-mini" / "val").glob("*.JPEG"))[:2]
    return paths


@pytest.mark.slow
def test_localize_corpus_mixed_with_real_images(
    image_corpus: tuple[Path, list[Case]],
    real_images: list[Path],
    small_bundle: Path,
    tmp_path: Path,
) -> None:
    root, cases = image_corpus
    real_dir = root / "real"
    real_dir.mkdir()
    for i, path in enumerate(real_images):
        (real_dir / f"{i}{path.suffix}").symlink_to(path)
    out = tmp_path / "out"
    args = ["localize", root, "--out", out, "--bundle", small_bundle, "--method", "cam"]
    args += ["--batch-size", "4", "--save-masks", "--overlays", *FAST]
    try:
        code, _, stderr = invoke(*args)
        records = records_of(out)
        first_bytes = (out / "predictions.jsonl").read_bytes()
        again, _, stderr_again = invoke(*args)
    finally:
        shutil.rmtree(real_dir)
    bad = [c for c in cases if c.error]
    assert code == cli.EXIT_SOME_IMAGES_FAILED
    assert f"{len(bad)} failed" in stderr
    by_path = {r["path"]: r for r in records}
    assert len(by_path) == len(records), "duplicate lines"
    expected = {c.name for c in cases} | {f"real/{i}{p.suffix}" for i, p in enumerate(real_images)}
    assert set(by_path) == expected
    for case in cases:
        record = by_path[case.name]
        if case.error:
            assert record["status"] == "error", case.name
            assert re.search(case.error, record["error"]), (case.name, record["error"])
        else:
            assert record["status"] == "ok", (case.name, record.get("error"))
            assert record["image_size"] == list(case.size), case.name
    for record in records:
        if record["status"] != "ok":
            continue
        width, height = record["image_size"]
        x0, y0, x1, y1 = record["box"]
        assert 0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height, record["path"]
        assert png_size(out / record["mask"]) == (width, height)
        assert (out / record["overlay"]).is_file()
    assert by_path[os.fsdecode(b"caf\xe9.jpg")]["mask"] == os.fsdecode(b"masks/caf\xe9.jpg.png")
    rotated, upright = by_path["exif_rotated.jpg"], by_path["upright.jpg"]
    assert iou(rotated["box"], upright["box"]) >= 0.8, (rotated["box"], upright["box"])
    # A second run finds everything done, loses nothing, and still reports the failures.
    assert again == cli.EXIT_SOME_IMAGES_FAILED
    assert f"0 ok, 0 failed, {len(expected)} already done ({len(bad)} of them failed)" in (
        stderr_again
    )
    assert (out / "predictions.jsonl").read_bytes() == first_bytes


@pytest.mark.slow
def test_full_method_on_tiny_images(
    small_bundle: Path, image_corpus: tuple[Path, list[Case]], tmp_path: Path
) -> None:
    root, _ = image_corpus
    src = tmp_path / "tiny"
    src.mkdir()
    for name in ("tiny_1x1.png", "tiny_8x8.jpg"):
        shutil.copy(root / name, src / name)
    config = PipelineConfig(method="lcar", sgrm=SgrmConfig(max_steps=5))
    localizer = Localizer(Bundle.load(small_bundle), config, device="cpu", threads=2)
    summary = localize_folder(localizer, src, tmp_path / "out", LocalizeOptions(), progress=False)
    assert (summary.ok, summary.errors) == (2, 0)
    for record in records_of(tmp_path / "out"):
        assert record["status"] == "ok" and record["method"] == "lcar"
        width, height = record["image_size"]
        x0, y0, x1, y1 = record["box"]
        assert 0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height
        assert 0 <= record["sgrm_steps"] <= 5


@pytest.mark.slow
def test_a_failing_image_does_not_stop_localize_or_eval(
    small_bundle: Path, photo: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault inside the pipeline (injected for 8x8 images) fails that image only, with the
    stages run in one loop or pipelined on two threads (threads=2)."""
    src = image_folder(tmp_path / "images", photo, 2, quality=85)
    Image.fromarray(photo).resize((8, 8)).save(src / "small.png")
    original = Localizer.backbone_stage

    def faulty(self: Localizer, images: list[np.ndarray]) -> BackboneRun:
        if any(im.shape[:2] == (8, 8) for im in images):
            raise RuntimeError("injected fault")
        return original(self, images)

    monkeypatch.setattr(Localizer, "backbone_stage", faulty)
    config = PipelineConfig(method="cam")
    localizer = Localizer(Bundle.load(small_bundle), config, device="cpu", threads=2)
    options = LocalizeOptions(batch_size=3)
    for overlap in (False, True):
        out = tmp_path / f"out-{overlap}"
        summary = localize_folder(localizer, src, out, options, progress=False, overlap=overlap)
        assert (summary.ok, summary.errors) == (2, 1)
        assert bool(summary.busy_percent) == overlap
        status = {r["path"]: (r["status"], r.get("error")) for r in records_of(out)}
        assert status["small.png"] == (
            "error",
            "small.png: localization failed (RuntimeError: injected fault)",
        )
        assert status["img00.jpg"][0] == status["img01.jpg"][0] == "ok"

    meta = tmp_path / "images" / "metadata" / "test"
    meta.mkdir(parents=True)
    names = ["img00.jpg", "small.png", "img01.jpg"]
    (meta / "image_ids.txt").write_text("\n".join(names) + "\n")
    (meta / "class_labels.txt").write_text("".join(f"{n},281\n" for n in names))
    (meta / "localization.txt").write_text("".join(f"{n},1,1,5,5\n" for n in names))
    dataset = load_dataset("ilsvrc", src, "test")
    outcomes = evaluate_batch(localizer, dataset.records, ("cam",), gt_class=False)
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert outcomes[1].error.endswith(
        "small.png: localization failed (RuntimeError: injected fault)"
    )
    assert outcomes[0].maps["cam"].shape == (224, 224)


# --- a killed run, resumed; --retry-errors --------------------------------------------------------


@pytest.mark.slow
def test_killed_run_resumes_complete_without_duplicates(
    small_bundle: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    count = 10
    src = image_folder(tmp_path / "images", photo, count, quality=85)
    out = tmp_path / "out"
    args = ["localize", str(src), "--out", str(out), "--bundle", str(small_bundle)]
    args += ["--method", "arm", "--batch-size", "1", "--save-masks", *FAST]
    predictions = out / "predictions.jsonl"
    command = [*lcar_deploy_command(), *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if predictions.exists() and predictions.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    proc.stderr.close()
    before = records_of(out)
    assert 2 <= len(before) < count
    # SIGKILL cannot cut our single write() in two; a torn line as after a power cut can be
    # left by other writers, so add one: the next run must drop it.
    with predictions.open("ab") as f:
        f.write(b'{"path": "img99.jpg", "sta')
    kept = b"".join(json.dumps(r).encode() + b"\n" for r in before)

    code, _, stderr = invoke(*args)  # the second run in this process (saves a start-up)
    assert code == 0, stderr
    resumed = f"{count - len(before)} ok, 0 failed, {len(before)} already done"
    assert resumed in stderr
    after = records_of(out)
    paths = [r["path"] for r in after]
    assert sorted(paths) == [f"img{i:02d}.jpg" for i in range(count)]  # complete, no duplicates
    assert after[: len(before)] == before  # nothing written before the kill is lost
    assert predictions.read_bytes().startswith(kept)
    assert all(r["status"] == "ok" and (out / r["mask"]).is_file() for r in after)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_retry_errors_keeps_one_line_per_image(
    small_bundle: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    src = image_folder(tmp_path / "images", photo, 2, quality=85)
    (src / "later.jpg").write_bytes(b"")
    (src / "later.png").write_bytes(jpeg_bytes(Image.fromarray(photo)))  # same stem
    out = tmp_path / "images" / "out"  # inside the input folder
    args = ["localize", src, "--out", out, "--bundle", small_bundle, "--method", "cam"]
    args += ["--overlays", *FAST]
    code, _, _ = invoke(*args)
    assert code == cli.EXIT_SOME_IMAGES_FAILED
    (src / "later.jpg").write_bytes(jpeg_bytes(Image.fromarray(photo)))
    code, _, stderr = invoke(*args, "--retry-errors")
    assert code == 0, stderr
    assert "1 ok, 0 failed, 3 already done" in stderr  # out/ not searched
    records = records_of(out)
    assert sorted(r["path"] for r in records) == [
        "img00.jpg",
        "img01.jpg",
        "later.jpg",
        "later.png",
    ]
    assert all(r["status"] == "ok" for r in records)
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["img00.jpg.jpg", "img01.jpg.jpg", "later.jpg.jpg", "later.png.jpg"]


# --- one run at a time ----------------------------------------------------------------------------


def test_a_second_run_on_a_held_output_folder_is_refused(
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path
) -> None:
    """Another process holds OUT/.lock (as a running localize does): the run stops at once."""
    src = image_folder(tmp_path / "images", small_photo, 2)
    out = tmp_path / "out"
    out.mkdir()
    write_mark(out, OUTPUT_KIND)  # as the running localize has
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
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path
) -> None:
    count = 12
    src = image_folder(tmp_path / "images", small_photo, count)
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


# --- a full disk, a read-only folder --------------------------------------------------------------


def test_full_disk_stops_cleanly_and_the_rerun_completes(
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up while a record line is written (part of it written, then ENOSPC),
    and later while an overlay is written: each time the run stops with one line naming the
    file, the lines before are intact, nothing half-written is left."""
    src = image_folder(tmp_path / "images", small_photo, 5)
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
def test_full_disk_on_a_small_tmpfs(
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path
) -> None:
    """A real full file system: a tmpfs with a few pages left."""
    count = 8
    src = image_folder(tmp_path / "images", small_photo, count)
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
    small_photo: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An output folder with one image done turns read-only; the resume is a clean error."""
    if how == "mode 555" and os.geteuid() == 0:
        pytest.skip("running as root: mode 555 does not stop root writing")
    src = image_folder(tmp_path / "images", small_photo, 2)
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


# --- an output folder that cannot be created ------------------------------------------------------


@pytest.mark.slow
def test_output_folder_that_cannot_be_created(
    small_bundle: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    src = image_folder(tmp_path / "images", photo, 1, quality=85)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "overlays").write_text("a file where the overlays folder goes")
    base = ["localize", src, "--bundle", small_bundle, "--method", "cam", *FAST]
    code, _, stderr = invoke(*base, "--out", a_file / "sub")
    assert code == cli.EXIT_ERROR
    assert "file.txt/sub: cannot create the output folder (Not a directory)" in stderr
    code, _, stderr = invoke(*base, "--out", blocked, "--overlays")
    assert code == cli.EXIT_ERROR
    assert "blocked: exists and is not an empty folder nor a localize output" in stderr
    write_mark(blocked, OUTPUT_KIND)  # an earlier run's folder, with a file in the way
    code, _, stderr = invoke(*base, "--out", blocked, "--overlays")
    assert code == cli.EXIT_ERROR
    assert "blocked/overlays: cannot create the output folder (is a link or not a folder" in stderr
    assert not (blocked / "predictions.jsonl").exists()
    eval_args = ["eval", "--dataset", "ilsvrc", "--root", src, "--bundle", small_bundle]
    meta = src / "metadata" / "test"
    meta.mkdir(parents=True)
    (meta / "image_ids.txt").write_text("img00.jpg\n")
    (meta / "class_labels.txt").write_text("img00.jpg,281\n")
    code, _, stderr = invoke(*eval_args, "--out", a_file / "sub", *FAST)
    assert code == cli.EXIT_ERROR
    assert "cannot create the output folder (Not a directory)" in stderr


# --- a resume made differently --------------------------------------------------------------------


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
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path
) -> None:
    src = image_folder(tmp_path / "images", small_photo, 3)
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


# --- Ctrl-C and SIGTERM ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_run_says_how_far_it_got(
    sig: signal.Signals, small_bundle: Path, small_photo: np.ndarray, tmp_path: Path
) -> None:
    count = 12
    src = image_folder(tmp_path / "images", small_photo, count)
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


# --- TIFFs Pillow cannot read ---------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Truncated File Read:UserWarning")
def test_tiffs_pillow_refuses_are_decoded_by_tifffile(
    small_photo: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = small_photo.astype(np.float64) / 255.0
    second = first[::-1]
    planar = tmp_path / "multipage_rgb.tif"  # like scikit-image's sample: float64, planar RGB
    pages = np.stack([first, second]).transpose(0, 3, 1, 2)
    tifffile.imwrite(planar, pages, photometric="rgb", planarconfig="separate")
    with pytest.raises(OSError, match="cannot identify image file"):
        Image.open(planar)
    image = load_image(planar)
    assert image.original_size == (small_photo.shape[1], small_photo.shape[0])
    assert np.array_equal(image.rgb, small_photo)  # the first page, 0..1 -> 0..255

    rgb16 = tmp_path / "rgb16_planar.tif"
    words = small_photo.astype(np.uint16) * 257
    tifffile.imwrite(rgb16, words.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    assert np.abs(load_image(rgb16).rgb.astype(int) - small_photo).max() <= 1  # full 16-bit range

    gray = tmp_path / "gray_float.tif"  # Pillow reads it (mode F): 0..1 must not turn black
    values = small_photo.mean(axis=2) / 255.0
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
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path
) -> None:
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(small_photo).save(src / "a.png")
    pages = (
        np.stack([small_photo, small_photo[::-1]]).astype(np.float64).transpose(0, 3, 1, 2) / 255.0
    )
    tifffile.imwrite(src / "b.tif", pages, photometric="rgb", planarconfig="separate")
    code, _, stderr = invoke(*base_args(src, tmp_path / "out", small_bundle))
    assert code == 0, stderr
    assert "2 ok, 0 failed" in stderr
    records = {r["path"]: r for r in records_of(tmp_path / "out")}
    assert records["b.tif"]["image_size"] == [small_photo.shape[1], small_photo.shape[0]]


# --- files that are not images --------------------------------------------------------------------


def test_files_that_are_not_images_and_failed_files_are_named(
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path
) -> None:
    src = tmp_path / "images"
    (src / "docs").mkdir(parents=True)
    Image.fromarray(small_photo).save(src / "a.png")
    # c.tga: a format Pillow reads, not in the common list
    Image.fromarray(small_photo).save(src / "c.tga")
    (src / "docs" / "notes.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>\n')
    Image.fromarray(small_photo).save(src / "docs" / "paper.pdf")
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


def test_avif_is_read(small_bundle: Path, small_photo: np.ndarray, tmp_path: Path) -> None:
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    src = tmp_path / "images"
    src.mkdir()
    try:
        Image.fromarray(small_photo).save(src / "a.avif")
    except (OSError, KeyError, ValueError) as exc:
        pytest.skip(f"this Pillow cannot write AVIF ({exc})")
    code, _, stderr = invoke(*base_args(src, tmp_path / "out", small_bundle))
    assert code == 0, stderr
    assert "1 ok, 0 failed" in stderr and "not an image" not in stderr
    assert records_of(tmp_path / "out")[0]["image_size"] == [
        small_photo.shape[1],
        small_photo.shape[0],
    ]


def test_known_labels_from_class_folders_or_a_csv_list(
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path
) -> None:
    """--labels: each image's map is of its own class (not the predicted one); unknown class
    names are refused before the output folder is touched; --format coco follows."""
    bundle = Bundle.load(small_bundle)
    cat, dog = bundle.class_names[281], bundle.class_names[207]
    root = tmp_path / "sorted"
    image_folder(root / cat, small_photo, 2)
    image_folder(root / dog, small_photo, 1)
    out = tmp_path / "out"
    base = ["--bundle", small_bundle, "--method", "cam", *FAST]
    code, _, stderr = invoke(
        "localize", root, "--out", out, "--labels", "folder", "--format", "coco", *base
    )
    assert code == 0, stderr
    records = {r["path"]: r for r in records_of(out)}
    assert {p: r["class_id"] for p, r in records.items()} == {
        f"{cat}/img00.jpg": 281,
        f"{cat}/img01.jpg": 281,
        f"{dog}/img00.jpg": 207,
    }
    for r in records.values():
        assert r["no_object"] == (r["box"] is None) and len(r["box_scores"]) == len(r["boxes"])
        assert r["score"] is None or 0.1 <= r["score"] <= 1.0
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 3 and all("segmentation" in a for a in coco["annotations"])
    assert json.loads((out / "run.json").read_text())["class_id"] == "labels:folder"

    listed = tmp_path / "list.csv"
    listed.write_text(f'sorted/{dog}/img00.jpg,"{cat}"\n')  # the name holds a comma
    code, _, stderr = invoke(
        "localize", listed, "--out", tmp_path / "csv", "--labels", "csv", *base
    )
    assert code == 0, stderr
    (only,) = records_of(tmp_path / "csv")
    assert (only["path"], only["class_id"]) == (f"sorted/{dog}/img00.jpg", 281)

    image_folder(root / "no such class", small_photo, 1)
    code, _, stderr = invoke(
        "localize", root, "--out", tmp_path / "bad", "--labels", "folder", *base
    )
    assert code == 1 and "1 of its 3 classes are not among the bundle's 1000" in stderr
    assert "'no such class'" in stderr and not (tmp_path / "bad").exists()
    code, _, stderr = invoke("localize", root, "--labels", "csv", *base)
    assert code == 1 and "not a file (with --labels csv, give the CSV list)" in stderr


def test_boxes_all_keeps_every_object_with_its_score(
    small_bundle: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    two = np.concatenate([photo, photo], axis=1)  # the cat twice, side by side
    root = tmp_path / "in"
    root.mkdir()
    Image.fromarray(two).save(root / "two.jpg")
    base = ["--bundle", small_bundle, "--method", "cam", *FAST]
    code, _, stderr = invoke("localize", root, "--out", tmp_path / "one", *base)
    assert code == 0, stderr
    code, _, stderr = invoke("localize", root, "--out", tmp_path / "all", "--boxes", "all", *base)
    assert code == 0, stderr
    (one,) = records_of(tmp_path / "one")
    (every,) = records_of(tmp_path / "all")
    assert len(one["boxes"]) == len(one["box_scores"]) == 1 and one["boxes"][0] == one["box"]
    assert every["boxes"] and every["box"] == every["boxes"][0]
    assert len(every["box_scores"]) == len(every["boxes"])
    assert all(0.1 <= s <= 1.0 for s in every["box_scores"])
    code, _, stderr = invoke("localize", root, "--out", tmp_path / "one", "--boxes", "all", *base)
    assert code == 1 and "setting boxes" in stderr  # a resume made differently is refused


def test_a_setting_newer_than_the_earlier_run_counts_as_its_default() -> None:
    from lcar_deploy.localize import identity_differences

    now = {
        "method": "arm",
        "class_id": None,
        "bundle": {"path": "b", "sha256": {"model.onnx": "x"}},
        "settings": {"flip": True, "boxes": "one", "min_box_score": 0.1},
    }
    before = {**now, "settings": {"flip": True}}  # written before boxes existed
    assert identity_differences(before, now) == []
    changed = {**now, "settings": {**now["settings"], "boxes": "all"}}
    assert identity_differences(before, changed) == ['setting boxes missing before, "all" now']


# --- the output folder: nothing lost, nothing outside -------------------------------------------


def localize_cli(*args: str | Path, timeout: float = 300) -> tuple[int, str]:
    """``lcar-deploy localize ARGS`` as a separate process: (exit code, stderr)."""
    return run_cli("localize", *args, timeout=timeout)


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else b""
        for p in sorted(folder.rglob("*"))
    }


def test_output_folder_is_new_empty_or_an_earlier_run(
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path
) -> None:
    """The input folder, a folder holding it, or any folder of the user's is refused before
    anything is written; an input inside a run folder is refused; a run folder inside the input
    (this run's, or another's) is never searched for images."""
    src = image_folder(tmp_path / "images", small_photo, 2)
    before = tree(tmp_path)
    for out in (src, tmp_path, Path("/proc/self/fd")):
        code, _, stderr = invoke(*base_args(src, out, small_bundle), "--save-masks")
        assert code == cli.EXIT_ERROR and "Traceback" not in stderr
        assert "exists and is not an empty folder nor a localize output" in stderr, stderr
    assert tree(tmp_path) == before
    inner = src / "run"
    for _ in range(2):  # the rerun localizes none of its own masks and overlays
        code, _, stderr = invoke(*base_args(src, inner, small_bundle), "--save-masks", "--overlays")
        assert code == 0, stderr
    assert sorted(r["path"] for r in records_of(inner)) == ["img00.jpg", "img01.jpg"]
    code, _, stderr = invoke(*base_args(src, src / "other", small_bundle))
    assert code == 0, stderr
    assert sorted(r["path"] for r in records_of(src / "other")) == ["img00.jpg", "img01.jpg"]
    code, _, stderr = invoke(*base_args(inner / "masks", tmp_path / "again", small_bundle))
    assert code == cli.EXIT_ERROR
    assert "masks: is (or lies in) an output folder of lcar-deploy" in stderr, stderr
    code, _, stderr = invoke(*base_args(inner, tmp_path / "again", small_bundle))
    assert code == cli.EXIT_ERROR
    assert "run: is (or lies in) an output folder of lcar-deploy" in stderr, stderr
    code, _, stderr = invoke(*base_args(inner / "masks", inner, small_bundle))
    assert code == cli.EXIT_ERROR
    assert "masks: lies in the output folder" in stderr, stderr
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("name", ["predictions.jsonl", ".lock", "run.json", "masks", "overlays"])
def test_links_in_the_output_folder_are_never_followed(
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path, name: str
) -> None:
    src = image_folder(tmp_path / "images", small_photo, 1)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text('{"the user\'s": 1}\n')
    out = tmp_path / "out"
    code, _, stderr = invoke(*base_args(src, out, small_bundle))
    assert code == 0, stderr
    if (out / name).exists():
        (out / name).unlink()
    target = victim if name in ("masks", "overlays") else victim / "data.txt"
    (out / name).symlink_to(target)
    before = tree(victim)
    args = [*base_args(src, out, small_bundle), "--save-masks", "--overlays"]
    code, stderr = localize_cli(*args[1:])
    assert code == cli.EXIT_ERROR, stderr
    assert f"{name}" in stderr and "link" in stderr and "Traceback" not in stderr, stderr
    assert tree(victim) == before


@pytest.mark.parametrize("name", ["predictions.jsonl", "run.json", ".lock"])
def test_a_fifo_in_the_output_folder_is_refused_without_waiting(
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path, name: str
) -> None:
    src = image_folder(tmp_path / "images", small_photo, 1)
    out = tmp_path / "out"
    code, _, stderr = invoke(*base_args(src, out, small_bundle))
    assert code == 0, stderr
    (out / name).unlink()
    os.mkfifo(out / name)
    code, stderr = localize_cli(*base_args(src, out, small_bundle)[1:], timeout=120)
    assert code == cli.EXIT_ERROR, stderr
    assert name in stderr and "Traceback" not in stderr and len(stderr) < 300, stderr


def test_hostile_run_json_and_predictions_are_named(
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path
) -> None:
    src = image_folder(tmp_path / "images", small_photo, 2)
    out = tmp_path / "out"
    code, _, stderr = invoke(*base_args(src, out, small_bundle), "--limit", "1")
    assert code == 0, stderr
    predictions = (out / "predictions.jsonl").read_bytes()
    hostile = [
        b"[" * 100_000 + b"\n",
        b'{"path": "' + b"9" * 5000 + b'", "x": ' + b"9" * 5000 + b"}\n",
        b'{"path": "a\\u0000.jpg", "status": "ok", "score": NaN}\n',
    ]
    (out / "predictions.jsonl").write_bytes(predictions + b"".join(hostile))
    code, stderr = localize_cli(*base_args(src, out, small_bundle)[1:])
    assert code == 0, stderr  # lines that are not records are kept, the other image is done
    assert "1 ok, 0 failed, 1 already done" in stderr
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text('{"settings": ' + "[" * 50_000 + "]" * 50_000 + "}")
    code, stderr = localize_cli(*base_args(src, out, small_bundle)[1:])
    assert code == cli.EXIT_ERROR and "Traceback" not in stderr and len(stderr) < 300, stderr
    assert "run.json: unreadable (not JSON Python can read (nested deeper than 64))" in stderr
    info["method"] = "x" * 1_000_000
    (out / "run.json").write_text(json.dumps(info))
    code, stderr = localize_cli(*base_args(src, out, small_bundle)[1:])
    assert code == cli.EXIT_ERROR and len(stderr) < 1000, stderr
    assert "holds the results of a run made differently" in stderr


def test_csv_paths_that_climb_write_nothing_outside(
    small_bundle: Path, small_photo: np.ndarray, tmp_path: Path
) -> None:
    bundle = Bundle.load(small_bundle)
    cat = bundle.class_names[281]
    image_folder(tmp_path / "victim", small_photo, 1)
    (tmp_path / "victim" / "img00.jpg.png").write_bytes(b"the user's")
    (tmp_path / "lists").mkdir()
    listed = tmp_path / "lists" / "list.csv"
    absolute = tmp_path / "victim" / "img00.jpg"
    listed.write_text(f'../victim/img00.jpg,"{cat}"\n{absolute},"{cat}"\n')
    before = tree(tmp_path / "victim")
    out = tmp_path / "lists" / "out"
    args = ["--labels", "csv", "--save-masks", "--overlays", "--bundle", small_bundle, *FAST]
    code, stderr = localize_cli(listed, "--out", out, "--method", "cam", *args)
    assert code == 0, stderr
    assert tree(tmp_path / "victim") == before
    records = records_of(out)
    assert [r["path"] for r in records] == ["../victim/img00.jpg", str(absolute)]
    names = [r["mask"] for r in records] + [r["overlay"] for r in records]
    assert len(set(names)) == 4
    for name in names:
        assert (out / name).resolve().is_relative_to(out.resolve()) and (out / name).is_file()
        assert ".." not in Path(name).parts
    listed.write_text(f'out/masks/{Path(records[0]["mask"]).name},"{cat}"\n')
    code, stderr = localize_cli(listed, "--out", out, "--method", "cam", *args)
    assert code == cli.EXIT_ERROR and "lies in the output folder" in stderr, stderr


def test_output_names_are_the_path_or_a_key_that_cannot_climb() -> None:
    for plain in ("a/b c/é.jpg", "..\\x.jpg", "x\n.jpg", os.fsdecode(b"caf\xe9.jpg")):
        assert output_name(plain) == plain  # cannot climb: named as before
    keys = {
        rel: output_name(rel)
        for rel in [
            "../victim/x.jpg",
            "/etc/x.jpg",
            "a//x.jpg",
            "./x.jpg",
            "a/../../x.jpg",
            "x\0.jpg",
            "x" * 300 + ".jpg",
            "../victim/x.jpg ",
        ]
    }
    assert len(set(keys.values())) == len(keys)
    for key in keys.values():
        assert "/" not in key and re.fullmatch(r"[0-9a-f]{16}-[A-Za-z0-9._-]{1,100}", key)
    assert output_name("../victim/x.jpg").endswith("-x.jpg")


def test_non_finite_scores_are_written_as_null() -> None:
    assert _round(float("nan")) is None and _round(float("inf")) is None
    assert _round(0.123456789) == 0.12346 and _round(None) is None


def test_a_sub_folder_that_cannot_be_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Made unreadable by refusing its listing: the tests may run as root, which reads all."""
    for name in ("a.jpg", "private/b.jpg", "open/c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    scandir = os.scandir
    refused = str(tmp_path / "private")

    def unreadable(path=".", *args):
        if os.fspath(path) == refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path, *args)

    monkeypatch.setattr(os, "scandir", unreadable)
    with caplog.at_level("WARNING", logger="lcar_deploy.localize"):
        found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.jpg", "open/c.jpg"]
    assert "private: cannot be read (permission denied); its images are left out" in caplog.text
