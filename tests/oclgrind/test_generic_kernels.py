"""Generic kernels on Oclgrind: the kernels a model with free dims runs for every new size
(their sizes as arguments, grids padded to a fixed work-group and guarded) make no invalid
access at any size, on each family's strategies, and match the numpy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ember
from tests.codegen.test_generic import dynamic_model, feeds
from tests.harness import assert_close, relative_l2
from tests.oclgrind.conftest import NO_OCLGRIND, oclgrind_installed

pytestmark = pytest.mark.skipif(not oclgrind_installed(), reason=NO_OCLGRIND)

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.mark.parametrize("family", ["cpu", "nvidia"])
def test_generic_kernels_at_new_sizes(oclgrind_log, family):
    model = dynamic_model()
    compiled = ember.compile(model, target=f"oclgrind@{family}")
    reference = ember.compile(model, target="cpu")
    for n in (3, 70, 5):
        assert_close(compiled(**feeds(n))["y"], reference(**feeds(n))["y"], f"y at n={n}")
        assert oclgrind_log.take() == "", f"n={n}"
    assert any(launch.kernel.scalar_types for step in compiled.plan.steps
               if step.lowered is not None for launch in step.lowered.launches)


def test_bert_attention_on_generic_kernels(oclgrind_log):
    compiled = ember.compile(MODELS / "bert_mini.onnx", target="oclgrind@cpu")
    reference = ember.compile(MODELS / "bert_mini.onnx", target="cpu")
    for length in (4, 11):
        rng = np.random.default_rng(length)
        inputs = {"input_ids": rng.integers(0, 1000, (1, length)).astype(np.int64),
                  "attention_mask": np.ones((1, length), np.int64)}
        out = compiled(**inputs)
        expected = reference(**inputs)
        for name in expected:  # the model tier's bound (tests/test_models.py REL_L2)
            assert relative_l2(out[name], expected[name]) <= 1e-4, f"{name} at {length}"
        assert oclgrind_log.take() == "", f"length {length}"
