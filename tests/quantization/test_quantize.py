"""ember.quantize on small models: every scheme writes a model that onnx's checker accepts
and onnxruntime runs, close to the float model; the QDQ structure is the standard one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

import ember
from ember.quantization.calibration import calibrate
from ember.quantization.debug import compare_tensors
from ember.quantization.plan import QuantPlan
from tests.harness import relative_l2
from tests.quantization import models

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the reference runtime here")

MODELS = {"mlp": models.mlp, "cnn": models.cnn, "attention": models.attention}

# Relative L2 error of the model output against float32, per scheme, and why:
# - int8 static: each quantized tensor carries 8-bit noise (uint8 over its calibrated range,
#   SQNR ~40 dB for these activations, ~50 dB for per-channel weights); the models chain up
#   to ~10 quantized tensors whose noise adds in power: ~-30 dB, a relative error ~0.03.
# - int8 dynamic: the activation ranges are the exact ones of each batch and the outputs
#   stay float, fewer and smaller noise sources: ~0.02.
# - int4 (blocks of 32, symmetric): 15 levels over max|w| of a block (~2.2 sigma of
#   Gaussian weights) is a step of ~0.3 sigma, noise ~0.09 of each layer's output, three to
#   four layers in power: ~0.15-0.18.
# - fp16: one half-precision rounding (2^-11 relative) per op, a few dozen ops: < 2e-3.
BOUNDS = {"int8": 0.05, "int8-dynamic": 0.03, "int4": 0.2, "fp16": 2e-3}


def run_ort(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    found = [i for i in model.graph.initializer if i.name == name]
    assert found, f"no initializer {name}"
    return numpy_helper.to_array(found[0])


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if tensor in n.output)


@pytest.mark.parametrize("scheme", sorted(BOUNDS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_scheme_runs_in_onnxruntime_close_to_float(name, scheme):
    model = MODELS[name]()
    calibration = models.batches(model, 6)
    held_out = models.batches(model, 1, seed=7)[0]
    q = ember.quantize(model, calibration, scheme, block_size=32)
    onnx.checker.check_model(q.model, full_check=True)
    expected = run_ort(model, held_out)
    actual = run_ort(q.model, held_out)
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    error = relative_l2(actual, expected)
    assert error < BOUNDS[scheme], f"{name} {scheme}: relative L2 error {error:.4f}"
    assert error > 0  # the model really changed
    assert len(q.plan) == sum(n.op_type in ("MatMul", "Gemm", "Conv") for n in model.graph.node)


def test_int8_weights_per_channel_and_bias_int32():
    model = models.cnn()
    q = ember.quantize(model, models.batches(model, 4), "int8")
    w = initializer(model, "c1w")
    codes = initializer(q.model, "c1w_quantized")
    scale = initializer(q.model, "c1w_scale")
    assert codes.dtype == np.int8 and scale.shape == (8,)
    np.testing.assert_allclose(scale, np.abs(w).reshape(8, -1).max(axis=1) / 127, rtol=1e-6)
    weight_dq = producer(q.model, node(q.model, "conv1").input[1])
    assert weight_dq.op_type == "DequantizeLinear" and weight_dq.attribute[0].i == 0  # axis
    # bias: int32, scale = x_scale * w_scale per channel, zero 0; within half a step of float
    bias_dq = producer(q.model, node(q.model, "conv1").input[2])
    bias_codes, bias_scale = (initializer(q.model, n) for n in bias_dq.input[:2])
    x_scale = initializer(q.model, producer(q.model, "x_dequantized").input[1])
    assert bias_codes.dtype == np.int32
    np.testing.assert_array_equal(bias_scale, (x_scale * scale).astype(np.float32))
    assert np.all(np.abs(bias_codes * bias_scale - initializer(model, "c1b"))
                  <= bias_scale / 2 * (1 + 1e-6))


def test_int8_gemm_weight_axis_follows_trans_b():
    model = models.mlp()
    q = ember.quantize(model, models.batches(model, 2), "int8")
    assert initializer(q.model, "w1_scale").shape == (128,)  # w1 (K, N): axis 1
    assert initializer(q.model, "w3_scale").shape == (10,)  # w3 (N, K) with transB: axis 0
    axes = {n.input[0]: n.attribute[0].i for n in q.model.graph.node
            if n.op_type == "DequantizeLinear" and n.attribute}
    assert axes["w1_quantized"] == 1 and axes["w3_quantized"] == 0


def test_int8_chain_is_quantized_and_moves_share_their_scale():
    """Relu, MaxPool and the residual Add after a quantized Conv are quantized too; MaxPool
    keeps its input's scale and zero point (exact on integers); Softmax computes in float
    and its result is quantized for the MatMul that reads it."""
    model = models.cnn()
    q = ember.quantize(model, models.batches(model, 4), "int8")
    for tensor in ("r1", "p1", "s", "g", "f"):
        assert producer(q.model, tensor).op_type == "DequantizeLinear", tensor
    for pooled, relu in zip(producer(q.model, "p1").input[1:], producer(q.model, "r1").input[1:]):
        np.testing.assert_array_equal(initializer(q.model, pooled), initializer(q.model, relu))
    assert initializer(q.model, producer(q.model, "r1").input[2]).dtype == np.uint8
    attention = models.attention()
    qa = ember.quantize(attention, models.batches(attention, 2), "int8")
    softmax_out = node(qa.model, "softmax").output[0]  # float, quantized for the next MatMul
    assert [n.op_type for n in qa.model.graph.node if softmax_out in n.input] == ["QuantizeLinear"]


def test_symmetric_activations_are_int8_with_zero_point_zero():
    model = models.mlp()
    q = ember.quantize(model, models.batches(model, 2), "int8", symmetric_activations=True)
    zero = initializer(q.model, producer(q.model, "h1").input[2])
    assert zero.dtype == np.int8 and zero == 0


def test_dynamic_uses_dynamic_quantize_linear_and_float_bias():
    model = models.mlp()
    q = ember.quantize(model, None, "int8-dynamic")
    ops = [n.op_type for n in q.model.graph.node]
    assert ops.count("DynamicQuantizeLinear") == 3 and "QuantizeLinear" not in ops
    assert node(q.model, "fc1").input[2] == "b1"


def test_int4_is_blocked_int4_at_opset_21():
    model = models.mlp()
    q = ember.quantize(model, None, "int4", block_size=32)
    assert q.model.opset_import[0].version >= 21
    dq = producer(q.model, node(q.model, "fc2").input[1])
    attrs = {a.name: a.i for a in dq.attribute}
    assert attrs == {"axis": 0, "block_size": 32}  # w2 (K, N): blocks along K
    codes = next(i for i in q.model.graph.initializer if i.name == dq.input[0])
    assert codes.data_type == TensorProto.INT4
    assert initializer(q.model, dq.input[1]).shape == (128 // 32, 64)
    assert q.plan["fc2"].weight_bytes_after == 128 * 64 // 2 + 4 * 64 * 4
    asym = ember.quantize(model, None, "int4", block_size=32, int4_symmetric=False)
    dq = producer(asym.model, node(asym.model, "fc2").input[1])
    assert len(dq.input) == 3
    assert next(i for i in asym.model.graph.initializer
                if i.name == dq.input[2]).data_type == TensorProto.UINT4


def correlated_batches(model: onnx.ModelProto, count: int, seed: int) -> list[dict]:
    """Inputs with correlated features (a fixed mixing of few sources), as real data has:
    the input's Hessian is far from diagonal, which is where GPTQ can help."""
    mixing = np.random.default_rng(100).standard_normal((16, 64))
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((32, 16)) @ mixing
                   + 0.1 * rng.standard_normal((32, 64))).astype(np.float32)}
            for _ in range(count)]


def test_gptq_lowers_the_output_error_of_rtn():
    """Measured on held-out data: GPTQ (kept per layer only where it lowers the calibration
    output error) against round-to-nearest, same blocks."""
    model = models.mlp()
    calibration = correlated_batches(model, 8, seed=1)
    held_out = correlated_batches(model, 4, seed=2)
    expected = np.concatenate([run_ort(model, f) for f in held_out])
    errors = {}
    for method in ("rtn", "gptq"):
        q = ember.quantize(model, calibration, "int4", block_size=32, int4_method=method)
        actual = np.concatenate([run_ort(q.model, f) for f in held_out])
        errors[method] = relative_l2(actual, expected)
    print(f"int4 output error, relative L2: rtn {errors['rtn']:.4f}, gptq {errors['gptq']:.4f}")
    assert errors["gptq"] < 0.8 * errors["rtn"], errors
    assert "gptq" in q.plan["fc2"].note


def test_fp16_keeps_softmax_and_layernorm_in_float32():
    model = models.attention()
    q = ember.quantize(model, None, "fp16", keep_fp32=("o_proj",))
    types = {i.name: i.data_type for i in q.model.graph.initializer}
    assert types["wq"] == TensorProto.FLOAT16 and types["wo"] == TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(q.model).graph
    elem = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *inferred.output)}
    for kept in ("softmax", "norm"):
        n = node(q.model, kept)
        assert elem[n.input[0]] == TensorProto.FLOAT and elem[n.output[0]] == TensorProto.FLOAT
    assert elem[node(q.model, "qk").output[0]] == TensorProto.FLOAT16
    assert elem["y"] == TensorProto.FLOAT


def test_plan_round_trips_and_drives_the_precisions():
    model = models.mlp()
    calibration = models.batches(model, 2)
    q = ember.quantize(model, calibration, "int8")
    text = q.plan.to_json()
    plan = QuantPlan.from_json(text)
    assert plan.to_json() == text and plan.precisions() == {"fc1": "int8", "fc2": "int8",
                                                            "fc3": "int8"}
    assert "fc2" in str(plan) and all(r.sqnr_db is not None and r.sqnr_db > 20 for r in plan)
    plan["fc2"].precision = "fp32"
    plan["fc3"].precision = "int4"
    mixed = ember.quantize(model, calibration, plan=plan.to_json(), block_size=32)
    assert node(mixed.model, "fc2").input[1] == "w2"
    assert mixed.plan.precisions() == {"fc1": "int8", "fc2": "fp32", "fc3": "int4"}
    assert relative_l2(run_ort(mixed.model, calibration[0]), run_ort(model, calibration[0])) \
        < BOUNDS["int4"]


def test_calibration_ranges_are_those_of_the_float_model():
    """min/max through ember (numpy target) equals min/max of onnxruntime's tensors."""
    model = models.cnn()
    calibration = models.batches(model, 3)
    seen = []
    stats = calibrate(model, calibration, ["c1", "p1", "y"],
                      progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    for name in ("c1", "p1"):
        extended.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    session = ort.InferenceSession(extended.SerializeToString())
    values = [dict(zip(["y", "c1", "p1"], session.run(None, f))) for f in calibration]
    for name in ("c1", "p1", "y"):
        lo = min(float(v[name].min()) for v in values)
        hi = max(float(v[name].max()) for v in values)
        np.testing.assert_allclose(stats.ranges[name], (lo, hi), rtol=1e-5, atol=1e-5)


def test_debug_finds_the_layer_that_hurts():
    """Only fc2 in int4: the tensors before it are exact, its output is the worst."""
    model = models.mlp()
    feed = models.batches(model, 1)[0]
    plan = {"layers": [{"name": "fc2", "op": "MatMul", "precision": "int4"}], "version": 1}
    q = ember.quantize(model, None, plan=QuantPlan.from_json(plan), block_size=32)
    errors = compare_tensors(model, q.model, feed)
    by_name = {e.name: e.sqnr_db for e in errors}
    assert by_name["h1"] == by_name["r1"] == np.inf
    assert errors[0].name in ("h2", "a2", "r2", "y") and np.isfinite(errors[0].sqnr_db)
    assert [e.sqnr_db for e in errors] == sorted(e.sqnr_db for e in errors)


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_observer_methods_give_the_int8_bound(method):
    """Entropy is left out: on a few thousand values per tensor, its 2048-bin KL search
    clips ReLU outputs hard (relative error 0.07-0.24 on these models, measured); it is
    meant for large calibration sets."""
    model = models.cnn()
    q = ember.quantize(model, models.batches(model, 6), "int8", method=method)
    feed = models.batches(model, 1, seed=7)[0]
    assert relative_l2(run_ort(q.model, feed), run_ort(model, feed)) < BOUNDS["int8"]
    assert q.stats.method == method


def test_progress_bar_counts_batches(capsys):
    from ember.quantization.calibration import progress_bar

    model = models.mlp()
    ember.quantize(model, models.batches(model, 3), "int8", progress=progress_bar())
    assert "3/3" in capsys.readouterr().err
