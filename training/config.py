"""``TrainConfig``: everything a training run depends on, in one torch-free place.

The command line reads its defaults from here (``lcar-deploy train --help`` imports no torch);
:func:`lcar_deploy.training.train.train` runs it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SettingError, printable
from ..names import ARM_INPUTS
from ..threads import MAX_THREADS, check_threads

if TYPE_CHECKING:
    from ..models.backbones import BackboneConfig

CAM_SOURCES = ("imagenet", "heads", "graphcut")
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_HIDDEN = 65_536
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
"""The range of eq. 6's T (logits divided by a smaller T overflow float32's softmax); the
other upper bounds are far past any sensible run, and keep a typo from allocating forever."""


def _is_real(value: object) -> bool:
    """A finite int or float (not a bool, not NaN or an infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_integer(name: str, value: object, low: int, high: int | None) -> None:
    """SettingError naming ``name`` unless ``value`` is an integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(name, f"must be an integer, got {printable(repr(value), 40)}")
    if value < low or (high is not None and value > high):
        upper = f" and at most {high}" if high is not None else ""
        raise SettingError(name, f"must be at least {low}{upper}, got {value}")


_LEARNED_MAP_SGRM: dict[str, Any] = {"keep_reliable": True, "init": "data", "width": 16}
_FOREGROUND: dict[str, Any] = {
    "arm": {"iterations": 20},
    "box_threshold": 0.3,
    "sgrm": {
        "gamma_l1": 0.2,
        "gamma_h1": 0.45,
        "gamma_l2": 0.2,
        "gamma_h2": 0.45,
        **_LEARNED_MAP_SGRM,
    },
}
_FOREGROUND_CAM: dict[str, Any] = {
    "sgrm": {
        "gamma_l1": 0.4,
        "gamma_h1": 0.6,
        "gamma_l2": 0.4,
        "gamma_h2": 0.6,
        "stop_error": 0.02,
        "box_mode": "largest",
        **_LEARNED_MAP_SGRM,
    },
}
_CLASS_FOREGROUND_CAM: dict[str, Any] = {
    "sgrm": {
        **_FOREGROUND_CAM["sgrm"],
        "gamma_l1": 0.35,
        "gamma_h1": 0.55,
        "gamma_l2": 0.35,
        "gamma_h2": 0.55,
    },
}

MAP_SETTINGS: dict[str, dict[str, Any]] = {
    "foreground": _FOREGROUND,
    "foreground_cam": _FOREGROUND_CAM,
    "class_foreground": _FOREGROUND,
    "class_foreground_cam": _CLASS_FOREGROUND_CAM,
}
"""Settings (over the preset's) for ARM and SGRM on a learned localizer's maps, by the
bundle's ``arm_input``: a bundle with a foreground head records them (trained heads, and the
default bundle's generic localizer, over the ``classifier`` preset). The head's maps are
sharper than a CAM: ARM's paper ``k`` = 50 blurs them, and the best box threshold of the
refined map is lower; blended with the CAM (``foreground_cam``) ARM keeps its ``k``. A class's
own map (``class_`` inputs) takes the settings of the class-agnostic one, but for SGRM's bands
on the class CAM blend, whose refined map's best threshold is lower. SGRM's
label bands sit around each map's best threshold, its mask keeps the reliable pixels, and its
Aggregation Net (16 channels) starts from the image's own data init, not a seeded random one.
Measurements: docs/experiments/2026-12-localizer.md, "ARM and SGRM on the learned localizer's maps" and "SGRM
without a seed"."""


@dataclass(frozen=True)
class LocalizerConfig:
    """How the foreground head is self-trained.

    rounds: fits after round 0, each on ARM's refinement of the previous fit's maps (averaged
        with the image's CAM first when the bundle's ARM refines that blend, ``foreground_cam``).
    cam_source: round 0's map, ``imagenet`` (the backbone's ImageNet classifier, softmax-weighted
        top ``top_k`` CAM, class-agnostic), ``heads`` (the trained CAM head, the image's label)
        or ``graphcut`` (ARM's refinement of the graph cut, oriented without a CAM, banded by
        ``high`` / ``low``: for the self-supervised ViTs, whose CAM is weak).
    cam_high, cam_low: round 0's bands on the min-max normalised CAM.
    high, low: later rounds' bands on the ARM-refined map (object >= high, background <= low).
    l2: L2 penalty on the weights; max_iter: L-BFGS iterations per round.
    cell_stride: the fit reads every n-th cell along each axis.
    layers: backbone layers read by the head (``None``: the backbone's default).
    max_images: train images used at most (evenly spread), which bounds the cache and memory.
    class_rounds: fits of the head's class maps after the class-agnostic rounds (0: none), one
        linear layer per class on that class's images alone: the first on ARM's refinement of
        the last class-agnostic fit, each later one on the previous class fit's (each map
        averaged with the image's class CAM first when the bundle's ARM refines that blend).
    class_min_images: the class maps are fitted only when every class has at least this many
        train images (fewer overfit; the measurements: docs/experiments/2026-12-class-maps.md, "Class maps").
    """

    rounds: int = 2
    cam_source: str = "imagenet"
    top_k: int = 5
    cam_high: float = 0.5
    cam_low: float = 0.1
    high: float = 0.6
    low: float = 0.3
    l2: float = 1e-4
    max_iter: int = 100
    cell_stride: int = 2
    layers: tuple[str, ...] | None = None
    max_images: int = 3000
    class_rounds: int = 3
    class_min_images: int = 100

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.class_rounds < 0:
            raise ValueError(
                f"rounds and class_rounds must be >= 0, got {self.rounds}, {self.class_rounds}"
            )
        if self.class_min_images < 1:
            raise ValueError(f"class_min_images must be >= 1, got {self.class_min_images}")
        if self.cam_source not in CAM_SOURCES:
            raise ValueError(f"cam_source must be one of {', '.join(CAM_SOURCES)}")
        for low, high, what in ((self.cam_low, self.cam_high, "cam_"), (self.low, self.high, "")):
            if not 0.0 <= low < high <= 1.0:
                raise ValueError(f"need 0 <= {what}low < {what}high <= 1, got {low}, {high}")
        if self.cell_stride < 1 or self.max_iter < 1 or self.max_images < 1 or self.top_k < 1:
            raise ValueError("cell_stride, max_iter, max_images and top_k must be >= 1")
        if not (_is_real(self.l2) and self.l2 >= 0):
            raise ValueError(f"l2 must be a finite number >= 0, got {self.l2}")


GENERIC_LOCALIZER = LocalizerConfig(rounds=3)
"""How the default bundle's generic localizer is self-trained (:mod:`.generic_localizer`): one
round more than a trained head, its labels on the CAM blend converge a round later
(docs/experiments/2026-12-localizer.md, "The generic localizer labelled on the CAM blend")."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    dataset: ``cub``, ``ilsvrc``, ``wsol``, ``folder`` or ``csv`` (:mod:`lcar_deploy.datasets`);
        root: its folder (csv: the file);
        metadata: metadata folder override; limit: images per split (evenly spread), for quick
        runs; test_split: split evaluated after training (``None``: none; skipped when absent).
    out: output folder.
    backbone, weights: backbone name and weights file (``None``: the embedded weights);
        input_size: S (``None``: the backbone's for a trained bundle,
        ``BackboneSpec.trained_input_size``); grid_layer: the CAM head's grid
        (``None``: default, ``head`` for the EfficientNet-Lites); affinity_layer: recorded in the
        heads for the graph cut (``None``: default).
    epochs, lr, batch_size, weight_decay: AdamW with a cosine schedule over ``epochs``.
    alpha, temperature: alpha and T of eq. 6 (paper 0.3, 3).
    teacher_hidden: width of the teacher's MLP block; ``None``: the paper's, 0 (linear) on
        ILSVRC, 512 otherwise.
    seed: seeds the split, the view sampling, the crops and the heads' initialisation.
    val_fraction: share of every class of the train split held out for validation.
    augment, crop_views: cached views (:mod:`.features`): ``none``, ``flip`` (default) or
        ``crop`` (the paper's 256 -> 224 random crops, ``crop_views`` of them, + flip).
    device: torch device of the backbone and the heads (``cpu``, ``cuda``, ``cuda:1``, ...).
    cache_dir: feature cache (``None``: ``$LCAR_DEPLOY_CACHE`` or ``~/.cache/lcar-deploy``,
        then ``features/``).
    feature_batch_size, workers: backbone batch size and image-decoding worker processes.
    threads: torch CPU threads during the run (``None``: torch's default; 1 is fastest on a
        busy machine).
    checkpoint_every: save heads every this many epochs (0: only the final ``heads.pt``).
    progress: show tqdm progress bars.
    foreground: also self-train the foreground head, the learned class-agnostic localizer
        (:mod:`.localizer`), on the train split (why: docs/method.md, section 7; the numbers:
        docs/experiments/2026-12-localizer.md, "The learned localizer").
    foreground_pseudo: its round-0 map, ``imagenet`` (embedded classifier's top-5 CAM),
        ``heads`` (the trained CAM head) or ``graphcut`` (the graph cut refined by ARM);
        ``None``: the backbone's ``BackboneSpec.foreground_seed``.
    foreground_rounds: its self-training rounds after round 0 (``None``: the
        :class:`LocalizerConfig` default).
    foreground_class_maps: also fit the head's class maps: ``None`` when every class has
        ``LocalizerConfig.class_min_images`` train images, ``True`` always, ``False`` never.
    arm_input: the coarse map the bundle's ARM refines (``lcar_deploy.config.PipelineConfig``);
        ``None``: ``class_foreground_cam`` when the foreground head has class maps, else
        ``foreground_cam`` on ``ilsvrc`` (several objects per image: the class CAM says which
        one, measured in docs/experiments/2026-12-localizer.md), else the pipeline's ``auto``.
    max_bad_share: images that cannot be decoded are skipped and listed in ``metrics.json``
        while they are at most this share of a split; more is an error.
    """

    dataset: str
    root: str | Path
    out: str | Path
    metadata: str | Path | None = None
    limit: int | None = None
    test_split: str | None = "test"
    backbone: str = "efficientnet_lite0"
    weights: str | Path | None = None
    input_size: int | None = None
    grid_layer: str | None = None
    affinity_layer: str | None = None
    epochs: int = 40
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    alpha: float = 0.3
    temperature: float = 3.0
    teacher_hidden: int | None = None
    seed: int = 0
    val_fraction: float = 0.1
    augment: str = "flip"
    crop_views: int = 2
    device: str = "cpu"
    cache_dir: str | Path | None = None
    feature_batch_size: int = 8
    workers: int = 0
    threads: int | None = None
    checkpoint_every: int = 0
    progress: bool = True
    foreground: bool = True
    foreground_pseudo: str | None = None
    foreground_rounds: int | None = None
    foreground_class_maps: bool | None = None
    arm_input: str | None = None
    max_bad_share: float = 0.01

    def __post_init__(self) -> None:
        """Every hyper-parameter checked (finite, in its range, of its type) before anything is
        read or computed: an infinite learning rate would train heads of NaN."""
        integers = [
            ("epochs", self.epochs, 1, MAX_EPOCHS),
            ("batch_size", self.batch_size, 1, MAX_BATCH_SIZE),
            ("crop_views", self.crop_views, 1, MAX_BATCH_SIZE),
            ("feature_batch_size", self.feature_batch_size, 1, MAX_BATCH_SIZE),
            ("workers", self.workers, 0, MAX_THREADS),
            ("checkpoint_every", self.checkpoint_every, 0, MAX_EPOCHS),
            ("seed", self.seed, 0, 2**32 - 1),
            ("limit", self.limit, 1, None),
            ("teacher_hidden", self.teacher_hidden, 0, MAX_HIDDEN),
            ("foreground_rounds", self.foreground_rounds, 0, MAX_EPOCHS),
        ]
        for name, value, low, high in integers:
            if value is not None:
                _check_integer(name, value, low, high)
        # (name, value, low, high, low excluded, high excluded)
        numbers = [
            ("lr", self.lr, 0.0, 1.0, True, False),
            ("weight_decay", self.weight_decay, 0.0, 1.0, False, False),
            ("alpha", self.alpha, 0.0, 1.0, False, False),
            ("temperature", self.temperature, MIN_TEMPERATURE, MAX_TEMPERATURE, False, False),
            ("val_fraction", self.val_fraction, 0.0, 1.0, False, True),
            ("max_bad_share", self.max_bad_share, 0.0, 1.0, False, True),
        ]
        for name, value, low, high, low_open, high_open in numbers:
            above = _is_real(value) and (value > low if low_open else value >= low)
            if not (above and (value < high if high_open else value <= high)):
                bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
                shown = printable(repr(value), 40)
                raise SettingError(name, f"must be a finite number in {bounds}, got {shown}")
        if self.arm_input is not None and self.arm_input not in ARM_INPUTS:
            raise SettingError(
                "arm_input", f"must be one of {', '.join(ARM_INPUTS)}, got {self.arm_input!r}"
            )
        check_threads(self.threads)
        from ..models.backbones import check_input_size
        from .features import ViewSpec
        from .losses import SdLossConfig

        if self.input_size is not None:
            check_input_size(self.backbone, self.input_size)
        SdLossConfig(self.alpha, self.temperature)
        ViewSpec(self.augment, self.crop_views, self.seed)

    @property
    def resolved_foreground(self) -> LocalizerConfig | None:
        from ..models.backbones import backbone_spec

        if not self.foreground:
            return None
        pseudo = self.foreground_pseudo or backbone_spec(self.backbone).foreground_seed
        options: dict[str, Any] = {}
        if self.foreground_rounds is not None:
            options["rounds"] = self.foreground_rounds
        if self.foreground_class_maps is False:
            options["class_rounds"] = 0
        elif self.foreground_class_maps:
            options["class_min_images"] = 1
        return LocalizerConfig(cam_source=pseudo, **options)

    def bundle_settings(self, class_maps: bool = False) -> dict[str, Any]:
        """Settings the trained heads carry into their bundle (over the preset's): the ARM
        input and, with the foreground head, ARM's iterations on its maps. ``class_maps``:
        the trained foreground head has class maps."""
        arm_input = self.arm_input
        if arm_input is None and self.foreground and class_maps:
            arm_input = "class_foreground_cam"
        elif arm_input is None and self.foreground and self.dataset == "ilsvrc":
            arm_input = "foreground_cam"
        settings: dict[str, Any] = {} if arm_input is None else {"arm_input": arm_input}
        if self.foreground:
            settings.update(MAP_SETTINGS.get(arm_input or "foreground", {}))
        return settings

    @property
    def resolved_teacher_hidden(self) -> int:
        if self.teacher_hidden is not None:
            return self.teacher_hidden
        return 0 if self.dataset == "ilsvrc" else 512

    def backbone_config(self) -> BackboneConfig:
        from ..models.backbones import backbone_spec, default_config

        size = self.input_size or backbone_spec(self.backbone).trained_input_size
        base = default_config(self.backbone, size)
        return dataclasses.replace(
            base,
            grid_layer=self.grid_layer or base.grid_layer,
            affinity_layer=self.affinity_layer or base.affinity_layer,
        )

    def to_dict(self) -> dict:
        """JSON-ready copy (paths as strings)."""
        return {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()
        }


def train_defaults() -> dict[str, Any]:
    """{field: default} of :class:`TrainConfig` (fields without a default left out)."""
    return {
        f.name: f.default
        for f in dataclasses.fields(TrainConfig)
        if f.default is not dataclasses.MISSING
    }
