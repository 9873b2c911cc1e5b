"""Folding BatchNormalization and per-channel Mul/Add into Conv / ConvTranspose / MatMul:
each rewrite gives the expected op list, keeps the verifier happy and preserves the numpy
semantics; near misses are left alone (changed is False)."""

from __future__ import annotations

import numpy as np
import pytest

from ember.frontends.builder import GraphBuilder
from ember.ir import DType, Graph, Value, verify
from ember.lowering import PassContext, PassManager
from ember.lowering.fold import FoldAffineIntoConv, FoldBatchNorm
from ember.lowering.simplify import EliminateDeadCode
from ember.runtime.numpy import evaluate_graph
from tests.harness import assert_close
from tests.strategies import array_for

CTX = PassContext(opt_level=2)
F64 = DType.FLOAT64


def ops_of(graph: Graph) -> list[str]:
    return [graph.op(n) for n in graph.topological_order()
            if graph.op(n) not in ("Input", "Constant")]


def inputs_for(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    return {name: array_for(seed + i, graph.type_of(v).shape, graph.type_of(v).dtype)
            for i, (name, v) in enumerate(graph.input_values().items())}


def run_pass(p, graph: Graph, tolerance: tuple[float, float] | None = None):
    """Run `p`, verify, and compare every output on random inputs with the graph before."""
    feeds = inputs_for(graph)
    expected = evaluate_graph(graph, feeds)
    result = p.run(graph, CTX)
    verify(graph)
    got = evaluate_graph(graph, feeds)
    for name in expected:
        assert_close(got[name], expected[name], name, tolerance)
    return result


def bn_params(b: GraphBuilder, seed: int, channels: int, dtype: DType = F64) -> list[Value]:
    rng = np.random.default_rng(seed)
    np_dtype = dtype.np_dtype
    gamma = rng.uniform(-2, 2, channels).astype(np_dtype)
    beta = rng.uniform(-2, 2, channels).astype(np_dtype)
    mean = rng.uniform(-1, 1, channels).astype(np_dtype)
    var = rng.uniform(0.1, 3, channels).astype(np_dtype)
    return [b.constant(a) for a in (gamma, beta, mean, var)]


def weights(seed: int, shape: tuple[int, ...], dtype: DType = F64) -> np.ndarray:
    return array_for(seed, shape, dtype, low=-1.0, high=1.0)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("group", [1, 3])
def test_batchnorm_folds_into_conv(bias: bool, group: int):
    b = GraphBuilder()
    x = b.input("x", (2, 6, 7, 5), F64)
    w = b.constant(weights(1, (9, 6 // group, 3, 2)))
    args = [x, w] + ([b.constant(weights(2, (9,)))] if bias else [])
    y = b.Conv(*args, pads=(1, 0, 1, 1), strides=(2, 1), group=group)
    b.output("y", b.Relu(b.BatchNormalization(y, *bn_params(b, 3, 9), epsilon=0.01)))
    g = b.build()
    assert ops_of(g) == ["Conv", "BatchNormalization", "Relu"]
    result = run_pass(FoldBatchNorm(), g)
    assert result.changed and result.stats["folded"] == 1
    assert ops_of(g) == ["Conv", "Relu"]
    (conv,) = [n for n in g.nodes() if g.op(n) == "Conv"]
    assert len(g.inputs_of(conv)) == 3  # gained a bias
    # the replaced weights, bias and BN parameters are gone: only the new two are left
    assert sum(g.op(n) == "Constant" for n in g.nodes()) == 2


@pytest.mark.parametrize("group", [1, 2])
def test_batchnorm_folds_into_conv_transpose(group: int):
    b = GraphBuilder()
    x = b.input("x", (1, 4, 5, 3), F64)
    w = b.constant(weights(4, (4, 3, 3, 2)))  # (C, M/group, k...): M = 3 * group
    y = b.ConvTranspose(x, w, b.constant(weights(5, (3 * group,))), strides=(2, 1),
                        output_padding=(1, 0), group=group)
    b.output("y", b.BatchNormalization(y, *bn_params(b, 6, 3 * group)))
    g = b.build()
    assert run_pass(FoldBatchNorm(), g).changed
    assert ops_of(g) == ["ConvTranspose"]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_batchnorm_folds_into_matmul(trans_b: int):
    b = GraphBuilder()
    x = b.input("x", (5, 4), F64)
    w = b.constant(weights(7, (6, 4) if trans_b else (4, 6)))
    y = b.MatMul(x, w, trans_b=trans_b)
    b.output("y", b.BatchNormalization(y, *bn_params(b, 8, 6), epsilon=1e-3))
    g = b.build()
    assert run_pass(FoldBatchNorm(), g).changed
    assert ops_of(g) == ["MatMul", "Add"]


def test_batchnorm_after_3d_matmul_is_left_alone():
    b = GraphBuilder()
    x = b.input("x", (2, 5, 4), F64)
    y = b.MatMul(x, b.constant(weights(7, (4, 5))))
    b.output("y", b.BatchNormalization(y, *bn_params(b, 8, 5)))
    g = b.build()
    assert run_pass(FoldBatchNorm(), g).changed is False  # axis 1 is not MatMul's N


def test_batchnorm_fold_float32_within_reassociation_bound():
    """Float32: the folded conv rounds W*s once more and sums in another order, so we allow
    atol = (n + 2) * eps * max|x| * max|W*s| * n for n = C*kh*kw terms, plus eps on |shift|."""
    b = GraphBuilder()
    x = b.input("x", (1, 3, 6, 6))
    w = weights(9, (4, 3, 3, 3), DType.FLOAT32)
    params = bn_params(b, 10, 4, DType.FLOAT32)
    y = b.Conv(x, b.constant(w), pads=(1, 1, 1, 1))
    b.output("y", b.BatchNormalization(y, *params))
    g = b.build()
    gamma, beta, mean, var = (g.constant_value(v).astype(np.float64) for v in params)
    s = np.abs(gamma / np.sqrt(var + 1e-5))
    n, eps = 27, float(np.finfo(np.float32).eps)
    atol = (n + 2) * eps * 4.0 * float(np.max(np.abs(w)) * s.max()) * n
    atol += eps * float(np.max(np.abs(beta) + np.abs(mean) * s))
    assert run_pass(FoldBatchNorm(), g, tolerance=(1e-5, atol)).changed
    assert ops_of(g) == ["Conv"]


@pytest.mark.parametrize("shape", [(), (1,), (5, 1, 1), (1, 5, 1, 1)])
@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_affine_folds_into_conv(op: str, shape: tuple[int, ...]):
    b = GraphBuilder()
    x = b.input("x", (2, 3, 6, 4), F64)
    y = b.Conv(x, b.constant(weights(11, (5, 3, 3, 3))), b.constant(weights(12, (5,))))
    c = b.constant(array_for(13, shape, F64, low=-3.0, high=3.0))
    b.output("y", b.op(op, c, y) if shape == (1,) else b.op(op, y, c))  # either side
    g = b.build()
    result = run_pass(FoldAffineIntoConv(), g)
    assert result.changed and result.stats[op] == 1
    assert ops_of(g) == ["Conv"]


def test_affine_chain_folds_in_one_run_and_into_conv_transpose():
    b = GraphBuilder()
    x = b.input("x", (1, 2, 4, 4), F64)
    y = b.ConvTranspose(x, b.constant(weights(14, (2, 3, 2, 2))), strides=(2, 2))
    y = b.Mul(y, b.constant(array_for(15, (3, 1, 1), F64)))
    y = b.Add(y, b.constant(array_for(16, (1, 3, 1, 1), F64)))
    b.output("y", b.Sigmoid(y))
    g = b.build()
    result = run_pass(FoldAffineIntoConv(), g)
    assert result.stats == {"Mul": 1, "Add": 1}
    assert ops_of(g) == ["ConvTranspose", "Sigmoid"]


def test_pass_manager_folds_conv_mul_bn_with_verify():
    """Conv -> Mul -> BN needs FoldBatchNorm again after FoldAffineIntoConv; the verifier
    runs after every pass."""
    b = GraphBuilder()
    x = b.input("x", (1, 3, 5, 5), F64)
    y = b.Conv(x, b.constant(weights(17, (4, 3, 1, 1))))
    y = b.Mul(y, b.constant(np.float64(0.5)))
    b.output("y", b.BatchNormalization(y, *bn_params(b, 18, 4)))
    g = b.build()
    feeds = inputs_for(g)
    expected = evaluate_graph(g, feeds)
    PassManager([FoldBatchNorm(), FoldAffineIntoConv(), FoldBatchNorm(), EliminateDeadCode()],
                verify=True).run(g, CTX)
    assert ops_of(g) == ["Conv"]
    assert_close(evaluate_graph(g, feeds)["y"], expected["y"])


# -- near misses: left alone ---------------------------------------------------------------
def conv_graph(b: GraphBuilder) -> Value:
    x = b.input("x", (1, 3, 5, 5), F64)
    return b.Conv(x, b.constant(weights(19, (4, 3, 3, 3))))


def test_conv_used_twice_is_left_alone():
    b = GraphBuilder()
    y = conv_graph(b)
    b.output("a", b.BatchNormalization(y, *bn_params(b, 20, 4)))
    b.output("m", b.Mul(y, b.constant(np.full((4, 1, 1), 2.0))))
    b.output("r", b.Relu(y))
    g = b.build()
    before = ops_of(g)
    assert run_pass(FoldBatchNorm(), g).changed is False
    assert run_pass(FoldAffineIntoConv(), g).changed is False
    assert ops_of(g) == before


def test_conv_output_that_is_a_graph_output_is_left_alone():
    b = GraphBuilder()
    y = conv_graph(b)
    b.output("conv", y)
    b.output("bn", b.BatchNormalization(y, *bn_params(b, 21, 4)))
    g = b.build()
    assert run_pass(FoldBatchNorm(), g).changed is False


def test_non_constant_batchnorm_parameters_are_left_alone():
    b = GraphBuilder()
    y = conv_graph(b)
    gamma, beta, mean, _ = bn_params(b, 22, 4)
    var = b.Abs(b.input("var", (4,), F64))
    b.output("y", b.BatchNormalization(y, gamma, beta, mean, var))
    g = b.build()
    assert run_pass(FoldBatchNorm(), g).changed is False


def test_non_constant_conv_weight_is_left_alone():
    b = GraphBuilder()
    x = b.input("x", (1, 3, 5, 5), F64)
    y = b.Conv(x, b.input("w", (4, 3, 3, 3), F64))
    b.output("y", b.Mul(y, b.constant(np.full((4, 1, 1), 2.0))))
    g = b.build()
    assert run_pass(FoldAffineIntoConv(), g).changed is False


@pytest.mark.parametrize("shape", [(1, 1, 3, 1), (4, 3, 1), (3, 3), (1, 4, 3, 3), (2, 4, 1, 1)])
def test_affine_constant_not_per_channel_is_left_alone(shape: tuple[int, ...]):
    b = GraphBuilder()
    y = conv_graph(b)  # (1, 4, 3, 3)
    b.output("y", b.Mul(y, b.constant(array_for(23, shape, F64))))
    g = b.build()
    assert run_pass(FoldAffineIntoConv(), g).changed is False
    assert ops_of(g) == ["Conv", "Mul"]
