"""RotaryEmbedding: the kernel against the op's numpy reference (both layouts, interleaved
or split pairs, a partial rotary_dim, per-batch or shared angles, float32 / float16 /
float64), the reference against a rotation written out pair by pair, and ONNX's
RotaryEmbedding node (3-D and 4-D inputs, with and without position_ids) against ONNX's
own reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.errors import ShapeError
from ember.ir import OPS, DType, TensorType
from tests.harness import TOLERANCE, assert_close, check_op
from tests.strategies import array_for

pytestmark = pytest.mark.opencl


@st.composite
def rotary_case(draw):
    b, h, s = draw(st.sampled_from((1, 2))), draw(st.sampled_from((1, 3))), draw(
        st.sampled_from((1, 4, 7)))
    d = draw(st.sampled_from((2, 6, 16)))
    r = draw(st.sampled_from([0] + [x for x in (2, 4) if x < d]))
    seq_axis = draw(st.sampled_from((1, 2)))
    dtype = draw(st.sampled_from((DType.FLOAT32, DType.FLOAT32, DType.FLOAT16, DType.FLOAT64)))
    seed = draw(st.integers(0, 2**32 - 1))
    x_shape = (b, s, h, d) if seq_axis == 1 else (b, h, s, d)
    angles = (draw(st.sampled_from((1, b))), s, (r or d) // 2)
    arrays = [array_for(seed, x_shape, dtype), array_for(seed + 1, angles, dtype, low=-1, high=1),
              array_for(seed + 2, angles, dtype, low=-1, high=1)]
    attrs = {"interleaved": int(draw(st.booleans())), "rotary_dim": r, "seq_axis": seq_axis}
    return arrays, attrs


@settings(max_examples=8)
@given(case=rotary_case())
def test_rotary_kernel_matches_reference(case, opencl_target):
    arrays, attrs = case
    check_op("RotaryEmbedding", arrays, attrs, target=opencl_target)


def test_reference_rotates_each_pair():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 1, 6))  # [B, S, H, D], rotary_dim 4: features 4, 5 pass
    theta = rng.standard_normal((1, 2, 2))
    cos, sin = np.cos(theta), np.sin(theta)
    for interleaved, pairs in ((0, [(0, 2), (1, 3)]), (1, [(0, 1), (2, 3)])):
        out = OPS["RotaryEmbedding"].evaluate(
            [x, cos, sin], OPS["RotaryEmbedding"].make_attrs(
                {"interleaved": interleaved, "rotary_dim": 4}))[0]
        for s in range(2):
            for k, (p, q) in enumerate(pairs):
                z = complex(x[0, s, 0, p], x[0, s, 0, q]) * np.exp(1j * theta[0, s, k])
                np.testing.assert_allclose([out[0, s, 0, p], out[0, s, 0, q]],
                                           [z.real, z.imag], rtol=1e-12)
        np.testing.assert_array_equal(out[..., 4:], x[..., 4:])


def test_rotary_shape_errors():
    op = OPS["RotaryEmbedding"]
    f = DType.FLOAT32
    with pytest.raises(ShapeError, match="must be even"):
        op.infer_types([TensorType((1, 2, 1, 6), f), TensorType((1, 2, 1), f),
                        TensorType((1, 2, 1), f)], op.make_attrs({"rotary_dim": 3}))
    with pytest.raises(ShapeError, match=r"\[batch or 1, sequence"):
        op.infer_types([TensorType((1, 2, 1, 6), f), TensorType((1, 3, 3), f),
                        TensorType((1, 3, 3), f)], op.make_attrs({}))


def _onnx_model(x, cos, positions, attrs):
    feeds = {"input": x, "cos_cache": cos, "sin_cache": cos + 0.5}
    if positions is not None:
        feeds["position_ids"] = positions
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                            a.shape) for n, a in feeds.items()]
    node = helper.make_node("RotaryEmbedding", list(feeds), ["output"], **attrs)
    out = helper.make_tensor_value_info("output", helper.np_dtype_to_tensor_dtype(x.dtype),
                                        x.shape)
    model = helper.make_model(helper.make_graph([node], "rope", inputs, [out]),
                              opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    return model, feeds


@pytest.mark.parametrize("shape, attrs, with_positions", [
    ((2, 3, 5, 8), {}, True),  # [B, H, S, D]
    ((2, 5, 3 * 8), {"num_heads": 3, "interleaved": 1}, True),  # [B, S, H * D]
    ((2, 3, 5, 8), {"rotary_embedding_dim": 4, "interleaved": 1}, False),
])
def test_onnx_rotary_embedding_matches_the_onnx_reference(shape, attrs, with_positions,
                                                          opencl_target):
    rng = np.random.default_rng(1)
    x = rng.uniform(-2, 2, shape).astype(np.float32)
    half = attrs.get("rotary_embedding_dim", 8) // 2
    seq = shape[2] if len(shape) == 4 else shape[1]
    if with_positions:
        cos = rng.uniform(-1, 1, (11, half)).astype(np.float32)
        positions = rng.integers(0, 11, (shape[0], seq)).astype(np.int64)
    else:
        cos = rng.uniform(-1, 1, (shape[0], seq, half)).astype(np.float32)
        positions = None
    model, feeds = _onnx_model(x, cos, positions, attrs)
    (expected,) = ReferenceEvaluator(model).run(None, feeds)
    got = ember.compile(model, target=opencl_target)(**feeds)["output"]
    assert_close(got, expected, "output", TOLERANCE[DType.FLOAT32])
