"""ONNX's backend node tests for ember's ops (from the installed onnx package), run through
`ember.onnx_backend` on the default device and compared the way onnx's own runner compares.
Known failures are expected failures, each with its reason in tests/onnx_node_suite.py."""

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
    run_case(CASES[name])
