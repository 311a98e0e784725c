"""How many CPU threads torch and the BLAS / OpenMP libraries use, for a block of work."""

from __future__ import annotations

import contextlib
import operator
import os
from collections.abc import Iterator

from .errors import SettingError, printable

MAX_THREADS = max(256, 4 * (os.cpu_count() or 1))
"""CPU threads a run may ask for at most: 256, or 4 per core on a machine with more than 64,
far fewer than the threads a process may start (onnxruntime and torch start their pools at
once, and a pool of a million threads crashes the process)."""


def check_threads(count: object, name: str = "threads") -> int | None:
    """``count`` as a thread count: None (the libraries' default) or an integer in
    1..:data:`MAX_THREADS`; :class:`SettingError` naming ``name`` otherwise."""
    if count is None:
        return None
    try:
        value = operator.index(count) if not isinstance(count, bool) else None
    except TypeError:
        value = None
    if value is None or not 1 <= value <= MAX_THREADS:
        shown = printable(repr(count), 40)
        raise SettingError(name, f"must be an integer from 1 to {MAX_THREADS}, got {shown}")
    return value


@contextlib.contextmanager
def compute_threads(count: int | None) -> Iterator[None]:
    """torch's threads and those of the BLAS and OpenMP libraries loaded (threadpoolctl) at
    ``count`` for the block, then as they were (None: unchanged). On a busy machine a pool
    larger than the cores it gets waits for its slowest thread at every operation: SGRM ran
    several times slower with 2 threads than with 1 on a loaded 2-core machine."""
    count = check_threads(count)
    if count is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(count):
            yield
    finally:
        torch.set_num_threads(previous)
