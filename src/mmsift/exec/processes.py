"""Worker processes on one machine: independent jobs spread over CPU cores, results in job order.

The bench trains one small model per subset with one torch thread each (that keeps it deterministic); a 64-wide
model gains little from intra-op threads, so the cores are used by running several jobs at once instead. Workers
are *spawned*, not forked: a fork of a process that has already run torch's thread pool can hang.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def run_in_processes(fn: Callable, jobs: Sequence, *, workers: int, initializer: Callable, initargs: tuple = (),
                     desc: str = "jobs", progress: bool = True) -> list:
    """``fn(job)`` for every job, in ``workers`` spawned processes set up once by ``initializer(*initargs)``.

    Returns the results in the order of ``jobs``. With ``workers <= 1`` (or a single job) everything runs here,
    after calling ``initializer`` in this process. The first job that raises stops the run: jobs not started
    are cancelled and the exception is raised here.
    """
    workers = max(1, min(int(workers), len(jobs)))
    bar = tqdm(total=len(jobs), desc=desc, unit="run", disable=not progress)
    try:
        if workers == 1:
            initializer(*initargs)
            results = []
            for job in jobs:
                results.append(fn(job))
                bar.update()
            return results
        log.info("%s: %d jobs on %d worker processes", desc, len(jobs), workers)
        # The set-up data goes through a file with the plain pickler: handed to the pool directly, torch would
        # share every tensor in it by its own file descriptor and run out of them on a large pool.
        with tempfile.NamedTemporaryFile(prefix="mmsift-workers-", suffix=".pkl") as setup:
            pickle.dump((initializer, initargs), setup, protocol=pickle.HIGHEST_PROTOCOL)
            setup.flush()
            return _run_pool(fn, jobs, workers, setup.name, bar)
    finally:
        bar.close()


def _set_up_worker(path: str) -> None:
    with open(path, "rb") as f:
        initializer, initargs = pickle.load(f)
    initializer(*initargs)


def _run_pool(fn, jobs, workers: int, setup_path: str, bar) -> list:
    out: list = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_set_up_worker, initargs=(setup_path,)) as pool:
        futures = {pool.submit(fn, job): k for k, job in enumerate(jobs)}
        try:
            for fut in as_completed(futures):
                out[futures[fut]] = fut.result()
                bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return out
