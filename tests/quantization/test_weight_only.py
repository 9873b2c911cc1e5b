"""The weight-only int8 form that quantized exports in pip packages ship (a sentence
embedding model's quantized ONNX, for one): no QuantizeLinear or DequantizeLinear, but each
weight stored as an int8/uint8 initializer and widened in the graph,

    Cast(w_int8, float32) -> Mul(scale) -> MatMul

with one scale per output column or one per tensor (a uint8 weight also subtracts its zero
point), and GatherND picking rows by token id. Built here with onnx.helper, checked against
onnxruntime on the OpenCL device and on the numpy executor. On the device the weights stay
8-bit (BlockQuantMatMul, and the table's rows gathered as int8 and dequantized after).

Both runtimes widen the weights exactly as the graph says (Cast is exact, the Mul rounds
once; the 8-bit kernel computes the same (q - zero) * scale), so the remaining difference is
the summation order of the float32 products: the float32 tolerance of tests/harness.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.ir import DType
from tests.harness import TOLERANCE, assert_close, real_devices

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the reference runtime here")

VOCAB, DIM, HIDDEN, OUT = 96, 64, 128, 48
BATCH, SEQ = 2, 12
TARGETS = [
    pytest.param(None, id="opencl", marks=[pytest.mark.opencl, pytest.mark.skipif(
        not real_devices(), reason="no OpenCL device besides simulators")]),
    pytest.param("cpu", id="cpu"),
]


def _int8_weight(rng: np.random.Generator, rows: int, cols: int, name: str,
                 per_column: bool) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto], str]:
    """A symmetric int8 weight: initializers, the Cast -> Mul nodes, the float name."""
    w = rng.standard_normal((rows, cols)).astype(np.float32) / np.sqrt(rows)
    scale = (np.abs(w).max(axis=0) if per_column else np.abs(w).max()) / 127.0
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    inits = [numpy_helper.from_array(q, f"{name}_quantized"),
             numpy_helper.from_array(np.asarray(scale, np.float32), f"{name}_scale")]
    nodes = [helper.make_node("Cast", [f"{name}_quantized"], [f"{name}_wide"],
                              to=TensorProto.FLOAT, name=f"{name}_cast"),
             helper.make_node("Mul", [f"{name}_wide", f"{name}_scale"], [name],
                              name=f"{name}_scale_mul")]
    return inits, nodes, name


def _uint8_weight(rng: np.random.Generator, rows: int, cols: int, name: str
                  ) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto], str]:
    """An asymmetric uint8 weight, per tensor: Cast -> Sub(zero point) -> Mul(scale)."""
    w = rng.standard_normal((rows, cols)).astype(np.float32) / np.sqrt(rows) + 0.02
    low, high = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    scale = np.float32((high - low) / 255.0)
    zero = np.float32(np.clip(np.rint(-low / scale), 0, 255))
    q = np.clip(np.rint(w / scale) + zero, 0, 255).astype(np.uint8)
    inits = [numpy_helper.from_array(q, f"{name}_quantized"),
             numpy_helper.from_array(np.asarray(scale, np.float32), f"{name}_scale"),
             numpy_helper.from_array(np.asarray(zero, np.float32), f"{name}_zero")]
    nodes = [helper.make_node("Cast", [f"{name}_quantized"], [f"{name}_wide"],
                              to=TensorProto.FLOAT, name=f"{name}_cast"),
             helper.make_node("Sub", [f"{name}_wide", f"{name}_zero"], [f"{name}_centered"],
                              name=f"{name}_zero_sub"),
             helper.make_node("Mul", [f"{name}_centered", f"{name}_scale"], [name],
                              name=f"{name}_scale_mul")]
    return inits, nodes, name


def weight_only_encoder(seed: int = 0) -> onnx.ModelProto:
    """Token ids -> GatherND(int8 embedding table, per-column scales) -> MatMul(int8,
    per-column) + bias -> Relu -> MatMul(uint8, per tensor) -> the state of the
    token at `pick` in each sequence (GatherND with batch_dims=1), and the whole sequence."""
    rng = np.random.default_rng(seed)
    table_inits, table_nodes, table = _int8_weight(rng, VOCAB, DIM, "embedding", True)
    w1_inits, w1_nodes, w1 = _int8_weight(rng, DIM, HIDDEN, "dense1", True)
    w2_inits, w2_nodes, w2 = _uint8_weight(rng, HIDDEN, OUT, "dense2")
    bias = numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32) * 0.1,
                                   "dense1_bias")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "last_axis")
    nodes = [
        *table_nodes, *w1_nodes, *w2_nodes,
        helper.make_node("Unsqueeze", ["input_ids", "last_axis"], ["ids"], name="ids"),
        helper.make_node("GatherND", [table, "ids"], ["embedded"], name="lookup"),
        helper.make_node("MatMul", ["embedded", w1], ["h1"], name="dense1"),
        helper.make_node("Add", ["h1", "dense1_bias"], ["h1b"], name="dense1_bias_add"),
        helper.make_node("Relu", ["h1b"], ["r1"], name="act"),
        helper.make_node("MatMul", ["r1", w2], ["sequence"], name="dense2"),
        helper.make_node("GatherND", ["sequence", "pick"], ["pooled"], name="pool",
                         batch_dims=1),
    ]
    graph = helper.make_graph(
        nodes, "weight_only_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("pick", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("sequence", TensorProto.FLOAT, ["batch", "seq", OUT]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", OUT])],
        [*table_inits, *w1_inits, *w2_inits, bias, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, VOCAB, (BATCH, SEQ), dtype=np.int64),
            # the last token, counted from the back, and a token in the middle
            "pick": np.array([[-1], [SEQ // 2]], np.int64)}


@pytest.mark.parametrize("target", TARGETS)
def test_weight_only_int8_matches_onnxruntime(target: str | None) -> None:
    model = weight_only_encoder()
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    compiled = ember.compile(model, target=target)
    for seed in (0, 1):
        data = feeds(seed)
        expected = dict(zip(["sequence", "pooled"], session.run(["sequence", "pooled"], data)))
        actual = compiled(**data)
        for name, want in expected.items():
            assert_close(actual[name], want, f"{name} on {compiled.target}, feeds {seed}",
                         TOLERANCE[DType.FLOAT32])
    steps = [(s.op, s.placement) for s in compiled.plan.steps]
    if compiled.device is not None:
        # both products read their weights as 8-bit blocks, both lookups are device kernels,
        # and the embedding table is gathered as int8 rows, dequantized after
        assert [op for op, _ in steps if "MatMul" in op] == ["BlockQuantMatMul"] * 2, steps
        assert [op for op, _ in steps if op == "GatherND"] == ["GatherND"] * 2, steps
        assert all(where == "device" for _, where in steps), steps
        assert "Cast" not in dict(steps), steps
    else:  # the numpy executor multiplies float weights, folded as before
        assert [op for op, _ in steps if "MatMul" in op] == ["MatMul"] * 2, steps
        assert "Cast" not in dict(steps), steps


@pytest.mark.opencl
@pytest.mark.skipif(not real_devices(), reason="no OpenCL device besides simulators")
def test_weight_only_int8_weights_stay_8bit_on_the_device() -> None:
    """The device holds the int8 weights, their scales and the float bias: about a quarter
    of what the float weights took (the importer used to fold the Casts into them)."""
    compiled = ember.compile(weight_only_encoder())
    compiled(**feeds(0))
    stats = compiled.stats
    weight_bytes = stats.peak_device_bytes - stats.peak_activation_bytes
    float_bytes = 4 * (VOCAB * DIM + DIM * HIDDEN + HIDDEN * OUT + HIDDEN)
    assert weight_bytes <= 0.3 * float_bytes, (weight_bytes, float_bytes)
