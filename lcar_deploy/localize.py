"""``lcar-deploy localize``: every image of a folder -> ``predictions.jsonl`` (+ masks, overlays).

Robustness rules:

- Images are decoded one batch at a time (memory stays flat over thousands of images).
- A bad image (unreadable, corrupt, too large, ...) gets a ``status: error`` line with the
  reason and the run goes on; a batch that fails as a whole is retried image by image.
- Each line is written with one ``write`` call and flushed: a crash leaves at most one partial
  last line, which the next run removes before it appends. Masks and overlays are written to a
  temporary name and renamed.
- Running again on the same ``--out`` skips the images already in ``predictions.jsonl``
  (with ``retry_errors``, their error lines are dropped first, so every image keeps one line).
- Masks and overlays are named after the whole relative path (``masks/a.jpg.png``), so
  ``a.jpg`` and ``a.png`` never overwrite each other; an output folder inside the input folder
  is not searched for images.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .image_io import IMAGE_EXTENSIONS, ImageError, LoadedImage, load_image
from .pipeline import Localization, Localizer, box_to_original

PREDICTIONS = "predictions.jsonl"


def find_images(root: Path, exclude: Path | None = None) -> Iterator[Path]:
    """Paths under ``root`` (nested, sorted) named like images, except under ``exclude``.

    Symlinked folders are not followed (no loops). Every entry with an image name is yielded,
    broken links and special files included: :func:`load_image` reports why they fail.
    """
    skip = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if (Path(dirpath) / d).resolve() != skip)
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(dirpath) / name


def relative_name(path: Path, root: Path) -> str:
    """Path relative to ``root`` as text; undecodable bytes kept as surrogate escapes."""
    return os.fsdecode(os.fsencode(path.relative_to(root)))


def read_done(predictions: Path, retry_errors: bool) -> dict[str, str]:
    """{path: status} of the records already in ``predictions.jsonl``.

    Drops a partial last line left by a crash and, with ``retry_errors``, the error lines (the
    file is rewritten atomically); lines that are not records are kept as they are.
    """
    if not predictions.exists():
        return {}
    data = predictions.read_bytes()
    end = data.rfind(b"\n") + 1
    keep: list[bytes] = []
    done: dict[str, str] = {}
    for line in data[:end].splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("path"), str):
            if retry_errors and record.get("status") == "error":
                continue
            done[record["path"]] = str(record.get("status"))
        keep.append(line)
    kept = b"".join(keep)
    if len(kept) < len(data):
        write_atomic(predictions, lambda tmp: tmp.write_bytes(kept))
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
    """Counts and mean per-stage times of one run.

    skipped: images already in ``predictions.jsonl``; skipped_errors: those of them recorded
    as errors (a resumed run still reports them: the output is not complete).
    """

    ok: int = 0
    errors: int = 0
    skipped: int = 0
    skipped_errors: int = 0
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
            "skipped_failed_before": self.skipped_errors,
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


def prepare_output(out: Path, options: LocalizeOptions) -> None:
    """Create ``out`` and the folders ``options`` write to; OSError when one cannot be made."""
    out.mkdir(parents=True, exist_ok=True)
    for folder, wanted in (("masks", options.save_masks), ("overlays", options.overlays)):
        if wanted:
            (out / folder).mkdir(exist_ok=True)


def _save_files(
    out: Path,
    rel: str,
    image: LoadedImage,
    result: Localization,
    work: int,
    options: LocalizeOptions,
) -> dict[str, str]:
    """Write the mask / overlay of one image; their paths relative to ``out``."""
    written = {}
    if options.save_masks:
        written["mask"] = f"masks/{rel}.png"
        save_mask(result.mask, image.original_size, out / written["mask"])
    if options.overlays:
        written["overlay"] = f"overlays/{rel}.jpg"
        save_overlay(image, result, work, out / written["overlay"])
    return written


ImageResult = tuple[str, LoadedImage | None, Localization | None, str | None]
"""(relative path, decoded image, result, error): one per image; ``error`` set on failure."""
ResultSource = Callable[[list[tuple[Path, str]]], Generator[ImageResult, None, None]]
"""Maps the (path, relative path) pairs to do to their results (e.g. the Ray engine's)."""


def localize_folder(
    localizer: Localizer,
    root: Path,
    out: Path,
    options: LocalizeOptions,
    progress: bool = True,
    *,
    results: ResultSource | None = None,
) -> RunSummary:
    """Localize every image under ``root`` into ``out``; returns the run's summary.

    ``results``: where the per-image results come from (default: ``localizer`` in this
    process, batch by batch, :func:`localize_batch`); this function writes every output.
    """
    from tqdm import tqdm

    prepare_output(out, options)
    predictions = out / PREDICTIONS
    done = read_done(predictions, options.retry_errors)
    summary = RunSummary(providers=localizer.providers)
    todo: list[tuple[Path, str]] = []
    for path in find_images(root, exclude=out):
        rel = relative_name(path, root)
        if rel in done:
            summary.skipped += 1
            summary.skipped_errors += done[rel] == "error"
            continue
        todo.append((path, rel))
        if options.limit is not None and len(todo) >= options.limit:
            break
    writer = JsonlWriter(predictions)
    start = time.perf_counter()
    bar = tqdm(
        total=len(todo), unit="img", disable=not progress, desc="localize", dynamic_ncols=True
    )
    work = localizer.config.work_size
    method = localizer.config.method
    source = results(todo) if results is not None else local_results(localizer, todo, options)
    try:
        for rel, image, result, error in source:
            if error is None:
                record = _ok_record(rel, image, result, work, method)
                try:
                    record.update(_save_files(out, rel, image, result, work, options))
                except OSError as exc:
                    error = f"{rel}: cannot write its mask or overlay ({exc})"
            if error is not None:
                writer.write({"path": rel, "status": "error", "error": error})
                summary.errors += 1
            else:
                writer.write(record)
                summary.ok += 1
                summary.add_timings(result.timings_ms)
            bar.update(1)
            bar.set_postfix(errors=summary.errors, refresh=False)
            summary.seconds = time.perf_counter() - start
    finally:
        source.close()
        bar.close()
        writer.close()
        summary.seconds = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    return summary


def local_results(
    localizer: Localizer, todo: list[tuple[Path, str]], options: LocalizeOptions
) -> Generator[ImageResult, None, None]:
    """Results of ``todo`` in this process, ``options.batch_size`` images at a time."""
    for i in range(0, len(todo), options.batch_size):
        yield from localize_batch(localizer, todo[i : i + options.batch_size], options.class_id)


def localize_batch(
    localizer: Localizer, batch: Sequence[tuple[Path, str]], class_id: int | None
) -> Iterator[ImageResult]:
    """Decode and localize one batch of (path, relative path): one result per image, those
    that cannot be decoded first (as they are met), then the others in order."""
    loaded: list[tuple[str, LoadedImage]] = []
    for path, rel in batch:
        try:
            loaded.append((rel, load_image(path)))
        except ImageError as exc:
            yield rel, None, None, str(exc)
    yield from _run_batch(localizer, loaded, class_id)


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
