"""The backbone registry: one spec per backbone drives its defaults and its builder."""

from __future__ import annotations

import dataclasses

import pytest

from lcar_deploy import names
from lcar_deploy.models.backbones import (
    BackboneConfig,
    backbone_spec,
    build_backbone,
    default_config,
    list_backbones,
    register_backbone,
)


def test_every_offered_backbone_is_registered_with_its_defaults() -> None:
    assert list_backbones() == names.BACKBONES
    lite = backbone_spec("efficientnet_lite0")
    assert default_config("efficientnet_lite0") == BackboneConfig(
        "efficientnet_lite0", lite.input_size, lite.grid_layer, lite.affinity_layer
    )
    assert default_config("dino_vits16", 448).input_size == 448
    assert lite.has_classifier and not backbone_spec("dino_vits16").has_classifier


def test_unknown_and_unlisted_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'; choose one of efficientnet"):
        default_config("resnet50")
    spec = dataclasses.replace(backbone_spec("efficientnet_lite0"), name="resnet50")
    with pytest.raises(ValueError, match=r"not in lcar_deploy\.names\.BACKBONES"):
        register_backbone(spec)


def test_build_uses_the_spec_builder_and_freezes() -> None:
    model = build_backbone(default_config("dino_vits16", 32), random_init=True)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.mean == backbone_spec("dino_vits16").mean
