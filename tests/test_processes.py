"""Worker processes: results in job order, the set-up runs once per worker, a failing job stops the run."""

import os
import time

import pytest

from mmsift.exec.processes import run_in_processes

_STATE: dict = {}


def _set_up(offset, big):
    _STATE["offset"] = offset + len(big)
    _STATE["pid"] = os.getpid()


def _job(x):
    time.sleep(0.05 * (x % 3))  # finish out of order
    if x == 99:
        raise ValueError("job 99 is bad")
    return x + _STATE["offset"], _STATE["pid"]


@pytest.mark.slow
def test_results_come_back_in_job_order_from_several_workers():
    import numpy as np

    big = [np.zeros(10) for _ in range(3000)]  # many arrays: handed over through a file, not fd by fd
    out = run_in_processes(_job, list(range(12)), workers=2, initializer=_set_up, initargs=(100, big),
                           progress=False)
    assert [v for v, _ in out] == [x + 3100 for x in range(12)]
    assert os.getpid() not in {pid for _, pid in out}


def test_one_worker_runs_here():
    out = run_in_processes(_job, [1, 2], workers=1, initializer=_set_up, initargs=(5, []), progress=False)
    assert out == [(6, os.getpid()), (7, os.getpid())]


@pytest.mark.slow
def test_a_failing_job_stops_the_run_with_its_error():
    with pytest.raises(ValueError, match="job 99 is bad"):
        run_in_processes(_job, [1, 99, 2, 3], workers=2, initializer=_set_up, initargs=(0, []), progress=False)
