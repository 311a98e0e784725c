"""``lcar-deploy calibrate``: choose the box threshold and SGRM's label band on held-out boxes.

wsolevaluation's rule (Choe et al. 2020): a WSOL method's hyperparameters, the score-map
threshold first, are chosen on a few images *with* boxes that are not the test set (their
``train-fullsup`` split), never on the test set. Here:

- the backbone, CAM, graph cut and ARM run once per image (with the GT class: GT-known);
- ``box_threshold``: each map method's score map is swept over the thresholds as ``eval``
  does (:class:`~lcar_deploy.metrics.BoxAccuracyAccumulator`); the threshold with the best
  GT-known accuracy, on the curve smoothed over a few neighbouring thresholds
  (:attr:`CalibrationConfig.smooth`), is chosen for ``method`` (the one the bundle's users
  run; every map method's best is reported);
- SGRM's label band: SGRM runs on the ARM maps once per candidate band of
  :class:`CalibrationConfig` (``gamma_l1 = gamma_l2 = low``, ``gamma_h1 = gamma_h2 = high``),
  the bundle's own band among them; the band with the best GT-known accuracy of the LCAR box
  is chosen (ties: the one met first).

The chosen values go into a copy of the bundle (its files copied, the manifest's ``settings``
changed, a ``calibration`` entry added); the bundle itself is never changed. Run on the test
images, the same function gives the test-set optimum to compare with (docs/experiments/2026-12-own-datasets.md).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .boxes import component_boxes, mask_to_box
from .bundle import MANIFEST, Bundle
from .config import PipelineConfig, check_evaluable, settings_of
from .datasets import Dataset, Record
from .errors import DatasetError, SettingError
from .image_io import ImageError, load_image, resize_rgb
from .io import check_folder, json_text, replace_folder, write_atomic
from .metrics import BoxAccuracyAccumulator
from .names import CALIBRATE_METHODS
from .pipeline import Localizer
from .stages.sgrm import sgrm_batched

REPORT = "calibration.json"
OUTPUT_KIND = "calibrate"
"""The kind of folder ``calibrate`` writes: it replaces only a folder of that kind
(:func:`lcar_deploy.io.replace_folder`), never the user's bundle or another folder."""


@dataclass(frozen=True)
class CalibrationConfig:
    """What ``calibrate`` tries.

    bands: SGRM label bands ``(low, high)`` to try, ``0 <= low < high <= 1``; the bundle's own
        band is tried too. They span the two presets' bands (``classifier`` 0.25 / 0.5,
        ``default`` 0.6 / 0.75) and the space between and above.
    min_images: fewest images with a box to calibrate on (fewer is an error): a threshold
        chosen on a handful of images is noise.
    smooth: half-width, in threshold steps (0.01), of the moving average the accuracy curve is
        smoothed with before its best threshold is taken (0: the plain argmax, wsolevaluation's
        rule). On 100 images one image is a point of accuracy, and the curve's argmax jumps
        between neighbouring peaks; the smoothed curve's best is the middle of a good plateau
        (docs/experiments/2026-12-own-datasets.md, "Calibration").
    batch_size: images per backbone / SGRM batch.
    """

    bands: tuple[tuple[float, float], ...] = (
        (0.25, 0.5),
        (0.4, 0.6),
        (0.5, 0.7),
        (0.6, 0.75),
        (0.7, 0.85),
    )
    min_images: int = 10
    smooth: int = 2
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not self.bands:
            raise SettingError("bands", "give at least one (low, high) band")
        for band in self.bands:
            if len(band) != 2 or not 0.0 <= band[0] < band[1] <= 1.0:
                raise SettingError("bands", f"{band} is not (low, high) with 0 <= low < high <= 1")
        if self.smooth < 0:
            raise SettingError("smooth", f"must be >= 0, got {self.smooth}")
        if self.min_images < 1:
            raise SettingError("min_images", f"must be >= 1, got {self.min_images}")
        if self.batch_size < 1:
            raise SettingError("batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass
class Calibration:
    """The outcome of :func:`calibrate`.

    images: images with a box used; skipped: (image id, reason) of those left out (no box,
    unreadable). thresholds / curves: per map method, the best threshold and the GT-known
    accuracy (percent) at every threshold of ``grid``. bands: per band tried, GT-known of the
    LCAR box (percent). box_threshold / band: the values chosen (``method``'s threshold, best
    band); before: the bundle's own values and their accuracies on these images.
    """

    method: str
    images: int
    grid: list[float]
    thresholds: dict[str, float]
    curves: dict[str, list[float]]
    bands: list[dict[str, float]]
    box_threshold: float
    band: tuple[float, float]
    before: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def accuracy_at(self, method: str, threshold: float) -> float:
        """GT-known (percent) of ``method`` at the grid threshold nearest ``threshold``."""
        index = int(np.argmin(np.abs(np.asarray(self.grid) - threshold)))
        return self.curves[method][index]

    def band_accuracy(self, band: tuple[float, float]) -> float | None:
        for entry in self.bands:
            if (entry["low"], entry["high"]) == tuple(band):
                return entry["gt_known"]
        return None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["band"] = list(self.band)
        data["skipped"] = [{"image_id": i, "reason": r} for i, r in self.skipped]
        data["chosen"] = {
            "box_threshold": self.box_threshold,
            "gt_known": self.accuracy_at(self.method, self.box_threshold),
            "band": list(self.band),
            "lcar_gt_known": self.band_accuracy(self.band),
        }
        return data


def best_index(curve: Sequence[float], smooth: int) -> int:
    """Index of the best value of ``curve`` after a moving average of half-width ``smooth``
    (edges padded with their own value); the lowest index among equals."""
    values = np.asarray(curve, dtype=np.float64)
    if smooth:
        padded = np.pad(values, smooth, mode="edge")
        values = np.convolve(padded, np.ones(2 * smooth + 1) / (2 * smooth + 1), mode="valid")
    return int(np.argmax(values.round(9)))


def _band_config(config: PipelineConfig, band: tuple[float, float]) -> PipelineConfig:
    low, high = band
    sgrm = replace(config.sgrm, gamma_l1=low, gamma_l2=low, gamma_h1=high, gamma_h2=high)
    return replace(config, sgrm=sgrm)


def _own_band(config: PipelineConfig) -> tuple[float, float]:
    return config.sgrm.gamma_l1, config.sgrm.gamma_h1


def calibrate(
    localizer: Localizer,
    dataset: Dataset,
    *,
    method: str = "arm",
    gt_class: bool = True,
    config: CalibrationConfig | None = None,
    progress: bool = True,
) -> Calibration:
    """Choose ``box_threshold`` (for ``method``) and SGRM's band on ``dataset``'s images with
    boxes (module docstring). ``gt_class``: use each image's GT class for the maps (the
    dataset's class ids are the bundle's). Raises :class:`DatasetError` with fewer than
    ``config.min_images`` usable images, :class:`SettingError` for a method that is not a
    map method or a config ``eval`` could not score."""
    from tqdm import tqdm

    cfg = config or CalibrationConfig()
    if method not in CALIBRATE_METHODS:
        raise SettingError(
            "method", f"calibrate chooses a map method's threshold: {', '.join(CALIBRATE_METHODS)}"
        )
    base = localizer.config
    check_evaluable(base)
    maps_methods = tuple(m for m in CALIBRATE_METHODS if m != "cam" or localizer.bundle.has_heads)
    if method not in maps_methods:
        raise SettingError("method", f"'{method}' needs a bundle with heads")
    own = _own_band(base)
    bands = [own, *(b for b in cfg.bands if tuple(b) != own)]
    sweeps = {m: BoxAccuracyAccumulator() for m in maps_methods}
    band_accs = {b: BoxAccuracyAccumulator() for b in bands}
    skipped: list[tuple[str, str]] = []
    usable: list[Record] = []
    for record in dataset.records:
        if len(record.boxes):
            usable.append(record)
        else:
            skipped.append((record.image_id, "no box"))
    start = time.perf_counter()
    work = base.work_size
    bar = tqdm(total=len(usable), unit="img", desc="calibrate", disable=not progress)
    for i in range(0, len(usable), cfg.batch_size):
        images, gts, ids = [], [], []
        for record in usable[i : i + cfg.batch_size]:
            try:
                image = load_image(record.path)
                gts.append(record.scaled_boxes(work, record.size or image.original_size))
            except (ImageError, DatasetError) as exc:
                skipped.append((record.image_id, str(exc)))
                continue
            images.append(image.rgb)
            ids.append(record.class_id if gt_class else None)
        bar.update(len(usable[i : i + cfg.batch_size]))
        if not images:
            continue
        results = localizer.run_methods(images, ids, maps_methods)
        for m in maps_methods:
            for loc, gt in zip(results[m], gts, strict=True):
                sweeps[m].add_scoremap(loc.map, gt)
        arm_maps = np.stack([loc.map for loc in results["arm"]]).astype(np.float32)
        rgb = np.stack([resize_rgb(im, work) for im in images]).astype(np.float32) / 255.0
        # SGRM's semantic channels read the backbone's affinity features (one more backbone run)
        affinity = localizer.backbone_outputs(images)["affinity"] if base.sgrm.features else None
        for band in bands:
            sgrm_cfg = _band_config(base, band).sgrm
            masks = sgrm_batched(
                rgb,
                arm_maps,
                sgrm_cfg,
                device=base.sgrm_device,
                seeds=[base.sgrm_seed] * len(images),
                affinity=affinity,
            )
            for result, gt in zip(masks, gts, strict=True):
                box = mask_to_box(result.mask, sgrm_cfg.box_mode)
                boxes = [box, *component_boxes(result.mask)] if box is not None else [(0, 0, 0, 0)]
                band_accs[band].add_mask_box(gt, boxes=np.array(boxes))
    bar.close()
    count = sweeps[method].num_images
    if count < cfg.min_images:
        left_out = (
            f" ({len(skipped)} left out, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        )
        raise DatasetError(
            f"{dataset.metadata}: {count} images with a box could be used, calibrate needs at "
            f"least {cfg.min_images}{left_out}"
        )
    grid = [round(float(t), 4) for t in sweeps[method].cam_thresholds]
    curves = {m: acc.accuracy_curve(50).round(4).tolist() for m, acc in sweeps.items()}
    thresholds = {m: grid[best_index(curves[m], cfg.smooth)] for m in sweeps}
    band_rows = [
        {"low": b[0], "high": b[1], "gt_known": round(acc.gt_known(), 4)}
        for b, acc in band_accs.items()
    ]
    best_band = max(bands, key=lambda b: (band_accs[b].gt_known(), -bands.index(b)))
    calibration = Calibration(
        method=method,
        images=count,
        grid=grid,
        thresholds=thresholds,
        curves=curves,
        bands=band_rows,
        box_threshold=thresholds[method],
        band=best_band,
        before={"box_threshold": base.box_threshold, "band": list(own)},
        skipped=skipped,
        seconds=round(time.perf_counter() - start, 2),
    )
    calibration.before["gt_known"] = calibration.accuracy_at(method, base.box_threshold)
    calibration.before["lcar_gt_known"] = calibration.band_accuracy(own)
    return calibration


def calibrated_config(config: PipelineConfig, calibration: Calibration) -> PipelineConfig:
    """``config`` with the calibrated box threshold and band; a fusion that read its ARM
    foreground at the box threshold keeps reading it at the one calibrated on, so the maps stay
    those the threshold was chosen on."""
    fusion = config.fusion
    if fusion.weight > 0 and not fusion.arm_threshold:
        fusion = replace(fusion, arm_threshold=config.box_threshold)
    return replace(
        _band_config(config, calibration.band),
        box_threshold=calibration.box_threshold,
        fusion=fusion,
    )


def write_calibrated_bundle(
    bundle: Bundle, config: PipelineConfig, calibration: Calibration, out: Path, source: str
) -> Path:
    """A copy of ``bundle`` in ``out`` whose settings are ``config`` calibrated; its manifest
    records the calibration (``source``: what it was calibrated on). ``out`` appears whole or
    not at all; it may not be the bundle's own folder, and must be absent, empty or an earlier
    calibrated copy (:func:`check_output`)."""
    out = Path(out)
    check_output(out, bundle)
    manifest = json.loads(json.dumps(bundle.manifest))
    manifest["settings"] = settings_of(calibrated_config(config, calibration))
    manifest["calibration"] = {
        "source": source,
        "images": calibration.images,
        "method": calibration.method,
        "box_threshold": calibration.box_threshold,
        "band": list(calibration.band),
        "gt_known": calibration.to_dict()["chosen"],
        "before": calibration.before,
    }

    def build(tmp: Path) -> None:
        tmp.mkdir()
        for name in bundle.manifest["files"]:
            shutil.copy2(bundle.path / name, tmp / name)
        (tmp / MANIFEST).write_text(json_text(manifest, indent=2))
        (tmp / REPORT).write_text(json_text(calibration.to_dict(), indent=2))

    replace_folder(out, build, OUTPUT_KIND)
    Bundle.load(out)  # the copy loads and verifies
    return out


def check_output(out: Path, bundle: Bundle) -> None:
    """SettingError when ``out`` is the bundle itself; OutputError unless ``out`` is absent,
    empty or a copy calibrate wrote (holding only its files): checked before calibrating."""
    if out.resolve() == bundle.path.resolve():
        raise SettingError("out", f"{out} is the bundle itself; calibrate writes a copy")
    check_folder(out, OUTPUT_KIND, whole=True)


def report_lines(calibration: Calibration) -> list[str]:
    """The calibration in a few lines, for the terminal."""
    chosen = calibration.to_dict()["chosen"]
    before = calibration.before
    lines = [
        f"calibrated on {calibration.images} images with boxes ({len(calibration.skipped)} left out)",
        f"box_threshold ({calibration.method}): {before['box_threshold']:.2f} -> "
        f"{calibration.box_threshold:.2f}, GT-known {before['gt_known']:.1f} -> {chosen['gt_known']:.1f}",
    ]
    for m, t in calibration.thresholds.items():
        if m != calibration.method:
            lines.append(f"  ({m} would take {t:.2f}: {calibration.accuracy_at(m, t):.1f})")
    lines.append(
        f"SGRM band: {before['band'][0]:.2f}/{before['band'][1]:.2f} -> "
        f"{calibration.band[0]:.2f}/{calibration.band[1]:.2f}, lcar GT-known "
        f"{before['lcar_gt_known']:.1f} -> {chosen['lcar_gt_known']:.1f}"
    )
    return lines


def save_report(calibration: Calibration, path: Path) -> None:
    text = json_text(calibration.to_dict(), indent=2)
    write_atomic(path, lambda tmp: tmp.write_text(text))


def run_calibration(
    dataset: Dataset,
    *,
    bundle: str | Path | Bundle | None,
    out: str | Path,
    method: str = "arm",
    preset: str | None = None,
    settings: str | dict | None = None,
    device: str = "auto",
    threads: int | None = None,
    config: CalibrationConfig | None = None,
    progress: bool = True,
    notify: Callable[[str], None] | None = None,
) -> tuple[Calibration, Path]:
    """``lcar-deploy calibrate``: :func:`calibrate` on ``dataset`` with the bundle's localizer
    (``preset`` and ``settings`` as :meth:`Localizer.from_bundle`), then
    :func:`write_calibrated_bundle` into ``out``; returns the calibration and the new bundle."""
    from .evaluation import NAMED_CLASSES, uses_gt_class, with_bundle_classes
    from .pipeline import LocalizerSpec

    spec = LocalizerSpec.from_bundle(
        bundle, method="lcar", preset=preset, settings=settings, device=device, notify=notify
    )
    check_output(Path(out), spec.bundle)
    gt_class = uses_gt_class(spec.bundle, dataset)
    if gt_class and dataset.kind in NAMED_CLASSES:
        dataset = with_bundle_classes(dataset, spec.bundle)
    localizer = spec.build(threads)
    result = calibrate(
        localizer, dataset, method=method, gt_class=gt_class, config=config, progress=progress
    )
    source = f"{dataset.kind} {dataset.metadata} split {dataset.split}"
    written = write_calibrated_bundle(spec.bundle, spec.config, result, Path(out), source)
    return result, written


def band_values(text: Sequence[str]) -> tuple[tuple[float, float], ...]:
    """``["0.25/0.5", "0.6/0.75"]`` -> bands; SettingError naming a malformed one."""
    bands = []
    for item in text:
        try:
            low, high = (float(v) for v in item.split("/"))
        except ValueError:
            raise SettingError("bands", f"{item!r} is not LOW/HIGH, e.g. 0.25/0.5") from None
        bands.append((low, high))
    return tuple(bands)
