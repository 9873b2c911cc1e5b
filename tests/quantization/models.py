"""Small float models built with onnx.helper for the quantization tests, with random
weights (seeded), and calibration batches for them."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def _weight(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[0]
    scale = 1.0 / np.sqrt(fan_in)
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, name, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def mlp(seed: int = 0, features: int = 64, hidden: int = 128) -> onnx.ModelProto:
    """Gemm -> Relu -> MatMul -> Add(bias) -> Relu -> Gemm(transB): three layers."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "w1", features, hidden),
             numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32) * 0.1, "b1"),
             _weight(rng, "w2", hidden, features),
             numpy_helper.from_array(rng.standard_normal(features).astype(np.float32) * 0.1, "b2"),
             numpy_helper.from_array(
                 (rng.standard_normal((10, features)) / np.sqrt(features)).astype(np.float32),
                 "w3"),
             numpy_helper.from_array(rng.standard_normal(10).astype(np.float32) * 0.1, "b3")]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Add", ["h2", "b2"], ["a2"], name="bias2"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "w3", "b3"], ["y"], name="fc3", transB=1),
    ]
    return _model(nodes, "mlp", [helper.make_tensor_value_info("x", F, ["batch", features])],
                  [helper.make_tensor_value_info("y", F, ["batch", 10])], inits)


def cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Conv -> Relu -> Add(residual) -> GlobalAveragePool ->
    Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "c1w", 8, 3, 3, 3),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "c1b"),
             _weight(rng, "c2w", 8, 8, 3, 3),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "c2b"),
             _weight(rng, "fw", 8, 10),
             numpy_helper.from_array(rng.standard_normal(10).astype(np.float32) * 0.1, "fb")]
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2w", "c2b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["r2", "p1"], ["s"], name="residual"),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc"),
    ]
    return _model(nodes, "cnn", [helper.make_tensor_value_info("x", F, ["batch", 3, 16, 16])],
                  [helper.make_tensor_value_info("y", F, ["batch", 10])], inits)


def attention(seed: int = 0, dim: int = 32) -> onnx.ModelProto:
    """One head of self-attention with a residual and LayerNormalization."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, n, dim, dim) for n in ("wq", "wk", "wv", "wo")]
    inits += [numpy_helper.from_array(np.array(1 / np.sqrt(dim), np.float32), "inv_sqrt_d"),
              numpy_helper.from_array(np.ones(dim, np.float32), "gamma"),
              numpy_helper.from_array(np.zeros(dim, np.float32), "beta")]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Mul", ["scores", "inv_sqrt_d"], ["scaled"], name="scale"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="pv"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="o_proj"),
        helper.make_node("Add", ["o", "x"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["y"], name="norm",
                         axis=-1),
    ]
    return _model(nodes, "attention",
                  [helper.make_tensor_value_info("x", F, ["batch", 8, dim])],
                  [helper.make_tensor_value_info("y", F, ["batch", 8, dim])], inits)


def batches(model: onnx.ModelProto, count: int, batch: int = 4, seed: int = 1) -> list[dict]:
    """`count` feeds of standard normal inputs of the model's input shape."""
    rng = np.random.default_rng(seed)
    info = model.graph.input[0]
    dims = [d.dim_value if d.dim_value else batch for d in info.type.tensor_type.shape.dim]
    return [{info.name: rng.standard_normal(dims).astype(np.float32)} for _ in range(count)]
