"""The engines give the local engine's results, bit for bit, in order, from their own workers.

``process`` spawns two worker processes; ``ray`` uses a private local Ray (2 CPUs, 127.0.0.1,
no dashboard) started once for the module, and skips when Ray is not installed (extra
``lcar-deploy[distributed]``). The driver builds no onnxruntime session for either: the tests
make building one in this process fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lcar_deploy.bundle import Bundle
from lcar_deploy.cli import app
from lcar_deploy.config import PipelineConfig
from lcar_deploy.datasets import Dataset, Record, load_dataset
from lcar_deploy.engines import (
    PREFETCHED,
    STAGE_FINISH,
    STAGE_PREPARE,
    map_batches,
    resolve_engine,
    stage_threads,
    worker_threads,
)
from lcar_deploy.errors import EngineError, SettingError
from lcar_deploy.evaluation import iter_outcomes, run_evaluation
from lcar_deploy.localize import LocalizeOptions, localize_folder
from lcar_deploy.pipeline import Localizer, LocalizerSpec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")

METHODS = ("cam", "arm")
ENGINES = ["process", "ray"]
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def local_ray():
    # A loopback-only instance without usage reporting (both read when Ray is imported/started).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed (pip install 'lcar-deploy[distributed]')"
    )
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        _node_ip_address="127.0.0.1",
    )
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    # The actors cannot import this test module: its classes travel by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The engine of the test's parameter, with Ray started for ``ray``."""
    if request.param == "ray":
        request.getfixturevalue("local_ray")
    return request.param


def forbid_sessions_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, building an onnxruntime session in this process fails (the workers are
    other processes)."""

    def refused(self: Bundle, *args: object, **kwargs: object) -> None:
        raise AssertionError("the driver built an onnxruntime session")

    monkeypatch.setattr(Bundle, "session", refused)


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
    code = "import sys, lcar_deploy.engines, lcar_deploy.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_ray_names_the_extra(small_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    bundle = Bundle.load(small_bundle)
    task = Echo(LocalizerSpec(bundle, PipelineConfig.from_settings(bundle.settings), "cpu"))
    with pytest.raises(EngineError, match=r"install lcar-deploy\[distributed\]"):
        map_batches(task, [1, 2], engine="ray")  # at the call, before any result is asked for


def test_engine_and_threads_per_worker() -> None:
    assert resolve_engine("local", 1) == "local"
    assert resolve_engine("local", 3) == "process"  # eval --workers N: processes
    assert resolve_engine("ray", 3) == "ray"
    with pytest.raises(ValueError, match="engine must be one of local, process, ray"):
        resolve_engine("threads", 1)
    assert worker_threads("local", 1, 6) == 6
    assert worker_threads("process", 2, 6) == 3
    assert worker_threads("process", 4, 2) == 1
    assert worker_threads("process", 2, None) == max(1, (os.cpu_count() or 1) // 2)
    assert worker_threads("ray", 2, 6) == 3
    assert worker_threads("ray", 2, None) == 1


def test_a_spec_checks_what_a_localizer_checks(small_bundle: Path) -> None:
    bundle = Bundle.load(small_bundle)  # the ImageNet classifier: no foreground head
    config = PipelineConfig.from_settings(bundle.settings, arm_input="foreground")
    with pytest.raises(SettingError, match="'foreground' needs a foreground head"):
        LocalizerSpec(bundle, config)
    with pytest.raises(SettingError, match="'foreground' needs a foreground head"):
        Localizer(bundle, config, device="cpu")
    config = PipelineConfig.from_settings(bundle.settings, arm_input="class_foreground_cam")
    with pytest.raises(SettingError, match="'class_foreground_cam' needs a foreground head"):
        LocalizerSpec(bundle, config)


def test_bad_settings_exit_before_any_worker_or_output(small_bundle: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"never read")
    out = tmp_path / "out"
    args = ["localize", images, "--out", out, "--bundle", small_bundle, "--quiet"]
    settings = ["--settings", '{"arm_input": "foreground"}']
    result = CliRunner().invoke(app, [str(a) for a in (*args, *settings, "--engine", "process")])
    assert result.exit_code == 1, result.output
    assert "'foreground' needs a foreground head" in result.output
    assert not out.exists()


@dataclasses.dataclass(frozen=True)
class Echo:
    """A task that returns its batch, the time it finished and the worker's pid; batch 0 waits
    until batch 1 is done (a file says so), so the batches finish out of order."""

    spec: LocalizerSpec
    signals: str = ""

    def __call__(self, localizer: Localizer, batch: int) -> tuple[int, float, int]:
        signals = Path(self.signals)
        if batch == 0:
            deadline = time.monotonic() + 120
            while not (signals / "1").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        elif self.signals:
            (signals / str(batch)).touch()
        return batch, time.time(), os.getpid()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_order_is_kept_when_batches_finish_out_of_order(
    engine: str, small_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_sessions_here(monkeypatch)
    bundle = Bundle.load(small_bundle)
    spec = LocalizerSpec(bundle, PipelineConfig.from_settings(bundle.settings), "cpu")
    mapped = map_batches(Echo(spec, str(tmp_path)), list(range(7)), engine=engine, workers=2)
    assert mapped.providers == []  # no worker has answered yet
    results = list(mapped)
    assert [batch for batch, _, _ in results] == list(range(7))
    assert results[0][1] > results[1][1]  # batch 0 finished after batch 1
    assert len({pid for _, _, pid in results}) == 2
    assert os.getpid() not in {pid for _, _, pid in results}
    assert mapped.providers == CPU


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_eval_matches_local(
    engine: str,
    small_bundle: Path,
    ilsvrc: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundle = Bundle.load(small_bundle)
    config = PipelineConfig.from_settings(bundle.settings)
    local = list(
        iter_outcomes(bundle, config, ilsvrc, METHODS, batch_size=3, device="cpu", threads=1)
    )
    forbid_sessions_here(monkeypatch)
    mapped = iter_outcomes(
        bundle, config, ilsvrc, METHODS, batch_size=3, engine=engine, workers=2, threads=2
    )
    remote = list(mapped)
    assert mapped.providers == CPU

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
    engine_metrics, engine_maps = evaluated(engine, remote)
    assert engine_metrics == local_metrics
    assert json.loads(engine_metrics)["num_errors"] == 1
    assert engine_maps.keys() == local_maps.keys()
    for key, maps in local_maps.items():
        assert np.array_equal(maps, engine_maps[key])


def _without_timings(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        line.pop("timings_ms", None)
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_localize_matches_local(
    engine: str,
    small_bundle: Path,
    ilsvrc: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
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
    assert (local.ok, local.errors) == (3, 1)

    forbid_sessions_here(monkeypatch)
    result = CliRunner().invoke(
        app,
        [
            "localize",
            str(images),
            "--out",
            str(tmp_path / engine),
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
            engine,
            "--workers",
            "2",
            "--threads",
            "2",
        ],
    )
    assert result.exit_code == 3, result.output  # broken.jpg failed, the rest went on
    assert "providers ['CPUExecutionProvider']" in result.output
    lines = _without_timings(tmp_path / engine / "predictions.jsonl")
    assert lines == _without_timings(tmp_path / "local" / "predictions.jsonl")
    assert [line["status"] for line in lines].count("ok") == 3
    for line in lines:
        for key in ("mask", "overlay"):
            if key in line:
                a = (tmp_path / "local" / line[key]).read_bytes()
                assert a == (tmp_path / engine / line[key]).read_bytes(), line[key]
    summary = json.loads((tmp_path / engine / "summary.json").read_text())
    assert (summary["ok"], summary["errors"]) == (3, 1)
    assert summary["providers"] == CPU


# --- the local engine, pipelined ------------------------------------------------------------------


class FakeLocalizer:
    providers = CPU


@dataclasses.dataclass
class Halves:
    """A task in two halves that records when each half of each batch ran; ``fail_at``: the
    batch whose ``prepare`` raises, ``stop_at``: the batch whose ``finish`` raises
    KeyboardInterrupt."""

    fail_at: int | None = None
    stop_at: int | None = None
    log: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    @property
    def spec(self) -> LocalizerSpec:
        raise AssertionError("the localizer is given")

    def __call__(self, localizer: object, batch: int) -> int:
        return self.finish(localizer, self.prepare(localizer, batch))

    def prepare(self, localizer: object, batch: int) -> int:
        if batch == self.fail_at:
            raise ValueError(f"batch {batch} is bad")
        self.log.append(("prepare", batch))
        return 10 * batch

    def finish(self, localizer: object, prepared: int) -> int:
        batch = prepared // 10
        if batch == self.stop_at:
            raise KeyboardInterrupt
        time.sleep(0.01)  # the prefetch thread would run ahead if it could
        self.log.append(("finish", batch))
        return prepared + 1


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lcar-prefetch"]


def test_stage_threads() -> None:
    assert stage_threads(2) == (1, 1)
    assert stage_threads(5) == (2, 3)
    assert stage_threads(1) == (1, None)  # one thread: the plain loop
    assert stage_threads(4, overlap=False) == (4, None)
    assert stage_threads(None, overlap=False) == (None, None)


def test_pipelined_results_in_order_with_bounded_prefetch() -> None:
    task = Halves()
    mapped = map_batches(task, list(range(8)), threads=2, localizer=FakeLocalizer())
    assert list(mapped) == [10 * b + 1 for b in range(8)]
    assert set(mapped.busy) == {STAGE_PREPARE, STAGE_FINISH}
    # prepare never runs more than PREFETCHED + 1 batches ahead of the batch being finished
    for i, (half, batch) in enumerate(task.log):
        if half == "prepare":
            finished = sum(1 for h, _ in task.log[:i] if h == "finish")
            assert batch <= finished + PREFETCHED + 1
    assert not prefetch_threads()
    sequential = Halves()
    plain = map_batches(sequential, list(range(8)), threads=1, localizer=FakeLocalizer())
    assert list(plain) == [10 * b + 1 for b in range(8)] and plain.busy == {}
    assert sequential.log == [(h, b) for b in range(8) for h in ("prepare", "finish")]


def test_pipelined_error_comes_in_turn_and_stops_the_thread() -> None:
    task = Halves(fail_at=3)
    mapped = map_batches(task, list(range(8)), threads=2, localizer=FakeLocalizer())
    got = []
    with pytest.raises(ValueError, match="batch 3 is bad"):
        for result in mapped:
            got.append(result)
    assert got == [1, 11, 21]  # the batches before it all came through
    assert not prefetch_threads()


def test_pipelined_interrupt_and_close_stop_the_thread() -> None:
    task = Halves(stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        list(map_batches(task, list(range(50)), threads=2, localizer=FakeLocalizer()))
    assert not prefetch_threads()
    assert max(b for h, b in task.log if h == "prepare") <= 2 + PREFETCHED + 1
    mapped = map_batches(Halves(), list(range(50)), threads=2, localizer=FakeLocalizer())
    assert next(mapped) == 1
    mapped.close()
    assert not prefetch_threads()


@dataclasses.dataclass
class SlowPrepare(Halves):
    """Halves whose ``prepare`` takes longer than ``finish``, recording the thread it ran on."""

    threads: list[str] = dataclasses.field(default_factory=list)

    def prepare(self, localizer: object, batch: int) -> int:
        time.sleep(0.03)
        self.threads.append(threading.current_thread().name)
        return super().prepare(localizer, batch)

    def finish(self, localizer: object, prepared: int) -> int:
        self.log.append(("finish", prepared // 10))
        return prepared + 1


def test_pipelined_shares_prepare_when_it_is_the_slower_half() -> None:
    task = SlowPrepare()
    mapped = map_batches(task, list(range(12)), threads=2, localizer=FakeLocalizer())
    assert list(mapped) == [10 * b + 1 for b in range(12)]
    # Both threads prepared batches, each batch once, none too far ahead of the finished ones.
    assert {"lcar-prefetch", threading.current_thread().name} <= set(task.threads)
    assert sorted(b for h, b in task.log if h == "prepare") == list(range(12))
    for i, (half, batch) in enumerate(task.log):
        if half == "prepare":
            finished = sum(1 for h, _ in task.log[:i] if h == "finish")
            assert batch <= finished + PREFETCHED + 1
    assert not prefetch_threads()


@pytest.mark.slow
def test_pipelined_eval_and_localize_match_the_plain_loop(
    small_bundle: Path, ilsvrc: Dataset, tmp_path: Path
) -> None:
    bundle = Bundle.load(small_bundle)
    config = PipelineConfig.from_settings(bundle.settings)
    methods = ("cam", "arm", "lcar")
    runs = {}
    for overlap in (False, True):
        mapped = iter_outcomes(
            bundle,
            config,
            ilsvrc,
            methods,
            batch_size=3,
            device="cpu",
            threads=2,
            overlap=overlap,
        )
        runs[overlap] = list(mapped)
        assert bool(mapped.busy) == overlap
    for a, b in zip(runs[False], runs[True], strict=True):
        assert a.image_id == b.image_id and a.error == b.error
        for method in a.maps:
            assert np.array_equal(a.maps[method], b.maps[method])
        for name in ("cls_correct", "boxes", "lcar_boxes", "sgrm_steps"):
            assert getattr(a, name) == getattr(b, name), name
    assert runs[True][3].error is not None and "missing.JPEG" in runs[True][3].error

    images = tmp_path / "images"
    images.mkdir()
    for record in ilsvrc.records:
        if record.path.exists():
            shutil.copy(record.path, images / record.path.name)
    (images / "broken.jpg").write_bytes(b"not an image")
    outputs = {}
    for flag in ("--no-overlap", "--overlap"):
        out = tmp_path / flag.strip("-")
        args = ["localize", str(images), "--out", str(out), "--bundle", str(small_bundle)]
        args += ["--batch-size", "2", "--save-masks", "--quiet", "--threads", "2", flag]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 3, result.output  # broken.jpg failed, the rest went on
        outputs[flag] = out
    assert "busy decode+backbone" in result.output
    lines = _without_timings(outputs["--overlap"] / "predictions.jsonl")
    assert lines == _without_timings(outputs["--no-overlap"] / "predictions.jsonl")
    assert [line["status"] for line in lines].count("ok") == 6
    for line in lines:
        if "mask" in line:
            a = (outputs["--overlap"] / line["mask"]).read_bytes()
            assert a == (outputs["--no-overlap"] / line["mask"]).read_bytes()
    summary = json.loads((outputs["--overlap"] / "summary.json").read_text())
    assert set(summary["busy_percent"]) == {STAGE_PREPARE, STAGE_FINISH}
