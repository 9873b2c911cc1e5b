"""Weights that a weight-only export widens in the graph, Cast(w int8) -> (Sub zero) -> Mul
scale, stay 8-bit: FuseQuantizedProducts reads them as DequantizeLinear, a MatMul of one
becomes BlockQuantMatMul(bits=8) and a Gather / GatherND of one gathers the int8 rows and
dequantizes only those. What no kernel consumes is folded back to the float constant the
importer used to make. The numpy semantics are kept, and near misses stay float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.ir import OPS, DType, Graph, TensorType, Value, verify
from ember.lowering import PassContext
from ember.lowering.quant import FuseQuantizedProducts
from ember.lowering.weight_only import FoldWidenedConstants
from ember.lowering.simplify import FoldConstants
from ember.runtime.numpy import evaluate_graph
from tests.harness import real_devices

RUNS_EVERYTHING = PassContext(opt_level=2, supports=lambda graph, node: True)
RUNS_NOTHING = PassContext(opt_level=2, supports=lambda graph, node: False)
NO_DEVICE = PassContext(opt_level=2, supports=None)
F32_EPS = 2.0 ** -24


def ops_of(graph: Graph) -> list[str]:
    return sorted(graph.op(n) for n in graph.nodes()
                  if graph.op(n) not in ("Input", "Constant", "Reshape"))


def widened(graph: Graph, q: np.ndarray, scale: np.ndarray,
            zero: np.ndarray | None = None, scale_first: bool = False) -> Value:
    """The export's spelling of a dequantized weight."""
    wide = graph.add("Cast", graph.add_constant(q), to=DType.FLOAT32)
    if zero is not None:
        wide = graph.add("Sub", wide, graph.add_constant(zero))
    s = graph.add_constant(scale)
    return graph.add("Mul", *((s, wide) if scale_first else (wide, s)))


def run_pass(graph: Graph, feeds: dict[str, np.ndarray], context: PassContext
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The graph's outputs before and after the pass."""
    expected = evaluate_graph(graph, feeds)
    FuseQuantizedProducts().run(graph, context)
    verify(graph)
    return expected, evaluate_graph(graph, feeds)


def int8_weight(rng: np.random.Generator, shape: tuple[int, ...], signed: bool
                ) -> np.ndarray:
    return (rng.integers(-128, 128, shape).astype(np.int8) if signed
            else rng.integers(0, 256, shape).astype(np.uint8))


# -- MatMul -----------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 150), n=st.integers(1, 13), rows=st.sampled_from([(3,), (2, 5)]),
       signed=st.booleans(), per_column=st.booleans(), with_zero=st.booleans(),
       transposed=st.booleans(), scale_first=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_of_widened_weight_becomes_8bit_block_matmul(k, n, rows, signed, per_column,
                                                            with_zero, transposed,
                                                            scale_first, seed):
    rng = np.random.default_rng(seed)
    q = int8_weight(rng, (k, n), signed)
    column_shape = (n,) if per_column else ()
    scale = rng.uniform(1e-3, 1e-1, column_shape).astype(np.float32)
    low, high = (-5, 6) if signed else (120, 136)
    zero = rng.integers(low, high, column_shape).astype(np.float32) if with_zero else None
    if transposed:  # Gemm's transB: the weight is (N, K), its columns along axis 0
        q = q.T.copy()
        scale = scale.reshape(-1, 1) if per_column else scale
        zero = zero.reshape(-1, 1) if per_column and zero is not None else zero
    g = Graph()
    a = g.add_input("a", TensorType((*rows, k), DType.FLOAT32))
    g.set_outputs([("y", g.add("MatMul", a, widened(g, q, scale, zero, scale_first),
                                trans_b=int(transposed)))])
    feeds = {"a": rng.standard_normal((*rows, k)).astype(np.float32)}
    expected, got = run_pass(g, feeds, RUNS_EVERYTHING)
    assert ops_of(g) == ["BlockQuantMatMul"]
    (node,) = [m for m in g.nodes() if g.op(m) == "BlockQuantMatMul"]
    assert g.attrs(node)["bits"] == 8
    # both sum float32 products of the same float weights, in different orders
    bound = (k + 2) * F32_EPS * float(np.abs(feeds["a"]).sum(axis=-1).max()) \
        * float(np.abs(q.astype(np.float32) - (zero if zero is not None else 0)).max()) \
        * float(scale.max())
    np.testing.assert_allclose(got["y"], expected["y"], rtol=0, atol=bound)


def test_block_size_pads_k_least():
    """K = 96 is three blocks of 32 (not two of 64 with 32 zeros), 768 twelve of 64."""
    for k, block_size in ((96, 32), (768, 64), (37, 16), (64, 64)):
        g = Graph()
        a = g.add_input("a", TensorType((1, k), DType.FLOAT32))
        q = np.ones((k, 4), np.int8)
        g.set_outputs([("y", g.add("MatMul", a, widened(g, q, np.float32(0.5))))])
        FuseQuantizedProducts().run(g, RUNS_EVERYTHING)
        (node,) = [m for m in g.nodes() if g.op(m) == "BlockQuantMatMul"]
        assert g.attrs(node)["block_size"] == block_size, k


def test_weight_only_dequantize_linear_becomes_8bit_block_matmul():
    """A QDQ model that quantizes only the weights: the same product."""
    rng = np.random.default_rng(3)
    g = Graph()
    a = g.add_input("a", TensorType((2, 40), DType.FLOAT32))
    q = int8_weight(rng, (40, 6), True)
    scale = rng.uniform(0.01, 0.1, (1, 6)).astype(np.float32)
    weight = g.add("DequantizeLinear", g.add_constant(q), g.add_constant(scale),
                   g.add_constant(np.zeros((1, 6), np.int8)))
    g.set_outputs([("y", g.add("MatMul", a, weight))])
    feeds = {"a": rng.standard_normal((2, 40)).astype(np.float32)}
    expected, got = run_pass(g, feeds, RUNS_EVERYTHING)
    assert ops_of(g) == ["BlockQuantMatMul"]
    np.testing.assert_allclose(got["y"], expected["y"], rtol=0, atol=1e-5)


# -- Gather -----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["Gather", "GatherND"])
@pytest.mark.parametrize("scale_axis", [None, 0, 1], ids=["per_tensor", "per_row", "per_col"])
def test_gather_of_widened_table_dequantizes_only_the_rows(op, scale_axis):
    rng = np.random.default_rng(7)
    vocab, dim = 11, 6
    q = int8_weight(rng, (vocab, dim), scale_axis != 1)
    shape = {None: (), 0: (vocab, 1), 1: (dim,)}[scale_axis]
    scale = rng.uniform(0.01, 0.1, shape).astype(np.float32)
    zero = None if scale_axis != 1 else rng.integers(100, 150, shape).astype(np.float32)
    g = Graph()
    ids = g.add_input("ids", TensorType((2, 3), DType.INT64))
    table = widened(g, q, scale, zero)
    if op == "Gather":
        rows = g.add("Gather", table, ids, axis=0)
    else:
        rows = g.add("GatherND", table, g.add("Reshape", ids, shape=(2, 3, 1)))
    g.set_outputs([("rows", rows)])
    feeds = {"ids": rng.integers(-vocab, vocab, (2, 3))}
    expected, got = run_pass(g, feeds, RUNS_EVERYTHING)
    np.testing.assert_array_equal(got["rows"], expected["rows"])  # the same arithmetic
    assert "DequantizeLinear" in ops_of(g) and "Cast" not in ops_of(g)
    gathered = {g.dtype_of(g.inputs_of(m)[0]) for m in g.nodes() if g.op(m) == op}
    assert DType.from_numpy(q.dtype) in gathered
    tables = [m for m in g.nodes() if g.op(m) == "Constant"
              and g.output_types(m)[0].shape == (vocab, dim)]
    assert [g.dtype_of(Value(m, 0)) for m in tables] == [DType.from_numpy(q.dtype)]


def test_gather_nd_with_batch_dims_of_a_per_column_table():
    rng = np.random.default_rng(8)
    q = int8_weight(rng, (2, 5, 4), True)
    scale = rng.uniform(0.01, 0.1, (4,)).astype(np.float32)
    g = Graph()
    pick = g.add_input("pick", TensorType((2, 3, 1), DType.INT64))
    g.set_outputs([("y", g.add("GatherND", widened(g, q, scale), pick, batch_dims=1))])
    feeds = {"pick": rng.integers(-5, 5, (2, 3, 1))}
    expected, got = run_pass(g, feeds, RUNS_EVERYTHING)
    np.testing.assert_array_equal(got["y"], expected["y"])
    assert ops_of(g) == ["DequantizeLinear", "GatherND"]


# -- near misses: left float, folded back to the constant ------------------------------------
def _near_miss_graphs() -> dict[str, tuple[Graph, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(11)
    q = int8_weight(rng, (8, 5), True)
    cases = {
        "scale varies along K": (q, rng.uniform(0.01, 0.1, (8, 1)), None),
        "scale varies along both axes": (q, rng.uniform(0.01, 0.1, (8, 5)), None),
        "zero not an integer": (q, np.float32(0.1), np.float32(0.5)),
        "zero outside int8": (q, np.float32(0.1), np.float32(200.0)),
        "int16 weight": (q.astype(np.int16), np.float32(0.1), None),
        "scale grows the weight": (q, rng.uniform(0.01, 0.1, (2, 1, 5)), None),
    }
    graphs = {}
    for name, (weight, scale, zero) in cases.items():
        g = Graph()
        a = g.add_input("a", TensorType((3, 8), DType.FLOAT32))
        b = widened(g, weight, np.asarray(scale, np.float32), zero)
        g.set_outputs([("y", g.add("MatMul", a, b))])
        graphs[name] = (g, {"a": rng.standard_normal((3, 8)).astype(np.float32)})
    return graphs


@pytest.mark.parametrize("case", sorted(_near_miss_graphs()))
def test_near_misses_stay_float_and_fold_back(case):
    g, feeds = _near_miss_graphs()[case]
    expected, got = run_pass(g, feeds, RUNS_EVERYTHING)
    np.testing.assert_array_equal(got["y"], expected["y"])  # the same float weights
    assert ops_of(g) == ["MatMul"]


@pytest.mark.parametrize("context", [RUNS_NOTHING, NO_DEVICE], ids=["no_kernel", "numpy"])
def test_without_the_kernel_the_weight_folds_back_to_float(context):
    rng = np.random.default_rng(12)
    g = Graph()
    a = g.add_input("a", TensorType((3, 40), DType.FLOAT32))
    q = int8_weight(rng, (40, 6), True)
    g.set_outputs([("y", g.add("MatMul", a, widened(g, q, np.float32(0.02))))])
    feeds = {"a": rng.standard_normal((3, 40)).astype(np.float32)}
    expected, got = run_pass(g, feeds, context)
    np.testing.assert_array_equal(got["y"], expected["y"])
    assert ops_of(g) == ["MatMul"]


def test_a_weight_also_read_as_float_keeps_a_float_copy_for_that_reader():
    """The other reader gets the folded float weight (and, all constant, folds too)."""
    rng = np.random.default_rng(13)
    g = Graph()
    a = g.add_input("a", TensorType((3, 40), DType.FLOAT32))
    weight = widened(g, int8_weight(rng, (40, 6), True), np.float32(0.02))
    g.set_outputs([("y", g.add("MatMul", a, weight)), ("w", g.add("Relu", weight))])
    feeds = {"a": rng.standard_normal((3, 40)).astype(np.float32)}
    expected, got = run_pass(g, feeds, RUNS_EVERYTHING)
    np.testing.assert_array_equal(got["w"], expected["w"])
    assert ops_of(g) == ["BlockQuantMatMul"]
    assert any(g.output_types(m)[0] == TensorType((40, 6), DType.FLOAT32)
               for m in g.nodes() if g.op(m) == "Constant")


def test_constant_rows_of_a_widened_table_fold_to_a_constant():
    rng = np.random.default_rng(16)
    g = Graph()
    a = g.add_input("a", TensorType((2, 6), DType.FLOAT32))
    table = widened(g, int8_weight(rng, (40, 6), True), np.float32(0.02))
    rows = g.add("Gather", table, g.add_constant(np.array([3, -1, 7])), axis=0)
    g.set_outputs([("y", g.add("MatMul", rows, g.add("Transpose", a, perm=(1, 0))))])
    feeds = {"a": rng.standard_normal((2, 6)).astype(np.float32)}
    expected, got = run_pass(g, feeds, RUNS_EVERYTHING)
    np.testing.assert_array_equal(got["y"], expected["y"])
    assert ops_of(g) == ["MatMul", "Transpose"]


# -- the folding rule --------------------------------------------------------------------------
@pytest.mark.parametrize("source, shape, to, folds", [
    (DType.INT8, (64, 128), DType.FLOAT32, False),  # a weight: 8 KiB -> 32 KiB
    (DType.UINT8, (128, 128), DType.FLOAT16, False),
    (DType.INT8, (32, 128), DType.FLOAT32, True),  # 16 KiB of float: small
    (DType.BOOL, (512, 512), DType.FLOAT32, True),  # a mask
    (DType.INT64, (64, 128), DType.INT32, True),  # narrowing
    (DType.INT32, (64, 128), DType.FLOAT32, True),  # no larger
    (DType.FLOAT16, (64, 128), DType.FLOAT32, True),
])
def test_cast_keeps_only_large_widened_narrow_integers(source, shape, to, folds):
    cast = OPS["Cast"]
    src = TensorType(shape, source)
    assert cast.folds([src], cast.infer_types([src], cast.make_attrs({"to": to}))) is folds


def test_fold_constants_keeps_the_weight_and_the_fold_back_pass_folds_it():
    rng = np.random.default_rng(14)
    g = Graph()
    a = g.add_input("a", TensorType((3, 64), DType.FLOAT32))
    q = int8_weight(rng, (64, 128), True)
    g.set_outputs([("y", g.add("MatMul", a, widened(g, q, np.float32(0.02), np.float32(3))))])
    feeds = {"a": rng.standard_normal((3, 64)).astype(np.float32)}
    expected = evaluate_graph(g, feeds)
    FoldConstants().run(g, RUNS_EVERYTHING)
    assert ops_of(g) == ["Cast", "MatMul", "Mul", "Sub"]
    assert FoldWidenedConstants().run(g, RUNS_EVERYTHING).changed
    assert ops_of(g) == ["MatMul"]
    np.testing.assert_array_equal(evaluate_graph(g, feeds)["y"], expected["y"])


# -- compiled: the weights' device memory -------------------------------------------------------
def _dense_model(int8: bool, k: int = 256, n: int = 256) -> onnx.ModelProto:
    rng = np.random.default_rng(15)
    q = rng.integers(-127, 128, (k, n)).astype(np.int8)
    scale = rng.uniform(0.001, 0.01, n).astype(np.float32)
    if int8:
        inits = [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(scale, "ws")]
        nodes = [helper.make_node("Cast", ["wq"], ["wf"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["wf", "ws"], ["w"])]
    else:
        inits, nodes = [numpy_helper.from_array(q.astype(np.float32) * scale, "w")], []
    graph = helper.make_graph(
        [*nodes, helper.make_node("MatMul", ["x", "w"], ["y"])], "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.opencl
@pytest.mark.skipif(not real_devices(), reason="no OpenCL device besides simulators")
def test_device_holds_a_quarter_of_the_float_weight_bytes():
    def weight_bytes(model) -> int:
        stats = model.stats
        return stats.peak_device_bytes - stats.peak_activation_bytes

    int8, float32 = (ember.compile(_dense_model(q)) for q in (True, False))
    assert [s.op for s in int8.plan.steps] == ["BlockQuantMatMul"]
    # 256 x 256 bytes, plus a scale (4 bytes) and a zero point (1 byte) per column and block
    # of K (blocks of 64 or more: at most 5 / 64 more)
    assert weight_bytes(int8) <= (0.25 + 5 / 64 / 4) * weight_bytes(float32)


@pytest.mark.parametrize("opt_level", [0, 1])
def test_levels_without_the_rewrite_fold_the_weight_as_before(opt_level):
    model = ember.compile(_dense_model(True), target="cpu", opt_level=opt_level)
    assert [s.op for s in model.plan.steps] == ["MatMul"]
