"""The command line's own behaviour: help text, checks made before long work, first-run notice."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lcar_deploy import cli


def invoke(*args: str | Path) -> tuple[int, str, str]:
    """Run ``lcar-deploy ARGS`` in this process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_export_help_shows_the_extra_in_brackets() -> None:
    code, stdout, _ = invoke("export", "--help")
    assert code == 0
    assert "pip install 'lcar-deploy[backbones]'" in " ".join(stdout.split())


def test_train_refuses_a_bundle_folder_that_is_not_a_bundle_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lcar_deploy.training.train as training

    def no_training(config):
        raise AssertionError("training started")

    monkeypatch.setattr(training, "train", no_training)
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
