"""``PipelineConfig``: how the stages are chained, and the one settings format.

Settings are a JSON object: its keys are :class:`PipelineConfig`'s fields, and the stage tables
``cam``, ``graph_cut``, ``arm``, ``fusion`` and ``sgrm`` are objects of their configs' fields (a
table changes only the keys it names). A bundle records its settings; ``localize`` / ``eval``
take a named preset (:data:`PRESETS`) or the bundle's, then ``--settings`` on top
(:func:`resolve_config`). Every value is checked when the config is built, before any image is
read: a bad one is a :class:`~lcar_deploy.errors.SettingError` naming it. What each setting
means, its paper symbol and why its default is what it is: docs/method.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import torch

from .config_check import check_fields, check_range, from_table, show
from .errors import SettingError
from .metrics import EVAL_SIZE
from .names import PRESETS, ArmBackend, ArmInput, BoxCount, Method
from .stages.arm import AFA_DILATIONS, ArmConfig
from .stages.cam import CamConfig
from .stages.fusion import FusionConfig
from .stages.graph_cut import GraphCutConfig
from .stages.sgrm import PAPER_CUB, SgrmConfig
from .training.config import MAP_SETTINGS

SGRM_DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class PipelineConfig:
    """How the stages are chained.

    method: last stage to run (``cam | graphcut | arm | lcar``): the bundle's default method,
        ``arm``, the one that measured best on every bundle (SGRM, ``lcar``, gained on none:
        docs/results.md); the ``paper`` preset runs ``lcar``. ``--method`` overrides it.
    work_size: side of the maps, ARM and SGRM input (the evaluation size, 224), in
        [``min_work_size``, ``max_work_size``]; also the size of the CAM map (``cam.size``).
    arm_input: coarse map fed to ARM: ``graphcut`` (the paper's E_l, oriented by the CAM
        seed, eqs. 10-11), ``cam``, ``foreground`` (the bundle's foreground head),
        ``foreground_cam`` (the mean of the two, each min-max scaled: the class's CAM picks
        which of several objects), ``class_foreground`` / ``class_foreground_cam`` (the same
        with the head's map of the image's class, for heads with class maps) or ``auto``:
        foreground when the bundle has it, else cam, else graphcut (why this order:
        docs/method.md, section 4).
    box_threshold: threshold on a map method's [0, 1] score map for the user-facing box, in
        [0, 1) (``lcar-deploy calibrate`` chooses it on images with boxes).
    boxes: ``one`` (the main object: the largest region, as the evaluation scores it) or
        ``all`` (every region that is an object by the rule below, each with its score).
    min_box_score: a region is an object when its score (:func:`lcar_deploy.boxes.box_scores`,
        in [0, 1]) is at least this, in [0, 1]; an image with none is ``no_object`` (no box).
        0.1 is under the lowest score of the CUB and ILSVRC-mini test boxes (0.16 / 0.14): it
        drops faint regions and specks, not the object of an image (docs/experiments/2026-12-own-datasets.md, "Box
        scores").
    arm_backend: ``auto | cuda | cpp | reference``.
    sgrm_device: torch device of the SGRM nets (``cpu``, ``cuda`` or ``cuda:N``).
    sgrm_seed: seed of every image's Aggregation Net (reproducible masks), with
        ``sgrm.init = "random"``; ``"data"`` uses none (then it must stay 0).
    flip: test-time horizontal flip: the backbone also sees each image mirrored, and every
        output is averaged with the mirrored run's, mirrored back (:func:`merge_flipped`).
        Twice the backbone time (why it is on: docs/method.md, section 1; its gain:
        docs/experiments/2026-11-first-defaults.md).
    fusion: ARM's map fused with the graph cut where the two agree (:mod:`.stages.fusion`),
        when ARM's coarse map is not the graph cut itself; off unless the bundle records a
        weight (bundles whose graph cut is DINOv2's).
    """

    method: Method = "arm"
    work_size: int = EVAL_SIZE
    arm_input: ArmInput = "auto"
    box_threshold: float = 0.5
    boxes: BoxCount = "one"
    min_box_score: float = 0.1
    arm_backend: ArmBackend = "auto"
    sgrm_device: str = "cpu"
    sgrm_seed: int = 0
    flip: bool = True
    cam: CamConfig = field(default_factory=CamConfig)
    graph_cut: GraphCutConfig = field(default_factory=GraphCutConfig)
    arm: ArmConfig = field(default_factory=lambda: ArmConfig(dilations=AFA_DILATIONS))
    fusion: FusionConfig = field(default_factory=FusionConfig)
    sgrm: SgrmConfig = field(default_factory=SgrmConfig)

    min_work_size: ClassVar[int] = 32
    max_work_size: ClassVar[int] = 1024

    def __post_init__(self) -> None:
        check_fields(self)
        check_range(self, "work_size", self.min_work_size, self.max_work_size)
        check_range(self, "box_threshold", 0.0, 1.0, high_open=True)
        check_range(self, "min_box_score", 0.0, 1.0)
        check_range(self, "sgrm_seed", 0, 2**64 - 1)  # torch.Generator.manual_seed's range
        if self.sgrm_seed != 0 and self.sgrm.init == "data":
            raise SettingError(
                "sgrm_seed",
                f"is the seed of SGRM's random init, got {self.sgrm_seed}, but sgrm.init is "
                '"data", which draws no random numbers; set sgrm.init to "random" to use a seed',
            )
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

        The stage tables ``cam``, ``graph_cut``, ``arm``, ``fusion`` and ``sgrm`` are JSON objects
        of their config's fields. Every value is checked here: ValueError naming the setting
        (``setting sgrm.max_steps: ...``) for a bad value, an unknown key or a table that is
        not an object.
        """
        if not isinstance(settings, dict):
            raise SettingError("settings", f"must be a JSON object, got {show(settings)}")
        merged = {**settings, **overrides}
        cam = merged.get("cam")
        if isinstance(cam, dict) and "size" in cam:
            # _cam_stage replaces it with work_size: a value here would be ignored.
            raise SettingError("cam.size", "the CAM map is work_size wide: set work_size instead")
        return from_table(cls, merged)


RUN_OPTIONS = {
    "arm_backend": "--arm-backend",
    "sgrm_device": "--device",
}
"""Settings that say how to run rather than what to compute: each command sets them from its
own option, so they are neither recorded in bundles nor taken from ``--settings``."""

OPTION_SETTINGS = {**RUN_OPTIONS, "method": "--method (eval: --methods)"}
"""Settings ``--settings`` refuses because a command-line option sets them (``method`` is
recorded in bundles, as their default method)."""


def check_evaluable(config: PipelineConfig) -> None:
    """``eval`` scores maps at the evaluation size: SettingError for another ``work_size``."""
    if config.work_size != EVAL_SIZE:
        raise SettingError(
            "work_size",
            f"eval scores maps at {EVAL_SIZE} x {EVAL_SIZE} (wsolevaluation), got {config.work_size}",
        )


def settings_of(config: PipelineConfig) -> dict[str, Any]:
    """The JSON-ready settings that rebuild ``config`` (less :data:`RUN_OPTIONS` and
    ``cam.size``, which follows ``work_size``)."""
    settings = {k: v for k, v in asdict(config).items() if k not in RUN_OPTIONS}
    del settings["cam"]["size"]
    return json.loads(json.dumps(settings))


def _classifier() -> PipelineConfig:
    base = PipelineConfig()
    bands = {"gamma_l1": 0.25, "gamma_l2": 0.25, "gamma_h1": 0.5, "gamma_h2": 0.5}
    return replace(base, sgrm=replace(base.sgrm, **bands, stop_error=0.005, box_mode="all"))


def _paper() -> PipelineConfig:
    return PipelineConfig(
        method="lcar",
        arm_input="graphcut",
        flip=False,
        arm=ArmConfig(dilations=(1,), w_rgb=1.0, w_pos=1.0),
        sgrm=PAPER_CUB,
    )


_PRESET_FACTORIES = {"default": PipelineConfig, "classifier": _classifier, "paper": _paper}
assert tuple(_PRESET_FACTORIES) == PRESETS


def preset(name: str) -> PipelineConfig:
    """A named preset: ``default`` (bundles with trained heads), ``classifier`` (bundles whose
    heads are the backbone's ImageNet classifier: SGRM's bands sit at that CAM's level and the
    box covers every object) or ``paper`` (the paper's values everywhere, graph cut into ARM,
    no flip). docs/method.md gives each value."""
    if name not in _PRESET_FACTORIES:
        raise SettingError("preset", f"must be one of {', '.join(PRESETS)}, got {show(name)}")
    return _PRESET_FACTORIES[name]()


def parse_settings(text: str | None) -> dict[str, Any]:
    """The ``--settings`` JSON object (``{}`` for None); run options in it are refused."""
    if not text:
        return {}
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingError("--settings", f"not valid JSON ({exc})") from None
    if not isinstance(extra, dict):
        raise SettingError("--settings", f"must be a JSON object, got {show(extra)}")
    for key, option in OPTION_SETTINGS.items():
        if key in extra:
            raise SettingError(key, f"set it with {option}, not in --settings")
    return extra


def merge_settings(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` overridden by ``extra``; stage tables are merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def generic_localizer_settings(settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings a bundle of the ImageNet classifier with the generic localizer records (the
    default bundle): the ``classifier`` preset, ``arm_input = foreground_cam`` with its
    ``MAP_SETTINGS``, then ``settings`` on top."""
    generic = {"arm_input": "foreground_cam", **MAP_SETTINGS["foreground_cam"]}
    generic = merge_settings(generic, settings or {})
    return settings_of(resolve_config(settings_of(preset("classifier")), settings=generic))


def resolve_config(
    bundle_settings: dict[str, Any],
    *,
    preset_name: str | None = None,
    settings: str | dict[str, Any] | None = None,
    **run: Any,
) -> PipelineConfig:
    """The config of a run: the preset's settings (or the bundle's), ``settings`` (the
    ``--settings`` text or an object) on top, and the run options ``run`` (method,
    arm_backend, sgrm_device; a None value keeps the bundle's or preset's). A bad bundle
    setting names the bundle's settings."""
    run = {k: v for k, v in run.items() if v is not None}
    if preset_name is not None:
        base = settings_of(preset(preset_name))
    else:
        try:
            PipelineConfig.from_settings(bundle_settings)
        except ValueError as exc:
            raise SettingError("bundle settings", str(exc)) from None
        base = bundle_settings
    extra = parse_settings(settings) if not isinstance(settings, dict) else settings
    return PipelineConfig.from_settings(merge_settings(base, extra), **run)
