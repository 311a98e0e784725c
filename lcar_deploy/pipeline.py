"""One code path for every method: backbone -> CAM/seed -> graph cut -> ARM -> SGRM -> boxes.

``method`` says where to stop: ``cam`` (SD-CAM map), ``graphcut`` (eigenvector map, oriented
by the CAM seed), ``arm`` (refined map) or ``lcar`` (SGRM mask). Map methods give a score map,
and their box for users is taken at ``PipelineConfig.box_threshold``; ``eval`` sweeps the
threshold instead. All maps are at ``work_size`` (224, the evaluation size); boxes are mapped
back to the original image's pixels.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .boxes import (
    Box,
    box_scores,
    box_to_original,
    component_boxes,
    mask_to_box,
    mask_to_original,
    threshold_boxes,
)
from .bundle import MANIFEST, Bundle, OnnxRunner, load_bundle, select_providers
from .config import PipelineConfig, resolve_config
from .errors import BundleError, ImageError, LabelsError, SettingError, printable
from .image_io import LoadedImage, load_image, resize_rgb, to_chw_float
from .names import METHODS, STAGES, method_stages
from .stages.arm import orient, refine
from .stages.cam import cam_map, minmax_normalize, softmax, upsample
from .stages.fusion import fuse
from .stages.graph_cut import eigenvector_scoremap, second_eigenvector
from .stages.sgrm import sgrm_batched
from .threads import check_threads

# Axis of each bundle output that runs along the image width (None: not spatial).
WIDTH_AXIS = {
    "global": None,
    "logits": None,
    "cam_logits": None,
    "grid": 2,
    "affinity": 2,
    "cams": 3,
    "foreground": 2,
    "foreground_classes": 3,
}


@dataclass
class Localization:
    """Result for one image.

    class_index: bundle output index used for the map (None without heads); class_id /
        class_name / class_score: that class's dataset id, name and softmax probability.
    predicted_class_id: the classifier's top-1 class id (differs from class_id when the map's
        class was given, e.g. the GT class in evaluation).
    map: (work_size, work_size) float32 score map in [0, 1] of the method's last stage (for
        ``lcar`` the mask as 0/1).
    mask: (work_size, work_size) bool. box / boxes: inclusive ``[x0, y0, x1, y1]`` in work
        pixels of the main object and of every object kept (``PipelineConfig.boxes``); box
        None and boxes empty: no object (``no_object``). box_score / box_scores: their
        confidences in [0, 1] (:func:`lcar_deploy.boxes.box_scores`). timings_ms: per stage,
        this image's share of its batch.
    """

    class_index: int | None
    class_id: int | None
    class_name: str | None
    class_score: float | None
    map: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int] | None
    boxes: list[tuple[int, int, int, int]]
    timings_ms: dict[str, float]
    predicted_class_id: int | None = None
    sgrm_steps: int | None = None
    box_score: float | None = None
    box_scores: list[float] = field(default_factory=list)
    no_object: bool = False


@dataclass
class Result:
    """One image localized, in the image's own pixels.

    box: inclusive ``[x0, y0, x1, y1]`` of the main object (the largest one for map methods and
    SGRM's default box mode), or None when there is no object (``no_object``); score: its
    confidence in [0, 1]; boxes / box_scores: every object kept (``boxes`` setting: ``one``
    or ``all``), largest first, and their confidences; mask: (H, W) bool; class_id /
    class_name / class_score: the class whose map was used and its probability (None for a
    bundle without heads); image_size: (W, H); localization: the same result at work size
    (maps, per-stage timings).
    """

    box: list[int] | None
    boxes: list[list[int]]
    mask: np.ndarray
    class_id: int | None
    class_name: str | None
    score: float | None
    image_size: tuple[int, int]
    localization: Localization
    box_scores: list[float] = field(default_factory=list)
    class_score: float | None = None
    no_object: bool = False

    @classmethod
    def from_localization(
        cls, loc: Localization, work_size: int, image_size: tuple[int, int]
    ) -> Result:
        return cls(
            box=None if loc.box is None else box_to_original(loc.box, work_size, image_size),
            boxes=[box_to_original(b, work_size, image_size) for b in loc.boxes],
            mask=mask_to_original(loc.mask, image_size),
            class_id=loc.class_id,
            class_name=loc.class_name,
            score=loc.box_score,
            image_size=image_size,
            localization=loc,
            box_scores=list(loc.box_scores),
            class_score=loc.class_score,
            no_object=loc.no_object,
        )


@dataclass(frozen=True)
class BackboneRun:
    """The backbone stage of one batch (:meth:`Localizer.backbone_stage`).

    outputs: the bundle's outputs (flip merged); work_rgb: (B, work_size, work_size, 3) uint8
    images; seconds: the stage's time.
    """

    outputs: dict[str, np.ndarray]
    work_rgb: np.ndarray
    seconds: float


ImageInput = str | Path | np.ndarray
"""An image file, or an (H, W, 3) (or (H, W) grey) uint8 RGB array."""


def _as_image(image: ImageInput) -> LoadedImage:
    if isinstance(image, str | Path):
        return load_image(image)
    array = np.asarray(image)
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] != 3)
        or min(array.shape[:2]) < 1
    ):
        raise ImageError(
            f"image array must be (H, W, 3) or (H, W) uint8 RGB, got {array.dtype} {array.shape}"
        )
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    rgb = np.ascontiguousarray(array)
    return LoadedImage(rgb=rgb, original_size=(rgb.shape[1], rgb.shape[0]))


def _class_id(value: object, name: str) -> int | None:
    """``value`` as a dataset class id (None: the predicted class); TypeError naming ``name``
    for anything but an integer (a string \"3\" included)."""
    if value is None:
        return None
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    shown = printable(repr(value), 60)
    raise TypeError(
        f"{name} must be an integer class id or None, got {type(value).__name__} {shown}"
    )


def _class_ids(values: object, count: int) -> list[int | None]:
    """``values`` as one class id (or None) per image of ``count`` (None: all predicted)."""
    if values is None:
        return [None] * count
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
        raise TypeError(
            f"class_ids must be a list of class ids (or None), one per image, got "
            f"{type(values).__name__} {printable(repr(values), 60)}"
        )
    ids = [_class_id(value, f"class_ids[{i}]") for i, value in enumerate(values)]
    if len(ids) != count:
        raise LabelsError(
            f"class_ids gives {len(ids)} class ids for {count} images; give one per image "
            "(None: the predicted class)"
        )
    return ids


@dataclass(frozen=True)
class LocalizerSpec:
    """What a :class:`Localizer` is built from, checked, without its onnxruntime session.

    bundle: the loaded bundle (a worker loads it again from ``bundle.path``, which checks the
    files it sees); config: the resolved settings; device: onnxruntime device
    (``auto | cpu | cuda``). Creating one makes the checks Localizer makes before it builds its
    session, so a bad setting is refused before any worker starts or any image is read.
    """

    bundle: Bundle
    config: PipelineConfig
    device: str = "auto"

    def __post_init__(self) -> None:
        bundle, config = self.bundle, self.config
        if config.method == "cam" and not bundle.has_heads:
            raise SettingError("method", f"'cam' needs a bundle with heads; {bundle.path} has none")
        choice = config.arm_input
        if "foreground" in choice and "foreground" not in bundle.outputs:
            raise SettingError(
                "arm_input", f"'{choice}' needs a foreground head; {bundle.path} has none"
            )
        if choice.startswith("class_") and "foreground_classes" not in bundle.outputs:
            raise SettingError(
                "arm_input",
                f"'{choice}' needs a foreground head with class maps; {bundle.path}'s has none "
                "(train with more images per class, or use 'foreground_cam')",
            )
        if choice.endswith("cam") and not bundle.has_heads:
            raise SettingError(
                "arm_input", f"'{choice}' needs a bundle with heads; {bundle.path} has none"
            )
        select_providers(self.device)

    @property
    def arm_input(self) -> str:
        """The coarse map ARM refines, ``auto`` resolved: the foreground head's map when the
        bundle has one, else the CAM, else the graph cut (docs/method.md, section 4)."""
        choice = self.config.arm_input
        if choice != "auto":
            return choice
        if "foreground" in self.bundle.outputs:
            return "foreground"
        return "cam" if self.bundle.has_heads else "graphcut"

    @property
    def fuses(self) -> bool:
        """Whether ARM's map is fused with the graph cut (:mod:`.stages.fusion`): a fusion
        weight above 0 and a coarse map that is not the graph cut itself."""
        return self.config.fusion.weight > 0 and self.arm_input != "graphcut"

    @property
    def arm_uses_cut(self) -> bool:
        """Whether ``arm`` and ``lcar`` need the graph cut: as ARM's coarse map or to fuse."""
        return self.arm_input == "graphcut" or self.fuses

    @classmethod
    def from_bundle(
        cls,
        bundle: str | Path | Bundle | None = None,
        *,
        method: str | None = None,
        preset: str | None = None,
        settings: str | dict[str, Any] | None = None,
        device: str = "auto",
        arm_backend: str = "auto",
        boxes: str | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> LocalizerSpec:
        """The spec of :meth:`Localizer.from_bundle`'s localizer (same arguments but
        ``threads``): the bundle loaded and the settings resolved, nothing built yet."""
        loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, notify)
        run = {"method": method, "arm_backend": arm_backend}
        if boxes is not None:
            run["boxes"] = boxes
        if device == "cuda":
            run["sgrm_device"] = "cuda"
        try:
            config = resolve_config(loaded.settings, preset_name=preset, settings=settings, **run)
        except SettingError as exc:
            if exc.name == "bundle settings":
                raise BundleError(f"{loaded.path / MANIFEST}: bundle {exc.reason}") from None
            raise
        return cls(loaded, config, device)

    @classmethod
    def of(cls, localizer: Localizer) -> LocalizerSpec:
        """The spec of a built localizer; its workers use the device its session runs on."""
        device = "cuda" if "CUDAExecutionProvider" in localizer.providers else "cpu"
        return cls(localizer.bundle, localizer.config, device)

    def build(self, threads: int | None = None, *, reload: bool = False) -> Localizer:
        """The localizer, with its session (``threads`` CPU threads; None: onnxruntime's
        default). ``reload``: load the bundle again from its path (what a worker does)."""
        bundle = Bundle.load(self.bundle.path) if reload else self.bundle
        return Localizer(bundle, self.config, device=self.device, threads=threads)


class Localizer:
    """Runs a bundle and the stages on images.

    ``bundle``: a loaded :class:`Bundle`; ``config``: stage settings (defaults: the bundle's
    ``settings``); ``device``: onnxruntime device (``auto | cpu | cuda``); ``threads``: CPU
    threads for onnxruntime and the C++ ARM. :meth:`from_bundle` builds one from a path and
    settings, :meth:`localize` takes a file or an array and answers in its pixels.
    """

    def __init__(
        self,
        bundle: Bundle,
        config: PipelineConfig | None = None,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        self.bundle = bundle
        if config is None:
            try:
                config = PipelineConfig.from_settings(bundle.settings)
            except SettingError as exc:
                raise BundleError(f"{bundle.path / MANIFEST}: bundle {exc}") from None
        self.config = config
        spec = LocalizerSpec(bundle, config, device)
        self.arm_input = spec.arm_input
        self.fuses = spec.fuses
        self.arm_uses_cut = spec.arm_uses_cut
        self.threads = check_threads(threads)
        self.session: OnnxRunner = bundle.session(device=device, threads=threads)

    @classmethod
    def from_bundle(
        cls,
        bundle: str | Path | Bundle | None = None,
        *,
        method: str | None = None,
        preset: str | None = None,
        settings: str | dict[str, Any] | None = None,
        device: str = "auto",
        threads: int | None = None,
        arm_backend: str = "auto",
        boxes: str | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> Localizer:
        """A localizer for ``bundle`` (a folder, a loaded bundle, or None: the default bundle,
        exported on first use, ``notify`` told so); ``method``: the last stage, None for the
        bundle's default method (its ``settings.method``). ``preset`` replaces the bundle's settings
        by a named preset; ``settings`` (JSON text or an object) go on top
        (:func:`lcar_deploy.config.resolve_config`), then ``boxes`` (``one | all``, the
        ``boxes`` setting). Bad values raise before any image is read."""
        spec = LocalizerSpec.from_bundle(
            bundle,
            method=method,
            preset=preset,
            settings=settings,
            device=device,
            arm_backend=arm_backend,
            boxes=boxes,
            notify=notify,
        )
        return spec.build(threads)

    @property
    def providers(self) -> list[str]:
        return self.session.providers

    def localize(self, image: ImageInput, class_id: int | None = None) -> Result:
        """Localize one image: a file path or an RGB uint8 array. ``class_id``: the dataset
        class whose map to use (default: the predicted class)."""
        _class_id(class_id, "class_id")
        return self.localize_batch([image], None if class_id is None else [class_id])[0]

    def localize_batch(
        self, images: Sequence[ImageInput], class_ids: Sequence[int | None] | None = None
    ) -> list[Result]:
        """:meth:`localize` for several images in one batch (faster per image)."""
        ids = _class_ids(class_ids, len(images))
        for class_id in ids:
            if class_id is not None:
                self.bundle.class_index(class_id)
        loaded = [_as_image(image) for image in images]
        results = self.run([im.rgb for im in loaded], ids)
        work = self.config.work_size
        return [
            Result.from_localization(loc, work, im.original_size)
            for loc, im in zip(results, loaded, strict=True)
        ]

    def run(
        self, images: list[np.ndarray], class_ids: list[int | None] | None = None
    ) -> list[Localization]:
        """Localize a batch. images: list of (H, W, 3) uint8 RGB; class_ids: dataset class ids
        to use for the maps (GT-known), None entries for the predicted class."""
        return self.run_methods(images, class_ids, (self.config.method,))[self.config.method]

    def run_methods(
        self,
        images: list[np.ndarray],
        class_ids: list[int | None] | None = None,
        methods: tuple[str, ...] = METHODS,
    ) -> dict[str, list[Localization]]:
        """Every method in ``methods`` on the same batch, sharing the stages they have in common."""
        _check_methods(methods)
        ids = _class_ids(class_ids, len(images))
        return self.post_stages(self.backbone_stage(images), ids, methods)

    def backbone_stage(self, images: list[np.ndarray]) -> BackboneRun:
        """The first stage of :meth:`run_methods` on a batch of (H, W, 3) uint8 RGB images: the
        backbone (:meth:`backbone_outputs`) and the images at work size; :meth:`post_stages`
        does the rest (a pipelined engine runs the two on different threads)."""
        tick = time.perf_counter()
        if not images:
            return BackboneRun({}, np.zeros((0, 0, 0, 3), np.uint8), 0.0)
        out = self.backbone_outputs(images)
        work_rgb = np.stack([resize_rgb(im, self.config.work_size) for im in images])
        return BackboneRun(out, work_rgb, time.perf_counter() - tick)

    def post_stages(
        self,
        backbone: BackboneRun,
        class_ids: list[int | None] | None = None,
        methods: tuple[str, ...] = METHODS,
    ) -> dict[str, list[Localization]]:
        """:meth:`run_methods` after its :meth:`backbone_stage`: every stage from the CAM on."""
        _check_methods(methods)
        cfg = self.config
        n = len(backbone.work_rgb)
        if n == 0:
            return {m: [] for m in methods}
        class_ids = class_ids or [None] * n
        times = dict.fromkeys(STAGES, 0.0)
        work = cfg.work_size
        out, work_rgb = backbone.outputs, backbone.work_rgb
        times["backbone"] = backbone.seconds

        tick = time.perf_counter()
        classes, seeds, cam_maps = self._cam_stage(out, class_ids)
        times["cam"] = time.perf_counter() - tick

        deepest = max(METHODS.index(m) for m in methods)
        maps: dict[str, np.ndarray] = {}
        if cam_maps is not None:
            maps["cam"] = cam_maps
        arm_input = self.arm_input
        arm_uses_cut = self.arm_uses_cut
        need_cut = ("graphcut" in methods) or (deepest >= 2 and arm_uses_cut)
        cut_seeds = seeds if cfg.graph_cut.orient == "cam" else None
        e_low = e_full = None
        if need_cut:
            tick = time.perf_counter()
            e_low = np.stack(
                [second_eigenvector(a, cfg.graph_cut) for a in out["affinity"]]
            ).astype(np.float32)
            if "graphcut" in methods or self.fuses:
                e_full = eigen_scoremaps(e_low, work)
            if "graphcut" in methods:
                maps["graphcut"] = e_full if cut_seeds is None else orient(e_full, cut_seeds)
            times["graph_cut"] = time.perf_counter() - tick

        if deepest >= 2:
            tick = time.perf_counter()
            coarse = coarse_map(arm_input, out, [c[0] for c in classes], cam_maps, e_low)
            chw = np.ascontiguousarray(work_rgb.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
            maps["arm"] = refine(
                coarse,
                chw,
                cfg.arm,
                backend=cfg.arm_backend,
                seed=cut_seeds if arm_input == "graphcut" else None,
                num_threads=self.threads,
            )
            if self.fuses:
                maps["arm"] = fuse(maps["arm"], e_full, cfg.fusion, cfg.box_threshold)
            times["arm"] = time.perf_counter() - tick

        sgrm_results = None
        if deepest >= 3:
            tick = time.perf_counter()
            sgrm_results = sgrm_batched(
                work_rgb.astype(np.float32) / 255.0,
                np.asarray(maps["arm"], dtype=np.float32),
                cfg.sgrm,
                device=cfg.sgrm_device,
                seeds=[cfg.sgrm_seed] * n,
                affinity=out["affinity"],
            )
            times["sgrm"] = time.perf_counter() - tick

        results: dict[str, list[Localization]] = {}
        for method in methods:
            timings = {s: 1000.0 * times[s] / n for s in method_stages(method, arm_uses_cut)}
            per_image = []
            for i in range(n):
                if method == "lcar":
                    mask = sgrm_results[i].mask
                    score_map = mask.astype(np.float32)
                    confidence = np.asarray(maps["arm"][i], dtype=np.float32)
                    box = mask_to_box(mask, cfg.sgrm.box_mode)
                    steps = sgrm_results[i].steps
                else:
                    if method not in maps:
                        raise ValueError(f"method {method!r} needs a bundle with heads")
                    score_map = np.asarray(maps[method][i], dtype=np.float32)
                    confidence = score_map
                    box, _, mask = threshold_boxes(score_map, cfg.box_threshold)
                    steps = None
                box = None if box is None else tuple(int(v) for v in box)
                kept = objects(confidence, mask, box, cfg)
                per_image.append(
                    Localization(
                        *classes[i][:4],
                        predicted_class_id=classes[i][4],
                        map=score_map,
                        mask=mask,
                        box=kept[0][0] if kept else None,
                        boxes=[b for b, _ in kept],
                        timings_ms=timings,
                        sgrm_steps=steps,
                        box_score=kept[0][1] if kept else None,
                        box_scores=[s for _, s in kept],
                        no_object=not kept,
                    )
                )
            results[method] = per_image
        return results

    def backbone_outputs(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The bundle's outputs for a batch of (H, W, 3) uint8 RGB images, averaged with the
        mirrored run's when ``flip`` is on (what every stage reads)."""
        size = self.bundle.input_size
        net_in = np.stack([to_chw_float(resize_rgb(im, size)) for im in images])
        out = self.session.run(net_in)
        if self.config.flip:
            # A second run of B rather than one of 2B: the same peak memory as without flip.
            out = merge_flipped(out, self.session.run(np.ascontiguousarray(net_in[..., ::-1])))
        return out

    def _cam_stage(
        self, out: dict[str, np.ndarray], class_ids: list[int | None]
    ) -> tuple[list[tuple], np.ndarray | None, np.ndarray | None]:
        """Per image (class_index, class_id, class_name, score, predicted_class_id), seeds
        (B, H, W), maps (B, H, W)."""
        n = len(class_ids)
        if not self.bundle.has_heads:
            return [(None, None, None, None, None)] * n, None, None
        ids, names = self.bundle.class_ids, self.bundle.class_names
        cam_cfg = replace(self.config.cam, size=self.config.work_size)
        classes, seeds, maps = [], [], []
        for i in range(n):
            gt_index = None if class_ids[i] is None else self.bundle.class_index(class_ids[i])
            result = cam_map(out["cams"][i], out["logits"][i], cam_cfg, gt_index)
            index = int(result.classes[np.argmax(result.weights)])
            probs = softmax(out["logits"][i])
            predicted = ids[int(np.argmax(out["logits"][i]))]
            classes.append((index, ids[index], names[index], float(probs[index]), predicted))
            seeds.append(result.seed)
            maps.append(result.map.astype(np.float32))
        return classes, np.stack(seeds), np.stack(maps)


def _check_methods(methods: Sequence[str]) -> None:
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")


def objects(
    confidence: np.ndarray, mask: np.ndarray, main: Box | None, config: PipelineConfig
) -> list[tuple[Box, float]]:
    """The (box, score) of every object of one image, main object first.

    Scores come from :func:`lcar_deploy.boxes.box_scores` on the ``confidence`` map (the map
    method's own map; ARM's for ``lcar``) and ``mask``; a box is an object when its score is
    at least ``config.min_box_score``. ``config.boxes`` ``one``: ``main``, the method's box
    (the one the evaluation scores), alone, if it is an object; ``all``: the box of every
    8-connected region of the mask that is an object, largest first. Empty: no object.
    """
    if main is None:
        return []
    candidates = [main] if config.boxes == "one" else component_boxes(mask)
    scores = box_scores(confidence, mask, candidates)
    return [
        (box, score)
        for box, score in zip(candidates, scores, strict=True)
        if score >= config.min_box_score
    ]


def merge_flipped(
    original: dict[str, np.ndarray], mirrored: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Average a run on B images with the run on the same B images mirrored left-right.

    Spatial outputs of the mirrored run are mirrored back along their width axis
    (:data:`WIDTH_AXIS`) first, so every cell is averaged with the same place of the image.
    """
    if original.keys() != mirrored.keys():
        raise ValueError("cannot merge flipped runs: the two runs have different outputs")
    merged = {}
    for name, value in original.items():
        if name not in WIDTH_AXIS:
            raise ValueError(f"cannot merge flipped runs: unknown output {name!r}")
        other = mirrored[name]
        if other.shape != value.shape:
            raise ValueError(f"output {name!r}: shapes {value.shape} and {other.shape} differ")
        axis = WIDTH_AXIS[name]
        if axis is not None:
            other = np.flip(other, axis=axis)
        merged[name] = ((value + other) / 2).astype(value.dtype)
    return merged


def coarse_map(
    arm_input: str,
    out: dict[str, np.ndarray],
    class_indices: list[int | None],
    cam_maps: np.ndarray | None,
    e_low: np.ndarray | None,
) -> np.ndarray:
    """The batch's coarse maps for ARM, by the resolved ``arm_input``; ``class_indices``: the
    bundle output index of each image's class (the ``class_`` inputs read that class's map)."""
    if arm_input == "graphcut":
        return e_low
    if arm_input == "cam":
        return cam_maps
    if arm_input.startswith("class_"):
        own = out["foreground_classes"]
        maps = np.stack([own[i, c] for i, c in enumerate(class_indices)])
    else:
        maps = out["foreground"]
    return blend_maps(maps, cam_maps) if arm_input.endswith("_cam") else maps


def blend_maps(coarse: np.ndarray, cam_maps: np.ndarray) -> np.ndarray:
    """Mean of each ``coarse`` (h, w) map, brought to the CAM's size, and its ``cam_maps``
    (H, W) map, each min-max scaled (``arm_input = foreground_cam``). (B, H, W) float32."""
    size = cam_maps.shape[1:]
    return np.stack(
        [
            0.5 * (minmax_normalize(upsample(c, size, "bilinear")) + minmax_normalize(m))
            for c, m in zip(coarse, cam_maps, strict=True)
        ]
    ).astype(np.float32)


def eigen_scoremaps(e_low: np.ndarray, size: int) -> np.ndarray:
    """(B, h, w) eigenvector maps -> (B, size, size) bilinear, min-max to [0, 1] per image."""
    return np.stack([eigenvector_scoremap(e, size) for e in e_low]).astype(np.float32)
