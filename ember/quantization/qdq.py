"""Writing standard QDQ ONNX: QuantizeLinear/DequantizeLinear pairs that any ONNX runtime
runs, and that ember's lowering folds into integer kernels.

`build_qdq(model, stats, precisions, options)` gives each layer (MatMul/Gemm/Conv node, by
name) its precision:
- "int8": weights int8, symmetric, per output channel (Conv axis 0, the N axis of a
  MatMul/Gemm weight), scale max|w|/127; activations per tensor, uint8 asymmetric (or int8
  symmetric) from the calibrated ranges; a constant bias int32 with scale a_scale * w_scale
  and zero point 0. The layer's output is quantized too (graph outputs stay float), and so are the tensors of the ops
  after it whose inputs are all quantized (Add, Mul, Concat, pooling, activations, shape
  moves), as onnxruntime's QDQ quantizer does, so that a chain can stay in integers. Ops
  that only move or select values (MaxPool, Reshape, Transpose, ...) give their output the
  input's scale and zero point, which is exact on integers.
  With `options.dynamic`, activations are quantized at run time instead, the transformer
  form: DynamicQuantizeLinear -> DequantizeLinear before the layer, float bias and output.
- "int4": weight-only, a blocked DequantizeLinear (opset 21 `block_size`, along K) of int4
  (symmetric) or uint4 (with zero points) weights before each MatMul/Gemm; activations stay
  float. The model's opset is raised to 21 with onnx's version converter.
- "fp16": the layer computes in float16 (fp16.py); "fp32" (or absent): unchanged.
A quantized tensor keeps its name (the DequantizeLinear writes it; the producer's float
result is renamed), so float and quantized models can be compared tensor by tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, version_converter

from ember.quantization.calibration import CalibrationStats, tensor_types
from ember.quantization.fp16 import KEEP_FP32, to_float16
from ember.quantization.int4 import (
    BlockedWeights,
    output_error,
    quantize_gptq,
    quantize_rtn,
)
from ember.quantization.onnx_edit import (
    LAYER_OPS,
    GraphEditor,
    layers,
    name_nodes,
    opset_of,
)

__all__ = ["PRECISIONS", "QdqOptions", "build_qdq", "activation_tensors", "gram_tensors",
           "activation_params", "weight_axis", "LayerWeights"]

PRECISIONS = ("fp32", "fp16", "int8", "int4")
# Ops quantized after a quantized layer when all their float inputs are quantized.
FOLLOW_OPS = frozenset({
    "Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Reshape",
    "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity",
})
# Of those, the ones whose output values are a subset of the input's: same scale and zero.
SAME_SCALE_OPS = frozenset({"MaxPool", "GlobalMaxPool", "Reshape", "Transpose", "Flatten",
                            "Squeeze", "Unsqueeze", "Identity"})
AUTO_GRAM_BYTES = 256 << 20  # memory int4_method="auto" gives GPTQ's Gram matrices
DATA_INPUTS = {"Reshape": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Clip": (0,)}


@dataclass(frozen=True)
class QdqOptions:
    symmetric_activations: bool = False  # int8 symmetric activations instead of uint8
    dynamic: bool = False  # int8 layers quantize activations at run time
    block_size: int = 128  # int4 block along K
    int4_symmetric: bool = True  # int4 without zero points, else uint4 with zero points
    # "rtn", "gptq" (kept per layer only where it lowers the error) or "auto" (gptq where
    # the calibration Gram matrices fit in AUTO_GRAM_BYTES, rtn elsewhere)
    int4_method: str = "auto"
    keep_fp32: tuple[str, ...] = ()  # op types or node names that stay float32 under fp16
    fp16_everywhere: bool = False  # fp16 scheme: every node but the kept ones in float16


@dataclass
class LayerWeights:
    """What the writer did to one layer's weight (read by the plan)."""

    name: str
    bytes_before: int = 0
    bytes_after: int = 0
    note: str = ""
    errors: dict[str, float] = field(default_factory=dict)  # int4 method -> output error


# -- which tensors -------------------------------------------------------------------------------
def _data_inputs(node: onnx.NodeProto) -> tuple[int, ...]:
    if node.op_type in LAYER_OPS:
        return LAYER_OPS[node.op_type]
    return DATA_INPUTS.get(node.op_type, tuple(range(len(node.input))))


def activation_tensors(model: onnx.ModelProto, precisions: Mapping[str, str],
                       options: QdqOptions) -> list[str]:
    """The activations that static int8 quantizes (and calibration must observe), in order."""
    if options.dynamic:
        return []
    edit = GraphEditor(model)
    types = tensor_types(model)
    floats = {n for n, t in types.items() if t == TensorProto.FLOAT}
    chosen: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type in LAYER_OPS and precisions.get(node.name) == "int8":
            for i in LAYER_OPS[node.op_type]:
                if i < len(node.input) and node.input[i] not in edit.constants:
                    chosen[node.input[i]] = None
            chosen[node.output[0]] = None
        elif node.op_type in FOLLOW_OPS:
            data = [node.input[i] for i in _data_inputs(node) if i < len(node.input)]
            live = [name for name in data if name and name not in edit.constants]
            if live and all(name in chosen for name in live) and node.output[0] in floats:
                chosen[node.output[0]] = None
    # Graph outputs stay float: a classifier's logits quantized to 8 bits lose the small
    # margins that decide its argmax, and the last kernel writes float for free.
    outputs = {o.name for o in model.graph.output}
    return [name for name in chosen if name in floats and name not in outputs]


def gram_tensors(model: onnx.ModelProto, precisions: Mapping[str, str],
                 options: QdqOptions) -> list[str]:
    """Inputs of the int4 layers whose Gram matrix GPTQ needs. Under "auto", those of the
    first layers (in graph order) while their K x K float64 matrices fit in
    AUTO_GRAM_BYTES; the other layers round to nearest."""
    if options.int4_method not in ("gptq", "auto"):
        return []
    found, total = [], 0
    sizes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for n in layers(model):
        if precisions.get(n.name) != "int4" or n.op_type == "Conv" or _attr(n, "transA", 0):
            continue
        shape = sizes.get(n.input[1]) if len(n.input) > 1 else None
        if shape is None or len(shape) != 2:
            continue
        k = shape[weight_axis(n, 2)[1]]
        total += 8 * k * k
        if options.int4_method == "auto" and total > AUTO_GRAM_BYTES:
            break
        found.append(n.input[0])
    return list(dict.fromkeys(found))


# -- parameters ----------------------------------------------------------------------------------
def activation_params(lo: float, hi: float, symmetric: bool) -> tuple[np.float32, int, int]:
    """(scale, zero point, element type) of an activation with range [lo, hi]; the range is
    widened to hold 0, so that zero (padding, Relu) is exact."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        scale = np.float32(max(-lo, hi) / 127.0)
        return (scale if scale > 0 else np.float32(1.0)), 0, TensorProto.INT8
    scale = np.float32((hi - lo) / 255.0)
    if not scale > 0:
        return np.float32(1.0), 0, TensorProto.UINT8
    zero = int(np.clip(np.rint(-lo / np.float64(scale)), 0, 255))
    return scale, zero, TensorProto.UINT8


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def weight_axis(node: onnx.NodeProto, rank: int) -> tuple[int, int]:
    """(output-channel axis, reduction axis) of the layer's weight (input 1)."""
    if node.op_type == "Conv":
        return 0, 1
    if node.op_type == "Gemm" and _attr(node, "transB", 0):
        return 0, 1
    return rank - 1, rank - 2


# -- the writer ----------------------------------------------------------------------------------
def build_qdq(model: onnx.ModelProto, stats: CalibrationStats | None,
              precisions: Mapping[str, str], options: QdqOptions = QdqOptions(),
              report: dict[str, LayerWeights] | None = None) -> onnx.ModelProto:
    """A new ModelProto with each named layer at its precision (see the module docstring).
    `report`, when given, is filled with what happened to each layer's weight."""
    unknown = {p for p in precisions.values() if p not in PRECISIONS}
    if unknown:
        raise ValueError(f"unknown precisions {sorted(unknown)}; known: {', '.join(PRECISIONS)}")
    model = name_nodes(model)
    names = {n.name: n for n in layers(model)}
    missing = sorted(set(precisions) - set(names))
    if missing:
        raise ValueError(f"no MatMul/Gemm/Conv layer named {missing[:5]} in the model")
    for name, precision in precisions.items():
        if precision == "int4" and names[name].op_type == "Conv":
            raise ValueError(f"layer {name!r}: int4 is weight-only for MatMul/Gemm, not Conv")
    wanted = 21 if "int4" in precisions.values() else 13
    if opset_of(model) < wanted:
        model = version_converter.convert_version(model, wanted)
        model.ir_version = max(model.ir_version, 10 if wanted >= 21 else 7)
    types = tensor_types(model)
    report = {} if report is None else report
    stats = stats or CalibrationStats()
    quantized = activation_tensors(model, precisions, options)
    writer = _Writer(model, stats, options, report)
    params = writer.activation_params(quantized)
    writer.quantize_activations(quantized, params)
    for node in layers(model):
        precision = precisions.get(node.name, "fp32")
        report.setdefault(node.name, writer.weight_bytes(node, precision))
        if precision == "int8":
            writer.int8_layer(node, params)
        elif precision == "int4":
            writer.int4_layer(node)
    model = writer.edit.finish()
    half = _half_nodes(model, precisions, options)
    if half:
        model = to_float16(model, half, {**types, **tensor_types(model)})
    onnx.checker.check_model(model)
    return model


def _half_nodes(model: onnx.ModelProto, precisions: Mapping[str, str],
                options: QdqOptions) -> set[str]:
    if not options.fp16_everywhere:
        return {name for name, p in precisions.items() if p == "fp16"}
    keep = KEEP_FP32 | set(options.keep_fp32)
    return {n.name for n in model.graph.node
            if n.op_type not in keep and n.name not in keep
            and precisions.get(n.name, "fp16") == "fp16"}


class _Writer:
    def __init__(self, model: onnx.ModelProto, stats: CalibrationStats, options: QdqOptions,
                 report: dict[str, LayerWeights]) -> None:
        self.edit = GraphEditor(model)
        self.stats = stats
        self.options = options
        self.report = report
        self.dynamic_inputs: dict[str, str] = {}
        self.weights: dict[tuple[str, int], tuple[str, np.ndarray]] = {}
        self.origin: dict[str, str] = {}  # dequantized copy of a graph input -> the input

    def activation_params(self, tensors: list[str]) -> dict[str, tuple[np.float32, int, int]]:
        producer = self.edit.producer()
        params: dict[str, tuple[np.float32, int, int]] = {}
        for name in tensors:
            node = producer.get(name)
            if node is not None and node.op_type in SAME_SCALE_OPS and node.input[0] in params:
                params[name] = params[node.input[0]]
                continue
            if name in self.stats.ranges:
                lo, hi = self.stats.ranges[name]
            elif name in self.edit.initializers:
                value = self.edit.array(name)
                lo, hi = float(value.min()), float(value.max())
            else:
                raise ValueError(f"no calibrated range for tensor {name!r}: calibrate the "
                                 "tensors that activation_tensors() lists")
            params[name] = activation_params(lo, hi, self.options.symmetric_activations)
        return params

    def quantize_activations(self, tensors: list[str],
                             params: dict[str, tuple[np.float32, int, int]]) -> None:
        """T -> Q -> DQ, the DequantizeLinear writing T (the float result renamed)."""
        producer = self.edit.producer()
        consumers = self.edit.consumers()
        for name in tensors:
            scale, zero, dtype = params[name]
            s = self.edit.add_array(f"{name}_scale", np.array(scale, np.float32))
            z = self.edit.add_initializer(helper.make_tensor(
                self.edit.fresh(f"{name}_zero_point"), dtype, [], [zero]))
            q = self.edit.fresh(f"{name}_quantized")
            if name in producer:
                source = self.edit.fresh(f"{name}_float")
                node = producer[name]
                node.output[list(node.output).index(name)] = source
                out = name
            else:  # a graph input (or a constant): its readers read the dequantized copy
                source, out = name, self.edit.fresh(f"{name}_dequantized")
                self.origin[out] = name
                for user in consumers.get(name, []):
                    for i, used in enumerate(user.input):
                        if used == name:
                            user.input[i] = out
            self.edit.add_node(helper.make_node("QuantizeLinear", [source, s, z], [q],
                                                name=self.edit.fresh(f"{name}_QuantizeLinear")))
            self.edit.add_node(helper.make_node("DequantizeLinear", [q, s, z], [out],
                                                name=self.edit.fresh(f"{name}_DequantizeLinear")))

    # -- weights -------------------------------------------------------------------------------
    def weight_bytes(self, node: onnx.NodeProto, precision: str) -> LayerWeights:
        row = LayerWeights(node.name)
        w = node.input[1] if len(node.input) > 1 else ""
        if w in self.edit.initializers:
            size = int(np.prod(self.edit.initializers[w].dims))
            row.bytes_before = 4 * size
            row.bytes_after = {"fp32": 4, "fp16": 2, "int8": 1}.get(precision, 0) * size
        return row

    def _int8_weight(self, node: onnx.NodeProto) -> tuple[str, np.ndarray] | None:
        name = node.input[1]
        if name not in self.edit.initializers:
            return None
        w = self.edit.array(name).astype(np.float32)
        axis, _ = weight_axis(node, w.ndim)
        key = (name, axis)
        if key not in self.weights:
            others = tuple(i for i in range(w.ndim) if i != axis)
            bound = np.abs(w).max(axis=others) if others else np.abs(w)
            scale = np.where(bound > 0, bound / 127.0, 1.0).astype(np.float32)
            shape = [1] * w.ndim
            shape[axis] = -1
            codes = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
            q = self.edit.add_array(f"{name}_quantized", codes)
            s = self.edit.add_array(f"{name}_scale", scale)
            z = self.edit.add_array(f"{name}_zero_point", np.zeros(scale.shape, np.int8))
            out = self.edit.fresh(f"{name}_dequantized")
            self.edit.add_node(helper.make_node(
                "DequantizeLinear", [q, s, z], [out], axis=axis,
                name=self.edit.fresh(f"{name}_DequantizeLinear")))
            self.weights[key] = (out, scale)
            self.report[node.name].bytes_after = codes.nbytes + scale.nbytes + scale.size
        return self.weights[key]

    def int8_layer(self, node: onnx.NodeProto, params: dict) -> None:
        weight = self._int8_weight(node)
        if self.options.dynamic:
            self._dynamic_input(node)
        if weight is None:
            return
        node.input[1], w_scale = weight
        a = self.origin.get(node.input[0], node.input[0])
        has_bias = len(node.input) > 2 and node.input[2] in self.edit.initializers
        if self.options.dynamic or not has_bias or a not in params:
            return
        bias = self.edit.array(node.input[2]).astype(np.float32)
        if bias.shape != w_scale.shape:  # a broadcast Gemm bias stays float
            return
        scale = (np.float32(params[a][0]) * w_scale).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1.0))
        codes = np.clip(np.rint(bias.astype(np.float64) / safe), -(2**31), 2**31 - 1)
        name = node.input[2]
        q = self.edit.add_array(f"{name}_quantized", codes.astype(np.int32))
        s = self.edit.add_array(f"{name}_scale", safe.astype(np.float32))
        z = self.edit.add_array(f"{name}_zero_point", np.zeros(bias.shape, np.int32))
        out = self.edit.fresh(f"{name}_dequantized")
        self.edit.add_node(helper.make_node("DequantizeLinear", [q, s, z], [out], axis=0,
                                            name=self.edit.fresh(f"{name}_DequantizeLinear")))
        node.input[2] = out

    def _dynamic_input(self, node: onnx.NodeProto) -> None:
        name = node.input[0]
        if name in self.edit.constants:
            return
        if name not in self.dynamic_inputs:
            q, s, z = (self.edit.fresh(f"{name}_{part}")
                       for part in ("quantized", "scale", "zero_point"))
            out = self.edit.fresh(f"{name}_dequantized")
            self.edit.add_node(helper.make_node(
                "DynamicQuantizeLinear", [name], [q, s, z],
                name=self.edit.fresh(f"{name}_DynamicQuantizeLinear")))
            self.edit.add_node(helper.make_node(
                "DequantizeLinear", [q, s, z], [out],
                name=self.edit.fresh(f"{name}_DequantizeLinear")))
            self.dynamic_inputs[name] = out
        node.input[0] = self.dynamic_inputs[name]

    def int4_layer(self, node: onnx.NodeProto) -> None:
        name = node.input[1]
        if name not in self.edit.initializers:
            return
        w = self.edit.array(name).astype(np.float32)
        if w.ndim != 2:
            raise ValueError(f"layer {node.name!r}: int4 needs a 2-D weight, not {w.shape}")
        out_axis, k_axis = weight_axis(node, 2)
        rows = w if out_axis == 0 else w.T  # (N, K)
        blocked = self._int4_blocks(node, rows)
        symmetric = blocked.zeros is None
        codes = blocked.codes if out_axis == 0 else blocked.codes.T
        scales = blocked.scales if out_axis == 0 else blocked.scales.T
        kind = TensorProto.INT4 if symmetric else TensorProto.UINT4
        q = self.edit.add_initializer(helper.make_tensor(
            self.edit.fresh(f"{name}_quantized"), kind, codes.shape, codes.ravel().tolist()))
        inputs = [q, self.edit.add_array(f"{name}_scale", scales.astype(np.float32))]
        if not symmetric:
            zeros = blocked.zeros if out_axis == 0 else blocked.zeros.T
            inputs.append(self.edit.add_initializer(helper.make_tensor(
                self.edit.fresh(f"{name}_zero_point"), kind, zeros.shape,
                zeros.ravel().tolist())))
        out = self.edit.fresh(f"{name}_dequantized")
        self.edit.add_node(helper.make_node(
            "DequantizeLinear", inputs, [out], axis=k_axis, block_size=blocked.block_size,
            name=self.edit.fresh(f"{name}_DequantizeLinear")))
        node.input[1] = out
        row = self.report[node.name]
        row.bytes_after = (codes.size + 1) // 2 + scales.nbytes + (0 if symmetric else
                                                                    (scales.size + 1) // 2)

    def _int4_blocks(self, node: onnx.NodeProto, rows: np.ndarray) -> BlockedWeights:
        options, row = self.options, self.report[node.name]
        rtn = quantize_rtn(rows, options.block_size, options.int4_symmetric)
        if options.int4_method == "rtn":
            row.note = "int4 rtn"
            return rtn
        if options.int4_method not in ("gptq", "auto"):
            raise ValueError(f"unknown int4 method {options.int4_method!r}; known: rtn, "
                             "gptq, auto")
        hessian = self.stats.hessians.get(node.input[0])
        if hessian is None:  # a transposed input (Gemm transA), no calibration, or over
            # the memory "auto" allows
            row.note = "int4 rtn (no calibrated input Gram matrix for gptq)"
            return rtn
        gptq = quantize_gptq(rows, hessian, options.block_size, options.int4_symmetric)
        row.errors = {"rtn": output_error(rows, rtn, hessian),
                      "gptq": output_error(rows, gptq, hessian)}
        keep = row.errors["gptq"] < row.errors["rtn"]
        row.note = "int4 gptq" if keep else "int4 rtn (gptq did not lower the error)"
        return gptq if keep else rtn
