"""``--engine ray``: the per-image pipeline as Ray Data ``map_batches`` over a pool of actors.

Each actor of a fixed-size pool loads the bundle once and holds one onnxruntime session
(device ``cpu``, ``threads`` threads, ``threads`` Ray CPUs). Its batches run the very functions
of the local engine, :func:`lcar_deploy.evaluate.evaluate_batch` for ``eval`` and
:func:`lcar_deploy.localize.localize_batch` for ``localize``, so the results are those of a local
run. Rows travel as Arrow tables with explicit types (maps as raw float32 bytes, masks as
packed bits: bit-exact); the driver turns them back into the local types, in dataset order,
and writes every output itself.

Without ``address`` a private Ray instance is started on 127.0.0.1 (``workers x threads`` CPUs,
no dashboard) and shut down at the end; with ``address`` (``HOST:PORT`` of a running cluster)
the driver connects and disconnects at the end. If Ray is already initialized in this process,
that instance is used and left running. On a cluster every node needs lcar-deploy installed and
must see the bundle and the images at the driver's paths (a shared filesystem); masks,
overlays and reports are written by the driver only.

Ray is imported only when this engine runs (extra ``lcar-deploy[distributed]``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Generator, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from .bundle import Bundle
from .config import PipelineConfig
from .datasets import Dataset, Record
from .errors import EngineError
from .evaluate import ImageOutcome, evaluate_batch, uses_gt_class
from .image_io import ImageError, LoadedImage, load_image
from .localize import (
    ImageResult,
    LocalizeOptions,
    RunSummary,
    localize_batch,
    localize_folder,
)
from .names import STAGES
from .pipeline import Localization, Localizer

if TYPE_CHECKING:
    import pyarrow as pa

RAY_MISSING = (
    "the ray engine needs Ray Data, which is not installed: install lcar-deploy[distributed]"
)


def import_ray(local: bool = False) -> ModuleType:
    """``ray`` with Ray Data, or :class:`EngineError` naming the extra to install.

    ``local``: a private instance will be started; if Ray is not imported yet, it is told to
    take 127.0.0.1 as this node's address (its single-machine mode, read at import), so that
    the instance listens on the loopback interface only.
    """
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise EngineError(f"{RAY_MISSING} ({exc})") from None
    return ray


@contextlib.contextmanager
def ray_instance(address: str | None = None, num_cpus: int = 1) -> Iterator[ModuleType]:
    """Ray for the duration of the block: the running instance of this process if any, else a
    connection to ``address``, else a private local one on 127.0.0.1 (shut down afterwards)."""
    ray = import_ray(local=not address)
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                _node_ip_address="127.0.0.1",
            )
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _map_rows(
    items: list[dict[str, Any]],
    actor: type,
    constructor_args: tuple,
    *,
    batch_size: int,
    workers: int,
    address: str | None,
    threads: int,
) -> Generator[dict[str, Any], None, None]:
    """Rows of ``items`` mapped by ``actor`` (a pool of ``workers``), as they come."""
    blocks = max(1, -(-len(items) // batch_size))
    workers = min(workers, blocks)
    with ray_instance(address, num_cpus=workers * threads) as ray, _quiet_ray_data(ray):
        dataset = ray.data.from_items(items, override_num_blocks=blocks)
        mapped = dataset.map_batches(
            actor,
            fn_constructor_args=constructor_args,
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads,
        )
        for table in mapped.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield from table.to_pylist()


class _DropProgressNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


@contextlib.contextmanager
def _quiet_ray_data(ray: ModuleType) -> Iterator[None]:
    """Ray Data without its progress bars (the commands show theirs) and its INFO lines."""
    context = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    notices = logging.getLogger("ray.data._internal.progress")
    drop = _DropProgressNotice()
    saved = context.enable_progress_bars, logger.level
    context.enable_progress_bars = False
    logger.setLevel(logging.WARNING)
    notices.addFilter(drop)
    try:
        yield
    finally:
        context.enable_progress_bars = saved[0]
        logger.setLevel(saved[1])
        notices.removeFilter(drop)


def _in_order(rows: Iterable[dict[str, Any]], key: str) -> Iterator[dict[str, Any]]:
    """Rows sorted by ``row[key]`` (a permutation of 0..N-1), yielded as soon as possible."""
    pending: dict[int, dict[str, Any]] = {}
    expected = 0
    for row in rows:
        pending[row[key]] = row
        while expected in pending:
            yield pending.pop(expected)
            expected += 1
    if pending:
        raise EngineError(f"Ray returned rows out of range: {sorted(pending)[:5]}")


def _encode(text: str | None) -> bytes | None:
    """Any str (paths with surrogate escapes too) as bytes, exactly reversible."""
    return None if text is None else text.encode("utf-8", "surrogatepass")


def _decode(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "surrogatepass")


def _flat(boxes: Iterable[Sequence[int]]) -> list[int]:
    return [int(v) for box in boxes for v in box]


def _boxes(flat: list[int]) -> list[tuple[int, int, int, int]]:
    return [tuple(flat[i : i + 4]) for i in range(0, len(flat), 4)]


def _make_localizer(bundle_path: str, config: PipelineConfig, threads: int) -> Localizer:
    return Localizer(Bundle.load(bundle_path), config, device="cpu", threads=threads)


# ---- eval ------------------------------------------------------------------------------------


def _record_item(index: int, record: Record) -> dict[str, Any]:
    width, height = record.size or (-1, -1)
    return {
        "index": index,
        "image_id": _encode(record.image_id),
        "path": os.fsencode(record.path),
        "class_id": record.class_id,
        "label": record.label,
        "boxes": [float(v) for v in np.asarray(record.boxes, np.float64).ravel()],
        "width": width,
        "height": height,
    }


def _item_record(item: dict[str, Any]) -> Record:
    size = None if item["width"] < 0 else (item["width"], item["height"])
    return Record(
        image_id=_decode(item["image_id"]),
        path=Path(os.fsdecode(item["path"])),
        class_id=item["class_id"],
        label=item["label"],
        boxes=np.asarray(item["boxes"], dtype=np.float64).reshape(-1, 4),
        size=size,
    )


def _outcome_schema(methods: Sequence[str]) -> pa.Schema:
    import pyarrow as pa

    ints = pa.list_(pa.int64())
    fields = [
        ("index", pa.int64()),
        ("image_id", pa.binary()),
        ("error", pa.binary()),
        ("gt_boxes", ints),
        ("cls_correct", pa.bool_()),
        ("lcar_boxes", ints),
        ("sgrm_steps", pa.int64()),
    ]
    for method in methods:
        fields += [(f"map_{method}", pa.binary()), (f"box_{method}", ints)]
    fields += [(f"ms_{stage}", pa.float64()) for stage in STAGES]
    return pa.schema(fields)


def _outcome_row(index: int, outcome: ImageOutcome, methods: Sequence[str]) -> dict[str, Any]:
    """An outcome as a row: a map as its float32 bytes (null: absent), a box as 4 ints ([]:
    None, null: absent), a stage time as float (null: absent)."""
    row: dict[str, Any] = {
        "index": index,
        "image_id": _encode(outcome.image_id),
        "error": _encode(outcome.error),
        "gt_boxes": _flat(np.asarray(outcome.gt_boxes, np.int64).reshape(-1, 4)),
        "cls_correct": outcome.cls_correct,
        "lcar_boxes": _flat(outcome.lcar_boxes),
        "sgrm_steps": outcome.sgrm_steps,
    }
    for method in methods:
        score_map = outcome.maps.get(method)
        row[f"map_{method}"] = (
            None if score_map is None else np.ascontiguousarray(score_map, np.float32).tobytes()
        )
        box = outcome.boxes.get(method, ())
        row[f"box_{method}"] = None if box == () else [] if box is None else _flat([box])
    for stage in STAGES:
        row[f"ms_{stage}"] = outcome.stage_ms.get(stage)
    return row


def _row_outcome(row: dict[str, Any], methods: Sequence[str], work: int) -> ImageOutcome:
    outcome = ImageOutcome(
        _decode(row["image_id"]),
        np.asarray(row["gt_boxes"], dtype=np.int64).reshape(-1, 4),
        cls_correct=row["cls_correct"],
        lcar_boxes=_boxes(row["lcar_boxes"]),
        sgrm_steps=row["sgrm_steps"],
        error=_decode(row["error"]),
    )
    for method in methods:
        data = row[f"map_{method}"]
        if data is not None:
            outcome.maps[method] = np.frombuffer(data, np.float32).reshape(work, work).copy()
        box = row[f"box_{method}"]
        if box is not None:
            outcome.boxes[method] = _boxes(box)[0] if box else None
    outcome.stage_ms = {s: row[f"ms_{s}"] for s in STAGES if row[f"ms_{s}"] is not None}
    return outcome


class EvalActor:
    """One Ray actor of ``eval``: a bundle session; a batch of records -> outcome rows."""

    def __init__(
        self,
        bundle_path: str,
        config: PipelineConfig,
        methods: tuple[str, ...],
        gt_class: bool,
        threads: int,
    ) -> None:
        self.localizer = _make_localizer(bundle_path, config, threads)
        self.methods = methods
        self.gt_class = gt_class

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        items = batch.to_pylist()
        records = [_item_record(item) for item in items]
        outcomes = evaluate_batch(self.localizer, records, self.methods, self.gt_class)
        rows = [
            _outcome_row(item["index"], outcome, self.methods)
            for item, outcome in zip(items, outcomes, strict=True)
        ]
        return pa.Table.from_pylist(rows, schema=_outcome_schema(self.methods))


def ray_outcomes(
    bundle: Bundle,
    config: PipelineConfig,
    dataset: Dataset,
    methods: tuple[str, ...],
    batch_size: int = 8,
    workers: int = 1,
    address: str | None = None,
    *,
    threads: int = 1,
) -> Iterator[ImageOutcome]:
    """:func:`lcar_deploy.evaluate.iter_outcomes` on Ray: the outcomes in dataset order.

    ``workers`` actors of ``threads`` CPUs each run :func:`evaluate_batch` on batches of
    ``batch_size`` records. Ray is checked now (:class:`EngineError`), started on first
    iteration and released when the iteration ends.
    """
    import_ray(local=not address)
    gt_class = uses_gt_class(bundle, dataset)
    items = [_record_item(i, record) for i, record in enumerate(dataset.records)]
    args = (str(bundle.path), config, tuple(methods), gt_class, threads)
    return _outcomes(items, args, methods, config.work_size, batch_size, workers, address, threads)


def _outcomes(
    items: list[dict[str, Any]],
    args: tuple,
    methods: Sequence[str],
    work: int,
    batch_size: int,
    workers: int,
    address: str | None,
    threads: int,
) -> Generator[ImageOutcome, None, None]:
    if not items:
        return
    rows = _map_rows(
        items,
        EvalActor,
        args,
        batch_size=batch_size,
        workers=workers,
        address=address,
        threads=threads,
    )
    try:
        for row in _in_order(rows, "index"):
            yield _row_outcome(row, methods, work)
    finally:
        rows.close()


# ---- localize --------------------------------------------------------------------------------


def _result_schema() -> pa.Schema:
    import pyarrow as pa

    ints = pa.list_(pa.int64())
    fields = [
        ("seq", pa.int64()),
        ("index", pa.int64()),
        ("error", pa.binary()),
        ("image_size", ints),
        ("class_index", pa.int64()),
        ("class_id", pa.int64()),
        ("class_name", pa.binary()),
        ("score", pa.float64()),
        ("predicted_class_id", pa.int64()),
        ("box", ints),
        ("boxes", ints),
        ("sgrm_steps", pa.int64()),
        ("mask", pa.binary()),
    ]
    fields += [(f"ms_{stage}", pa.float64()) for stage in STAGES]
    return pa.schema(fields)


def _result_row(
    seq: int, index: int, image: LoadedImage | None, result: Localization | None, error: str | None
) -> dict[str, Any]:
    """One image's result as a row; the mask as packed bits (null when not kept)."""
    row: dict[str, Any] = {"seq": seq, "index": index, "error": _encode(error)}
    if result is None or image is None:
        return row
    row.update(
        image_size=list(image.original_size),
        class_index=result.class_index,
        class_id=result.class_id,
        class_name=_encode(result.class_name),
        score=result.score,
        predicted_class_id=result.predicted_class_id,
        box=None if result.box is None else _flat([result.box]),
        boxes=_flat(result.boxes),
        sgrm_steps=result.sgrm_steps,
    )
    for stage, ms in result.timings_ms.items():
        row[f"ms_{stage}"] = ms
    return row


def _row_localization(row: dict[str, Any], work: int) -> Localization:
    """The row as a Localization; ``map`` is not sent (empty), ``mask`` only when kept."""
    packed = row["mask"]
    mask = (
        np.zeros((0, 0), bool)
        if packed is None
        else np.unpackbits(np.frombuffer(packed, np.uint8), count=work * work)
        .reshape(work, work)
        .astype(bool)
    )
    return Localization(
        class_index=row["class_index"],
        class_id=row["class_id"],
        class_name=_decode(row["class_name"]),
        score=row["score"],
        map=np.zeros((0, 0), np.float32),
        mask=mask,
        box=None if row["box"] is None else _boxes(row["box"])[0],
        boxes=_boxes(row["boxes"]),
        timings_ms={s: row[f"ms_{s}"] for s in STAGES if row[f"ms_{s}"] is not None},
        predicted_class_id=row["predicted_class_id"],
        sgrm_steps=row["sgrm_steps"],
    )


class LocalizeActor:
    """One Ray actor of ``localize``: a bundle session; a batch of files -> result rows."""

    def __init__(
        self,
        bundle_path: str,
        config: PipelineConfig,
        class_id: int | None,
        keep_masks: bool,
        threads: int,
    ) -> None:
        self.localizer = _make_localizer(bundle_path, config, threads)
        self.class_id = class_id
        self.keep_masks = keep_masks

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        items = batch.to_pylist()
        todo = [(Path(os.fsdecode(item["path"])), _decode(item["rel"])) for item in items]
        index_of = {rel: item["index"] for (_, rel), item in zip(todo, items, strict=True)}
        # The k-th result of the batch takes the k-th smallest index as its place in the output:
        # the batch keeps localize_batch's order (decode errors first), the whole stays 0..N-1.
        places = sorted(index_of.values())
        rows = []
        for k, (rel, image, result, error) in enumerate(
            localize_batch(self.localizer, todo, self.class_id)
        ):
            row = _result_row(places[k], index_of[rel], image, result, error)
            if self.keep_masks and result is not None:
                row["mask"] = np.packbits(np.asarray(result.mask, bool).ravel()).tobytes()
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=_result_schema())


def ray_results(
    todo: list[tuple[Path, str]],
    *,
    bundle_path: str,
    config: PipelineConfig,
    options: LocalizeOptions,
    workers: int = 1,
    address: str | None = None,
    threads: int = 1,
) -> Generator[ImageResult, None, None]:
    """The results of :func:`lcar_deploy.localize.local_results`, computed by Ray actors.

    Decoded pixels stay on the actors: the returned :class:`LoadedImage` has an empty ``rgb``
    unless ``options.overlays`` (then the driver decodes the image again to draw on it).
    """
    if not todo:
        return
    items = [
        {"index": i, "path": os.fsencode(path), "rel": _encode(rel)}
        for i, (path, rel) in enumerate(todo)
    ]
    keep_masks = options.save_masks or options.overlays
    rows = _map_rows(
        items,
        LocalizeActor,
        (bundle_path, config, options.class_id, keep_masks, threads),
        batch_size=options.batch_size,
        workers=workers,
        address=address,
        threads=threads,
    )
    try:
        for row in _in_order(rows, "seq"):
            path, rel = todo[row["index"]]
            if row["error"] is not None:
                yield rel, None, None, _decode(row["error"])
                continue
            image = LoadedImage(np.zeros((0, 0, 3), np.uint8), tuple(row["image_size"]))
            if options.overlays:
                try:
                    image = load_image(path)
                except ImageError as exc:
                    yield rel, None, None, str(exc)
                    continue
            yield rel, image, _row_localization(row, config.work_size), None
    finally:
        rows.close()


def ray_localize_folder(
    localizer: Localizer,
    root: Path,
    out: Path,
    options: LocalizeOptions,
    progress: bool = True,
    *,
    workers: int = 1,
    address: str | None = None,
    threads: int = 1,
) -> RunSummary:
    """:func:`lcar_deploy.localize.localize_folder` with the localization done by Ray actors
    (``localizer`` gives the bundle and the settings; the driver writes every output)."""
    import_ray(local=not address)
    source = partial(
        ray_results,
        bundle_path=str(localizer.bundle.path),
        config=localizer.config,
        options=options,
        workers=workers,
        address=address,
        threads=threads,
    )
    return localize_folder(localizer, root, out, options, progress, results=source)
