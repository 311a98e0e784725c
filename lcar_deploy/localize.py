"""``lcar-deploy localize``: every image of a folder -> ``predictions.jsonl`` (+ masks, overlays).

Robustness rules:

- Images are decoded one batch at a time (memory stays flat over thousands of images).
- A bad image (unreadable, corrupt, too large, ...) gets a ``status: error`` line with the
  reason and the run goes on; a batch that fails as a whole is retried image by image.
- Each line is written with one ``write`` call and flushed: a crash leaves at most one partial
  last line, which the next run removes before it appends. Masks and overlays are written to a
  temporary name and renamed.
- Running again on the same ``--out`` skips the images already in ``predictions.jsonl``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .image_io import IMAGE_EXTENSIONS, ImageError, LoadedImage, load_image
from .pipeline import Localization, Localizer, box_to_original

PREDICTIONS = "predictions.jsonl"


def find_images(root: Path) -> Iterator[tuple[Path, str | None]]:
    """Image files under ``root`` (nested, sorted), as (path, problem or None).

    Symlinked files are followed; symlinked folders are not (no loops). A file that cannot be
    stat'ed (broken link, symlink loop, no permission) is yielded with the reason.
    """
    for dirpath, dirnames, filenames in os.walk(root, onerror=None, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = Path(dirpath) / name
            try:
                path.stat()
            except OSError as exc:
                yield path, f"cannot open ({exc.strerror or exc})"
                continue
            yield path, None


def relative_name(path: Path, root: Path) -> str:
    """Path relative to ``root`` as text; undecodable bytes kept as surrogate escapes."""
    return os.fsdecode(os.fsencode(path.relative_to(root)))


def read_done(predictions: Path, retry_errors: bool) -> set[str]:
    """Paths already in ``predictions.jsonl``; drops a partial last line left by a crash."""
    if not predictions.exists():
        return set()
    data = predictions.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with predictions.open("r+b") as f:
            f.truncate(end)
    done = set()
    for line in data[:end].splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if retry_errors and record.get("status") == "error":
            continue
        done.add(record["path"])
    return done


class JsonlWriter:
    """Appends one JSON line per record with a single ``write`` and a flush."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        os.write(self._fd, (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii"))

    def close(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)


def write_atomic(path: Path, save) -> None:
    """Call ``save(tmp_path)`` then rename onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save(tmp)
    os.replace(tmp, path)


def save_mask(mask: np.ndarray, size: tuple[int, int], path: Path) -> None:
    """Work-size bool mask -> 0/255 PNG at the original (W, H) size (nearest)."""
    from PIL import Image

    image = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def save_overlay(image: LoadedImage, result: Localization, work: int, path: Path) -> None:
    """The image with the mask contour (yellow) and the box (red) drawn; JPEG."""
    import cv2

    rgb = image.rgb.copy()
    h, w = rgb.shape[:2]
    mask = cv2.resize(result.mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(2, round(max(h, w) / 200))
    cv2.drawContours(rgb, contours, -1, (255, 220, 0), thickness)
    if result.box is not None:
        x0, y0, x1, y1 = box_to_original(result.box, work, (w, h))
        cv2.rectangle(rgb, (x0, y0), (x1, y1), (255, 0, 0), thickness)
    _, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    write_atomic(path, lambda tmp: tmp.write_bytes(encoded.tobytes()))


@dataclass
class RunSummary:
    """Counts and mean per-stage times of one run."""

    ok: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    providers: list[str] = field(default_factory=list)

    def add_timings(self, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            self.stage_ms[stage] = self.stage_ms.get(stage, 0.0) + ms

    def to_dict(self) -> dict:
        n = max(self.ok, 1)
        return {
            "ok": self.ok,
            "errors": self.errors,
            "skipped_already_done": self.skipped,
            "seconds": round(self.seconds, 3),
            "images_per_second": round((self.ok + self.errors) / self.seconds, 3)
            if self.seconds
            else None,
            "mean_ms_per_stage": {k: round(v / n, 2) for k, v in self.stage_ms.items()},
            "providers": self.providers,
        }


@dataclass(frozen=True)
class LocalizeOptions:
    """What to write: masks / overlays; which class to use (None = predicted); batch size."""

    batch_size: int = 8
    save_masks: bool = False
    overlays: bool = False
    class_id: int | None = None
    retry_errors: bool = False
    limit: int | None = None


def _ok_record(rel: str, image: LoadedImage, result: Localization, work: int, method: str) -> dict:
    return {
        "path": rel,
        "status": "ok",
        "method": method,
        "image_size": list(image.original_size),
        "class_id": result.class_id,
        "class_name": result.class_name,
        "score": None if result.score is None else round(result.score, 5),
        "box": None
        if result.box is None
        else box_to_original(result.box, work, image.original_size),
        "boxes": [box_to_original(b, work, image.original_size) for b in result.boxes],
        "sgrm_steps": result.sgrm_steps,
        "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
    }


def localize_folder(
    localizer: Localizer, root: Path, out: Path, options: LocalizeOptions, progress: bool = True
) -> RunSummary:
    """Localize every image under ``root`` into ``out``; returns the run's summary."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    predictions = out / PREDICTIONS
    done = read_done(predictions, options.retry_errors)
    summary = RunSummary(providers=localizer.providers)
    todo: list[tuple[Path, str, str | None]] = []
    for path, problem in find_images(root):
        rel = relative_name(path, root)
        if rel in done:
            summary.skipped += 1
            continue
        todo.append((path, rel, problem))
        if options.limit is not None and len(todo) >= options.limit:
            break
    writer = JsonlWriter(predictions)
    start = time.perf_counter()
    bar = tqdm(
        total=len(todo), unit="img", disable=not progress, desc="localize", dynamic_ncols=True
    )
    work = localizer.config.work_size
    method = localizer.config.method
    try:
        for i in range(0, len(todo), options.batch_size):
            batch: list[tuple[str, LoadedImage]] = []
            for path, rel, problem in todo[i : i + options.batch_size]:
                try:
                    if problem is not None:
                        raise ImageError(f"{path}: {problem}")
                    batch.append((rel, load_image(path)))
                except ImageError as exc:
                    writer.write({"path": rel, "status": "error", "error": str(exc)})
                    summary.errors += 1
                    bar.update(1)
            for rel, image, result, error in _run_batch(localizer, batch, options.class_id):
                if error is not None:
                    writer.write({"path": rel, "status": "error", "error": error})
                    summary.errors += 1
                else:
                    record = _ok_record(rel, image, result, work, method)
                    stem = Path(rel).with_suffix("")
                    if options.save_masks:
                        mask_rel = f"masks/{stem}.png"
                        save_mask(result.mask, image.original_size, out / mask_rel)
                        record["mask"] = mask_rel
                    if options.overlays:
                        overlay_rel = f"overlays/{stem}.jpg"
                        save_overlay(image, result, work, out / overlay_rel)
                        record["overlay"] = overlay_rel
                    writer.write(record)
                    summary.ok += 1
                    summary.add_timings(result.timings_ms)
                bar.update(1)
            elapsed = time.perf_counter() - start
            bar.set_postfix(errors=summary.errors, refresh=False)
            summary.seconds = elapsed
    finally:
        bar.close()
        writer.close()
        summary.seconds = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    return summary


def _run_batch(
    localizer: Localizer, batch: list[tuple[str, LoadedImage]], class_id: int | None
) -> Iterator[tuple[str, LoadedImage, Localization | None, str | None]]:
    """Results of a batch; if the batch fails as a whole, image by image with errors recorded."""
    if not batch:
        return
    try:
        results = localizer.run([im.rgb for _, im in batch], [class_id] * len(batch))
    except Exception as exc:
        if len(batch) == 1:
            rel, image = batch[0]
            yield rel, image, None, f"{rel}: localization failed ({type(exc).__name__}: {exc})"
            return
        for item in batch:
            yield from _run_batch(localizer, [item], class_id)
        return
    for (rel, image), result in zip(batch, results, strict=True):
        yield rel, image, result, None
