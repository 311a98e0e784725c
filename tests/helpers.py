"""Plain helpers shared by the test files (the fixtures are in ``conftest.py``).

Imported as ``from helpers import invoke`` (``tests/`` is on ``sys.path``, as for ``conftest``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from bad_inputs import jpeg_bytes
from PIL import Image
from typer.testing import CliRunner

from lcar_deploy import cli

# CLI options that keep a run small: CPU, two threads, no progress bar.
FAST = ["--device", "cpu", "--threads", "2", "--quiet"]


def invoke(*args: str | Path) -> tuple[int, str, str]:
    """Run ``lcar-deploy ARGS`` in this process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def lcar_deploy_command() -> list[str]:
    """The installed ``lcar-deploy`` script, to run the CLI as a separate process."""
    script = Path(sys.executable).with_name("lcar-deploy")
    return [str(script)] if script.is_file() else [shutil.which("lcar-deploy") or "lcar-deploy"]


def run_cli(command: str, *args: str | Path, timeout: float = 300) -> tuple[int, str]:
    """``lcar-deploy COMMAND ARGS`` as a separate process (a crash or a hang is seen as such):
    (exit code, stderr)."""
    done = subprocess.run(
        [*lcar_deploy_command(), command, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        errors="replace",
    )
    return done.returncode, done.stderr


def records_of(out: Path) -> list[dict]:
    """The lines of ``predictions.jsonl``; each must be complete JSON."""
    data = (out / "predictions.jsonl").read_bytes()
    assert not data or data.endswith(b"\n"), "partial last line"
    return [json.loads(line) for line in data.splitlines()]


def image_folder(root: Path, photo: np.ndarray, count: int, quality: int = 75) -> Path:
    """``count`` different JPEGs of the photo (shifted) in ``root``, at JPEG ``quality``
    (75 is Pillow's default)."""
    root.mkdir(parents=True)
    for i in range(count):
        (root / f"img{i:02d}.jpg").write_bytes(
            jpeg_bytes(Image.fromarray(np.roll(photo, 23 * i, axis=1)), quality=quality)
        )
    return root


# --- broken copies of a good bundle ------------------------------------------------------------

# What the CLI says about each bundle of make_bad_bundles (regexes).
BUNDLE_ERRORS = {
    "tampered": r"model\.onnx: sha256 does not match the manifest",
    "newer": r"bundle format 99 is newer than this lcar-deploy reads",
    "missing": r"model\.onnx: listed in the manifest but missing",
    "empty": r"manifest\.json: missing \(not a bundle folder\?\)",
}


def make_bad_bundles(bundle: Path, root: Path) -> dict[str, Path]:
    """Broken copies of ``bundle`` in ``root``, by the names of :data:`BUNDLE_ERRORS`
    (untouched files are symlinks)."""
    manifest = json.loads((bundle / "manifest.json").read_text())

    def copy(name: str, onnx: bytes | None, **changes: object) -> Path:
        folder = root / name
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({**manifest, **changes}))
        if onnx is not None:
            (folder / "model.onnx").write_bytes(onnx)
        return folder

    onnx = bytearray((bundle / "model.onnx").read_bytes())
    onnx[len(onnx) // 2] ^= 0xFF
    bundles = {
        "tampered": copy("tampered", bytes(onnx)),
        "newer": copy("newer", None, format_version=99),
        "missing": copy("missing", None),
        "empty": root / "empty",
    }
    (bundles["newer"] / "model.onnx").symlink_to(bundle / "model.onnx")
    bundles["empty"].mkdir()
    return bundles
