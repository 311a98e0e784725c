"""One code path for every method: backbone -> CAM/seed -> graph cut -> ARM -> SGRM -> boxes.

``method`` says where to stop: ``cam`` (SD-CAM map), ``graphcut`` (eigenvector map, oriented
by the CAM seed), ``arm`` (refined map) or ``lcar`` (SGRM mask). Map methods give a score map,
and their box for users is taken at ``PipelineConfig.box_threshold``; ``eval`` sweeps the
threshold instead. All maps are at ``work_size`` (224, the evaluation size); boxes are mapped
back to the original image's pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
from scipy import ndimage

from .bundle import Bundle, OnnxRunner
from .config_check import SettingError, check_fields, check_range, from_table, show
from .image_io import resize_rgb, to_chw_float
from .metrics import scoremap_to_boxes
from .stages.arm import ArmConfig, Backend, orient, refine
from .stages.cam import CamConfig, cam_map, softmax
from .stages.graph_cut import GraphCutConfig, eigenvector_scoremap, second_eigenvector
from .stages.sgrm import SgrmConfig, mask_to_box, sgrm_batched

Method = Literal["cam", "graphcut", "arm", "lcar"]
METHODS: tuple[str, ...] = get_args(Method)
STAGES = ("backbone", "cam", "graph_cut", "arm", "sgrm")
ArmInput = Literal["auto", "graphcut", "cam", "foreground"]
ARM_INPUTS: tuple[str, ...] = get_args(ArmInput)
SGRM_DEVICE_TYPES = ("cpu", "cuda")
AFA_DILATIONS = (1, 2, 4, 8, 12, 24)
# Axis of each bundle output that runs along the image width (None: not spatial).
WIDTH_AXIS = {
    "global": None,
    "logits": None,
    "cam_logits": None,
    "grid": 2,
    "affinity": 2,
    "cams": 3,
    "foreground": 2,
}


@dataclass(frozen=True)
class PipelineConfig:
    """How the stages are chained.

    method: last stage to run (``cam | graphcut | arm | lcar``).
    work_size: side of the maps, ARM and SGRM input (the evaluation size, 224), in
        [``min_work_size``, ``max_work_size``]; also the size of the CAM map (``cam.size``).
    arm_input: coarse map fed to ARM: ``graphcut`` (the paper's E_l, oriented by the CAM
        seed, eqs. 10-11), ``cam``, ``foreground`` (the bundle's foreground head) or ``auto``:
        foreground when the bundle has it, else cam, else graphcut (measured best in that
        order with the embedded backbone, docs/accuracy.md).
    box_threshold: threshold on a map method's [0, 1] score map for the user-facing box, in
        [0, 1).
    arm_backend: ``auto | cuda | cpp | reference``.
    sgrm_device: torch device of the SGRM nets (``cpu``, ``cuda`` or ``cuda:N``).
    sgrm_seed: seed of every image's Aggregation Net (reproducible masks).
    flip: test-time horizontal flip: the backbone also sees each image mirrored, and every
        output is averaged with the mirrored run's, mirrored back (:func:`merge_flipped`).
        Twice the backbone time; lcar GT-known 62.7 -> 66.7 on ILSVRC-mini, 77.5 -> 82.6 on
        CUB (docs/accuracy.md).
    """

    method: Method = "lcar"
    work_size: int = 224
    arm_input: ArmInput = "auto"
    box_threshold: float = 0.5
    arm_backend: Backend = "auto"
    sgrm_device: str = "cpu"
    sgrm_seed: int = 0
    flip: bool = True
    cam: CamConfig = field(default_factory=CamConfig)
    graph_cut: GraphCutConfig = field(default_factory=GraphCutConfig)
    arm: ArmConfig = field(default_factory=lambda: ArmConfig(dilations=AFA_DILATIONS))
    sgrm: SgrmConfig = field(default_factory=SgrmConfig)

    min_work_size: ClassVar[int] = 32
    max_work_size: ClassVar[int] = 1024

    def __post_init__(self) -> None:
        check_fields(self)
        check_range(self, "work_size", self.min_work_size, self.max_work_size)
        check_range(self, "box_threshold", 0.0, 1.0, high_open=True)
        check_range(self, "sgrm_seed", 0, 2**64 - 1)  # torch.Generator.manual_seed's range
        try:
            device_type = torch.device(self.sgrm_device).type
        except RuntimeError:
            device_type = None
        if device_type not in SGRM_DEVICE_TYPES:
            raise SettingError(
                "sgrm_device", f"must be cpu, cuda or cuda:N, got {show(self.sgrm_device)}"
            )

    @classmethod
    def from_settings(cls, settings: dict[str, Any], **overrides: Any) -> PipelineConfig:
        """Config from a bundle's ``settings`` ({"arm": {...}, "method": ..., ...}) + overrides.

        The stage tables ``cam``, ``graph_cut``, ``arm`` and ``sgrm`` are JSON objects of their
        config's fields. Every value is checked here: ValueError naming the setting
        (``setting sgrm.max_steps: ...``) for a bad value, an unknown key or a table that is
        not an object.
        """
        if not isinstance(settings, dict):
            raise ValueError(f"settings must be a JSON object, got {show(settings)}")
        merged = {**settings, **overrides}
        cam = merged.get("cam")
        if isinstance(cam, dict) and "size" in cam:
            # _cam_stage replaces it with work_size: a value here would be ignored.
            raise SettingError("cam.size", "the CAM map is work_size wide: set work_size instead")
        return from_table(cls, merged)


@dataclass
class Localization:
    """Result for one image.

    class_index: bundle output index used for the map (None without heads); class_id /
        class_name / score: that class's dataset id, name and softmax probability.
    predicted_class_id: the classifier's top-1 class id (differs from class_id when the map's
        class was given, e.g. the GT class in evaluation).
    map: (work_size, work_size) float32 score map in [0, 1] of the method's last stage (for
        ``lcar`` the mask as 0/1).
    mask: (work_size, work_size) bool. box / boxes: inclusive ``[x0, y0, x1, y1]`` in work
        pixels (None: nothing found). timings_ms: per stage, this image's share of its batch.
    """

    class_index: int | None
    class_id: int | None
    class_name: str | None
    score: float | None
    map: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int] | None
    boxes: list[tuple[int, int, int, int]]
    timings_ms: dict[str, float]
    predicted_class_id: int | None = None
    sgrm_steps: int | None = None


def component_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Inclusive boxes of every 8-connected component of a bool mask, largest first."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    slices = ndimage.find_objects(labels)
    order = np.argsort(-sizes, kind="stable")
    return [
        (slices[i][1].start, slices[i][0].start, slices[i][1].stop - 1, slices[i][0].stop - 1)
        for i in order
    ]


def box_to_original(
    box: tuple[int, int, int, int], work_size: int, original_size: tuple[int, int]
) -> list[int]:
    """Inclusive work-pixel box -> inclusive box in the original (W, H) image's pixels."""
    sx, sy = original_size[0] / work_size, original_size[1] / work_size
    x0, y0, x1, y1 = box
    return [
        int(np.floor(x0 * sx)),
        int(np.floor(y0 * sy)),
        min(int(np.ceil((x1 + 1) * sx)) - 1, original_size[0] - 1),
        min(int(np.ceil((y1 + 1) * sy)) - 1, original_size[1] - 1),
    ]


class Localizer:
    """Runs a bundle and the stages on batches of images.

    ``bundle``: a loaded :class:`Bundle`; ``config``: stage settings (defaults: the bundle's
    ``settings``); ``device``: onnxruntime device (``auto | cpu | cuda``); ``threads``: CPU
    threads for onnxruntime and the C++ ARM.
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
            except ValueError as exc:
                raise ValueError(f"{bundle.path}: bundle settings: {exc}") from None
        self.config = config
        if self.config.method == "cam" and not bundle.has_heads:
            raise ValueError(f"{bundle.path}: method 'cam' needs a bundle with heads")
        self.threads = threads
        self.session: OnnxRunner = bundle.session(device=device, threads=threads)

    @property
    def providers(self) -> list[str]:
        return self.session.providers

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
        for method in methods:
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}")
        cfg = self.config
        n = len(images)
        if n == 0:
            return {m: [] for m in methods}
        class_ids = class_ids or [None] * n
        times = dict.fromkeys(STAGES, 0.0)
        size, work = self.bundle.input_size, cfg.work_size

        tick = time.perf_counter()
        net_in = np.stack([to_chw_float(resize_rgb(im, size)) for im in images])
        out = self.session.run(net_in)
        if cfg.flip:
            # A second run of B rather than one of 2B: the same peak memory as without flip.
            out = merge_flipped(out, self.session.run(np.ascontiguousarray(net_in[..., ::-1])))
        work_rgb = np.stack([resize_rgb(im, work) for im in images])
        times["backbone"] = time.perf_counter() - tick

        tick = time.perf_counter()
        classes, seeds, cam_maps = self._cam_stage(out, class_ids)
        times["cam"] = time.perf_counter() - tick

        deepest = max(METHODS.index(m) for m in methods)
        maps: dict[str, np.ndarray] = {}
        if cam_maps is not None:
            maps["cam"] = cam_maps
        arm_input = self._arm_input(out, cam_maps is not None)
        need_cut = deepest >= 1 and ("graphcut" in methods or arm_input == "graphcut")
        e_low = None
        if need_cut:
            tick = time.perf_counter()
            e_low = np.stack(
                [second_eigenvector(a, cfg.graph_cut) for a in out["affinity"]]
            ).astype(np.float32)
            if "graphcut" in methods:
                e_full = eigen_scoremaps(e_low, work)
                maps["graphcut"] = e_full if seeds is None else orient(e_full, seeds)
            times["graph_cut"] = time.perf_counter() - tick

        if deepest >= 2:
            tick = time.perf_counter()
            coarse = {"graphcut": e_low, "cam": cam_maps}.get(arm_input)
            if arm_input == "foreground":
                coarse = out["foreground"]
            chw = np.ascontiguousarray(work_rgb.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
            maps["arm"] = refine(
                coarse,
                chw,
                cfg.arm,
                backend=cfg.arm_backend,
                seed=seeds if arm_input == "graphcut" else None,
                num_threads=self.threads,
            )
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
            )
            times["sgrm"] = time.perf_counter() - tick

        results: dict[str, list[Localization]] = {}
        for method in methods:
            stages = STAGES[: 2 + METHODS.index(method)]
            timings = {s: 1000.0 * times[s] / n for s in stages}
            per_image = []
            for i in range(n):
                if method == "lcar":
                    mask = sgrm_results[i].mask
                    score_map = mask.astype(np.float32)
                    box = mask_to_box(mask, cfg.sgrm.box_mode)
                    all_boxes = component_boxes(mask)
                    steps = sgrm_results[i].steps
                else:
                    if method not in maps:
                        raise ValueError(f"method {method!r} needs a bundle with heads")
                    score_map = np.asarray(maps[method][i], dtype=np.float32)
                    box, all_boxes, mask = threshold_boxes(score_map, cfg.box_threshold)
                    steps = None
                per_image.append(
                    Localization(
                        *classes[i][:4],
                        predicted_class_id=classes[i][4],
                        map=score_map,
                        mask=mask,
                        box=None if box is None else tuple(int(v) for v in box),
                        boxes=all_boxes,
                        timings_ms=timings,
                        sgrm_steps=steps,
                    )
                )
            results[method] = per_image
        return results

    def _arm_input(self, out: dict[str, np.ndarray], has_cam: bool) -> str:
        """The coarse map ARM refines (``auto`` resolved; see PipelineConfig.arm_input)."""
        choice = self.config.arm_input
        if choice == "auto":
            return "foreground" if "foreground" in out else "cam" if has_cam else "graphcut"
        if choice == "foreground" and "foreground" not in out:
            raise ValueError(f"{self.bundle.path}: arm_input 'foreground' needs a foreground head")
        if choice == "cam" and not has_cam:
            raise ValueError(f"{self.bundle.path}: arm_input 'cam' needs a bundle with heads")
        return choice

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


def eigen_scoremaps(e_low: np.ndarray, size: int) -> np.ndarray:
    """(B, h, w) eigenvector maps -> (B, size, size) bilinear, min-max to [0, 1] per image."""
    return np.stack([eigenvector_scoremap(e, size) for e in e_low]).astype(np.float32)


def threshold_boxes(
    score_map: np.ndarray, threshold: float
) -> tuple[tuple[int, int, int, int] | None, list[tuple[int, int, int, int]], np.ndarray]:
    """A map method's user-facing result at ``threshold``: (V1 box, V2 boxes, mask)."""
    v1, v2 = scoremap_to_boxes(score_map, [threshold])
    peak = float(score_map.max())
    mask = score_map > threshold * peak if peak > 0 else np.zeros(score_map.shape, dtype=bool)
    if not mask.any():
        return None, [], mask
    return tuple(v1[0][0].tolist()), [tuple(b) for b in v2[0].tolist()], mask
