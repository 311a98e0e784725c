"""``lcar-deploy eval``: every method on the same images, wsolevaluation metrics, report.

Per image, the pipeline runs once for all methods (the stages they share run once); map
methods (``cam``, ``graphcut``, ``arm``) are swept over the score-map thresholds, ``lcar`` is
scored at its own mask. Maps use the GT class when the bundle's classes are the dataset's
(GT-known), else the predicted class; top-1 cls is reported only in the first case.

Outputs in ``--out``: ``metrics.json``, ``report.md``, ``maps.npz`` (``ids``, ``maps_<method>``
N x 224 x 224 float16), ``threshold_curves.png``, ``examples.png``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .boxes import component_boxes, mask_to_box
from .bundle import Bundle
from .config import PipelineConfig, check_evaluable
from .datasets import Dataset, Record, load_dataset
from .engines import Mapped, map_batches
from .errors import SettingError
from .image_io import ImageError, load_image
from .io import make_dirs, write_atomic
from .metrics import BoxAccuracyAccumulator, box_iou, check_box_convention
from .names import METHODS, STAGES, Engine, method_stages
from .pipeline import BackboneRun, Localizer, LocalizerSpec

DATASET_CLASSES = {"cub": "cub", "ilsvrc": "imagenet"}


@dataclass
class ImageOutcome:
    """One image's results for every method (picklable: it crosses process boundaries).

    gt_boxes: (K, 4) int64 at 224. maps: method -> (224, 224) float32 (scored as they are;
    ``maps.npz`` stores them as float16). boxes: method -> the
    user-facing V1 box in work pixels or None. cls_correct: None when classes don't match.
    stage_ms: this image's share of each stage. error: why the image could not be evaluated.
    """

    image_id: str
    gt_boxes: np.ndarray
    cls_correct: bool | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: dict[str, tuple[int, int, int, int] | None] = field(default_factory=dict)
    lcar_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    stage_ms: dict[str, float] = field(default_factory=dict)
    sgrm_steps: int | None = None
    error: str | None = None


NAMED_CLASSES = ("folder", "csv")
"""Dataset kinds whose classes are known by name only: matched to the bundle's by name."""


def uses_gt_class(bundle: Bundle, dataset: Dataset) -> bool:
    """Whether the bundle's class ids are the dataset's (then maps use the GT class). For a
    dataset of :data:`NAMED_CLASSES`, whether every class name of it is one of the bundle's
    (:func:`with_bundle_classes` then gives the records the bundle's ids)."""
    if not bundle.has_heads:
        return False
    if dataset.kind in NAMED_CLASSES:
        return set(dataset.class_names) <= set(bundle.class_names)
    return bundle.class_dataset == DATASET_CLASSES.get(dataset.kind)


def with_bundle_classes(dataset: Dataset, bundle: Bundle) -> Dataset:
    """``dataset`` (classes known by name) with the bundle's class ids and table, so that the
    GT class of each record is the bundle's class of the same name."""
    ids = dict(zip(bundle.class_names, bundle.class_ids, strict=True))
    used = sorted({ids[name] for name in dataset.class_names})
    label = {cid: i for i, cid in enumerate(used)}
    names = dict(zip(bundle.class_ids, bundle.class_names, strict=True))
    records = []
    for record in dataset.records:
        cid = ids[dataset.class_names[record.label]]
        records.append(dataclasses.replace(record, class_id=cid, label=label[cid]))
    return dataclasses.replace(
        dataset, records=records, class_ids=used, class_names=[names[c] for c in used]
    )


def evaluate_batch(
    localizer: Localizer, records: Sequence[Record], methods: Sequence[str], gt_class: bool
) -> list[ImageOutcome]:
    """Run ``methods`` on ``records``; bad images become outcomes with ``error`` set."""
    outcomes, good = _decode_records(localizer, records)
    _localize_good(localizer, good, methods, gt_class)
    return outcomes


@dataclass
class DecodedRecords:
    """Records decoded and through the backbone (:meth:`EvalTask.prepare`): every record's
    outcome (those that failed to decode with ``error`` set), the decoded ones, and their
    backbone stage (None when it failed: it is run again, image by image where it fails)."""

    outcomes: list[ImageOutcome]
    good: list[tuple[ImageOutcome, Record, np.ndarray]]
    backbone: BackboneRun | None


def _decode_records(
    localizer: Localizer, records: Sequence[Record]
) -> tuple[list[ImageOutcome], list[tuple[ImageOutcome, Record, np.ndarray]]]:
    work = localizer.config.work_size
    outcomes: list[ImageOutcome] = []
    good: list[tuple[ImageOutcome, Record, np.ndarray]] = []
    for record in records:
        try:
            image = load_image(record.path)
            gt = record.scaled_boxes(work, record.size or image.original_size)
            outcome = ImageOutcome(record.image_id, gt)
            good.append((outcome, record, image.rgb))
        except (ImageError, ValueError) as exc:
            outcome = ImageOutcome(record.image_id, np.zeros((0, 4), np.int64), error=str(exc))
        outcomes.append(outcome)
    return outcomes, good


def _localize_good(
    localizer: Localizer,
    good: list[tuple[ImageOutcome, Record, np.ndarray]],
    methods: Sequence[str],
    gt_class: bool,
    backbone: BackboneRun | None = None,
) -> None:
    """Fill the outcomes of decoded images; a batch that fails is retried image by image, and
    an image that still fails gets ``error`` (the evaluation goes on). ``backbone``: the
    batch's backbone stage, already run."""
    if not good:
        return
    class_ids = [r.class_id if gt_class else None for _, r, _ in good]
    try:
        if backbone is None:
            images = [rgb for _, _, rgb in good]
            results = localizer.run_methods(images, class_ids, tuple(methods))
        else:
            results = localizer.post_stages(backbone, class_ids, tuple(methods))
    except Exception as exc:
        if len(good) > 1:
            for item in good:
                _localize_good(localizer, [item], methods, gt_class)
        else:
            outcome, record, _ = good[0]
            outcome.error = f"{record.path}: localization failed ({type(exc).__name__}: {exc})"
        return
    for i, (outcome, record, _) in enumerate(good):
        for method in methods:
            loc = results[method][i]
            outcome.maps[method] = np.asarray(loc.map, dtype=np.float32)
            outcome.boxes[method] = loc.box
            outcome.stage_ms.update(loc.timings_ms)
            if method == "lcar":
                # The mask's boxes, whatever the object rule kept (wsolevaluation: a box always).
                box = mask_to_box(loc.mask, localizer.config.sgrm.box_mode)
                outcome.sgrm_steps = loc.sgrm_steps
                outcome.lcar_boxes = [] if box is None else [box, *component_boxes(loc.mask)]
        first = results[methods[0]][i]
        if gt_class:
            outcome.cls_correct = first.predicted_class_id == record.class_id


@dataclass(frozen=True)
class EvalTask:
    """``eval``'s work on one batch, for :func:`lcar_deploy.engines.map_batches`: records ->
    their outcomes (:func:`evaluate_batch`)."""

    spec: LocalizerSpec
    methods: tuple[str, ...]
    gt_class: bool

    def __call__(self, localizer: Localizer, records: Sequence[Record]) -> list[ImageOutcome]:
        return evaluate_batch(localizer, records, self.methods, self.gt_class)

    def prepare(self, localizer: Localizer, records: Sequence[Record]) -> DecodedRecords:
        """The first half of the call, for a pipelined engine: decode, then the backbone."""
        outcomes, good = _decode_records(localizer, records)
        backbone = None
        if good:
            try:
                backbone = localizer.backbone_stage([rgb for _, _, rgb in good])
            except Exception:  # _localize_good runs it again and names the image that fails
                backbone = None
        return DecodedRecords(outcomes, good, backbone)

    def finish(self, localizer: Localizer, decoded: DecodedRecords) -> list[ImageOutcome]:
        """The rest of the call on what :meth:`prepare` made: the same outcomes."""
        _localize_good(localizer, decoded.good, self.methods, self.gt_class, decoded.backbone)
        return decoded.outcomes


def iter_outcomes(
    bundle: Bundle,
    config: PipelineConfig,
    dataset: Dataset,
    methods: tuple[str, ...],
    *,
    batch_size: int = 8,
    engine: Engine = "local",
    workers: int = 1,
    device: str = "auto",
    threads: int | None = None,
    address: str | None = None,
    overlap: bool = True,
) -> Mapped[ImageOutcome]:
    """Outcomes in dataset order, ``batch_size`` records a batch, computed by ``engine``
    (:func:`lcar_deploy.engines.map_batches`: ``workers``, ``threads`` in all, ``address``,
    ``overlap``); ``.providers`` says what the workers ran on, ``.busy`` how long each stage
    of the local engine ran."""
    task = EvalTask(
        LocalizerSpec(bundle, config, device), tuple(methods), uses_gt_class(bundle, dataset)
    )
    records = dataset.records
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    mapped = map_batches(
        task,
        batches,
        engine=engine,
        workers=workers,
        threads=threads,
        address=address,
        overlap=overlap,
    )
    return mapped.items()


@dataclass
class EvalResult:
    metrics: dict
    accumulators: dict[str, BoxAccuracyAccumulator]
    errors: list[tuple[str, str]]


def run_evaluation(
    outcomes: Iterator[ImageOutcome],
    methods: tuple[str, ...],
    out: Path,
    total: int,
    *,
    thresholds: np.ndarray | None = None,
    progress: bool = True,
    examples: int = 12,
    box_threshold: float | None = None,
    arm_uses_cut: bool = True,
) -> EvalResult:
    """Accumulate metrics, write maps.npz (streamed to disk), return the metrics.

    ``box_threshold``: the run's own threshold (the bundle's, calibrated or not); each map
    method also reports GT-known there (``gt_known_at_setting``), next to the sweep's best.
    ``arm_uses_cut``: whether ARM needs the graph cut, for which stages each method's ms/image
    sums (:func:`~lcar_deploy.names.method_stages`)."""
    from tqdm import tqdm

    accs = {m: BoxAccuracyAccumulator(cam_thresholds=thresholds) for m in methods}
    ms_sum = dict.fromkeys(STAGES, 0.0)
    steps: list[int] = []
    ids: list[str] = []
    errors: list[tuple[str, str]] = []
    shown: list[ImageOutcome] = []
    tmp = Path(tempfile.mkdtemp(prefix=".maps-", dir=out))
    memmaps = {
        m: np.lib.format.open_memmap(
            tmp / f"maps_{m}.npy", mode="w+", dtype=np.float16, shape=(total, 224, 224)
        )
        for m in methods
    }
    start = time.perf_counter()
    n = without_gt = 0
    try:
        for outcome in tqdm(outcomes, total=total, unit="img", desc="eval", disable=not progress):
            if outcome.error is not None:
                errors.append((outcome.image_id, outcome.error))
                continue
            for method in methods:
                score_map = outcome.maps[method]
                if method == "lcar":
                    boxes = outcome.lcar_boxes or [(0, 0, 0, 0)]
                    accs[method].add_mask_box(
                        outcome.gt_boxes, boxes=np.array(boxes), cls_correct=outcome.cls_correct
                    )
                else:
                    accs[method].add_scoremap(score_map, outcome.gt_boxes, outcome.cls_correct)
                if outcome.maps[method].shape == (224, 224):
                    memmaps[method][n] = outcome.maps[method]
            for stage, ms in outcome.stage_ms.items():
                ms_sum[stage] += ms
            if outcome.sgrm_steps is not None:
                steps.append(outcome.sgrm_steps)
            ids.append(outcome.image_id)
            without_gt += not len(outcome.gt_boxes)
            if len(shown) < examples and len(outcome.gt_boxes):
                shown.append(outcome)
            n += 1
        seconds = time.perf_counter() - start
        busy = dict(getattr(outcomes, "busy", {}))
        arrays = {f"maps_{m}": memmaps[m][:n] for m in methods}
        _save_npz_atomic(out / "maps.npz", ids=np.array(ids), **arrays)
    finally:
        del memmaps
        shutil.rmtree(tmp, ignore_errors=True)
    mean_ms = {s: v / max(n, 1) for s, v in ms_sum.items()}
    metrics: dict = {
        "num_images": n,
        "num_without_gt": without_gt,
        "num_errors": len(errors),
        "seconds": seconds,
        "busy_percent": {
            s: round(100 * b / seconds, 1) if seconds else 0.0 for s, b in busy.items()
        },
        "methods": {},
    }
    for method in methods:
        stages = method_stages(method, arm_uses_cut)
        entry = accs[method].to_dict(include_curves=True) if accs[method].num_images else {}
        if entry.get("sweep") and box_threshold is not None:
            grid = accs[method].cam_thresholds
            index = int(np.argmin(np.abs(grid - box_threshold)))
            entry["setting_threshold"] = float(grid[index])
            entry["gt_known_at_setting"] = float(accs[method].accuracy_curve(50)[index])
            entry["gt_at_setting"] = {
                str(d): float(accs[method].accuracy_curve(d)[index])
                for d in accs[method].iou_thresholds
            }
            entry["max_box_acc_v2_at_setting"] = float(
                np.mean(
                    [
                        accs[method].accuracy_curve(d, version=2)[index]
                        for d in accs[method].v2_iou_thresholds
                    ]
                )
            )
        entry["ms_per_image"] = sum(mean_ms[s] for s in stages)
        metrics["methods"][method] = entry
    metrics["stage_ms_per_image"] = mean_ms
    if steps:
        metrics["sgrm_mean_steps"] = float(np.mean(steps))
    metrics["errors"] = [{"image_id": i, "error": e} for i, e in errors]
    metrics["_examples"] = shown
    return EvalResult(metrics, accs, errors)


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` through :func:`write_atomic`, into an open file (given a name, numpy would
    add ``.npz`` to the temporary one)."""

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)

    write_atomic(path, save)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _count_line(metrics: dict) -> str:
    n, without = metrics["num_images"], metrics.get("num_without_gt", 0)
    if not without:
        return f"{n} images evaluated, {metrics['num_errors']} failed."
    return (
        f"{n - without} images evaluated, {without} without a ground-truth box (not scored), "
        f"{metrics['num_errors']} failed."
    )


def _at_setting_table(metrics: dict) -> list[str]:
    """Every GT column at the run's own settings: the boxes ``localize`` gives (a map method
    at its box_threshold, LCAR at its mask); the bundle's default method marked."""
    default = metrics.get("default_method")
    rows = []
    for method, m in metrics["methods"].items():
        if not m.get("num_images"):
            continue
        if m.get("gt_at_setting"):
            gt, v2 = m["gt_at_setting"], m["max_box_acc_v2_at_setting"]
            how = f"threshold {m['setting_threshold']:.2f}"
        elif m.get("gt_known_threshold") is None:
            gt, v2, how = m["gt"], m["max_box_acc_v2"], "mask"
        else:
            continue
        name = f"**{method}** (default)" if method == default else method
        rows.append(
            f"| {name} | {how} | {_fmt(gt['50'])} | {_fmt(gt['70'])} | {_fmt(gt['80'])} | "
            f"{_fmt(gt['90'])} | {_fmt(v2)} |"
        )
    if not rows:
        return []
    return [
        "",
        "At the run's own settings (the boxes localize gives; the bundle's default method marked):",
        "",
        "| method | box from | GT(0.5) | GT(0.7) | GT(0.8) | GT(0.9) | MaxBoxAccV2 |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def report_markdown(metrics: dict, title: str) -> str:
    """A table like the paper's Table 1, one row per method."""
    lines = [
        f"# {title}",
        "",
        _count_line(metrics),
        "",
        "| method | GT(0.5) | GT(0.7) | GT(0.8) | GT(0.9) | MaxBoxAccV2 | top-1 loc | top-1 cls "
        "| best thr | GT(0.5) at setting | ms/image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, m in metrics["methods"].items():
        if not m.get("num_images"):
            continue
        gt = m["gt"]
        thr = m.get("gt_known_threshold")
        at = m.get("gt_known_at_setting")
        at_text = "-" if at is None else f"{at:.1f} ({m['setting_threshold']:.2f})"
        lines.append(
            f"| {method} | {_fmt(gt['50'])} | {_fmt(gt['70'])} | {_fmt(gt['80'])} | "
            f"{_fmt(gt['90'])} | {_fmt(m['max_box_acc_v2'])} | {_fmt(m['top1_loc'])} | "
            f"{_fmt(m['top1_cls'])} | {'mask' if thr is None else f'{thr:.2f}'} | {at_text} | "
            f"{m['ms_per_image']:.0f} |"
        )
    lines += [
        "",
        "GT(d): GT-known box accuracy at IoU >= d (V1: largest contour, best threshold for map "
        "methods; LCAR at its own mask). MaxBoxAccV2: mean of V2 (all contours) at IoU 0.3/0.5/0.7.",
        "GT(0.5) at setting: a map method at the run's own box_threshold (the bundle's, e.g. "
        "from lcar-deploy calibrate), the one localize uses; best thr is the test-set optimum.",
    ]
    lines += _at_setting_table(metrics)
    if "sgrm_mean_steps" in metrics:
        lines.append(f"SGRM mean steps to stop: {metrics['sgrm_mean_steps']:.1f}.")
    if metrics.get("busy_percent"):
        busy = ", ".join(f"{s} {p:.0f}%" for s, p in metrics["busy_percent"].items())
        lines.append(f"Busy (share of the run's {metrics['seconds']:.0f} s): {busy}.")
    return "\n".join(lines) + "\n"


def plot_curves(metrics: dict, path: Path) -> None:
    """GT-known accuracy (IoU 0.5, V1) against the score-map threshold, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, m in metrics["methods"].items():
        if not m.get("num_images"):
            continue
        if m.get("sweep"):
            ax.plot(m["cam_thresholds"], m["curves"]["v1"]["50"], label=method)
        else:
            ax.axhline(m["gt"]["50"], linestyle="--", color="k", label=f"{method} (own mask)")
    ax.set_xlabel("score-map threshold")
    ax.set_ylabel("GT-known loc @ IoU 0.5 (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_examples(
    examples: list[ImageOutcome], dataset: Dataset, method: str, path: Path, work: int = 224
) -> None:
    """Grid of images with GT boxes (green), the method's box (red) and its IoU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .image_io import resize_rgb

    by_id = {r.image_id: r for r in dataset.records}
    cols = 4
    rows = max(1, (len(examples) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, outcome in zip(axes.ravel(), examples, strict=False):
        rgb = resize_rgb(load_image(by_id[outcome.image_id].path).rgb, work)
        ax.imshow(rgb)
        for x0, y0, x1, y1 in outcome.gt_boxes:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=2))
        box = outcome.boxes.get(method)
        if box is not None:
            x0, y0, x1, y1 = box
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="red", lw=2))
            iou = float(box_iou(check_box_convention(box), outcome.gt_boxes).max())
            ax.text(4, 16, f"IoU {100 * iou:.0f}", color="white", fontsize=11, weight="bold")
    fig.suptitle(f"{method}: GT green, prediction red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: EvalResult, dataset: Dataset, out: Path, title: str, info: dict) -> None:
    """metrics.json, report.md, threshold_curves.png, examples.png (atomic renames)."""
    metrics = dict(result.metrics)
    examples = metrics.pop("_examples")
    metrics.update(info)
    write_atomic(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
    (out / "report.md").write_text(report_markdown(metrics, title))
    plot_curves(metrics, out / "threshold_curves.png")
    methods = [m for m, v in metrics["methods"].items() if v.get("num_images")]
    if examples and methods:
        plot_examples(examples, dataset, methods[-1], out / "examples.png")


def evaluate(
    dataset: str | Dataset,
    root: str | Path | None = None,
    *,
    bundle: str | Path | Bundle | None = None,
    out: str | Path = "lcar-eval",
    methods: Sequence[str] = METHODS,
    split: str = "test",
    metadata: str | Path | None = None,
    limit: int | None = None,
    preset: str | None = None,
    settings: str | dict | None = None,
    device: str = "auto",
    arm_backend: str = "auto",
    batch_size: int = 8,
    engine: str = "local",
    workers: int = 1,
    threads: int | None = None,
    address: str | None = None,
    overlap: bool = True,
    progress: bool = True,
    command: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> EvalResult:
    """``lcar-deploy eval``: every method of ``methods`` on the same images of a dataset split,
    scored with wsolevaluation's metrics; writes ``metrics.json``, ``report.md``, ``maps.npz``
    and the plots into ``out`` (module docstring) and returns the result.

    ``dataset``: a loaded :class:`Dataset`, or its layout (``cub | ilsvrc | wsol``) read from
    ``root`` (``split``, ``metadata``, ``limit`` as :func:`load_dataset`). ``bundle``, ``preset``,
    ``settings``, ``device``, ``arm_backend``: as :meth:`Localizer.from_bundle`; ``engine``,
    ``workers``, ``threads``, ``address``, ``overlap``: as
    :func:`lcar_deploy.engines.map_batches`. Every
    argument is checked before any image is read (:class:`lcar_deploy.errors.LcarError`).
    """
    chosen = tuple(m for m in METHODS if m in methods)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not chosen:
        raise SettingError(
            "methods", f"unknown {unknown or list(methods)}; choose from {', '.join(METHODS)}"
        )
    data = (
        dataset
        if isinstance(dataset, Dataset)
        else load_dataset(dataset, root, split, metadata=metadata, limit=limit)
    )
    spec = LocalizerSpec.from_bundle(
        bundle,
        preset=preset,
        settings=settings,
        device=device,
        arm_backend=arm_backend,
        notify=notify,
    )
    check_evaluable(spec.config)
    if data.kind in NAMED_CLASSES and uses_gt_class(spec.bundle, data):
        data = with_bundle_classes(data, spec.bundle)
    out = Path(out)
    outcomes = iter_outcomes(
        spec.bundle,
        spec.config,
        data,
        chosen,
        batch_size=batch_size,
        engine=engine,
        workers=workers,
        device=device,
        threads=threads,
        address=address,
        overlap=overlap,
    )
    make_dirs(out)
    result = run_evaluation(
        outcomes,
        chosen,
        out,
        len(data),
        progress=progress,
        box_threshold=spec.config.box_threshold,
        arm_uses_cut=spec.arm_uses_cut,
    )
    result.metrics["default_method"] = spec.config.method
    loaded = spec.bundle
    info = {
        "command": command,
        "dataset": {
            "kind": data.kind,
            "root": str(data.root),
            "split": data.split,
            "images": len(data),
        },
        "bundle": str(loaded.path),
        "backbone": loaded.backbone,
        "input_size": loaded.input_size,
        "providers": outcomes.providers,
        "settings": dataclasses.asdict(spec.config),
    }
    title = f"lcar-deploy eval: {data.kind} {data.split} ({loaded.backbone}, S={loaded.input_size})"
    write_outputs(result, data, out, title, info)
    return result
