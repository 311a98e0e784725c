"""The foreground head (learned class-agnostic localizer) and its class maps: features, fit,
self-training rounds, export with its outputs and ONNX parity."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from lcar_deploy.bundle import Bundle
from lcar_deploy.config import PipelineConfig
from lcar_deploy.errors import HeadsError
from lcar_deploy.export.exporter import export_bundle
from lcar_deploy.models.backbones import default_config
from lcar_deploy.models.heads import (
    ForegroundHead,
    Heads,
    HeadsConfig,
    load_heads,
    save_heads,
    with_foreground,
)
from lcar_deploy.models.model import build_backbone, heads_config_for
from lcar_deploy.stages.cam import cam_map
from lcar_deploy.training.localizer import (
    LocalizerConfig,
    TrainSplitMaps,
    bands,
    class_cams,
    empty_head,
    fit_class_maps,
    fit_head,
    predict,
    self_train,
    work_size_cams,
)


def _separable(n: int = 20, side: int = 6, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Features whose first axis says object (a centre square) or background, with noise."""
    rng = np.random.default_rng(0)
    obj = np.zeros((n, side, side), dtype=bool)
    obj[:, 1:4, 2:5] = True
    direction = np.eye(dim)[0]
    features = rng.normal(0, 0.3, (n, side, side, dim)) + np.where(
        obj[..., None], direction, -direction
    )
    return features.astype(np.float16), obj


def test_features_are_normalised_per_layer_and_resized_to_the_grid() -> None:
    head = ForegroundHead(["a", "b"], [3, 2], grid=4)
    stages = {"a": torch.rand(2, 3, 8, 8) + 0.1, "b": torch.rand(2, 2, 4, 4) + 0.1}
    f = head.features(stages)
    assert f.shape == (2, 4, 4, 5)
    np.testing.assert_allclose(f[..., 3:].norm(dim=-1).numpy(), 1.0, atol=1e-6)
    expected_b = stages["b"] / stages["b"].norm(dim=1, keepdim=True)
    np.testing.assert_allclose(f[..., 3:].numpy(), expected_b.permute(0, 2, 3, 1).numpy(), 1e-6)
    with torch.no_grad():
        prob = head(stages)
    assert prob.shape == (2, 4, 4) and float(prob.min()) >= 0 and float(prob.max()) <= 1


def test_bands_strict_and_inclusive() -> None:
    maps = np.array([[[0.1, 0.3, 0.45], [0.6, 0.9, 0.05]]], np.float32)
    np.testing.assert_array_equal(bands(maps, 0.6, 0.3, strict=False), [[[0, 0, -1], [1, 1, 0]]])
    np.testing.assert_array_equal(bands(maps, 0.6, 0.1, strict=True), [[[-1, -1, -1], [-1, 1, 0]]])


def test_fit_separates_object_from_background_and_ignores_the_band() -> None:
    features, obj = _separable()
    labels = np.where(obj, 1, 0).astype(np.int8)
    labels[:, 2, 3] = -1  # an object cell left out of the fit
    head = ForegroundHead(["x"], [8], grid=6)
    stats = fit_head(head, features, labels, LocalizerConfig(cell_stride=1))
    assert stats["cells"] == 20 * (36 - 1)
    assert stats["positive_share"] == pytest.approx(8 / 35)
    prob = predict(head, features)
    assert (prob[obj] > 0.5).mean() > 0.95 and (prob[~obj] < 0.5).mean() > 0.95
    assert prob[:, 2, 3].min() > 0.5
    again = ForegroundHead(["x"], [8], grid=6)
    fit_head(again, features, labels, LocalizerConfig(cell_stride=1))
    assert torch.equal(again.fc.weight, head.fc.weight)  # deterministic: no seed involved


def test_cell_stride_reads_every_nth_cell() -> None:
    features, obj = _separable(n=4)
    labels = np.where(obj, 1, 0).astype(np.int8)
    stats = fit_head(ForegroundHead(["x"], [8], 6), features, labels, LocalizerConfig())
    assert stats["cells"] == 4 * 3 * 3


def test_bad_settings_and_one_class_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="only one class"):
        fit_head(
            ForegroundHead(["x"], [4], 3),
            np.ones((2, 3, 3, 4), np.float16),
            np.ones((2, 3, 3), np.int8),
            LocalizerConfig(cell_stride=1),
        )
    for bad, match in (
        ({"high": 0.2, "low": 0.5}, "low < high"),
        ({"cam_high": 1.2}, "cam_low < cam_high"),
        ({"rounds": -1}, "rounds"),
        ({"class_rounds": -1}, "class_rounds"),
        ({"class_min_images": 0}, "class_min_images"),
        ({"cam_source": "boxes"}, "cam_source"),
        ({"cell_stride": 0}, "cell_stride"),
    ):
        with pytest.raises(ValueError, match=match):
            LocalizerConfig(**bad)


def test_self_training_rounds_refit_on_arm_refined_maps() -> None:
    """Round 0 learns from CAM bands that cover only half the object; ARM on an image whose
    colours mark the whole object then teaches round 1 the rest."""
    n, side = 6, 8
    rng = np.random.default_rng(1)
    obj = np.zeros((n, side, side), bool)
    obj[:, 2:6, 2:6] = True
    part = np.zeros_like(obj)
    part[:, 2:6, 2:4] = True  # the "discriminative part" the CAM sees
    features = rng.normal(0, 0.2, (n, side, side, 4))
    features[..., 0] += np.where(obj, 1.0, -1.0)
    features[..., 1] += np.where(part, 1.0, 0.0)
    cams = np.where(part, 0.9, np.where(obj, 0.3, 0.0)).astype(np.float32)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[:, 8:24, 8:24] = 220
    data = TrainSplitMaps(features.astype(np.float16), cams, images)
    saved: list[str] = []
    head = ForegroundHead(["x"], [4], side)
    history = self_train(
        head,
        data,
        LocalizerConfig(rounds=1, cell_stride=1),
        PipelineConfig().arm,
        threads=1,
        checkpoint=lambda r, h: saved.append(r),
        progress=False,
    )
    assert [h["round"] for h in history] == [0, 1] and saved == ["round0", "round1"]
    assert history[0]["ignored_share"] > history[1]["ignored_share"]
    prob = predict(head, data.features)
    assert (prob[obj & ~part] > 0.5).mean() > 0.9  # the rest of the object, learnt in round 1
    assert (prob[~obj] < 0.5).mean() > 0.9


def test_graph_cut_seed_labels_round_0_on_its_arm_refinement() -> None:
    """With cam_source graphcut, round 0's map is the graph cut's eigenvector map, and its
    labels are ARM's refinement of it banded as later rounds are (high / low): a coarse,
    blurred cut over an image whose colours mark the object gives a clean object label."""
    n, side = 6, 8
    rng = np.random.default_rng(2)
    obj = np.zeros((n, side, side), bool)
    obj[:, 2:6, 2:6] = True
    features = rng.normal(0, 0.2, (n, side, side, 4))
    features[..., 0] += np.where(obj, 1.0, -1.0)
    yy, xx = np.mgrid[0:side, 0:side]
    blurred = np.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 8.0)  # no band of its own
    cut = np.broadcast_to(blurred / blurred.max(), (n, side, side)).astype(np.float32)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[:, 8:24, 8:24] = 220
    data = TrainSplitMaps(features.astype(np.float16), cut.copy(), images)
    cfg = LocalizerConfig(rounds=0, cell_stride=1, cam_source="graphcut")
    head = ForegroundHead(["x"], [4], side)
    history = self_train(head, data, cfg, PipelineConfig().arm, threads=1, progress=False)
    camlike = ForegroundHead(["x"], [4], side)
    cam_history = self_train(
        camlike,
        data,
        dataclasses.replace(cfg, cam_source="heads"),
        PipelineConfig().arm,
        threads=1,
        progress=False,
    )
    assert history[0]["ignored_share"] != cam_history[0]["ignored_share"]
    prob = predict(head, data.features)
    assert (prob[obj] > 0.5).mean() > 0.9 and (prob[~obj] < 0.5).mean() > 0.9


def _two_classes(
    n: int = 12, side: int = 6
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images of two classes; each holds its object (the class's own feature axis up) and a
    distractor that looks like the other class's object, which is background here."""
    rng = np.random.default_rng(2)
    classes = np.arange(n) % 2
    obj = np.zeros((n, side, side), bool)
    obj[:, 1:3, 1:4] = True
    distractor = np.zeros_like(obj)
    distractor[:, 4:6, 2:5] = True
    features = rng.normal(0, 0.2, (n, side, side, 4))
    for i, c in enumerate(classes):
        features[i, obj[i], c] += 1.0
        features[i, distractor[i], 1 - c] += 1.0
    return features.astype(np.float16), classes, obj, distractor


def test_class_maps_tell_a_class_from_its_look_alikes() -> None:
    """The class-agnostic layer cannot tell one class's object from the other's look-alike; a
    layer per class, fitted on its own images, can."""
    features, classes, obj, distractor = _two_classes()
    labels = np.where(obj, 1, 0).astype(np.int8)
    cfg = LocalizerConfig(cell_stride=1)
    head = ForegroundHead(["x"], [4], 6, classes=2)
    fit_head(head, features, labels, cfg)
    stats = fit_class_maps(head, features, labels, classes, cfg)
    assert [s["cells"] for s in stats] == [6 * 36, 6 * 36]
    agnostic, own = predict(head, features), predict(head, features, classes)
    assert (own[obj] > 0.5).mean() > 0.95 and (own[distractor] < 0.5).mean() > 0.95
    assert (agnostic[distractor] > 0.5).mean() > 0.3  # fooled by the look-alikes
    background_only = np.where(classes[:, None, None] == 1, 0, labels).astype(np.int8)
    with pytest.raises(ValueError, match="class map 1: the pseudo labels hold only one class"):
        fit_class_maps(head, features, background_only, classes, cfg)
    with torch.no_grad():
        every = torch.sigmoid(head.class_fc(torch.from_numpy(features.astype(np.float32))))
    np.testing.assert_allclose(every.numpy()[np.arange(12), ..., classes], own, atol=1e-5)


def test_class_rounds_follow_the_class_agnostic_rounds() -> None:
    features, classes, obj, _ = _two_classes()
    cams = np.where(obj, 0.9, 0.0).astype(np.float32)
    images = np.zeros((len(features), 24, 24, 3), np.uint8)
    images[:, 4:12, 4:16] = 220  # the objects' cells (4 px each) are bright
    data = TrainSplitMaps(features, cams, images)
    saved: list[str] = []
    head = ForegroundHead(["x"], [4], 6, classes=2)
    cfg = LocalizerConfig(rounds=1, class_rounds=2, cell_stride=1)
    history = self_train(
        head, data, cfg, PipelineConfig().arm, classes=classes, threads=1,
        checkpoint=lambda name, h: saved.append(name), progress=False,
    )  # fmt: skip
    assert saved == ["round0", "round1", "class-round0", "class-round1"]
    assert [h["class_maps"] for h in history] == [False, False, True, True]
    assert history[-1]["classes"] == 2
    own = predict(head, features, classes)
    assert (own[obj] > 0.5).mean() > 0.9 and (own[~obj] < 0.5).mean() > 0.9
    with pytest.raises(ValueError, match="class index of every train image"):
        self_train(head, data, cfg, PipelineConfig().arm, progress=False)


def test_class_rounds_label_the_blend_with_the_class_cam() -> None:
    """Round 0's CAM calls both the object and the look-alike of the other class foreground;
    without the class CAM the class layers learn the look-alike too, with it they do not."""
    features, classes, obj, distractor = _two_classes()
    cams = np.where(obj | distractor, 0.9, 0.0).astype(np.float32)
    images = np.zeros((len(features), 24, 24, 3), np.uint8)
    images[np.kron(obj, np.ones((4, 4), bool))] = 220
    images[np.kron(distractor, np.ones((4, 4), bool))] = (40, 160, 90)
    own_cam = np.kron(obj, np.ones((4, 4))).astype(np.float16)  # the class CAM: its object only
    data = TrainSplitMaps(features, cams, images)
    cfg = LocalizerConfig(rounds=1, class_rounds=2, cell_stride=1)
    arm = PipelineConfig().arm
    maps = {}
    for name, blend in (("alone", None), ("blended", own_cam)):
        head = ForegroundHead(["x"], [4], 6, classes=2)
        self_train(
            head, data, cfg, arm, classes=classes, class_cams=blend, threads=1, progress=False
        )
        maps[name] = predict(head, features, classes)
    assert (maps["alone"][distractor] > 0.5).mean() > 0.9
    assert (maps["blended"][distractor] < 0.5).mean() > 0.9
    assert (maps["blended"][obj] > 0.5).mean() > 0.9
    with pytest.raises(ValueError, match="one work-size map per train image"):
        self_train(
            head, data, cfg, arm, classes=classes, class_cams=own_cam[:, :12], progress=False
        )


def test_rounds_label_the_blend_with_the_cam() -> None:
    """Round 0's map calls a distractor (a feature of its own, another colour) foreground; the
    class-agnostic rounds keep learning it from ARM on their own maps, not from ARM on the
    maps blended with a CAM that sees the object only."""
    n, side = 8, 6
    rng = np.random.default_rng(3)
    obj = np.zeros((n, side, side), bool)
    obj[:, 1:3, 1:4] = True
    distractor = np.zeros_like(obj)
    distractor[:, 4:6, 2:5] = True
    features = rng.normal(0, 0.2, (n, side, side, 3))
    features[obj, 0] += 1.0
    features[distractor, 1] += 1.0
    images = np.zeros((n, 24, 24, 3), np.uint8)
    images[np.kron(obj, np.ones((4, 4), bool))] = 220
    images[np.kron(distractor, np.ones((4, 4), bool))] = (40, 160, 90)
    cams = np.where(obj | distractor, 0.9, 0.0).astype(np.float32)
    data = TrainSplitMaps(features.astype(np.float16), cams, images)
    object_cam = np.kron(obj, np.ones((4, 4))).astype(np.float16)
    cfg = LocalizerConfig(rounds=2, cell_stride=1)
    arm = PipelineConfig().arm
    maps = {}
    for name, blend in (("alone", None), ("blended", object_cam)):
        head = ForegroundHead(["x"], [3], side)
        self_train(head, data, cfg, arm, cams=blend, threads=1, progress=False)
        maps[name] = predict(head, data.features)
    assert (maps["alone"][distractor] > 0.5).mean() > 0.9
    assert (maps["blended"][distractor] < 0.5).mean() > 0.9
    assert (maps["blended"][obj] > 0.5).mean() > 0.9
    with pytest.raises(ValueError, match="cams must be one work-size map per train image"):
        self_train(head, data, cfg, arm, cams=object_cam[:, :12], progress=False)


def test_work_size_cams_upsample_the_round_0_maps() -> None:
    """A ramp across the grid stays that ramp at the work size: each inner cell's 4 x 4 pixels
    average to the cell's value (the blend then reads the CAM the pipeline would)."""
    ramp = np.linspace(0.0, 1.0, 6, dtype=np.float32)
    cams = np.stack([np.broadcast_to(ramp, (6, 6)), np.broadcast_to(ramp[:, None], (6, 6))])
    data = TrainSplitMaps(
        np.zeros((2, 6, 6, 2), np.float16), cams, np.zeros((2, 24, 24, 3), np.uint8)
    )
    got = work_size_cams(data)
    assert got.shape == (2, 24, 24) and got.dtype == np.float16
    cells = got.astype(np.float32).reshape(2, 6, 4, 6, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(cells[:, 1:-1, 1:-1], cams[:, 1:-1, 1:-1], atol=1e-3)


def test_class_cams_are_the_pipeline_cams_of_the_own_class() -> None:
    heads = Heads(HeadsConfig("efficientnet_lite0", 384, "head", "blocks.4", 16, 16, 3))
    grid = np.random.default_rng(0).normal(size=(4, 5, 5, 16))
    classes = np.array([0, 2, 1, 2])
    cam = PipelineConfig().cam
    cam = dataclasses.replace(cam, size=40)
    got = class_cams(heads, grid.astype(np.float16), classes, cam, chunk=3)
    assert got.shape == (4, 40, 40) and got.dtype == np.float16
    with torch.no_grad():
        raw, logits = heads.cam(torch.from_numpy(grid.astype(np.float16).astype(np.float32)))
    for i, c in enumerate(classes):
        want = cam_map(raw[i].numpy(), logits[i].numpy(), cam, int(c)).map
        np.testing.assert_allclose(got[i], want, atol=2e-3)


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
    head = empty_head(backbone, config, None)
    assert head.layers == ("blocks.2", "blocks.4", "blocks.6") and head.grid == 8
    assert head.dims == (40, 112, 320)
    torch.nn.init.normal_(head.fc.weight)
    heads = with_foreground(Heads(heads_cfg), head)
    save_heads(heads, tmp_path / "heads.pt", extra={"dataset": {"kind": "cub"}})
    loaded, _ = load_heads(tmp_path / "heads.pt")
    assert loaded.config.foreground_layers == ["blocks.2", "blocks.4", "blocks.6"]
    assert loaded.config.foreground_grid == 8
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
        expected = loaded.foreground(backbone(torch.from_numpy(images))["stages"]).numpy()
    assert got.shape == (2, 8, 8)
    assert np.abs(got - expected).max() <= 1e-4


def test_class_maps_export_with_parity(tmp_path: Path) -> None:
    config = default_config("efficientnet_lite0", 64)
    backbone = build_backbone(config, random_init=True)
    heads_cfg = heads_config_for(
        backbone, config, num_classes=3, class_ids=[1, 2, 3], class_names=["a", "b", "c"],
        teacher_hidden=0,
    )  # fmt: skip
    torch.manual_seed(0)
    head = empty_head(backbone, config, None, classes=3)
    torch.nn.init.normal_(head.class_fc.weight)
    save_heads(with_foreground(Heads(heads_cfg), head), tmp_path / "heads.pt")
    loaded, _ = load_heads(tmp_path / "heads.pt")
    assert loaded.config.foreground_classes == 3
    torch.save(backbone.model.state_dict(), tmp_path / "weights.pth")
    out = export_bundle(
        tmp_path / "b", input_size=64, weights=str(tmp_path / "weights.pth"),
        heads_path=str(tmp_path / "heads.pt"),
    )  # fmt: skip
    bundle = Bundle.load(out)
    assert bundle.outputs[-2:] == ["foreground", "foreground_classes"]
    images = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)
    got = bundle.session(device="cpu").run(images)
    with torch.no_grad():
        agnostic, maps = loaded.foreground.maps(backbone(torch.from_numpy(images))["stages"])
    assert got["foreground_classes"].shape == (2, 3, 8, 8)
    assert np.abs(got["foreground_classes"] - maps.numpy()).max() <= 1e-4
    assert np.abs(got["foreground"] - agnostic.numpy()).max() <= 1e-4


def test_class_maps_must_match_the_classes() -> None:
    config = default_config("efficientnet_lite0", 64)
    backbone = build_backbone(config, random_init=True)
    base = heads_config_for(backbone, config, num_classes=3, teacher_hidden=0)
    with pytest.raises(HeadsError, match="foreground_classes must be 0 or num_classes"):
        dataclasses.replace(
            base, foreground_layers=["blocks.2"], foreground_dims=[40], foreground_grid=8,
            foreground_classes=2,
        )  # fmt: skip


def test_unknown_layer_is_refused() -> None:
    config = default_config("efficientnet_lite0", 64)
    backbone = build_backbone(config, random_init=True)
    with pytest.raises(ValueError, match=r"no layer 'blocks\.9'"):
        empty_head(backbone, config, ("blocks.9",))


def test_the_cache_key_names_what_labels_round_0() -> None:
    """The cached round-0 maps come from the trained heads' CAM (cam_source heads) or the
    graph cut: other heads, or another source, is another cache."""
    from lcar_deploy.datasets import Dataset
    from lcar_deploy.training.localizer import _cache_key

    data = Dataset("cub", Path("/data"), "train", [], [1, 2], ["a", "b"], Path("/data"))
    config = default_config("efficientnet_lite0", 96)
    head = ForegroundHead(["x"], [4], 12)
    heads_cfg = HeadsConfig(
        backbone="efficientnet_lite0",
        input_size=96,
        grid_layer="head",
        affinity_layer="blocks.4",
        grid_dim=8,
        global_dim=8,
        num_classes=2,
    )
    torch.manual_seed(0)
    first, second = Heads(heads_cfg), Heads(heads_cfg)
    on_heads = LocalizerConfig(cam_source="heads")

    def key(cfg: LocalizerConfig, heads: Heads | None) -> str:
        return _cache_key(data, config, None, head, cfg, 224, heads)

    assert key(on_heads, first) == key(on_heads, first)
    assert key(on_heads, first) != key(on_heads, second)
    on_cut = LocalizerConfig(cam_source="graphcut")
    assert key(on_cut, first) == key(on_cut, second) != key(on_heads, first)
