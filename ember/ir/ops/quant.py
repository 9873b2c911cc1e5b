"""Quantized ops: linear (de)quantization, blocked (de)quantization, integer MatMul/Conv and
the weight-only quantized MatMul of 4/8-bit packed weights.

Scales and zero points are ordinary inputs that broadcast against the data (the importer
reshapes per-axis vectors and materializes absent zero points). The references follow the
ONNX specification, with two choices where it leaves room: the division of QuantizeLinear is
done in float32 (float16 promoted, as the kernels compute), and a NaN quantizes to the zero
point (+-inf saturate).

DequantizeLinear and BlockDequantize of constants are not folded into float constants where
that would widen them (`extra["fold_constants"]` is False, see `OpDef.folds`): the integer
weights are 4x/8x smaller, and lowering rewrites the consumers to read them directly. An
int32 bias folds (its float form is no larger).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.common import broadcast_shapes
from ember.ir.ops.fused import apply_epilogue, epilogue_inputs, infer_epilogue
from ember.ir.ops.linalg import conv_geometry, conv_reference, matmul_dims
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = [
    "QUANT_TYPES", "SCALE_TYPES", "DEQUANT_TYPES", "INTEGER_OPERAND_TYPES",
    "quant_range", "quantize_reference", "dequantize_reference", "expand_blocks",
    "unpack_block_weights",
]

# Types a QuantizeLinear produces (int4/uint4/int2/uint2 are host-only: no OpenCL type).
QUANT_TYPES = frozenset({DType.INT8, DType.UINT8, DType.INT16, DType.UINT16, DType.INT4,
                         DType.UINT4, DType.INT2, DType.UINT2})
DEQUANT_TYPES = QUANT_TYPES | {DType.INT32}
SCALE_TYPES = frozenset({DType.FLOAT32, DType.FLOAT16})
INTEGER_OPERAND_TYPES = frozenset({DType.INT8, DType.UINT8})

_F32 = np.float32


def quant_range(dtype: DType) -> tuple[int, int]:
    """The representable range of an integer quantized type."""
    import ml_dtypes  # loaded when first needed (ir/dtypes.py)

    info = ml_dtypes.iinfo(dtype.np_dtype)
    return int(info.min), int(info.max)


def _require(t: TensorType, allowed: frozenset[DType], op: str, what: str) -> None:
    if t.dtype not in allowed:
        names = sorted(str(d) for d in allowed)
        raise DTypeError(f"{op} {what} has dtype {t.dtype}; expected one of {names}")


# -- references -------------------------------------------------------------------------------
def quantize_reference(x: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """saturate(rint(x / scale) + zero): float32 division, ties to even, NaN -> zero point."""
    dtype = DType.from_numpy(zero.dtype)
    low, high = quant_range(dtype)
    with np.errstate(all="ignore"):
        q = np.rint(np.asarray(x).astype(_F32) / np.asarray(scale).astype(_F32))
    # float64 holds every rint(q) + zero exactly below 2**53 and saturates beyond.
    q = np.where(np.isnan(q), 0.0, q.astype(np.float64)) + zero.astype(np.float64)
    return np.clip(q, low, high).astype(dtype.np_dtype)


def dequantize_reference(x: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """(float32(x) - float32(zero)) * scale, in float32, then cast to the scale's dtype."""
    diff = np.asarray(x).astype(_F32) - np.asarray(zero).astype(_F32)
    with np.errstate(over="ignore"):  # beyond float16's range is inf, as a cast makes it
        return (diff * np.asarray(scale).astype(_F32)).astype(scale.dtype)


def expand_blocks(blocked: np.ndarray, axis: int, block_size: int, length: int) -> np.ndarray:
    """Per-block values repeated to one per element along `axis` (the last block cut)."""
    repeated = np.repeat(blocked, block_size, axis=axis)
    return np.take(repeated, np.arange(length), axis=axis)


# -- QuantizeLinear / DequantizeLinear ---------------------------------------------------------
def _infer_quantize(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x, scale, zero = inputs
    _require(x, SCALE_TYPES, "QuantizeLinear", "input x")
    _require(scale, SCALE_TYPES, "QuantizeLinear", "input scale")
    _require(zero, QUANT_TYPES, "QuantizeLinear", "input zero")
    return (TensorType(broadcast_shapes(x.shape, scale.shape, zero.shape), zero.dtype),)


def _quantize(x, scale, zero, *, saturate: int = 1) -> np.ndarray:
    shape = broadcast_shapes(x.shape, scale.shape, zero.shape)
    return np.broadcast_to(quantize_reference(x, scale, zero), shape)


def _infer_dequantize(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x, scale, zero = inputs
    _require(x, DEQUANT_TYPES, "DequantizeLinear", "input x")
    _require(scale, SCALE_TYPES, "DequantizeLinear", "input scale")
    if zero.dtype != x.dtype:
        raise DTypeError(f"DequantizeLinear input zero has dtype {zero.dtype}; expected x's "
                         f"dtype {x.dtype}")
    return (TensorType(broadcast_shapes(x.shape, scale.shape, zero.shape), scale.dtype),)


def _dequantize(x, scale, zero) -> np.ndarray:
    shape = broadcast_shapes(x.shape, scale.shape, zero.shape)
    return np.broadcast_to(dequantize_reference(x, scale, zero), shape)


# -- BlockQuantize / BlockDequantize ------------------------------------------------------------
def _check_blocked(op: str, x: TensorType, scale: TensorType, zero: TensorType,
                   attrs: Attrs) -> None:
    axis, block_size = attrs["axis"], attrs["block_size"]
    if not 0 <= axis < x.rank:
        raise ShapeError(f"{op} axis {axis} is out of range for input x of shape {x.shape} "
                         f"(normalized axes are >= 0)")
    if block_size < 1:
        raise ShapeError(f"{op} block_size must be >= 1, got {block_size}")
    blocks = list(x.shape)
    blocks[axis] = math.ceil(x.shape[axis] / block_size)
    for name, t in (("scale", scale), ("zero", zero)):
        if t.shape != tuple(blocks):
            raise ShapeError(f"{op} input {name} has shape {t.shape}; expected {tuple(blocks)} "
                             f"(x {x.shape} in blocks of {block_size} along axis {axis})")


def _infer_block_quantize(inputs: Sequence[TensorType], attrs: Attrs
                          ) -> tuple[TensorType, ...]:
    x, scale, zero = inputs
    _require(x, SCALE_TYPES, "BlockQuantize", "input x")
    _require(scale, SCALE_TYPES, "BlockQuantize", "input scale")
    _require(zero, QUANT_TYPES, "BlockQuantize", "input zero")
    _check_blocked("BlockQuantize", x, scale, zero, attrs)
    return (x.with_dtype(zero.dtype),)


def _block_quantize(x, scale, zero, *, axis: int, block_size: int, saturate: int = 1):
    n = x.shape[axis]
    return quantize_reference(x, expand_blocks(scale, axis, block_size, n),
                              expand_blocks(zero, axis, block_size, n))


def _infer_block_dequantize(inputs: Sequence[TensorType], attrs: Attrs
                            ) -> tuple[TensorType, ...]:
    x, scale, zero = inputs
    _require(x, DEQUANT_TYPES, "BlockDequantize", "input x")
    _require(scale, SCALE_TYPES, "BlockDequantize", "input scale")
    if zero.dtype != x.dtype:
        raise DTypeError(f"BlockDequantize input zero has dtype {zero.dtype}; expected x's "
                         f"dtype {x.dtype}")
    _check_blocked("BlockDequantize", x, scale, zero, attrs)
    return (x.with_dtype(scale.dtype),)


def _block_dequantize(x, scale, zero, *, axis: int, block_size: int):
    n = x.shape[axis]
    return dequantize_reference(x, expand_blocks(scale, axis, block_size, n),
                                expand_blocks(zero, axis, block_size, n))


def _operands(inputs: Sequence[TensorType], epilogue, op: str, names: str
              ) -> Sequence[TensorType]:
    """The four operands of an integer or blocked product, after checking that the rest
    are its epilogue's inputs."""
    if len(inputs) != 4 + epilogue_inputs(epilogue):
        raise ShapeError(f"{op} takes {names} and {epilogue_inputs(epilogue)} epilogue "
                         f"input(s), got {len(inputs)}")
    return inputs[:4]


# -- MatMulInteger ----------------------------------------------------------------------------
def _infer_matmul_integer(inputs: Sequence[TensorType], attrs: Attrs
                          ) -> tuple[TensorType, ...]:
    epilogue = attrs["epilogue"]
    a, b, a_zero, b_zero = _operands(inputs, epilogue, "MatMulInteger", "A, B, a_zero, b_zero")
    _require(a, INTEGER_OPERAND_TYPES, "MatMulInteger", "input A")
    _require(b, INTEGER_OPERAND_TYPES, "MatMulInteger", "input B")
    dims = matmul_dims(a.shape, b.shape)
    _check_zeros("MatMulInteger", (
        ("a_zero", a_zero, a, {(), (dims.m, 1)} if a.rank >= 2 else {()}),
        ("b_zero", b_zero, b, {(), (dims.n,)} if b.rank >= 2 else {()}),
    ))
    base = TensorType(dims.out_shape, DType.INT32)
    return (infer_epilogue(base, inputs[4:], epilogue, "MatMulInteger"),)


def _check_zeros(op: str, checks) -> None:
    """Each zero point (name, type, its operand's type, allowed shapes) has its operand's
    dtype and one of the allowed shapes."""
    for name, zero, operand, shapes in checks:
        if zero.dtype != operand.dtype:
            raise DTypeError(f"{op} input {name} has dtype {zero.dtype}; expected "
                             f"{operand.dtype} (its operand's)")
        if zero.shape not in shapes:
            raise ShapeError(f"{op} input {name} has shape {zero.shape}; expected one of "
                             f"{sorted(shapes)}")


def _matmul_integer(a, b, a_zero, b_zero, *extras, epilogue=None) -> np.ndarray:
    dims = matmul_dims(a.shape, b.shape)
    # int64 sums are exact; the cast wraps modulo 2**32 as int32 accumulation does.
    a64 = a.astype(np.int64) - a_zero.astype(np.int64)
    b64 = b.astype(np.int64) - b_zero.astype(np.int64)
    product = np.matmul(a64, b64).astype(np.int32).reshape(dims.out_shape)
    return apply_epilogue(product, extras, epilogue)


# -- ConvInteger ------------------------------------------------------------------------------
def _infer_conv_integer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    epilogue = attrs["epilogue"]
    x, w, x_zero, w_zero = _operands(inputs, epilogue, "ConvInteger", "X, W, x_zero, w_zero")
    _require(x, INTEGER_OPERAND_TYPES, "ConvInteger", "input X")
    _require(w, INTEGER_OPERAND_TYPES, "ConvInteger", "input W")
    g = conv_geometry(x.shape, w.shape, attrs)
    _check_zeros("ConvInteger", (("x_zero", x_zero, x, {()}),
                                 ("w_zero", w_zero, w, {(), (g.out_channels,)})))
    base = TensorType(g.out_shape, DType.INT32)
    return (infer_epilogue(base, inputs[4:], epilogue, "ConvInteger"),)


def _conv_integer(x, w, x_zero, w_zero, *extras, strides=(), dilations=(), pads=(),
                  group: int = 1, epilogue=None) -> np.ndarray:
    # Subtracting before padding makes padded taps read x_zero, i.e. contribute 0.
    x64 = x.astype(np.int64) - x_zero.astype(np.int64)
    w_zero = w_zero.astype(np.int64).reshape((-1,) + (1,) * (w.ndim - 1)) if w_zero.ndim \
        else w_zero.astype(np.int64)
    w64 = w.astype(np.int64) - w_zero
    y = conv_reference(x64, w64, strides=strides, dilations=dilations, pads=pads, group=group)
    return apply_epilogue(y.astype(np.int32), extras, epilogue)


# -- BlockQuantMatMul -------------------------------------------------------------------------
def unpack_block_weights(w: np.ndarray, bits: int, k: int) -> np.ndarray:
    """(N, n_blocks, block_size * bits // 8) uint8 -> (N, k) quantized values; 4-bit values
    sit two per byte, element k of a block in the low nibble when k is even."""
    n = w.shape[0]
    if bits == 8:
        q = w.reshape(n, -1)
    else:
        q = np.stack([w & 0x0F, w >> 4], axis=-1).reshape(n, -1)
    return q[:, :k]


def _infer_block_quant_matmul(inputs: Sequence[TensorType], attrs: Attrs
                              ) -> tuple[TensorType, ...]:
    epilogue = attrs["epilogue"]
    a, w, scales, zeros = _operands(inputs, epilogue, "BlockQuantMatMul", "A, W, scales, zeros")
    bits, block_size, k, n = attrs["bits"], attrs["block_size"], attrs["k"], attrs["n"]
    if block_size < 16 or block_size & (block_size - 1):
        raise ShapeError(f"BlockQuantMatMul block_size must be a power of two >= 16, got "
                         f"{block_size}")
    _require(a, SCALE_TYPES, "BlockQuantMatMul", "input A")
    _require(scales, SCALE_TYPES, "BlockQuantMatMul", "input scales")
    _require(w, frozenset({DType.UINT8}), "BlockQuantMatMul", "input W")
    _require(zeros, frozenset({DType.UINT8}), "BlockQuantMatMul", "input zeros")
    if a.rank < 1 or a.shape[-1] != k:
        raise ShapeError(f"BlockQuantMatMul input A has shape {a.shape}; expected (..., {k})")
    n_blocks = math.ceil(k / block_size)
    expected = {"W": (n, n_blocks, block_size * bits // 8), "scales": (n, n_blocks),
                "zeros": (n, n_blocks)}
    for name, t in zip(("W", "scales", "zeros"), (w, scales, zeros)):
        if t.shape != expected[name]:
            raise ShapeError(f"BlockQuantMatMul input {name} has shape {t.shape}; expected "
                             f"{expected[name]} (k={k}, n={n}, bits={bits}, block_size="
                             f"{block_size})")
    base = TensorType(a.shape[:-1] + (n,), a.dtype)
    return (infer_epilogue(base, inputs[4:], epilogue, "BlockQuantMatMul"),)


def _block_quant_matmul(a, w, scales, zeros, *extras, bits: int, block_size: int, k: int,
                        n: int, epilogue=None) -> np.ndarray:
    q = unpack_block_weights(w, bits, k).astype(_F32)
    w_float = ((q - expand_blocks(zeros, 1, block_size, k).astype(_F32))
               * expand_blocks(scales, 1, block_size, k).astype(_F32))
    product = np.matmul(a.astype(_F32), w_float.T).astype(a.dtype)
    return apply_epilogue(product, extras, epilogue)


# -- registration -----------------------------------------------------------------------------
_I, _IS = AttrKind.INT, AttrKind.INTS
_EPILOGUE = attr("epilogue", AttrKind.ANY, None)
_NO_FOLD = {"fold_constants": False}

QUANTIZE_LINEAR = OPS.register(OpDef(
    "QuantizeLinear", _infer_quantize, _quantize,
    attrs=(attr("saturate", _I, 1),), num_inputs=(3, 3), elementwise=True,
    doc="saturate(rint(x / scale) + zero) in zero's dtype; scale and zero broadcast to x.",
))
DEQUANTIZE_LINEAR = OPS.register(OpDef(
    "DequantizeLinear", _infer_dequantize, _dequantize, num_inputs=(3, 3), elementwise=True,
    extra=_NO_FOLD,
    doc="(x - zero) * scale computed in float32, in scale's dtype; not folded where that "
        "would widen quantized weights.",
))
BLOCK_QUANTIZE = OPS.register(OpDef(
    "BlockQuantize", _infer_block_quantize, _block_quantize,
    attrs=(attr("axis", _I), attr("block_size", _I), attr("saturate", _I, 1)),
    num_inputs=(3, 3),
    doc="QuantizeLinear with one scale and zero per block of block_size along axis.",
))
BLOCK_DEQUANTIZE = OPS.register(OpDef(
    "BlockDequantize", _infer_block_dequantize, _block_dequantize,
    attrs=(attr("axis", _I), attr("block_size", _I)), num_inputs=(3, 3), extra=_NO_FOLD,
    doc="DequantizeLinear with one scale and zero per block of block_size along axis; "
        "never folded.",
))
MATMUL_INTEGER = OPS.register(OpDef(
    "MatMulInteger", _infer_matmul_integer, _matmul_integer,
    attrs=(_EPILOGUE,), num_inputs=(4, -1),
    doc="int32 sum_k (a - a_zero) * (b - b_zero) with numpy batch broadcasting; a_zero is "
        "() or (M, 1), b_zero () or (N,). The epilogue may change the output dtype.",
))
CONV_INTEGER = OPS.register(OpDef(
    "ConvInteger", _infer_conv_integer, _conv_integer,
    attrs=(attr("strides", _IS, ()), attr("dilations", _IS, ()), attr("pads", _IS, ()),
           attr("group", _I, 1), _EPILOGUE),
    num_inputs=(4, -1),
    doc="int32 convolution of (x - x_zero) by (w - w_zero); padding reads x_zero. w_zero is "
        "() or (Cout,). The epilogue may change the output dtype.",
))
BLOCK_QUANT_MATMUL = OPS.register(OpDef(
    "BlockQuantMatMul", _infer_block_quant_matmul, _block_quant_matmul,
    attrs=(attr("bits", _I, choices=(4, 8)), attr("block_size", _I), attr("k", _I),
           attr("n", _I), _EPILOGUE),
    num_inputs=(4, -1),
    doc="a @ ((q - zeros) * scales).T in float32 with MatMulNBits' packed (N, n_blocks, "
        "block_size * bits // 8) uint8 weights; output in a's dtype.",
))
