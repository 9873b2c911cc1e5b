"""Converters of ONNX's linear-algebra ops.

Gemm becomes MatMul (transposes as attributes) plus a Mul by alpha and an Add of beta*C,
with constant scaling folded into whichever operand is a constant. Conv and ConvTranspose
get explicit pads: auto_pad and output_shape are resolved here, where shapes are static.
BatchNormalization in training mode is built from reductions (batch statistics).
"""

from __future__ import annotations

from collections.abc import Sequence

from dataclasses import dataclass

import numpy as np
import onnx

from ember.errors import ShapeError, UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import Value

__all__ = ["same_pads", "conv_transpose_pads", "conv_attrs"]

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


@onnx_op("MatMul")
def _matmul(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    return [ctx.add("MatMul", ctx.inputs(node)[:2])]


def _scaled(ctx: ImportContext, value: Value, factor: float) -> Value:
    """value * factor, folded to a constant when the value is one (ctx.add folds)."""
    dtype = ctx.type_of(value).dtype
    return ctx.add("Mul", [value, ctx.constant(np.asarray(factor, dtype=dtype.np_dtype))])


@onnx_op("Gemm")
def _gemm(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    a, b = ctx.input(node, 0), ctx.input(node, 1)
    c = ctx.input(node, 2)
    alpha = float(ctx.attr(node, "alpha", 1.0))
    beta = float(ctx.attr(node, "beta", 1.0))
    trans_a, trans_b = int(ctx.attr(node, "transA", 0)), int(ctx.attr(node, "transB", 0))
    for name, value in (("A", a), ("B", b)):
        if ctx.type_of(value).rank != 2:
            raise ShapeError(f"{ctx.where}: {name} must be 2-D, got {ctx.type_of(value).shape}")
    # Fold alpha into a constant operand (a weight) instead of scaling the product.
    if alpha != 1.0 and ctx.graph.constant_value(b) is not None:
        b, alpha = _scaled(ctx, b, alpha), 1.0
    elif alpha != 1.0 and ctx.graph.constant_value(a) is not None:
        a, alpha = _scaled(ctx, a, alpha), 1.0
    y = ctx.add("MatMul", [a, b], {"trans_a": trans_a, "trans_b": trans_b})
    if alpha != 1.0:
        y = _scaled(ctx, y, alpha)
    if c is not None and beta != 0.0:
        out_shape = ctx.type_of(y).shape
        c_shape = ctx.type_of(c).shape
        padded = (1,) * (2 - len(c_shape)) + tuple(c_shape)
        if len(c_shape) > 2 or any(d not in (1, o) for d, o in zip(padded, out_shape)):
            raise ShapeError(f"{ctx.where}: C of shape {c_shape} does not broadcast "
                             f"(unidirectionally) to the output shape {out_shape}")
        if beta != 1.0:
            c = _scaled(ctx, c, beta)
        y = ctx.add("Add", [y, c])
    return [y]


# -- Conv ---------------------------------------------------------------------------------------
def _ints(ctx: ImportContext, node: onnx.NodeProto, name: str, count: int,
          default: int) -> tuple[int, ...]:
    value = ctx.attr(node, name)
    if value is None or len(value) == 0:
        return (default,) * count
    value = tuple(int(v) for v in value)
    if len(value) != count:
        raise ShapeError(f"{ctx.where}: {name} {value} needs {count} values")
    return value


def same_pads(in_size: int, kernel: int, stride: int, dilation: int, upper: bool
              ) -> tuple[int, int]:
    """Pads (begin, end) that make a Conv's output ceil(in / stride) long; SAME_UPPER puts
    the odd pad at the end, SAME_LOWER at the beginning."""
    out = -(-in_size // stride)
    total = max(0, (out - 1) * stride + (kernel - 1) * dilation + 1 - in_size)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def _auto_pad(ctx: ImportContext, node: onnx.NodeProto) -> str:
    auto_pad = ctx.attr(node, "auto_pad", "NOTSET") or "NOTSET"
    if auto_pad not in _AUTO_PADS:
        raise UnsupportedOpError(f"{ctx.where}: auto_pad {auto_pad!r} is not one of {_AUTO_PADS}")
    return auto_pad


def _kernel_shape(ctx: ImportContext, node: onnx.NodeProto, w: Value) -> tuple[int, ...]:
    kernel = tuple(ctx.type_of(w).shape[2:])
    given = ctx.attr(node, "kernel_shape")
    if given is not None and len(given) and tuple(int(k) for k in given) != kernel:
        raise ShapeError(f"{ctx.where}: kernel_shape {tuple(given)} differs from the weight's "
                         f"spatial shape {kernel}")
    return kernel


@dataclass(frozen=True)
class _ConvCommon:
    """What ConvTranspose reads from its node (Conv: conv_attrs)."""

    inputs: list[Value]
    x_shape: tuple[int, ...]
    rank: int
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    auto_pad: str


def _conv_common(ctx: ImportContext, node: onnx.NodeProto) -> _ConvCommon:
    x, w, bias = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    x_shape = ctx.type_of(x).shape
    rank = len(x_shape) - 2
    if rank < 1:
        raise ShapeError(f"{ctx.where}: X must be (N, C, *spatial), got {x_shape}")
    return _ConvCommon([x, w] if bias is None else [x, w, bias], x_shape, rank,
                       _kernel_shape(ctx, node, w), _ints(ctx, node, "strides", rank, 1),
                       _ints(ctx, node, "dilations", rank, 1), _auto_pad(ctx, node))


def conv_attrs(ctx: ImportContext, node: onnx.NodeProto, x: Value, w: Value) -> dict:
    """Conv's attributes for input X and weight W of `node` (Conv, ConvInteger,
    QLinearConv), with auto_pad resolved to explicit pads (shapes are static)."""
    x_shape = ctx.type_of(x).shape
    rank = len(x_shape) - 2
    if rank < 1:
        raise ShapeError(f"{ctx.where}: X must be (N, C, *spatial), got {x_shape}")
    kernel = _kernel_shape(ctx, node, w)
    strides = _ints(ctx, node, "strides", rank, 1)
    dilations = _ints(ctx, node, "dilations", rank, 1)
    auto_pad = _auto_pad(ctx, node)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pairs = [same_pads(i, k, s, d, auto_pad == "SAME_UPPER")
                 for i, k, s, d in zip(x_shape[2:], kernel, strides, dilations)]
        pads = tuple(p[0] for p in pairs) + tuple(p[1] for p in pairs)
    elif auto_pad == "VALID":
        pads = (0,) * (2 * rank)
    else:
        pads = _ints(ctx, node, "pads", 2 * rank, 0)
    return {"strides": strides, "dilations": dilations, "pads": pads,
            "group": int(ctx.attr(node, "group", 1))}


@onnx_op("Conv")
def _conv(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x, w, bias = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    inputs = [x, w] if bias is None else [x, w, bias]
    return [ctx.add("Conv", inputs, conv_attrs(ctx, node, x, w))]


def conv_transpose_pads(in_spatial: Sequence[int], kernel: Sequence[int],
                        strides: Sequence[int], dilations: Sequence[int],
                        output_padding: Sequence[int], output_shape: Sequence[int],
                        upper: bool) -> tuple[int, ...]:
    """Pads (begins, then ends) that give a ConvTranspose the requested output shape, split
    as ONNX's reference does (the odd pad at the end for SAME_UPPER, else at the start).
    A negative pad is an extension of the output."""
    begins, ends = [], []
    for i, k, s, d, op, out in zip(in_spatial, kernel, strides, dilations, output_padding,
                                   output_shape):
        total = s * (i - 1) + op + (k - 1) * d + 1 - out
        small = total // 2
        begins.append(small if upper else total - small)
        ends.append(total - small if upper else small)
    return tuple(begins) + tuple(ends)


@onnx_op("ConvTranspose")
def _conv_transpose(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    c = _conv_common(ctx, node)
    x_shape, rank, kernel, strides, dilations, auto_pad = (
        c.x_shape, c.rank, c.kernel, c.strides, c.dilations, c.auto_pad)
    output_padding = _ints(ctx, node, "output_padding", rank, 0)
    output_shape = ctx.attr(node, "output_shape")
    if output_shape is not None and len(output_shape):
        output_shape = tuple(int(v) for v in output_shape)[-rank:]  # some give (N, C, ...)
        if len(output_shape) != rank:
            raise ShapeError(f"{ctx.where}: output_shape {output_shape} needs {rank} values")
    else:
        output_shape = None
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = tuple(i * s for i, s in zip(x_shape[2:], strides))
    # ONNX: an output_shape (given, or implied by SAME_*) generates the pads; VALID is none.
    if auto_pad == "VALID":
        pads = (0,) * (2 * rank)
    elif output_shape is not None:
        pads = conv_transpose_pads(x_shape[2:], kernel, strides, dilations, output_padding,
                                   output_shape, auto_pad == "SAME_UPPER")
    else:
        pads = _ints(ctx, node, "pads", 2 * rank, 0)
    attrs = {"strides": strides, "dilations": dilations, "pads": pads,
             "group": int(ctx.attr(node, "group", 1)), "output_padding": output_padding}
    return [ctx.add("ConvTranspose", c.inputs, attrs)]


@onnx_op("BatchNormalization")
def _batchnorm(ctx: ImportContext, node: onnx.NodeProto) -> list[Value | None]:
    inputs = ctx.inputs(node)[:5]
    epsilon = float(ctx.attr(node, "epsilon", 1e-5))
    if int(ctx.attr(node, "training_mode", 0)):
        return _batchnorm_training(ctx, node, inputs, epsilon)
    if len([o for o in node.output if o]) > 1:
        raise UnsupportedOpError(
            f"{ctx.where}: {len(node.output)} outputs (running mean/var) come only with "
            f"training_mode=1"
        )
    return [ctx.add("BatchNormalization", inputs, {"epsilon": epsilon})]


def _batchnorm_training(ctx: ImportContext, node: onnx.NodeProto, inputs: list,
                        epsilon: float) -> list[Value | None]:
    """training_mode=1: normalize by the batch's own statistics (mean and biased variance
    over every axis but the channel), and give the running statistics moved towards them
    by `momentum`, as ONNX defines. Built from reductions and elementwise ops, so it runs
    on the device; ember updates nothing in place (the running statistics are outputs)."""
    x, scale, bias, mean_in, var_in = inputs
    x_type = ctx.type_of(x)
    if x_type.rank < 2:
        raise UnsupportedOpError(f"{ctx.where}: input {x_type.shape} needs a channel axis")
    axes = tuple(a for a in range(x_type.rank) if a != 1)
    channels = (x_type.shape[1],) + (1,) * (x_type.rank - 2)
    momentum = float(ctx.attr(node, "momentum", 0.9))
    reduce = {"axes": axes, "keepdims": 1}
    batch_mean = ctx.add("ReduceMean", [x], reduce)
    centered = ctx.add("Sub", [x, batch_mean])
    batch_var = ctx.add("ReduceMean", [ctx.add("Mul", [centered, centered])], reduce)
    dtype = x_type.dtype.np_dtype
    std = ctx.add("Sqrt", [ctx.add("Add", [batch_var, ctx.constant(np.asarray(epsilon, dtype))])])
    per_channel = {"shape": channels}
    y = ctx.add("Add", [
        ctx.add("Mul", [ctx.add("Div", [centered, std]),
                        ctx.add("Reshape", [scale], per_channel)]),
        ctx.add("Reshape", [bias], per_channel)])
    outputs: list[Value | None] = [y]
    wanted = [i for i, name in enumerate(node.output) if name and i > 0]
    if any(i > 2 for i in wanted):
        raise UnsupportedOpError(f"{ctx.where}: the saved mean/variance outputs of opsets "
                                 f"before 14 are not produced; only Y and the running ones")
    for index, (running, batch) in ((1, (mean_in, batch_mean)), (2, (var_in, batch_var))):
        if index not in wanted:
            outputs.append(None)
            continue
        flat = ctx.add("Reshape", [batch], {"shape": (x_type.shape[1],)})
        kept = ctx.add("Mul", [running, ctx.constant(np.asarray(momentum, dtype))])
        moved = ctx.add("Mul", [flat, ctx.constant(np.asarray(1.0 - momentum, dtype))])
        outputs.append(ctx.add("Add", [kept, moved]))
    return outputs
