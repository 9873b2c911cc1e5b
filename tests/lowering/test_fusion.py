"""Fusion passes: elementwise regions, MatMul/Conv epilogues, transposes folded into MatMul.

Every rewrite is checked three ways: the graph after it has the expected shape (ops counted),
the verifier passes after every pass, and the fused model's outputs on the OpenCL device equal
the unoptimized model's (O0) within the float32 tolerance. Each rewrite also has near misses
that must stay unfused. The property test at the end draws random graphs of all of these.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ember
from ember.frontends.builder import GraphBuilder
from ember.ir import DType, Graph, Value
from tests.harness import TOLERANCE, assert_close
from tests.strategies import array_for

F32 = np.float32


def build(inputs: dict[str, tuple[int, ...]], body: Callable) -> Graph:
    b = GraphBuilder("fusion")
    values = [b.input(name, shape) for name, shape in inputs.items()]
    out = body(b, *values)
    for i, v in enumerate((out,) if isinstance(out, Value) else out):
        b.output(f"y{i}", v)
    return b.build()


def feeds_for(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    return {name: array_for(seed + i, graph.type_of(v).shape, DType.FLOAT32)
            for i, (name, v) in enumerate(graph.input_values().items())}


def compare(graph: Graph, target: str, opt_level: int = 3) -> tuple[Counter, ember.CompiledModel]:
    """Compile at O0 and `opt_level`; outputs must agree. Returns the fused graph's op count."""
    feeds = feeds_for(graph)
    reference = ember.compile(graph, target=target, opt_level=0, strict=True)(**feeds)
    model = ember.compile(graph, target=target, opt_level=opt_level, strict=True,
                          verify_passes=True)
    got = model(**feeds)
    for name, expected in reference.items():
        # O3 reassociates sums (BatchNorm folded into weights, epilogues in the store): an
        # element that cancels to far below its terms moves by float32 rounding of the terms,
        # so the absolute tolerance scales with the output's largest magnitude.
        tolerance = None
        if expected.dtype.kind == "f":
            rtol, atol = TOLERANCE[DType.from_numpy(expected.dtype)]
            scale = float(np.nanmax(np.abs(expected), initial=0.0))
            tolerance = (rtol, atol * max(1.0, scale))
        assert_close(got[name], expected, name, tolerance)
    ops = Counter(model.graph.op(n) for n in model.graph.nodes()
                  if model.graph.op(n) not in ("Input", "Constant"))
    return ops, model


def weight(*shape: int, seed: int = 1) -> np.ndarray:
    return array_for(seed, shape, DType.FLOAT32)


# -- elementwise regions ----------------------------------------------------------------------
def test_chain_becomes_one_kernel(opencl_target):
    g = build({"x": (3, 5), "y": (5,)},
              lambda b, x, y: b.Sigmoid(b.Mul(b.Relu(b.Add(x, y)), b.constant(F32(2.5)))))
    ops, model = compare(g, opencl_target)
    assert ops == Counter({"FusedElementwise": 1})
    assert model.stats.kernel_launches == 1


def test_value_used_outside_region_is_a_second_output(opencl_target):
    def body(b, x):
        e = b.Exp(b.Neg(x))
        return b.Tanh(e), b.ReduceSum(e, axes=(1,), keepdims=1)
    ops, model = compare(build({"x": (4, 7)}, body), opencl_target)
    fused = [n for n in model.graph.nodes() if model.graph.op(n) == "FusedElementwise"]
    assert len(fused) == 1 and len(model.graph.output_types(fused[0])) == 2


def test_region_does_not_swallow_a_path_through_a_reduction(opencl_target):
    # exp(x) / sum(exp(x)): the Div reads the region through ReduceSum; joining would make
    # the fused node an input of itself.
    def body(b, x):
        e = b.Exp(b.Neg(x))
        return b.Div(b.Sqrt(e), b.ReduceSum(e, axes=(1,), keepdims=1))
    ops, _ = compare(build({"x": (3, 6)}, body), opencl_target)
    assert ops["ReduceSum"] == 1 and ops["FusedElementwise"] + ops["Div"] >= 2


def test_two_regions_never_feed_each_other(opencl_target):
    # Region A = {exp(x), ...} feeds b1 in region B = {neg(c), b1, abs(neg(c))}; a2 reads
    # abs(neg(c)) from B. a2 joining A would make A -> B -> A once both are fused, although
    # no single node path leaves A and comes back.
    def body(b, x, c):
        a1 = b.Exp(x)
        b0 = b.Neg(c)
        b1 = b.Add(b0, a1)
        a2 = b.Add(a1, b.Abs(b0))
        return b1, a2
    ops, _ = compare(build({"x": (3, 4), "c": (3, 4)}, body), opencl_target)
    assert ops["FusedElementwise"] >= 1


def test_broadcasting_intermediate_is_not_fused(opencl_target):
    # neg(x) has shape (1, 5); adding it to y (4, 5) broadcasts: a region never broadcasts
    # a value computed inside it, so Neg stays apart.
    g = build({"x": (1, 5), "y": (4, 5)}, lambda b, x, y: b.Relu(b.Add(b.Neg(x), y)))
    ops, _ = compare(g, opencl_target)
    assert ops == Counter({"Neg": 1, "FusedElementwise": 1})


def test_no_fusion_without_a_device():
    g = build({"x": (3,)}, lambda b, x: b.Relu(b.Neg(x)))
    model = ember.compile(g, target="cpu", opt_level=3)
    assert sorted(model.graph.op(n) for n in model.graph.nodes()) == ["Input", "Neg", "Relu"]


# -- epilogues --------------------------------------------------------------------------------
def test_matmul_bias_gelu_residual_is_one_kernel(opencl_target):
    def body(b, x):
        h = b.MatMul(x, b.constant(weight(8, 8)))
        h = b.Gelu(b.Add(h, b.constant(weight(8, seed=2))))
        return b.Add(h, x)
    ops, model = compare(build({"x": (5, 8)}, body), opencl_target)
    assert ops == Counter({"MatMul": 1})
    assert model.stats.kernel_launches == 1


def test_conv_bn_relu_residual_relu_is_one_kernel(opencl_target):
    def body(b, x):
        y = b.Conv(x, b.constant(weight(4, 4, 3, 3)), b.constant(weight(4, seed=3)),
                   pads=(1, 1, 1, 1))
        y = b.BatchNormalization(y, *(b.constant(np.abs(weight(4, seed=s)) + 0.5)
                                      for s in (4, 5, 6, 7)))
        return b.Relu(b.Add(b.Relu(y), x))
    ops, _ = compare(build({"x": (2, 4, 5, 7)}, body), opencl_target)
    assert ops == Counter({"Conv": 1})


def test_depthwise_conv_takes_an_epilogue(opencl_target):
    def body(b, x):
        y = b.Conv(x, b.constant(weight(3, 1, 3, 3)), group=3, pads=(1, 1, 1, 1))
        return b.Clip(y, min=0.0, max=6.0)
    ops, _ = compare(build({"x": (1, 3, 6, 5)}, body), opencl_target)
    assert ops == Counter({"Conv": 1})


def test_product_with_a_second_user_keeps_its_epilogue_empty(opencl_target):
    def body(b, x):
        h = b.MatMul(x, b.constant(weight(6, 4)))
        return b.Relu(h), b.Neg(h)
    ops, _ = compare(build({"x": (3, 6)}, body), opencl_target)
    assert ops["MatMul"] == 1 and ops["FusedElementwise"] == 1  # Relu and Neg: one region


def test_product_that_is_a_graph_output_is_not_fused(opencl_target):
    def body(b, x):
        h = b.MatMul(x, b.constant(weight(6, 4)))
        return h, b.Relu(h)
    ops, _ = compare(build({"x": (3, 6)}, body), opencl_target)
    assert ops == Counter({"MatMul": 1, "Relu": 1})


def test_epilogue_that_broadcasts_the_product_is_not_fused(opencl_target):
    # (3, 1) @ ... then + a (3, 4) tensor: the Add's result is bigger than the product.
    def body(b, x, y):
        return b.Add(b.MatMul(x, b.constant(weight(6, 1))), y)
    ops, _ = compare(build({"x": (3, 6), "y": (3, 4)}, body), opencl_target)
    assert ops == Counter({"MatMul": 1, "Add": 1})


def test_epilogue_with_a_broadcast_extra_input(opencl_target):
    # the mask-like (1, 1, 4) extra is read through broadcast strides at the output index
    def body(b, x, y, mask):
        return b.Add(b.Mul(b.MatMul(x, y), b.constant(F32(0.125))), mask)
    ops, _ = compare(build({"x": (2, 3, 5), "y": (2, 5, 4), "mask": (1, 1, 4)}, body),
                     opencl_target)
    assert ops == Counter({"MatMul": 1})


# -- transposes -------------------------------------------------------------------------------
def test_transpose_of_last_two_axes_becomes_trans_b(opencl_target):
    def body(b, x, y):
        return b.MatMul(x, b.Transpose(y, perm=(0, 2, 1)))
    ops, model = compare(build({"x": (2, 3, 5), "y": (2, 4, 5)}, body), opencl_target)
    assert ops == Counter({"MatMul": 1})
    node = next(n for n in model.graph.nodes() if model.graph.op(n) == "MatMul")
    assert model.graph.attrs(node)["trans_b"] == 1


def test_other_transposes_stay(opencl_target):
    def body(b, x, y):
        return b.MatMul(x, b.Transpose(y, perm=(1, 0, 2)))
    ops, _ = compare(build({"x": (2, 3, 5), "y": (5, 2, 4)}, body), opencl_target)
    assert ops == Counter({"MatMul": 1, "Transpose": 1})


# -- the real models --------------------------------------------------------------------------
@pytest.mark.parametrize("name, shapes, bound", [
    ("resnet_mini", {"input": (1, 3, 64, 64)}, 0.35),
])
def test_model_launches_at_o2_against_o0(opencl_target, name, shapes, bound):
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "models" / f"{name}.onnx"
    o0 = ember.compile(str(path), target=opencl_target, opt_level=0, input_shapes=shapes)
    o2 = ember.compile(str(path), target=opencl_target, opt_level=2, input_shapes=shapes)
    assert o2.stats.kernel_launches <= bound * o0.stats.kernel_launches


# -- random graphs: O0 against O3 -------------------------------------------------------------
UNARY = ["Relu", "Neg", "Exp", "Tanh", "Sigmoid", "Abs", "Gelu"]
BINARY = ["Add", "Sub", "Mul", "Max", "Min"]


@st.composite
def random_dense_graph(draw):
    """Elementwise chains with broadcast operands, MatMuls with constant or computed
    operands, transposes, reshapes, reductions, shared subexpressions, several outputs."""
    rows, k = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    b = GraphBuilder("random_dense")
    x = b.input("x", (2, rows, k))
    values = [x]
    seed = draw(st.integers(0, 10_000))

    def const(shape):
        nonlocal seed
        seed += 1
        return b.constant(array_for(seed, shape, DType.FLOAT32))

    for _ in range(draw(st.integers(2, 9))):
        v = draw(st.sampled_from(values))
        shape = b.graph.type_of(v).shape
        kind = draw(st.sampled_from(["unary", "binary", "const", "matmul", "transpose",
                                     "reshape", "reduce"]))
        if kind == "unary":
            out = b.op(draw(st.sampled_from(UNARY)), v)
        elif kind == "binary":
            same = [w for w in values if b.graph.type_of(w).shape == shape]
            out = b.op(draw(st.sampled_from(BINARY)), v, draw(st.sampled_from(same)))
        elif kind == "const":
            cshape = tuple(draw(st.sampled_from([1, d])) for d in shape[-2:])
            out = b.op(draw(st.sampled_from(BINARY)), v, const(cshape))
        elif kind == "matmul":
            out = b.MatMul(v, const((shape[-1], draw(st.integers(1, 7)))))
        elif kind == "transpose" and len(shape) >= 2:
            perm = (*range(len(shape) - 2), len(shape) - 1, len(shape) - 2)
            t = b.Transpose(v, perm=perm)
            out = b.MatMul(t, const((shape[-2], 3))) if draw(st.booleans()) else t
        elif kind == "reshape" and len(shape) == 3:
            out = b.Reshape(v, shape=(shape[0] * shape[1], shape[2]))
        else:
            out = b.ReduceSum(v, axes=(len(shape) - 1,), keepdims=1)
        values.append(out)
    picked = draw(st.lists(st.sampled_from(values[1:]), min_size=1, max_size=3, unique=True))
    for i, v in enumerate(picked):
        b.output(f"y{i}", v)
    return b.build()


@st.composite
def random_conv_graph(draw):
    """Conv (plain, strided, depthwise) followed by bias, BN-like affine, activations and
    residual adds, as CNNs are built."""
    c, h, w = draw(st.integers(1, 5)), draw(st.integers(3, 9)), draw(st.integers(3, 9))
    b = GraphBuilder("random_conv")
    x = b.input("x", (1, c, h, w))
    seed = draw(st.integers(0, 10_000))
    v = x
    for step in range(draw(st.integers(1, 3))):
        group = c if draw(st.booleans()) else 1
        wgt = b.constant(array_for(seed + step, (c, c // group, 3, 3), DType.FLOAT32))
        y = b.Conv(v, wgt, pads=(1, 1, 1, 1), group=group)
        if draw(st.booleans()):
            y = b.Add(y, b.constant(array_for(seed + 50 + step, (1, c, 1, 1), DType.FLOAT32)))
        y = b.op(draw(st.sampled_from(["Relu", "Sigmoid", "HardSwish", "Tanh"])), y)
        if draw(st.booleans()):
            y = b.Add(y, v)
        v = y
    b.output("y", v)
    return b.build()


@given(graph=st.one_of(random_dense_graph(), random_conv_graph()))
def test_o3_matches_o0_on_random_graphs(opencl_target, graph):
    compare(graph, opencl_target, opt_level=3)


def test_graphviz_labels_fused_nodes_with_their_contents(opencl_target):
    from ember.ir import to_dot
    g = build({"x": (3, 5)}, lambda b, x: b.Relu(b.Add(
        b.MatMul(x, b.constant(weight(5, 4))), b.constant(weight(4, seed=9)))))
    _, model = compare(g, opencl_target)
    assert "fused: Add+Relu" in to_dot(model.graph)
