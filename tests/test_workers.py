"""The worker pool (ember/workers.py): a job that kills its worker (a signal, abort(),
os._exit) or hangs comes back as a failure naming why, the other jobs of the same run
finish, and the pool goes on with fresh workers. The jobs are this module's functions
(workers import them by name)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from ember.workers import Outcome, WorkerPool, run_isolated, worker_count


def square(x: np.ndarray) -> np.ndarray:
    return x * x


def pid() -> int:
    return os.getpid()


def fail(text: str) -> None:
    raise ValueError(text)


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def abort() -> None:
    os.abort()


def exit_quietly() -> None:
    os._exit(3)


def hang() -> None:
    time.sleep(60)


@pytest.fixture(scope="module")
def pool():
    made = WorkerPool(2)
    yield made
    made.close()


def test_results_and_errors_come_back_in_job_order(pool):
    x = np.arange(5, dtype=np.float32)
    outcomes = pool.run([(square, (x,)), (fail, ("no",)), (square, (x + 1,))], timeout=60)
    np.testing.assert_array_equal(outcomes[0].value, x * x)
    assert outcomes[1] == Outcome(error="ValueError: no")
    np.testing.assert_array_equal(outcomes[2].value, (x + 1) ** 2)
    assert (outcomes[0].ok, outcomes[1].ok) == (True, False)


def test_a_job_that_kills_its_worker_fails_alone_and_the_pool_goes_on(pool):
    x = np.ones(3)
    jobs = [(segfault, ()), (square, (x,)), (abort, ()), (exit_quietly, ()), (square, (x,))]
    outcomes = pool.run(jobs, timeout=60)
    assert outcomes[0].crashed and outcomes[0].error.startswith("worker killed by SIGSEGV")
    assert outcomes[2].crashed and outcomes[2].error.startswith("worker killed by SIGABRT")
    assert outcomes[3].crashed and outcomes[3].error == "worker exited with status 3"
    assert outcomes[1].ok and outcomes[4].ok
    before = pool.started
    (again,) = pool.run([(square, (x,))], timeout=60)
    assert again.ok and pool.started == before  # a surviving worker is reused


def test_a_hung_job_is_killed_after_its_timeout(pool):
    start = time.monotonic()
    hung, fine = pool.run([(hang, ()), (pid, ())], timeout=3)
    assert hung.crashed and "timed out" in hung.error
    assert fine.ok and fine.value != os.getpid()
    assert time.monotonic() - start < 30


def test_a_job_that_cannot_be_pickled_is_an_error(pool):
    (outcome,) = pool.run([(lambda: 1, ())], timeout=60)
    assert not outcome.ok and not outcome.crashed and "picklable" in outcome.error


def test_workers_off_runs_jobs_here(monkeypatch):
    monkeypatch.setenv("EMBER_WORKERS", "0")
    assert worker_count() == 0
    here, failed = run_isolated([(pid, ()), (fail, ("x",))], timeout=60)
    assert here.value == os.getpid() and failed.error == "ValueError: x"
