"""Fixtures of the codegen tests: a device to tune on, and an empty ember cache directory
per test (the TuningDB and the binary cache live there, so no test sees another's)."""

from __future__ import annotations

import pytest

from ember.runtime.device import resolve_target


@pytest.fixture(scope="module")
def device(opencl_target):
    return resolve_target(opencl_target)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
