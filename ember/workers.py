"""Worker processes: where a driver bug can only kill a worker, never the user's process.

OpenCL drivers compile kernels inside the calling process, and some crash there: PoCL's
LLVM calls abort() on code it cannot lower, and a kernel that writes out of bounds corrupts
the heap. So the work that runs code no one has run yet on this driver goes to workers:
the tuner's candidates (tuning/tuner.py) and cold program builds (runtime/opencl.py). A
job that kills its worker (a signal, abort(), os._exit) comes back as a failed `Outcome`
naming the signal ("worker killed by SIGABRT"), with the last line the worker wrote to
stderr (e.g. "LLVM ERROR: ..."); a job that runs past its timeout is killed and reported.
A dead worker is replaced by a fresh one at the next job.

Workers are fresh interpreters (what multiprocessing's `spawn` start method makes: nothing
is inherited from a parent that may hold an OpenCL context, which must never be forked),
started through subprocess rather than multiprocessing so that a user's script without an
`if __name__ == "__main__"` guard is not run again in each worker. They get the parent's
environment (so the same EMBER_CACHE_DIR and POCL_CACHE_DIR) and its sys.path, and stay up
for the process's lifetime (one pool, reused by every compile and tuning run), each one
importing ember once (about 1.5 s of one core). A job is a module-level function (pickled by
name) with plain, picklable arguments and result: NodeSpec, Target, numpy arrays, params
dataclasses. An exception a job raises comes back as its `error`, the worker lives on.

EMBER_WORKERS: the number of workers (default: the CPU count); 0 builds and tunes in the
calling process, as before workers existed (faster on a machine where starting workers
costs more than it saves, but then a driver crash takes the process down).
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = ["Outcome", "WorkerPool", "WORKERS_ENV", "worker_count", "shared_pool",
           "isolated", "run_isolated", "serve"]

log = logging.getLogger(__name__)

WORKERS_ENV = "EMBER_WORKERS"
Job = tuple[Callable[..., Any], tuple[Any, ...]]


@dataclass(frozen=True)
class Outcome:
    """What one job gave: its value, or why it has none. `crashed`: the worker died or
    hung (the job's code may have brought the driver down), as opposed to an exception."""

    value: Any = None
    error: str | None = None
    crashed: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def worker_count() -> int:
    """EMBER_WORKERS, else the CPU count (0: no workers, run jobs in this process)."""
    text = os.environ.get(WORKERS_ENV, "").strip()
    if text:
        try:
            return max(0, int(text))
        except ValueError:
            log.warning("%s=%r is not a number; using the CPU count", WORKERS_ENV, text)
    return max(1, os.cpu_count() or 1)


def isolated() -> bool:
    """Whether jobs run in workers (EMBER_WORKERS is not 0)."""
    return worker_count() > 0


def _death(returncode: int | None) -> str:
    if returncode is None:
        return "worker died"
    if returncode < 0:
        try:
            return f"worker killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"worker killed by signal {-returncode}"
    return f"worker exited with status {returncode}"


class _Worker:
    """One worker process and its end of the socket; stderr goes to a file whose new
    lines explain a crash."""

    def __init__(self) -> None:
        import socket

        ours, theirs = socket.socketpair()
        self.stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from ember.workers import serve; "
             "serve(int(sys.argv[1]))", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self.stderr, env=env, close_fds=True)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.job: int | None = None  # index of the job it runs
        self.deadline = 0.0
        self.stderr_mark = 0

    def send(self, index: int, job: Job, timeout: float) -> None:
        self.stderr.seek(0, os.SEEK_END)
        self.stderr_mark = self.stderr.tell()
        self.job, self.deadline = index, time.monotonic() + timeout
        self.conn.send_bytes(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))

    def last_words(self) -> str:
        """The last line the worker wrote to stderr since its job began."""
        try:
            self.stderr.seek(self.stderr_mark)
            text = self.stderr.read()[-4000:].decode(errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        return ((errors or lines or [""])[-1])[:300]

    def kill(self) -> int | None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
            code = None
        self.conn.close()
        self.stderr.close()
        return code

    def stop(self) -> None:
        try:
            self.conn.send_bytes(b"")  # the worker's cue to exit
        except OSError:
            pass
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


class WorkerPool:
    """Up to `size` workers, started when a job needs them and reused. `run` is one call
    at a time (a lock): jobs of concurrent callers queue."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self.started = 0  # workers started over the pool's life (tests read it)
        self.jobs = 0  # jobs sent to workers

    def _take(self) -> _Worker:
        if self._idle:
            return self._idle.pop()
        self.started += 1
        return _Worker()

    def prestart(self, count: int | None = None) -> None:
        """Start workers now (they import ember while the caller does other work)."""
        with self._lock:
            while len(self._idle) < min(self.size, count or self.size):
                self.started += 1
                self._idle.append(_Worker())

    def run(self, jobs: Sequence[Job], timeout: float, parallel: int | None = None
            ) -> list[Outcome]:
        """Run each job in a worker, at most `parallel` (default: the pool's size) at once;
        the outcomes in the jobs' order. `timeout` is per job, in seconds."""
        with self._lock:
            return self._run(list(jobs), timeout, min(self.size, parallel or self.size))

    def _run(self, jobs: list[Job], timeout: float, parallel: int) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(jobs)
        pending = list(range(len(jobs)))
        pending.reverse()
        busy: dict[Connection, _Worker] = {}
        try:
            while pending or busy:
                while pending and len(busy) < parallel:
                    index = pending.pop()
                    worker = self._take()
                    self.jobs += 1
                    try:
                        worker.send(index, jobs[index], timeout)
                    except (OSError, pickle.PicklingError, AttributeError, TypeError) as exc:
                        if isinstance(exc, OSError):  # it died before the job: a new one
                            worker.kill()
                            pending.append(index)
                        else:
                            outcomes[index] = Outcome(error=f"job not picklable: {exc}")
                            self._idle.append(worker)
                        continue
                    busy[worker.conn] = worker
                if not busy:
                    continue
                now = time.monotonic()
                soonest = min(w.deadline for w in busy.values())
                for conn in wait(list(busy), timeout=max(0.0, soonest - now)):
                    worker = busy.pop(conn)  # type: ignore[arg-type]
                    assert worker.job is not None
                    try:
                        status, value = pickle.loads(conn.recv_bytes())
                    except (EOFError, OSError):
                        words = worker.last_words()
                        code = worker.kill()
                        why = _death(code) + (f" ({words})" if words else "")
                        outcomes[worker.job] = Outcome(error=why, crashed=True)
                        continue
                    outcomes[worker.job] = (Outcome(value) if status == "ok"
                                            else Outcome(error=value))
                    worker.job = None
                    self._idle.append(worker)
                now = time.monotonic()
                for conn, worker in list(busy.items()):
                    if now >= worker.deadline:
                        del busy[conn]
                        assert worker.job is not None
                        worker.kill()
                        outcomes[worker.job] = Outcome(
                            error=f"worker timed out after {timeout:.0f} s and was killed",
                            crashed=True)
        finally:
            for worker in busy.values():  # interrupted (KeyboardInterrupt): no half-done jobs
                worker.kill()
        return [o if o is not None else Outcome(error="not run") for o in outcomes]

    def close(self) -> None:
        with self._lock:
            for worker in self._idle:
                worker.stop()
            self._idle.clear()


_SHARED: list[WorkerPool] = []
_SHARED_LOCK = threading.Lock()


def shared_pool() -> WorkerPool:
    """The process's pool (worker_count() workers), made at first use, closed at exit."""
    with _SHARED_LOCK:
        if not _SHARED:
            _SHARED.append(WorkerPool(worker_count()))
            atexit.register(_SHARED[0].close)
        return _SHARED[0]


def run_isolated(jobs: Sequence[Job], timeout: float, parallel: int | None = None
                 ) -> list[Outcome]:
    """The jobs in the shared pool's workers, or in this process when EMBER_WORKERS=0
    (where an exception is still an `error`, but a crash is the caller's)."""
    if isolated():
        return shared_pool().run(jobs, timeout, parallel)
    outcomes = []
    for function, args in jobs:
        try:
            outcomes.append(Outcome(function(*args)))
        except Exception as exc:  # noqa: BLE001 - reported as the job's error, as in a worker
            outcomes.append(Outcome(error=f"{type(exc).__name__}: {exc}"))
    return outcomes


def serve(fd: int) -> None:
    """A worker's loop: run each job received on `fd`, send back ("ok", value) or
    ("error", text); an empty message or the parent gone ends it."""
    conn = Connection(fd)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not message:
            return
        try:
            function, args = pickle.loads(message)
            reply: tuple[str, Any] = ("ok", function(*args))
        except Exception as exc:  # noqa: BLE001 - any failure of the job is its result
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result is the job's error
            data = pickle.dumps(("error", f"result not picklable: {exc}"))
        try:
            conn.send_bytes(data)
        except OSError:
            return
