"""Signal ops: DFT (forward, inverse, one-sided, padded or cut lengths, any axis), STFT
(with and without a window) and MelWeightMatrix against ONNX's reference implementation,
and the DFT converter of opset 17 (axis attribute) and 20 (axis input) end to end."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.ir import OPS, DType, TensorType
from tests.harness import TOLERANCE, assert_close

SEEDS = st.integers(0, 2**32 - 1)
F32_TOL = TOLERANCE[DType.FLOAT32]


def onnx_reference(op_type: str, inputs: list, opset: int, **attrs) -> np.ndarray:
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    node = helper.make_node(op_type, names, ["out"], **attrs)
    model = helper.make_model(
        helper.make_graph([node], "g", [], [helper.make_tensor_value_info(
            "out", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", opset)])
    feeds = {n: a for n, a in zip(names, inputs) if n}
    return ReferenceEvaluator(model).run(None, feeds)[0]


def evaluate(op: str, inputs: list[np.ndarray], **attrs) -> np.ndarray:
    opdef = OPS[op]
    made = opdef.make_attrs(attrs)
    (out,) = opdef.infer_types([TensorType(a.shape, DType.from_numpy(a.dtype))
                                for a in inputs], made)
    result = opdef.evaluate(inputs, made)[0]
    assert result.shape == out.shape and result.dtype == out.dtype.np_dtype
    return result


@given(SEEDS, st.integers(1, 2), st.booleans(), st.booleans(), st.integers(-2, 3))
def test_dft_matches_onnx_reference(seed, parts, inverse, onesided, length_change):
    rng = np.random.default_rng(seed)
    onesided = onesided and (parts == 1 or inverse)
    x = rng.uniform(-2, 2, (2, 6, 5, parts)).astype(np.float32)
    axis = int(rng.choice([-4, -3, -2, 0, 1, 2]))  # never the (real, imaginary) axis
    n = x.shape[axis % 4]
    length = max(n + length_change, 2) if length_change else 0
    if inverse and onesided and not length:
        length = 2 * (n - 1)
    attrs = {"inverse": int(inverse), "onesided": int(onesided)}
    got = evaluate("DFT", [x], axis=axis, dft_length=length, **attrs)
    extra = [np.array(length, np.int64) if length else None, np.array(axis, np.int64)]
    expected = onnx_reference("DFT", [x] + extra, 20, **attrs)
    assert_close(got, expected, tolerance=(1e-4, 1e-5))


@given(SEEDS, st.integers(1, 4), st.booleans(), st.booleans())
def test_stft_matches_onnx_reference(seed, step, windowed, onesided):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (2, 20, 1)).astype(np.float32)
    frame = int(rng.integers(2, 9))
    window = np.hanning(frame).astype(np.float32) if windowed else None
    got = evaluate("STFT", [x] + ([window] if windowed else []), frame_step=step,
                   frame_length=frame, onesided=int(onesided))
    expected = onnx_reference("STFT", [x, np.array(step, np.int64), window,
                                       np.array(frame, np.int64)], 17, onesided=int(onesided))
    assert_close(got, expected, tolerance=(1e-4, 1e-5))


def test_mel_weight_matrix_matches_onnx_reference():
    for bins, length, rate, low, high in ((8, 16, 8192, 0.0, 4096.0),
                                          (5, 64, 16000, 100.0, 7000.0)):
        got = evaluate("MelWeightMatrix", [], num_mel_bins=bins, dft_length=length,
                       sample_rate=rate, lower_edge_hertz=low, upper_edge_hertz=high)
        expected = onnx_reference("MelWeightMatrix", [
            np.array(bins, np.int64), np.array(length, np.int64), np.array(rate, np.int64),
            np.array(low, np.float32), np.array(high, np.float32)], 17)
        assert_close(got, expected)


def test_dft_converter_reads_axis_by_opset():
    x = np.random.default_rng(0).uniform(-1, 1, (1, 4, 6, 1)).astype(np.float32)
    for opset in (17, 20):
        if opset == 17:
            node = helper.make_node("DFT", ["x"], ["y"], axis=2, onesided=1)
            initializers = []
        else:
            node = helper.make_node("DFT", ["x", "", "axis"], ["y"], onesided=1)
            initializers = [numpy_helper.from_array(np.array(2, np.int64), "axis")]
        graph = helper.make_graph(
            [node], "dft", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)], initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        got = ember.compile(model, target="cpu")(x=x)["y"]
        expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
        assert got.shape == (1, 4, 4, 2), opset
        assert_close(got, expected, tolerance=F32_TOL)
