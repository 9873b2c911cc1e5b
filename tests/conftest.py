"""Shared fixtures: the OpenCL target (skipped with a reason when no device exists) and the
hypothesis profiles (derandomized and smaller under CI)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

import ember

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
    return bool(ember.devices())


@pytest.fixture(scope="session")
def opencl_target() -> str:
    """The target string of the first OpenCL device; skips the test when there is none."""
    found = ember.devices()
    if not found:
        pytest.skip(NO_DEVICE_REASON)
    return found[0].target


@pytest.fixture(params=["opencl", "cpu"], scope="session")
def any_target(request) -> str:
    """Each test runs on the OpenCL device and on the numpy executor."""
    if request.param == "opencl":
        found = ember.devices()
        if not found:
            pytest.skip(NO_DEVICE_REASON)
        return found[0].target
    return "cpu"
