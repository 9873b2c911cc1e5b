"""Shared fixtures: the OpenCL target (skipped with a reason when no device exists) and the
hypothesis profiles (derandomized and smaller under CI)."""

from __future__ import annotations

import atexit
import os
import tempfile

import pytest
from hypothesis import HealthCheck, settings

from tests.harness import real_devices

OCLGRIND_LOG_PREFIX = os.path.join(tempfile.gettempdir(), "ember-oclgrind-")


def _oclgrind_reports_to_a_file() -> None:
    """Oclgrind reads its settings once, when its ICD initializes (the first
    get_platforms() of the process, after this import): its diagnostics go to a file per
    process (xdist workers inherit the controller's environment, so a path set here is
    replaced), which tests/oclgrind reads after each test; data races in local and global
    memory are reported too. Settings the user made are kept."""
    current = os.environ.get("OCLGRIND_LOG")
    if current is None or current.startswith(OCLGRIND_LOG_PREFIX):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        path = f"{OCLGRIND_LOG_PREFIX}{worker}-{os.getpid()}.log"
        os.environ["OCLGRIND_LOG"] = path
        atexit.register(_remove_if_empty, path)  # Oclgrind creates it in every process
    os.environ.setdefault("OCLGRIND_DATA_RACES", "1")


def _remove_if_empty(path: str) -> None:
    try:
        if os.path.getsize(path) == 0:
            os.remove(path)
    except OSError:
        pass


_oclgrind_reports_to_a_file()

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("EMBER_TEST_EXAMPLES", "8")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=int(os.environ.get("EMBER_TEST_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

NO_DEVICE_REASON = "no OpenCL device found (pip install pocl-binary-distribution gives one)"


def opencl_available() -> bool:
    return bool(real_devices())


@pytest.fixture(scope="session")
def opencl_target() -> str:
    """The target string of the first OpenCL device; skips the test when there is none."""
    found = real_devices()
    if not found:
        pytest.skip(NO_DEVICE_REASON)
    return found[0].target


@pytest.fixture(params=["opencl", "cpu"], scope="session")
def any_target(request) -> str:
    """Each test runs on the OpenCL device and on the numpy executor."""
    if request.param == "opencl":
        found = real_devices()
        if not found:
            pytest.skip(NO_DEVICE_REASON)
        return found[0].target
    return "cpu"
