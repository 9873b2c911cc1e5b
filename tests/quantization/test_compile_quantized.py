"""ember.compile(q) of quantized models equals onnxruntime: float16 models within one
half-precision rounding, QDQ models (int8, int8 dynamic, int4) within float32 rounding."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import ember
from ember.ir import DType
from tests.harness import TOLERANCE, assert_close, real_devices
from tests.quantization import models

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the reference runtime here")

MODELS = {"mlp": models.mlp, "cnn": models.cnn, "attention": models.attention}
TARGETS = [
    "cpu",
    pytest.param(None, marks=[pytest.mark.opencl, pytest.mark.skipif(
        not real_devices(), reason="no OpenCL device besides simulators")]),
]


def run_ort(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fp16_model_matches_onnxruntime(name, target):
    """Both runtimes store float16 and round each op's result to it; they may differ by one
    half rounding, the float16 tolerance of tests/harness.py."""
    model = MODELS[name]()
    feed = models.batches(model, 1, seed=3)[0]
    q = ember.quantize(model, None, "fp16")
    actual = ember.compile(q, target=target)(**feed)["y"]
    assert_close(actual, run_ort(q.model, feed), f"{name} fp16", TOLERANCE[DType.FLOAT16])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("scheme", ["int8", "int8-dynamic", "int4"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_qdq_model_matches_onnxruntime(name, scheme, target):
    """Against onnxruntime without its graph optimizations, which runs the QDQ definition
    (its fused kernels, MatMulNBits and the QLinear ops, round differently: up to 0.04 on
    the attention model's output, measured). Float accumulation order may move a value
    across a rounding boundary, so 99.9% of the elements are equal within float32 rounding
    and, where the output is quantized, every element is within one step of it."""
    model = MODELS[name]()
    q = ember.quantize(model, models.batches(model, 4), scheme, block_size=32)
    feed = models.batches(model, 1, seed=3)[0]
    actual = ember.compile(q, target=target)(**feed)["y"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(q.model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, feed)[0]
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    rtol, atol = TOLERANCE[DType.FLOAT32]
    difference = np.abs(actual.astype(np.float64) - expected)
    assert np.mean(difference <= atol + rtol * np.abs(expected)) >= 0.999
    out_dq = next(n for n in q.model.graph.node if "y" in n.output)
    if out_dq.op_type == "DequantizeLinear":
        step = float(numpy_helper.to_array(
            next(i for i in q.model.graph.initializer if i.name == out_dq.input[1])))
        assert np.all(difference <= step * (1 + 1e-5))
