"""Converters of ONNX's decoding-state ops (onnx 1.23), lowered onto existing ops so that
they run on the device.

TensorScatter (opset 24) writes `update` into a copy of `past_cache` along `axis`, at
sequence positions write_indices[b] + s per batch b (modulo the cache length in circular
mode): a ScatterElements whose indices are computed with Add (and Div / Mul / Sub for the
modulo of non-negative positions) from write_indices.

CausalConvWithState (opset 27) is a depthwise causal 1-D convolution that carries its
last k - 1 inputs between calls: Concat(past_state or zeros, input) on the time axis,
a grouped Conv with the bias, an optional SiLU (Swish), and the last k - 1 steps of the
concatenation as present_state (a Slice).
"""

from __future__ import annotations

import numpy as np
import onnx

from ember.errors import ShapeError, UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import DType, Value
from ember.ir.ops.common import normalize_axis

__all__: list[str] = []


@onnx_op("TensorScatter")
def _tensor_scatter(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    past, update, write = (ctx.input(node, i) for i in range(3))
    if past is None or update is None:
        raise UnsupportedOpError(f"{ctx.where}: past_cache and update are required")
    mode = ctx.attr(node, "mode", "linear") or "linear"
    if mode not in ("linear", "circular"):
        raise UnsupportedOpError(f"{ctx.where}: mode {mode!r} is not linear or circular")
    cache, upd = ctx.type_of(past).shape, ctx.type_of(update).shape
    axis = normalize_axis(int(ctx.attr(node, "axis", -2)), len(cache), what="axis")
    if axis == 0 or len(upd) != len(cache) or upd[axis] > cache[axis] or any(
            u != c for i, (u, c) in enumerate(zip(upd, cache)) if i != axis):
        raise ShapeError(f"{ctx.where}: update {upd} does not fit past_cache {cache} on "
                         f"axis {axis} (axis 0 is the batch)")
    rank, length, steps = len(cache), cache[axis], upd[axis]
    start_shape = (cache[0],) + (1,) * (rank - 1)
    if write is None:
        start = ctx.constant(np.zeros(start_shape, np.int64))
    else:
        if ctx.type_of(write).shape != (cache[0],):
            raise ShapeError(f"{ctx.where}: write_indices {ctx.type_of(write).shape} must be "
                             f"[batch] = [{cache[0]}]")
        if ctx.type_of(write).dtype is not DType.INT64:
            write = ctx.add("Cast", [write], {"to": DType.INT64})
        start = ctx.add("Reshape", [write], {"shape": start_shape})
    offsets = np.arange(steps, dtype=np.int64).reshape(
        tuple(steps if i == axis else 1 for i in range(rank)))
    positions = ctx.add("Add", [start, ctx.constant(offsets)])
    if mode == "circular":  # p mod L for p >= 0: p - (p / L) * L
        n = ctx.constant(np.array(length, np.int64))
        positions = ctx.add("Sub", [positions, ctx.add("Mul", [ctx.add("Div", [positions, n]),
                                                              n])])
    positions = ctx.add("Expand", [positions], {"shape": upd})
    return [ctx.add("ScatterElements", [past, positions, update], {"axis": axis})]


@onnx_op("CausalConvWithState")
def _causal_conv_with_state(ctx: ImportContext, node: onnx.NodeProto) -> list[Value | None]:
    x, weight, bias, past = (ctx.input(node, i) for i in range(4))
    if x is None or weight is None:
        raise UnsupportedOpError(f"{ctx.where}: input and weight are required")
    activation = ctx.attr(node, "activation", "none") or "none"
    if activation not in ("none", "silu", "swish"):
        raise UnsupportedOpError(f"{ctx.where}: activation {activation!r} is not none, silu "
                                 f"or swish")
    xs, ws = ctx.type_of(x).shape, ctx.type_of(weight).shape
    if len(xs) != 3 or len(ws) != 3 or ws[:2] != (xs[1], 1):
        raise ShapeError(f"{ctx.where}: input {xs} must be [batch, channels, length] and "
                         f"weight {ws} [channels, 1, k]")
    batch, channels, length = xs
    k = ws[2]
    state_shape = (batch, channels, k - 1)
    if past is None:
        past = ctx.constant(np.zeros(state_shape, ctx.type_of(x).dtype.np_dtype))
    elif ctx.type_of(past).shape != state_shape:
        raise ShapeError(f"{ctx.where}: past_state {ctx.type_of(past).shape} must be "
                         f"{state_shape}")
    padded = ctx.add("Concat", [past, x], {"axis": 2}) if k > 1 else x
    inputs = [padded, weight] + ([] if bias is None else [bias])
    out = ctx.add("Conv", inputs, {"group": channels, "strides": (1,), "dilations": (1,),
                                   "pads": (0, 0)})
    if activation != "none":
        out = ctx.add("Swish", [out])
    total = length + k - 1
    present = ctx.add("Slice", [padded], {"starts": (total - (k - 1),), "ends": (total,),
                                          "axes": (2,)})
    return [out, present]
