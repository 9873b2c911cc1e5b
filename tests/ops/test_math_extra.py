"""CumProd and the integer ReduceL1 as device kernels, the host ops Det and the window
functions against independent numpy formulas, and the converters of these ops and of those
the frontend builds from other ops (ReduceLogSumExp, Hardmax, LpNormalization,
MeanVarianceNormalization, Upsample, Scatter) against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.errors import DataDependentError, UnsupportedOpError
from ember.frontends.onnx import import_graph, import_onnx
from ember.ir import OPS, DType
from ember.ir.ops.math_extra import window
from tests.harness import assert_close, check_op
from tests.strategies import array_for

pytestmark = pytest.mark.opencl

_N = helper.make_node


def _model(nodes, feeds: dict[str, np.ndarray], outputs: list[str], opset: int,
           inits: dict[str, np.ndarray] | None = None,
           declared: dict[str, tuple[int, list]] | None = None) -> onnx.ModelProto:
    """A model of `nodes`; the outputs' types as onnx infers them, or as `declared`."""
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                            a.shape) for n, a in feeds.items()]
    graph = helper.make_graph(nodes, "math", inputs, [],
                              [numpy_helper.from_array(a, n) for n, a in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    types = {info.name: info for info in inferred}
    types.update({n: helper.make_tensor_value_info(n, t, shape)
                  for n, (t, shape) in (declared or {}).items()})
    model.graph.output.extend(types[n] for n in outputs)
    return model


def _compare_with_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                              target: str, strict: bool = True) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    expected = dict(zip(names, session.run(names, feeds)))
    got = ember.compile(model, target=target, strict=strict and target != "cpu")(**feeds)
    for name in names:
        assert_close(got[name], expected[name], name)


# -- device kernels ---------------------------------------------------------------------------
@settings(max_examples=6)
@given(shape=st.sampled_from([(7,), (3, 5), (2, 9, 8), (4, 1, 3)]), data=st.data(),
       dtype=st.sampled_from([DType.FLOAT32, DType.FLOAT16, DType.INT32, DType.INT64,
                              DType.UINT8]),
       exclusive=st.sampled_from([0, 1]), reverse=st.sampled_from([0, 1]),
       seed=st.integers(0, 2**31))
def test_cumprod_kernel_matches_reference(opencl_target, shape, data, dtype, exclusive,
                                          reverse, seed):
    """Products in axis order, as the reference: floats to TOLERANCE, ints exactly (they
    wrap, as numpy's cumprod in the type)."""
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    low, high = (0.5, 1.5) if dtype.is_float else (-4.0, 4.0)
    x = array_for(seed, shape, dtype, low=low, high=high)
    check_op("CumProd", [x], {"axis": axis, "exclusive": exclusive, "reverse": reverse},
             target=opencl_target)


def test_integer_l1_wraps_like_numpy(opencl_target):
    """abs of the type's minimum is itself in numpy; the kernel's sum has the same bits."""
    x = np.array([[np.iinfo(np.int32).min, -3, 4], [-1, -2, -3]], np.int32)
    check_op("ReduceL1", [x], {"axes": (1,), "keepdims": 0}, target=opencl_target)
    x8 = array_for(3, (5, 40), DType.INT8)
    check_op("ReduceL1", [x8], {"axes": (0,), "keepdims": 1}, target=opencl_target)


# -- host ops -------------------------------------------------------------------------------
def test_det_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    (got,) = OPS["Det"].evaluate([x], OPS["Det"].make_attrs({}))
    assert got.shape == (2, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.linalg.det(x.astype(np.float64)), rtol=1e-5)


@pytest.mark.parametrize("name, symmetric", [("HannWindow", np.hanning),
                                             ("BlackmanWindow", np.blackman)])
def test_windows_are_numpy_windows(name, symmetric):
    """Symmetric: numpy's window of that length; periodic: the symmetric one of length + 1
    without its last point."""
    np.testing.assert_allclose(window(name, 9, 0, DType.FLOAT64), symmetric(9), atol=1e-12)
    np.testing.assert_allclose(window(name, 9, 1, DType.FLOAT64), symmetric(10)[:-1],
                               atol=1e-12)


def test_hamming_window_uses_onnx_coefficients():
    n = np.arange(6)
    expected = 25 / 46 - 21 / 46 * np.cos(2 * np.pi * n / 6)
    np.testing.assert_allclose(window("HammingWindow", 6, 1, DType.FLOAT64), expected)


def test_window_of_a_graph_input_is_data_dependent():
    model = _model([_N("HannWindow", ["n"], ["w"])], {"n": np.array(4, np.int64)}, ["w"], 17,
                   declared={"w": (TensorProto.FLOAT, ["length"])})
    with pytest.raises(DataDependentError):
        import_onnx(model)


# -- converters vs onnxruntime --------------------------------------------------------------
def test_converters_match_onnxruntime(any_target):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    lse = np.array([[1000.0, 1000.0, 999.0], [-50.0, 3.0, 1e-3], [1.0, 2.0, 3.0]], np.float32)
    ties = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [-1.0, 5.0, 4.0, 5.0]],
                    np.float32)
    rows = np.array([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    nodes = [
        _N("ReduceLogSumExp", ["lse", "axis1"], ["lse_rows"], keepdims=0),
        _N("ReduceLogSumExp", ["x", "axes02"], ["lse_x"], keepdims=1),
        _N("ReduceL1", ["x", "axes02"], ["l1"], keepdims=0),
        _N("ReduceLogSum", ["x_pos", "axis1"], ["logsum"]),
        _N("Hardmax", ["ties"], ["hardmax_last"]),
        _N("Hardmax", ["x"], ["hardmax_0"], axis=0),
        _N("LpNormalization", ["rows"], ["l2"], axis=-1, p=2),
        _N("LpNormalization", ["rows"], ["l1_0"], axis=0, p=1),
        _N("MeanVarianceNormalization", ["x"], ["mvn"]),
        _N("MeanVarianceNormalization", ["x"], ["mvn_3"], axes=[3]),
        _N("BlackmanWindow", ["seven"], ["blackman"], periodic=0),
        _N("HammingWindow", ["seven"], ["hamming"]),
        _N("HannWindow", ["seven"], ["hann"], output_datatype=TensorProto.DOUBLE),
        _N("Celu", ["x"], ["celu"], alpha=2.0),
        _N("Shrink", ["x"], ["shrink"], bias=0.5, lambd=0.2),
        _N("Softsign", ["x"], ["softsign"]),
        _N("ThresholdedRelu", ["x"], ["trelu"], alpha=0.3),
        _N("Mod", ["x", "x_pos"], ["mod"], fmod=1),
        _N("Atanh", ["x_unit"], ["atanh"]),
    ]
    feeds = {"x": x, "lse": lse, "ties": ties, "rows": rows,
             "x_pos": np.abs(x) + 0.5, "x_unit": np.tanh(x)}
    inits = {"axis1": np.array([1], np.int64), "axes02": np.array([0, 2], np.int64),
             "seven": np.array(7, np.int64)}
    declared = {name: (TensorProto.FLOAT, list(x.shape)) for name in ("mvn", "mvn_3")}
    model = _model(nodes, feeds, [n.output[0] for n in nodes], 18, inits, declared)
    _compare_with_onnxruntime(model, feeds, any_target)


def test_det_matches_onnxruntime(any_target):
    square = np.random.default_rng(4).normal(size=(2, 3, 3)).astype(np.float32)
    model = _model([_N("Det", ["square"], ["det"])], {"square": square}, ["det"], 18)
    _compare_with_onnxruntime(model, {"square": square}, any_target, strict=False)  # host op


def test_log_sum_exp_of_infinities():
    """All -inf gives -inf and a +inf gives +inf (not the NaN of inf - inf)."""
    x = np.array([[-np.inf, -np.inf], [np.inf, 1.0], [-np.inf, 0.0]], np.float32)
    model = _model([_N("ReduceLogSumExp", ["x", "axis"], ["y"], keepdims=0)], {"x": x}, ["y"],
                   18, {"axis": np.array([1], np.int64)})
    got = ember.compile(model, target="cpu")(x=x)["y"]
    np.testing.assert_array_equal(got, [-np.inf, np.inf, 0.0])


def test_newer_opset_ops_match_onnxruntime(any_target):
    """CumProd (opset 26) and BitShift of signed types (opset 28)."""
    x = np.arange(1, 13, dtype=np.int32).reshape(3, 4) - 6
    shifts = np.array([[0, 1, 31, 32], [-1, 2, 3, 40], [5, 6, 7, 8]], np.int32)
    nodes = [_N("CumProd", ["x", "axis"], ["prod"], exclusive=1, reverse=1),
             _N("BitShift", ["x", "shifts"], ["right"], direction="RIGHT"),
             _N("BitShift", ["x", "shifts"], ["left"], direction="LEFT")]
    feeds = {"x": x, "shifts": shifts}
    model = _model(nodes, feeds, ["prod", "right", "left"], 28,
                   {"axis": np.array(1, np.int64)})
    _compare_with_onnxruntime(model, feeds, any_target)


def test_deprecated_upsample_and_scatter_match_onnxruntime(any_target):
    """Through the loader (whose lift to opset 13 renames them) and through the converters
    themselves (a graph imported without that lift)."""
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    upsample = _model([_N("Upsample", ["x", "scales"], ["y"], mode="nearest")], {"x": x}, ["y"],
                      9, {"scales": np.array([1, 1, 2, 3], np.float32)})
    _compare_with_onnxruntime(upsample, {"x": x}, any_target)
    direct = ember.compile(import_graph(upsample), target=any_target)(x=x)["y"]
    np.testing.assert_array_equal(direct, np.repeat(np.repeat(x, 2, axis=2), 3, axis=3))
    data = np.zeros((3, 3), np.float32)
    feeds = {"data": data}
    scatter = _model([_N("Scatter", ["data", "idx", "upd"], ["y"], axis=1)], feeds, ["y"], 10,
                     {"idx": np.array([[1, 0], [2, 1]], np.int64),
                      "upd": np.array([[1.5, 2.5], [3.5, 4.5]], np.float32)})
    _compare_with_onnxruntime(scatter, feeds, any_target, strict=False)  # a host scatter
    direct = ember.compile(import_graph(scatter), target=any_target)(data=data)["y"]
    np.testing.assert_array_equal(direct, [[2.5, 1.5, 0.0], [0.0, 4.5, 3.5], [0.0, 0.0, 0.0]])


def test_lp_normalization_refuses_other_p():
    model = _model([_N("LpNormalization", ["x"], ["y"], p=3)],
                   {"x": np.ones((2, 2), np.float32)}, ["y"], 13)
    with pytest.raises(UnsupportedOpError, match="p=3"):
        import_onnx(model)
