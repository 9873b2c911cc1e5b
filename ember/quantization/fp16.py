"""Float16: run chosen nodes in half precision, with Casts where precisions meet.

Each node runs in float16 or float32. A float16 node reads float16 (its float32 inputs are
cast once per tensor, its float32 weights stored as float16) and writes float16; a float32
node reading a float16 tensor gets a Cast back. The graph's inputs and outputs keep their
float32 types (Casts at the edges), so callers feed and read the same arrays.

Ops kept in float32 by default (KEEP_FP32), because float16's range (max 65504) or its
11-bit significand breaks them on ordinary data:
- Exp, Pow, Softplus: exp(x) overflows above x = 11.1, x^2 above |x| = 256;
- Softmax, LogSoftmax: an exp and a sum over the row;
- LayerNormalization, RMSNormalization, InstanceNormalization, and the reductions
  ReduceSum/ReduceMean/ReduceSumSquare/ReduceL2/ReduceLogSumExp/ReduceProd, CumSum: sums of
  many terms (or of squares) overflow, and adding a small term to a large float16 sum loses
  it (above 2048 the step is 2);
- Resize, Range: coordinates and counts, where a rounded position moves a pixel.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ember.quantization.onnx_edit import GraphEditor

__all__ = ["KEEP_FP32", "to_float16"]

KEEP_FP32 = frozenset({
    "Exp", "Pow", "Softplus", "Softmax", "LogSoftmax", "LayerNormalization",
    "RMSNormalization", "InstanceNormalization", "ReduceSum", "ReduceMean", "ReduceSumSquare",
    "ReduceL2", "ReduceLogSumExp", "ReduceProd", "CumSum", "Resize", "Range",
})
# Ops whose output types are fixed by attributes or are not the data's: left as they are.
FIXED_TYPE_OPS = frozenset({
    "Cast", "CastLike", "Constant", "ConstantOfShape", "Shape", "Size", "EyeLike",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal",
    "RandomUniform", "RandomNormalLike", "RandomUniformLike",
})
# Inputs that stay float32 whatever the node's precision (the spec types them separately).
FLOAT32_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


def to_float16(model: onnx.ModelProto, half_nodes: Collection[str],
               types: dict[str, int]) -> onnx.ModelProto:
    """Rewrite `model` (edited in place and returned) so that the nodes named in `half_nodes`
    compute in float16. `types` gives every tensor's element type before the rewrite."""
    edit = GraphEditor(model)
    consumers = edit.consumers()
    current = dict(types)  # tensor -> element type after the rewrite
    casts: dict[tuple[str, int], str] = {}
    half_weights: dict[str, str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            if name in edit.initializers and to == F16:
                casts[key] = half_weight(name)
            else:
                out = edit.fresh(f"{name}_{'fp16' if to == F16 else 'fp32'}")
                edit.add_node(helper.make_node("Cast", [name], [out], to=to,
                                               name=edit.fresh(f"Cast_{out}")))
                current[out] = to
                casts[key] = out
        return casts[key]

    def half_weight(name: str) -> str:
        if name not in half_weights:
            value = edit.array(name).astype(np.float16)
            users = consumers.get(name, [])
            if all(u.name in half_nodes for u in users) and name not in edit.graph_outputs:
                edit.initializers[name].CopyFrom(numpy_helper.from_array(value, name))
                half_weights[name] = name
            else:
                half_weights[name] = edit.add_array(f"{name}_fp16", value)
            current[half_weights[name]] = F16
        return half_weights[name]

    for node in list(edit.graph.node):
        if node.op_type in FIXED_TYPE_OPS:
            want = None if node.op_type not in ("QuantizeLinear", "DynamicQuantizeLinear") else F32
            fixed = {0} if want else set()
        else:
            want = F16 if node.name in half_nodes else F32
            fixed = FLOAT32_INPUTS.get(node.op_type, set())
        for index, name in enumerate(node.input):
            if not name or index in fixed or want is None:
                continue
            have = current.get(name)
            if have in (F32, F16) and have != want:
                node.input[index] = cast(name, want)
        if node.op_type in FIXED_TYPE_OPS or node.name not in half_nodes:
            continue
        for out in node.output:
            if current.get(out) == F32:
                current[out] = F16
    _restore_output_types(edit, current)
    _retype_value_info(edit.graph, current)
    return edit.finish()


def _restore_output_types(edit: GraphEditor, current: dict[str, int]) -> None:
    """Graph outputs keep float32: a float16 output is renamed inside and cast back."""
    producer = edit.producer()
    for output in edit.graph.output:
        name = output.name
        if current.get(name) != F16 or name not in producer:
            continue
        inner = edit.fresh(f"{name}_fp16")
        node = producer[name]
        node.output[list(node.output).index(name)] = inner
        for user in edit.graph.node:
            for i, used in enumerate(user.input):
                if used == name:
                    user.input[i] = inner
        edit.add_node(helper.make_node("Cast", [inner], [name], to=F32,
                                       name=edit.fresh(f"Cast_{name}")))
        current[inner], current[name] = F16, F32


def _retype_value_info(graph: onnx.GraphProto, current: dict[str, int]) -> None:
    for info in graph.value_info:
        if info.name in current and info.type.HasField("tensor_type"):
            info.type.tensor_type.elem_type = current[info.name]
