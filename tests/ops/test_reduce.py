"""The reduction family's OpenCL kernels against their numpy references: Reduce* over every
axes subset (negative axes, keepdims both ways, shapes with 1s and primes, empty reductions),
ArgMax/ArgMin and TopK with ties and NaN, CumSum both directions; the GPU-family kernel
variants (work-group tree, split reductions) run on the OpenCL device at hand; and the ONNX
converters against onnxruntime.

Accumulation bound. A float sum of n terms t_i, in any order (the serial loop, the split
pieces, the work-group tree), is within (n - 1) * u * sum|t_i| of the exact sum, to first
order in the unit roundoff u (Higham, Accuracy and Stability, ch. 4); the reference is the
exact sum rounded once (float64). The tests allow atol = n * u32 * sum|t_i| on top of the
TOLERANCE table (u32 = 2**-24: kernels accumulate half and float in float), scaled by 1/n for
the mean and carried through the square root for L2. Sums of small integers stored as float
are exact in any order and are compared exactly, which catches a missing or doubled term
that the bound could hide for long sums.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from hypothesis import given, strategies as st
from onnx import TensorProto, helper

import ember
from ember.codegen.families import FAMILIES, Target
from ember.codegen.kernels.reduce import ReduceParams, default_params, reduce_layout
from ember.frontends.builder import GraphBuilder
from ember.ir import OPS, DType, Value
from ember.ir.ops.reduce import REDUCE_KINDS
from ember.runtime.device import resolve_target
from ember.runtime.opencl import OpenCLExecutor
from ember.runtime.plan import DEVICE, build_plan
from tests.harness import real_devices, TOLERANCE, assert_close, check_op, run_op
from tests.strategies import array_for, shapes

pytestmark = pytest.mark.opencl

U32 = 2.0**-24  # unit roundoff of the float accumulators
SUM_LIKE = {"ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceL1",
            "ReduceLogSum"}


def _reference(op: str, arrays, attrs) -> tuple[np.ndarray, ...]:
    opdef = OPS[op]
    return opdef.evaluate(list(arrays), opdef.make_attrs(dict(attrs)))


def sum_bound(op: str, x: np.ndarray, axes: tuple[int, ...], out_shape) -> np.ndarray:
    """Per-output absolute error bound of a float-accumulated sum-like reduction."""
    axes = tuple(a % max(x.ndim, 1) for a in axes)
    n = int(np.prod([x.shape[a] for a in axes]))
    terms = x.astype(np.float64)
    terms = terms * terms if REDUCE_KINDS[op].pre == "square" else np.abs(terms)
    bound = n * U32 * np.sum(terms, axis=axes).reshape(out_shape)
    if op == "ReduceMean":
        bound = bound / max(n, 1)
    if op == "ReduceL2":  # |sqrt(s + d) - sqrt(s)| <= min(sqrt(d), d / (2 sqrt(s)))
        s = np.sum(terms, axis=axes).reshape(out_shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = np.minimum(np.sqrt(bound), bound / (2 * np.sqrt(s)))
    if op == "ReduceLogSum":  # |log(s + d) - log(s)| <= d / s to first order (s > 0 here)
        s = np.sum(terms, axis=axes).reshape(out_shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = bound / s
    return np.nan_to_num(bound)


def assert_within(actual: np.ndarray, expected: np.ndarray, rtol: float, atol, what: str
                  ) -> None:
    """|actual - expected| <= atol + rtol * |expected| elementwise, with a per-element atol
    (the accumulation bound); NaN must meet NaN."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    allowed = atol + rtol * np.abs(e)
    with np.errstate(invalid="ignore"):
        ok = (np.abs(a - e) <= allowed) | (np.isnan(a) & np.isnan(e)) | (a == e)
    if not np.all(ok):
        bad = np.argwhere(~ok)[0]
        where = tuple(int(i) for i in bad)
        raise AssertionError(f"{what}: at {where} got {a[where]}, expected {e[where]} "
                             f"(allowed error {np.broadcast_to(allowed, e.shape)[where]})")


def check_reduce(op: str, x: np.ndarray, axes: tuple[int, ...], keepdims: int, *,
                 target: str, exact: bool = False) -> ember.CompiledModel:
    attrs = {"axes": axes, "keepdims": keepdims}
    (expected,) = _reference(op, [x], attrs)
    (actual,), model = run_op(op, [x], attrs, target=target)
    dtype = DType.from_numpy(x.dtype)
    if exact or not dtype.is_float:
        np.testing.assert_array_equal(actual, expected, err_msg=f"{op} axes={axes}")
        assert actual.dtype == expected.dtype
    elif op in SUM_LIKE:
        rtol, atol = TOLERANCE[dtype]
        assert_within(actual, expected, rtol, atol + sum_bound(op, x, axes, expected.shape),
                      f"{op} axes={axes}")
    elif op == "ReduceProd":  # relative error of n multiplications: n * u
        n = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        rtol = max(TOLERANCE[dtype][0], n * U32)
        assert_close(actual, expected, f"{op} axes={axes}", (rtol, TOLERANCE[dtype][1]))
    else:
        assert_close(actual, expected, f"{op} axes={axes}")
    return model


# -- Reduce* --------------------------------------------------------------------------------
@st.composite
def reduce_case(draw, op: str):
    kind = REDUCE_KINDS[op]
    max_size = 60 if kind.combine == "prod" else 4096  # keeps float products in range
    shape = draw(shapes(0, 4, max_size=max_size))
    rank = len(shape)
    chosen = draw(st.lists(st.booleans(), min_size=rank, max_size=rank))
    axes = [a for a in range(rank) if chosen[a]]
    axes = draw(st.permutations(axes)) if axes else []
    axes = tuple(a - rank if draw(st.booleans()) else a for a in axes)
    keepdims = draw(st.sampled_from([0, 1]))
    dtypes = [DType.FLOAT32, DType.FLOAT32, DType.FLOAT16, DType.INT32, DType.INT64]
    if kind.allows_bool:
        dtypes.append(DType.BOOL)
    if kind.post == "sqrt":
        dtypes.remove(DType.INT64)  # int64 L2 runs on the host (see codegen/reduce.py)
    if kind.post == "log":  # integer LogSum runs on the host (see codegen/reduce.py)
        dtypes = [d for d in dtypes if d.is_float]
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**32 - 1))
    special = kind.combine in ("max", "min") and dtype.is_float and draw(st.booleans())
    if kind.combine == "prod" and dtype.is_float:
        x = array_for(seed, shape, dtype, low=0.5, high=2.0)
        x = np.where(array_for(seed + 1, shape, DType.BOOL), -x, x).astype(dtype.np_dtype)
    elif kind.post == "log":  # positive terms: the log of a sum that cannot cancel to 0
        x = array_for(seed, shape, dtype, low=0.0, high=4.0)
    else:
        x = array_for(seed, shape, dtype, special=special)
    exact = False
    if op in ("ReduceSum", "ReduceSumSquare") and dtype is DType.FLOAT32 and draw(st.booleans()):
        x, exact = np.round(x), True  # small integers: exact in any order
    return x, axes, keepdims, exact


@pytest.mark.parametrize("op", sorted(REDUCE_KINDS))
def test_reduce_kernel_matches_reference(op, opencl_target):
    @given(case=reduce_case(op))
    def check(case):
        x, axes, keepdims, exact = case
        check_reduce(op, x, axes, keepdims, target=opencl_target, exact=exact)

    check()


def test_every_axes_subset_in_one_program(opencl_target):
    """All 16 axes subsets of a rank-4 shape (with a 1), compiled as one model (one program
    build): ReduceMean with keepdims both ways, ReduceMax without. The axes simplification
    is the same code for every op; hypothesis draws subsets for each op."""
    x = array_for(7, (3, 1, 5, 2), DType.FLOAT32)
    b = GraphBuilder("subsets")
    xv = b.input("x", x.shape)
    cases = []
    for op, keepdims in (("ReduceMean", 0), ("ReduceMean", 1), ("ReduceMax", 0)):
        for r in range(5):
            for axes in itertools.combinations(range(4), r):
                b.output(f"o{len(cases)}", b.op(op, xv, axes=axes, keepdims=keepdims))
                cases.append((op, axes, keepdims))
    model = ember.compile(b.build(), target=opencl_target, opt_level=0, strict=True)
    outputs = model(x=x)
    for i, (op, axes, keepdims) in enumerate(cases):
        (expected,) = _reference(op, [x], {"axes": axes, "keepdims": keepdims})
        bound = sum_bound(op, x, axes, expected.shape) if op in SUM_LIKE else 0.0
        rtol, atol = TOLERANCE[DType.FLOAT32]
        assert_within(outputs[f"o{i}"], expected, rtol, atol + bound,
                      f"{op} axes={axes} keepdims={keepdims}")


@pytest.mark.parametrize("op,dtype,expected", [
    ("ReduceSum", np.float32, 0.0), ("ReduceProd", np.float32, 1.0),
    ("ReduceMax", np.float32, -np.inf), ("ReduceMin", np.float32, np.inf),
    ("ReduceMax", np.int32, np.iinfo(np.int32).min),
    ("ReduceMin", np.int64, np.iinfo(np.int64).max),
    ("ReduceMax", np.bool_, False), ("ReduceMin", np.bool_, True),
    ("ReduceL2", np.float32, 0.0), ("ReduceSumSquare", np.float32, 0.0),
    ("ReduceMean", np.float32, np.nan), ("ReduceMean", np.int32, 0),
])
def test_empty_reduction_gives_identity(op, dtype, expected, opencl_target):
    x = np.zeros((2, 0, 3), dtype)
    (actual,), model = run_op(op, [x], {"axes": (1,), "keepdims": 1}, target=opencl_target)
    assert model.stats.kernel_launches == 1
    np.testing.assert_array_equal(actual, np.full((2, 1, 3), expected, dtype))
    check_reduce(op, x, (1,), 1, target=opencl_target)


def test_empty_output_needs_no_launch(opencl_target):
    model = check_reduce("ReduceSum", np.zeros((0, 4), np.float32), (1,), 0, target=opencl_target)
    assert model.stats.kernel_launches == 0


def test_nothing_reduced_applies_the_maps(opencl_target):
    """axes=() (ONNX noop_with_empty_axes): L2 is |x|, SumSquare is x*x."""
    x = array_for(3, (4, 3), DType.FLOAT32)
    check_reduce("ReduceL2", x, (), 1, target=opencl_target)
    check_reduce("ReduceSumSquare", x, (), 0, target=opencl_target)


def test_integer_sums_wrap_like_numpy(opencl_target):
    x = np.full((3, 70000), 40000, np.int32)  # the sum exceeds 2**31
    check_reduce("ReduceSum", x, (1,), 0, target=opencl_target)
    check_reduce("ReduceMean", np.array([[-7, 2], [7, -2]], np.int32), (1,), 0,
                 target=opencl_target)


@pytest.mark.parametrize("shape,axes,op,dtype,split,lanes", [
    ((2, 40009), (1,), "ReduceSum", DType.FLOAT32, True, "vec=8 along reduced"),
    ((40000, 8), (0,), "ReduceSumSquare", DType.FLOAT32, True, "vec=8 along kept"),
    ((33000, 6), (0,), "ReduceMax", DType.FLOAT16, True, "vec=2 along kept"),
    ((5, 7, 12), (0, 1), "ReduceMean", DType.FLOAT16, False, "vec=4 along kept"),
    ((3, 35000), (1,), "ReduceL2", DType.FLOAT16, True, "vec=8 along reduced"),
    ((2, 3, 40000), (0, 2), "ReduceMin", DType.FLOAT32, True, "vec=1 along none"),
])
def test_cpu_variants(shape, axes, op, dtype, split, lanes, opencl_target):
    """The CPU defaults: floatN lanes along the reduced or the kept axis, long reductions
    with few outputs split into pieces (a second launch combines them)."""
    x = array_for(11, shape, dtype)
    model = check_reduce(op, x, axes, 0, target=opencl_target)
    if real_devices()[0].traits.device_type == "CPU":
        assert lanes in model.plan.steps[0].lowered.notes[0]
        assert model.stats.kernel_launches == (2 if split else 1)


def test_long_exact_sum_in_pieces(opencl_target):
    x = np.round(array_for(12, (2, 40009), DType.FLOAT32))
    check_reduce("ReduceSum", x, (-1,), 1, target=opencl_target, exact=True)


@pytest.mark.parametrize("shape,axes,op", [
    ((2, 40000), (1,), "ReduceSum"),  # tree of 256 and split into pieces
    ((7, 300, 3, 5), (1, 3), "ReduceMean"),  # tree of 64 over non-adjacent axes
    ((3, 5000), (-1,), "ReduceMax"),
    ((3, 5000), (1,), "ReduceL2"),
    ((20000, 3), (0,), "ReduceSumSquare"),  # outer axis: one item per output, split
])
def test_gpu_family_variants_run_on_this_device(shape, axes, op, opencl_target):
    """The kernels codegen picks for a GPU family (local-memory tree, split) are plain OpenCL:
    run them on the device at hand through a plan built for an AMD GCN family target."""
    device = resolve_target(opencl_target)
    target = Target(device.info.traits, FAMILIES["amd-gcn"])
    x = array_for(5, shape, DType.FLOAT32)
    layout = reduce_layout(shape, tuple(a % len(shape) for a in axes))
    params = default_params(layout, DType.FLOAT32, target)
    assert params != ReduceParams()  # this case exercises the tree or the split
    b = GraphBuilder("gpu_variant")
    b.output("y", b.op(op, b.input("x", shape), axes=axes, keepdims=0))
    graph = b.build()
    for node in graph.nodes():
        if graph.op(node) not in ("Input", "Constant"):
            graph.set_meta(node, "placement", DEVICE)
    plan = build_plan(graph, target)
    assert not plan.host_steps
    actual = OpenCLExecutor(plan, device).run({"x": x})["y"]
    (expected,) = _reference(op, [x], {"axes": axes, "keepdims": 0})
    bound = sum_bound(op, x, axes, expected.shape) if op in SUM_LIKE else 0.0
    rtol, atol = TOLERANCE[DType.FLOAT32]
    assert_within(actual, expected, rtol, atol + bound, f"{op} {shape} axes={axes}")


# -- ArgMax / ArgMin -------------------------------------------------------------------------
def _tied_values(seed: int, shape, dtype: DType, special: bool) -> np.ndarray:
    """Few distinct values, so that extremes tie; NaN mixed in when `special`."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=shape).astype(np.float64)
    if special and x.size:
        x[rng.random(shape) < 0.1] = np.nan
    return x.astype(dtype.np_dtype)


@st.composite
def line_case(draw, max_size: int = 4096):
    shape = draw(shapes(1, 4, max_size=max_size))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT16, DType.INT32, DType.INT64]))
    special = dtype.is_float and draw(st.booleans())
    x = _tied_values(draw(st.integers(0, 2**32 - 1)), shape, dtype, special)
    return x, axis


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
def test_argreduce_matches_reference(op, opencl_target):
    @given(case=line_case(), keepdims=st.sampled_from([0, 1]), last=st.sampled_from([0, 1]))
    def check(case, keepdims, last):
        x, axis = case
        check_op(op, [x], {"axis": axis, "keepdims": keepdims, "select_last_index": last},
                 target=opencl_target)

    check()


def test_argmax_nan_is_the_maximum(opencl_target):
    x = np.array([[1.0, np.nan, 5.0, np.nan], [2.0, 2.0, -1.0, 2.0]], np.float32)
    for op in ("ArgMax", "ArgMin"):
        for last in (0, 1):
            (actual,), _ = run_op(op, [x], {"axis": 1, "keepdims": 0, "select_last_index": last},
                                  target=opencl_target)
            first_extreme = {("ArgMax", 0): [1, 0], ("ArgMax", 1): [3, 3],
                             ("ArgMin", 0): [1, 2], ("ArgMin", 1): [3, 2]}[(op, last)]
            np.testing.assert_array_equal(actual, np.array(first_extreme, np.int64))


# -- CumSum --------------------------------------------------------------------------------
def test_cumsum_matches_reference(opencl_target):
    """The kernel adds in axis order, as the reference: float32 results agree to TOLERANCE
    (in fact bit for bit), ints exactly."""

    @given(case=line_case(), exclusive=st.sampled_from([0, 1]), reverse=st.sampled_from([0, 1]),
           seed=st.integers(0, 2**32 - 1))
    def check(case, exclusive, reverse, seed):
        x, axis = case
        dtype = DType.from_numpy(x.dtype)
        x = array_for(seed, x.shape, dtype)  # CumSum wants varied values, not ties
        check_op("CumSum", [x], {"axis": axis, "exclusive": exclusive, "reverse": reverse},
                 target=opencl_target)

    check()


# -- TopK ------------------------------------------------------------------------------------
@pytest.mark.parametrize("largest", [1, 0])
def test_topk_matches_reference(largest, opencl_target):
    @given(case=line_case(max_size=2048), data=st.data())
    def check(case, data):
        x, axis = case
        n = x.shape[axis]
        k = data.draw(st.integers(0, min(n, 64)), label="k")
        check_op("TopK", [x], {"k": k, "axis": axis, "largest": largest,
                               "sorted": data.draw(st.sampled_from([0, 1]))},
                 target=opencl_target)

    check()


def test_topk_ties_and_nan_order(opencl_target):
    x = np.array([3.0, np.nan, 1.0, 3.0, np.nan, 1.0, -0.0, 0.0], np.float32)
    (values, indices), _ = run_op("TopK", [x], {"k": 8, "axis": 0}, target=opencl_target)
    np.testing.assert_array_equal(indices, [1, 4, 0, 3, 2, 5, 6, 7])
    (values, indices), _ = run_op("TopK", [x], {"k": 8, "axis": 0, "largest": 0},
                                  target=opencl_target)
    np.testing.assert_array_equal(indices, [6, 7, 2, 5, 0, 3, 1, 4])


def test_topk_largest_device_k_and_host_beyond(opencl_target):
    x = _tied_values(9, (3, 200), DType.FLOAT32, special=True)
    model = check_op("TopK", [x], {"k": 64, "axis": 1}, target=opencl_target)
    assert model.stats.host_steps == 0
    attrs = {"k": 65, "axis": 1}
    outputs, model = run_op("TopK", [x], attrs, target=opencl_target, strict=False)
    assert model.stats.host_steps == 1  # larger k runs on the host through the reference
    for actual, expected in zip(outputs, _reference("TopK", [x], attrs)):
        assert_close(actual, expected)


# -- ONNX converters against onnxruntime ----------------------------------------------------
def _model(node: onnx.NodeProto, inputs, opset: int, initializers=(), outputs=None
           ) -> onnx.ModelProto:
    """A one-node model; onnx's shape inference types the outputs unless given."""
    outputs = outputs or [onnx.ValueInfoProto(name=name) for name in node.output]
    graph = helper.make_graph([node], "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _vi(name: str, dtype: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


CONVERTER_CASES = [
    # (op, opset, attrs, axes input or None)
    ("ReduceSum", 13, {"keepdims": 0}, [0, -1]),
    ("ReduceSum", 13, {"keepdims": 1}, None),  # no axes: every axis
    ("ReduceSum", 13, {"noop_with_empty_axes": 1}, []),  # empty axes with noop: identity
    ("ReduceMean", 17, {"axes": [1], "keepdims": 1}, None),  # axes as attribute
    ("ReduceMean", 18, {"keepdims": 0}, [1, 2]),  # axes as input
    ("ReduceMax", 18, {"keepdims": 0}, [-2]),
    ("ReduceMin", 13, {"axes": [0, 2]}, None),
    ("ReduceProd", 18, {}, [2]),
    ("ReduceL2", 17, {"axes": [-1], "keepdims": 0}, None),
    ("ReduceSumSquare", 18, {"keepdims": 1}, [0]),
]


@pytest.mark.parametrize("op,opset,attrs,axes", CONVERTER_CASES)
def test_reduce_converter_matches_onnxruntime(op, opset, attrs, axes, any_target):
    x = array_for(13, (3, 4, 5), DType.FLOAT32, low=0.5, high=1.5)
    inits = []
    inputs = ["x"]
    if axes is not None:
        inits.append(helper.make_tensor("axes", TensorProto.INT64, [len(axes)], axes))
        inputs.append("axes")
    node = helper.make_node(op, inputs, ["y"], **attrs)
    model = _model(node, [_vi("x", TensorProto.FLOAT, x.shape)], opset, inits)
    (expected,) = _ort(model, {"x": x})
    compiled = ember.compile(model, target=any_target, strict=any_target != "cpu")
    assert_close(compiled(x=x)["y"], expected, f"{op} opset {opset}")


def test_arg_cumsum_topk_converters_match_onnxruntime(any_target):
    x = np.random.default_rng(2).permutation(60).astype(np.float32).reshape(3, 4, 5)
    cases = [
        (helper.make_node("ArgMax", ["x"], ["y"], axis=-1, keepdims=0), []),
        (helper.make_node("ArgMin", ["x"], ["y"], axis=1, select_last_index=1), []),
        (helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=1, reverse=1),
         [helper.make_tensor("axis", TensorProto.INT32, [], [1])]),
        (helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=1, largest=0),
         [helper.make_tensor("k", TensorProto.INT64, [1], [3])]),
    ]
    for node, inits in cases:
        model = _model(node, [_vi("x", TensorProto.FLOAT, x.shape)], 13, inits)
        expected = _ort(model, {"x": x})
        compiled = ember.compile(model, target=any_target, strict=any_target != "cpu")
        result = compiled(x=x)
        for name, want in zip(["y", "i"], expected):
            assert_close(result[name], want, f"{node.op_type} {name}")


def test_axes_from_a_graph_input_must_be_constant():
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"])
    model = _model(node, [_vi("x", TensorProto.FLOAT, [2, 3]), _vi("axes", TensorProto.INT64, [1])],
                   13, outputs=[_vi("y", TensorProto.FLOAT, ["a", "b"])])
    with pytest.raises(ember.errors.NonConstantInputError, match="axes"):
        ember.compile(model, target="cpu")


def test_graph_builder_value_types():
    """TopK has two outputs: values in the input dtype, indices int64."""
    b = GraphBuilder("t")
    values, indices = b.op("TopK", b.input("x", (4, 9), DType.FLOAT16), k=3, axis=-1)
    assert isinstance(values, Value)
    assert b.graph.type_of(values).dtype is DType.FLOAT16
    assert b.graph.type_of(indices).dtype is DType.INT64
    assert b.graph.type_of(indices).shape == (4, 3)
