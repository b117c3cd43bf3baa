"""One way to spread independent CPU work over the machine's cores, results in order."""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator

MAX_CHUNK = 32


def ordered_map(fn: Callable, jobs: list, workers: int | None = None, min_jobs: int = 64) -> Iterable:
    """``map(fn, jobs)`` over worker processes (fork, where available: they start at once and import
    nothing new), or in this process below ``min_jobs`` jobs, with one core, or with workers=1. ``fn`` must
    be a module-level function; results come back in the order of ``jobs``."""
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(jobs) < min_jobs:
        return map(fn, jobs)
    return _pooled(fn, jobs, workers)


def _pooled(fn: Callable, jobs: list, workers: int) -> Iterator:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        # chunks of at most MAX_CHUNK jobs: a worker's results come back as one list, which for 100,000 faces
        # in 16 chunks would be 300 MB each
        yield from pool.map(fn, jobs, chunksize=max(1, min(MAX_CHUNK, len(jobs) // (workers * 8))))
