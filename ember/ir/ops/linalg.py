"""Linear-algebra ops: MatMul, Conv, ConvTranspose and BatchNormalization (inference).

Geometry is computed once, here, by `matmul_dims` and `conv_geometry`: type inference, the
numpy references and the kernel builders all read the same numbers, so they cannot disagree
about an output size or a padding. ONNX's Gemm becomes MatMul (with `trans_a`/`trans_b`)
plus elementwise ops at import; ONNX's auto_pad and output_shape become explicit pads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.common import FLOAT_TYPES, as_dtype, broadcast_shapes, require_same_dtype
from ember.ir.ops.fused import apply_epilogue, epilogue_inputs, infer_epilogue
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = [
    "MatMulDims", "matmul_dims", "ConvGeometry", "conv_geometry", "MATMUL_TYPES",
    "conv_reference", "conv_transpose_reference", "matmul_reference",
]

# ONNX MatMul takes floats and 32/64-bit integers (8-bit ones are MatMulInteger's).
MATMUL_TYPES = FLOAT_TYPES | {DType.INT32, DType.INT64, DType.UINT32, DType.UINT64}


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """Sums of half (and the ml_dtypes floats) are accumulated in float32, as kernels do."""
    if dtype.kind == "f" and dtype.itemsize >= 4:
        return dtype
    if dtype.kind in "iu":
        return dtype
    return np.dtype(np.float32)


# -- MatMul -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatMulDims:
    """A batched product C[b] = op(A)[b] @ op(B)[b] with numpy's rules made explicit.

    `a_batch`/`b_batch` are the operands' own batch shapes, `batch` their broadcast; 1-D
    operands count as (1, K) and (K, 1) and their axis is dropped from `out_shape`."""

    batch: tuple[int, ...]
    a_batch: tuple[int, ...]
    b_batch: tuple[int, ...]
    m: int
    n: int
    k: int
    out_shape: tuple[int, ...]

    @property
    def batch_size(self) -> int:
        return math.prod(self.batch)


def matmul_dims(a: Sequence[int], b: Sequence[int], trans_a: int = 0,
                trans_b: int = 0) -> MatMulDims:
    a, b = tuple(a), tuple(b)
    if not a or not b:
        raise ShapeError(f"MatMul operands must have rank >= 1, got shapes {a} and {b}")
    for flag, shape, which in ((trans_a, a, "A"), (trans_b, b, "B")):
        if flag and len(shape) < 2:
            raise ShapeError(f"trans_{which.lower()}=1 needs {which} of rank >= 2, got {shape}")
    if trans_a:
        a = a[:-2] + (a[-1], a[-2])
    if trans_b:
        b = b[:-2] + (b[-1], b[-2])
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ShapeError(
            f"MatMul inner dimensions differ: A {a} has K={a2[-1]}, B {b} has K={b2[-2]}"
        )
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = batch + (() if len(a) == 1 else (a2[-2],)) + (() if len(b) == 1 else (b2[-1],))
    return MatMulDims(batch, a2[:-2], b2[:-2], a2[-2], b2[-1], a2[-1], out)


def _infer_matmul(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    epilogue = attrs["epilogue"]
    if len(inputs) != 2 + epilogue_inputs(epilogue):
        raise ShapeError(f"MatMul takes A, B and {epilogue_inputs(epilogue)} epilogue "
                         f"input(s), got {len(inputs)} inputs")
    dtype = require_same_dtype(inputs[:2], "MatMul A and B")
    if dtype not in MATMUL_TYPES:
        raise DTypeError(f"MatMul takes {sorted(map(str, MATMUL_TYPES))}, got {dtype}")
    dims = matmul_dims(inputs[0].shape, inputs[1].shape, attrs["trans_a"], attrs["trans_b"])
    base = TensorType(dims.out_shape, dtype)
    return (infer_epilogue(base, inputs[2:], epilogue, "MatMul"),)


def _matmul_op(a: np.ndarray, b: np.ndarray, *extras: np.ndarray, trans_a: int = 0,
               trans_b: int = 0, epilogue=None) -> np.ndarray:
    return apply_epilogue(matmul_reference(a, b, trans_a=trans_a, trans_b=trans_b), extras,
                          epilogue)


def matmul_reference(a: np.ndarray, b: np.ndarray, *, trans_a: int = 0,
                     trans_b: int = 0) -> np.ndarray:
    dims = matmul_dims(a.shape, b.shape, trans_a, trans_b)
    out_dtype = a.dtype
    acc = _compute_dtype(a.dtype)
    a = np.swapaxes(a, -1, -2) if trans_a else a
    b = np.swapaxes(b, -1, -2) if trans_b else b
    result = np.matmul(a.astype(acc, copy=False), b.astype(acc, copy=False))
    return np.asarray(result).astype(out_dtype, copy=False).reshape(dims.out_shape)


# -- Conv geometry ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvGeometry:
    """Everything about a (transposed) convolution's index space, per spatial axis."""

    batch: int
    in_channels: int
    out_channels: int
    group: int
    in_spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    out_spatial: tuple[int, ...]
    output_padding: tuple[int, ...] = ()

    @property
    def rank(self) -> int:
        return len(self.kernel)

    @property
    def cin_per_group(self) -> int:
        return self.in_channels // self.group

    @property
    def cout_per_group(self) -> int:
        return self.out_channels // self.group

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, *self.out_spatial)


def _per_axis(values: tuple[int, ...], rank: int, default: int, name: str) -> tuple[int, ...]:
    if not values:
        return (default,) * rank
    if len(values) != rank:
        raise ShapeError(f"{name} {values} needs {rank} values (one per spatial axis)")
    return values


def conv_geometry(x: Sequence[int], w: Sequence[int], attrs: Attrs, *,
                  transpose: bool = False) -> ConvGeometry:
    """Check X (N, C, *spatial) against W and the attributes; compute the output size.

    Conv: W is (Cout, C/group, *kernel). ConvTranspose: W is (C, Cout/group, *kernel) and
    pads may be negative (an extension of the output that no input reaches)."""
    op = "ConvTranspose" if transpose else "Conv"
    x, w = tuple(x), tuple(w)
    if len(x) < 3:
        raise ShapeError(f"{op} X must be (N, C, *spatial) with a spatial axis, got {x}")
    if len(w) != len(x):
        raise ShapeError(f"{op} W {w} must have the rank of X {x}")
    rank = len(x) - 2
    group = attrs["group"]
    if group < 1:
        raise ShapeError(f"{op} group must be >= 1, got {group}")
    strides = _per_axis(attrs["strides"], rank, 1, "strides")
    dilations = _per_axis(attrs["dilations"], rank, 1, "dilations")
    pads = _per_axis(attrs["pads"], 2 * rank, 0, "pads")
    if any(s < 1 for s in strides) or any(d < 1 for d in dilations):
        raise ShapeError(f"{op} strides {strides} and dilations {dilations} must be >= 1")
    kernel = w[2:]
    if transpose:
        if w[0] != x[1]:
            raise ShapeError(f"ConvTranspose W {w} needs W[0] == channels of X {x}")
        if x[1] % group:
            raise ShapeError(f"ConvTranspose channels {x[1]} are not divisible by group {group}")
        out_channels = w[1] * group
        out_pad = _per_axis(attrs["output_padding"], rank, 0, "output_padding")
        out_spatial = tuple(
            s * (i - 1) + (k - 1) * d + 1 + op_ - pb - pe
            for i, k, s, d, op_, pb, pe in zip(
                x[2:], kernel, strides, dilations, out_pad, pads[:rank], pads[rank:]
            )
        )
    else:
        if any(p < 0 for p in pads):
            raise ShapeError(f"Conv pads {pads} must be >= 0")
        if x[1] != w[1] * group:
            raise ShapeError(
                f"Conv X {x} has {x[1]} channels; W {w} with group {group} expects "
                f"{w[1] * group}"
            )
        if w[0] % group:
            raise ShapeError(f"Conv W {w}: {w[0]} output channels not divisible by group {group}")
        out_channels = w[0]
        out_pad = ()
        out_spatial = tuple(
            (i + pb + pe - ((k - 1) * d + 1)) // s + 1
            for i, k, s, d, pb, pe in zip(x[2:], kernel, strides, dilations, pads[:rank],
                                           pads[rank:])
        )
    if any(o < 1 for o in out_spatial) or any(k < 1 for k in kernel):
        raise ShapeError(
            f"{op} output would be empty: X {x}, kernel {kernel}, strides {strides}, "
            f"dilations {dilations}, pads {pads} give spatial size {out_spatial}"
        )
    return ConvGeometry(x[0], x[1], out_channels, group, x[2:], kernel, strides, dilations,
                        pads[:rank], pads[rank:], out_spatial, out_pad)


def _check_conv_types(inputs: Sequence[TensorType], g: ConvGeometry, op: str) -> DType:
    dtype = require_same_dtype(inputs, f"{op} inputs")
    if dtype not in FLOAT_TYPES:
        raise DTypeError(f"{op} takes float tensors, got {dtype}")
    if len(inputs) > 2 and inputs[2].shape != (g.out_channels,):
        raise ShapeError(f"{op} bias B has shape {inputs[2].shape}, expected ({g.out_channels},)")
    return dtype


def _infer_conv(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    n_base = len(inputs) - epilogue_inputs(attrs["epilogue"])
    if n_base not in (2, 3):
        raise ShapeError(f"Conv takes X, W, optional B and {epilogue_inputs(attrs['epilogue'])}"
                         f" epilogue input(s), got {len(inputs)} inputs")
    base = inputs[:n_base]
    g = conv_geometry(base[0].shape, base[1].shape, attrs)
    out = TensorType(g.out_shape, _check_conv_types(base, g, "Conv"))
    return (infer_epilogue(out, inputs[n_base:], attrs["epilogue"], "Conv"),)


def _conv_op(*arrays: np.ndarray, strides=(), dilations=(), pads=(), group: int = 1,
             epilogue=None) -> np.ndarray:
    n_base = len(arrays) - epilogue_inputs(epilogue)
    y = conv_reference(*arrays[:n_base], strides=strides, dilations=dilations, pads=pads,
                       group=group)
    return apply_epilogue(y, arrays[n_base:], epilogue)


def _infer_conv_transpose(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    g = conv_geometry(inputs[0].shape, inputs[1].shape, attrs, transpose=True)
    return (TensorType(g.out_shape, _check_conv_types(inputs, g, "ConvTranspose")),)


# -- Conv references --------------------------------------------------------------------------
def _conv_attrs(strides: Sequence[int], dilations: Sequence[int], pads: Sequence[int],
                group: int, output_padding: Sequence[int] = ()) -> Attrs:
    return Attrs({"strides": tuple(strides), "dilations": tuple(dilations),
                  "pads": tuple(pads), "group": int(group),
                  "output_padding": tuple(output_padding)})


def conv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *,
                   strides: Sequence[int] = (), dilations: Sequence[int] = (),
                   pads: Sequence[int] = (), group: int = 1) -> np.ndarray:
    """im2col through a strided window view, then one batched matmul per group."""
    g = conv_geometry(x.shape, w.shape, _conv_attrs(strides, dilations, pads, group))
    acc = _compute_dtype(x.dtype)
    rank, groups = g.rank, g.group
    xp = np.pad(x.astype(acc, copy=False),
                [(0, 0), (0, 0)] + list(zip(g.pads_begin, g.pads_end)))
    extent = tuple((k - 1) * d + 1 for k, d in zip(g.kernel, g.dilations))
    axes = tuple(range(2, 2 + rank))
    cols = np.lib.stride_tricks.sliding_window_view(xp, extent, axis=axes)
    cols = cols[(slice(None), slice(None))
                + tuple(slice(None, None, s) for s in g.strides)
                + tuple(slice(None, None, d) for d in g.dilations)]
    cols = cols[(slice(None), slice(None)) + tuple(slice(0, o) for o in g.out_spatial)]
    # (N, G, Cig, *out, *kernel) -> (N, G, P, Cig * kernel)
    cols = cols.reshape(g.batch, groups, g.cin_per_group, *g.out_spatial, *g.kernel)
    order = (0, 1, *range(3, 3 + rank), 2, *range(3 + rank, 3 + 2 * rank))
    p = math.prod(g.out_spatial)
    cols = cols.transpose(order).reshape(g.batch, groups, p,
                                         g.cin_per_group * math.prod(g.kernel))  # -1 fails at 0
    wg = w.astype(acc, copy=False).reshape(groups, g.cout_per_group, -1)
    y = np.matmul(cols, np.swapaxes(wg, -1, -2))  # (N, G, P, Cog)
    y = np.swapaxes(y, -1, -2).reshape(g.out_shape)
    if b is not None:
        y = y + b.astype(acc, copy=False).reshape((1, -1) + (1,) * rank)
    return y.astype(x.dtype, copy=False)


def conv_transpose_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *,
                             strides: Sequence[int] = (), dilations: Sequence[int] = (),
                             pads: Sequence[int] = (), group: int = 1,
                             output_padding: Sequence[int] = ()) -> np.ndarray:
    """Every input pixel times the kernel, scattered (summed) into the output at stride."""
    attrs = _conv_attrs(strides, dilations, pads, group, output_padding)
    g = conv_geometry(x.shape, w.shape, attrs, transpose=True)
    acc = _compute_dtype(x.dtype)
    rank, groups = g.rank, g.group
    p = math.prod(g.in_spatial)
    ksize = math.prod(g.kernel)
    xg = x.astype(acc, copy=False).reshape(g.batch, groups, g.cin_per_group, p)
    wg = w.astype(acc, copy=False).reshape(groups, g.cin_per_group, g.cout_per_group * ksize)
    cols = np.matmul(np.swapaxes(xg, -1, -2), wg)  # (N, G, P, Cog * kernel)
    cols = cols.reshape(g.batch, groups, *g.in_spatial, g.cout_per_group, *g.kernel)
    # Full positions t = i * s + k * d cover [0, T); output o reads t = o + pad_begin.
    full = tuple(s * (i - 1) + (k - 1) * d + 1
                 for i, k, s, d in zip(g.in_spatial, g.kernel, g.strides, g.dilations))
    lo = tuple(min(0, pb) for pb in g.pads_begin)
    hi = tuple(max(t, pb + o) for t, pb, o in zip(full, g.pads_begin, g.out_spatial))
    buf = np.zeros((g.batch, groups, g.cout_per_group) + tuple(h - l for h, l in zip(hi, lo)),
                   dtype=acc)
    for kidx in np.ndindex(*g.kernel):
        part = cols[(slice(None), slice(None)) + (slice(None),) * rank + (slice(None),) + kidx]
        part = np.moveaxis(part, -1, 2)  # (N, G, Cog, *in)
        where = tuple(
            slice(k * d - l, k * d - l + (i - 1) * s + 1, s)
            for k, d, l, i, s in zip(kidx, g.dilations, lo, g.in_spatial, g.strides)
        )
        buf[(slice(None),) * 3 + where] += part
    crop = tuple(slice(pb - l, pb - l + o) for pb, l, o in zip(g.pads_begin, lo, g.out_spatial))
    y = buf[(slice(None),) * 3 + crop].reshape(g.out_shape)
    if b is not None:
        y = y + b.astype(acc, copy=False).reshape((1, -1) + (1,) * rank)
    return y.astype(x.dtype, copy=False)


# -- BatchNormalization -----------------------------------------------------------------------
def _infer_batchnorm(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    if x.rank < 2:
        raise ShapeError(f"BatchNormalization X must be (N, C, ...), got shape {x.shape}")
    if x.dtype not in FLOAT_TYPES:
        raise DTypeError(f"BatchNormalization takes float tensors, got X of {x.dtype}")
    channels = x.shape[1]
    for name, t in zip(("scale", "B", "mean", "var"), inputs[1:]):
        if t.shape != (channels,):
            raise ShapeError(
                f"BatchNormalization {name} has shape {t.shape}, expected ({channels},)"
            )
        if t.dtype not in FLOAT_TYPES:
            raise DTypeError(f"BatchNormalization {name} must be float, got {t.dtype}")
    return (x,)


def _batchnorm(x, scale, bias, mean, var, *, epsilon: float = 1e-5):
    acc = _compute_dtype(x.dtype)
    shape = (1, -1) + (1,) * (x.ndim - 2)

    def per_channel(a: np.ndarray) -> np.ndarray:
        return a.astype(acc, copy=False).reshape(shape)

    y = (x.astype(acc, copy=False) - per_channel(mean)) / np.sqrt(
        per_channel(var) + acc.type(epsilon)
    ) * per_channel(scale) + per_channel(bias)
    return as_dtype(y, DType.from_numpy(x.dtype))


_I, _F, _IS = AttrKind.INT, AttrKind.FLOAT, AttrKind.INTS
_CONV_ATTRS = (attr("strides", _IS, ()), attr("dilations", _IS, ()), attr("pads", _IS, ()),
               attr("group", _I, 1))

_EPILOGUE = attr("epilogue", AttrKind.ANY, None)
MATMUL = OPS.register(OpDef(
    "MatMul", _infer_matmul, _matmul_op,
    attrs=(attr("trans_a", _I, 0, (0, 1)), attr("trans_b", _I, 0, (0, 1)), _EPILOGUE),
    num_inputs=(2, -1),
    doc="numpy matmul (1-D promotion, batch broadcasting); trans_a/trans_b swap the last "
        "two axes of A/B first, so that Gemm and fusion can fold transposes. An epilogue "
        "(fusion) is applied to the product, reading the inputs after B.",
))
CONV = OPS.register(OpDef(
    "Conv", _infer_conv, _conv_op, attrs=_CONV_ATTRS + (_EPILOGUE,), num_inputs=(2, -1),
    doc="N-D grouped convolution (cross-correlation) with explicit pads (begins, then ends); "
        "empty strides/dilations/pads mean 1s/1s/0s. An epilogue (fusion) is applied to the "
        "result, reading the inputs after X, W and B.",
))
CONV_TRANSPOSE = OPS.register(OpDef(
    "ConvTranspose", _infer_conv_transpose, conv_transpose_reference,
    attrs=_CONV_ATTRS + (attr("output_padding", _IS, ()),), num_inputs=(2, 3),
    doc="N-D grouped transposed convolution; pads crop the full output (negative pads extend "
        "it with positions no input reaches), output_padding extends its end.",
))
BATCHNORM = OPS.register(OpDef(
    "BatchNormalization", _infer_batchnorm, _batchnorm,
    attrs=(attr("epsilon", _F, 1e-5),), num_inputs=(5, 5),
    doc="Inference batch normalization over axis 1 with running mean and variance.",
))
