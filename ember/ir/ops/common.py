"""Helpers shared by the op tables: broadcasting, axis handling, common inference rules."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.attrs import Attrs
from ember.ir.dtypes import DType
from ember.ir.types import TensorType

__all__ = [
    "broadcast_shapes",
    "normalize_axis",
    "normalize_axes",
    "same_as_first",
    "require_same_dtype",
    "require_dtype",
    "FLOAT_TYPES",
    "NUMERIC_TYPES",
]

FLOAT_TYPES = frozenset(d for d in DType if d.is_float)
NUMERIC_TYPES = frozenset(d for d in DType if d not in (DType.STRING, DType.BOOL))


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    """numpy's multidirectional broadcasting; names both shapes when they do not fit."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(rank):
        dims = {s[len(s) - rank + axis] for s in shapes if len(s) - rank + axis >= 0}
        dims.discard(1)
        if len(dims) > 1:
            listed = " and ".join(str(tuple(s)) for s in shapes)
            raise ShapeError(f"shapes {listed} do not broadcast (axis {axis}: {sorted(dims)})")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def normalize_axis(axis: int, rank: int, *, what: str = "axis") -> int:
    """Map a possibly negative axis into [0, rank); raise ShapeError when out of range."""
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def normalize_axes(axes: Sequence[int], rank: int, *, what: str = "axes") -> tuple[int, ...]:
    out = tuple(normalize_axis(a, rank, what=what) for a in axes)
    if len(set(out)) != len(out):
        raise ShapeError(f"{what} {tuple(axes)} repeat an axis")
    return out


def same_as_first(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    return (inputs[0],)


def require_same_dtype(inputs: Sequence[TensorType], what: str = "inputs") -> DType:
    dtypes = {t.dtype for t in inputs}
    if len(dtypes) != 1:
        raise DTypeError(f"{what} must share one dtype, got {[str(t.dtype) for t in inputs]}")
    return inputs[0].dtype


def require_dtype(t: TensorType, allowed: frozenset[DType] | set[DType], what: str) -> None:
    if t.dtype not in allowed:
        names = sorted(str(d) for d in allowed)
        raise DTypeError(f"{what} has dtype {t.dtype}; expected one of {names}")


def as_dtype(array: np.ndarray, dtype: DType) -> np.ndarray:
    """Cast a reference result to the inferred dtype (numpy promotes scalars differently)."""
    return np.asarray(array).astype(dtype.np_dtype, copy=False)
