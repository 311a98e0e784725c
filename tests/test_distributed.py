"""``--engine ray``: Ray Data over actors gives the local engine's results, bit for bit.

The Ray tests start a private local Ray (2 CPUs, 127.0.0.1, no dashboard) for the module; they
skip when Ray is not installed (extra ``lcar-deploy[distributed]``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lcar_deploy.bundle import Bundle
from lcar_deploy.cli import app
from lcar_deploy.config import PipelineConfig
from lcar_deploy.datasets import Dataset, Record, load_dataset
from lcar_deploy.evaluate import iter_outcomes, run_evaluation
from lcar_deploy.localize import LocalizeOptions, localize_folder
from lcar_deploy.pipeline import Localizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray"),
]

METHODS = ("cam", "arm")


@pytest.fixture(scope="module")
def local_ray():
    # A loopback-only instance without usage reporting (both read when Ray is imported/started).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed (pip install 'lcar-deploy[distributed]')"
    )
    pytest.importorskip("ray.data", reason="Ray Data is not installed (ray[data])")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        _node_ip_address="127.0.0.1",
    )
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ilsvrc(shared_data: Path) -> Dataset:
    """6 ILSVRC test images and one that does not exist (an error row)."""
    data = load_dataset("ilsvrc", shared_data / "ILSVRC-mini", "test", limit=6)
    first = data.records[0]
    missing = dataclasses.replace(
        first, image_id="val/missing.JPEG", path=first.path.with_name("missing.JPEG")
    )
    records: list[Record] = [*data.records[:3], missing, *data.records[3:]]
    return dataclasses.replace(data, records=records)


def test_import_does_not_load_ray() -> None:
    code = "import sys, lcar_deploy.distributed, lcar_deploy.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from lcar_deploy.distributed import EngineError, import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(EngineError, match=r"install lcar-deploy\[distributed\]"):
        import_ray()


def test_eval_on_ray_matches_local(
    local_ray, small_bundle: Path, ilsvrc: Dataset, tmp_path: Path
) -> None:
    from lcar_deploy.distributed import ray_outcomes

    bundle = Bundle.load(small_bundle)
    config = PipelineConfig.from_settings(bundle.settings)
    local = list(
        iter_outcomes(bundle, config, ilsvrc, METHODS, batch_size=3, device="cpu", threads=1)
    )
    remote = list(ray_outcomes(bundle, config, ilsvrc, METHODS, 3, 2, None))

    assert [o.image_id for o in remote] == [r.image_id for r in ilsvrc.records]
    assert remote[3].error is not None and "missing.JPEG" in remote[3].error
    for a, b in zip(local, remote, strict=True):
        assert a.maps.keys() == b.maps.keys()
        for method in a.maps:
            assert b.maps[method].dtype == np.float32
            assert np.array_equal(a.maps[method], b.maps[method])
        assert a.gt_boxes.dtype == b.gt_boxes.dtype and np.array_equal(a.gt_boxes, b.gt_boxes)
        for name in ("cls_correct", "boxes", "lcar_boxes", "sgrm_steps", "error"):
            assert getattr(a, name) == getattr(b, name), name
        assert a.stage_ms.keys() == b.stage_ms.keys()

    def evaluated(name: str, outcomes: list) -> tuple[str, dict[str, np.ndarray]]:
        out = tmp_path / name
        out.mkdir()
        metrics = run_evaluation(iter(outcomes), METHODS, out, len(ilsvrc), progress=False).metrics
        for key in ("seconds", "stage_ms_per_image", "_examples"):
            metrics.pop(key)
        for entry in metrics["methods"].values():
            entry.pop("ms_per_image")
        with np.load(out / "maps.npz") as npz:
            return json.dumps(metrics, sort_keys=True), {k: npz[k] for k in npz.files}

    local_metrics, local_maps = evaluated("local", local)
    ray_metrics, ray_maps = evaluated("ray", remote)
    assert ray_metrics == local_metrics
    assert json.loads(ray_metrics)["num_errors"] == 1
    assert ray_maps.keys() == local_maps.keys()
    for key, maps in local_maps.items():
        assert np.array_equal(maps, ray_maps[key])


def _without_timings(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        line.pop("timings_ms", None)
    return lines


def test_localize_on_ray_matches_local(
    local_ray, small_bundle: Path, ilsvrc: Dataset, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for i, record in enumerate(ilsvrc.records[:4]):
        if record.path.exists():
            shutil.copy(record.path, images / ("sub" if i % 2 else "") / record.path.name)
    (images / "broken.jpg").write_bytes(b"not an image")
    bundle = Bundle.load(small_bundle)
    config = PipelineConfig.from_settings(bundle.settings, method="arm")
    localizer = Localizer(bundle, config, device="cpu", threads=1)
    options = LocalizeOptions(batch_size=2, save_masks=True, overlays=True)
    local = localize_folder(localizer, images, tmp_path / "local", options, progress=False)

    result = CliRunner().invoke(
        app,
        [
            "localize",
            str(images),
            "--out",
            str(tmp_path / "ray"),
            "--bundle",
            str(small_bundle),
            "--method",
            "arm",
            "--batch-size",
            "2",
            "--save-masks",
            "--overlays",
            "--quiet",
            "--engine",
            "ray",
            "--workers",
            "2",
        ],
    )
    assert result.exit_code == 3, result.output  # broken.jpg failed, the rest went on
    assert (local.ok, local.errors) == (3, 1)
    lines = _without_timings(tmp_path / "ray" / "predictions.jsonl")
    assert lines == _without_timings(tmp_path / "local" / "predictions.jsonl")
    assert [line["status"] for line in lines].count("ok") == 3
    for line in lines:
        for key in ("mask", "overlay"):
            if key in line:
                a = (tmp_path / "local" / line[key]).read_bytes()
                assert a == (tmp_path / "ray" / line[key]).read_bytes(), line[key]
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert (summary["ok"], summary["errors"]) == (3, 1)
    assert summary["providers"] == ["CPUExecutionProvider"]
