"""ONNX's backend node tests (every case the installed onnx package ships), run through
`ember.onnx_backend` and compared the way onnx's own runner compares. Known failures are
expected failures, each with its reason in tests/onnx_node_suite.py.

The cases run on the default device (PoCL here), except the `_expanded` ones: those are an
op's ONNX function body written out in other ops, each of which has its own cases on the
device, so they run on the numpy executor, which checks the converters and references they
exercise at a fraction of the build time (480 cases; `python -m tests.onnx_node_suite`
runs every case on the default device)."""

from __future__ import annotations

import pytest

from tests.onnx_node_suite import KNOWN_FAILURES, in_scope_cases, run_case

CASES = {case.name: case for case in in_scope_cases()}


def _param(name: str):
    if name in KNOWN_FAILURES:
        return pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN_FAILURES[name], strict=True))
    return name


@pytest.mark.parametrize("name", [_param(n) for n in CASES])
def test_onnx_node(name: str) -> None:
    run_case(CASES[name], "NUMPY" if "_expanded" in name else "CPU")
