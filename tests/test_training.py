"""SD-CAM training: the loss (eq. 6) by hand, the split, overfitting a tiny set, export parity."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcar_deploy.bundle import Bundle
from lcar_deploy.config import preset, resolve_config, settings_of
from lcar_deploy.errors import SettingError
from lcar_deploy.export.exporter import export_bundle
from lcar_deploy.image_io import load_rgb
from lcar_deploy.models.backbones import BackboneConfig
from lcar_deploy.models.heads import load_heads
from lcar_deploy.models.model import build_model
from lcar_deploy.threads import MAX_THREADS
from lcar_deploy.training.config import MAP_SETTINGS, LocalizerConfig
from lcar_deploy.training.features import ViewSpec, make_view
from lcar_deploy.training.losses import SdLossConfig, distillation_kl, sd_losses
from lcar_deploy.training.train import TrainConfig, stratified_split, train, train_and_export


def test_sd_loss_matches_hand_computation() -> None:
    """z_t = [1, 0], z_s = [0, 1], y = 0, alpha 0.3, T 3.

    S(z_t/3) = [s, 1 - s], S(z_s/3) = [1 - s, s] with s = sigmoid(1/3), and
    log(s / (1 - s)) = 1/3, so KL = (2s - 1) / 3 = tanh(1/6) / 3 = 0.0550468 (no T^2);
    CE_s = log(1 + e) = 1.3132617, CE_t = log(1 + 1/e) = 0.3132617;
    L_student = 0.3 * 1.3132617 + 0.7 * 0.0550468 = 0.4325113.
    """
    zt = torch.tensor([[1.0, 0.0]], requires_grad=True)
    zs = torch.tensor([[0.0, 1.0]], requires_grad=True)
    losses = sd_losses(zt, zs, torch.tensor([0]), SdLossConfig(alpha=0.3, temperature=3.0))
    assert losses["kl"].item() == pytest.approx(0.0550468, abs=1e-7)
    assert losses["student_ce"].item() == pytest.approx(1.3132617, abs=1e-7)
    assert losses["teacher_ce"].item() == pytest.approx(0.3132617, abs=1e-7)
    assert losses["student"].item() == pytest.approx(0.4325113, abs=1e-7)
    assert losses["total"].item() == pytest.approx(0.7457730, abs=1e-7)
    # the teacher is trained by CE only: no gradient reaches it through the KL term
    losses["student"].backward()
    assert zt.grad is None or torch.count_nonzero(zt.grad) == 0
    assert torch.count_nonzero(zs.grad) == 2


def test_kl_zero_for_equal_logits_and_batch_mean() -> None:
    z = torch.randn(5, 7)
    assert distillation_kl(z, z.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    per_sample = [distillation_kl(a[i : i + 1], b[i : i + 1], 2.0) for i in range(4)]
    assert distillation_kl(a, b, 2.0).item() == pytest.approx(float(sum(per_sample) / 4), rel=1e-5)


def test_stratified_split_is_seeded_and_per_class() -> None:
    labels = np.repeat(np.arange(5), 30)
    train_idx, val_idx = stratified_split(labels, 0.1, seed=3)
    assert len(val_idx) == 15 and len(train_idx) == 135
    assert np.bincount(labels[val_idx]).tolist() == [3] * 5
    assert not set(train_idx) & set(val_idx)
    again = stratified_split(labels, 0.1, seed=3)
    np.testing.assert_array_equal(val_idx, again[1])
    assert len(stratified_split(labels, 0.0, seed=0)[1]) == 0


def test_views() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    plain = make_view(rgb, 32, 0, (0, 0, 0))
    np.testing.assert_array_equal(make_view(rgb, 32, 1, (0, 0, 1)), plain[:, :, ::-1])
    crop = make_view(rgb, 32, 2, (0, 0, 2))
    assert crop.shape == (3, 32, 32) and crop.dtype == np.float32
    np.testing.assert_array_equal(crop, make_view(rgb, 32, 2, (0, 0, 2)))
    assert ViewSpec("crop", crop_views=3).num_views == 5
    with pytest.raises(ValueError, match="augment"):
        ViewSpec("mixup")


def _synthetic_wsol(root: Path, per_class: int = 4) -> None:
    """3 classes of 48 px images (red square / green disc / blue stripes on noise)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    shapes = [
        (abs(xx - 24) < 12) & (abs(yy - 24) < 12),
        (xx - 24) ** 2 + (yy - 24) ** 2 < 144,
        (xx // 6) % 2 == 0,
    ]
    ids, labels = [], []
    for cls, shape in enumerate(shapes):
        for i in range(per_class):
            image = rng.integers(0, 80, size=(48, 48, 3), dtype=np.uint8)
            image[shape, cls] = 230
            rel = f"img/c{cls}_{i}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / rel)
            ids.append(rel)
            labels.append(f"{rel},{10 + cls}")
    meta = root / "metadata" / "train"
    meta.mkdir(parents=True)
    (meta / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (meta / "class_labels.txt").write_text("\n".join(labels) + "\n")


@pytest.mark.slow
def test_training_overfits_tiny_set_and_exports_with_parity(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _synthetic_wsol(data)
    config = TrainConfig(
        dataset="wsol",
        root=data,
        out=tmp_path / "run",
        input_size=64,
        epochs=40,
        lr=3e-3,
        batch_size=4,
        teacher_hidden=16,
        val_fraction=0.0,
        cache_dir=tmp_path / "cache",
        checkpoint_every=20,
        threads=1,
        progress=False,
        foreground=False,
    )
    result = train(config)
    history = result.metrics["history"]
    assert history[-1]["train"]["top1_teacher"] == 100.0
    assert history[-1]["train"]["top1_student"] == 100.0
    assert history[-1]["train"]["total"] < 0.5 * history[0]["train"]["total"]
    assert result.metrics["top1"]["val"] is None and result.metrics["top1"]["test"] is None
    assert json.loads(result.metrics_path.read_text())["num_images"]["train"] == 12
    assert result.plot_path.stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "epoch_020.pt",
        "epoch_040.pt",
    ]
    heads, extra = load_heads(result.heads_path)
    assert heads.config.class_ids == [10, 11, 12] and heads.config.teacher_hidden == 16
    assert extra["dataset"]["kind"] == "wsol" and extra["training"]["alpha"] == 0.3

    # second run: the cached features are reused, the backbone is not even built
    again = train(config)
    assert again.metrics["cache"]["backbone_built"] is False
    assert again.metrics["history"][-1]["train"] == history[-1]["train"]

    bundle_dir = export_bundle(tmp_path / "bundle", heads_path=str(result.heads_path))
    bundle = Bundle.load(bundle_dir)
    assert bundle.class_ids == [10, 11, 12] and bundle.input_size == 64
    images = np.stack(
        [make_view(load_rgb(data / f"img/c{c}_0.png"), 64, 0, (0,)) for c in range(3)]
    )
    onnx_out = bundle.session(device="cpu").run(images)
    model = build_model(BackboneConfig("efficientnet_lite0", 64, "head", "blocks.4"), None, heads)
    with torch.no_grad():
        torch_out = dict(zip(model.output_names, model(torch.from_numpy(images)), strict=True))
    for name in ("logits", "cam_logits", "cams"):
        np.testing.assert_allclose(onnx_out[name], torch_out[name].numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_undecodable_images_are_skipped_up_to_a_share(tmp_path: Path) -> None:
    from lcar_deploy.datasets import DatasetError

    data = tmp_path / "data"
    _synthetic_wsol(data, per_class=3)
    (data / "img" / "c0_bad.png").write_bytes(b"not an image")
    meta = data / "metadata" / "train"
    for name, line in (
        ("image_ids.txt", "img/c0_bad.png"),
        ("class_labels.txt", "img/c0_bad.png,10"),
    ):
        with (meta / name).open("a") as f:
            f.write(line + "\n")
    common = dict(
        dataset="wsol", root=data, input_size=64, epochs=2, batch_size=4, teacher_hidden=0,
        val_fraction=0.0, cache_dir=tmp_path / "cache", threads=1, progress=False,
    )  # fmt: skip
    result = train(TrainConfig(out=tmp_path / "run", max_bad_share=0.1, **common))
    assert result.metrics["num_images"]["train"] == 9
    skipped = result.metrics["skipped_images"]["train"]
    assert [s["image_id"] for s in skipped] == ["img/c0_bad.png"]
    assert "cannot decode image" in skipped[0]["error"]
    # a share under one bad image in ten: an error naming it, from the cache as well
    with pytest.raises(DatasetError, match=r"1 of 10 images cannot be decoded.*c0_bad\.png"):
        train(TrainConfig(out=tmp_path / "run2", max_bad_share=0.05, **common))


@pytest.mark.slow
def test_foreground_rounds_are_trained_saved_and_exported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _synthetic_wsol(data, per_class=2)
    config = TrainConfig(
        dataset="wsol",
        root=data,
        out=tmp_path / "run",
        input_size=64,
        epochs=2,
        batch_size=4,
        teacher_hidden=0,
        val_fraction=0.0,
        cache_dir=tmp_path / "cache",
        threads=1,
        progress=False,
        foreground=True,
        foreground_rounds=1,
        foreground_class_maps=True,  # two images per class: on only when asked
    )
    result = train(config)
    fg = result.metrics["foreground"]
    assert [r["round"] for r in fg["rounds_history"]] == [0, 1, 0, 1, 2]
    assert [r["class_maps"] for r in fg["rounds_history"]] == [False, False, True, True, True]
    assert fg["class_maps"] and fg["fewest_images_per_class"] == 2
    assert fg["class_rounds_on_cam_blend"]  # the bundle's ARM refines the class CAM blend
    assert not fg["rounds_on_cam_blend"]  # the class-agnostic rounds only seed the class rounds
    assert fg["layers"] == ["blocks.2", "blocks.4", "blocks.6"] and fg["grid"] == 8
    assert fg["images"] == 6 and fg["cam_source"] == "imagenet"
    assert sorted(p.name for p in (tmp_path / "run").glob("foreground-*.pt")) == [
        "foreground-class-round0.pt",
        "foreground-class-round1.pt",
        "foreground-class-round2.pt",
        "foreground-round0.pt",
        "foreground-round1.pt",
    ]
    heads, extra = load_heads(result.heads_path)
    last = torch.load(tmp_path / "run" / "foreground-class-round2.pt", weights_only=True)
    assert torch.equal(heads.foreground.fc.weight, last["fc.weight"])
    assert torch.equal(heads.foreground.class_fc.weight, last["class_fc.weight"])
    assert heads.config.foreground_classes == 3
    assert extra["settings"]["arm_input"] == "class_foreground_cam"
    bundle = Bundle.load(export_bundle(tmp_path / "bundle", heads_path=str(result.heads_path)))
    assert bundle.outputs[-2:] == ["foreground", "foreground_classes"]
    assert list(tmp_path.joinpath("cache").glob("localizer-wsol-train-*.done"))
    # without class maps, a bundle that refines the blend labels its rounds on it
    blended = dataclasses.replace(
        config, out=tmp_path / "run2", foreground_class_maps=False, arm_input="foreground_cam"
    )
    fg = train(blended).metrics["foreground"]
    assert fg["rounds_on_cam_blend"] and not fg["class_maps"]
    assert [r["round"] for r in fg["rounds_history"]] == [0, 1]


@pytest.mark.slow
def test_training_on_an_image_folder_with_a_test_split(tmp_path: Path) -> None:
    """ImageFolder with train/ and test/: classes from the folder names, test top-1 reported,
    and a CSV list trains the same heads' classes."""
    data = tmp_path / "data"
    _synthetic_wsol(data, per_class=3)
    folder = tmp_path / "folder"
    names = {10: "square", 11: "disc", 12: "stripes"}
    lines = []
    for path in sorted((data / "img").iterdir()):
        cls = 10 + int(path.name[1])
        split = "test" if path.stem.endswith("_2") else "train"
        (folder / split / names[cls]).mkdir(parents=True, exist_ok=True)
        (folder / split / names[cls] / path.name).symlink_to(path)
        lines.append(f"{path},{names[cls]}")
    common = dict(
        input_size=64, epochs=2, batch_size=4, teacher_hidden=0, val_fraction=0.0,
        cache_dir=tmp_path / "cache", threads=1, progress=False,
    )  # fmt: skip
    result = train(TrainConfig(dataset="folder", root=folder, out=tmp_path / "run", **common))
    heads, extra = load_heads(result.heads_path)
    assert heads.config.class_names == ["disc", "square", "stripes"]
    assert heads.config.class_ids == [0, 1, 2]
    assert result.metrics["num_images"] == {"train": 6, "val": 0, "test": 3}
    assert extra["dataset"]["kind"] == "folder"
    # two train images per class: no class maps by default
    assert not result.metrics["foreground"]["class_maps"] and not heads.foreground.classes
    assert extra["settings"].get("arm_input") is None
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    listed = train(
        TrainConfig(dataset="csv", root=tmp_path / "list.csv", out=tmp_path / "csv", **common)
    )
    assert load_heads(listed.heads_path)[0].config.class_names == ["disc", "square", "stripes"]
    assert listed.metrics["num_images"]["train"] == 9 and listed.metrics["top1"]["test"] is None


@pytest.mark.slow
def test_train_exports_a_bundle_whose_graph_cut_is_a_second_backbones(tmp_path: Path) -> None:
    """``train --affinity-backbone``: training is the first backbone's; the bundle's graph cut
    reads DINOv2's keys and its ARM map is fused with that cut."""
    from lcar_deploy.pipeline import Localizer

    data = tmp_path / "data"
    _synthetic_wsol(data, per_class=3)
    folder = tmp_path / "folder"
    for path in sorted((data / "img").iterdir()):
        (folder / "train" / f"c{path.name[1]}").mkdir(parents=True, exist_ok=True)
        (folder / "train" / f"c{path.name[1]}" / path.name).symlink_to(path)
    train_and_export(
        "folder", folder, tmp_path / "run", bundle=tmp_path / "bundle",
        affinity_backbone="dinov2_vits14", affinity_input_size=56,
        input_size=64, epochs=1, batch_size=4, teacher_hidden=0, val_fraction=0.0,
        foreground=False, cache_dir=tmp_path / "cache", threads=1, progress=False,
    )  # fmt: skip
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.manifest["affinity_backbone"] == {"name": "dinov2_vits14", "input_size": 56}
    assert bundle.manifest["affinity_size"] == [4, 4]
    assert bundle.settings["fusion"]["weight"] == 0.5
    localizer = Localizer(bundle, threads=1)
    assert localizer.fuses
    image = np.asarray(Image.open(next((data / "img").iterdir())).convert("RGB"))
    result = localizer.run_methods([image], methods=("arm",))["arm"][0]
    assert "graph_cut" in result.timings_ms


def test_bundle_settings_pick_arm_input_by_dataset() -> None:
    ilsvrc = TrainConfig("ilsvrc", "r", "o").bundle_settings()
    assert ilsvrc == {"arm_input": "foreground_cam", **MAP_SETTINGS["foreground_cam"]}
    assert TrainConfig("ilsvrc", "r", "o", foreground=False).bundle_settings() == {}
    assert TrainConfig("cub", "r", "o").bundle_settings() == MAP_SETTINGS["foreground"]
    assert TrainConfig("cub", "r", "o", arm_input="cam").bundle_settings() == {"arm_input": "cam"}
    for dataset in ("ilsvrc", "cub"):  # class maps, whatever the dataset
        assert TrainConfig(dataset, "r", "o").bundle_settings(class_maps=True) == {
            "arm_input": "class_foreground_cam",
            **MAP_SETTINGS["class_foreground_cam"],
        }
    for settings in MAP_SETTINGS.values():  # every value is a valid pipeline setting
        resolve_config(settings_of(preset("default")), settings=settings)
    with pytest.raises(ValueError, match="setting arm_input: must be one of"):
        TrainConfig("cub", "r", "o", arm_input="edges")


def test_trained_bundles_default_to_the_backbones_trained_input_size() -> None:
    from lcar_deploy.models.backbones import backbone_spec

    lite0 = backbone_spec("efficientnet_lite0")
    assert lite0.trained_input_size is not None and lite0.trained_input_size > lite0.input_size
    assert TrainConfig("cub", "r", "o").backbone_config().input_size == lite0.trained_input_size
    assert TrainConfig("cub", "r", "o", input_size=320).backbone_config().input_size == 320
    lite1 = TrainConfig("cub", "r", "o", backbone="efficientnet_lite1").backbone_config()
    assert lite1.input_size == backbone_spec("efficientnet_lite1").input_size
    dino = TrainConfig("cub", "r", "o", backbone="dino_vits16").backbone_config()
    assert dino.input_size == backbone_spec("dino_vits16").input_size == 224


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("lr", float("inf"), r"lr: must be a finite number in \(0, 1\], got inf"),
        ("lr", float("nan"), r"lr: must be a finite number in \(0, 1\], got nan"),
        ("lr", 0.0, r"lr: must be a finite number in \(0, 1\], got 0\.0"),
        ("lr", "0.01", r"lr: must be a finite number in \(0, 1\], got '0\.01'"),
        ("weight_decay", float("nan"), r"weight_decay: must be a finite number in \[0, 1\]"),
        ("alpha", 1.5, r"alpha: must be a finite number in \[0, 1\], got 1\.5"),
        ("temperature", float("inf"), r"temperature: must be a finite number in \[0\.01, 100\]"),
        ("temperature", 1e-30, r"temperature: must be a finite number in \[0\.01, 100\]"),
        ("val_fraction", 1.0, r"val_fraction: must be a finite number in \[0, 1\), got 1\.0"),
        ("max_bad_share", float("nan"), r"max_bad_share: must be a finite number in \[0, 1\)"),
        ("epochs", 0, r"epochs: must be at least 1 and at most 10000, got 0"),
        ("epochs", 10**9, r"epochs: must be at least 1 and at most 10000, got 1000000000"),
        ("epochs", True, r"epochs: must be an integer, got True"),
        ("batch_size", 2.0, r"batch_size: must be an integer, got 2\.0"),
        ("crop_views", 0, r"crop_views: must be at least 1"),
        ("workers", -1, r"workers: must be at least 0"),
        ("seed", -1, r"seed: must be at least 0"),
        ("teacher_hidden", -1, r"teacher_hidden: must be at least 0"),
        ("foreground_rounds", -1, r"foreground_rounds: must be at least 0"),
        ("threads", 10**6, rf"threads: must be an integer from 1 to {MAX_THREADS}, got 1000000"),
        ("threads", -1, rf"threads: must be an integer from 1 to {MAX_THREADS}, got -1"),
        ("input_size", 100_000, r"input_size: must be an integer from 32 to 2048, got 100000"),
        ("input_size", 2080, r"input_size: must be an integer from 32 to 2048, got 2080"),
        ("input_size", 0, r"input_size: must be an integer from 32 to 2048, got 0"),
    ],
)
def test_hyper_parameters_are_checked_when_the_config_is_made(
    option: str, value: object, message: str
) -> None:
    with pytest.raises(SettingError, match=f"^setting {message}"):
        TrainConfig("cub", "r", "o", **{option: value})


def test_train_refuses_bad_hyper_parameters_before_reading_anything(tmp_path: Path) -> None:
    """The dataset root does not exist: a check made later would say so instead."""
    with pytest.raises(SettingError, match="setting lr: must be a finite number"):
        train_and_export("folder", tmp_path / "nowhere", tmp_path / "out", lr=float("inf"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0, got nan"):
        LocalizerConfig(l2=float("nan"))


def test_a_feature_cache_that_is_no_folder_is_refused_first(tmp_path: Path) -> None:
    from lcar_deploy.errors import OutputError

    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    config = TrainConfig(
        "cub", tmp_path / "no-data", tmp_path / "out", cache_dir=blocker, progress=False
    )
    with pytest.raises(OutputError, match=r"cache: the feature cache \(--cache-dir\) cannot be"):
        train(config)
    with pytest.raises(OutputError, match=r"features: .* cannot be used: Not a directory"):
        train(dataclasses.replace(config, cache_dir=blocker / "features"))
