"""FuseEpilogues through views: an elementwise node behind a Reshape (or a chain of them) of a
MatMul / Conv result joins the product's epilogue, the Reshape moving after the fused kernel.

Each case is compiled at O0 and O3 on the OpenCL device (outputs must agree, the verifier runs
after every pass) and the O3 graph is counted; the near misses must keep their elementwise
node: a view with a second user, a view that is a graph output, an operand broadcast over an
axis the reshape changes, a non-elementwise user. The gpt2_mini model, whose exporter puts a
Reshape between each MLP MatMul and its Gelu, is checked to have no standalone Gelu left.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import ember
from tests.lowering.test_fusion import F32, build, compare, weight

pytestmark = pytest.mark.opencl

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_gelu_tanh_behind_a_reshape_joins_the_matmul(opencl_target):
    # the gpt2 MLP shape: (S, H) @ (H, 4H), viewed as (1, S, 4H), then Gelu(tanh)
    def body(b, x):
        h = b.Reshape(b.MatMul(x, b.constant(weight(8, 24))), shape=(1, 7, 24))
        return b.Gelu(h, approximate="tanh")
    ops, model = compare(build({"x": (7, 8)}, body), opencl_target)
    assert ops == Counter({"MatMul": 1, "Reshape": 1})
    assert model.stats.kernel_launches == 1


def test_bias_over_kept_trailing_axes_and_a_same_shape_residual(opencl_target):
    # bias (24,) broadcasts over the axis the view keeps; the residual has the view's shape
    # and is read through its own reshape
    def body(b, x, r):
        h = b.Reshape(b.MatMul(x, b.constant(weight(8, 24))), shape=(1, 7, 24))
        return b.Add(b.Relu(b.Add(h, b.constant(weight(24, seed=2)))), r)
    ops, model = compare(build({"x": (7, 8), "r": (1, 7, 24)}, body), opencl_target)
    assert ops == Counter({"MatMul": 1, "Reshape": 2})
    assert model.stats.kernel_launches == 1


def test_scalar_operand_of_higher_rank(opencl_target):
    def body(b, x):
        h = b.Reshape(b.MatMul(x, b.constant(weight(6, 10))), shape=(1, 5, 10))
        return b.Mul(h, b.constant(np.full((1, 1, 1), 0.5, F32)))
    ops, _ = compare(build({"x": (5, 6)}, body), opencl_target)
    assert ops == Counter({"MatMul": 1, "Reshape": 1})


def test_chain_of_views(opencl_target):
    def body(b, x):
        h = b.Reshape(b.MatMul(x, b.constant(weight(6, 12))), shape=(1, 4, 12))
        return b.Sigmoid(b.Reshape(h, shape=(4, 3, 4)))
    ops, _ = compare(build({"x": (4, 6)}, body), opencl_target)
    assert ops == Counter({"MatMul": 1, "Reshape": 1})


def test_flattened_conv_then_relu(opencl_target):
    def body(b, x):
        y = b.Conv(x, b.constant(weight(5, 3, 3, 3)), pads=(1, 1, 1, 1))
        return b.Relu(b.Reshape(y, shape=(2, 5 * 4 * 6)))
    ops, _ = compare(build({"x": (2, 3, 4, 6)}, body), opencl_target)
    assert ops == Counter({"Conv": 1, "Reshape": 1})


# -- near misses ------------------------------------------------------------------------------
def test_view_with_a_second_user_is_not_fused(opencl_target):
    def body(b, x):
        h = b.Reshape(b.MatMul(x, b.constant(weight(8, 16))), shape=(1, 5, 16))
        return b.Tanh(h), b.ReduceSum(h, axes=(2,))
    ops, _ = compare(build({"x": (5, 8)}, body), opencl_target)
    assert ops["Tanh"] == 1 and ops["MatMul"] == 1


def test_view_that_is_a_graph_output_is_not_fused(opencl_target):
    def body(b, x):
        h = b.Reshape(b.MatMul(x, b.constant(weight(8, 16))), shape=(1, 5, 16))
        return h, b.Tanh(h)
    ops, _ = compare(build({"x": (5, 8)}, body), opencl_target)
    assert ops == Counter({"MatMul": 1, "Reshape": 1, "Tanh": 1})


def test_operand_broadcast_over_a_reshaped_axis_is_not_fused(opencl_target):
    # the product is (6, 8); viewed as (2, 3, 8), a (3, 1) operand varies along an axis the
    # product does not have
    def body(b, x, s):
        h = b.Reshape(b.MatMul(x, b.constant(weight(4, 8))), shape=(2, 3, 8))
        return b.Mul(h, s)
    ops, _ = compare(build({"x": (6, 4), "s": (3, 1)}, body), opencl_target)
    assert ops == Counter({"MatMul": 1, "Reshape": 1, "Mul": 1})


def test_bias_over_a_split_last_axis_is_not_fused(opencl_target):
    # (4, 6) viewed as (4, 2, 3): a (3,) bias does not follow the product's last axis
    def body(b, x):
        h = b.Reshape(b.MatMul(x, b.constant(weight(5, 6))), shape=(4, 2, 3))
        return b.Add(h, b.constant(weight(3, seed=4)))
    ops, _ = compare(build({"x": (4, 5)}, body), opencl_target)
    assert ops == Counter({"MatMul": 1, "Reshape": 1, "Add": 1})


def test_non_elementwise_user_behind_a_view_stays(opencl_target):
    def body(b, x):
        h = b.Reshape(b.MatMul(x, b.constant(weight(8, 6))), shape=(1, 5, 6))
        return b.Softmax(h, axis=-1)
    ops, _ = compare(build({"x": (5, 8)}, body), opencl_target)
    assert ops["MatMul"] == 1 and ops["Softmax"] == 1


# -- the model ----------------------------------------------------------------------------------
def test_gpt2_mini_has_no_standalone_gelu(opencl_target):
    model = ember.compile(MODELS / "gpt2_mini.onnx", target=opencl_target, opt_level=3,
                          input_shapes={"input_ids": (1, 16)})
    ops = Counter(step.op for step in model.plan.steps)
    assert ops["Gelu"] == 0 and ops["FusedElementwise"] == 0
    labels = [step.attrs["epilogue"].label for step in model.plan.steps
              if step.op == "MatMul" and step.attrs["epilogue"] is not None]
    assert labels.count("Gelu") == 2  # one per layer
