"""A bundle is untrusted input: every hostile bundle of ``tests/hostile_bundles.py`` is refused,
by ``Bundle.load`` and by the CLI, with an error naming the bundle file, and nothing outside
the bundle is opened on the way. Broken copies of a good bundle (tampered, of a newer format,
a file missing, an empty folder) are clear CLI errors too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from bad_inputs import Case as ImageCase
from helpers import BUNDLE_ERRORS, FAST, invoke
from hostile_bundles import CASES, MODEL, Case, make_corpus
from PIL import Image

from lcar_deploy import bundle as bundle_module
from lcar_deploy import cli
from lcar_deploy.bundle import Bundle, BundleError

NAMES = sorted(CASES)
# The CLI as a separate process costs seconds a run: one manifest case, one graph case.
SUBPROCESS_NAMES = ["dotdot", "external-data"]

# Refused from lstat alone: the blamed file itself is never opened.
REFUSED_FROM_STAT = {
    "symlinked-model",
    "symlinked-manifest",
    "fifo-model",
    "directory-model",
    "over-cap-model",
    "over-cap-manifest",
}

# Loads each bundle of argv[1] (JSON name -> folder) under an audit hook; prints, per name, the
# error (None if it loaded) and every path opened or listed.
AUDITED_LOAD = """
import json, os, sys

seen = []

def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and not isinstance(args[0], (int, type(None))):
        seen.append(os.fsdecode(args[0]))

sys.addaudithook(hook)
import onnx  # imported lazily by the first check of a graph: its own files are not the bundle's
from lcar_deploy.bundle import Bundle, BundleError

report = {}
for name, path in json.loads(sys.argv[1]).items():
    seen.clear()
    try:
        Bundle.load(path)
        error = None
    except BundleError as exc:
        error = str(exc)
    report[name] = {"error": error, "opened": list(seen)}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def corpus(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    outside, cases = make_corpus(small_bundle, tmp_path_factory.mktemp("hostile"))
    return outside, {case.name: case for case in cases}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (40, 30), (200, 60, 40)).save(folder / "a.jpg")
    return folder


def assert_names_case(message: str, case: Case) -> None:
    """The message starts with the blamed bundle file and gives the case's reason."""
    assert message.startswith(f"{case.path / case.blames}: "), message
    assert re.search(case.reason, message), message


@pytest.mark.parametrize("name", NAMES)
def test_load_refuses_hostile_bundle(name: str, corpus: tuple[Path, dict]) -> None:
    case = corpus[1][name]
    with pytest.raises(BundleError) as info:
        Bundle.load(case.path)
    assert_names_case(str(info.value), case)


@pytest.mark.parametrize("name", NAMES)
def test_cli_refuses_hostile_bundle(
    name: str, corpus: tuple[Path, dict], images: Path, tmp_path: Path
) -> None:
    case = corpus[1][name]
    args = ["localize", images, "--bundle", case.path, "--out", tmp_path / "out"]
    code, _, stderr = invoke(*args, "--device", "cpu", "--quiet")
    assert code == cli.EXIT_ERROR, stderr
    assert stderr.startswith("error: "), stderr
    assert_names_case(stderr.removeprefix("error: ").strip(), case)
    assert "Traceback" not in stderr


@pytest.mark.parametrize("name", SUBPROCESS_NAMES)
def test_cli_process_refuses_hostile_bundle(
    name: str, corpus: tuple[Path, dict], images: Path, tmp_path: Path
) -> None:
    case = corpus[1][name]
    args = ["localize", images, "--bundle", case.path, "--out", tmp_path / "out", "--quiet"]
    command = [sys.executable, "-m", "lcar_deploy.cli", *map(str, args), "--device", "cpu"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == cli.EXIT_ERROR, run.stderr
    assert run.stderr.startswith("error: "), run.stderr
    assert str(case.path / case.blames) in run.stderr and "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def audited(corpus: tuple[Path, dict], small_bundle: Path) -> dict[str, dict]:
    """Every case (and the valid bundle, as ``valid``) loaded in a process with an audit hook."""
    folders = {name: str(case.path) for name, case in corpus[1].items()}
    folders["valid"] = str(small_bundle)
    command = [sys.executable, "-c", AUDITED_LOAD, json.dumps(folders)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(run.stdout)


def test_audit_hook_sees_the_bundle_files(audited: dict[str, dict], small_bundle: Path) -> None:
    valid = audited["valid"]
    assert valid["error"] is None
    opened = {os.path.realpath(p) for p in valid["opened"]}
    assert {str((small_bundle / f).resolve()) for f in ("manifest.json", MODEL)} <= opened


@pytest.mark.parametrize("name", NAMES)
def test_nothing_outside_the_bundle_is_opened(
    name: str, corpus: tuple[Path, dict], audited: dict[str, dict]
) -> None:
    outside, case = str(corpus[0].resolve()), corpus[1][name]
    report = audited[name]
    assert report["error"] is not None
    leaks = [p for p in report["opened"] if os.path.realpath(p).startswith(outside + os.sep)]
    assert not leaks, leaks
    if name in REFUSED_FROM_STAT:
        assert str(case.path / case.blames) not in report["opened"]


def test_file_cap_is_read_from_stat(small_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle_module, "MAX_FILE_BYTES", 1 << 20)
    with pytest.raises(BundleError, match=r"model\.onnx: \d+ bytes, larger than the limit"):
        Bundle.load(small_bundle)


def test_valid_bundle_and_torchscript_only_bundle_load(small_bundle: Path, tmp_path: Path) -> None:
    loaded = Bundle.load(small_bundle)
    assert loaded.session(device="cpu", threads=1).input_size == loaded.input_size == 96
    folder = tmp_path / "ts"
    folder.mkdir()
    (folder / "model.ts").write_bytes(b"not parsed by lcar-deploy")
    manifest = json.loads((small_bundle / "manifest.json").read_text())
    digest = bundle_module.sha256_file(folder / "model.ts")
    manifest["files"] = {"model.ts": {"sha256": digest}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"has no model\.onnx"):
        Bundle.load(folder).session()


def test_a_model_changed_after_loading_is_not_run(small_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(small_bundle, folder)
    loaded = Bundle.load(folder)
    # Another valid ONNX graph swapped in once the bundle was checked: the session is built
    # from bytes read and hashed again, so it is refused rather than run.
    model = onnx.load(str(folder / "model.onnx"))
    model.producer_name = "swapped"
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 does not match the manifest"):
        loaded.session(device="cpu", threads=1)


# --- broken copies of a good bundle ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUNDLE_ERRORS))
def test_bad_bundle_is_a_clear_error(
    name: str,
    bad_bundles: dict[str, Path],
    image_corpus: tuple[Path, list[ImageCase]],
    tmp_path: Path,
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(image_corpus[0] / "upright.jpg", images / "a.jpg")
    code, _, stderr = invoke("localize", images, "--bundle", bad_bundles[name], *FAST)
    assert code == cli.EXIT_ERROR
    assert re.search(BUNDLE_ERRORS[name], stderr), stderr
    assert stderr.startswith("error: ") and "Traceback" not in stderr


# --- the per-user cache ---------------------------------------------------------------------------


def _cache_cases(root: Path) -> dict[str, tuple[Path, str]]:
    """LCAR_DEPLOY_CACHE values that cannot be a cache, with the reason the error gives."""
    (root / "a-file").write_text("not a folder")
    (root / "loop").symlink_to(root / "loop")
    return {
        "file": (root / "a-file", r"not a folder"),
        "under a file": (root / "a-file" / "cache", r"Not a directory"),
        "link loop": (root / "loop", r"Too many levels of symbolic links"),
        "in /proc": (Path("/proc/self/cache"), r"/proc/self is not writable"),
    }


@pytest.mark.parametrize("case", ["file", "under a file", "link loop", "in /proc"])
@pytest.mark.parametrize("command", ["localize", "export"])
def test_a_cache_that_cannot_be_used_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, command: str
) -> None:
    cache, reason = _cache_cases(tmp_path)[case]
    monkeypatch.setenv("LCAR_DEPLOY_CACHE", str(cache))
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), "red").save(images / "a.png")
    args = (
        ["localize", images, "--out", tmp_path / "out", *FAST]
        if command == "localize"
        else ["export"]
    )
    code, _, stderr = invoke(*args)
    assert code == cli.EXIT_ERROR, stderr
    assert re.search(
        rf"^error: {re.escape(str(cache))}: cannot be the cache folder \(.*{reason}.*\); set "
        "LCAR_DEPLOY_CACHE to a folder you can write$",
        stderr.strip(),
    ), stderr
    assert not (tmp_path / "out").exists()


def test_a_broken_cached_default_bundle_says_how_to_fix_it(
    small_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lcar_deploy.export.exporter as exporter

    def no_export(out: Path, **kwargs) -> Path:
        raise AssertionError("the cached default bundle was exported over")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LCAR_DEPLOY_CACHE", "cache")
    monkeypatch.setattr(exporter, "export_bundle", no_export)
    target = bundle_module.default_bundle_dir()
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), "red").save(images / "a.png")
    fix = "delete that folder to export it again, or set LCAR_DEPLOY_CACHE"
    # An export cut short: a folder with a partial file and no manifest.
    target.mkdir(parents=True)
    (target / "model.onnx").write_bytes(b"partial")
    code, _, stderr = invoke("localize", images, "--out", tmp_path / "out", *FAST)
    assert code == cli.EXIT_ERROR
    assert stderr.startswith(f"error: {target}: the cached default bundle has no manifest.json")
    assert fix in stderr and "--out" not in stderr
    # A manifest damaged since: the reason is given, and the same fix.
    shutil.rmtree(target)
    shutil.copytree(small_bundle, target)
    (target / "manifest.json").write_text("{")
    code, _, stderr = invoke("localize", images, "--out", tmp_path / "out", *FAST)
    assert code == cli.EXIT_ERROR
    assert stderr.startswith(f"error: {target}: the cached default bundle is unusable (manifest")
    assert fix in stderr and len(stderr) < 300
    assert (target / "manifest.json").read_text() == "{"  # nothing of it deleted
