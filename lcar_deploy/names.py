"""Every list of names the tool accepts, in one torch-free place.

The library's Literal types and the command line's choices are built from these, so that
``lcar-deploy --help`` needs no heavy import and no list is written twice.
"""

from __future__ import annotations

from typing import Literal, get_args

Method = Literal["cam", "graphcut", "arm", "lcar"]
METHODS: tuple[str, ...] = get_args(Method)
"""Where the pipeline stops: a map method (cam, graphcut, arm) or the full method (lcar)."""

STAGES = ("backbone", "cam", "graph_cut", "arm", "sgrm")
"""The stages timed per image, in pipeline order."""


def method_stages(method: str, arm_uses_cut: bool) -> tuple[str, ...]:
    """The stages of :data:`STAGES` that ``method`` runs, in order: ``arm`` and ``lcar`` run
    the graph cut only when ``arm_uses_cut`` (it is ARM's coarse map, or ARM's map is fused
    with it: ``LocalizerSpec.arm_uses_cut``)."""
    stages = STAGES[: 2 + METHODS.index(method)]
    if method in ("arm", "lcar") and not arm_uses_cut:
        return tuple(s for s in stages if s != "graph_cut")
    return stages


ArmInput = Literal[
    "auto",
    "graphcut",
    "cam",
    "foreground",
    "foreground_cam",
    "class_foreground",
    "class_foreground_cam",
]
ARM_INPUTS: tuple[str, ...] = get_args(ArmInput)

ArmBackend = Literal["auto", "cuda", "cpp", "reference"]
ARM_BACKENDS: tuple[str, ...] = get_args(ArmBackend)

Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)
"""onnxruntime device choices (SGRM follows ``cuda``)."""

EFFICIENTNET_LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BACKBONES = (*EFFICIENTNET_LITES, "dino_vits16", "dinov2_vits14")

ExportFormat = Literal["onnx", "torchscript", "both"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)

DatasetKind = Literal["cub", "ilsvrc", "wsol", "folder", "csv"]
DATASET_KINDS: tuple[str, ...] = get_args(DatasetKind)
"""Dataset layouts (:mod:`lcar_deploy.datasets`): ``folder`` is ImageFolder
(``root/<class>/*.jpg``), ``csv`` a list of ``path,class[,x0,y0,x1,y1]`` lines."""

Labels = Literal["folder", "csv"]
LABELS: tuple[str, ...] = get_args(Labels)
"""Where ``localize --labels`` reads each image's known class: its class folder, or a CSV list."""

BoxCount = Literal["one", "all"]
BOX_COUNTS: tuple[str, ...] = get_args(BoxCount)
"""Boxes per image: the main object's, or every region that is an object by the same rule."""

OutputFormat = Literal["coco", "yolo", "voc", "labelstudio"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
"""What ``lcar-deploy convert`` writes from ``predictions.jsonl`` (:mod:`lcar_deploy.formats`)."""

CalibrateMethod = Literal["cam", "graphcut", "arm"]
CALIBRATE_METHODS: tuple[str, ...] = get_args(CalibrateMethod)
"""The map methods whose box threshold ``lcar-deploy calibrate`` can choose."""

Augment = Literal["none", "flip", "crop"]
AUGMENTS: tuple[str, ...] = get_args(Augment)

Engine = Literal["local", "process", "ray"]
ENGINES: tuple[str, ...] = get_args(Engine)
"""Where the images are localized: this process, worker processes, Ray actors
(:mod:`lcar_deploy.engines`)."""

Preset = Literal["default", "classifier", "paper"]
PRESETS: tuple[str, ...] = get_args(Preset)
"""Named pipeline settings (:mod:`lcar_deploy.config`)."""

Quantize = Literal["none", "int8"]
QUANTIZE: tuple[str, ...] = get_args(Quantize)
"""``lcar-deploy export --quantize``: keep float32, or int8 static quantization of the graph."""

QuantizeMethod = Literal["static-qdq-per-channel-minmax"]
QUANTIZE_METHODS: tuple[str, ...] = get_args(QuantizeMethod)
"""How an int8 graph was made (the manifest's ``quantization.method``): onnxruntime static
quantization, QDQ format, int8 weights per output channel, uint8 activations, min/max calibration."""
