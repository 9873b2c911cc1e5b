"""Converters of ONNX's pooling, softmax and normalization ops.

auto_pad becomes explicit pads here (shapes are static after import), so ember's pooling
ops only know explicit geometry. Softmax before opset 13 normalized the flattened
[axis:] block; that becomes the op's `flatten` flag.
"""

from __future__ import annotations

import onnx

from ember.errors import UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import DType, Value
from ember.ir.ops.pool import AUTO_PADS, resolve_auto_pad

__all__: list[str] = []


def _wanted(node: onnx.NodeProto, index: int) -> bool:
    """Whether optional output `index` is asked for (present with a non-empty name)."""
    return index < len(node.output) and bool(node.output[index])


@onnx_op("MaxPool", "AveragePool")
def _pool(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    shape = ctx.type_of(x).shape
    kernel = ctx.attr(node, "kernel_shape")
    if kernel is None:
        raise UnsupportedOpError(f"{ctx.where}: attribute kernel_shape is required")
    kernel = [int(v) for v in kernel]
    k = len(kernel)
    strides = [int(v) for v in ctx.attr(node, "strides", None) or [1] * k]
    dilations = [int(v) for v in ctx.attr(node, "dilations", None) or [1] * k]
    pads = [int(v) for v in ctx.attr(node, "pads", None) or [0] * (2 * k)]
    ceil_mode = int(ctx.attr(node, "ceil_mode", 0))
    auto_pad = ctx.attr(node, "auto_pad", "NOTSET") or "NOTSET"
    if auto_pad not in AUTO_PADS:
        raise UnsupportedOpError(f"{ctx.where}: auto_pad {auto_pad!r} is not one of {AUTO_PADS}")
    if auto_pad != "NOTSET":
        if len(shape) != k + 2 or len(strides) != k or len(dilations) != k:
            raise UnsupportedOpError(
                f"{ctx.where}: kernel_shape {kernel}, strides {strides} and dilations "
                f"{dilations} do not fit input shape {shape}")
        pads = list(resolve_auto_pad(auto_pad, shape[2:], kernel, strides, dilations))
        ceil_mode = 0  # the SAME/VALID output size is already exact
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": dilations,
             "ceil_mode": ceil_mode}
    if node.op_type == "MaxPool":
        attrs["storage_order"] = int(ctx.attr(node, "storage_order", 0))
        attrs["indices"] = int(_wanted(node, 1))
    else:
        attrs["count_include_pad"] = int(ctx.attr(node, "count_include_pad", 0))
    return list(ctx.add_multi(node.op_type, [x], attrs))


@onnx_op("GlobalMaxPool", "GlobalAveragePool")
def _global_pool(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    return [ctx.add(node.op_type, [ctx.input(node, 0)])]


@onnx_op("Softmax", "LogSoftmax")
def _softmax(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    legacy = ctx.opset < 13  # before 13: the block [axis:] flattened, default axis 1
    axis = int(ctx.attr(node, "axis", 1 if legacy else -1))
    return [ctx.add(node.op_type, [ctx.input(node, 0)], {"axis": axis, "flatten": int(legacy)})]


@onnx_op("LayerNormalization")
def _layer_norm(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    stash = DType.from_onnx(int(ctx.attr(node, "stash_type", 1)))
    stats = _wanted(node, 1) or _wanted(node, 2)
    inputs = [v for v in ctx.inputs(node)[:3] if v is not None]
    if ctx.input(node, 1) is None:
        raise UnsupportedOpError(f"{ctx.where}: input Scale is required")
    attrs = {"axis": int(ctx.attr(node, "axis", -1)),
             "epsilon": float(ctx.attr(node, "epsilon", 1e-5)),
             "stash_type": stash, "stats": int(stats)}
    return list(ctx.add_multi("LayerNormalization", inputs, attrs))


@onnx_op("RMSNormalization")
def _rms_norm(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    if ctx.input(node, 1) is None:
        raise UnsupportedOpError(f"{ctx.where}: input scale is required")
    attrs = {"axis": int(ctx.attr(node, "axis", -1)),
             "epsilon": float(ctx.attr(node, "epsilon", 1e-5)),
             "stash_type": DType.from_onnx(int(ctx.attr(node, "stash_type", 1)))}
    return [ctx.add("RMSNormalization", [ctx.input(node, 0), ctx.input(node, 1)], attrs)]


@onnx_op("InstanceNormalization")
def _instance_norm(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    return [ctx.add("InstanceNormalization", ctx.inputs(node)[:3],
                    {"epsilon": float(ctx.attr(node, "epsilon", 1e-5))})]


@onnx_op("LRN")
def _lrn(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    size = ctx.attr(node, "size")
    if size is None:
        raise UnsupportedOpError(f"{ctx.where}: attribute size is required")
    attrs = {"alpha": float(ctx.attr(node, "alpha", 1e-4)),
             "beta": float(ctx.attr(node, "beta", 0.75)),
             "bias": float(ctx.attr(node, "bias", 1.0)),
             "size": int(size)}
    return [ctx.add("LRN", [ctx.input(node, 0)], attrs)]
