"""Where the images are localized: one ordered map over batches, three engines.

:func:`map_batches` runs a *task* (a small picklable object: a :class:`LocalizerSpec` and what
to do with one batch) over a list of batches and yields one result per batch, in input order:

- ``local``: in this process, with one :class:`Localizer`.
- ``process``: worker processes on this machine (``spawn``), each building its own Localizer
  once.
- ``ray``: Ray actors, each building its own Localizer once, on CPUs. Without ``address`` a
  private Ray instance is started on 127.0.0.1 (no dashboard) and shut down at the end; with
  ``address`` (``HOST:PORT`` of a running cluster) the driver connects and disconnects at the
  end; a Ray already initialized in this process is used and left running. On a cluster every
  node needs lcar-deploy installed and must see the bundle and the images at the driver's
  paths. Ray is imported only when this engine runs (extra ``lcar-deploy[distributed]``).

The ``local`` engine pipelines a task that comes in two halves (``prepare``: decoding and
the backbone; ``finish``: the stages after it), when it has two threads or more: a second
thread prepares the next batches (at most :data:`PREFETCHED` ahead, so memory stays flat) while
this one finishes the current batch, and prepares one itself when its next batch is not ready
(the backbone costs more than the rest, so this thread would otherwise wait). onnxruntime, the
C++ stages and torch release the GIL, so the two run at once; the results are those of the
plain loop, in the same order. Its :attr:`Mapped.busy` says how long each half ran (summed
over both threads).

Batches and results cross process boundaries pickled as they are. A bounded number of batches
is in flight (submitted, or done and waiting for their turn), so memory stays flat however
many batches there are. ``threads`` is the CPU threads in all, split over the workers.

The driver builds no onnxruntime session for ``process`` and ``ray``: a :class:`LocalizerSpec`
is the bundle and the checked settings, and each worker builds its session from it. The
providers reported (:attr:`Mapped.providers`) are the workers' own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import ModuleType
from typing import Any, Generic, Protocol, TypeVar, cast

from .errors import EngineError
from .names import ENGINES, Engine
from .pipeline import Localizer, LocalizerSpec
from .threads import compute_threads

B = TypeVar("B")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
B_contra = TypeVar("B_contra", contravariant=True)

RAY_MISSING = "the ray engine needs Ray, which is not installed: install lcar-deploy[distributed]"
PREFETCHED = 2
"""Batches the ``local`` engine may hold prepared beyond the one being finished (and the one
being prepared): two, so that neither thread waits for a batch to be allowed (a batch of 8
prepared images holds about 17 MB)."""
STAGE_PREPARE = "decode+backbone"
STAGE_FINISH = "post-processing"
IN_FLIGHT_PER_WORKER = 2
"""Batches submitted or waiting for their turn, per worker: enough to keep every worker busy
while the next result in order is still being computed."""


class Task(Protocol[B_contra, R_co]):
    """The work of one batch: picklable (it travels to every worker once); ``spec`` builds the
    worker's localizer, and the call maps one batch with it."""

    @property
    def spec(self) -> LocalizerSpec: ...

    def __call__(self, localizer: Localizer, batch: B_contra) -> R_co: ...


class SplitTask(Task[B_contra, R_co], Protocol[B_contra, R_co]):
    """A task in two halves the ``local`` engine can run on two threads:
    ``finish(localizer, prepare(localizer, batch))`` is the call's result."""

    def prepare(self, localizer: Localizer, batch: B_contra) -> Any: ...

    def finish(self, localizer: Localizer, prepared: Any) -> R_co: ...


class Mapped(Generic[R]):
    """The results of :func:`map_batches`, in input order.

    providers: the onnxruntime providers of the workers' sessions (every provider any worker
    used, in the order they list them), known once a worker has answered (the ``local`` engine:
    at once). busy: seconds each stage of the ``local`` engine has run so far, summed over
    its threads (:data:`STAGE_PREPARE` and :data:`STAGE_FINISH` for a pipelined task; empty for
    the other engines). ``close()`` stops the workers; iterating to the end does too.
    """

    def __init__(
        self,
        results: Generator[R, None, None],
        providers: list[str],
        busy: dict[str, float] | None = None,
    ) -> None:
        self._results = results
        self.providers = providers
        self.busy = {} if busy is None else busy

    def __iter__(self) -> Mapped[R]:
        return self

    def __next__(self) -> R:
        return next(self._results)

    def close(self) -> None:
        self._results.close()

    def items(self) -> Mapped[Any]:
        """One result per item, when each batch's result is a sequence of items."""

        def flat() -> Generator[Any, None, None]:
            try:
                for result in self._results:
                    yield from result
            finally:
                self._results.close()

        return Mapped(flat(), self.providers, self.busy)


def resolve_engine(engine: str, workers: int) -> Engine:
    """The engine that runs: ``local`` with more than one worker means worker processes (what
    ``eval --workers N`` has always meant)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return "process" if engine == "local" and workers > 1 else cast(Engine, engine)


def worker_threads(engine: Engine, workers: int, threads: int | None) -> int | None:
    """Each worker's CPU threads when ``threads`` is the number in all. None: onnxruntime's
    default for ``local``, this machine's cores split over the processes for ``process``, one
    per actor for ``ray``."""
    if engine == "local":
        return threads
    if engine == "ray" and threads is None:
        return 1
    return max(1, (threads or os.cpu_count() or 1) // workers)


def stage_threads(threads: int | None, overlap: bool = True) -> tuple[int | None, int | None]:
    """(threads of the ``local`` engine's localizer, torch threads of its post-processing) for
    ``threads`` in all (None: this machine's cores). Pipelined (``overlap`` and two threads or
    more), the backbone's session and the C++ stages get half of them, torch the other half;
    otherwise ``(threads, None)``: the localizer gets them all and torch keeps its own number.
    """
    total = threads if threads is not None else os.cpu_count() or 1
    if not overlap or total < 2:
        return threads, None
    return total // 2, total - total // 2


def map_batches(
    task: Task[B, R],
    batches: Sequence[B],
    *,
    engine: Engine = "local",
    workers: int = 1,
    threads: int | None = None,
    address: str | None = None,
    localizer: Localizer | None = None,
    overlap: bool = True,
) -> Mapped[R]:
    """``task`` on every batch, by ``engine``: one result per batch, in the order of ``batches``.

    ``workers``: processes or actors (no more than there are batches); ``threads``: CPU threads
    in all (:func:`worker_threads`); ``address``: the Ray cluster (None: a private local one).
    ``localizer``: the ``local`` engine's (default: built from ``task.spec`` now, with
    :func:`stage_threads`' share of the threads). ``overlap``: the ``local`` engine pipelines
    a :class:`SplitTask` on two threads (module docstring) when it has two threads or more.
    Ray is checked now (:class:`EngineError` naming the extra); workers start on the first
    result asked for. Ray actors run on CPU, whatever ``task.spec.device`` says.
    """
    run_on = resolve_engine(engine, workers)
    per_worker = worker_threads(run_on, workers, threads)
    if run_on == "local":
        local_threads, torch_threads = stage_threads(threads, overlap)
        local = localizer or task.spec.build(local_threads)
        split = callable(getattr(task, "prepare", None)) and callable(getattr(task, "finish", None))
        if torch_threads is not None and split:
            busy = dict.fromkeys((STAGE_PREPARE, STAGE_FINISH), 0.0)
            results = _pipelined(cast(SplitTask, task), batches, local, torch_threads, busy)
            return Mapped(results, list(local.providers), busy)
        return Mapped(_in_this_process(task, batches, local, threads), list(local.providers))
    workers = max(1, min(workers, len(batches)))
    providers: list[str] = []
    if run_on == "process":
        results = _on_processes(task, batches, workers, per_worker, providers)
    else:
        import_ray(local=not address)
        results = _on_ray(task, batches, workers, per_worker, address, providers)
    return Mapped(results, providers)


def _in_this_process(
    task: Task[B, R], batches: Sequence[B], localizer: Localizer, threads: int | None
) -> Generator[R, None, None]:
    with compute_threads(threads):
        for batch in batches:
            yield task(localizer, batch)


def _pipelined(
    task: SplitTask[B, R],
    batches: Sequence[B],
    localizer: Localizer,
    torch_threads: int,
    busy: dict[str, float],
) -> Generator[R, None, None]:
    """``task`` on every batch in order: a prefetch thread runs ``prepare`` on the batches in
    turn, at most :data:`PREFETCHED` + 1 ahead of the batch being finished; this thread runs
    ``finish`` in order, with ``torch_threads`` threads (:func:`compute_threads`), and while
    its next batch is not prepared yet it prepares the next unclaimed one itself, so that
    neither thread waits while there is work. An exception of ``prepare`` is raised here, in
    turn; on an exception here, Ctrl-C or ``close()``, the prefetch thread stops after its
    current batch and is joined before this returns."""
    turn = threading.Condition()
    prepared: dict[int, tuple[bool, Any]] = {}  # batch index -> (ok, prepared or exception)
    state = {"claimed": 0, "current": 0, "stop": False}

    def claim() -> int | None:
        """The next batch to prepare, if one may be prepared now (call holding ``turn``)."""
        index = state["claimed"]
        if state["stop"] or index >= len(batches) or index > state["current"] + PREFETCHED + 1:
            return None
        state["claimed"] = index + 1
        return index

    def prepare(index: int, catch: type[BaseException]) -> None:
        tick = time.perf_counter()
        try:
            answer: tuple[bool, Any] = (True, task.prepare(localizer, batches[index]))
        except catch as exc:
            answer = (False, exc)
        with turn:
            busy[STAGE_PREPARE] += time.perf_counter() - tick
            prepared[index] = answer
            turn.notify_all()

    def prefetch() -> None:
        while True:
            with turn:
                while (index := claim()) is None:
                    if state["stop"] or state["claimed"] >= len(batches):
                        return
                    turn.wait()
            prepare(index, BaseException)

    with compute_threads(torch_threads):
        thread = threading.Thread(target=prefetch, name="lcar-prefetch", daemon=True)
        thread.start()
        try:
            for current in range(len(batches)):
                with turn:
                    state["current"] = current
                    turn.notify_all()
                while True:
                    with turn:
                        if current in prepared:
                            ok, value = prepared.pop(current)
                            break
                        index = claim()
                        if index is None:
                            turn.wait()
                            continue
                    prepare(index, Exception)
                if not ok:
                    raise value
                tick = time.perf_counter()
                result = task.finish(localizer, value)
                busy[STAGE_FINISH] += time.perf_counter() - tick
                yield result
        finally:
            with turn:
                state["stop"] = True
                turn.notify_all()
            thread.join()


class _Worker:
    """A worker's task and localizer (built once); :meth:`run` maps one batch. ``cpu``: run on
    CPU whatever the spec's device (Ray actors reserve CPUs only)."""

    def __init__(self, task: Task[Any, Any], threads: int | None, cpu: bool = False) -> None:
        self.task = task
        spec = dataclasses.replace(task.spec, device="cpu") if cpu else task.spec
        self.localizer = spec.build(threads, reload=True)

    def run(self, batch: Any) -> tuple[list[str], Any]:
        """(this worker's providers, the batch's result)."""
        return self.localizer.providers, self.task(self.localizer, batch)


def _take(answer: tuple[list[str], R], providers: list[str]) -> R:
    """The result of a worker's answer; its providers are added to ``providers``."""
    used, result = answer
    providers.extend(p for p in used if p not in providers)
    return result


# ---- process ---------------------------------------------------------------------------------

_WORKER: _Worker | None = None
_START_ERROR: str | None = None


def _start_worker(task: Task[Any, Any], threads: int | None) -> None:
    """A worker process's initializer. Ctrl-C is the driver's to handle: it stops the pool. An
    error is kept for the first batch to report (a failing initializer only breaks the pool)."""
    global _WORKER, _START_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _WORKER = _Worker(task, threads)
    except Exception as exc:
        _START_ERROR = f"{type(exc).__name__}: {exc}"


def _process_batch(batch: Any) -> tuple[list[str], Any]:
    if _WORKER is None:
        raise EngineError(f"a worker process could not start ({_START_ERROR})")
    return _WORKER.run(batch)


def _on_processes(
    task: Task[B, R],
    batches: Sequence[B],
    workers: int,
    threads: int | None,
    providers: list[str],
) -> Generator[R, None, None]:
    """``workers`` processes; ``executor.map`` would submit every batch at once, so batches are
    submitted as results are taken."""
    import multiprocessing

    if not batches:
        return
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(task, threads),
    )
    pending: deque[Future[tuple[list[str], R]]] = deque()
    try:
        for batch in batches:
            pending.append(pool.submit(_process_batch, batch))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                yield _take(pending.popleft().result(), providers)
        while pending:
            yield _take(pending.popleft().result(), providers)
    except BrokenProcessPool as exc:
        raise EngineError(f"a worker process died ({exc})") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---- ray -------------------------------------------------------------------------------------


def import_ray(local: bool = False) -> ModuleType:
    """``ray``, or :class:`EngineError` naming the extra to install.

    ``local``: a private instance will be started; if Ray is not imported yet, it is told to
    take 127.0.0.1 as this node's address (its single-machine mode, read at import), so that
    the instance listens on the loopback interface only.
    """
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError as exc:
        raise EngineError(f"{RAY_MISSING} ({exc})") from None
    return ray


@contextlib.contextmanager
def ray_instance(address: str | None = None, num_cpus: int = 1) -> Iterator[ModuleType]:
    """Ray for the duration of the block: the running instance of this process if any, else a
    connection to ``address``, else a private local one on 127.0.0.1 (shut down afterwards)."""
    ray = import_ray(local=not address)
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                _node_ip_address="127.0.0.1",
            )
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _on_ray(
    task: Task[B, R],
    batches: Sequence[B],
    workers: int,
    threads: int,
    address: str | None,
    providers: list[str],
) -> Generator[R, None, None]:
    """``workers`` actors of ``threads`` CPUs each, on CPU."""
    if not batches:
        return
    with ray_instance(address, num_cpus=workers * threads) as ray:
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < workers * threads:
            # The actors that do not fit would wait for CPUs forever, and the run with them.
            raise EngineError(
                f"the Ray cluster has {cpus:g} CPUs; {workers} workers of {threads} threads "
                "need more: use fewer --workers or --threads"
            )
        actor_class = ray.remote(num_cpus=threads)(_Worker)
        actors = [actor_class.remote(task, threads, cpu=True) for _ in range(workers)]
        try:
            yield from _in_order_on(ray, actors, batches, providers)
        except ray.exceptions.RayActorError as exc:
            raise EngineError(f"a Ray worker failed: {exc}") from None
        finally:
            for actor in actors:
                ray.kill(actor)


def _in_order_on(
    ray: ModuleType, actors: list[Any], batches: Sequence[B], providers: list[str]
) -> Generator[Any, None, None]:
    """The results of ``batches`` on ``actors``, in order. An actor gets the next batch as soon
    as it is done; results done early wait (in Ray's object store) for their turn."""
    idle = list(actors)
    running: dict[Any, tuple[int, Any]] = {}
    done: dict[int, Any] = {}
    todo = iter(enumerate(batches))
    following = 0
    while True:
        while idle and len(running) + len(done) < IN_FLIGHT_PER_WORKER * len(actors):
            item = next(todo, None)
            if item is None:
                break
            index, batch = item
            actor = idle.pop()
            running[actor.run.remote(batch)] = (index, actor)
        if following in done:
            yield _take(ray.get(done.pop(following)), providers)
            following += 1
        elif running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            index, actor = running.pop(ref)
            idle.append(actor)
            done[index] = ref
        else:
            return
