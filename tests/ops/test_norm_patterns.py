"""The ops the pattern passes produce that had no kernel before: RMSNormalization (a row
kernel, the norm template without centering) and Swish (x * sigmoid(alpha * x)), against
their numpy references on the OpenCL device, and their ONNX converters (opset 23 / 24)
against onnxruntime.

RMSNormalization sums n squares per row, and kernel and reference add in different orders:
its bound is the one in TOLERANCE widened to atol = (n + 4) * eps32 * max|y| (the sum of n
positive terms is off by at most n * eps32 relative, the square root halves that, and the
division, the scale product and the store add a rounding each).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, strategies as st
from onnx import TensorProto, helper

import ember
from ember.codegen.types import NodeSpec
from ember.codegen.kernels.norm import build_norm
from ember.codegen.kernels.rows import RowParams
from ember.errors import ShapeError
from ember.ir import OPS, DType, TensorType
from ember.runtime.device import resolve_target
from tests.harness import TOLERANCE, assert_close, check_op, run_op
from tests.ops.test_nn import run_lowered
from tests.strategies import DIMS, array_for

pytestmark = pytest.mark.opencl

EPS32 = float(np.finfo(np.float32).eps)


def rms_tolerance(x: np.ndarray, axis: int, expected: np.ndarray) -> tuple[float, float]:
    """TOLERANCE of Y's dtype widened to atol = (n + 4) * eps32 * max|y| (n: row length)."""
    rtol, atol = TOLERANCE[DType.from_numpy(expected.dtype)]
    n = math.prod(x.shape[axis % x.ndim:]) if x.ndim else 1
    finite = np.abs(expected[np.isfinite(expected)].astype(np.float64))
    return rtol, max(atol, (n + 4) * EPS32 * float(finite.max(initial=0.0)))


@st.composite
def rms_case(draw):
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.sampled_from([d for d in DIMS if d <= 13])) for _ in range(rank))
    if draw(st.integers(0, 4)) == 0:  # a few long rows: the work-group path
        shape, rank = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([257, 1031]))), 2
    axis = draw(st.integers(-rank, rank - 1))
    a = axis % rank
    kind = draw(st.sampled_from(["row", "row", "last", "one", "all"]))
    scale_shape = {"row": shape[a:], "last": shape[-1:], "one": (1,),
                   "all": shape}[kind]  # "all": ONNX lets scale broadcast over all of X
    dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16]))
    scale_dtype = draw(st.sampled_from([dtype, dtype, DType.FLOAT32]))  # Y has scale's type
    seed = draw(st.integers(0, 2**32 - 1))
    arrays = [array_for(seed, shape, dtype), array_for(seed + 1, scale_shape, scale_dtype)]
    attrs = {"axis": axis, "epsilon": draw(st.sampled_from([1e-5, 1e-2]))}
    return arrays, attrs


def test_rms_norm_kernel_matches_reference(opencl_target):
    @given(case=rms_case())
    def check(case):
        arrays, attrs = case
        opdef = OPS["RMSNormalization"]
        (expected,) = opdef.evaluate(arrays, opdef.make_attrs(attrs))
        assert expected.dtype == arrays[1].dtype
        (actual,), _ = run_op("RMSNormalization", arrays, attrs, target=opencl_target)
        assert_close(actual, expected, "RMSNormalization",
                     rms_tolerance(arrays[0], attrs["axis"], expected))

    check()


@pytest.mark.parametrize("local", [4, 64])
def test_rms_norm_every_local_size(local, opencl_target):
    """GPU families pick LOCAL > 1 for rows of 64 and more: the work-group reduction must be
    right on this device too, with rows shorter than LOCAL (idle lanes) and longer ones."""
    target = resolve_target(opencl_target).target
    if local > target.traits.max_work_group_size:
        pytest.skip(f"device max work-group size {target.traits.max_work_group_size}")
    opdef = OPS["RMSNormalization"]
    cases, checks = [], []
    for i, (shape, scale_shape, axis) in enumerate([((3, 7, 70), (7, 70), 1), ((5, 3), (3,), -1),
                                                    ((2, 129), (2, 129), 0)]):
        arrays = [array_for(10 + i, shape, DType.FLOAT32),
                  array_for(20 + i, scale_shape, DType.FLOAT32)]
        attrs = opdef.make_attrs({"axis": axis})
        types = tuple(TensorType(a.shape, DType.FLOAT32) for a in arrays)
        spec = NodeSpec("RMSNormalization", attrs, types, opdef.infer_types(types, attrs))
        lowered = build_norm(spec, target, RowParams(local))
        assert lowered.notes == (f"local={local}",)
        cases.append((lowered, arrays, spec.outputs))
        checks.append((arrays[0], axis, opdef.evaluate(arrays, attrs)[0]))
    for (x, axis, expected), (actual,) in zip(checks, run_lowered(cases, opencl_target)):
        assert_close(actual, expected, f"RMSNormalization local={local}",
                     rms_tolerance(x, axis, expected))


def test_rms_norm_edge_rows(opencl_target):
    """A zero row gives 0 (eps keeps the root positive); a NaN or inf poisons its row only."""
    x = np.array([[0.0, 0.0, 0.0], [1.0, np.nan, 2.0], [np.inf, 1.0, 1.0], [3.0, -4.0, 0.0]],
                 np.float32)
    scale = np.float32([1.0, 2.0, -1.0])
    (y,), _ = run_op("RMSNormalization", [x, scale], {}, target=opencl_target)
    assert (y[0] == 0).all() and np.isnan(y[1]).all() and np.isfinite(y[3]).all()
    check_op("RMSNormalization", [x, scale], {}, target=opencl_target)


def test_rms_norm_rejects_bad_scale_and_axis():
    x = TensorType((2, 3, 4), DType.FLOAT32)
    opdef = OPS["RMSNormalization"]
    with pytest.raises(ShapeError, match="does not broadcast"):
        opdef.infer_types([x, TensorType((3, 5), DType.FLOAT32)], opdef.make_attrs({}))
    with pytest.raises(ShapeError, match="out of range"):
        opdef.infer_types([x, TensorType((4,), DType.FLOAT32)], opdef.make_attrs({"axis": 3}))


@pytest.mark.parametrize("alpha", [1.0, 1.702, -0.5, 0.0])
@pytest.mark.parametrize("dtype", [DType.FLOAT32, DType.FLOAT16])
def test_swish_kernel_matches_reference(alpha, dtype, opencl_target):
    x = array_for(int(alpha * 1000) % 97, (3, 17), dtype, low=-30.0, high=30.0)
    check_op("Swish", [x], {"alpha": alpha}, target=opencl_target)


def test_swish_special_values(opencl_target):
    x = np.float32([0.0, -0.0, np.inf, -np.inf, np.nan, 100.0, -100.0])
    (y,), _ = run_op("Swish", [x], {}, target=opencl_target)
    np.testing.assert_array_equal(y[:3], [0.0, 0.0, np.inf])
    assert np.isnan(y[3:5]).all()  # -inf * sigmoid(-inf) = -inf * 0
    check_op("Swish", [x], {}, target=opencl_target)


# -- ONNX converters against onnxruntime ------------------------------------------------------
def _model(node: onnx.NodeProto, inputs: dict[str, tuple[int, ...]], opset: int,
           initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "patterns",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _against_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray], target: str,
                         tolerance: tuple[float, float] | None = None) -> None:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, feeds)
    actual = ember.compile(model, target=target)(**feeds)["y"]
    assert_close(actual, expected, "y", tolerance)


X = array_for(31, (2, 3, 5, 8), DType.FLOAT32)


@pytest.mark.parametrize("axis", [-1, 1])
def test_onnx_rms_norm_matches_onnxruntime(axis, any_target):
    scale_shape = X.shape[axis % X.ndim:]
    scale = helper.make_tensor("s", TensorProto.FLOAT, scale_shape,
                               array_for(32, scale_shape, DType.FLOAT32))
    node = helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=axis, epsilon=1e-3)
    model = _model(node, {"x": X.shape}, 23, [scale])
    want = OPS["RMSNormalization"].evaluate(
        [X, array_for(32, scale_shape, DType.FLOAT32)],
        OPS["RMSNormalization"].make_attrs({"axis": axis, "epsilon": 1e-3}))[0]
    _against_onnxruntime(model, {"x": X}, any_target, rms_tolerance(X, axis, want))


@pytest.mark.parametrize("alpha", [None, 0.75])
def test_onnx_swish_matches_onnxruntime(alpha, any_target):
    attrs = {} if alpha is None else {"alpha": alpha}
    node = helper.make_node("Swish", ["x"], ["y"], **attrs)
    _against_onnxruntime(_model(node, {"x": X.shape}, 24), {"x": X}, any_target)
