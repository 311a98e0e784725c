"""How many CPU threads torch and the BLAS / OpenMP libraries use, for a block of work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def compute_threads(count: int | None) -> Iterator[None]:
    """torch's threads and those of the BLAS and OpenMP libraries loaded (threadpoolctl) at
    ``count`` for the block, then as they were (None: unchanged). On a busy machine a pool
    larger than the cores it gets waits for its slowest thread at every operation: SGRM ran
    several times slower with 2 threads than with 1 on a loaded 2-core machine."""
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
