"""Real models quantized by onnxruntime's own tool, compiled by ember, against onnxruntime.

The CNNs of tests/models/ go through `quantize_static` (MinMax calibration on a few seeded
random images; per-channel and per-tensor weights, uint8 and int8 activations; QDQ format,
and one case in the operator format: QLinearConv, QGemm, com.microsoft QLinearAdd/Mul),
bert_mini through `quantize_dynamic` (int8 weights, DynamicQuantizeLinear + MatMulInteger),
at test time. Then:

- outputs against onnxruntime without graph optimizations (it runs the ops as defined; its
  fused QLinear kernels requantize in fixed point and may round differently). The CNNs end
  in a DequantizeLinear of the last quantized tensor: >= 99.9% of the elements within one
  step, that DequantizeLinear's scale. BERT's outputs come out of float ops (LayerNorm,
  Tanh) after the integer products: both runtimes compute the same uint8 activations and
  the same exact int32 sums, so what is left is the float32 rounding of the float ops, and
  >= 99.9% of the elements must be within float32's tolerance (tests/harness.py); the rest
  allows for a value that float rounding moves across a DynamicQuantizeLinear rounding
  boundary (one step of that activation, which the float bound does not cover);
- every uint8/int8 tensor the model computes made a graph output, and every step of the
  lowered graph held to its numpy reference on the device's own inputs: integers bit for
  bit (assert_steps_match_references says why step by step);
- the device really runs integer kernels: every Conv/Gemm/MatMul that onnxruntime quantized
  is a ConvInteger/MatMulInteger step placed on the device.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.ir import DEVICE, DType, Graph, Value
from ember.runtime.numpy import evaluate_node
from tests.harness import TOLERANCE, assert_close, real_devices
from tests.test_models import tokens

ort = pytest.importorskip("onnxruntime", reason="onnxruntime quantizes the models here")
quantization = pytest.importorskip("onnxruntime.quantization",
                                   reason="onnxruntime's quantization tool makes the models")

MODELS = Path(__file__).resolve().parents[1] / "models"
IMAGE = (1, 3, 64, 64)  # the CNNs' fixed input shape
SEQ = 32  # bert_mini's sequence length here: small, the tier stays fast
CALIBRATION_BATCHES = 2
SHARE = 0.999  # of the elements within the bound
INTEGER_TYPES = (TensorProto.UINT8, TensorProto.INT8)

NO_DEVICE = "no OpenCL device besides simulators"
TARGETS = [
    pytest.param(None, id="opencl", marks=[pytest.mark.opencl, pytest.mark.skipif(
        not real_devices(), reason=NO_DEVICE)]),
    pytest.param("cpu", id="cpu"),
]


@dataclass(frozen=True)
class Static:
    """One quantize_static configuration of a CNN."""
    model: str
    per_channel: bool
    activations: str  # "uint8" | "int8"
    preprocess: bool = True  # onnxruntime's quant_pre_process (folds BatchNormalization)
    format: str = "QDQ"  # or "QOperator": QLinearConv, QGemm, com.microsoft QLinearAdd, ...

    def __str__(self) -> str:
        return (f"{self.model}-{'per_channel' if self.per_channel else 'per_tensor'}-"
                f"{self.activations}{'' if self.preprocess else '-bn'}"
                f"{'' if self.format == 'QDQ' else '-' + self.format}")


# Both granularities and both activation types on resnet; mobilenet's depthwise
# convolutions with int8 activations in QDQ and uint8 ones in onnxruntime's operator format.
# One case keeps BatchNormalization as a float op between the quantized convolutions (no
# pre-processing).
CNN_CASES = [
    Static("resnet_mini", per_channel=True, activations="uint8"),
    Static("resnet_mini", per_channel=False, activations="int8", preprocess=False),
    Static("mobilenetv2_mini", per_channel=True, activations="int8"),
    Static("mobilenetv2_mini", per_channel=True, activations="uint8", format="QOperator"),
]


def image(seed: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal(IMAGE, dtype=np.float32)}


class _Images(quantization.CalibrationDataReader):
    """Seeded random images: the calibration only has to give every tensor a range."""

    def __init__(self) -> None:
        self._batches = iter([image(100 + i) for i in range(CALIBRATION_BATCHES)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_cnn(case: Static, folder: Path) -> Path:
    source = MODELS / f"{case.model}.onnx"
    if case.preprocess:
        prepared = folder / f"{case}-prepared.onnx"
        quantization.shape_inference.quant_pre_process(str(source), str(prepared),
                                                       skip_symbolic_shape=True)
        source = prepared
    target = folder / f"{case}.onnx"
    activations = {"uint8": quantization.QuantType.QUInt8,
                   "int8": quantization.QuantType.QInt8}[case.activations]
    quantization.quantize_static(
        str(source), str(target), _Images(),
        quant_format=getattr(quantization.QuantFormat, case.format),
        per_channel=case.per_channel, activation_type=activations,
        weight_type=quantization.QuantType.QInt8)
    return target


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict[str, Path]:
    """Every model of this tier, quantized once into a temporary folder."""
    folder = tmp_path_factory.mktemp("ort_quantized")
    paths = {str(case): quantize_cnn(case, folder) for case in CNN_CASES}
    bert = folder / "bert_mini-dynamic.onnx"
    quantization.quantize_dynamic(str(MODELS / "bert_mini.onnx"), str(bert),
                                  weight_type=quantization.QuantType.QInt8)
    paths["bert"] = bert
    return paths


# -- onnxruntime and the bounds ----------------------------------------------------------------
def onnxruntime_outputs(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]
                        ) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def output_step(model: onnx.ModelProto, output: str) -> float:
    """One quantization step of `output`, a DequantizeLinear of the last quantized tensor:
    its scale (in QDQ, that of the QuantizeLinear in front of it)."""
    producers = {name: node for node in model.graph.node for name in node.output}
    dequantize = producers[output]
    assert dequantize.op_type == "DequantizeLinear", f"{output} is made by {dequantize.op_type}"
    scales = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return float(scales[dequantize.input[1]])


def assert_within(actual: np.ndarray, expected: np.ndarray, bound: np.ndarray | float,
                  what: str) -> None:
    """Same shape and dtype, and >= SHARE of the elements within `bound` of onnxruntime."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    share = float(np.mean(difference <= bound))
    assert share >= SHARE, (f"{what}: {share:.4%} of the elements within the bound (max "
                            f"difference {difference.max():.3g})")


def float32_bound(expected: np.ndarray) -> np.ndarray:
    rtol, atol = TOLERANCE[DType.FLOAT32]
    return atol + rtol * np.abs(expected.astype(np.float64))


# -- the integer kernels -----------------------------------------------------------------------
INTEGER_OPS = {"MatMulInteger": "MatMulInteger", "QLinearMatMul": "MatMulInteger",
               "QGemm": "MatMulInteger", "ConvInteger": "ConvInteger",
               "QLinearConv": "ConvInteger"}


def quantized_products(model: onnx.ModelProto) -> Counter:
    """How many integer products onnxruntime's quantizer made: Conv and Gemm/MatMul whose
    inputs are all DequantizeLinear outputs (QDQ), and the integer ops of the operator
    format and of dynamic quantization."""
    producers = {name: node.op_type for node in model.graph.node for name in node.output}
    counts: Counter = Counter()
    for node in model.graph.node:
        if node.op_type in INTEGER_OPS:
            counts[INTEGER_OPS[node.op_type]] += 1
        elif node.op_type in ("Conv", "Gemm", "MatMul") and all(
                producers.get(name) == "DequantizeLinear" for name in node.input[:2]):
            counts["ConvInteger" if node.op_type == "Conv" else "MatMulInteger"] += 1
    return counts


def assert_integer_kernels(compiled: ember.CompiledModel, model: onnx.ModelProto,
                           what: str) -> None:
    """Each quantized product is an integer step on the device; nothing runs on the host."""
    expected = quantized_products(model)
    assert sum(expected.values()) > 0, f"{what}: onnxruntime quantized no product"
    on_device = Counter(s.op for s in compiled.plan.steps
                        if s.placement == DEVICE and s.op in expected)
    assert on_device == expected, (f"{what}: integer steps on the device {dict(on_device)}, "
                                   f"quantized products {dict(expected)}")
    host = [f"{s.op} {s.name!r}" for s in compiled.plan.host_steps]
    assert not host, f"{what}: steps on the host: {', '.join(host[:8])}"


def with_integer_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` whose computed uint8/int8 tensors are graph outputs too."""
    inferred = onnx.shape_inference.infer_shapes(model)
    constants = {i.name for i in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    extra = [v for v in inferred.graph.value_info
             if v.type.tensor_type.elem_type in INTEGER_TYPES
             and v.name not in constants and v.name not in graph_outputs]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(extra)
    return exposed, [v.name for v in extra]


def every_value_an_output(graph: Graph) -> Graph:
    """A copy of a lowered graph in which every value a step computes is a graph output."""
    graph = graph.copy()
    outputs = list(graph.outputs)
    seen = {value for _, value in outputs}
    for node in graph.topological_order():
        if graph.op(node) in ("Input", "Constant"):
            continue
        for port in range(len(graph.output_types(node))):
            if Value(node, port) not in seen:
                outputs.append((f"value{node}_{port}", Value(node, port)))
                seen.add(Value(node, port))
    graph.set_outputs(outputs)
    return graph


def assert_steps_match_references(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                                  what: str) -> None:
    """Compile `model` with its uint8/int8 tensors as outputs, then run its lowered graph
    with every value an output and hold each step to its numpy reference applied to the
    device's own inputs of that step: integer results bit for bit, float ones within
    TOLERANCE. Step by step, because float ops before a quantizer (LayerNormalization,
    GlobalAveragePool, GELU) round differently on the device and in numpy, and a value
    on a rounding boundary of the next QuantizeLinear then lands one step apart: a whole
    graph evaluated in numpy is not a bit-exact reference for the integers downstream."""
    exposed, names = with_integer_outputs(model)
    assert names, f"{what}: the model computes no uint8/int8 tensor"
    lowered = ember.compile(exposed, input_shapes={k: v.shape for k, v in feeds.items()})
    assert lowered.device is not None
    compiled = ember.compile(every_value_an_output(lowered.graph))
    on_device = compiled(**feeds)
    graph = compiled.graph
    name_of: dict[Value, str] = {}
    for name, value in graph.outputs:
        name_of.setdefault(value, name)
    env: dict[Value, np.ndarray] = {}
    checked: set[Value] = set()
    wrong: list[str] = []
    for node in graph.topological_order():
        op = graph.op(node)
        if op == "Input":
            env[Value(node, 0)] = feeds[graph.node_name(node)]
            continue
        if op == "Constant":
            env[Value(node, 0)] = graph.constant_value(Value(node, 0))
            continue
        expected = evaluate_node(graph, node, [env[v] for v in graph.inputs_of(node)])
        for port, want in enumerate(expected):
            got = on_device[name_of[Value(node, port)]]
            env[Value(node, port)] = got
            step = f"{op} {graph.node_name(node)!r} output {port}"
            if DType.from_numpy(want.dtype).is_float:
                try:
                    assert_close(got, want, step)
                except AssertionError as error:
                    wrong.append(str(error).strip().splitlines()[0])
                continue
            checked.add(Value(node, port))
            if got.dtype != want.dtype or not np.array_equal(got, want):
                wrong.append(f"{step} {want.dtype}{list(want.shape)}: "
                             f"{np.count_nonzero(got != want)} of {want.size} differ")
    assert not wrong, f"{what}: " + "; ".join(wrong[:8])
    by_name = dict(graph.outputs)
    unchecked = [name for name in names if by_name[name] not in checked
                 and graph.op(by_name[name].node) != "Constant"]  # folded: nothing to run
    assert not unchecked, f"{what}: no step computes {unchecked[:4]}"


# -- the CNNs (quantize_static) -------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CNN_CASES, ids=str)
def test_static_cnn_matches_onnxruntime(case: Static, target: str | None,
                                        quantized: dict[str, Path]) -> None:
    path = quantized[str(case)]
    model = onnx.load(path)
    compiled = ember.compile(model, target=target)
    step = output_step(model, "logits")
    for seed in (0, 1):  # a second image through the same buffers
        feeds = image(seed)
        expected = onnxruntime_outputs(model, feeds)["logits"]
        assert_within(compiled(**feeds)["logits"], expected, step * (1 + 1e-6),
                      f"{case} on {compiled.target}, image {seed}")
    if compiled.device is not None:
        assert_integer_kernels(compiled, model, str(case))


# Two of the cases, which between them cover both models, int8 and uint8 activations, per
# tensor and per channel, BatchNormalization between integer steps and the operator format:
# each case costs two more compiles, and the tier keeps to its time budget.
STEP_CASES = [CNN_CASES[1], CNN_CASES[3]]


@pytest.mark.opencl
@pytest.mark.skipif(not real_devices(), reason=NO_DEVICE)
@pytest.mark.parametrize("case", STEP_CASES, ids=str)
def test_static_cnn_steps_match_references(case: Static,
                                           quantized: dict[str, Path]) -> None:
    assert_steps_match_references(onnx.load(quantized[str(case)]), image(2), str(case))


# -- BERT (quantize_dynamic) -------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_dynamic_bert_matches_onnxruntime(target: str | None,
                                          quantized: dict[str, Path]) -> None:
    model = onnx.load(quantized["bert"])
    feeds = tokens(0, SEQ, padded=SEQ // 4)
    compiled = ember.compile(model, target=target,
                             input_shapes={k: v.shape for k, v in feeds.items()})
    actual = compiled(**feeds)
    for name, expected in onnxruntime_outputs(model, feeds).items():
        assert_within(actual[name], expected, float32_bound(expected),
                      f"bert_mini dynamic {name} on {compiled.target}")
    if compiled.device is not None:
        assert_integer_kernels(compiled, model, "bert_mini dynamic")


@pytest.mark.opencl
@pytest.mark.skipif(not real_devices(), reason=NO_DEVICE)
def test_dynamic_bert_steps_match_references(quantized: dict[str, Path]) -> None:
    assert_steps_match_references(onnx.load(quantized["bert"]), tokens(1, SEQ, padded=5),
                                  "bert_mini dynamic")


# -- QGemm alone (the operator format's Gemm): its float output, alpha, transA -------------
def qgemm_model(trans_a: int, alpha: float, quantized_output: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    m, k, n = 5, 24, 7
    a_shape = (k, m) if trans_a else (m, k)
    inits = [
        numpy_helper.from_array(np.float32(0.05), "a_scale"),
        numpy_helper.from_array(np.uint8(121), "a_zero"),
        numpy_helper.from_array(rng.integers(-127, 128, (n, k)).astype(np.int8), "b"),
        numpy_helper.from_array(rng.uniform(0.001, 0.01, n).astype(np.float32), "b_scale"),
        numpy_helper.from_array(np.zeros(n, np.int8), "b_zero"),
        numpy_helper.from_array(rng.integers(-5000, 5000, n).astype(np.int32), "bias"),
    ]
    names = ["a", "a_scale", "a_zero", "b", "b_scale", "b_zero", "bias"]
    if quantized_output:  # a range that holds the products: few saturate
        inits += [numpy_helper.from_array(np.float32(0.2), "y_scale"),
                  numpy_helper.from_array(np.uint8(128), "y_zero")]
        names += ["y_scale", "y_zero"]
    node = helper.make_node("QGemm", names, ["y"], domain="com.microsoft", transA=trans_a,
                            transB=1, alpha=alpha)
    y_type = TensorProto.UINT8 if quantized_output else TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "qgemm", [helper.make_tensor_value_info("a", TensorProto.UINT8, a_shape)],
        [helper.make_tensor_value_info("y", y_type, (m, n))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("trans_a, alpha, quantized_output",
                         [(0, 1.0, True), (1, 0.5, False), (0, 2.0, False)])
def test_qgemm_matches_onnxruntime(trans_a: int, alpha: float, quantized_output: bool,
                                   target: str | None) -> None:
    """The float output is the exact int32 sum scaled once (float32 rounding of the scale
    product); the quantized one is within one step (the multiplier's rounding may move a
    value across a rounding boundary)."""
    model = qgemm_model(trans_a, alpha, quantized_output)
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    a = np.random.default_rng(8).integers(0, 256, shape, dtype=np.uint8)
    expected = onnxruntime_outputs(model, {"a": a})["y"]
    actual = ember.compile(model, target=target)(a=a)["y"]
    if quantized_output:
        assert_within(actual, expected, 1, "QGemm uint8")
    else:
        assert_within(actual, expected, float32_bound(expected), "QGemm float32")


# -- QLinearSoftmax (the operator format's attention) -----------------------------------
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("opset, axis", [(13, -1), (12, 1)])
def test_qlinear_softmax_matches_onnxruntime(opset: int, axis: int, target: str | None
                                             ) -> None:
    """onnxruntime computes exp from a table of the 256 inputs, ember dequantizes and runs
    Softmax in float32: within one step of the output. Before opset 13 the block [axis:]
    is one row (here 3 x 8 values)."""
    inits = [numpy_helper.from_array(np.float32(0.08), "x_scale"),
             numpy_helper.from_array(np.uint8(140), "x_zero"),
             numpy_helper.from_array(np.float32(1 / 256), "y_scale"),
             numpy_helper.from_array(np.uint8(0), "y_zero")]
    node = helper.make_node("QLinearSoftmax", ["x", "x_scale", "x_zero", "y_scale", "y_zero"],
                            ["y"], domain="com.microsoft", axis=axis, opset=opset)
    shape = (2, 3, 8)
    graph = helper.make_graph(
        [node], "qlinear_softmax", [helper.make_tensor_value_info("x", TensorProto.UINT8, shape)],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    x = np.random.default_rng(9).integers(60, 256, shape, dtype=np.uint8)
    expected = onnxruntime_outputs(model, {"x": x})["y"]
    actual = ember.compile(model, target=target)(x=x)["y"]
    assert_within(actual, expected, 1, f"QLinearSoftmax opset {opset} axis {axis}")
