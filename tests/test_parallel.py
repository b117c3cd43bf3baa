"""pipeline.parallel.ordered_map: in this process for few jobs or one worker, else over forked worker processes
in chunks of at most MAX_CHUNK, the results in the order of the jobs either way."""

import os

import pytest

from pipeline import parallel


def _pid_and_square(x):
    return os.getpid(), x * x


@pytest.mark.parametrize("jobs, workers, min_jobs", [(63, 4, 64), (100, 1, 64), (0, 4, 64), (5, 2, 6)])
def test_few_jobs_or_one_worker_run_here(jobs, workers, min_jobs):
    out = list(parallel.ordered_map(_pid_and_square, list(range(jobs)), workers=workers, min_jobs=min_jobs))
    assert out == [(os.getpid(), x * x) for x in range(jobs)]


def test_many_jobs_run_in_worker_processes_and_come_back_in_order():
    out = list(parallel.ordered_map(_pid_and_square, list(range(300)), workers=2, min_jobs=64))
    assert [sq for _, sq in out] == [x * x for x in range(300)]
    assert os.getpid() not in {pid for pid, _ in out}


class _Pool:
    """A stand-in ProcessPoolExecutor that records how it is made and asked."""
    made = []

    def __init__(self, max_workers, mp_context):
        self.made.append({"workers": max_workers, "context": mp_context and mp_context.get_start_method()})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, jobs, chunksize):
        self.made[-1]["chunksize"] = chunksize
        return map(fn, jobs)


@pytest.mark.parametrize("n, workers, chunk", [(64, 4, 2), (100, 16, 1), (1000, 2, 32), (100_000, 16, 32),
                                               (500, 2, 31)])
def test_chunks_are_an_eighth_of_a_workers_share_and_at_most_max_chunk(monkeypatch, n, workers, chunk):
    import concurrent.futures

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", _Pool)
    _Pool.made.clear()
    assert list(parallel.ordered_map(abs, list(range(-n, 0)), workers=workers)) == list(range(n, 0, -1))
    assert _Pool.made == [{"workers": workers, "context": "fork", "chunksize": chunk}]


def test_the_default_is_every_core(monkeypatch):
    import concurrent.futures

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", _Pool)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    _Pool.made.clear()
    list(parallel.ordered_map(abs, list(range(64))))
    assert _Pool.made[0]["workers"] == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one, here
    assert list(parallel.ordered_map(abs, [-1] * 64)) == [1] * 64 and len(_Pool.made) == 1
