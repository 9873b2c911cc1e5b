"""The tuner's tests use the codegen tests' fixtures: a device to tune on, and an empty
ember cache directory per test (the TuningDB and the binary cache live there)."""

from tests.codegen.conftest import cache_dir, device  # noqa: F401  (fixtures)
