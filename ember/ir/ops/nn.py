"""Neural-network ops: pooling (in `pool.py`), softmax, and the normalizations.

Softmax, LayerNormalization and InstanceNormalization all work on *rows*: a tensor seen as
(outer, n, inner), normalized over the middle axis. `row_split` is that view; the kernels
use it too. References compute in float64 and cast to the output dtype: they are the ground
truth the kernels (which compute in float) are held to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.common import FLOAT_TYPES, broadcast_shapes, normalize_axis, require_dtype
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["row_split", "softmax_rows", "layer_norm_rows", "lrn_window"]

_F = AttrKind.FLOAT
_I = AttrKind.INT


def row_split(shape: Sequence[int], start: int, stop: int) -> tuple[int, int, int]:
    """(outer, n, inner): the sizes of shape[:start], shape[start:stop] and shape[stop:]."""
    return (math.prod(shape[:start]), math.prod(shape[start:stop]), math.prod(shape[stop:]))


def softmax_rows(shape: Sequence[int], axis: int, flatten: int) -> tuple[int, int, int]:
    """The rows a (Log)Softmax normalizes: one axis, or (flatten=1, ONNX before opset 13)
    every axis from `axis` on."""
    rank = len(shape)
    if rank == 0:
        return (1, 1, 1)
    if flatten:
        if not -rank <= axis <= rank:
            raise ShapeError(f"axis {axis} is out of range for rank {rank}")
        start = axis % (rank + 1) if axis < 0 else axis
        return row_split(shape, start, rank)
    a = normalize_axis(axis, rank)
    return row_split(shape, a, a + 1)


def layer_norm_rows(shape: Sequence[int], axis: int) -> tuple[int, int]:
    """(rows, n): LayerNormalization normalizes the last rank - axis dims together."""
    rank = len(shape)
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"axis {axis} is out of range for rank {rank}")
    a = axis % rank if rank else 0
    outer, n, _ = row_split(shape, a, rank)
    return outer, n


def lrn_window(size: int) -> tuple[int, int]:
    """Channels summed before and after c: floor((size-1)/2) and ceil((size-1)/2)."""
    return (size - 1) // 2, size // 2


# -- softmax ----------------------------------------------------------------------------------
def _softmax_reference(log: bool):
    def reference(x, *, axis, flatten):
        outer, n, inner = softmax_rows(x.shape, axis, flatten)
        rows = x.astype(np.float64).reshape(outer, n, inner)
        if rows.size == 0:
            return x.copy()
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            shifted = rows - rows.max(axis=1, keepdims=True)  # NaN in a row propagates
            total = np.exp(shifted).sum(axis=1, keepdims=True)
            y = shifted - np.log(total) if log else np.exp(shifted) / total
        return y.reshape(x.shape).astype(x.dtype)

    return reference


def _infer_softmax(op: str):
    def infer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
        x = inputs[0]
        require_dtype(x, FLOAT_TYPES, f"{op} input")
        softmax_rows(x.shape, attrs["axis"], attrs["flatten"])
        return (x,)

    return infer


for _op, _log in (("Softmax", False), ("LogSoftmax", True)):
    OPS.register(OpDef(
        _op, _infer_softmax(_op), _softmax_reference(_log),
        attrs=(attr("axis", _I, -1), attr("flatten", _I, 0, (0, 1))),
        doc="Numerically stable (the row max is subtracted first); flatten=1 normalizes "
            "every axis from `axis` on, as ONNX did before opset 13.",
    ))


# -- LayerNormalization -----------------------------------------------------------------------
def _layer_norm(x, scale, bias=None, *, axis, epsilon, stash_type, stats):
    rank = x.ndim
    a = axis % rank
    axes = tuple(range(a, rank))
    xf = x.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xf.mean(axis=axes, keepdims=True)
        diff = xf - mean
        inv = 1.0 / np.sqrt((diff * diff).mean(axis=axes, keepdims=True) + epsilon)
        y = diff * inv * scale.astype(np.float64)
    if bias is not None:
        y = y + bias.astype(np.float64)
    y = y.astype(x.dtype)
    if not stats:
        return y
    return y, mean.astype(stash_type.np_dtype), inv.astype(stash_type.np_dtype)


def _infer_layer_norm(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    require_dtype(x, FLOAT_TYPES, "LayerNormalization input X")
    rows, _ = layer_norm_rows(x.shape, attrs["axis"])
    a = attrs["axis"] % x.rank
    norm_shape = x.shape[a:]
    for name, t in zip(("Scale", "B"), inputs[1:]):
        if t.dtype is not x.dtype:
            raise DTypeError(f"LayerNormalization input {name} has dtype {t.dtype}; "
                             f"expected {x.dtype} (the dtype of X)")
        if t.rank > len(norm_shape) or broadcast_shapes(t.shape, norm_shape) != norm_shape:
            raise ShapeError(f"LayerNormalization input {name} of shape {t.shape} does not "
                             f"broadcast to the normalized shape {norm_shape}")
    stash = attrs["stash_type"]
    if stash not in FLOAT_TYPES:
        raise DTypeError(f"LayerNormalization stash_type {stash} must be a float type")
    if not attrs["stats"]:
        return (x,)
    stat = TensorType(x.shape[:a] + (1,) * (x.rank - a), stash)
    return (x, stat, stat)


LAYER_NORMALIZATION = OPS.register(OpDef(
    "LayerNormalization", _infer_layer_norm, _layer_norm,
    attrs=(attr("axis", _I, -1), attr("epsilon", _F, 1e-5),
           attr("stash_type", AttrKind.DTYPE, DType.FLOAT32), attr("stats", _I, 0, (0, 1))),
    num_inputs=(2, 3),
    num_outputs=-1,
    doc="Normalizes over axes [axis, rank); stats=1 adds the Mean and InvStdDev outputs "
        "(in stash_type).",
))


# -- RMSNormalization -------------------------------------------------------------------------
def _rms_norm(x, scale, *, axis, epsilon, stash_type):
    a = axis % x.ndim
    xf = x.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean_sq = (xf * xf).mean(axis=tuple(range(a, x.ndim)), keepdims=True)
        y = xf / np.sqrt(mean_sq + epsilon) * scale.astype(np.float64)
    return y.astype(scale.dtype)


def _infer_rms_norm(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x, scale = inputs
    require_dtype(x, FLOAT_TYPES, "RMSNormalization input X")
    require_dtype(scale, FLOAT_TYPES, "RMSNormalization input scale")
    layer_norm_rows(x.shape, attrs["axis"])
    # ONNX: scale broadcasts to X unidirectionally (usually it has the normalized shape).
    aligned = zip(scale.shape[::-1], x.shape[::-1])
    if scale.rank > x.rank or any(s not in (1, d) for s, d in aligned):
        raise ShapeError(f"RMSNormalization input scale of shape {scale.shape} does not "
                         f"broadcast to X's shape {x.shape}")
    if attrs["stash_type"] not in FLOAT_TYPES:
        raise DTypeError(f"RMSNormalization stash_type {attrs['stash_type']} must be a float "
                         "type")
    return (TensorType(x.shape, scale.dtype),)


RMS_NORMALIZATION = OPS.register(OpDef(
    "RMSNormalization", _infer_rms_norm, _rms_norm,
    attrs=(attr("axis", _I, -1), attr("epsilon", _F, 1e-5),
           attr("stash_type", AttrKind.DTYPE, DType.FLOAT32)),
    num_inputs=(2, 2),
    doc="y = x / sqrt(mean(x^2 over axes [axis, rank)) + epsilon) * scale (ONNX opset 23); "
        "Y has scale's dtype. The reference computes in float64, the kernel in stash_type "
        "(double when any tensor is float64).",
))


# -- InstanceNormalization --------------------------------------------------------------------
def _instance_norm(x, scale, bias, *, epsilon):
    axes = tuple(range(2, x.ndim))
    xf = x.astype(np.float64)
    shape = (1, -1) + (1,) * len(axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xf.mean(axis=axes, keepdims=True)
        diff = xf - mean
        inv = 1.0 / np.sqrt((diff * diff).mean(axis=axes, keepdims=True) + epsilon)
        y = diff * inv * scale.astype(np.float64).reshape(shape) + bias.astype(
            np.float64).reshape(shape)
    return y.astype(x.dtype)


def _infer_instance_norm(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    require_dtype(x, FLOAT_TYPES, "InstanceNormalization input")
    if x.rank < 2:
        raise ShapeError(f"InstanceNormalization input has shape {x.shape}; expected rank >= 2")
    for name, t in zip(("scale", "B"), inputs[1:]):
        if t.shape != (x.shape[1],):
            raise ShapeError(f"InstanceNormalization input {name} has shape {t.shape}; "
                             f"expected ({x.shape[1]},) (one value per channel)")
        if t.dtype is not x.dtype:
            raise DTypeError(f"InstanceNormalization input {name} has dtype {t.dtype}; "
                             f"expected {x.dtype}")
    return (x,)


INSTANCE_NORMALIZATION = OPS.register(OpDef(
    "InstanceNormalization", _infer_instance_norm, _instance_norm,
    attrs=(attr("epsilon", _F, 1e-5),),
    num_inputs=(3, 3),
    doc="Normalizes each (n, c) over the spatial dims, then scale[c] and B[c].",
))


# -- LRN --------------------------------------------------------------------------------------
def _lrn(x, *, alpha, beta, bias, size):
    before, after = lrn_window(size)
    sq = np.square(x.astype(np.float64))
    channels = x.shape[1]
    padded = np.pad(sq, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    csum = np.concatenate([np.zeros_like(padded[:, :1]), np.cumsum(padded, axis=1)], axis=1)
    window = csum[:, size: size + channels] - csum[:, :channels]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        y = x.astype(np.float64) / np.power(bias + (alpha / size) * window, beta)
    return y.astype(x.dtype)


def _infer_lrn(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    require_dtype(x, FLOAT_TYPES, "LRN input")
    if x.rank < 2:
        raise ShapeError(f"LRN input has shape {x.shape}; expected rank >= 2 (N, C, ...)")
    if attrs["size"] < 1:
        raise ShapeError(f"LRN size must be positive, got {attrs['size']}")
    return (x,)


LRN = OPS.register(OpDef(
    "LRN", _infer_lrn, _lrn,
    attrs=(attr("alpha", _F, 1e-4), attr("beta", _F, 0.75), attr("bias", _F, 1.0),
           attr("size", _I)),
    doc="Local response normalization across channels (ONNX's window of `size` channels).",
))
