"""Converters of ONNX's quantized ops, of the com.microsoft quantized ops that onnxruntime's
tools write, and of GatherND / ScatterND / ScatterElements.

Per-axis scales and zero points are reshaped so that they broadcast against the data; an
absent zero point becomes a zero constant of the quantized type. Blocked forms (block_size
> 0) become BlockQuantize / BlockDequantize. The integer products of QLinearMatMul and
QLinearConv are requantized as onnxruntime does: the int32 sum (plus an int32 bias) is cast
to float32, multiplied by a_scale * b_scale / y_scale and quantized with scale 1 and the
output zero point. The com.microsoft element ops (QLinearAdd, ...) are their float op
between a DequantizeLinear and a QuantizeLinear.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from ember.errors import ShapeError, UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.frontends.onnx.linalg import conv_attrs
from ember.ir import DType, Value
from ember.ir.ops.common import normalize_axis
from ember.ir.ops.quant import DEQUANT_TYPES, QUANT_TYPES

__all__ = ["MICROSOFT"]

MICROSOFT = "com.microsoft"


# -- scales and zero points -------------------------------------------------------------------
def _reshape(ctx: ImportContext, value: Value, shape: tuple[int, ...]) -> Value:
    if ctx.type_of(value).shape == shape:
        return value
    return ctx.add("Reshape", [value], {"shape": shape})


def _zero(ctx: ImportContext, dtype: DType, shape: tuple[int, ...] = ()) -> Value:
    return ctx.constant(np.zeros(shape, dtype.np_dtype))


def _to_float32(ctx: ImportContext, value: Value) -> Value:
    if ctx.type_of(value).dtype is DType.FLOAT32:
        return value
    return ctx.add("Cast", [value], {"to": DType.FLOAT32})


def _scalar(ctx: ImportContext, value: Value, what: str) -> Value:
    """A per-tensor parameter (a scalar or a one-element tensor) as shape ()."""
    t = ctx.type_of(value)
    if t.size != 1:
        raise UnsupportedOpError(f"{ctx.where}: {what} has shape {t.shape}; only a scalar "
                                 f"(per-tensor) {what} is supported")
    return _reshape(ctx, value, ())


def _along_axis(ctx: ImportContext, value: Value, rank: int, axis: int | None,
                length: int, what: str) -> Value:
    """A per-tensor or per-axis parameter shaped to broadcast against a rank-`rank` tensor:
    () for one value, else the vector along `axis` (whose size is `length`)."""
    t = ctx.type_of(value)
    if t.size == 1 and t.rank <= 1:
        return _reshape(ctx, value, ())
    if t.rank != 1 or axis is None:
        raise ShapeError(f"{ctx.where}: {what} of shape {t.shape} must be a scalar or a "
                         f"vector along the quantized axis")
    if t.shape[0] != length:
        raise ShapeError(f"{ctx.where}: {what} has {t.shape[0]} values; the quantized axis "
                         f"{axis} has {length}")
    shape = [1] * rank
    shape[axis] = length
    return _reshape(ctx, value, tuple(shape))


def _quant_dtype(ctx: ImportContext, node: onnx.NodeProto, zero: Value | None) -> DType:
    """QuantizeLinear's output type: the zero point's, else output_dtype, else uint8."""
    given = int(ctx.attr(node, "output_dtype", 0) or 0)
    dtype = DType.from_onnx(given) if given else None
    if zero is not None:
        zero_dtype = ctx.type_of(zero).dtype
        if dtype is not None and dtype is not zero_dtype:
            raise ShapeError(f"{ctx.where}: output_dtype {dtype} differs from the zero "
                             f"point's dtype {zero_dtype}")
        dtype = zero_dtype
    dtype = dtype or DType.UINT8
    if dtype not in QUANT_TYPES:
        raise UnsupportedOpError(f"{ctx.where}: quantizing to {dtype} is not supported; "
                                 f"ember quantizes to {sorted(map(str, QUANT_TYPES))}")
    return dtype


def _linear_params(ctx: ImportContext, node: onnx.NodeProto, x: Value, scale: Value,
                   zero: Value | None, zero_dtype: DType) -> tuple[Value, Value, dict]:
    """(scale, zero, attrs) of a (De)QuantizeLinear node, blocked or broadcastable; the op
    to build is BlockQuantize/BlockDequantize exactly when attrs is not empty."""
    xt = ctx.type_of(x)
    block_size = int(ctx.attr(node, "block_size", 0) or 0)
    axis_attr = int(ctx.attr(node, "axis", 1))
    if block_size > 0:
        axis = normalize_axis(axis_attr, xt.rank, what=f"{ctx.where} axis")
        if zero is None:
            zero = _zero(ctx, zero_dtype, ctx.type_of(scale).shape)
        return scale, zero, {"axis": axis, "block_size": block_size}
    if block_size < 0:
        raise ShapeError(f"{ctx.where}: block_size {block_size} must be >= 0")
    per_axis = ctx.type_of(scale).size != 1
    axis = normalize_axis(axis_attr, xt.rank, what=f"{ctx.where} axis") if per_axis else None
    length = xt.shape[axis] if axis is not None else 1
    scale = _along_axis(ctx, scale, xt.rank, axis, length, "scale")
    zero = _zero(ctx, zero_dtype) if zero is None else \
        _along_axis(ctx, zero, xt.rank, axis, length, "zero point")
    return scale, zero, {}


# -- QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear -----------------------------------
@onnx_op("QuantizeLinear")
def _quantize_linear(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x, scale, zero = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    dtype = _quant_dtype(ctx, node, zero)
    precision = int(ctx.attr(node, "precision", 0) or 0)
    if precision and DType.from_onnx(precision) not in (DType.FLOAT32,
                                                        ctx.type_of(scale).dtype):
        raise UnsupportedOpError(f"{ctx.where}: precision {DType.from_onnx(precision)} is "
                                 f"not supported; ember divides in float32")
    scale, zero, blocked = _linear_params(ctx, node, x, scale, zero, dtype)
    saturate = int(ctx.attr(node, "saturate", 1))
    if blocked:
        return [ctx.add("BlockQuantize", [x, scale, zero], {**blocked, "saturate": saturate})]
    return [ctx.add("QuantizeLinear", [x, scale, zero], {"saturate": saturate})]


@onnx_op("DequantizeLinear")
def _dequantize_linear(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x, scale, zero = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    x_dtype = ctx.type_of(x).dtype
    if x_dtype not in DEQUANT_TYPES:
        raise UnsupportedOpError(f"{ctx.where}: dequantizing {x_dtype} is not supported; "
                                 f"ember dequantizes {sorted(map(str, DEQUANT_TYPES))}")
    given = int(ctx.attr(node, "output_dtype", 0) or 0)
    out_dtype = DType.from_onnx(given) if given else ctx.type_of(scale).dtype
    if out_dtype is not ctx.type_of(scale).dtype:
        scale = _to_float32(ctx, scale)  # computed in float32, cast once at the end
    scale, zero, blocked = _linear_params(ctx, node, x, scale, zero, x_dtype)
    op = "BlockDequantize" if blocked else "DequantizeLinear"
    y = ctx.add(op, [x, scale, zero], blocked)
    if ctx.type_of(y).dtype is not out_dtype:
        y = ctx.add("Cast", [y], {"to": out_dtype})
    return [y]


def _dynamic_quantize(ctx: ImportContext, x: Value) -> tuple[Value, Value, Value]:
    """ONNX's function body of DynamicQuantizeLinear, op for op: (y, y_scale, y_zero)."""
    if ctx.type_of(x).dtype is not DType.FLOAT32:
        raise UnsupportedOpError(f"{ctx.where}: dynamic quantization takes float32, got "
                                 f"{ctx.type_of(x).dtype}")
    rank = ctx.type_of(x).rank
    q_min = ctx.constant(np.float32(0.0))
    q_max = ctx.constant(np.float32(255.0))
    everything = {"axes": tuple(range(rank)), "keepdims": 0}
    x_min = ctx.add("Min", [ctx.add("ReduceMin", [x], everything), q_min])
    x_max = ctx.add("Max", [ctx.add("ReduceMax", [x], everything), q_min])
    scale = ctx.add("Div", [ctx.add("Sub", [x_max, x_min]), q_max])
    zero_fp = ctx.add("Sub", [q_min, ctx.add("Div", [x_min, scale])])
    zero_fp = ctx.add("Round", [ctx.add("Clip", [zero_fp], {"min": 0.0, "max": 255.0})])
    zero = ctx.add("Cast", [zero_fp], {"to": DType.UINT8})
    return ctx.add("QuantizeLinear", [x, scale, zero]), scale, zero


@onnx_op("DynamicQuantizeLinear")
def _dynamic_quantize_linear(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    return list(_dynamic_quantize(ctx, ctx.input(node, 0)))


# -- MatMulInteger, ConvInteger ---------------------------------------------------------------
def _per_row(ctx: ImportContext, value: Value, a: Value, what: str) -> Value:
    """A MatMul parameter of A: () per tensor, (M, 1) per row (given as (M,) or (..., M, 1)
    with unit leading axes)."""
    at, t = ctx.type_of(a), ctx.type_of(value)
    if t.size == 1:
        return _reshape(ctx, value, ())
    m = at.shape[-2] if at.rank >= 2 else None
    if m is not None and t.size == m and (t.shape == (m,) or t.shape[-2:] == (m, 1)):
        return _reshape(ctx, value, (m, 1))
    raise UnsupportedOpError(f"{ctx.where}: {what} of shape {t.shape} is not per tensor or "
                             f"per row of A {at.shape}")


def _per_column(ctx: ImportContext, value: Value, b: Value, what: str) -> Value:
    """A MatMul parameter of B: () per tensor, (N,) per column (given as (N,) or (..., 1, N)
    with unit leading axes)."""
    bt, t = ctx.type_of(b), ctx.type_of(value)
    if t.size == 1:
        return _reshape(ctx, value, ())
    n = bt.shape[-1] if bt.rank >= 2 else None
    if n is not None and t.size == n and t.shape[-1:] == (n,):
        return _reshape(ctx, value, (n,))
    raise UnsupportedOpError(f"{ctx.where}: {what} of shape {t.shape} is not per tensor or "
                             f"per column of B {bt.shape}")


def _matmul_integer_of(ctx: ImportContext, a: Value, b: Value, a_zero: Value | None,
                       b_zero: Value | None) -> Value:
    a_zero = _zero(ctx, ctx.type_of(a).dtype) if a_zero is None else \
        _per_row(ctx, a_zero, a, "a_zero_point")
    b_zero = _zero(ctx, ctx.type_of(b).dtype) if b_zero is None else \
        _per_column(ctx, b_zero, b, "b_zero_point")
    return ctx.add("MatMulInteger", [a, b, a_zero, b_zero])


@onnx_op("MatMulInteger")
def _matmul_integer(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    a, b, a_zero, b_zero = (ctx.input(node, i) for i in range(4))
    return [_matmul_integer_of(ctx, a, b, a_zero, b_zero)]


def _channel_zero(ctx: ImportContext, zero: Value | None, w: Value) -> Value:
    """ConvInteger's w_zero_point: () per tensor, (Cout,) per output channel."""
    wt = ctx.type_of(w)
    if zero is None:
        return _zero(ctx, wt.dtype)
    t = ctx.type_of(zero)
    if t.size == 1:
        return _reshape(ctx, zero, ())
    if t.shape == (wt.shape[0],):
        return zero
    raise UnsupportedOpError(f"{ctx.where}: w_zero_point of shape {t.shape} is not per "
                             f"tensor or per output channel of W {wt.shape}")


def _conv_integer_of(ctx: ImportContext, node: onnx.NodeProto, x: Value, w: Value,
                     x_zero: Value | None, w_zero: Value | None) -> Value:
    x_zero = _zero(ctx, ctx.type_of(x).dtype) if x_zero is None else \
        _scalar(ctx, x_zero, "x_zero_point")
    return ctx.add("ConvInteger", [x, w, x_zero, _channel_zero(ctx, w_zero, w)],
                   conv_attrs(ctx, node, x, w))


@onnx_op("ConvInteger")
def _conv_integer(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x, w, x_zero, w_zero = (ctx.input(node, i) for i in range(4))
    return [_conv_integer_of(ctx, node, x, w, x_zero, w_zero)]


# -- QLinearMatMul, QLinearConv ---------------------------------------------------------------
def _requantize(ctx: ImportContext, product: Value, multiplier: Value,
                y_zero: Value | None, y_dtype: DType) -> Value:
    """quantize(float32(product) * multiplier) with scale 1 and the output zero point."""
    y = ctx.add("Mul", [ctx.add("Cast", [product], {"to": DType.FLOAT32}), multiplier])
    zero = _zero(ctx, y_dtype) if y_zero is None else _scalar(ctx, y_zero, "y_zero_point")
    return ctx.add("QuantizeLinear", [y, ctx.constant(np.float32(1.0)), zero])


def _multiplier(ctx: ImportContext, a_scale: Value, b_scale: Value, y_scale: Value) -> Value:
    """a_scale * b_scale / y_scale in float32 (folded when the scales are constants)."""
    product = ctx.add("Mul", [_to_float32(ctx, a_scale), _to_float32(ctx, b_scale)])
    return ctx.add("Div", [product, _to_float32(ctx, _scalar(ctx, y_scale, "y_scale"))])


@onnx_op("QLinearMatMul")
def _qlinear_matmul(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = \
        (ctx.input(node, i) for i in range(8))
    product = _matmul_integer_of(ctx, a, b, a_zero, b_zero)
    multiplier = _multiplier(ctx, _per_row(ctx, a_scale, a, "a_scale"),
                             _per_column(ctx, b_scale, b, "b_scale"), y_scale)
    y_dtype = ctx.type_of(y_zero).dtype if y_zero is not None else ctx.type_of(a).dtype
    return [_requantize(ctx, product, multiplier, y_zero, y_dtype)]


@onnx_op("QLinearConv")
def _qlinear_conv(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, bias = \
        (ctx.input(node, i) for i in range(9))
    xt, wt = ctx.type_of(x), ctx.type_of(w)
    product = _conv_integer_of(ctx, node, x, w, x_zero, w_zero)
    channels = (1, wt.shape[0]) + (1,) * (xt.rank - 2)
    if bias is not None:
        product = ctx.add("Add", [product, _reshape(ctx, bias, channels)])
    w_scale = _along_axis(ctx, w_scale, xt.rank, 1, wt.shape[0], "w_scale")
    multiplier = _multiplier(ctx, _scalar(ctx, x_scale, "x_scale"), w_scale, y_scale)
    y_dtype = ctx.type_of(y_zero).dtype if y_zero is not None else xt.dtype
    return [_requantize(ctx, product, multiplier, y_zero, y_dtype)]


def _swap_last_axes(ctx: ImportContext, value: Value) -> Value:
    rank = ctx.type_of(value).rank
    return ctx.add("Transpose", [value], {"perm": (*range(rank - 2), rank - 1, rank - 2)})


@onnx_op("QGemm", domain=MICROSOFT)
def _qgemm(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """onnxruntime's quantized Gemm (its QOperator format writes it for Gemm): the int32
    product plus the int32 bias C, times alpha * a_scale * b_scale; float32 without
    y_scale, else requantized like QLinearMatMul."""
    a, a_scale, a_zero, b, b_scale, b_zero, bias, y_scale, y_zero = \
        (ctx.input(node, i) for i in range(9))
    if int(ctx.attr(node, "transA", 0)):
        a = _swap_last_axes(ctx, a)
    if int(ctx.attr(node, "transB", 0)):
        b = _swap_last_axes(ctx, b)
    product = _matmul_integer_of(ctx, a, b, a_zero, b_zero)
    if bias is not None:
        product = ctx.add("Add", [product, bias])
    scale = ctx.add("Mul", [_to_float32(ctx, _scalar(ctx, a_scale, "a_scale")),
                            _to_float32(ctx, _per_column(ctx, b_scale, b, "b_scale"))])
    alpha = float(ctx.attr(node, "alpha", 1.0))
    if alpha != 1.0:
        scale = ctx.add("Mul", [scale, ctx.constant(np.float32(alpha))])
    if y_scale is None:
        return [ctx.add("Mul", [ctx.add("Cast", [product], {"to": DType.FLOAT32}), scale])]
    multiplier = ctx.add("Div", [scale, _to_float32(ctx, _scalar(ctx, y_scale, "y_scale"))])
    y_dtype = ctx.type_of(y_zero).dtype if y_zero is not None else ctx.type_of(a).dtype
    return [_requantize(ctx, product, multiplier, y_zero, y_dtype)]


# -- com.microsoft: float ops between DequantizeLinear and QuantizeLinear ---------------------
def _dequantized(ctx: ImportContext, x: Value, scale: Value, zero: Value | None) -> Value:
    dtype = ctx.type_of(x).dtype
    zero = _zero(ctx, dtype) if zero is None else _scalar(ctx, zero, "zero point")
    return ctx.add("DequantizeLinear", [x, _scalar(ctx, scale, "scale"), zero])


def _quantized(ctx: ImportContext, y: Value, scale: Value, zero: Value | None,
               dtype: DType) -> Value:
    zero = _zero(ctx, dtype) if zero is None else _scalar(ctx, zero, "zero point")
    return ctx.add("QuantizeLinear", [y, _scalar(ctx, scale, "scale"), zero])


@onnx_op("QLinearAdd", "QLinearMul", domain=MICROSOFT)
def _qlinear_binary(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    a, a_scale, a_zero, b, b_scale, b_zero, c_scale, c_zero = \
        (ctx.input(node, i) for i in range(8))
    op = {"QLinearAdd": "Add", "QLinearMul": "Mul"}[node.op_type]
    y = ctx.add(op, [_dequantized(ctx, a, a_scale, a_zero),
                     _dequantized(ctx, b, b_scale, b_zero)])
    return [_quantized(ctx, y, c_scale, c_zero, ctx.type_of(a).dtype)]


@onnx_op("QLinearSigmoid", domain=MICROSOFT)
def _qlinear_sigmoid(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x, x_scale, x_zero, y_scale, y_zero = (ctx.input(node, i) for i in range(5))
    y = ctx.add("Sigmoid", [_dequantized(ctx, x, x_scale, x_zero)])
    return [_quantized(ctx, y, y_scale, y_zero, ctx.type_of(x).dtype)]


@onnx_op("QLinearSoftmax", domain=MICROSOFT)
def _qlinear_softmax(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """`opset` is that of the Softmax it replaced: before 13 the block [axis:] is one row."""
    x, x_scale, x_zero, y_scale, y_zero = (ctx.input(node, i) for i in range(5))
    attrs = {"axis": int(ctx.attr(node, "axis", -1)),
             "flatten": int(int(ctx.attr(node, "opset", 13)) < 13)}
    y = ctx.add("Softmax", [_dequantized(ctx, x, x_scale, x_zero)], attrs)
    dtype = ctx.type_of(y_zero).dtype if y_zero is not None else ctx.type_of(x).dtype
    return [_quantized(ctx, y, y_scale, y_zero, dtype)]


@onnx_op("QLinearGlobalAveragePool", domain=MICROSOFT)
def _qlinear_global_average_pool(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x, x_scale, x_zero, y_scale, y_zero = (ctx.input(node, i) for i in range(5))
    rank = ctx.type_of(x).rank
    if rank < 3:
        raise ShapeError(f"{ctx.where}: X must have a spatial axis, got shape "
                         f"{ctx.type_of(x).shape}")
    y = _dequantized(ctx, x, x_scale, x_zero)
    channels_last = bool(ctx.attr(node, "channels_last", 0))
    if channels_last:  # (N, *spatial, C) -> (N, C, *spatial) and back
        y = ctx.add("Transpose", [y], {"perm": (0, rank - 1, *range(1, rank - 1))})
    y = ctx.add("GlobalAveragePool", [y])
    if channels_last:
        y = ctx.add("Transpose", [y], {"perm": (0, *range(2, rank), 1)})
    return [_quantized(ctx, y, y_scale, y_zero, ctx.type_of(x).dtype)]


@onnx_op("QLinearConcat", domain=MICROSOFT)
def _qlinear_concat(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    y_scale, y_zero = ctx.input(node, 0), ctx.input(node, 1)
    if (len(node.input) - 2) % 3 or len(node.input) < 5:
        raise ShapeError(f"{ctx.where}: inputs after Y_scale and Y_zero_point come in "
                         f"(X, X_scale, X_zero_point) triples; got {len(node.input) - 2}")
    parts = [_dequantized(ctx, *(ctx.input(node, i + j) for j in range(3)))
             for i in range(2, len(node.input), 3)]
    rank = ctx.type_of(parts[0]).rank
    axis = normalize_axis(int(ctx.attr(node, "axis")), rank, what=f"{ctx.where} axis")
    y = ctx.add("Concat", parts, {"axis": axis})
    return [_quantized(ctx, y, y_scale, y_zero, ctx.type_of(y_zero).dtype)]


@onnx_op("DynamicQuantizeMatMul", domain=MICROSOFT)
def _dynamic_quantize_matmul(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    a, b, b_scale, b_zero, bias = (ctx.input(node, i) for i in range(5))
    a_q, a_scale, a_zero = _dynamic_quantize(ctx, a)
    product = _matmul_integer_of(ctx, a_q, b, a_zero, b_zero)
    scale = ctx.add("Mul", [a_scale, _per_column(ctx, b_scale, b, "b_scale")])
    y = ctx.add("Mul", [ctx.add("Cast", [product], {"to": DType.FLOAT32}), scale])
    if bias is not None:
        y = ctx.add("Add", [y, bias])
    return [y]


# -- com.microsoft MatMulNBits ----------------------------------------------------------------
def _block_zeros(ctx: ImportContext, node: onnx.NodeProto, bits: int, n: int,
                 n_blocks: int) -> Value:
    """MatMulNBits' zero points as (N, n_blocks) uint8, one value per byte. Packed uint8
    zero points are unpacked; float ones must hold integers of the quantized range (the
    integer weight form cannot express a fractional zero point)."""
    zeros = ctx.const_input(node, 3, "zero_points")
    if zeros is None:
        return ctx.constant(np.full((n, n_blocks), 1 << (bits - 1), np.uint8))
    if zeros.dtype == np.uint8:
        packed = zeros.reshape(n, -1)
        if bits == 4:
            packed = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)
        if packed.shape[1] < n_blocks:
            raise ShapeError(f"{ctx.where}: zero_points of shape {zeros.shape} hold fewer "
                             f"than {n_blocks} blocks per row")
        return ctx.constant(np.ascontiguousarray(packed[:, :n_blocks]))
    values = zeros.astype(np.float64).reshape(n, n_blocks)
    if not np.all((values == np.round(values)) & (values >= 0) & (values < 1 << bits)):
        raise UnsupportedOpError(f"{ctx.where}: float zero points that are not integers in "
                                 f"[0, {(1 << bits) - 1}] are not supported")
    return ctx.constant(values.astype(np.uint8))


@onnx_op("MatMulNBits", domain=MICROSOFT)
def _matmul_nbits(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    a, w, scales = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    k, n = int(ctx.attr(node, "K")), int(ctx.attr(node, "N"))
    bits, block_size = int(ctx.attr(node, "bits", 4)), int(ctx.attr(node, "block_size"))
    if bits not in (4, 8):
        raise UnsupportedOpError(f"{ctx.where}: bits={bits}; ember supports 4 and 8")
    if int(ctx.attr(node, "weight_prepacked", 0) or 0):
        raise UnsupportedOpError(f"{ctx.where}: prepacked weights are not supported")
    if ctx.input(node, 4) is not None:
        raise UnsupportedOpError(f"{ctx.where}: g_idx (deprecated) is not supported")
    n_blocks = math.ceil(k / block_size)
    scales = _reshape(ctx, scales, (n, n_blocks))
    zeros = _block_zeros(ctx, node, bits, n, n_blocks)
    attrs = {"bits": bits, "block_size": block_size, "k": k, "n": n}
    y = ctx.add("BlockQuantMatMul", [a, w, scales, zeros], attrs)
    bias = ctx.input(node, 5)
    if bias is not None:
        y = ctx.add("Add", [y, bias])
    return [y]


# -- GatherND, ScatterND, ScatterElements ------------------------------------------------------
@onnx_op("GatherND")
def _gather_nd(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    attrs = {"batch_dims": int(ctx.attr(node, "batch_dims", 0))}
    return [ctx.add("GatherND", [ctx.input(node, 0), ctx.input(node, 1)], attrs)]


@onnx_op("ScatterND")
def _scatter_nd(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    attrs = {"reduction": ctx.attr(node, "reduction", "none") or "none"}
    return [ctx.add("ScatterND", ctx.inputs(node)[:3], attrs)]


@onnx_op("ScatterElements")
def _scatter_elements(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    data = ctx.input(node, 0)
    axis = normalize_axis(int(ctx.attr(node, "axis", 0)), ctx.type_of(data).rank,
                          what=f"{ctx.where} axis")
    attrs = {"axis": axis, "reduction": ctx.attr(node, "reduction", "none") or "none"}
    return [ctx.add("ScatterElements", ctx.inputs(node)[:3], attrs)]
