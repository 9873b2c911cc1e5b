"""The nn family's kernels against their numpy references, and its ONNX converters against
onnxruntime: pooling (odd windows, pads, strides, dilations, ceil mode, indices), softmax
(rows of length 1, long rows, NaN in a row), layer/instance normalization and LRN.

Sums are long here, and kernel and reference add in different orders, so where an op sums
n terms the allowed error is the one in TOLERANCE widened to the worst-case float32 bound
n * eps32 * max|term| (stated at each use); nothing else is widened.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import given, strategies as st
from onnx import TensorProto, helper

import ember
from ember.codegen.types import NodeSpec
from ember.codegen.kernels.norm import build_norm, build_softmax
from ember.codegen.kernels.pool import build_global_pool
from ember.codegen.kernels.rows import RowParams, choose_row_params
from ember.errors import ShapeError
from ember.ir import OPS, DType
from ember.ir.ops.nn import softmax_rows
from ember.ir.ops.pool import pool_geometry
from ember.runtime.device import resolve_target
from ember.runtime.opencl import build_program, program_source
from tests.harness import TOLERANCE, assert_close, check_op, run_op
from tests.strategies import DIMS, array_for

pytestmark = pytest.mark.opencl

EPS32 = float(np.finfo(np.float32).eps)


def sum_tolerance(dtype: DType, n: int, magnitude: float) -> tuple[float, float]:
    """TOLERANCE[dtype] widened to the float32 bound for a sum of n terms of size at most
    `magnitude`: atol = n * eps32 * magnitude."""
    rtol, atol = TOLERANCE[dtype]
    return rtol, max(atol, n * EPS32 * magnitude)


def _dim(draw, limit: int) -> int:
    return draw(st.sampled_from([d for d in DIMS if d <= limit]))


# -- pooling ----------------------------------------------------------------------------------
@st.composite
def pool_case(draw, op: str):
    k = draw(st.sampled_from([1, 2, 2, 3]))
    kernel = [draw(st.integers(1, 4 if k < 3 else 3)) for _ in range(k)]
    dilations = [draw(st.sampled_from([1, 1, 2])) for _ in range(k)]
    strides = [draw(st.integers(1, 3)) for _ in range(k)]
    # pads below the kernel (onnxruntime's rule), and now and then as large as it
    pads = [draw(st.integers(0, kernel[i % k] - (0 if draw(st.booleans()) else 1)))
            for i in range(2 * k)]
    spatial = []
    for i in range(k):
        extent = (kernel[i] - 1) * dilations[i] + 1
        size = _dim(draw, 17 if k < 3 else 7)
        spatial.append(max(size, extent - pads[i] - pads[k + i]))
    shape = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 3, 5])), *spatial)
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads,
             "dilations": dilations, "ceil_mode": int(draw(st.booleans()))}
    if op == "MaxPool":
        dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16,
                                      DType.INT8, DType.UINT8, DType.INT32]))
        attrs["indices"] = int(draw(st.booleans()))
        attrs["storage_order"] = int(draw(st.booleans()))
    else:
        dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16]))
        attrs["count_include_pad"] = int(draw(st.booleans()))
    special = dtype.is_float and draw(st.booleans())
    x = array_for(draw(st.integers(0, 2**32 - 1)), shape, dtype, special=special)
    return x, attrs


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_kernel_matches_reference(op, opencl_target):
    @given(case=pool_case(op))
    def check(case):
        x, attrs = case
        window = math.prod(attrs["kernel_shape"])
        # AveragePool sums up to `window` elements of size <= 4 (values in [-4, 4]).
        tolerance = sum_tolerance(DType.from_numpy(x.dtype), window, 4.0) \
            if op == "AveragePool" else None
        check_op(op, [x], attrs, target=opencl_target, tolerance=tolerance)

    check()


@pytest.mark.parametrize("op", ["GlobalMaxPool", "GlobalAveragePool"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5, 7), (1, 2, 1031), (3, 1, 2, 2, 2),
                                   (2, 17), (1, 3, 33, 17)])
@pytest.mark.parametrize("dtype", [DType.FLOAT32, DType.FLOAT16])
def test_global_pool(op, shape, dtype, opencl_target):
    x = array_for(sum(shape), shape, dtype, special=dtype is DType.FLOAT32)
    n = math.prod(shape[2:])
    # GlobalAveragePool sums n elements of size <= 4; its mean divides that error by n,
    # but a NaN or inf in the plane makes the result NaN/inf in both.
    check_op(op, [x], target=opencl_target, tolerance=sum_tolerance(dtype, n, 4.0))


def test_global_max_pool_ints(opencl_target):
    for dtype in (DType.INT8, DType.UINT8, DType.INT64):
        check_op("GlobalMaxPool", [array_for(5, (2, 3, 4, 5), dtype)], target=opencl_target)


def test_max_pool_nan_and_ties(opencl_target):
    x = np.array([[[[1.0, np.nan, 3.0, 3.0], [2.0, 3.0, -np.inf, np.nan]]]], np.float32)
    attrs = {"kernel_shape": [2, 2], "strides": [1, 2], "indices": 1}
    check_op("MaxPool", [x], attrs, target=opencl_target)
    ties = np.zeros((1, 2, 5, 5), np.int8)
    check_op("MaxPool", [ties], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "indices": 1},
             target=opencl_target)


def test_pool_window_of_padding_only(opencl_target):
    # in=1, dilation 3, pads 1 and 2: the one window holds positions -1 and 2, neither real.
    x = np.array([[[5.0]]], np.float32)
    attrs = {"kernel_shape": [2], "dilations": [3], "pads": [1, 2]}
    (y, idx), _ = run_op("MaxPool", [x], {**attrs, "indices": 1}, target=opencl_target)
    assert y.tolist() == [[[-np.inf]]] and idx.tolist() == [[[-1]]]
    check_op("AveragePool", [x], attrs, target=opencl_target)


def test_pool_empty_batch_runs_without_launch(opencl_target):
    x = np.zeros((0, 3, 5, 5), np.float32)
    model = check_op("MaxPool", [x], {"kernel_shape": [2, 2]}, target=opencl_target)
    assert model.stats.kernel_launches == 0


def test_pool_geometry_ceil_mode_drops_window_starting_in_pad():
    # ONNX's averagepool_2d_ceil_last_window_starts_on_pad: in 5, kernel 3, stride 2, pads 1.
    g = pool_geometry((1, 1, 5), {"kernel_shape": (3,), "strides": (2,), "pads": (1, 1),
                                  "dilations": (), "ceil_mode": 1})
    assert g.out_shape == (3,)
    g = pool_geometry((1, 1, 4), {"kernel_shape": (2,), "strides": (2,), "pads": (0, 1),
                                  "dilations": (), "ceil_mode": 1})
    assert g.out_shape == (2,)


def test_pool_rejects_a_kernel_larger_than_the_input():
    with pytest.raises(ShapeError, match="does not fit"):
        OPS["MaxPool"].infer_types([ember.ir.TensorType((1, 1, 3, 3), DType.FLOAT32)],
                                   OPS["MaxPool"].make_attrs({"kernel_shape": [5, 5]}))


# -- softmax ----------------------------------------------------------------------------------
@st.composite
def softmax_case(draw):
    rank = draw(st.integers(1, 4))
    shape = tuple(_dim(draw, 17) for _ in range(rank))
    if draw(st.integers(0, 4)) == 0:  # a few long rows: the work-group path
        shape = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([257, 1031, 4099])))
        rank = 2
    flatten = int(draw(st.integers(0, 3)) == 0)
    axis = draw(st.integers(-rank, rank - 1))
    dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16]))
    x = array_for(draw(st.integers(0, 2**32 - 1)), shape, dtype, special=draw(st.booleans()))
    return x, {"axis": axis, "flatten": flatten}


def softmax_tolerance(op: str, x: np.ndarray, attrs: dict) -> tuple[float, float]:
    """The row sum has n terms exp(x - max) <= 1, so its relative error is at most n * eps32:
    Softmax's outputs get rtol (n + 2) * eps32 (the exp and the division add one rounding
    each); LogSoftmax's get atol (n + 2) * eps32 * max(1, max|x - max|) from log(sum)."""
    dtype = DType.from_numpy(x.dtype)
    rtol, atol = TOLERANCE[dtype]
    n = softmax_rows(x.shape, attrs["axis"], attrs["flatten"])[1]
    bound = (n + 2) * EPS32
    if op == "Softmax":
        return max(rtol, bound), atol
    return rtol, max(atol, bound * 8.0)  # values in [-4, 4]: |x - max| <= 8


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_kernel_matches_reference(op, opencl_target):
    @given(case=softmax_case())
    def check(case):
        x, attrs = case
        check_op(op, [x], attrs, target=opencl_target, tolerance=softmax_tolerance(op, x, attrs))

    check()


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_edge_rows(op, opencl_target):
    rows = np.array([[1.0, 2.0, np.nan, 0.0], [np.inf, 1.0, 2.0, 3.0],
                     [-np.inf, -np.inf, -np.inf, -np.inf], [1e30, -1e30, 88.0, 89.0]],
                    np.float32)
    (y,), _ = run_op(op, [rows], {"axis": -1}, target=opencl_target)
    # A NaN row stays NaN; +inf makes inf - inf in the sum and all -inf makes -inf - -inf:
    # NaN rows as well, as in numpy. Huge finite values stay finite (the max is subtracted).
    assert np.isnan(y[:3]).all() and np.isfinite(y[3]).all()
    check_op(op, [rows], {"axis": -1}, target=opencl_target)
    single = array_for(3, (4, 1, 3), DType.FLOAT32)  # rows of length 1: 1 and 0
    check_op(op, [single], {"axis": 1}, target=opencl_target)


def test_row_params_choose_work_groups_for_few_long_rows(opencl_target):
    t = resolve_target(opencl_target).target
    assert choose_row_params(1, 4099, 1, t).local > 1  # the path the long rows above take
    assert choose_row_params(1000, 4099, 1, t).local == 1
    assert choose_row_params(1, 7, 1, t).local == 1
    with pytest.raises(ValueError, match="power of two"):
        RowParams(12).validate(t, 4)
    assert RowParams(16).steps == (8, 4, 2, 1)


def run_lowered(cases: list[tuple], target: str) -> list[list[np.ndarray]]:
    """Run Lowereds built with explicit tunables straight on the device (compile() would
    pick the family's own choice): `cases` holds (lowered, input arrays, output types); all
    their kernels go into one program, as a model's would."""
    import pyopencl as cl

    device = resolve_target(target)
    kernels = {k.name: k for lowered, _, _ in cases for k in lowered.kernels}
    program = build_program(device, program_source(list(kernels.values())))
    flags = cl.mem_flags
    all_results = []
    for lowered, arrays, outputs in cases:
        ins = [cl.Buffer(device.context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=a)
               for a in arrays]
        results = [np.empty(t.shape, t.dtype.np_dtype) for t in outputs]
        outs = [cl.Buffer(device.context, flags.READ_WRITE, max(r.nbytes, 1)) for r in results]
        for launch in lowered.launches:
            kernel = cl.Kernel(program, launch.kernel.name)
            kernel.set_args(*[(ins if kind == "in" else outs)[i] for kind, i in launch.args])
            cl.enqueue_nd_range_kernel(device.queue, kernel, launch.global_size,
                                       launch.local_size)
        for r, buf in zip(results, outs):
            cl.enqueue_copy(device.queue, r, buf, is_blocking=True)
        all_results.append(results)
    return all_results


ROW_CASES = [
    ("Softmax", [(3, 1000)], {"axis": -1}),
    ("LogSoftmax", [(2, 37, 5)], {"axis": 1}),
    ("Softmax", [(2, 3)], {"axis": 1}),
    ("LayerNormalization", [(3, 7, 70), (70,), (7, 1)], {"axis": 1, "stats": 1}),
    ("InstanceNormalization", [(2, 3, 129), (3,), (3,)], {}),
    ("GlobalMaxPool", [(2, 2, 9, 31)], {}),
    ("GlobalAveragePool", [(1, 3, 1001)], {}),
]


@pytest.mark.parametrize("local", [4, 256])
def test_row_kernels_correct_for_every_local_size(local, opencl_target):
    """GPU families pick LOCAL up to 256: each size must be right on this device too,
    including rows shorter than LOCAL (idle lanes) and rows holding NaN or inf. (PoCL takes
    seconds to compile a 256-wide work-group with barriers, so 256 runs three kernels; one
    work-item per row runs in every other test.)"""
    target = resolve_target(opencl_target).target
    if local > target.traits.max_work_group_size:
        pytest.skip(f"device max work-group size {target.traits.max_work_group_size}")
    builders = {"Softmax": build_softmax, "LogSoftmax": build_softmax,
                "LayerNormalization": build_norm, "InstanceNormalization": build_norm,
                "GlobalMaxPool": build_global_pool, "GlobalAveragePool": build_global_pool}
    cases, checks = [], []
    for op, shapes, attrs in ROW_CASES if local < 256 else ROW_CASES[::3]:
        special = op.startswith(("Soft", "Global"))
        arrays = [array_for(i + 1, s, DType.FLOAT32, special=special and i == 0)
                  for i, s in enumerate(shapes)]
        opdef = OPS[op]
        made = opdef.make_attrs(attrs)
        types = tuple(ember.ir.TensorType(a.shape, DType.FLOAT32) for a in arrays)
        spec = NodeSpec(op, made, types, opdef.infer_types(types, made))
        lowered = builders[op](spec, target, RowParams(local))
        assert lowered.notes == (f"local={local}",)
        cases.append((lowered, arrays, spec.outputs))
        if op.endswith("Softmax"):
            tolerances = [softmax_tolerance(op, arrays[0], made)]
        elif op.endswith("Normalization"):
            rows = math.prod(shapes[0][: made["axis"] % 3]) if "axis" in made else 6
            tolerances = norm_tolerance(arrays[0], rows, arrays[1], made["epsilon"])
        else:  # a plane sums at most its n elements of size <= 4
            tolerances = [sum_tolerance(DType.FLOAT32, math.prod(shapes[0][2:]), 4.0)]
        checks.append((op, opdef.evaluate(arrays, made), tolerances))
    for (op, expected, tolerances), actual in zip(checks, run_lowered(cases, opencl_target)):
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"{op} output {i} local={local}", tolerances[i])


# -- normalization ----------------------------------------------------------------------------
def norm_tolerance(x: np.ndarray, rows: int, scale: np.ndarray,
                   epsilon: float) -> tuple[tuple[float, float], tuple[float, float],
                                             tuple[float, float]]:
    """Tolerances of (Y, Mean, InvStdDev). The mean sums n terms: atol_mean = n*eps32*max|x|.
    d = x - mean inherits that error; var sums n terms d^2, so inv = 1/sqrt(var + epsilon)
    is off by at most rel_inv = (n + 3) * eps32 * (1 + max|x|^2 / (min var + epsilon)),
    and Y = d * inv * scale by max|scale| * max(inv) * (atol_mean + max|d| * rel_inv)."""
    dtype = DType.from_numpy(x.dtype)
    rtol, atol = TOLERANCE[dtype]
    xr = x.astype(np.float64).reshape(rows, -1)
    n = xr.shape[1]
    if xr.size == 0:
        return (rtol, atol), (rtol, atol), (rtol, atol)
    big = float(np.abs(xr).max())
    d = xr - xr.mean(axis=1, keepdims=True)
    var = (d * d).mean(axis=1)
    inv = 1.0 / np.sqrt(var + epsilon)
    atol_mean = n * EPS32 * big
    rel_inv = (n + 3) * EPS32 * (1.0 + big**2 / float(var.min() + epsilon))
    y_bound = float(np.abs(scale).max(initial=1.0)) * float(inv.max()) * (
        atol_mean + float(np.abs(d).max()) * rel_inv)
    return ((rtol, max(atol, y_bound)), (rtol, max(atol, atol_mean)),
            (max(rtol, rel_inv), atol))


@st.composite
def layer_norm_case(draw):
    rank = draw(st.integers(1, 4))
    shape = tuple(_dim(draw, 13) for _ in range(rank))
    if draw(st.integers(0, 4)) == 0:
        shape, rank = (1, draw(st.sampled_from([257, 1031]))), 2
    axis = draw(st.integers(-rank, rank - 1))
    norm_shape = shape[axis % rank:]
    kind = draw(st.sampled_from(["full", "full", "last", "scalar"]))
    if kind == "full":
        scale_shape = norm_shape
    elif kind == "last":
        scale_shape = norm_shape[-1:]
    else:
        scale_shape = (1,)
    dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16]))
    seed = draw(st.integers(0, 2**32 - 1))
    arrays = [array_for(seed, shape, dtype), array_for(seed + 1, scale_shape, dtype)]
    if draw(st.booleans()):
        arrays.append(array_for(seed + 2, scale_shape, dtype))
    attrs = {"axis": axis, "epsilon": draw(st.sampled_from([1e-5, 1e-2])),
             "stats": int(draw(st.booleans()))}
    return arrays, attrs


def test_layer_norm_kernel_matches_reference(opencl_target):
    @given(case=layer_norm_case())
    def check(case):
        arrays, attrs = case
        x = arrays[0]
        rows = math.prod(x.shape[: attrs["axis"] % x.ndim])
        tolerances = norm_tolerance(x, rows, arrays[1], attrs["epsilon"])
        opdef = OPS["LayerNormalization"]
        expected = opdef.evaluate(arrays, opdef.make_attrs(attrs))
        actual, _ = run_op("LayerNormalization", arrays, attrs, target=opencl_target)
        assert len(actual) == len(expected) == (3 if attrs["stats"] else 1)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"LayerNormalization output {i}", tolerances[i])

    check()


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5, 7), (1, 2, 1031), (3, 5), (2, 1, 3, 2, 2)])
@pytest.mark.parametrize("dtype", [DType.FLOAT32, DType.FLOAT16])
def test_instance_norm(shape, dtype, opencl_target):
    x = array_for(7, shape, dtype)
    scale = array_for(8, (shape[1],), dtype)
    bias = array_for(9, (shape[1],), dtype)
    rows = shape[0] * shape[1]
    tolerance = norm_tolerance(x, rows, scale, 1e-5)[0]
    check_op("InstanceNormalization", [x, scale, bias], {"epsilon": 1e-5},
             target=opencl_target, tolerance=tolerance)


@st.composite
def lrn_case(draw):
    rank = draw(st.integers(2, 4))
    shape = tuple(_dim(draw, 13) for _ in range(rank))
    dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16]))
    x = array_for(draw(st.integers(0, 2**32 - 1)), shape, dtype)
    attrs = {"size": draw(st.integers(1, 7)),
             "alpha": draw(st.sampled_from([1e-4, 0.5])),
             "beta": draw(st.sampled_from([0.75, 1.0])),
             "bias": draw(st.sampled_from([1.0, 2.0]))}
    return x, attrs


def test_lrn_kernel_matches_reference(opencl_target):
    @given(case=lrn_case())
    def check(case):
        x, attrs = case
        check_op("LRN", [x], attrs, target=opencl_target)

    check()


# -- ONNX converters against onnxruntime ------------------------------------------------------
def _model(node: onnx.NodeProto, inputs: dict[str, tuple[int, ...]],
           outputs: list[str], opset: int, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "nn",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.INT64 if n == "i" else TensorProto.FLOAT,
                                       [None] * 4) for n in outputs],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _against_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray], target: str,
                         tolerance: tuple[float, float] | None = None) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(None, feeds)))
    actual = ember.compile(model, target=target)(**feeds)
    for name in names:
        assert_close(actual[name], expected[name], name, tolerance)


X = array_for(11, (2, 3, 9, 8), DType.FLOAT32)
ONNX_CASES = {
    "maxpool_same_upper_indices": (
        helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[3, 2], strides=[2, 2],
                         auto_pad="SAME_UPPER"), ["y", "i"], 13),
    "maxpool_ceil_dilated_colmajor": (
        helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 3], strides=[2, 1],
                         dilations=[2, 1], pads=[1, 0, 1, 1], ceil_mode=1, storage_order=1),
        ["y", "i"], 13),
    "averagepool_same_lower": (
        helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                         auto_pad="SAME_LOWER"), ["y"], 13),
    "averagepool_ceil_include_pad": (
        helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 3],
                         pads=[1, 1, 2, 1], ceil_mode=1, count_include_pad=1), ["y"], 19),
    "averagepool_valid": (
        helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 5], auto_pad="VALID"),
        ["y"], 13),
    "globalaveragepool": (helper.make_node("GlobalAveragePool", ["x"], ["y"]), ["y"], 13),
    "globalmaxpool": (helper.make_node("GlobalMaxPool", ["x"], ["y"]), ["y"], 13),
    "softmax_axis1": (helper.make_node("Softmax", ["x"], ["y"], axis=1), ["y"], 13),
    "logsoftmax_default": (helper.make_node("LogSoftmax", ["x"], ["y"]), ["y"], 13),
    "softmax_legacy_flatten": (helper.make_node("Softmax", ["x"], ["y"], axis=2), ["y"], 11),
    "lrn": (helper.make_node("LRN", ["x"], ["y"], size=3, alpha=0.01, beta=0.5, bias=2.0),
            ["y"], 13),
}


@pytest.mark.parametrize("case", sorted(ONNX_CASES))
def test_onnx_converter_matches_onnxruntime(case, any_target):
    node, outputs, opset = ONNX_CASES[case]
    model = _model(node, {"x": X.shape}, outputs, opset)
    _against_onnxruntime(model, {"x": X}, any_target, sum_tolerance(DType.FLOAT32, 72, 4.0))


def test_onnx_softmax_before_opset_13_flattens_the_trailing_axes(any_target):
    """load_model converts old models to opset 13; the importer's own legacy rule (the block
    [axis:] normalized as one row) is checked by importing the opset-11 node directly."""
    from ember.frontends.onnx.importer import import_graph

    for op in ("Softmax", "LogSoftmax"):
        model = _model(helper.make_node(op, ["x"], ["y"], axis=1), {"x": X.shape}, ["y"], 11)
        graph = import_graph(model)
        node = next(n for n in graph.nodes() if graph.op(n) == op)
        assert dict(graph.attrs(node)) == {"axis": 1, "flatten": 1}
        y = ember.compile(graph, target=any_target)(x=X)["y"]
        rows = X.reshape(2, -1).astype(np.float64)
        shifted = rows - rows.max(axis=1, keepdims=True)
        log_total = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        want = shifted - log_total if op == "LogSoftmax" else np.exp(shifted - log_total)
        # each row sums 216 terms exp(x - max) <= 1
        assert_close(y, want.reshape(X.shape).astype(np.float32), op,
                     softmax_tolerance(op, X, {"axis": 1, "flatten": 1}))


def test_onnx_layer_and_instance_norm_match_onnxruntime(any_target):
    scale = helper.make_tensor("s", TensorProto.FLOAT, [8], array_for(1, (8,), DType.FLOAT32))
    bias = helper.make_tensor("b", TensorProto.FLOAT, [8], array_for(2, (8,), DType.FLOAT32))
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"],
                            axis=-1, epsilon=1e-3)
    model = _model(node, {"x": X.shape}, ["y", "mean", "inv"], 17, [scale, bias])
    tolerance = norm_tolerance(X, X.size // 8, array_for(1, (8,), DType.FLOAT32), 1e-3)[0]
    _against_onnxruntime(model, {"x": X}, any_target, tolerance)
    scale3 = helper.make_tensor("s", TensorProto.FLOAT, [3], array_for(3, (3,), DType.FLOAT32))
    bias3 = helper.make_tensor("b", TensorProto.FLOAT, [3], array_for(4, (3,), DType.FLOAT32))
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-4)
    model = _model(node, {"x": X.shape}, ["y"], 13, [scale3, bias3])
    tolerance = norm_tolerance(X, 6, array_for(3, (3,), DType.FLOAT32), 1e-4)[0]
    _against_onnxruntime(model, {"x": X}, any_target, tolerance)
