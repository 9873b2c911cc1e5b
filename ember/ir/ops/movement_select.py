"""Movement ops that select elements by data: Gather, GatherElements, OneHot, Trilu.

Indices are int32 or int64 and may be negative (counting from the back of the axis). An
index out of range is an error in the reference (numpy raises); the device kernels write 0
there instead of reading out of bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.common import normalize_axis
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["require_index_dtype"]

_INDEX_DTYPES = (DType.INT32, DType.INT64)


def require_index_dtype(t: TensorType, what: str) -> None:
    if t.dtype not in _INDEX_DTYPES:
        raise DTypeError(f"{what} must be int32 or int64, got {t.dtype}")


def _checked_indices(indices: np.ndarray, dim: int, op: str) -> np.ndarray:
    """Indices with negatives wrapped; raise ShapeError when one is out of [-dim, dim)."""
    idx = np.asarray(indices).astype(np.int64)
    bad = (idx < -dim) | (idx >= dim)
    if bad.any():
        raise ShapeError(f"{op} index {int(idx[bad][0])} is out of range for an axis of "
                         f"size {dim}")
    return np.where(idx < 0, idx + dim, idx)


# -- Gather ----------------------------------------------------------------------------------
def _infer_gather(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    data, indices = inputs
    require_index_dtype(indices, "Gather indices")
    if data.rank == 0:
        raise ShapeError("Gather data must have rank >= 1")
    axis = normalize_axis(attrs["axis"], data.rank)
    shape = data.shape[:axis] + indices.shape + data.shape[axis + 1:]
    return (data.with_shape(shape),)


def _gather(data: np.ndarray, indices: np.ndarray, *, axis: int) -> np.ndarray:
    axis = normalize_axis(axis, data.ndim)
    idx = _checked_indices(indices, data.shape[axis], "Gather")
    return np.take(data, idx, axis=axis)


OPS.register(OpDef(
    "Gather", _infer_gather, _gather, attrs=(attr("axis", AttrKind.INT, 0),),
    num_inputs=(2, 2), doc="Take slices of `data` along `axis` at the given indices.",
))


def _infer_gather_elements(inputs: Sequence[TensorType], attrs: Attrs
                           ) -> tuple[TensorType, ...]:
    data, indices = inputs
    require_index_dtype(indices, "GatherElements indices")
    if data.rank == 0 or indices.rank != data.rank:
        raise ShapeError(f"GatherElements indices {indices.shape} must have the rank of data "
                         f"{data.shape} (>= 1)")
    axis = normalize_axis(attrs["axis"], data.rank)
    for k in range(data.rank):
        if k != axis and indices.shape[k] > data.shape[k]:
            raise ShapeError(f"GatherElements indices {indices.shape} exceed data "
                             f"{data.shape} on axis {k}")
    return (data.with_shape(indices.shape),)


def _gather_elements(data: np.ndarray, indices: np.ndarray, *, axis: int) -> np.ndarray:
    axis = normalize_axis(axis, data.ndim)
    idx = _checked_indices(indices, data.shape[axis], "GatherElements")
    # Indices may be smaller than data on the other axes: read data's leading corner.
    corner = tuple(slice(0, n) if k != axis else slice(None) for k, n in enumerate(idx.shape))
    return np.take_along_axis(data[corner], idx, axis=axis)


OPS.register(OpDef(
    "GatherElements", _infer_gather_elements, _gather_elements,
    attrs=(attr("axis", AttrKind.INT, 0),), num_inputs=(2, 2),
    doc="out[i][j][k] = data[index][j][k] (for axis 0): per-element gather.",
))


# -- OneHot ----------------------------------------------------------------------------------
def _infer_onehot(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    indices = inputs[0]
    if not (indices.dtype.is_integer or indices.dtype.is_float):
        raise DTypeError(f"OneHot indices must be numeric, got {indices.dtype}")
    values = attrs["values"]
    if values.size != 2:
        raise ShapeError(f"OneHot values must hold [off, on], got shape {values.shape}")
    if attrs["depth"] < 1:
        raise ShapeError(f"OneHot depth must be >= 1, got {attrs['depth']}")
    axis = normalize_axis(attrs["axis"], indices.rank + 1)
    shape = indices.shape[:axis] + (attrs["depth"],) + indices.shape[axis:]
    return (TensorType(shape, DType.from_numpy(values.dtype)),)


def _onehot(indices: np.ndarray, *, axis: int, depth: int, values: np.ndarray) -> np.ndarray:
    axis = normalize_axis(axis, indices.ndim + 1)
    if np.issubdtype(indices.dtype, np.integer):
        indices = indices.astype(np.int64)  # no wrap-around when adding depth
    idx = np.where(indices < 0, indices + depth, indices)
    targets = np.arange(depth).reshape((depth,) + (1,) * (indices.ndim - axis))
    hot = np.expand_dims(idx, axis) == targets
    off, on = values.reshape(-1)
    return np.where(hot, on, off).astype(values.dtype)


OPS.register(OpDef(
    "OneHot", _infer_onehot, _onehot,
    attrs=(attr("axis", AttrKind.INT, -1), attr("depth", AttrKind.INT),
           attr("values", AttrKind.TENSOR)),
    doc="One-hot encode indices along a new axis; values = [off, on]. Indices outside "
        "[-depth, depth) give all-off rows.",
))


# -- Trilu -----------------------------------------------------------------------------------
def _infer_trilu(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    if inputs[0].rank < 2:
        raise ShapeError(f"Trilu expects rank >= 2, got shape {inputs[0].shape}")
    return (inputs[0],)


def _trilu(x: np.ndarray, *, upper: int, k: int) -> np.ndarray:
    return np.triu(x, k) if upper else np.tril(x, k)


OPS.register(OpDef(
    "Trilu", _infer_trilu, _trilu,
    attrs=(attr("upper", AttrKind.INT, 1), attr("k", AttrKind.INT, 0)),
    doc="Keep the upper (or lower) triangle of the last two axes from diagonal k; zero the "
        "rest.",
))
