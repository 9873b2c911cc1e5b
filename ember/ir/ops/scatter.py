"""Indexed reads and writes by tuples of indices: GatherND, ScatterND and ScatterElements.

Indices are int32 or int64 and may be negative (counting from the back of the axis); an
index out of range is an error in the reference. A scatter with repeated indices and no
reduction keeps the last update in index order, as ONNX's reference does; with a reduction
(add, mul, max, min) every update is combined into the data in turn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.ops.common import normalize_axis
from ember.ir.ops.movement_select import require_index_dtype
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["SCATTER_REDUCTIONS"]

SCATTER_REDUCTIONS = ("none", "add", "mul", "max", "min")
_UFUNCS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _wrapped(indices: np.ndarray, dims: Sequence[int], op: str) -> np.ndarray:
    """Indices (..., len(dims)) with negatives wrapped; ShapeError naming one out of range."""
    idx = np.asarray(indices).astype(np.int64)
    sizes = np.asarray(dims, dtype=np.int64)
    bad = (idx < -sizes) | (idx >= sizes)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise ShapeError(f"{op} index {int(idx[tuple(where)])} is out of range for an axis of "
                         f"size {int(sizes[where[-1]]) if sizes.ndim else int(sizes)}")
    return np.where(idx < 0, idx + sizes, idx)


def _scatter(out: np.ndarray, where: tuple, updates: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        out[where] = updates  # numpy keeps the last of repeated indices
    else:
        _UFUNCS[reduction].at(out, where, updates)
    return out


def _check_reduction(dtype, reduction: str, op: str) -> None:
    if reduction != "none" and dtype.np_dtype == np.bool_:
        raise DTypeError(f"{op} reduction {reduction!r} does not apply to bool data")


# -- GatherND ---------------------------------------------------------------------------------
def _infer_gather_nd(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    data, indices = inputs
    require_index_dtype(indices, "GatherND indices")
    b = attrs["batch_dims"]
    if indices.rank < 1 or data.rank < 1:
        raise ShapeError(f"GatherND data {data.shape} and indices {indices.shape} need rank >= 1")
    k = indices.shape[-1]
    if not 0 <= b < min(data.rank, indices.rank):
        raise ShapeError(f"GatherND batch_dims {b} must be below the ranks of data "
                         f"{data.shape} and indices {indices.shape}")
    if data.shape[:b] != indices.shape[:b]:
        raise ShapeError(f"GatherND data {data.shape} and indices {indices.shape} differ on "
                         f"the {b} batch axes")
    if not 1 <= k <= data.rank - b:
        raise ShapeError(f"GatherND indices {indices.shape}: the last axis ({k}) must be in "
                         f"1..{data.rank - b} (data {data.shape}, batch_dims {b})")
    return (data.with_shape(indices.shape[:-1] + data.shape[b + k:]),)


def _gather_nd(data: np.ndarray, indices: np.ndarray, *, batch_dims: int = 0) -> np.ndarray:
    b, k = batch_dims, indices.shape[-1]
    batch = math.prod(data.shape[:b])
    idx = _wrapped(indices, data.shape[b:b + k], "GatherND").reshape(batch, -1, k)
    flat = data.reshape((batch,) + data.shape[b:])
    rows = np.arange(batch).reshape(batch, 1)
    out = flat[(rows,) + tuple(np.moveaxis(idx, -1, 0))]
    return out.reshape(indices.shape[:-1] + data.shape[b + k:])


# -- ScatterND --------------------------------------------------------------------------------
def _infer_scatter_nd(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    data, indices, updates = inputs
    require_index_dtype(indices, "ScatterND indices")
    if indices.rank < 1 or not 1 <= indices.shape[-1] <= data.rank:
        raise ShapeError(f"ScatterND indices {indices.shape}: the last axis must be in "
                         f"1..{data.rank} (data {data.shape})")
    expected = indices.shape[:-1] + data.shape[indices.shape[-1]:]
    if updates.shape != expected:
        raise ShapeError(f"ScatterND updates have shape {updates.shape}; expected {expected} "
                         f"(data {data.shape}, indices {indices.shape})")
    if updates.dtype != data.dtype:
        raise DTypeError(f"ScatterND updates have dtype {updates.dtype}; expected data's "
                         f"{data.dtype}")
    _check_reduction(data.dtype, attrs["reduction"], "ScatterND")
    return (data,)


def _scatter_nd(data, indices, updates, *, reduction: str = "none") -> np.ndarray:
    k = indices.shape[-1]
    idx = _wrapped(indices, data.shape[:k], "ScatterND").reshape(-1, k)
    rest = data.shape[k:]
    where = tuple(idx.T)
    return _scatter(data.copy(), where, updates.reshape((-1,) + rest), reduction)


# -- ScatterElements --------------------------------------------------------------------------
def _infer_scatter_elements(inputs: Sequence[TensorType], attrs: Attrs
                            ) -> tuple[TensorType, ...]:
    data, indices, updates = inputs
    require_index_dtype(indices, "ScatterElements indices")
    if data.rank < 1 or indices.rank != data.rank:
        raise ShapeError(f"ScatterElements indices {indices.shape} must have the rank of data "
                         f"{data.shape} (>= 1)")
    if updates.shape != indices.shape:
        raise ShapeError(f"ScatterElements updates have shape {updates.shape}; expected the "
                         f"indices' shape {indices.shape}")
    if updates.dtype != data.dtype:
        raise DTypeError(f"ScatterElements updates have dtype {updates.dtype}; expected "
                         f"data's {data.dtype}")
    axis = normalize_axis(attrs["axis"], data.rank)
    for k in range(data.rank):
        if k != axis and indices.shape[k] > data.shape[k]:
            raise ShapeError(f"ScatterElements indices {indices.shape} exceed data "
                             f"{data.shape} on axis {k}")
    _check_reduction(data.dtype, attrs["reduction"], "ScatterElements")
    return (data,)


def _scatter_elements(data, indices, updates, *, axis: int = 0,
                      reduction: str = "none") -> np.ndarray:
    axis = normalize_axis(axis, data.ndim)
    idx = _wrapped(indices, data.shape[axis], "ScatterElements")
    where = list(np.indices(indices.shape, sparse=True))
    where[axis] = idx
    where = tuple(np.broadcast_to(w, indices.shape).reshape(-1) for w in where)
    return _scatter(data.copy(), where, updates.reshape(-1), reduction)


_REDUCTION = attr("reduction", AttrKind.STRING, "none", SCATTER_REDUCTIONS)

OPS.register(OpDef(
    "GatherND", _infer_gather_nd, _gather_nd, attrs=(attr("batch_dims", AttrKind.INT, 0),),
    num_inputs=(2, 2),
    doc="Slices of data addressed by the tuples on indices' last axis, after batch_dims "
        "leading axes that data and indices share.",
))
OPS.register(OpDef(
    "ScatterND", _infer_scatter_nd, _scatter_nd, attrs=(_REDUCTION,), num_inputs=(3, 3),
    doc="A copy of data with the slices addressed by indices' tuples replaced by (or "
        "reduced with) updates.",
))
OPS.register(OpDef(
    "ScatterElements", _infer_scatter_elements, _scatter_elements,
    attrs=(attr("axis", AttrKind.INT, 0), _REDUCTION), num_inputs=(3, 3),
    doc="A copy of data with element indices[i] along axis (other coordinates those of i) "
        "replaced by (or reduced with) updates[i].",
))
