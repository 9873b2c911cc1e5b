"""ONNX's backend node tests for ember's ops, run by onnx's own BackendTest runner through
`ember.onnx_backend` on the default device. Known failures are expected failures, each with
its reason in tests/onnx_node_suite.py."""

from __future__ import annotations

import re
import warnings

import onnx.backend.test

from ember.onnx_backend import EmberBackend
from tests.onnx_node_suite import KNOWN_FAILURES, in_scope_cases

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _backend_test = onnx.backend.test.BackendTest(EmberBackend, __name__)
    _names = [case.name for case in in_scope_cases()]
    _backend_test.include("^(" + "|".join(re.escape(n) for n in _names) + ")_cpu$")
    for _name in KNOWN_FAILURES:
        _backend_test.xfail("^" + re.escape(_name) + "_cpu$")
    globals().update(_backend_test.test_cases)
