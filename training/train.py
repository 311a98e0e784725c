"""Train the SD-CAM heads (CAM head = student, MLP head = teacher) on a frozen backbone.

``train(TrainConfig(...))`` writes into ``out``:

- ``heads.pt``: both heads (:func:`lcar_deploy.models.heads.save_heads`), with
  ``extra = {"metrics": ..., "dataset": ..., "training": ...}``; ready for ``export_bundle``;
- ``metrics.json``: top-1 of both heads on the validation part of the train split and on the
  test split (when there is one), per-epoch losses and accuracies, sizes, timings, cache files;
- ``loss.png``: loss and accuracy curves;
- ``checkpoints/epoch_NNN.pt`` every ``checkpoint_every`` epochs (heads files too).

Recipe (choices where the paper is silent are config values, see :class:`TrainConfig`):
features come from :mod:`.features` (computed once, cached; the paper's random crops are kept as
cached views); ``val_fraction`` of every class of the train split is held out (seeded); both
heads are trained jointly with AdamW and a cosine learning-rate schedule, the teacher by CE
(eq. 4), the student by eq. 6 (:mod:`.losses`); the heads of the last epoch are saved. The
classification result is the teacher's (docs/method.md, section 2); the student's top-1 is
reported too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..bundle import cache_dir as default_cache_root
from ..config import preset
from ..datasets import Dataset, load_dataset
from ..errors import OutputError, SettingError, printable
from ..io import write_atomic
from ..models.backbones import build_backbone
from ..models.heads import Heads, HeadsConfig, save_heads, with_foreground
from .config import TrainConfig
from .features import FeatureSet, ViewSpec, cached_features
from .localizer import class_cams, empty_head, self_train, train_split_maps
from .losses import SdLossConfig, sd_losses

LOSS_KEYS = ("teacher_ce", "student_ce", "kl", "student", "total")


@dataclass(frozen=True)
class TrainResult:
    """out: the output folder; heads_path, metrics_path, plot_path: the files written;
    metrics: the content of ``metrics.json``."""

    out: Path
    heads_path: Path
    metrics_path: Path
    plot_path: Path
    metrics: dict


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, val) index arrays holding out ``round(n_c * val_fraction)`` images of
    every class c (at least one when the class has two or more and ``val_fraction > 0``)."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = round(len(idx) * val_fraction)
        if val_fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])
    return np.sort(np.array(train_idx, dtype=np.int64)), np.sort(np.array(val_idx, dtype=np.int64))


def _forward(
    heads: Heads, global_feat: torch.Tensor, grid_mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher logits, student logits) from (B, Dg) globals and (B, D) grid means.

    The grid mean is passed as a 1 x 1 grid: exact for the linear CAM head + GAP.
    """
    logits, cam_logits, _ = heads(global_feat, grid_mean[:, None, None, :])
    return logits, cam_logits


@torch.no_grad()
def evaluate(
    heads: Heads,
    global_feat: torch.Tensor,
    grid_mean: torch.Tensor,
    labels: torch.Tensor,
    loss_config: SdLossConfig,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Mean losses and top-1 (percent) of both heads on (N, Dg), (N, D) features."""
    heads.eval()
    sums = dict.fromkeys(LOSS_KEYS, 0.0)
    correct_t = correct_s = 0
    for start in range(0, len(labels), batch_size):
        sl = slice(start, start + batch_size)
        zt, zs = _forward(heads, global_feat[sl], grid_mean[sl])
        y = labels[sl]
        for k, v in sd_losses(zt, zs, y, loss_config).items():
            sums[k] += float(v) * len(y)
        correct_t += int((zt.argmax(1) == y).sum())
        correct_s += int((zs.argmax(1) == y).sum())
    n = len(labels)
    return {
        **{k: v / n for k, v in sums.items()},
        "top1_teacher": 100.0 * correct_t / n,
        "top1_student": 100.0 * correct_s / n,
    }


def plot_history(history: list[dict], path: Path) -> None:
    """Loss curves (train / val) and top-1 curves of both heads, as a PNG (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for part, style in (("train", "-"), ("val", "--")):
        if history[0].get(part) is None:
            continue
        for key in ("total", "teacher_ce", "student"):
            ax_loss.plot(epochs, [h[part][key] for h in history], style, label=f"{part} {key}")
        for key in ("top1_teacher", "top1_student"):
            ax_acc.plot(epochs, [h[part][key] for h in history], style, label=f"{part} {key}")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="SD-CAM losses (eqs. 4, 6)")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="classification")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _test_dataset(config: TrainConfig) -> Dataset | None:
    if config.test_split is None:
        return None
    if config.dataset == "csv":
        return None
    if config.dataset == "folder":
        if not (Path(config.root) / config.test_split).is_dir():
            return None
    elif config.dataset != "cub":
        base = (
            Path(config.metadata) if config.metadata is not None else Path(config.root) / "metadata"
        )
        if not (base / config.test_split).is_dir():
            return None
    return load_dataset(
        config.dataset,
        config.root,
        config.test_split,
        metadata=config.metadata,
        limit=config.limit,
    )


def _fit(
    heads: Heads,
    train_set: FeatureSet,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
) -> list[dict]:
    """The training loop; returns the per-epoch history."""
    device = torch.device(config.device)
    loss_config = SdLossConfig(config.alpha, config.temperature)
    g_all = train_set.global_feat.to(device)
    m_all = train_set.grid_mean.to(device)
    y_all = train_set.labels.to(device)
    val_sel = torch.from_numpy(val_idx).to(device)
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(
        heads.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    num_views = g_all.shape[1]
    steps = math.ceil(len(train_idx) / config.batch_size)
    history: list[dict] = []
    bar = tqdm(range(1, config.epochs + 1), desc="train heads", disable=not config.progress)
    for epoch in bar:
        lr = optimizer.param_groups[0]["lr"]
        heads.train()
        order = torch.from_numpy(rng.permutation(train_idx)).to(device)
        views = torch.from_numpy(rng.integers(0, num_views, size=len(order))).to(device)
        for step in range(steps):
            sl = slice(step * config.batch_size, (step + 1) * config.batch_size)
            idx, view = order[sl], views[sl]
            zt, zs = _forward(heads, g_all[idx, view], m_all[idx, view])
            loss = sd_losses(zt, zs, y_all[idx], loss_config)["total"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        train_sel = torch.from_numpy(train_idx).to(device)
        record = {
            "epoch": epoch,
            "lr": lr,
            "train": evaluate(
                heads, g_all[train_sel, 0], m_all[train_sel, 0], y_all[train_sel], loss_config
            ),
            "val": evaluate(
                heads, g_all[val_sel, 0], m_all[val_sel, 0], y_all[val_sel], loss_config
            )
            if len(val_idx)
            else None,
        }
        history.append(record)
        shown = record["val"] or record["train"]
        bar.set_postfix(loss=f"{record['train']['total']:.3f}", top1=f"{shown['top1_teacher']:.1f}")
        if config.checkpoint_every and epoch % config.checkpoint_every == 0:
            (Path(config.out) / "checkpoints").mkdir(parents=True, exist_ok=True)
            save_heads(
                heads.cpu(),
                Path(config.out) / "checkpoints" / f"epoch_{epoch:03d}.pt",
                extra={"epoch": epoch},
            )
            heads.to(device)
    return history


def train(config: TrainConfig) -> TrainResult:
    """Cache features, train both heads, write ``heads.pt``, ``metrics.json``, ``loss.png``."""
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, start)
    finally:
        torch.set_num_threads(previous_threads)


def _train(config: TrainConfig, start: float) -> TrainResult:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    backbone_config = config.backbone_config()
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_root() / "features"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "not a folder" if isinstance(exc, FileExistsError) else exc.strerror or exc
        raise OutputError(
            f"{printable(cache)}: the feature cache (--cache-dir) cannot be used: {reason}"
        ) from None
    built: list[torch.nn.Module] = []

    def build() -> torch.nn.Module:
        if not built:
            built.append(build_backbone(backbone_config, config.weights))
        return built[0]

    train_data = load_dataset(
        config.dataset, config.root, "train", metadata=config.metadata, limit=config.limit
    )
    test_data = _test_dataset(config)
    feature_args = {
        "batch_size": config.feature_batch_size,
        "workers": config.workers,
        "device": config.device,
        "progress": config.progress,
        "max_bad_share": config.max_bad_share,
    }
    views = ViewSpec(config.augment, config.crop_views, config.seed)
    train_set = cached_features(
        train_data, backbone_config, config.weights, views, cache, build, **feature_args
    )
    test_set = (
        cached_features(
            test_data,
            backbone_config,
            config.weights,
            ViewSpec("none"),
            cache,
            build,
            **feature_args,
        )
        if test_data is not None
        else None
    )
    features_s = time.perf_counter() - start

    train_idx, val_idx = stratified_split(
        train_set.labels.numpy(), config.val_fraction, config.seed
    )
    heads_config = HeadsConfig(
        backbone=backbone_config.name,
        input_size=backbone_config.input_size,
        grid_layer=backbone_config.grid_layer,
        affinity_layer=backbone_config.affinity_layer,
        grid_dim=train_set.grid_mean.shape[-1],
        global_dim=train_set.global_feat.shape[-1],
        num_classes=train_data.num_classes,
        class_ids=list(train_data.class_ids),
        class_names=list(train_data.class_names),
        teacher_hidden=config.resolved_teacher_hidden,
        teacher_input="concat",
    )
    torch.manual_seed(config.seed)  # here, so that a cache hit (no backbone built) changes nothing
    heads = Heads(heads_config).to(config.device)
    fit_start = time.perf_counter()
    history = _fit(heads, train_set, train_idx, val_idx, config)
    train_s = time.perf_counter() - fit_start

    loss_config = SdLossConfig(config.alpha, config.temperature)
    final_val = history[-1]["val"]
    final_test = None
    if test_set is not None:
        device = torch.device(config.device)
        final_test = evaluate(
            heads,
            test_set.global_feat[:, 0].to(device),
            test_set.grid_mean[:, 0].to(device),
            test_set.labels.to(device),
            loss_config,
        )
    top1 = {
        part: None
        if res is None
        else {"teacher": res["top1_teacher"], "student": res["top1_student"]}
        for part, res in (("val", final_val), ("test", final_test))
    }
    sizes = {"train": len(train_idx), "val": len(val_idx), "test": len(test_set or [])}
    dataset_info = {
        "kind": train_data.kind,
        "root": str(train_data.root),
        "num_classes": train_data.num_classes,
        "test_split": config.test_split if test_set is not None else None,
    }
    summary = {"top1": top1, "num_images": sizes}
    skipped = {"train": train_set.skipped, "test": test_set.skipped if test_set else []}
    summary["skipped_images"] = {
        part: [{"image_id": i, "error": e} for i, e in items] for part, items in skipped.items()
    }
    training_info = {
        k: v
        for k, v in config.to_dict().items()
        if k
        in (
            "epochs",
            "lr",
            "batch_size",
            "weight_decay",
            "alpha",
            "temperature",
            "seed",
            "val_fraction",
            "augment",
            "crop_views",
        )
    } | {"teacher_hidden": config.resolved_teacher_hidden}
    fg_config = config.resolved_foreground
    if fg_config is not None:
        heads = heads.cpu()
        foreground, summary["foreground"] = _self_train_foreground(
            config, fg_config, heads, train_data, train_set.skipped, build, cache, out
        )
        heads = with_foreground(heads, foreground)
    heads_path = out / "heads.pt"
    save_heads(
        heads.cpu(),
        heads_path,
        extra={
            "metrics": summary,
            "dataset": dataset_info,
            "training": training_info,
            "settings": config.bundle_settings(class_maps=bool(heads.config.foreground_classes)),
        },
    )
    plot_path = out / "loss.png"
    plot_history(history, plot_path)
    metrics = {
        **summary,
        "dataset": dataset_info,
        "backbone": dataclasses.asdict(backbone_config),
        "config": config.to_dict(),
        "final": {"val": final_val, "test": final_test},
        "history": history,
        "cache": {
            "train": str(train_set.path),
            "test": None if test_set is None else str(test_set.path),
            "backbone_built": bool(built),
        },
        "timing_s": {
            "features": features_s,
            "training": train_s,
            "total": time.perf_counter() - start,
        },
    }
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2))
    return TrainResult(out, heads_path, metrics_path, plot_path, metrics)


def _self_train_foreground(
    config: TrainConfig,
    fg_config: Any,
    heads: Heads,
    train_data: Any,
    skipped: list,
    build: Callable[[], torch.nn.Module],
    cache: Path,
    out: Path,
) -> tuple[torch.nn.Module, dict]:
    """Round 0 and the self-training rounds of the foreground head (:mod:`.localizer`), then its
    class rounds when every class has ``class_min_images`` train images; each fit saved as
    ``OUT/foreground-round{r}.pt`` / ``OUT/foreground-class-round{r}.pt``; the head and its
    stats."""
    start = time.perf_counter()
    backbone_config = config.backbone_config()
    bad = {image_id for image_id, _ in skipped}
    records = [r for r in train_data.records if r.image_id not in bad]
    if len(records) > fg_config.max_images:
        keep = np.linspace(0, len(records) - 1, fg_config.max_images).round().astype(int)
        records = [records[i] for i in keep]
    pipeline = preset("default")
    class_index = {class_id: i for i, class_id in enumerate(heads.config.class_ids)}
    classes = np.array([class_index[r.class_id] for r in records], np.int64)
    counts = np.bincount(classes, minlength=len(class_index))
    class_maps = fg_config.class_rounds > 0 and int(counts.min()) >= fg_config.class_min_images
    head = empty_head(
        build(), backbone_config, fg_config.layers, len(class_index) if class_maps else 0
    )
    data = train_split_maps(
        dataclasses.replace(train_data, records=records),
        build,
        backbone_config,
        config.weights,
        heads,
        head,
        fg_config,
        cache,
        pipeline.work_size,
        batch_size=config.feature_batch_size,
        progress=config.progress,
    )

    def checkpoint(name: str, fitted: torch.nn.Module) -> None:
        path = out / f"foreground-{name}.pt"
        write_atomic(path, lambda tmp: torch.save(fitted.state_dict(), tmp))

    # The rounds label the map the bundle's ARM will refine: the class map blended with the
    # class CAM (class_foreground_cam), or the class-agnostic one (foreground_cam).
    arm_input = config.bundle_settings(class_maps=class_maps).get("arm_input")
    cam = dataclasses.replace(pipeline.cam, size=pipeline.work_size)
    own_cams = None
    if arm_input in ("foreground_cam", "class_foreground_cam"):
        own_cams = class_cams(heads, data.grid, classes, cam)
    history = self_train(
        head,
        data,
        fg_config,
        pipeline.arm,
        classes=classes if class_maps else None,
        cams=own_cams if arm_input == "foreground_cam" else None,
        class_cams=own_cams if arm_input == "class_foreground_cam" else None,
        threads=config.threads,
        checkpoint=checkpoint,
        progress=config.progress,
    )
    return head, {
        **{
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(fg_config).items()
        },
        "layers": list(head.layers),
        "grid": head.grid,
        "images": len(records),
        "class_maps": class_maps,
        "class_rounds_on_cam_blend": class_maps and arm_input == "class_foreground_cam",
        "rounds_on_cam_blend": arm_input == "foreground_cam",
        "fewest_images_per_class": int(counts.min()),
        "rounds_history": history,
        "seconds": time.perf_counter() - start,
    }


def train_and_export(
    dataset: str,
    root: str | Path,
    out: str | Path,
    *,
    bundle: str | Path | None = None,
    affinity_backbone: str | None = None,
    affinity_input_size: int | None = None,
    notify: Callable[[str], None] | None = None,
    **options: Any,
) -> TrainResult:
    """``lcar-deploy train``: :func:`train` with ``TrainConfig(dataset, root, out, **options)``,
    then, with ``bundle``, a bundle of the trained heads there (the folder is checked before
    training starts), its graph cut on ``affinity_backbone`` when given (training does not use
    it: :func:`~lcar_deploy.export.exporter.export_bundle`). ``notify`` is told of skipped
    images, the top-1 and the bundle."""
    from ..export.exporter import check_affinity_backbone, check_bundle_target, export_bundle

    say = notify or (lambda _: None)
    config = TrainConfig(dataset=dataset, root=root, out=out, **options)
    if affinity_backbone is not None and bundle is None:
        raise SettingError("affinity_backbone", "is a property of the bundle; give --bundle too")
    other = check_affinity_backbone(affinity_backbone, affinity_input_size)
    if other is not None:
        build_backbone(other)  # a missing weights package fails now, not after the training
    if bundle is not None:
        check_bundle_target(Path(bundle), "--bundle")
    result = train(config)
    for part, skipped in result.metrics["skipped_images"].items():
        if skipped:
            say(
                f"skipped {len(skipped)} {part} images that cannot be decoded, e.g. "
                f"{skipped[0]['error']}; all are listed in {result.metrics_path}"
            )
    say(f"heads: {result.heads_path}; top-1 {json.dumps(result.metrics['top1'])}")
    if bundle is not None:
        with contextlib.redirect_stdout(io.StringIO()):
            export_bundle(
                Path(bundle),
                backbone=config.backbone,
                weights=str(config.weights) if config.weights else None,
                heads_path=str(result.heads_path),
                affinity_backbone=affinity_backbone,
                affinity_input_size=affinity_input_size,
            )
        say(f"bundle: {bundle}")
    return result
