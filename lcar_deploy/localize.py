"""``lcar-deploy localize``: every image of a folder -> ``predictions.jsonl`` (+ masks, overlays).

Robustness rules:

- One run at a time per output folder: a run holds an exclusive lock (``OUT/.lock``, with its
  pid) from start to end; a second run on the same ``--out`` stops at once with an error.
- Images are decoded one batch at a time (memory stays flat over thousands of images).
- A bad image (unreadable, corrupt, too large, ...) gets a ``status: error`` line with the
  reason and the run goes on; a batch that fails as a whole is retried image by image.
- Files are taken for images by extension (the formats Pillow here decodes); the others are
  counted and named in the summary, not read.
- Each line is appended in one ``write`` call, normally, and never left half-written by this
  process: a short write (full disk) or an interrupt between two calls takes the partial line
  back off. A line torn by a power cut or another writer is removed by the next run before it
  appends. Masks and overlays are written to a temporary name unique to the process and
  renamed; a temporary file is removed when its write fails.
- The output folder turning unwritable (full disk, read-only, quota) stops the run with an
  :class:`OutputError` naming the file; the lines written before are intact, the files of the
  image whose line could not be written are removed, and running again resumes.
- Running again on the same ``--out`` skips the images already in ``predictions.jsonl``
  (with ``retry_errors``, their error lines are dropped first, so every image keeps one line).
  The first run records what makes its results (method, bundle files, settings, class) in
  ``OUT/run.json``; a run that differs (other than in how a stage is computed, such as the ARM
  backend) is refused and names the difference, unless ``force`` deletes the earlier results
  first (only the files the tool wrote).
- Ctrl-C stops the run with :class:`RunInterrupted` (a ``KeyboardInterrupt``) saying how many
  images are done; every line written is complete.
- Masks and overlays are named after the whole relative path (``masks/a.jpg.png``), so
  ``a.jpg`` and ``a.png`` never overwrite each other; a path that could climb out of the
  folder (``../a.jpg`` in a CSV list, an absolute path) or that a file system cannot take gets
  a unique key instead (:func:`output_name`).
- The output folder is new, empty or an earlier run's (:func:`lcar_deploy.io.claim_folder`):
  never the input folder or another folder of the user's. Nothing in it is written through a
  link (a link placed there is an error), ``predictions.jsonl``, ``run.json`` and ``.lock``
  are regular files only (a FIFO is refused, never waited on).
- The tool's outputs are never inputs: an output folder inside the input folder, and any
  folder marked as an output of lcar-deploy (another run, a conversion), are not searched for
  images; an input inside the output folder is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .boxes import box_to_original, mask_to_original
from .bundle import Bundle
from .config import PipelineConfig
from .engines import Mapped, map_batches
from .errors import LabelsError, OutputError, printable
from .image_io import ImageError, LoadedImage, image_extensions, load_image
from .io import (
    MARK,
    JsonlWriter,
    check_folder,
    claim_folder,
    json_text,
    make_subdirs,
    open_regular,
    parse_json,
    read_regular,
    write_atomic,
)
from .names import Engine
from .pipeline import BackboneRun, Localization, Localizer, LocalizerSpec

_log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
RUN_INFO = "run.json"
LOCK = ".lock"
RUN_INFO_VERSION = 1
OUTPUT_KIND = "localize"
"""The kind of output folder ``localize`` writes (:func:`lcar_deploy.io.claim_folder`)."""
MAX_RUN_INFO_BYTES = 16 << 20
_NAME_BYTES = 200
"""Longest file or folder name (bytes) an output is named after as it is; longer: a key."""
NAMES_SHOWN = 3
"""How many failed files (and files that are not images) the summary names."""

# errno values that mean the output folder cannot take more writes: the run stops. Other write
# errors (a name too long, a folder where a file goes) fail only the image they belong to.
OUTPUT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
)
# Settings that choose how a stage is computed, not what it computes: a resume may change them.
EXECUTION_SETTINGS = ("arm_backend", "sgrm_device")
# write_atomic's temporary names, and those of earlier versions (".NAME.tmp").
_TEMP_NAME = re.compile(r"^\..+?(\.\d+\.[0-9a-f]{8})?\.tmp$")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a signal the caller turns into KeyboardInterrupt) during a run: ``done`` of
    the ``total`` images to do were written to ``predictions``."""

    def __init__(self, done: int, total: int, predictions: Path) -> None:
        super().__init__(f"interrupted after {done} of {total} images")
        self.done = done
        self.total = total
        self.predictions = predictions


def iter_files(root: Path, exclude: Path | None = None) -> Iterator[tuple[Path, bool]]:
    """(path, named like an image) of every file under ``root`` (nested, sorted), except
    under ``exclude`` and under any folder marked as an output of lcar-deploy (its masks and
    overlays are not images to localize).

    Symlinked folders are not followed (no loops). Every entry with an image name counts as an
    image, broken links and special files included: :func:`load_image` reports why they fail.
    A sub-folder that cannot be read is left out and named in a logged warning.
    """
    extensions = image_extensions()
    try:
        skip = exclude.resolve() if exclude is not None else None
    except (OSError, RuntimeError) as exc:
        raise OutputError(f"{printable(exclude)}: cannot be resolved ({exc})") from None

    def unreadable(exc: OSError) -> None:
        _log.warning(
            "warning: %s: cannot be read (%s); its images are left out",
            printable(exc.filename),
            _reason(exc),
        )

    def searched(folder: Path) -> bool:
        if folder.is_symlink():
            return True  # listed, never entered: os.walk does not follow it
        return folder.resolve() != skip and not os.path.lexists(folder / MARK)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if searched(Path(dirpath) / d))
        for name in sorted(filenames):
            yield Path(dirpath) / name, name.lower().endswith(extensions)


def find_images(root: Path, exclude: Path | None = None) -> Iterator[Path]:
    """The paths of :func:`iter_files` named like images."""
    for path, is_image in iter_files(root, exclude):
        if is_image:
            yield path


def relative_name(path: Path, root: Path) -> str:
    """Path relative to ``root`` as text; undecodable bytes kept as surrogate escapes."""
    return os.fsdecode(os.fsencode(path.relative_to(root)))


def output_name(rel: str) -> str:
    """The name, relative to ``masks/`` and ``overlays/``, that the outputs of the image
    ``rel`` are written under: ``rel`` itself when it is a plain relative path (no ``..``,
    ``.`` or empty name, not absolute, no NUL) whose names fit a file system; else ``<16 hex digits of its sha256>-<its file name, only
    letters, digits, '.', '_' and '-'>``, which cannot climb and is unique to ``rel``."""
    parts = rel.split("/")
    if (
        "\0" not in rel
        and not rel.startswith("/")
        and all(p not in ("", ".", "..") and len(os.fsencode(p)) <= _NAME_BYTES for p in parts)
    ):
        return rel
    digest = hashlib.sha256(rel.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", parts[-1])[:100]
    return f"{digest}-{tail}"


def some_names(names: Sequence[str], total: int) -> str:
    """``a, b, c and 4 more``: the first names of ``total`` (escaped, bounded)."""
    shown = ", ".join(printable(n) for n in names[:NAMES_SHOWN])
    rest = total - min(len(names), NAMES_SHOWN)
    return f"{shown} and {rest} more" if rest > 0 else shown


def _reason(exc: OSError) -> str:
    """``no space left on device``: the error's text as a message's tail."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def is_output_failure(exc: OSError) -> bool:
    """Whether ``exc``, raised by a write under the output folder, means that folder takes no
    more writes (full, read-only, no permission, I/O error)."""
    return exc.errno in OUTPUT_ERRNOS


def _record(line: bytes) -> dict | None:
    """The record of a line of ``predictions.jsonl``; None for a line that is not one."""
    try:
        record = parse_json(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("path"), str) else None


def _records(predictions: Path) -> Iterator[dict]:
    """The complete record lines of ``predictions`` (other lines and a partial last one
    skipped; none when it is not a regular file of its own)."""
    try:
        data = read_regular(predictions, follow=False)
    except OSError:
        return
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        record = _record(line)
        if record is not None:
            yield record


def read_done(predictions: Path, retry_errors: bool) -> dict[str, str]:
    """{path: status} of the records already in ``predictions.jsonl``.

    Drops a partial last line left by a crash (the file is truncated in place, which needs no
    free space) and, with ``retry_errors``, the error lines (the file is rewritten atomically);
    lines that are not records are kept as they are. An OSError when the file is a link or not
    a regular file.
    """
    if not os.path.lexists(predictions):
        return {}
    fd = open_regular(predictions, os.O_RDWR, follow=False)
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1
        keep: list[bytes] = []
        done: dict[str, str] = {}
        for line in data[:end].splitlines(keepends=True):
            record = _record(line)
            if record is not None:
                if retry_errors and record.get("status") == "error":
                    continue
                done[record["path"]] = str(record.get("status"))
            keep.append(line)
        kept = b"".join(keep)
        if len(kept) < len(data):
            if data.startswith(kept):
                os.ftruncate(fd, len(kept))
            else:
                write_atomic(predictions, lambda tmp: tmp.write_bytes(kept))
    finally:
        os.close(fd)
    return done


def save_mask(mask: np.ndarray, size: tuple[int, int], path: Path) -> None:
    """Work-size bool mask -> 0/255 PNG at the original (W, H) size (:func:`mask_to_original`)."""
    from PIL import Image

    image = Image.fromarray(mask_to_original(mask, size).astype(np.uint8) * 255)
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def save_overlay(image: LoadedImage, result: Localization, work: int, path: Path) -> None:
    """The image with the mask contour (yellow) and the box (red) drawn; JPEG."""
    import cv2

    rgb = image.rgb.copy()
    h, w = rgb.shape[:2]
    mask = mask_to_original(result.mask, (w, h)).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(2, round(max(h, w) / 200))
    cv2.drawContours(rgb, contours, -1, (255, 220, 0), thickness)
    if result.box is not None:
        x0, y0, x1, y1 = box_to_original(result.box, work, (w, h))
        cv2.rectangle(rgb, (x0, y0), (x1, y1), (255, 0, 0), thickness)
    _, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    write_atomic(path, lambda tmp: tmp.write_bytes(encoded.tobytes()))


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder ``out`` (created, or claimed:
    :func:`lcar_deploy.io.claim_folder`) for the block.

    ``flock`` on ``OUT/.lock``, not waiting: :class:`OutputError` at once when another process
    (or another call in this one) holds it. The file records the holder's pid for that message
    and is never removed: a run that opened it just before the removal would lock a file that
    no longer exists, next to a new one.
    """
    claim_folder(out, OUTPUT_KIND, legacy=earlier_run)
    try:
        fd = open_regular(out / LOCK, os.O_RDWR | os.O_CREAT, follow=False)
    except OSError as exc:
        where = out / LOCK if exc.errno in (errno.ELOOP, errno.EINVAL, errno.EMLINK) else out
        raise OutputError(
            f"{printable(where)}: cannot write to the output folder ({_reason(exc)})"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            holder = f" (pid {pid})" if pid.isdigit() else ""
            raise OutputError(
                f"{out}: another localize run{holder} is writing to this folder; wait for it "
                "to end, or use another --out"
            ) from None
        except OSError as exc:
            raise OutputError(f"{out / LOCK}: cannot lock ({_reason(exc)})") from None
        with contextlib.suppress(OSError):  # the pid only makes that message clearer
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def earlier_run(folder: Path) -> bool:
    """Whether ``folder`` holds the results of a run from before output folders were marked:
    a ``run.json`` recording a run, or a ``predictions.jsonl`` whose first line is a record."""
    try:
        info = parse_json(read_regular(folder / RUN_INFO, follow=False, limit=MAX_RUN_INFO_BYTES))
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict) and "format_version" in info and "method" in info:
        return True
    first = next(_records(folder / PREDICTIONS), None)
    return first is not None and "status" in first


def run_identity(
    localizer: Localizer, class_id: int | None, labels: str | None = None
) -> dict[str, Any]:
    """What makes a run's results, as ``run.json`` records it: the method, the bundle (the
    sha256 of its files; its path for the message), every resolved pipeline setting and the
    class (None: each image's predicted class; ``labels``: each image's known class, from
    its class folder or a CSV list)."""
    bundle = localizer.bundle
    files = bundle.manifest["files"]
    return {
        "format_version": RUN_INFO_VERSION,
        "method": localizer.config.method,
        "class_id": class_id if labels is None else f"labels:{labels}",
        "bundle": {
            "path": str(bundle.path),
            "backbone": bundle.backbone,
            "input_size": bundle.input_size,
            "sha256": {name: files[name]["sha256"] for name in sorted(files)},
        },
        "settings": json.loads(json.dumps(dataclasses.asdict(localizer.config))),
    }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, item in value.items():
            items.update(_flatten(item, f"{prefix}{key}."))
        return items
    return {prefix[:-1]: value}


_MISSING: Any = object()


def _show(value: Any) -> str:
    return "missing" if value is _MISSING else printable(json.dumps(value), 80)


def identity_differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two :func:`run_identity` values, in words (empty: the same).

    The settings of :data:`EXECUTION_SETTINGS` are not compared, nor the bundle's path; a
    setting the earlier run did not record (made by a version without it) counts as its
    default.
    """
    differences = []
    if before.get("method", _MISSING) != now["method"]:
        old_method = printable(before.get("method", "missing"), 80)
        differences.append(f"method {old_method} before, {now['method']} now")
    if before.get("class_id", _MISSING) != now["class_id"]:
        old_class, new_class = before.get("class_id", _MISSING), now["class_id"]
        differences.append(
            f"class {'predicted' if old_class is None else _show(old_class)} before, "
            f"{'predicted' if new_class is None else _show(new_class)} now"
        )
    old_bundle = before.get("bundle")
    old_bundle = old_bundle if isinstance(old_bundle, dict) else {}
    if old_bundle.get("sha256") != now["bundle"]["sha256"]:
        differences.append(
            f"bundle {printable(old_bundle.get('path', 'unknown'), 80)} before, "
            f"{printable(now['bundle']['path'], 80)} now "
            "(their model files differ)"
        )
    ignored = {"method", *EXECUTION_SETTINGS}
    old_settings = before.get("settings")
    old = _flatten(old_settings) if isinstance(old_settings, dict) else {}
    new = _flatten(now["settings"])
    defaults = _flatten(json.loads(json.dumps(dataclasses.asdict(PipelineConfig()))))
    for key in sorted((old.keys() | new.keys()) - ignored):
        if key not in old and old_settings and new.get(key) == defaults.get(key, _MISSING):
            continue  # a setting newer than the earlier run, at the value it ran with
        if old.get(key, _MISSING) != new.get(key, _MISSING):
            differences.append(
                f"setting {key} {_show(old.get(key, _MISSING))} before, "
                f"{_show(new.get(key, _MISSING))} now"
            )
    return differences


def check_run(out: Path, identity: dict[str, Any]) -> None:
    """Refuse to add to results made another way; record ``identity`` for the runs to come.

    ``OUT/run.json`` is compared with ``identity`` when ``predictions.jsonl`` has lines. A
    folder from before ``run.json`` existed is checked by the methods of its records.
    """
    info_path = out / RUN_INFO
    predictions = out / PREDICTIONS
    has_lines = predictions.is_file() and predictions.stat().st_size > 0
    if os.path.lexists(predictions) and (predictions.is_symlink() or not predictions.is_file()):
        raise OutputError(
            f"{printable(predictions)}: is a link or not a regular file (lcar-deploy writes its "
            "results into a file of its own); remove it, or use another --out"
        )
    before: dict[str, Any] | None = None
    if has_lines and os.path.lexists(info_path):
        try:
            before = parse_json(read_regular(info_path, follow=False, limit=MAX_RUN_INFO_BYTES))
        except OSError as exc:
            raise OutputError(
                f"{printable(info_path)}: unreadable ({_reason(exc)}); use --force to start "
                "over, or another --out"
            ) from None
        except ValueError as exc:
            raise OutputError(
                f"{printable(info_path)}: unreadable ({exc}); use --force to start over, or "
                "another --out"
            ) from None
        if not isinstance(before, dict):
            raise OutputError(
                f"{info_path}: not a JSON object; use --force to start over, or another --out"
            )
        differences = identity_differences(before, identity)
    elif has_lines:
        methods = sorted(
            {r["method"] for r in _records(predictions) if isinstance(r.get("method"), str)}
        )
        differences = []
        if methods and methods != [identity["method"]]:
            differences.append(f"method {', '.join(methods)} before, {identity['method']} now")
    else:
        differences = []
    if differences:
        raise OutputError(
            f"{out}: holds the results of a run made differently ({'; '.join(differences)}); "
            "run with the same options to resume, with --force to start over (deletes its "
            "predictions, masks and overlays), or use another --out"
        )
    if before is None:
        try:
            text = json_text(identity, indent=2)
            write_atomic(info_path, lambda tmp: tmp.write_text(text))
        except OSError as exc:
            raise OutputError(_stopped(exc, info_path, predictions)) from None


def clear_output(out: Path) -> None:
    """Delete what earlier runs wrote to ``out``: ``predictions.jsonl``, ``summary.json``,
    ``run.json``, the masks and overlays its records name, and leftover temporary files of
    this tool; then the mask and overlay folders left empty. Other files stay."""
    predictions = out / PREDICTIONS
    doomed: list[Path] = []
    if predictions.is_file():
        for record in _records(predictions):
            for key, folder in (("mask", "masks"), ("overlay", "overlays")):
                name = record.get(key)
                parts = Path(name).parts if isinstance(name, str) else ()
                if len(parts) > 1 and parts[0] == folder and ".." not in parts:
                    doomed.append(out / name)
    for folder in ("masks", "overlays"):
        if (out / folder).is_dir():
            doomed += [p for p in (out / folder).rglob(".*.tmp") if _TEMP_NAME.match(p.name)]
    for name in (PREDICTIONS, SUMMARY, RUN_INFO):
        doomed += [p for p in out.glob(f".{name}*.tmp") if _TEMP_NAME.match(p.name)]
    doomed += [out / SUMMARY, out / RUN_INFO, predictions]  # predictions last: it lists the rest
    try:
        for path in doomed:
            if path.is_symlink() or path.is_file():
                path.unlink()
    except OSError as exc:
        raise OutputError(f"{exc.filename or out}: cannot delete ({_reason(exc)})") from None
    for folder in ("masks", "overlays"):
        top = out / folder
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):  # not empty: it holds files of someone else
                os.rmdir(dirpath)


@dataclass
class RunSummary:
    """Counts and mean per-stage times of one run.

    skipped: images already in ``predictions.jsonl``; skipped_errors: those of them recorded
    as errors (a resumed run still reports them: the output is not complete).
    failed_names: the first failed images (earlier runs' first), :data:`NAMES_SHOWN` at most.
    not_images / not_image_names: the files found that are not images by their extension.
    busy_percent: the share of the run's time each stage of the ``local`` engine was running,
    summed over its threads, so over 100 where both threads ran it
    (:attr:`lcar_deploy.engines.Mapped.busy`; empty for the other engines).
    """

    ok: int = 0
    errors: int = 0
    skipped: int = 0
    skipped_errors: int = 0
    not_images: int = 0
    seconds: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    providers: list[str] = field(default_factory=list)
    failed_names: list[str] = field(default_factory=list)
    not_image_names: list[str] = field(default_factory=list)
    busy_percent: dict[str, float] = field(default_factory=dict)

    def add_timings(self, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            self.stage_ms[stage] = self.stage_ms.get(stage, 0.0) + ms

    def add_failed(self, rel: str) -> None:
        if len(self.failed_names) < NAMES_SHOWN:
            self.failed_names.append(rel)

    def add_not_image(self, rel: str) -> None:
        self.not_images += 1
        if len(self.not_image_names) < NAMES_SHOWN:
            self.not_image_names.append(rel)

    def to_dict(self) -> dict:
        n = max(self.ok, 1)
        return {
            "ok": self.ok,
            "errors": self.errors,
            "skipped_already_done": self.skipped,
            "skipped_failed_before": self.skipped_errors,
            "skipped_not_images": self.not_images,
            "failed_examples": self.failed_names,
            "not_image_examples": self.not_image_names,
            "seconds": round(self.seconds, 3),
            "images_per_second": round((self.ok + self.errors) / self.seconds, 3)
            if self.seconds
            else None,
            "mean_ms_per_stage": {k: round(v / n, 2) for k, v in self.stage_ms.items()},
            "providers": self.providers,
            "busy_percent": self.busy_percent,
        }


@dataclass(frozen=True)
class LocalizeOptions:
    """What to write: masks / overlays; which class to use (None = predicted); batch size.

    labels: where the images' known classes come from (``folder`` | ``csv``, as
    :func:`labelled_images` reads them; None: no known class); a run records it.

    force: delete the output's earlier results first (:func:`clear_output`), instead of
    resuming them.
    """

    batch_size: int = 8
    save_masks: bool = False
    overlays: bool = False
    class_id: int | None = None
    retry_errors: bool = False
    limit: int | None = None
    force: bool = False
    labels: str | None = None


def _round(value: float | None) -> float | None:
    """``value`` to 5 decimals; None for None and for a value that is not finite (NaN from
    broken heads: JSON has no NaN)."""
    return None if value is None or not math.isfinite(value) else round(value, 5)


def _ok_record(rel: str, image: LoadedImage, result: Localization, work: int, method: str) -> dict:
    """One image's ``predictions.jsonl`` line (the schema: docs/formats.md)."""
    return {
        "path": rel,
        "status": "ok",
        "method": method,
        "image_size": list(image.original_size),
        "class_id": result.class_id,
        "class_name": result.class_name,
        "class_score": _round(result.class_score),
        "score": _round(result.box_score),
        "no_object": result.no_object,
        "box": None
        if result.box is None
        else box_to_original(result.box, work, image.original_size),
        "boxes": [box_to_original(b, work, image.original_size) for b in result.boxes],
        "box_scores": [_round(v) for v in result.box_scores],
        "sgrm_steps": result.sgrm_steps,
        "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
    }


def prepare_output(out: Path, options: LocalizeOptions) -> None:
    """Create the folders ``options`` write to in ``out``; OutputError when one cannot be made
    or is a link."""
    wanted = (("masks", options.save_masks), ("overlays", options.overlays))
    for folder, want in wanted:
        if want:
            try:
                make_subdirs(out, folder)
            except OSError as exc:
                raise OutputError(
                    f"{printable(exc.filename or out / folder)}: cannot create the output folder "
                    f"({_reason(exc)})"
                ) from None


def _save_files(
    out: Path,
    rel: str,
    image: LoadedImage,
    result: Localization,
    work: int,
    options: LocalizeOptions,
    written: list[Path],
) -> dict[str, str]:
    """Write the mask / overlay of one image (appended to ``written`` once on disk), named by
    :func:`output_name`, never through a link; their paths relative to ``out``."""
    names = {}
    key = output_name(rel)
    if options.save_masks:
        names["mask"] = f"masks/{key}.png"
        make_subdirs(out, os.path.dirname(names["mask"]))
        save_mask(result.mask, image.original_size, out / names["mask"])
        written.append(out / names["mask"])
    if options.overlays:
        names["overlay"] = f"overlays/{key}.jpg"
        make_subdirs(out, os.path.dirname(names["overlay"]))
        save_overlay(image, result, work, out / names["overlay"])
        written.append(out / names["overlay"])
    return names


LabelledImage = tuple[Path, str, int | None]
"""(path, path relative to the input, known class id or None): one image to localize."""

ImageResult = tuple[str, LoadedImage | None, Localization | None, str | None]
"""(relative path, decoded image, result, error): one per image; ``error`` set on failure."""


def _stopped(exc: OSError, fallback: Path, predictions: Path, progress: str = "") -> str:
    """The message of a run stopped by a failed write: the file, the reason, what to do.
    ``progress``: how far the run got, e.g. ``stopped after 3 of 10 images of this run``."""
    where = exc.filename or fallback
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space, then run the same command again to resume"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make the output folder writable (or use another --out), then run again to resume"
    else:
        fix = "run the same command again to resume"
    done = f"{progress}; " if progress else ""
    return f"{where}: {_reason(exc)} ({done}the lines of {predictions} are complete: {fix})"


def localize_folder(
    localizer: Localizer | LocalizerSpec,
    root: Path,
    out: Path,
    options: LocalizeOptions,
    progress: bool = True,
    *,
    images: Sequence[LabelledImage] | None = None,
    engine: Engine = "local",
    workers: int = 1,
    threads: int | None = None,
    address: str | None = None,
    overlap: bool = True,
) -> RunSummary:
    """Localize every image under ``root`` into ``out``; returns the run's summary.

    ``localizer``: a built Localizer (the ``local`` engine runs it) or a spec (each engine
    builds its own). ``engine``, ``workers``, ``threads`` (in all), ``address``, ``overlap``:
    where the images are localized (:func:`localize_results`); this function writes every
    output.
    ``images``: the images to localize with their known classes (:func:`labelled_images`),
    instead of every image under ``root``.
    Raises :class:`OutputError` when ``out`` cannot be used or written (nothing half-written
    is left), :class:`RunInterrupted` on Ctrl-C.
    """
    spec = localizer if isinstance(localizer, LocalizerSpec) else LocalizerSpec.of(localizer)
    check_folder(out, OUTPUT_KIND, legacy=earlier_run)  # before the inputs: says more
    _check_inputs_outside(Path(root), out, images)
    with output_lock(out):
        if options.force:
            clear_output(out)
        identity = run_identity(spec, options.class_id, options.labels)
        identity["images"] = str(Path(root).resolve())  # for convert; not compared on resume
        check_run(out, identity)
        prepare_output(out, options)
        predictions = out / PREDICTIONS
        try:
            done = read_done(predictions, options.retry_errors)
        except OSError as exc:
            raise OutputError(_stopped(exc, predictions, predictions)) from None
        summary = RunSummary()
        todo: list[LabelledImage] = []
        found = (
            ((path, True, rel, class_id) for path, rel, class_id in images)
            if images is not None
            else (
                (path, is_image, relative_name(path, root), None)
                for path, is_image in iter_files(root, exclude=out)
            )
        )
        try:
            for path, is_image, rel, class_id in found:
                if not is_image:
                    summary.add_not_image(rel)
                elif rel in done:
                    summary.skipped += 1
                    if done[rel] == "error":
                        summary.skipped_errors += 1
                        summary.add_failed(rel)
                else:
                    todo.append((path, rel, class_id))
                    if options.limit is not None and len(todo) >= options.limit:
                        break
            results = localize_results(
                localizer,
                todo,
                options,
                engine=engine,
                workers=workers,
                threads=threads,
                address=address,
                overlap=overlap,
            )
            _run(spec.config, out, options, todo, summary, progress, results)
        except RunInterrupted:
            raise
        except KeyboardInterrupt as exc:
            raise RunInterrupted(0, len(todo), predictions) from exc
    return summary


def _check_inputs_outside(root: Path, out: Path, images: Sequence[LabelledImage] | None) -> None:
    """OutputError when an input lies in the output folder (its files are the tool's outputs,
    not images to localize): the input folder, or an image a list names."""
    target = out.resolve()

    def within(path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(target)
        except (OSError, RuntimeError):
            return False

    if images is None and within(root):
        raise OutputError(
            f"{printable(root)}: lies in the output folder {printable(out)}; its files are "
            "results, not images to localize"
        )
    resolved = root.resolve() if images is None else None
    if resolved is not None and any(
        os.path.lexists(folder / MARK) for folder in (resolved, *resolved.parents)
    ):
        raise OutputError(
            f"{printable(root)}: is (or lies in) an output folder of lcar-deploy; its files are "
            "results, not images to localize"
        )
    for path, rel, _ in images or ():
        if within(path):
            raise OutputError(
                f"{printable(rel)}: lies in the output folder {printable(out)}; its files are "
                "results, not images to localize"
            )


def _run(
    config: PipelineConfig,
    out: Path,
    options: LocalizeOptions,
    todo: list[LabelledImage],
    summary: RunSummary,
    progress: bool,
    results: Mapped[ImageResult],
) -> None:
    """Write the outputs of ``results`` (those of ``todo``), counting into ``summary``."""
    from tqdm import tqdm

    predictions = out / PREDICTIONS
    try:
        writer = JsonlWriter(predictions)
    except OSError as exc:
        raise OutputError(_stopped(exc, predictions, predictions)) from None
    start = time.perf_counter()
    bar = tqdm(
        total=len(todo), unit="img", disable=not progress, desc="localize", dynamic_ncols=True
    )
    work = config.work_size
    method = config.method
    finished = False

    def stopped(exc: OSError, fallback: Path) -> OutputError:
        done = summary.ok + summary.errors
        progress = f"stopped after {done} of {len(todo)} images of this run"
        return OutputError(_stopped(exc, fallback, predictions, progress))

    try:
        for rel, image, result, error in results:
            written: list[Path] = []
            try:
                if error is None:
                    record = _ok_record(rel, image, result, work, method)
                    try:
                        record.update(_save_files(out, rel, image, result, work, options, written))
                    except OSError as exc:
                        if is_output_failure(exc):
                            raise
                        error = f"{rel}: cannot write its mask or overlay ({exc})"
                if error is None:
                    try:
                        writer.write(record)
                    except ValueError as exc:  # nothing was written: the line says why
                        error = f"{rel}: {exc}"
                if error is not None:
                    _remove(written)
                    writer.write({"path": rel, "status": "error", "error": error})
            except OSError as exc:
                _remove(written)
                raise stopped(exc, predictions) from None
            except BaseException:
                _remove(written)
                raise
            if error is not None:
                summary.errors += 1
                summary.add_failed(rel)
            else:
                summary.ok += 1
                summary.add_timings(result.timings_ms)
            bar.update(1)
            bar.set_postfix(errors=summary.errors, refresh=False)
            summary.seconds = time.perf_counter() - start
        finished = True
    except KeyboardInterrupt as exc:
        raise RunInterrupted(writer.lines, len(todo), predictions) from exc
    finally:
        results.close()
        bar.close()
        summary.seconds = time.perf_counter() - start
        summary.providers = list(results.providers)
        summary.busy_percent = {
            stage: round(100 * seconds / summary.seconds, 1) if summary.seconds else 0.0
            for stage, seconds in results.busy.items()
        }
        try:
            writer.close()
        except OSError as exc:
            if finished:  # otherwise the error on its way out says more
                raise stopped(exc, predictions) from None
    try:
        write_atomic(
            out / SUMMARY, lambda tmp: tmp.write_text(json_text(summary.to_dict(), indent=2))
        )
    except OSError as exc:
        raise stopped(exc, out / SUMMARY) from None


def _remove(paths: list[Path]) -> None:
    """Delete the files an image got before its line failed (no file without its line)."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    paths.clear()


@dataclass(frozen=True)
class LocalizeTask:
    """``localize``'s work on one batch, for :func:`lcar_deploy.engines.map_batches`: (path,
    relative path) pairs -> their :data:`ImageResult`, with only what the outputs need (the
    decoded pixels for overlays, the mask for masks and overlays; never the score map), so
    that little travels back from a worker."""

    spec: LocalizerSpec
    class_id: int | None
    masks: bool
    pixels: bool

    def __call__(self, localizer: Localizer, batch: Sequence[LabelledImage]) -> list[ImageResult]:
        return [self._needed(*item) for item in localize_batch(localizer, batch, self.class_id)]

    def prepare(self, localizer: Localizer, batch: Sequence[LabelledImage]) -> DecodedBatch:
        """The first half of the call, for a pipelined engine: decode, then the backbone."""
        return decode_batch(localizer, batch, self.class_id)

    def finish(self, localizer: Localizer, decoded: DecodedBatch) -> list[ImageResult]:
        """The rest of the call on what :meth:`prepare` made: the same results."""
        return [self._needed(*item) for item in finish_batch(localizer, decoded)]

    def _needed(
        self, rel: str, image: LoadedImage | None, result: Localization | None, error: str | None
    ) -> ImageResult:
        if image is not None and not self.pixels:
            image = LoadedImage(np.zeros((0, 0, 3), np.uint8), image.original_size)
        if result is not None:
            mask = result.mask if self.masks else np.zeros((0, 0), bool)
            result = dataclasses.replace(result, map=np.zeros((0, 0), np.float32), mask=mask)
        return rel, image, result, error


def localize_results(
    localizer: Localizer | LocalizerSpec,
    todo: list[LabelledImage],
    options: LocalizeOptions,
    *,
    engine: Engine = "local",
    workers: int = 1,
    threads: int | None = None,
    address: str | None = None,
    overlap: bool = True,
) -> Mapped[ImageResult]:
    """The results of ``todo`` in order, ``options.batch_size`` images a batch, computed by
    ``engine`` (:func:`lcar_deploy.engines.map_batches`; ``overlap``: the ``local`` engine
    decodes and runs the backbone of the next batches on a second thread); ``localizer``: as
    :func:`localize_folder` takes it."""
    built = localizer if isinstance(localizer, Localizer) else None
    spec = LocalizerSpec.of(built) if built is not None else localizer
    task = LocalizeTask(
        spec, options.class_id, options.save_masks or options.overlays, options.overlays
    )
    size = options.batch_size
    batches = [todo[i : i + size] for i in range(0, len(todo), size)]
    mapped = map_batches(
        task,
        batches,
        engine=engine,
        workers=workers,
        threads=threads,
        address=address,
        localizer=built,
        overlap=overlap,
    )
    return mapped.items()


def localize_batch(
    localizer: Localizer, batch: Sequence[LabelledImage], class_id: int | None
) -> Iterator[ImageResult]:
    """Decode and localize one batch of (path, relative path, known class): one result per
    image, those that cannot be decoded first, then the others in order. An image's map is of
    its known class, else of ``class_id``, else of the predicted class."""
    yield from finish_batch(localizer, DecodedBatch(*_decode(batch, class_id), None))


@dataclass(frozen=True)
class DecodedBatch:
    """A batch decoded and through the backbone (:func:`decode_batch`).

    failed: the results of the images that could not be decoded; loaded: (relative path,
    image, class) of the others; backbone: their backbone stage, or None when it failed or
    was not run (then :func:`finish_batch` runs it, image by image where it fails)."""

    failed: list[ImageResult]
    loaded: list[tuple[str, LoadedImage, int | None]]
    backbone: BackboneRun | None


def _decode(
    batch: Sequence[LabelledImage], class_id: int | None
) -> tuple[list[ImageResult], list[tuple[str, LoadedImage, int | None]]]:
    failed: list[ImageResult] = []
    loaded: list[tuple[str, LoadedImage, int | None]] = []
    for path, rel, known in batch:
        try:
            loaded.append((rel, load_image(path), class_id if known is None else known))
        except ImageError as exc:
            failed.append((rel, None, None, str(exc)))
    return failed, loaded


def decode_batch(
    localizer: Localizer, batch: Sequence[LabelledImage], class_id: int | None
) -> DecodedBatch:
    """:func:`localize_batch`'s decoding and backbone stage; :func:`finish_batch` does the rest,
    with the same results."""
    failed, loaded = _decode(batch, class_id)
    backbone = None
    if loaded:
        try:
            backbone = localizer.backbone_stage([im.rgb for _, im, _ in loaded])
        except Exception:  # finish_batch runs the batch again and names the image that fails
            backbone = None
    return DecodedBatch(failed, loaded, backbone)


def finish_batch(localizer: Localizer, decoded: DecodedBatch) -> Iterator[ImageResult]:
    """The results of :func:`localize_batch` from its :func:`decode_batch`."""
    yield from decoded.failed
    yield from _run_batch(localizer, decoded.loaded, decoded.backbone)


def _run_batch(
    localizer: Localizer,
    batch: list[tuple[str, LoadedImage, int | None]],
    backbone: BackboneRun | None = None,
) -> Iterator[tuple[str, LoadedImage, Localization | None, str | None]]:
    """Results of a batch; if the batch fails as a whole, image by image with errors recorded.
    ``backbone``: the batch's backbone stage, already run."""
    if not batch:
        return
    try:
        class_ids = [c for _, _, c in batch]
        if backbone is None:
            results = localizer.run([im.rgb for _, im, _ in batch], class_ids)
        else:
            method = localizer.config.method
            results = localizer.post_stages(backbone, class_ids, (method,))[method]
    except Exception as exc:
        if len(batch) == 1:
            rel, image, _ = batch[0]
            yield rel, image, None, f"{rel}: localization failed ({type(exc).__name__}: {exc})"
            return
        for item in batch:
            yield from _run_batch(localizer, [item])
        return
    for (rel, image, _), result in zip(batch, results, strict=True):
        yield rel, image, result, None


def labelled_images(
    kind: str, source: Path, bundle: Bundle, exclude: Path | None = None
) -> list[LabelledImage]:
    """The images of a labelled folder (``kind`` ``folder``: ``source/<class name>/...``) or
    CSV list (``csv``: ``source`` is the file), each with the bundle's id of its class;
    ``exclude``: the output folder, when it lies inside ``source`` (it is no class).

    Raises :class:`~lcar_deploy.errors.DatasetError` for a malformed folder or list
    (:func:`lcar_deploy.datasets.load_labelled`) and :class:`LabelsError` for a bundle without
    heads or a class name the bundle does not have.
    """
    from .datasets import load_labelled

    dataset = load_labelled(kind, source, exclude)
    if not bundle.has_heads:
        raise LabelsError(
            f"{bundle.path}: the bundle has no trained heads, so it has no classes to match "
            f"the labels of {source} against"
        )
    by_name: dict[str, list[int]] = {}
    for name, cid in zip(bundle.class_names, bundle.class_ids, strict=True):
        by_name.setdefault(name, []).append(cid)
    unknown = [name for name in dataset.class_names if name not in by_name]
    if unknown:
        shown = some_names([repr(n) for n in unknown], len(unknown))
        raise LabelsError(
            f"{source}: {len(unknown)} of its {dataset.num_classes} classes are not among the "
            f"bundle's {len(bundle.class_ids)} classes ({bundle.path}): {shown}"
        )
    for name in dataset.class_names:
        if len(by_name[name]) > 1:
            raise LabelsError(
                f"{source}: class {name!r} names {len(by_name[name])} classes of the bundle "
                f"(ids {', '.join(map(str, by_name[name]))}); it cannot say which"
            )
    ids = {name: cids[0] for name, cids in by_name.items()}
    root = dataset.root
    return [
        (
            r.path,
            r.image_id if kind == "csv" else relative_name(r.path, root),
            ids[dataset.class_names[r.label]],
        )
        for r in dataset.records
    ]
