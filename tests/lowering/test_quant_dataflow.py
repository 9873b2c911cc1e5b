"""Quantized tensors stay 8-bit between kernels: QuantizeLinear(MaxPool(DequantizeLinear(q)))
with one scale becomes MaxPool(q) (FuseQuantizedProducts), and no kernel writes the float
copy DequantizeLinear(q) of a tensor when its consumers can dequantize q themselves
(FuseElementwise). Both rewrites keep the numpy semantics bit for bit; their near misses are
left alone. On the device, a quantized residual network then runs as its integer
convolutions alone, the residual Add + Relu + QuantizeLinear in the second convolution's
store, reading the shortcut as uint8.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.ir import DType, Graph, TensorType, Value, verify
from ember.lowering import PassContext
from ember.lowering.fusion import FuseElementwise
from ember.lowering.quant import FuseQuantizedProducts
from ember.runtime.numpy import evaluate_graph
from tests.harness import TOLERANCE

RUNS_EVERYTHING = PassContext(opt_level=2, supports=lambda graph, node: True)
TINY = float(np.finfo(np.float32).tiny)


def ops_of(graph: Graph) -> Counter:
    return Counter(graph.op(n) for n in graph.nodes() if graph.op(n) not in ("Input", "Constant"))


def constant(graph: Graph, value, dtype) -> Value:
    return graph.add_constant(np.asarray(value, dtype=dtype))


def assert_same_results(graph: Graph, feeds: dict[str, np.ndarray], run) -> bool:
    """Run the pass `run` on `graph`; the numpy results before and after must be identical."""
    expected = evaluate_graph(graph, feeds)
    changed = run(graph)
    verify(graph)
    got = evaluate_graph(graph, feeds)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    return changed


# -- MaxPool on the 8-bit tensor --------------------------------------------------------------
def pooled_graph(dtype: DType, scale: float, zero: int, *, q_scale: float | None = None,
                 q_zero: int | None = None, kernel: int = 3, stride: int = 2, pad: int = 1,
                 float_output: bool = False, shape=(1, 3, 7, 9)) -> Graph:
    """x -> DequantizeLinear -> MaxPool -> QuantizeLinear, each scale and zero point its own
    constant (as an importer leaves them)."""
    np_dtype = dtype.np_dtype
    g = Graph()
    x = g.add_input("x", TensorType(shape, dtype))
    f = g.add("DequantizeLinear", x, constant(g, scale, np.float32),
              constant(g, zero, np_dtype))
    pooled = g.add("MaxPool", f, kernel_shape=(kernel, kernel), strides=(stride, stride),
                   pads=(pad,) * 4)
    y = g.add("QuantizeLinear", pooled,
              constant(g, scale if q_scale is None else q_scale, np.float32),
              constant(g, zero if q_zero is None else q_zero, np_dtype))
    g.set_outputs([("y", y)] + ([("pooled", pooled)] if float_output else []))
    return g


def integer_feeds(dtype: DType, shape, seed: int) -> dict[str, np.ndarray]:
    info = np.iinfo(dtype.np_dtype)
    rng = np.random.default_rng(seed)
    return {"x": rng.integers(info.min, info.max + 1, shape).astype(dtype.np_dtype)}


def fuse_products(graph: Graph) -> bool:
    return FuseQuantizedProducts().run(graph, RUNS_EVERYTHING).changed


@settings(max_examples=40, deadline=None)
@given(signed=st.booleans(),
       scale=st.floats(TINY, float(np.finfo(np.float32).max) / 256, width=32),
       zero=st.integers(-128, 127), kernel=st.integers(1, 3), stride=st.integers(1, 2),
       seed=st.integers(0, 2**16))
def test_maxpool_between_dequantize_and_quantize_runs_on_integers(signed, scale, zero,
                                                                  kernel, stride, seed):
    dtype = DType.INT8 if signed else DType.UINT8
    zero = zero if signed else zero + 128
    g = pooled_graph(dtype, scale, zero, kernel=kernel, stride=stride, pad=kernel // 2)
    assert assert_same_results(g, integer_feeds(dtype, (1, 3, 7, 9), seed), fuse_products)
    assert ops_of(g) == Counter({"MaxPool": 1})
    (pool,) = [n for n in g.nodes() if g.op(n) == "MaxPool"]
    assert g.input_types(pool)[0].dtype is dtype


def test_float_users_of_the_pool_keep_a_float_maxpool():
    g = pooled_graph(DType.UINT8, 0.05, 3, float_output=True)
    assert assert_same_results(g, integer_feeds(DType.UINT8, (1, 3, 7, 9), 1), fuse_products)
    pools = sorted(t.dtype.name for n in g.nodes() if g.op(n) == "MaxPool"
                   for t in g.input_types(n)[:1])
    assert pools == ["FLOAT32", "UINT8"]


@pytest.mark.parametrize("change", [
    {"q_scale": 0.1},  # requantized with another scale: values change
    {"q_zero": 4},  # or another zero point
    {"scale": -0.05, "q_scale": -0.05},  # a negative scale reverses the order: max is min
    {"scale": TINY / 4, "q_scale": TINY / 4},  # subnormal: (q - z) * s rounds coarsely
])
def test_maxpool_near_misses_stay_on_floats(change):
    options = {"scale": 0.05, "zero": 3} | change
    g = pooled_graph(DType.UINT8, options.pop("scale"), options.pop("zero"), **options)
    assert not assert_same_results(g, integer_feeds(DType.UINT8, (1, 3, 7, 9), 2),
                                   fuse_products)
    assert ops_of(g) == Counter({"DequantizeLinear": 1, "MaxPool": 1, "QuantizeLinear": 1})


def test_per_channel_scale_stays_on_floats():
    g = Graph()
    x = g.add_input("x", TensorType((1, 2, 5, 5), DType.UINT8))
    scale = constant(g, np.array([0.1, 0.2], np.float32).reshape(1, 2, 1, 1), np.float32)
    zero = constant(g, 0, np.uint8)
    pooled = g.add("MaxPool", g.add("DequantizeLinear", x, scale, zero), kernel_shape=(2, 2))
    g.set_outputs([("y", g.add("QuantizeLinear", pooled, scale, zero))])
    assert not assert_same_results(g, integer_feeds(DType.UINT8, (1, 2, 5, 5), 3),
                                   fuse_products)


# -- dequantization in the consumers ----------------------------------------------------------
def fuse_regions(graph: Graph) -> bool:
    return FuseElementwise().run(graph, RUNS_EVERYTHING).changed


def fused_nodes(graph: Graph) -> list[int]:
    return [n for n in graph.nodes() if graph.op(n) == "FusedElementwise"]


def contents(graph: Graph, node: int) -> list[str]:
    return [e.op for e in graph.attrs(node)["expr"].nodes]


def float_feeds(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, value in graph.input_values().items():
        t = graph.type_of(value)
        if t.dtype.is_float:
            feeds[name] = rng.uniform(-3, 3, t.shape).astype(t.dtype.np_dtype)
        else:
            feeds[name] = rng.integers(0, 256, t.shape).astype(t.dtype.np_dtype)
    return feeds


def quantize_and_dequantize(g: Graph, x: Value) -> tuple[Value, Value]:
    scale, zero = constant(g, 0.03, np.float32), constant(g, 128, np.uint8)
    q = g.add("QuantizeLinear", x, scale, zero)
    return q, g.add("DequantizeLinear", q, scale, zero)


def test_region_writes_the_8bit_tensor_not_also_its_float_copy():
    # Region A = Mul + QuantizeLinear (+ DequantizeLinear): q is a graph output; the Add
    # joins the Neg's region first, so A used to write q and DequantizeLinear(q).
    g = Graph()
    x = g.add_input("x", TensorType((3, 5), DType.FLOAT32))
    z = g.add_input("z", TensorType((3, 5), DType.FLOAT32))
    negated = g.add("Neg", z)
    q, dq = quantize_and_dequantize(g, g.add("Mul", x, constant(g, 2.5, np.float32)))
    g.set_outputs([("q", q), ("y", g.add("Add", negated, dq))])
    assert assert_same_results(g, float_feeds(g), fuse_regions)
    regions = fused_nodes(g)
    assert len(regions) == 2
    assert all(len(g.output_types(n)) == 1 for n in regions)
    by_output = {g.output_types(n)[0].dtype: n for n in regions}
    assert contents(g, by_output[DType.UINT8]) == ["Mul", "QuantizeLinear"]
    assert Counter(contents(g, by_output[DType.FLOAT32])) == Counter(
        {"Neg": 1, "DequantizeLinear": 1, "Add": 1})


def test_dequantize_of_its_own_moves_into_its_consumer():
    g = Graph()
    x = g.add_input("x", TensorType((4, 6), DType.UINT8))
    z = g.add_input("z", TensorType((4, 6), DType.FLOAT32))
    negated = g.add("Neg", z)
    dq = g.add("DequantizeLinear", x, constant(g, 0.5, np.float32), constant(g, 7, np.uint8))
    g.set_outputs([("y", g.add("Add", negated, dq)), ("w", g.add("Sigmoid", dq))])
    assert assert_same_results(g, float_feeds(g), fuse_regions)
    assert ops_of(g) == Counter({"FusedElementwise": 2})  # one copy in each consumer
    assert all("DequantizeLinear" in contents(g, n) for n in fused_nodes(g))


def test_consumer_without_a_kernel_keeps_reading_the_float_copy():
    def supports(graph: Graph, node: int) -> bool:  # no kernel for Neg with a dequantize
        if graph.op(node) != "FusedElementwise":
            return True
        return not {"Neg", "DequantizeLinear"} <= set(contents(graph, node))

    g = Graph()
    x = g.add_input("x", TensorType((4, 6), DType.UINT8))
    z = g.add_input("z", TensorType((4, 6), DType.FLOAT32))
    v = g.add_input("v", TensorType((4, 6), DType.FLOAT32))
    negated, grown = g.add("Neg", z), g.add("Exp", v)
    dq = g.add("DequantizeLinear", x, constant(g, 0.5, np.float32), constant(g, 7, np.uint8))
    g.set_outputs([("y", g.add("Add", negated, dq)), ("w", g.add("Mul", grown, dq))])
    context = PassContext(opt_level=2, supports=supports)
    assert assert_same_results(g, float_feeds(g),
                               lambda graph: FuseElementwise().run(graph, context).changed)
    assert ops_of(g) == Counter({"FusedElementwise": 2, "DequantizeLinear": 1})
    (dequantize,) = [n for n in g.nodes() if g.op(n) == "DequantizeLinear"]
    (reader,) = {use.node for use in g.users_of(Value(dequantize, 0))}
    assert "Neg" in contents(g, reader)


def test_float_copy_read_by_a_reduction_is_still_written():
    g = Graph()
    x = g.add_input("x", TensorType((3, 5), DType.FLOAT32))
    q, dq = quantize_and_dequantize(g, g.add("Mul", x, constant(g, 2.5, np.float32)))
    g.set_outputs([("q", q), ("s", g.add("ReduceSum", dq, axes=(1,), keepdims=1))])
    assert assert_same_results(g, float_feeds(g), fuse_regions)
    (region,) = fused_nodes(g)
    assert [t.dtype for t in g.output_types(region)] == [DType.UINT8, DType.FLOAT32]


def test_float_copy_broadcast_by_its_consumer_is_still_written():
    g = Graph()
    x = g.add_input("x", TensorType((1, 5), DType.FLOAT32))
    z = g.add_input("z", TensorType((3, 5), DType.FLOAT32))
    negated = g.add("Neg", z)
    q, dq = quantize_and_dequantize(g, g.add("Mul", x, constant(g, 2.5, np.float32)))
    g.set_outputs([("q", q), ("y", g.add("Add", negated, dq))])
    assert assert_same_results(g, float_feeds(g), fuse_regions)
    small = [n for n in fused_nodes(g) if g.output_types(n)[0].shape == (1, 5)]
    assert [t.dtype for t in g.output_types(small[0])] == [DType.UINT8, DType.FLOAT32]


def test_fake_quantization_inside_a_region_stays_one_kernel():
    g = Graph()
    x = g.add_input("x", TensorType((3, 5), DType.FLOAT32))
    _, dq = quantize_and_dequantize(g, x)
    g.set_outputs([("y", g.add("Sigmoid", dq))])
    assert assert_same_results(g, float_feeds(g), fuse_regions)
    (region,) = fused_nodes(g)
    assert contents(g, region) == ["QuantizeLinear", "DequantizeLinear", "Sigmoid"]


# -- on the device: a quantized residual network ----------------------------------------------
def residual_net(channels: int = 8, size: int = 8) -> onnx.ModelProto:
    """Conv+Relu -> MaxPool -> two residual blocks (Conv+Relu, Conv, Add, Relu): each
    block's output feeds the next block's Conv and its Add."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def conv(x: str, cin: int, relu: bool) -> str:
        name = f"conv{len(nodes)}"
        w = (rng.standard_normal((channels, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, name + "_w"), numpy_helper.from_array(
            (0.1 * rng.standard_normal(channels)).astype(np.float32), name + "_b")])
        nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name],
                                      pads=[1, 1, 1, 1]))
        if not relu:
            return name
        nodes.append(helper.make_node("Relu", [name], [name + "_relu"]))
        return name + "_relu"

    x = conv("x", 3, relu=True)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1]))
    x = "pool"
    for block in range(2):
        y = conv(conv(x, channels, relu=True), channels, relu=False)
        nodes.append(helper.make_node("Add", [y, x], [f"sum{block}"]))
        nodes.append(helper.make_node("Relu", [f"sum{block}"], [f"block{block}"]))
        x = f"block{block}"
    graph = helper.make_graph(
        nodes, "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2 * size, 2 * size])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, size, size])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_quantized_residual_network_runs_as_integer_convolutions(opencl_target):
    model = residual_net()
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(3)]
    q = ember.quantize(model, calibration=batches, scheme="int8")
    compiled = ember.compile(q, target=opencl_target)
    steps = Counter(step.op for step in compiled.plan.steps)
    # the input's QuantizeLinear, 5 convolutions with everything elementwise in their
    # stores (the last one dequantizes: the graph output stays float), the pool on uint8
    assert steps == Counter({"QuantizeLinear": 1, "ConvInteger": 5, "MaxPool": 1}), steps
    graph = compiled.graph
    (pool,) = [n for n in graph.nodes() if graph.op(n) == "MaxPool"]
    assert graph.input_types(pool)[0].dtype is DType.UINT8
    # the numpy executor runs the QDQ graph as written (float convolutions): a value may
    # round across a quantization boundary, so most elements agree within float32 rounding
    # and every one within a step of the last quantized tensor
    reference = ember.compile(q, target="cpu")(**batches[0])["block1"]
    actual = compiled(**batches[0])["block1"]
    rtol, atol = TOLERANCE[DType.FLOAT32]
    difference = np.abs(actual.astype(np.float64) - reference)
    assert np.mean(difference <= atol + rtol * np.abs(reference)) >= 0.99
    scales = {init.name: init for init in q.model.graph.initializer}
    step = float(numpy_helper.to_array(scales["sum1_scale"]))  # block1 = Relu(sum1)
    assert np.all(difference <= step * (1 + 1e-5))
