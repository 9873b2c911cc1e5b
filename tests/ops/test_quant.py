"""The quantized ops' numpy references against ONNX's own reference implementation, bit for
bit, and their type inference.

Drawn inputs have odd sizes and sizes of 1, negative values, exact .5 ties (x = (n + 0.5) *
scale with a power-of-two scale, so that the division is exact) and values far outside the
quantized range. ONNX's reference turns NaN, inf and quotients beyond int32 into undefined
integers, so those are checked against the spec's meaning directly: +-inf saturate, NaN is
the zero point (ember's documented choice).
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, strategies as st
from onnx import helper
from onnx.reference import ReferenceEvaluator

from ember.errors import DTypeError, ShapeError
from ember.frontends.builder import GraphBuilder
from ember.ir import OPS, DType, TensorType
from ember.ir.attrs import Attrs
from ember.ir.ops.fused import ExprNode, FusedExpr
from ember.lowering import PassContext
from ember.lowering.simplify import FoldConstants

QUANT_DTYPES = [DType.INT8, DType.UINT8, DType.INT16, DType.UINT16, DType.INT4, DType.UINT4]


def onnx_reference(op_type: str, inputs: list[np.ndarray], **attrs) -> np.ndarray:
    names = [f"in{i}" for i in range(len(inputs))]
    node = helper.make_node(op_type, names, ["out"], **attrs)
    with np.errstate(all="ignore"):  # its float16 overflows are meant (inf)
        return ReferenceEvaluator(node).run(None, dict(zip(names, inputs)))[0]


def evaluate(op: str, inputs: list[np.ndarray], **attrs) -> np.ndarray:
    opdef = OPS[op]
    attrs_ = opdef.make_attrs(attrs)
    types = [TensorType(a.shape, DType.from_numpy(a.dtype)) for a in inputs]
    (out_type,) = opdef.infer_types(types, attrs_)
    (result,) = opdef.evaluate(inputs, attrs_)
    assert result.shape == out_type.shape and result.dtype == out_type.dtype.np_dtype
    return result


def assert_bits_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, \
        (actual.shape, actual.dtype, expected.shape, expected.dtype)
    np.testing.assert_array_equal(actual.view(np.uint8) if actual.dtype.kind == "f" else
                                  actual.astype(np.int64),
                                  expected.view(np.uint8) if expected.dtype.kind == "f" else
                                  expected.astype(np.int64))


def qrange(dtype: DType) -> tuple[int, int]:
    info = ml_dtypes.iinfo(dtype.np_dtype)
    return int(info.min), int(info.max)


@st.composite
def quant_case(draw, blocked: bool = False):
    """(x, scale, zero, axis, block_size, kind): data with ties and saturating values and
    per-tensor, per-axis or blocked parameters (kind says which)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.sampled_from([1, 2, 3, 5, 7]), min_size=rank,
                                max_size=rank)))
    dtype = draw(st.sampled_from(QUANT_DTYPES))
    x_dtype = draw(st.sampled_from([np.float32, np.float32, np.float16]))
    axis = draw(st.integers(0, rank - 1))
    kind = "blocked" if blocked else draw(st.sampled_from(["tensor", "axis"]))
    block_size = draw(st.integers(1, 4)) if blocked else 0
    if kind == "tensor":
        pshape: tuple[int, ...] = ()
    elif kind == "axis":
        pshape = (shape[axis],)
    else:
        pshape = tuple(math.ceil(d / block_size) if i == axis else d
                       for i, d in enumerate(shape))
    # Powers of two keep float16 division exact (ONNX divides in the scale's type, ember in
    # float32); float32 also gets arbitrary scales.
    exponents = rng.integers(-4, 4, size=pshape)
    scale = np.ldexp(1.0, exponents)
    if x_dtype == np.float32 and draw(st.booleans()):
        scale = rng.uniform(0.01, 3.0, size=pshape)
    scale = scale.astype(x_dtype)
    low, high = qrange(dtype)
    zero = rng.integers(low, high + 1, size=pshape).astype(dtype.np_dtype)
    full_scale = scale if kind != "axis" else scale.reshape(
        [-1 if i == axis else 1 for i in range(rank)])
    if kind == "blocked":
        full_scale = np.take(np.repeat(scale, block_size, axis=axis), np.arange(shape[axis]),
                             axis=axis)
    span = (high - low + 4) / 2
    steps = rng.integers(-int(span * 1.5), int(span * 1.5) + 1, size=shape) + \
        rng.choice([0.0, 0.5, -0.5, 0.25], size=shape)
    finite = float(np.finfo(x_dtype).max) / 2
    x = np.clip(steps * full_scale.astype(np.float64), -finite, finite).astype(x_dtype)
    if x_dtype == np.float32:
        x = np.where(rng.random(shape) < 0.2, rng.uniform(-1e5, 1e5, shape), x)
    return x.astype(x_dtype), scale, zero, axis, block_size, kind


def _onnx_params(kind: str, axis: int) -> dict:
    return {"axis": axis} if kind == "axis" else {}


# -- QuantizeLinear / DequantizeLinear ---------------------------------------------------------
@given(quant_case())
def test_quantize_matches_onnx_reference(case):
    x, scale, zero, axis, _, kind = case
    if kind == "axis":
        shape = [-1 if i == axis else 1 for i in range(x.ndim)]
        got = evaluate("QuantizeLinear", [x, scale.reshape(shape), zero.reshape(shape)])
    else:
        got = evaluate("QuantizeLinear", [x, scale, zero])
    expected = onnx_reference("QuantizeLinear", [x, scale, zero], **_onnx_params(kind, axis))
    assert_bits_equal(got, expected)


@given(quant_case())
def test_dequantize_matches_onnx_reference(case):
    x_float, scale, zero, axis, _, kind = case
    low, high = qrange(DType.from_numpy(zero.dtype))
    rng = np.random.default_rng(x_float.size)
    x = rng.integers(low, high + 1, size=x_float.shape).astype(zero.dtype)
    if kind == "axis":
        shape = [-1 if i == axis else 1 for i in range(x.ndim)]
        got = evaluate("DequantizeLinear", [x, scale.reshape(shape), zero.reshape(shape)])
    else:
        got = evaluate("DequantizeLinear", [x, scale, zero])
    expected = onnx_reference("DequantizeLinear", [x, scale, zero], **_onnx_params(kind, axis))
    assert_bits_equal(got, expected)


@given(quant_case(blocked=True))
def test_block_quantize_and_dequantize_match_onnx_reference(case):
    x, scale, zero, axis, block_size, _ = case
    got = evaluate("BlockQuantize", [x, scale, zero], axis=axis, block_size=block_size)
    expected = onnx_reference("QuantizeLinear", [x, scale, zero], axis=axis,
                              block_size=block_size)
    assert_bits_equal(got, expected)
    back = evaluate("BlockDequantize", [got, scale, zero], axis=axis, block_size=block_size)
    assert_bits_equal(back, onnx_reference("DequantizeLinear", [got, scale, zero], axis=axis,
                                           block_size=block_size))


def test_dequantize_int32_matches_onnx_reference():
    x = np.array([-(2**31), -7, 0, 3, 2**31 - 1, 16777217], np.int32)
    scale = np.float32(0.37)
    got = evaluate("DequantizeLinear", [x, np.asarray(scale), np.zeros((), np.int32)])
    assert_bits_equal(got, onnx_reference("DequantizeLinear", [x, np.asarray(scale)]))


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
@pytest.mark.parametrize("x_dtype", [np.float32, np.float16])
def test_quantize_special_values(dtype, x_dtype):
    """+-inf and huge values saturate; NaN quantizes to the zero point."""
    low, high = qrange(dtype)
    zero = np.asarray(min(max(1, low), high), dtype.np_dtype)
    x = np.array([np.nan, np.inf, -np.inf, 6e4, -6e4, 0.0, -0.0], x_dtype)
    if x_dtype == np.float32:
        x = np.concatenate([x, np.array([3e38, -3e38, 1e10], np.float32)])
    got = evaluate("QuantizeLinear", [x, np.asarray(0.5, x_dtype), zero])
    expected = [zero, high, low, high, low, zero, zero] + ([high, low, high] if x.size > 7
                                                           else [])
    np.testing.assert_array_equal(got.astype(np.int64), np.array(expected, np.int64))


def test_quantize_divides_in_float32_for_float16():
    """float16 x / float16 scale is divided in float32, then rounded half to even."""
    x = np.array([1.0, 3.0, 5.0, -5.0, 7.0], np.float16)
    scale = np.asarray(2.0, np.float16)
    got = evaluate("QuantizeLinear", [x, scale, np.zeros((), np.int8)])
    np.testing.assert_array_equal(got, np.array([0, 2, 2, -2, 4], np.int8))  # 0.5, 1.5 ...
    x = np.array([1.0009765625], np.float16)  # float16 quotient by 3 and float32 differ
    scale = np.asarray(3.0, np.float16) * np.asarray(1e-3, np.float16)
    expected = np.clip(np.rint(np.float32(x[0]) / np.float32(scale)), -128, 127)
    assert evaluate("QuantizeLinear", [x, scale, np.zeros((), np.int8)])[0] == expected


# -- MatMulInteger / ConvInteger --------------------------------------------------------------
@st.composite
def matmul_integer_case(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m, k, n = (draw(st.sampled_from([1, 2, 3, 5, 7, 16])) for _ in range(3))
    batch_a = tuple(draw(st.lists(st.sampled_from([1, 2, 3]), max_size=2)))
    batch_b = batch_a[len(batch_a) - draw(st.integers(0, len(batch_a))):]
    batch_b = tuple(1 if draw(st.booleans()) else d for d in batch_b)
    a_dtype, b_dtype = (draw(st.sampled_from([np.int8, np.uint8])) for _ in range(2))

    def ints(dtype, shape):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, size=shape).astype(dtype)

    a = ints(a_dtype, batch_a + (m, k))
    b = ints(b_dtype, batch_b + (k, n))
    a_zero = ints(a_dtype, draw(st.sampled_from([(), (m, 1)])))
    b_zero = ints(b_dtype, draw(st.sampled_from([(), (n,)])))
    return a, b, a_zero, b_zero


@given(matmul_integer_case())
def test_matmul_integer_matches_onnx_reference(case):
    a, b, a_zero, b_zero = case
    got = evaluate("MatMulInteger", [a, b, a_zero, b_zero])
    assert_bits_equal(got, onnx_reference("MatMulInteger", [a, b, a_zero, b_zero]))


@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2]), st.sampled_from([1, 2]),
       st.sampled_from([1, 2]), st.booleans(), st.booleans())
def test_conv_integer_matches_onnx_reference(seed, group, stride, dilation, per_channel,
                                             signed):
    rng = np.random.default_rng(seed)
    x_dtype, w_dtype = (np.int8, np.int8) if signed else (np.uint8, np.int8)
    cin, cout = 2 * group, 3 * group
    x = rng.integers(-128 if signed else 0, 128 if signed else 256,
                     size=(rng.integers(1, 3), cin, rng.integers(5, 9), rng.integers(5, 9))
                     ).astype(x_dtype)
    w = rng.integers(-128, 128, size=(cout, 2, rng.integers(1, 4), rng.integers(1, 4))
                     ).astype(w_dtype)
    x_zero = np.asarray(rng.integers(-9 if signed else 100, 9 if signed else 156), x_dtype)
    w_zero = rng.integers(-5, 5, size=(cout,) if per_channel else ()).astype(w_dtype)
    pads = tuple(int(p) for p in rng.integers(0, 3, size=4))
    attrs = {"strides": (stride, stride), "dilations": (dilation, dilation), "pads": pads,
             "group": group}
    got = evaluate("ConvInteger", [x, w, x_zero, w_zero], **attrs)
    expected = onnx_reference("ConvInteger", [x, w, x_zero, w_zero],
                              **{k: list(v) if isinstance(v, tuple) else v
                                 for k, v in attrs.items()})
    assert_bits_equal(got, expected)


def test_matmul_integer_epilogue_changes_the_output_dtype():
    """Cast -> Mul by a scale -> QuantizeLinear folded into the product gives int8, equal to
    the unfused chain."""
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (3, 5, 7)).astype(np.int8)
    b = rng.integers(0, 256, (7, 4)).astype(np.uint8)
    a_zero, b_zero = np.asarray(3, np.int8), rng.integers(0, 256, 4).astype(np.uint8)
    scale, one, zero = np.float32(0.013), np.float32(1.0), np.asarray(-5, np.int8)
    cast = Attrs({"to": DType.FLOAT32, "saturate": 1})
    epilogue = FusedExpr(4, (ExprNode("Cast", (0,), cast, DType.FLOAT32),
                             ExprNode("Mul", (4, 1), Attrs(), DType.FLOAT32),
                             ExprNode("QuantizeLinear", (5, 2, 3), Attrs({"saturate": 1}),
                                      DType.INT8)), (6,))
    inputs = [a, b, a_zero, b_zero, np.asarray(scale), np.asarray(one), zero]
    got = evaluate("MatMulInteger", inputs, epilogue=epilogue)
    product = evaluate("MatMulInteger", inputs[:4])
    expected = evaluate("QuantizeLinear", [product.astype(np.float32) * scale,
                                           np.asarray(one), zero])
    assert got.dtype == np.int8
    assert_bits_equal(got, expected)


# -- BlockQuantMatMul -------------------------------------------------------------------------
@given(st.integers(0, 2**32 - 1), st.sampled_from([4, 8]), st.sampled_from([16, 32, 256]),
       st.sampled_from([1, 15, 16, 33, 300]), st.sampled_from([1, 3]),
       st.sampled_from([np.float32, np.float16]))
def test_block_quant_matmul_matches_dequantized_product(seed, bits, block_size, k, n, dtype):
    """Against an independent unpacking and a float64 product, within the float32
    accumulation bound (K * 2^-24 * sum |a w|) plus one rounding to the output dtype."""
    rng = np.random.default_rng(seed)
    blocks = math.ceil(k / block_size)
    q = rng.integers(0, 1 << bits, (n, blocks * block_size)).astype(np.uint8)
    q[:, k:] = 0
    packed = q if bits == 8 else (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    w = packed.reshape(n, blocks, block_size * bits // 8)
    scales = rng.uniform(0.001, 0.1, (n, blocks)).astype(dtype)
    zeros = rng.integers(0, 1 << bits, (n, blocks)).astype(np.uint8)
    a = rng.uniform(-2, 2, (2, k)).astype(dtype)
    got = evaluate("BlockQuantMatMul", [a, w, scales, zeros], bits=bits,
                   block_size=block_size, k=k, n=n)
    per_k = np.repeat(np.arange(blocks), block_size)[:k]
    w_float = (q[:, :k].astype(np.float64) - zeros[:, per_k]) * scales[:, per_k].astype(
        np.float64)
    expected = a.astype(np.float64) @ w_float.T
    bound = k * 2.0**-24 * (np.abs(a.astype(np.float64)) @ np.abs(w_float).T) + \
        np.abs(expected) * float(np.finfo(dtype).eps)
    assert got.dtype == dtype and got.shape == (2, n)
    assert np.all(np.abs(got.astype(np.float64) - expected) <= bound)


# -- type inference -----------------------------------------------------------------------------
def _types(*specs) -> list[TensorType]:
    return [TensorType(shape, dtype) for shape, dtype in specs]


@pytest.mark.parametrize("op, inputs, attrs, message", [
    ("QuantizeLinear", _types(((2, 3), DType.INT32), ((), DType.FLOAT32), ((), DType.INT8)),
     {}, "QuantizeLinear input x has dtype int32"),
    ("QuantizeLinear", _types(((2, 3), DType.FLOAT32), ((), DType.FLOAT32),
                              ((), DType.INT32)), {}, "QuantizeLinear input zero"),
    ("DequantizeLinear", _types(((2,), DType.INT8), ((), DType.FLOAT32), ((), DType.UINT8)),
     {}, "expected x's dtype int8"),
    ("BlockDequantize", _types(((4, 6), DType.INT4), ((4, 2), DType.FLOAT32),
                               ((4, 3), DType.INT4)), {"axis": 1, "block_size": 4},
     "input zero has shape (4, 3); expected (4, 2)"),
    ("MatMulInteger", _types(((3, 4), DType.INT8), ((4, 5), DType.UINT8),
                             ((3,), DType.INT8), ((), DType.UINT8)), {},
     "MatMulInteger input a_zero has shape (3,)"),
    ("MatMulInteger", _types(((3, 4), DType.INT16), ((4, 5), DType.UINT8),
                             ((), DType.INT16), ((), DType.UINT8)), {},
     "MatMulInteger input A has dtype int16"),
    ("ConvInteger", _types(((1, 2, 5, 5), DType.UINT8), ((3, 2, 3, 3), DType.INT8),
                           ((), DType.UINT8), ((2,), DType.INT8)), {},
     "ConvInteger input w_zero has shape (2,)"),
    ("BlockQuantMatMul", _types(((2, 40), DType.FLOAT32), ((6, 3, 8), DType.UINT8),
                                ((6, 2), DType.FLOAT32), ((6, 3), DType.UINT8)),
     {"bits": 4, "block_size": 16, "k": 40, "n": 6},
     "BlockQuantMatMul input scales has shape (6, 2); expected (6, 3)"),
    ("BlockQuantMatMul", _types(((2, 40), DType.FLOAT32), ((6, 2, 12), DType.UINT8),
                                ((6, 2), DType.FLOAT32), ((6, 2), DType.UINT8)),
     {"bits": 4, "block_size": 24, "k": 40, "n": 6}, "power of two"),
])
def test_inference_errors_name_op_input_and_types(op, inputs, attrs, message):
    opdef = OPS[op]
    with pytest.raises((ShapeError, DTypeError)) as info:
        opdef.infer_types(inputs, opdef.make_attrs(attrs))
    assert message in str(info.value), str(info.value)


def test_matmul_integer_output_type():
    opdef = OPS["MatMulInteger"]
    (out,) = opdef.infer_types(_types(((2, 1, 3, 4), DType.UINT8), ((5, 4, 6), DType.INT8),
                                      ((3, 1), DType.UINT8), ((6,), DType.INT8)),
                               opdef.make_attrs({}))
    assert out == TensorType((2, 5, 3, 6), DType.INT32)


# -- constant folding keeps quantized weights ----------------------------------------------------
def test_fold_constants_keeps_dequantize_of_constants():
    b = GraphBuilder()
    x = b.input("x", (2, 4))
    weight = b.constant(np.arange(-6, 6, dtype=np.int8).reshape(4, 3))
    dq = b.DequantizeLinear(weight, b.constant(np.float32(0.5)), b.constant(np.int8(1)))
    q = b.QuantizeLinear(b.constant(np.float32([0.3, 2.6])), b.constant(np.float32(0.5)),
                         b.constant(np.uint8(7)))
    b.output("y", b.MatMul(x, dq))
    b.output("q", q)
    graph = b.build()
    result = FoldConstants().run(graph, PassContext(opt_level=1))
    ops = [graph.op(n) for n in graph.topological_order()]
    assert result.stats["folded"] == 1  # the QuantizeLinear
    assert "DequantizeLinear" in ops and "QuantizeLinear" not in ops
