"""FuseQuantizedProducts: DequantizeLinear -> MatMul / Conv becomes an integer product with
the scales applied after the sum, and a blocked 4-bit weight becomes BlockQuantMatMul; the
numpy semantics are kept (float outputs within float32 rounding of the scale), and graphs the
rewrite cannot express exactly are left alone."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ember.ir import DType, Graph, TensorType, Value, verify
from ember.lowering import PassContext
from ember.lowering.quant import FuseQuantizedProducts
from ember.runtime.numpy import evaluate_graph

RUNS_EVERYTHING = PassContext(opt_level=2, supports=lambda graph, node: True)
RUNS_NOTHING = PassContext(opt_level=2, supports=lambda graph, node: False)
# The rewrite sums integers exactly and scales once; the float graph rounds every product
# and partial sum: float32 accumulation error, K * 2^-24 relative to sum |x * w|.
F32_EPS = 2.0 ** -24


def ops_of(graph: Graph) -> list[str]:
    return sorted(graph.op(n) for n in graph.nodes()
                  if graph.op(n) not in ("Input", "Constant", "Reshape"))


def dequantized(graph: Graph, q: Value, scale: np.ndarray, zero: np.ndarray) -> Value:
    return graph.add("DequantizeLinear", q, graph.add_constant(scale),
                     graph.add_constant(zero))


def check_same(graph: Graph, feeds: dict[str, np.ndarray], k: int,
               context: PassContext = RUNS_EVERYTHING) -> bool:
    expected = evaluate_graph(graph, feeds)
    changed = FuseQuantizedProducts().run(graph, context).changed
    verify(graph)
    got = evaluate_graph(graph, feeds)
    for name, want in expected.items():
        bound = (k + 2) * F32_EPS * max(float(np.abs(want).max()), 1.0) * 4
        np.testing.assert_allclose(got[name], want, rtol=0, atol=bound, err_msg=name)
    return changed


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 9), k=st.integers(1, 40), n=st.integers(1, 17),
       per_column=st.booleans(), signed_a=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_of_dequantized_operands_becomes_matmul_integer(m, k, n, per_column,
                                                               signed_a, seed):
    rng = np.random.default_rng(seed)
    a_dtype = DType.INT8 if signed_a else DType.UINT8
    g = Graph()
    a = g.add_input("a", TensorType((2, m, k), a_dtype))
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    w_scale = rng.uniform(1e-3, 1e-1, (1, n) if per_column else ()).astype(np.float32)
    w_zero = (rng.integers(-3, 4, (1, n)) if per_column else np.array(2)).astype(np.int8)
    a_zero = np.array(rng.integers(0, 20), dtype=a_dtype.np_dtype)
    y = g.add("MatMul", dequantized(g, a, np.array(0.02, np.float32), a_zero),
              dequantized(g, g.add_constant(w), w_scale, w_zero))
    g.set_outputs([("y", y)])
    info = np.iinfo(a_dtype.np_dtype)
    feeds = {"a": rng.integers(info.min, info.max + 1, (2, m, k)).astype(a_dtype.np_dtype)}
    assert check_same(g, feeds, k)
    assert ops_of(g) == ["Cast", "MatMulInteger", "Mul"]


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_of_dequantized_operands_becomes_conv_integer(group, bias):
    rng = np.random.default_rng(group + 2 * bias)
    g = Graph()
    x = g.add_input("x", TensorType((1, 4, 7, 6), DType.UINT8))
    w = rng.integers(-127, 128, (6, 4 // group, 3, 3)).astype(np.int8)
    w_scale = rng.uniform(1e-3, 1e-2, (6, 1, 1, 1)).astype(np.float32)
    inputs = [dequantized(g, x, np.array(0.05, np.float32), np.array(7, np.uint8)),
              dequantized(g, g.add_constant(w), w_scale, np.zeros((6, 1, 1, 1), np.int8))]
    if bias:
        inputs.append(g.add_constant(rng.standard_normal(6).astype(np.float32)))
    y = g.add("Conv", *inputs, pads=(1, 1, 1, 1), strides=(2, 1), group=group)
    g.set_outputs([("y", y)])
    feeds = {"x": rng.integers(0, 256, (1, 4, 7, 6)).astype(np.uint8)}
    assert check_same(g, feeds, 4 * 9)
    assert ops_of(g) == sorted(["Cast", "ConvInteger", "Mul"] + (["Add"] if bias else []))


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("k,block", [(70, 32), (64, 16), (5, 64)])
def test_blocked_4bit_weight_becomes_block_quant_matmul(signed, k, block, transposed):
    rng = np.random.default_rng(k + block)
    n, blocks = 9, -(-k // block)
    if signed:
        w = rng.integers(-8, 8, (k, n)).astype(ml_dtypes.int4)
        zero = rng.integers(-2, 3, (blocks, n)).astype(ml_dtypes.int4)
    else:
        w = rng.integers(0, 16, (k, n)).astype(ml_dtypes.uint4)
        zero = rng.integers(6, 10, (blocks, n)).astype(ml_dtypes.uint4)
    scale = rng.uniform(1e-3, 1e-1, (blocks, n)).astype(np.float32)
    g = Graph()
    a = g.add_input("a", TensorType((3, k), DType.FLOAT32))
    if transposed:  # Gemm's transB: w is (N, K), blocked along axis 1
        w, scale, zero = w.T.copy(), scale.T.copy(), zero.T.copy()
    weight = g.add("BlockDequantize", g.add_constant(w), g.add_constant(scale),
                   g.add_constant(zero), axis=int(transposed), block_size=block)
    g.set_outputs([("y", g.add("MatMul", a, weight, trans_b=int(transposed)))])
    feeds = {"a": rng.standard_normal((3, k)).astype(np.float32)}
    assert check_same(g, feeds, k)
    assert ops_of(g) == ["BlockQuantMatMul"]


def test_scales_that_vary_along_k_are_left_alone():
    rng = np.random.default_rng(0)
    g = Graph()
    a = g.add_input("a", TensorType((3, 8), DType.UINT8))
    w = rng.integers(-128, 128, (8, 5)).astype(np.int8)
    per_row = rng.uniform(0.01, 0.1, (8, 1)).astype(np.float32)
    y = g.add("MatMul", dequantized(g, a, np.array(0.1, np.float32), np.array(0, np.uint8)),
              dequantized(g, g.add_constant(w), per_row, np.array(0, np.int8)))
    g.set_outputs([("y", y)])
    feeds = {"a": rng.integers(0, 256, (3, 8)).astype(np.uint8)}
    assert not check_same(g, feeds, 8)
    assert ops_of(g) == ["DequantizeLinear", "DequantizeLinear", "MatMul"]


def test_nothing_changes_where_the_target_has_no_integer_kernel():
    g = Graph()
    a = g.add_input("a", TensorType((3, 8), DType.UINT8))
    w = np.ones((8, 5), np.int8)
    y = g.add("MatMul", dequantized(g, a, np.array(0.1, np.float32), np.array(0, np.uint8)),
              dequantized(g, g.add_constant(w), np.array(0.5, np.float32), np.array(0, np.int8)))
    g.set_outputs([("y", y)])
    feeds = {"a": np.arange(24, dtype=np.uint8).reshape(3, 8)}
    assert not check_same(g, feeds, 8, RUNS_NOTHING)
    assert "MatMulInteger" not in ops_of(g)
