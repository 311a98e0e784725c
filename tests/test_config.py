"""Settings are checked when the configuration is built, before any image is read.

``PipelineConfig.from_settings`` (bundle manifests, ``--settings``) and the stage configs refuse a
bad type, range or relation and an unknown key with a ValueError naming the setting by its
dotted name; ``localize`` / ``eval`` then exit 1 without reading an image.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import FAST, invoke
from PIL import Image

from lcar_deploy import cli
from lcar_deploy import localize as localize_module
from lcar_deploy.bundle import Bundle
from lcar_deploy.config import (
    PipelineConfig,
    parse_settings,
    preset,
    resolve_config,
    settings_of,
)
from lcar_deploy.names import PRESETS
from lcar_deploy.pipeline import Localizer
from lcar_deploy.stages.arm import AFA_DILATIONS, ArmConfig
from lcar_deploy.stages.cam import CamConfig
from lcar_deploy.stages.graph_cut import GraphCutConfig
from lcar_deploy.stages.sgrm import PAPER_CUB, SgrmConfig

# (settings, dotted name the message must contain, a further part of the message)
BAD_SETTINGS: list[tuple[dict[str, Any], str, str]] = [
    ({"work_size": 100000}, "work_size", "in [32, 1024], got 100000"),
    ({"work_size": 16}, "work_size", "in [32, 1024]"),
    ({"work_size": "abc"}, "work_size", 'must be an integer, got "abc"'),
    ({"work_size": 224.0}, "work_size", "must be an integer"),
    ({"work_size": True}, "work_size", "must be an integer, got true"),
    ({"method": "crf"}, "method", "one of cam, graphcut, arm, lcar"),
    ({"arm_input": "edges"}, "arm_input", "one of auto, graphcut, cam, foreground"),
    ({"arm_backend": "gpu"}, "arm_backend", "one of auto, cuda, cpp, reference"),
    ({"sgrm_device": "gpu"}, "sgrm_device", "cpu, cuda or cuda:N"),
    ({"sgrm_device": 0}, "sgrm_device", "must be a string"),
    ({"sgrm_seed": 1.5}, "sgrm_seed", "must be an integer"),
    ({"sgrm_seed": -1}, "sgrm_seed", "got -1"),
    ({"sgrm_seed": 3, "sgrm": {"init": "data"}}, "sgrm_seed", 'sgrm.init is "data"'),
    ({"sgrm": {"init": "pca"}}, "sgrm.init", "one of random, data"),
    ({"box_threshold": "x"}, "box_threshold", 'must be a finite number, got "x"'),
    ({"box_threshold": 1.0}, "box_threshold", "in [0, 1), got 1"),
    ({"box_threshold": -0.1}, "box_threshold", "in [0, 1)"),
    ({"flip": "yes"}, "flip", 'must be true or false, got "yes"'),
    ({"flip": 1}, "flip", "must be true or false, got 1"),
    ({"bogus": 1}, "bogus", "known: method, work_size"),
    ({"sgrm": 5}, "sgrm", "must be a JSON object, got 5"),
    ({"arm": None}, "arm", "must be a JSON object, got null"),
    ({"cam": [1]}, "cam", "must be a JSON object"),
    ({"sgrm": {"max_steps": -3}}, "sgrm.max_steps", "must be an integer >= 1, got -3"),
    ({"sgrm": {"max_steps": 0}}, "sgrm.max_steps", ">= 1"),
    ({"sgrm": {"max_steps": 10.0}}, "sgrm.max_steps", "must be an integer"),
    ({"sgrm": {"lr": math.nan}}, "sgrm.lr", "must be a finite number, got NaN"),
    ({"sgrm": {"lr": math.inf}}, "sgrm.lr", "finite"),
    ({"sgrm": {"lr": 0}}, "sgrm.lr", "> 0"),
    ({"sgrm": {"lr": "0.05"}}, "sgrm.lr", "must be a finite number"),
    ({"sgrm": {"momentum": 1.0}}, "sgrm.momentum", "in [0, 1)"),
    ({"sgrm": {"momentum": -0.5}}, "sgrm.momentum", "in [0, 1)"),
    ({"sgrm": {"stop_error": 0}}, "sgrm.stop_error", "in (0, 1]"),
    ({"sgrm": {"stop_error": 1.5}}, "sgrm.stop_error", "in (0, 1]"),
    ({"sgrm": {"gamma_l1": 0.8, "gamma_h1": 0.7}}, "sgrm.gamma_l1", "<= gamma_h1 (0.7), got 0.8"),
    ({"sgrm": {"gamma_l2": 0.9}}, "sgrm.gamma_l2", "<= gamma_h2 (0.75), got 0.9"),
    ({"sgrm": {"gamma_h1": 1.5}}, "sgrm.gamma_h1", "in [0, 1]"),
    ({"sgrm": {"gamma_l1": -0.1}}, "sgrm.gamma_l1", "in [0, 1]"),
    ({"sgrm": {"w1": -1}}, "sgrm.w1", ">= 0"),
    ({"sgrm": {"w3": math.nan}}, "sgrm.w3", "finite"),
    ({"sgrm": {"width": 0}}, "sgrm.width", "in [1, 256], got 0"),
    ({"sgrm": {"features": -1}}, "sgrm.features", "in [0, 64], got -1"),
    ({"sgrm": {"features": 2.5}}, "sgrm.features", "must be an integer"),
    ({"sgrm": {"train_stride": 0}}, "sgrm.train_stride", "in [1, 8], got 0"),
    ({"sgrm": {"train_stride": 9}}, "sgrm.train_stride", "in [1, 8]"),
    ({"sgrm": {"width": 100000}}, "sgrm.width", "in [1, 256]"),
    ({"sgrm": {"kernels": [3, 2]}}, "sgrm.kernels", "odd"),
    ({"sgrm": {"kernels": []}}, "sgrm.kernels", "1 to 8 entries"),
    ({"sgrm": {"kernels": 3}}, "sgrm.kernels", "must be a list of integers, got 3"),
    ({"sgrm": {"kernels": [3, 1.0]}}, "sgrm.kernels", "must be a list of integers"),
    ({"sgrm": {"kernels": [101]}}, "sgrm.kernels", "each in [1, 15]"),
    ({"sgrm": {"fz_scale": 0}}, "sgrm.fz_scale", "> 0"),
    ({"sgrm": {"fz_sigma": -1}}, "sgrm.fz_sigma", ">= 0"),
    ({"sgrm": {"fz_min_size": 0}}, "sgrm.fz_min_size", "must be an integer >= 1"),
    ({"sgrm": {"box_mode": "biggest"}}, "sgrm.box_mode", "one of largest, all"),
    ({"sgrm": {"stop_rule": "any"}}, "sgrm.stop_rule", "one of pooled, balanced"),
    ({"sgrm": {"cls_norm": "pixel"}}, "sgrm.cls_norm", "one of class, image"),
    ({"sgrm": {"mask_vote": "false"}}, "sgrm.mask_vote", "must be true or false"),
    ({"sgrm": {"steps": 10}}, "sgrm.steps", "known in sgrm: gamma_l1"),
    ({"arm": {"iterations": -1}}, "arm.iterations", ">= 0"),
    ({"arm": {"iterations": 2.5}}, "arm.iterations", "must be an integer"),
    ({"arm": {"eta": 1.5}}, "arm.eta", "in [0, 1]"),
    ({"arm": {"dilations": []}}, "arm.dilations", "1 to 16 entries"),
    ({"arm": {"dilations": list(range(1, 18))}}, "arm.dilations", "1 to 16 entries"),
    ({"arm": {"dilations": [0]}}, "arm.dilations", "each >= 1"),
    ({"arm": {"dilations": [1, 2.5]}}, "arm.dilations", "must be a list of integers"),
    ({"arm": {"dilations": "1,2"}}, "arm.dilations", "must be a list of integers"),
    ({"arm": {"w_rgb": 0}}, "arm.w_rgb", "> 0"),
    ({"arm": {"align_corners": "no"}}, "arm.align_corners", "true or false"),
    ({"arm": {"k": 5}}, "arm.k", "known in arm: eta"),
    ({"cam": {"beta": 2}}, "cam.beta", "in [0, 1]"),
    ({"cam": {"top_k": 0}}, "cam.top_k", ">= 1"),
    ({"cam": {"interpolation": "nearest"}}, "cam.interpolation", "one of cubic, bilinear"),
    ({"cam": {"size": 300}}, "cam.size", "set work_size"),
    ({"graph_cut": {"tau": 1}}, "graph_cut.tau", "in [-1, 1)"),
    ({"graph_cut": {"eps": 0}}, "graph_cut.eps", "in (0, 1)"),
    ({"graph_cut": {"solver": "lobpcg"}}, "graph_cut.solver", "one of eigh, normalized"),
]


@pytest.mark.parametrize(
    ("settings", "name", "detail"), BAD_SETTINGS, ids=[json.dumps(s) for s, _, _ in BAD_SETTINGS]
)
def test_bad_setting_is_refused_by_name(settings: dict[str, Any], name: str, detail: str) -> None:
    with pytest.raises(ValueError) as caught:
        PipelineConfig.from_settings(settings)
    message = str(caught.value)
    assert f"setting {name}:" in message or f"setting {name!r}" in message, message
    assert detail in message, message


def test_settings_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="setting settings: must be a JSON object"):
        PipelineConfig.from_settings([("flip", False)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: SgrmConfig(max_steps=-3), "max_steps"),
        (lambda: SgrmConfig(lr=float("nan")), "lr"),
        (lambda: SgrmConfig(gamma_l1=0.9), "gamma_l1"),
        (lambda: SgrmConfig(width=True), "width"),
        (lambda: ArmConfig(align_corners=1), "align_corners"),
        (lambda: CamConfig(size=0), "size"),
        (lambda: GraphCutConfig(eps=float("inf")), "eps"),
        (lambda: PipelineConfig(sgrm={"max_steps": 3}), "sgrm"),
        (lambda: PipelineConfig(flip="yes"), "flip"),
    ],
)
def test_stage_configs_check_their_fields_when_built_in_code(make: Any, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^setting {name}: "):
        make()


# (valid settings, the same settings with one value made bad): the line between them.
VALID_AND_BAD = [
    ({"flip": False}, {"flip": "false"}),
    ({"sgrm": {"gamma_h1": 0.8}}, {"sgrm": {"gamma_h1": 0.55}}),
    ({"arm": {"dilations": [1, 2]}}, {"arm": {"dilations": [1, 2, 0]}}),
    ({"work_size": 32}, {"work_size": 31}),
    ({"work_size": 1024}, {"work_size": 1025}),
    ({"box_threshold": 0}, {"box_threshold": 1}),
    ({"sgrm": {"momentum": 0}}, {"sgrm": {"momentum": 1}}),
    ({"sgrm": {"stop_error": 1}}, {"sgrm": {"stop_error": 0}}),
    ({"sgrm": {"kernels": [5, 3, 1], "width": 16}}, {"sgrm": {"kernels": [5, 4, 1]}}),
    ({"sgrm": {"gamma_l1": 0.7, "gamma_h1": 0.7}}, {"sgrm": {"gamma_l1": 0.71, "gamma_h1": 0.7}}),
    ({"sgrm_device": "cuda:1", "sgrm_seed": 7}, {"sgrm_device": "cuda:x"}),
    ({"arm": {"iterations": 0}}, {"arm": {"iterations": -1}}),
    ({"sgrm": {"lr": 1}}, {"sgrm": {"lr": -1}}),
]


@pytest.mark.parametrize(
    ("valid", "bad"), VALID_AND_BAD, ids=[json.dumps(v) for v, _ in VALID_AND_BAD]
)
def test_valid_settings_build_and_the_bad_neighbour_does_not(
    valid: dict[str, Any], bad: dict[str, Any]
) -> None:
    config = PipelineConfig.from_settings(valid)
    for key, value in valid.items():
        if isinstance(value, dict):
            for field_name, field_value in value.items():
                got = getattr(getattr(config, key), field_name)
                expected = tuple(field_value) if isinstance(field_value, list) else field_value
                assert got == expected
        else:
            assert getattr(config, key) == value
    with pytest.raises(ValueError, match="setting "):
        PipelineConfig.from_settings(bad)


def test_presets_round_trip_and_a_merged_relation_is_checked() -> None:
    assert PipelineConfig.from_settings({}) == PipelineConfig() == preset("default")
    assert PipelineConfig().arm.dilations == AFA_DILATIONS
    classifier = settings_of(preset("classifier"))
    assert classifier["method"] == "arm" and "size" not in classifier["cam"]
    assert "sgrm_device" not in classifier and "arm_backend" not in classifier
    assert settings_of(preset("paper"))["method"] == "lcar"
    assert resolve_config(settings_of(preset("paper")), method=None).method == "lcar"
    assert resolve_config(settings_of(preset("paper")), method="cam").method == "cam"
    config = PipelineConfig.from_settings(classifier, method="arm")
    assert config.sgrm == SgrmConfig(
        gamma_l1=0.25, gamma_l2=0.25, gamma_h1=0.5, gamma_h2=0.5, stop_error=0.005, box_mode="all"
    )
    for name in PRESETS:
        assert PipelineConfig.from_settings(settings_of(preset(name))) == preset(name)
    paper = preset("paper")
    assert paper.sgrm == PAPER_CUB and paper.arm_input == "graphcut" and not paper.flip
    assert PAPER_CUB.gamma_l1 == 0.1 and PAPER_CUB.stop_error == 0.1
    assert PAPER_CUB.features == 0 and PAPER_CUB.train_stride == 1  # RGB + map, every pixel
    with pytest.raises(ValueError, match=r"setting preset: must be one of default"):
        preset("fast")
    # --settings merges key by key into the bundle's table: 0.6 is above its gamma_h1 of 0.5.
    with pytest.raises(ValueError, match=r"setting sgrm\.gamma_l1: must be <= gamma_h1 \(0\.5\)"):
        resolve_config(classifier, settings='{"sgrm": {"gamma_l1": 0.6}}')
    # a preset replaces the bundle's settings
    assert resolve_config(classifier, preset_name="paper") == preset("paper")


def test_values_are_stored_as_python_scalars_and_tuples() -> None:
    config = PipelineConfig.from_settings(
        {"sgrm": {"lr": 1, "max_steps": np.int64(5), "kernels": [3, 1]}, "sgrm_seed": np.int32(3)}
    )
    assert type(config.sgrm.lr) is float and config.sgrm.lr == 1.0
    assert type(config.sgrm.max_steps) is int and type(config.sgrm_seed) is int
    assert config.sgrm.kernels == (3, 1)
    assert ArmConfig(dilations=[np.int64(1), 2]).dilations == (1, 2)
    assert type(ArmConfig(dilations=[np.int64(1)]).dilations[0]) is int


@pytest.mark.parametrize(
    ("key", "option"),
    [("method", "--method"), ("arm_backend", "--arm-backend"), ("sgrm_device", "--device")],
)
def test_settings_that_an_option_sets_are_refused(key: str, option: str) -> None:
    with pytest.raises(ValueError, match=rf"setting {key}: set it with {option}"):
        parse_settings(json.dumps({key: "cam" if key == "method" else "cpu"}))
    assert parse_settings(None) == {}


# --- the CLI: exit 1 before any image is read ---------------------------------------------------


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((40, 50, 3), 120, dtype=np.uint8)).save(folder / "a.png")
    return folder


@pytest.fixture
def no_image_read(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every image localize decodes is recorded here."""
    read: list[Path] = []
    monkeypatch.setattr(localize_module, "load_image", lambda path: read.append(path))
    return read


CLI_CASES = [
    ('{"work_size": 100000}', "setting work_size:"),
    ('{"sgrm": {"max_steps": -3}}', "setting sgrm.max_steps: must be an integer >= 1, got -3"),
    ('{"sgrm": {"lr": NaN}}', "setting sgrm.lr: must be a finite number, got NaN"),
    ('{"sgrm": {"gamma_l1": 0.6}}', "setting sgrm.gamma_l1: must be <= gamma_h1 (0.5)"),
    ('{"sgrm": 5}', "setting sgrm: must be a JSON object"),
    ('{"sgrm": {"width": 0}}', "setting sgrm.width:"),
    ('{"work_size": "abc"}', "setting work_size:"),
    ('{"sgrm": {"bogus": 1}}', "setting sgrm.bogus: unknown setting"),
    ('{"box_threshold": "x"}', "setting box_threshold:"),
    ('{"flip": "yes"}', "setting flip: must be true or false"),
    ('{"method": "cam"}', "setting method: set it with --method"),
    ('{"arm_backend": "cpp"}', "setting arm_backend: set it with --arm-backend"),
    ('{"sgrm_device": "cuda"}', "setting sgrm_device: set it with --device"),
]


@pytest.mark.parametrize(("settings", "message"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_localize_refuses_bad_settings_before_reading(
    settings: str,
    message: str,
    small_bundle: Path,
    images: Path,
    tmp_path: Path,
    no_image_read: list[Path],
) -> None:
    out = tmp_path / "out"
    code, _, stderr = invoke(
        "localize", images, "--bundle", small_bundle, "--out", out, "--settings", settings, *FAST
    )
    assert code == cli.EXIT_ERROR, stderr
    assert stderr.startswith("error: ") and message in stderr, stderr
    assert "Traceback" not in stderr
    assert not (out / "predictions.jsonl").exists() and not out.exists()
    assert no_image_read == []


def test_eval_refuses_bad_settings_before_reading(small_bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    meta = root / "metadata" / "test"
    meta.mkdir(parents=True)
    Image.fromarray(np.full((40, 50, 3), 120, dtype=np.uint8)).save(root / "a.png")
    (meta / "image_ids.txt").write_text("a.png\n")
    (meta / "class_labels.txt").write_text("a.png,281\n")
    (meta / "localization.txt").write_text("a.png,1,1,30,30\n")
    out = tmp_path / "eval"
    code, _, stderr = invoke(
        "eval", "--dataset", "ilsvrc", "--root", root, "--bundle", small_bundle, "--out", out,
        "--methods", "cam", "--settings", '{"sgrm": {"max_steps": -3}}', *FAST,
    )  # fmt: skip
    assert code == cli.EXIT_ERROR, stderr
    assert "error: setting sgrm.max_steps: must be an integer >= 1, got -3" in stderr
    assert not out.exists()
    # localize may work at another size; eval scores at wsolevaluation's 224 only
    code, _, stderr = invoke(
        "eval", "--dataset", "ilsvrc", "--root", root, "--bundle", small_bundle, "--out", out,
        "--methods", "cam", "--settings", '{"work_size": 256}', *FAST,
    )  # fmt: skip
    assert code == cli.EXIT_ERROR, stderr
    assert "error: setting work_size: eval scores maps at 224 x 224" in stderr
    assert not out.exists()


@pytest.fixture
def bad_settings_bundle(small_bundle: Path, tmp_path: Path) -> Path:
    """The small bundle with ``sgrm.max_steps: -3`` in its manifest's settings."""
    folder = tmp_path / "bad-settings"
    folder.mkdir()
    manifest = json.loads((small_bundle / "manifest.json").read_text())
    manifest["settings"] = {**manifest["settings"], "sgrm": {"max_steps": -3}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for name in manifest["files"]:
        shutil.copy(small_bundle / name, folder / name)
    return folder


def test_bundle_settings_are_checked_and_name_the_bundle(
    bad_settings_bundle: Path, images: Path, tmp_path: Path, no_image_read: list[Path]
) -> None:
    bundle = Bundle.load(bad_settings_bundle)
    with pytest.raises(
        ValueError, match=r"bad-settings/manifest\.json: bundle setting sgrm\.max_steps"
    ):
        Localizer(bundle, device="cpu")
    out = tmp_path / "out"
    code, _, stderr = invoke(
        "localize", images, "--bundle", bad_settings_bundle, "--out", out, *FAST
    )
    assert code == cli.EXIT_ERROR, stderr
    manifest = bad_settings_bundle / "manifest.json"
    assert f"error: {manifest}: bundle setting sgrm.max_steps" in stderr
    assert not out.exists() and no_image_read == []


def test_valid_settings_localize_and_their_bad_neighbour_does_not(
    small_bundle: Path, images: Path, tmp_path: Path
) -> None:
    valid = {"flip": False, "sgrm": {"gamma_h1": 0.8}, "arm": {"dilations": [1, 2]}}
    bad = {**valid, "arm": {"dilations": [1, 2.5]}}
    args = ["--bundle", small_bundle, "--method", "arm", *FAST]
    code, _, stderr = invoke(
        "localize", images, "--out", tmp_path / "ok", "--settings", json.dumps(valid), *args
    )
    assert code == 0, stderr
    lines = (tmp_path / "ok" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["ok"]
    code, _, stderr = invoke(
        "localize", images, "--out", tmp_path / "bad", "--settings", json.dumps(bad), *args
    )
    assert code == cli.EXIT_ERROR and "error: setting arm.dilations: must be a list" in stderr
    assert not (tmp_path / "bad").exists()


def test_a_stage_table_keeps_the_pipeline_defaults_it_does_not_name() -> None:
    config = PipelineConfig.from_settings({"arm": {"iterations": 20}})
    assert config.arm.iterations == 20
    assert config.arm.dilations == AFA_DILATIONS == PipelineConfig().arm.dilations
