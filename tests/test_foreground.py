"""The foreground head: fit on pseudo labels, export with its output, ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lcar_deploy.bundle import Bundle
from lcar_deploy.export.exporter import export_bundle
from lcar_deploy.models.backbones import default_config
from lcar_deploy.models.heads import Heads, load_heads, save_heads, with_foreground
from lcar_deploy.models.model import build_backbone, heads_config_for
from lcar_deploy.training.foreground import ForegroundConfig, fit_foreground


def test_fit_separates_object_from_background_features() -> None:
    rng = np.random.default_rng(0)
    n, h, w, dim = 20, 6, 6, 8
    obj = np.zeros((n, h, w), dtype=bool)
    obj[:, 1:4, 2:5] = True
    direction = np.eye(dim)[0]
    features = rng.normal(0, 0.3, (n, h, w, dim)) + np.where(obj[..., None], direction, -direction)
    cam = np.where(obj, 0.9, 0.05).astype(np.float32)
    cam[:, 2, 3] = 0.3
    weight, bias, stats = fit_foreground(features.astype(np.float16), cam, ForegroundConfig())
    assert stats["cells"] == n * (h * w - 1)
    assert stats["positive_share"] == pytest.approx(8 / 35)
    unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
    prob = 1 / (1 + np.exp(-(unit @ weight.numpy()[0] + bias.item())))
    assert (prob[obj] > 0.5).mean() > 0.95 and (prob[~obj] < 0.5).mean() > 0.95
    assert prob[:, 2, 3].min() > 0.5


def test_one_class_pseudo_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="only one class"):
        fit_foreground(
            np.ones((2, 3, 3, 4)), np.full((2, 3, 3), 0.9, np.float32), ForegroundConfig()
        )
    with pytest.raises(ValueError, match="low < high"):
        ForegroundConfig(high=0.1, low=0.5)


def test_foreground_head_exports_with_parity(tmp_path: Path) -> None:
    config = default_config("efficientnet_lite0", 64)
    backbone = build_backbone(config, random_init=True)
    heads_cfg = heads_config_for(
        backbone,
        config,
        num_classes=3,
        class_ids=[1, 2, 3],
        class_names=["a", "b", "c"],
        teacher_hidden=0,
    )
    torch.manual_seed(0)
    heads = with_foreground(Heads(heads_cfg), torch.randn(1, 112), torch.zeros(1))
    save_heads(heads, tmp_path / "heads.pt", extra={"dataset": {"kind": "cub"}})
    loaded, _ = load_heads(tmp_path / "heads.pt")
    assert loaded.config.foreground_dim == 112
    torch.save(backbone.model.state_dict(), tmp_path / "weights.pth")
    out = export_bundle(
        tmp_path / "b",
        input_size=64,
        weights=str(tmp_path / "weights.pth"),
        heads_path=str(tmp_path / "heads.pt"),
    )
    bundle = Bundle.load(out)
    assert bundle.outputs[-1] == "foreground" and bundle.class_dataset == "cub"
    images = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)
    got = bundle.session(device="cpu").run(images)["foreground"]
    with torch.no_grad():
        feats = backbone(torch.from_numpy(images))
        expected = loaded.foreground(feats["affinity"]).numpy()
    assert got.shape == (2, 4, 4)
    assert np.abs(got - expected).max() <= 1e-4
