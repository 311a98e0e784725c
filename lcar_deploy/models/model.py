"""The exported graph: backbone + heads, one forward with named outputs."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import BackboneConfig, backbone_spec, build_backbone
from .heads import Heads, HeadsConfig, HeadsError, classifier_heads, with_foreground

FEATURE_OUTPUTS = ("global", "grid", "affinity")
HEAD_OUTPUTS = ("logits", "cam_logits", "cams")


class LcarModel(nn.Module):
    """Backbone + SD-CAM heads. images (B, 3, S, S) RGB in [0, 1] -> tuple of outputs.

    Outputs, in ``output_names`` order: ``global`` (B, Dg), ``grid`` (B, h, w, D),
    ``affinity`` (B, ha, wa, Da) and, with heads, ``logits`` (B, C, teacher),
    ``cam_logits`` (B, C, student), ``cams`` (B, C, h, w) and, with a foreground head,
    ``foreground`` (B, g, g) and, when it has class maps, ``foreground_classes`` (B, C, g, g).
    """

    def __init__(self, backbone: nn.Module, heads: Heads | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        names = FEATURE_OUTPUTS + (HEAD_OUTPUTS if heads is not None else ())
        if heads is not None and heads.foreground is not None:
            names += ("foreground",)
            if heads.foreground.classes:
                names += ("foreground_classes",)
        self.output_names = names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.backbone(images)
        outputs = [feats[name] for name in FEATURE_OUTPUTS]
        if self.heads is not None:
            outputs.extend(self.heads(feats["global"], feats["grid"]))
            if self.heads.foreground is not None:
                outputs.extend(self.heads.foreground.maps(feats["stages"]))
        return tuple(outputs)


def heads_config_for(backbone: nn.Module, config: BackboneConfig, **kwargs) -> HeadsConfig:
    """A HeadsConfig whose dimensions match ``backbone`` (measured with one dummy forward)."""
    with torch.no_grad():
        feats = backbone(torch.zeros(1, 3, config.input_size, config.input_size))
    return HeadsConfig(
        backbone=config.name,
        input_size=config.input_size,
        grid_layer=config.grid_layer,
        affinity_layer=config.affinity_layer,
        grid_dim=feats["grid"].shape[-1],
        global_dim=feats["global"].shape[-1],
        **kwargs,
    )


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions bundled with timm (no download)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def check_heads_fit(
    heads_cfg: HeadsConfig, config: BackboneConfig, backbone: nn.Module | None = None
) -> None:
    """Raise HeadsError when heads were trained on another backbone, layer or feature size."""
    mine = (config.name, config.input_size, config.grid_layer)
    theirs = (heads_cfg.backbone, heads_cfg.input_size, heads_cfg.grid_layer)
    if mine != theirs:
        raise HeadsError(
            "heads were trained for backbone/input size/grid layer "
            f"{theirs}, but the export uses {mine}"
        )
    if backbone is not None:
        dims = heads_config_for(backbone, config, num_classes=1)
        if (dims.grid_dim, dims.global_dim) != (heads_cfg.grid_dim, heads_cfg.global_dim):
            raise HeadsError(
                f"heads expect grid/global features of {heads_cfg.grid_dim}/"
                f"{heads_cfg.global_dim} dims, the backbone gives {dims.grid_dim}/{dims.global_dim}"
            )


def build_model(
    config: BackboneConfig,
    weights: str | None = None,
    heads: Heads | None = None,
    *,
    random_init: bool = False,
    generic_localizer: bool = True,
) -> LcarModel:
    """Backbone + heads; without heads, the backbone's own classifier when it has one, with
    the generic localizer shipped for the embedded weights at this input size when there is
    one and ``generic_localizer`` is on (:mod:`.generic_localizer`)."""
    backbone = build_backbone(config, weights, random_init=random_init)
    if heads is not None:
        check_heads_fit(heads.config, config, backbone)
    elif backbone_spec(config.name).has_classifier and config.grid_layer == "head":
        names = imagenet_class_names()
        heads_cfg = heads_config_for(
            backbone,
            config,
            num_classes=len(names),
            class_ids=list(range(len(names))),
            class_names=names,
            teacher_hidden=0,
            teacher_input="global",
        )
        heads = classifier_heads(backbone.model.classifier, heads_cfg)
        if generic_localizer and weights is None and not random_init:
            from .generic_localizer import load_generic_localizer

            shipped = load_generic_localizer(config.name, config.input_size)
            if shipped is not None:
                heads = with_foreground(heads, shipped[0])
    return LcarModel(backbone, heads).eval()
