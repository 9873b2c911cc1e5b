"""The ONNX converters of the quantized ops (ONNX's and com.microsoft's) and of GatherND /
ScatterND / ScatterElements against onnxruntime, through ember.compile on the numpy executor
and on the default OpenCL device.

Integer outputs must be equal, except where onnxruntime computes through other float
arithmetic than the op's definition, so that a value near a rounding tie may land one step
apart: QLinearMul (onnxruntime scales the integer product by a_scale * b_scale / c_scale,
ember multiplies the dequantized values) and QLinearGlobalAveragePool (onnxruntime sums
integers, ember averages dequantized floats, on the device in its own order).
Float products of many terms (MatMulNBits, DynamicQuantizeMatMul) are held to the float32
accumulation bound, since the two libraries sum in different orders. NaN inputs are left
out: onnxruntime quantizes NaN to the type's minimum, ember to the zero point.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.errors import UnsupportedOpError
from ember.frontends.onnx import import_onnx
from tests.harness import assert_close

MS = "com.microsoft"
_N = helper.make_node


def _model(nodes, feeds: dict[str, np.ndarray], inits: dict[str, np.ndarray],
           outputs: dict[str, tuple[int, list[int]]], opset: int = 21) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                            a.shape) for n, a in feeds.items()]
    outs = [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()]
    graph = helper.make_graph(nodes, "quant", inputs, outs,
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    opsets = [helper.make_opsetid("", opset)]
    if any(node.domain == MS for node in nodes):
        opsets.append(helper.make_opsetid(MS, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], target: str
         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    expected = dict(zip(names, session.run(names, feeds)))
    got = ember.compile(model, target=target)(**feeds)
    return {n: got[n] for n in names}, expected


def _equal_or_within_one(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max(initial=0) <= 1, f"{what}: differs by {diff.max()}"


def _within_accumulation(got: np.ndarray, want: np.ndarray, a: np.ndarray, w: np.ndarray,
                         what: str) -> None:
    """|got - want| <= 2 K 2^-24 sum_k |a_k w_k| + 2^-22 |want|: two float32 sums of K
    products in different orders (each within K u of the exact sum), rounded once more."""
    k = a.shape[-1]
    magnitude = np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64))
    bound = 2 * k * 2.0**-24 * magnitude + 2.0**-22 * np.abs(want.astype(np.float64))
    assert got.dtype == want.dtype and got.shape == want.shape, what
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert np.all(err <= bound), f"{what}: error {err.max()} over bound"


def _ties(rng, shape, scale: float) -> np.ndarray:
    """Values on and between quantization steps (exact .5 ties), some far out of range."""
    steps = rng.integers(-300, 300, size=shape) + rng.choice([0.0, 0.5, -0.5, 0.3], size=shape)
    return (steps * scale).astype(np.float32)


# -- QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear ---------------------------------
def test_quantize_dequantize_match_onnxruntime(any_target):
    rng = np.random.default_rng(0)
    x = _ties(rng, (2, 3, 5, 7), 0.25)
    x.flat[:4] = [np.inf, -np.inf, 1e9, -1e9]
    w = rng.integers(-8, 8, size=(6, 10)).astype(np.int8)
    inits = {
        "s": np.float32(0.25), "sc": np.array([0.5, 0.25, 0.125], np.float32),
        "zc": np.array([1, -3, 5], np.int8),
        "sb": rng.uniform(0.01, 0.1, (2, 3, 2, 7)).astype(np.float32),
        "zb": rng.integers(-20, 20, (2, 3, 2, 7)).astype(np.int8),
        "w": w, "ws": rng.uniform(0.01, 0.1, (6, 3)).astype(np.float32),
        "wz": rng.integers(-3, 3, (6, 3)).astype(np.int8),
        "u": rng.integers(0, 65536, size=(3, 5)).astype(np.uint16),
        "us": np.array([0.5, 2.0, 0.125, 1.0, 4.0], np.float32),
        "uz": np.array([0, 65535, 7, 30000, 3], np.uint16),
        "w4": rng.integers(-8, 8, (6, 10)).astype(ml_dtypes.int4),
        "z4": rng.integers(-2, 2, (6, 3)).astype(ml_dtypes.int4),
    }
    u8, i8, f32 = TensorProto.UINT8, TensorProto.INT8, TensorProto.FLOAT
    nodes = [
        _N("QuantizeLinear", ["x", "s"], ["q_tensor"]),
        _N("QuantizeLinear", ["x", "sc", "zc"], ["q_axis"], axis=1),
        _N("DequantizeLinear", ["q_axis", "sc", "zc"], ["dq_axis"], axis=-3),
        _N("QuantizeLinear", ["x", "sb", "zb"], ["q_block"], axis=2, block_size=3),
        _N("DequantizeLinear", ["w", "ws", "wz"], ["dq_block"], axis=1, block_size=4),
        _N("DequantizeLinear", ["u", "us", "uz"], ["dq_u16"], axis=1),
        _N("DequantizeLinear", ["w4", "ws", "z4"], ["dq_int4"], axis=1, block_size=4),
        _N("QuantizeLinear", ["x", "s"], ["q_int16"], output_dtype=TensorProto.INT16),
        _N("DynamicQuantizeLinear", ["d"], ["dy", "dy_scale", "dy_zero"]),
    ]
    outputs = {"q_tensor": (u8, [2, 3, 5, 7]), "q_axis": (i8, [2, 3, 5, 7]),
               "dq_axis": (f32, [2, 3, 5, 7]), "q_block": (i8, [2, 3, 5, 7]),
               "dq_block": (f32, [6, 10]), "dq_u16": (f32, [3, 5]), "dq_int4": (f32, [6, 10]),
               "q_int16": (TensorProto.INT16, [2, 3, 5, 7]), "dy": (u8, [4, 9]),
               "dy_scale": (f32, []), "dy_zero": (u8, [])}
    d = rng.uniform(-2, 7, (4, 9)).astype(np.float32)
    model = _model(nodes, {"x": x, "d": d}, inits, outputs)
    got, expected = _run(model, {"x": x, "d": d}, any_target)
    for name in outputs:
        assert_close(got[name], expected[name], name)


def test_opset_10_quantize_linear(any_target):
    """Older models are brought to opset 13 by the loader; per-tensor only at opset 10."""
    rng = np.random.default_rng(1)
    x = _ties(rng, (3, 4), 0.5)
    inits = {"s": np.float32(0.5), "z": np.uint8(128)}
    nodes = [_N("QuantizeLinear", ["x", "s", "z"], ["q"]),
             _N("DequantizeLinear", ["q", "s", "z"], ["y"])]
    model = _model(nodes, {"x": x}, inits, {"q": (TensorProto.UINT8, [3, 4]),
                                            "y": (TensorProto.FLOAT, [3, 4])}, opset=10)
    got, expected = _run(model, {"x": x}, any_target)
    for name in ("q", "y"):
        assert_close(got[name], expected[name], name)


def test_dynamic_quantize_of_zeros(any_target):
    """All zeros: y and the zero point are 0 as onnxruntime has them; the scale is ONNX's
    function body's (0 - 0) / 255 = 0, where onnxruntime writes 1."""
    x = np.zeros((3, 4), np.float32)
    model = _model([_N("DynamicQuantizeLinear", ["x"], ["y", "scale", "zero"])], {"x": x}, {},
                   {"y": (TensorProto.UINT8, [3, 4]), "scale": (TensorProto.FLOAT, []),
                    "zero": (TensorProto.UINT8, [])})
    got, expected = _run(model, {"x": x}, any_target)
    assert_close(got["y"], expected["y"], "y")
    assert_close(got["zero"], expected["zero"], "zero")
    assert got["scale"] == 0.0


def test_dequantize_of_a_constant_is_not_folded():
    w = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    nodes = [_N("DequantizeLinear", ["w", "s", "z"], ["wf"]),
             _N("QuantizeLinear", ["c", "s", "z"], ["cq"]),
             _N("Cast", ["cq"], ["cf"], to=TensorProto.FLOAT),
             _N("MatMul", ["x", "wf"], ["y"]), _N("Add", ["y", "cf"], ["out"])]
    inits = {"w": w, "s": np.float32(0.5), "z": np.int8(1),
             "c": np.array([0.3, 1.6, -2.5, 9.0], np.float32)}
    model = _model(nodes, {"x": np.zeros((2, 3), np.float32)}, inits,
                   {"out": (TensorProto.FLOAT, [2, 4])})
    graph = import_onnx(model)
    ops = [graph.op(n) for n in graph.topological_order()]
    assert "DequantizeLinear" in ops  # the int8 weight stays int8
    assert "QuantizeLinear" not in ops  # a constant's quantization folds


# -- integer products ---------------------------------------------------------------------------
def test_integer_products_match_onnxruntime(any_target):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (2, 5, 7)).astype(np.uint8)
    x = rng.integers(0, 256, (1, 4, 6, 5)).astype(np.uint8)
    inits = {
        "b": rng.integers(-128, 128, (7, 6)).astype(np.int8),
        "w": rng.integers(-128, 128, (6, 2, 3, 3)).astype(np.int8),
        "az": np.uint8(130), "bz": rng.integers(-5, 5, 6).astype(np.int8),
        "as": np.float32(0.02), "bs": rng.uniform(0.001, 0.01, 6).astype(np.float32),
        "ys": np.float32(0.3), "yz": np.uint8(120), "xz": np.uint8(128), "wz": np.int8(0),
        "ws": rng.uniform(0.001, 0.01, 6).astype(np.float32), "xs": np.float32(0.05),
        "bias": rng.integers(-2000, 2000, 6).astype(np.int32), "ys2": np.float32(0.4),
    }
    nodes = [
        _N("MatMulInteger", ["a", "b", "az", "bz"], ["mm"]),
        _N("ConvInteger", ["x", "w", "xz"], ["conv"], pads=[1, 0, 2, 1], strides=[2, 1],
           dilations=[2, 1], group=2),
        _N("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["qmm"]),
        _N("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys2", "yz", "bias"], ["qconv"],
           auto_pad="SAME_UPPER", group=2, strides=[1, 2]),
    ]
    i32, u8 = TensorProto.INT32, TensorProto.UINT8
    outputs = {"mm": (i32, [2, 5, 6]), "conv": (i32, [1, 6, 3, 4]), "qmm": (u8, [2, 5, 6]),
               "qconv": (u8, [1, 6, 6, 3])}
    model = _model(nodes, {"a": a, "x": x}, inits, outputs)
    got, expected = _run(model, {"a": a, "x": x}, any_target)
    for name in outputs:
        assert_close(got[name], expected[name], name)


# -- com.microsoft ops --------------------------------------------------------------------------
def test_microsoft_quantized_ops_match_onnxruntime(any_target):
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (2, 3, 4, 5)).astype(np.uint8)
    b = rng.integers(0, 256, (3, 1, 5)).astype(np.uint8)
    x = rng.integers(-128, 128, (2, 3, 4, 5)).astype(np.int8)
    f = rng.uniform(-3, 3, (2, 3, 40)).astype(np.float32)
    bq = rng.integers(-128, 128, (40, 6)).astype(np.int8)
    inits = {
        "sa": np.float32(0.05), "za": np.uint8(120), "sb": np.float32(0.07),
        "zb": np.uint8(3), "sc": np.float32(0.09), "zc": np.uint8(128),
        "sx": np.float32(0.03), "zx": np.int8(-4), "sy": np.float32(1 / 256),
        "zy": np.int8(-128), "sp": np.float32(0.011), "zp": np.int8(2),
        "c2": rng.integers(0, 256, (2, 2, 4, 5)).astype(np.uint8), "bq": bq,
        "bqs": rng.uniform(0.01, 0.02, 6).astype(np.float32),
        "bqz": rng.integers(-3, 3, 6).astype(np.int8),
        "bias": np.arange(6, dtype=np.float32),
    }
    nodes = [
        _N("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["add"], domain=MS),
        _N("QLinearMul", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["mul"], domain=MS),
        _N("QLinearSigmoid", ["x", "sx", "zx", "sy", "zy"], ["sigmoid"], domain=MS),
        _N("QLinearGlobalAveragePool", ["x", "sx", "zx", "sp", "zp"], ["pool"], domain=MS),
        _N("QLinearGlobalAveragePool", ["x", "sx", "zx", "sp", "zp"], ["pool_nhwc"],
           domain=MS, channels_last=1),
        _N("QLinearConcat", ["sc", "zc", "a", "sa", "za", "c2", "sb", "zb"], ["concat"],
           domain=MS, axis=1),
        _N("DynamicQuantizeMatMul", ["f", "bq", "bqs", "bqz", "bias"], ["dqmm"], domain=MS),
    ]
    u8, i8 = TensorProto.UINT8, TensorProto.INT8
    outputs = {"add": (u8, [2, 3, 4, 5]), "mul": (u8, [2, 3, 4, 5]),
               "sigmoid": (i8, [2, 3, 4, 5]), "pool": (i8, [2, 3, 1, 1]),
               "pool_nhwc": (i8, [2, 1, 1, 5]), "concat": (u8, [2, 5, 4, 5]),
               "dqmm": (TensorProto.FLOAT, [2, 3, 6])}
    feeds = {"a": a, "b": b, "x": x, "f": f}
    got, expected = _run(_model(nodes, feeds, inits, outputs), feeds, any_target)
    for name in ("add", "sigmoid", "concat"):
        assert_close(got[name], expected[name], name)
    for name in ("mul", "pool", "pool_nhwc"):
        _equal_or_within_one(got[name], expected[name], name)
    w_float = (bq.astype(np.float32) - inits["bqz"]) * inits["bqs"]
    _within_accumulation(got["dqmm"], expected["dqmm"], f, w_float, "dqmm")


def _nbits_weight(rng, bits: int, block_size: int, k: int, n: int, zero_points: str):
    """(inputs, w_float) of a MatMulNBits node: packed weights, scales, zero points."""
    blocks = math.ceil(k / block_size)
    q = rng.integers(0, 1 << bits, (n, blocks * block_size)).astype(np.uint8)
    packed = q if bits == 8 else (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    scales = rng.uniform(0.01, 0.1, (n, blocks)).astype(np.float32)
    zeros = rng.integers(0, 1 << bits, (n, blocks)).astype(np.uint8)
    inputs = {"w": packed.reshape(n, blocks, -1), "s": scales}
    if zero_points == "packed":
        if bits == 4:
            even = np.concatenate([zeros, np.zeros((n, blocks % 2), np.uint8)], axis=1)
            inputs["z"] = (even[:, 0::2] | (even[:, 1::2] << 4)).astype(np.uint8)
        else:
            inputs["z"] = zeros
    elif zero_points == "float":
        inputs["z"] = zeros.astype(np.float32)
    else:
        zeros[:] = 1 << (bits - 1)
    per_k = np.repeat(np.arange(blocks), block_size)[:k]
    w_float = (q[:, :k].astype(np.float32) - zeros[:, per_k]) * scales[:, per_k]
    return inputs, w_float


NBITS_CASES = [(4, 16, 40, "packed"), (4, 32, 40, "none"), (8, 16, 40, "packed"),
               (4, 64, 40, "float"), (8, 256, 300, "none"), (4, 128, 300, "packed"),
               (4, 16, 16, "none")]


def test_matmul_nbits_matches_onnxruntime(any_target):
    rng = np.random.default_rng(4)
    n = 6
    feeds = {f"a{k}": rng.uniform(-3, 3, (2, 3, k)).astype(np.float32) for k in (16, 40, 300)}
    nodes, inits, outputs, weights = [], {}, {}, {}
    for i, (bits, block_size, k, zero_points) in enumerate(NBITS_CASES):
        given, weights[f"y{i}"] = _nbits_weight(rng, bits, block_size, k, n, zero_points)
        inits.update({f"{name}{i}": value for name, value in given.items()})
        inputs = [f"a{k}", f"w{i}", f"s{i}", f"z{i}" if "z" in given else ""]
        if i % 2:
            inputs += ["", f"bias{i}"]
            inits[f"bias{i}"] = rng.uniform(-1, 1, n).astype(np.float32)
        nodes.append(_N("MatMulNBits", inputs, [f"y{i}"], domain=MS, K=k, N=n, bits=bits,
                        block_size=block_size))
        outputs[f"y{i}"] = (TensorProto.FLOAT, [2, 3, n])
    got, expected = _run(_model(nodes, feeds, inits, outputs), feeds, any_target)
    for i, (_, _, k, _) in enumerate(NBITS_CASES):
        name = f"y{i}"
        _within_accumulation(got[name], expected[name], feeds[f"a{k}"], weights[name].T, name)


def test_weight_only_cast_mul_form(any_target):
    """int8 initializer -> Cast -> Mul by a scale -> MatMul: ordinary ops, folded or not."""
    rng = np.random.default_rng(5)
    w = rng.integers(-128, 128, (33, 7)).astype(np.int8)
    scale = rng.uniform(0.001, 0.01, 7).astype(np.float32)
    x = rng.uniform(-1, 1, (3, 33)).astype(np.float32)
    nodes = [_N("Cast", ["w"], ["wf"], to=TensorProto.FLOAT), _N("Mul", ["wf", "ws"], ["wd"]),
             _N("MatMul", ["x", "wd"], ["y"])]
    model = _model(nodes, {"x": x}, {"w": w, "ws": scale}, {"y": (TensorProto.FLOAT, [3, 7])})
    got, expected = _run(model, {"x": x}, any_target)
    _within_accumulation(got["y"], expected["y"], x, w.astype(np.float32) * scale, "y")


# -- GatherND / ScatterND / ScatterElements -----------------------------------------------------
def test_gather_scatter_match_onnxruntime(any_target):
    rng = np.random.default_rng(6)
    data = rng.uniform(-2, 2, (3, 4, 5)).astype(np.float32)
    inits = {
        "gi": np.array([[[0, -1], [2, 1]], [[1, 3], [-3, 0]]], np.int64),
        "bi": np.array([[1], [-1], [0]], np.int64),
        "si": np.array([[0, 1], [-1, 2], [0, 1]], np.int64),
        "su": rng.uniform(-1, 1, (3, 5)).astype(np.float32),
        "ni": np.array([[2, 0], [0, 3]], np.int64), "nu": rng.uniform(-1, 1, (2, 5)).astype(
            np.float32),
        "ei": rng.integers(-4, 4, (2, 3, 5)).astype(np.int64),
        "eu": rng.uniform(-1, 1, (2, 3, 5)).astype(np.float32),
        "ep": np.argsort(rng.random((3, 4, 5)), axis=1)[:, :2].astype(np.int64) - 4,
        "ev": rng.uniform(-1, 1, (3, 2, 5)).astype(np.float32),
    }
    nodes = [_N("GatherND", ["d", "gi"], ["gather"]),
             _N("GatherND", ["d", "bi"], ["gather_batch"], batch_dims=1),
             _N("ScatterND", ["d", "si", "su"], ["scatter_add"], reduction="add"),
             _N("ScatterND", ["d", "si", "su"], ["scatter_max"], reduction="max"),
             _N("ScatterND", ["d", "ni", "nu"], ["scatter_none"]),
             _N("ScatterElements", ["d", "ei", "eu"], ["elements_mul"], axis=1,
                reduction="mul"),
             _N("ScatterElements", ["d", "ei", "eu"], ["elements_min"], axis=1,
                reduction="min"),
             _N("ScatterElements", ["d", "ep", "ev"], ["elements_none"], axis=-2)]
    f32 = TensorProto.FLOAT
    outputs = {"gather": (f32, [2, 2, 5]), "gather_batch": (f32, [3, 5])}
    outputs.update({name: (f32, [3, 4, 5]) for name in
                    ("scatter_add", "scatter_max", "scatter_none", "elements_mul",
                     "elements_min", "elements_none")})
    got, expected = _run(_model(nodes, {"d": data}, inits, outputs, opset=18), {"d": data},
                         any_target)
    for name in outputs:
        assert_close(got[name], expected[name], name)


# -- what is refused ----------------------------------------------------------------------------
def test_domains_keep_their_converters_apart():
    x = np.zeros((2, 3), np.uint8)
    inputs = ["x", "s", "z", "x", "s", "z", "s", "z"]
    inits = {"s": np.float32(0.1), "z": np.uint8(0)}
    default_domain = _model([_N("QLinearAdd", inputs, ["y"])], {"x": x}, inits,
                            {"y": (TensorProto.UINT8, [2, 3])})
    with pytest.raises(UnsupportedOpError, match="ONNX op QLinearAdd"):
        import_onnx(default_domain)
    other = _model([_N("QLinearAdd", inputs, ["y"], domain="com.example")], {"x": x}, inits,
                   {"y": (TensorProto.UINT8, [2, 3])})
    other.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOpError, match="domain 'com.example'"):
        import_onnx(other)


def test_matmul_nbits_two_bits_is_refused():
    a = np.zeros((1, 32), np.float32)
    inits = {"w": np.zeros((4, 2, 4), np.uint8), "s": np.ones((4, 2), np.float32)}
    model = _model([_N("MatMulNBits", ["a", "w", "s"], ["y"], domain=MS, K=32, N=4, bits=2,
                       block_size=16)], {"a": a}, inits, {"y": (TensorProto.FLOAT, [1, 4])})
    with pytest.raises(UnsupportedOpError, match="bits=2; ember supports 4 and 8"):
        import_onnx(model)
