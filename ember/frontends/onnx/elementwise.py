"""Converters of ONNX's elementwise ops. Variadic Sum/Mean/Max/Min become chains of binary
ops; Clip's min/max inputs become attributes."""

from __future__ import annotations

import numpy as np
import onnx

from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.errors import ShapeError
from ember.ir import DType, Value
from ember.ir.ops.elementwise import ELEMENTWISE_OPS

# ONNX ops that map one-to-one onto the ember op of the same name, inputs and attributes.
_DIRECT = [
    name for name in ELEMENTWISE_OPS if name not in ("Clip", "Max", "Min", "Cast", "Gelu")
]


@onnx_op(*_DIRECT)
def _direct(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    attrs = {a.name: ctx.attr(node, a.name) for a in node.attribute}
    return [ctx.add(node.op_type, ctx.inputs(node), attrs)]


@onnx_op("Gelu")
def _gelu(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    return [ctx.add("Gelu", ctx.inputs(node), {"approximate": ctx.attr(node, "approximate", "none")})]


@onnx_op("Sum", "Mean", "Max", "Min")
def _variadic(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    values = ctx.inputs(node)
    op = {"Sum": "Add", "Mean": "Add", "Max": "Max", "Min": "Min"}[node.op_type]
    result = values[0]
    if len(values) == 1:
        result = ctx.add("Identity", [result])
    for value in values[1:]:
        result = ctx.add(op, [result, value])
    if node.op_type == "Mean" and len(values) > 1:
        dtype = ctx.type_of(result).dtype
        scale = ctx.constant(np.asarray(len(values), dtype=dtype.np_dtype))
        result = ctx.add("Div", [result, scale])
    return [result]


@onnx_op("Clip")
def _clip(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    if ctx.opset < 11 or any(a.name in ("min", "max") for a in node.attribute):
        lo, hi = ctx.attr(node, "min"), ctx.attr(node, "max")
    else:
        lo_a = ctx.const_input(node, 1, "min")
        hi_a = ctx.const_input(node, 2, "max")
        lo = None if lo_a is None else lo_a.reshape(-1)[0].item()
        hi = None if hi_a is None else hi_a.reshape(-1)[0].item()
    return [ctx.add("Clip", [ctx.input(node, 0)], {"min": lo, "max": hi})]


@onnx_op("Cast")
def _cast(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    to = DType.from_onnx(ctx.attr(node, "to"))
    saturate = ctx.attr(node, "saturate", 1)
    return [ctx.add("Cast", [ctx.input(node, 0)], {"to": to, "saturate": saturate})]


@onnx_op("CastLike")
def _cast_like(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    to = ctx.type_of(ctx.input(node, 1)).dtype
    saturate = ctx.attr(node, "saturate", 1)
    return [ctx.add("Cast", [ctx.input(node, 0)], {"to": to, "saturate": saturate})]


@onnx_op("BitCast")
def _bitcast(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    to = DType.from_onnx(ctx.attr(node, "to"))
    return [ctx.add("BitCast", [ctx.input(node, 0)], {"to": to})]


@onnx_op("SwiGLU")
def _swiglu(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """Swish(A, alpha) * B (opset 28): the gated activation of Llama-style MLPs. ONNX
    forbids broadcasting here, so unequal shapes are refused rather than broadcast."""
    gate, value = ctx.input(node, 0), ctx.input(node, 1)
    a_type, b_type = ctx.type_of(gate), ctx.type_of(value)
    if a_type.shape != b_type.shape or a_type.dtype != b_type.dtype:
        raise ShapeError(f"{ctx.where}: A {a_type} and B {b_type} must have the same shape "
                         f"and dtype (SwiGLU does not broadcast)")
    alpha = float(ctx.attr(node, "alpha", 1.0))
    return [ctx.add("Mul", [ctx.add("Swish", [gate], {"alpha": alpha}), value])]
