"""The recurrence kernel on Oclgrind: every cell, both directions, ragged sequence lengths
(empty ones too), hidden sizes that leave partial vectors, R packed in the kernel (a graph
input at O0) and by the plan (a constant at O2); no invalid access, no barrier divergence,
and the numpy reference's result."""

from __future__ import annotations

import numpy as np
import pytest

import ember
from tests.harness import assert_close, check_op
from tests.ops.test_recurrent import onnx_model, recurrence_attrs, recurrence_inputs

pytestmark = pytest.mark.oclgrind

CASES = [  # cell, direction, S, B, H, family
    ("LSTM", "bidirectional", 3, 3, 5, "cpu"),
    ("LSTM", "forward", 2, 2, 9, "gpu"),
    ("GRU", "reverse", 3, 2, 3, "cpu"),
    ("GRU", "bidirectional", 2, 3, 9, "gpu"),
    ("RNN", "bidirectional", 3, 2, 6, "cpu"),
]


@pytest.mark.parametrize("cell, direction, seq, batch, hidden, family", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[5]}" for c in CASES])
def test_recurrence_kernel_on_oclgrind(cell, direction, seq, batch, hidden, family):
    rng = np.random.default_rng(seq * 100 + hidden)
    arrays = recurrence_inputs(rng, cell, direction, seq, batch, hidden)
    attrs = recurrence_attrs(rng, cell, direction, clip=True)
    if cell == "GRU":  # both phases of the reset gate's product
        attrs["linear_before_reset"] = int(direction == "reverse")
    check_op(f"{cell}Recurrence", arrays, attrs, target=f"oclgrind@{family}")


def test_packed_weights_on_oclgrind():
    """An LSTM with constant weights at O2: the plan packs R, the kernel reads it."""
    model, feeds = onnx_model("LSTM", 3, 2, 3, 9, direction="bidirectional", lens=[3, 1],
                              peepholes=True)
    expected = ember.compile(model, target="cpu")(**feeds)
    got = ember.compile(model, target="oclgrind@cpu", strict=True)(**feeds)
    for name, want in expected.items():
        assert_close(got[name], want, name)
