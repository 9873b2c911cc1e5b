"""Reductions: ReduceSum/Mean/Max/Min/Prod/L1/L2/SumSquare/LogSum, ArgMax/ArgMin, CumSum,
CumProd and TopK.

Every reduce op is one combine (sum, prod, max, min) with an optional map before it (square, abs)
and after it (mean, sqrt, log); `REDUCE_KINDS` holds that triple and is also on each OpDef's
`extra["reduce"]`, so codegen renders one kernel for all of them. `axes` is explicit in the
IR: the tuple of reduced axes (negative allowed), and `()` reduces nothing (the maps still
apply, as ONNX's `noop_with_empty_axes` says). ONNX's "no axes means all axes" is resolved by
the frontend.

The references are the ground truth: float sums accumulate in float64 and round once, ints
wrap in their own type (numpy's `dtype=` reductions), integer mean truncates toward zero,
integer L2 is the floor square root. Empty reductions give the combine's identity
(sum 0, prod 1, max -inf / the type's minimum / False, min +inf / maximum / True), then the
post-map (mean of nothing is NaN for floats, 0 for ints).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ember.errors import ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.common import NUMERIC_TYPES, normalize_axes, normalize_axis, require_dtype
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = [
    "ReduceKind", "REDUCE_KINDS", "reduce_identity", "reduced_shape", "topk_order",
    "accumulate_dtype",
]


@dataclass(frozen=True)
class ReduceKind:
    """A reduction as combine(pre(x)) over the reduced elements, then post(acc)."""

    combine: str  # "sum" | "prod" | "max" | "min"
    pre: str = "none"  # "none" | "square" | "abs"
    post: str = "none"  # "none" | "mean" | "sqrt" | "log"
    allows_bool: bool = False


REDUCE_KINDS: dict[str, ReduceKind] = {
    "ReduceSum": ReduceKind("sum"),
    "ReduceMean": ReduceKind("sum", post="mean"),
    "ReduceProd": ReduceKind("prod"),
    "ReduceMax": ReduceKind("max", allows_bool=True),
    "ReduceMin": ReduceKind("min", allows_bool=True),
    "ReduceSumSquare": ReduceKind("sum", pre="square"),
    "ReduceL2": ReduceKind("sum", pre="square", post="sqrt"),
    "ReduceL1": ReduceKind("sum", pre="abs"),
    "ReduceLogSum": ReduceKind("sum", post="log"),
}

_REDUCE_DTYPES = NUMERIC_TYPES
_BOOL_OK_DTYPES = NUMERIC_TYPES | {DType.BOOL}


def reduce_identity(combine: str, dtype: DType) -> float | int | bool:
    """The value an empty reduction starts from (ONNX: max of nothing is -inf, ...)."""
    if combine == "sum":
        return 0
    if combine == "prod":
        return 1
    if dtype is DType.BOOL:
        return combine == "min"
    if dtype.is_float:
        return -math.inf if combine == "max" else math.inf
    info = np.iinfo(dtype.np_dtype)
    return int(info.min) if combine == "max" else int(info.max)


def accumulate_dtype(dtype: DType) -> np.dtype:
    """What the reference accumulates in: float64 for floats (the exact sum, rounded once),
    the type itself for ints and bool (numpy's wrapping `dtype=` reductions)."""
    return np.dtype(np.float64) if dtype.is_float else dtype.np_dtype


def reduced_shape(shape: Sequence[int], axes: Sequence[int], keepdims: int) -> tuple[int, ...]:
    """The output shape of reducing `axes` (already normalized) of `shape`."""
    kept = []
    for axis, dim in enumerate(shape):
        if axis in axes:
            if keepdims:
                kept.append(1)
        else:
            kept.append(dim)
    return tuple(kept)


# -- Reduce* ----------------------------------------------------------------------------------
def _make_reduce_infer(name: str, kind: ReduceKind):
    allowed = _BOOL_OK_DTYPES if kind.allows_bool else _REDUCE_DTYPES

    def infer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
        x = inputs[0]
        require_dtype(x, allowed, f"{name} input 0")
        axes = normalize_axes(attrs["axes"], x.rank, what=f"{name} axes")
        return (TensorType(reduced_shape(x.shape, axes, attrs["keepdims"]), x.dtype),)

    return infer


def _trunc_div(s: np.ndarray, n: int) -> np.ndarray:
    """Integer division rounding toward zero (C's, and numpy's int mean), exact for int64."""
    q = s // n
    return q + ((s % n != 0) & (s < 0)).astype(s.dtype)


def _isqrt(s: np.ndarray) -> np.ndarray:
    """Floor square root of integers (0 for negative, i.e. wrapped, sums)."""
    flat = [math.isqrt(int(v)) if v > 0 else 0 for v in s.reshape(-1).tolist()]
    return np.asarray(flat, dtype=s.dtype).reshape(s.shape)


def _make_reduce_reference(name: str, kind: ReduceKind):
    def reference(x: np.ndarray, *, axes: tuple[int, ...], keepdims: int) -> np.ndarray:
        x = np.asarray(x)
        dtype = DType.from_numpy(x.dtype)
        axes_n = normalize_axes(axes, x.ndim, what=f"{name} axes")
        out_shape = reduced_shape(x.shape, axes_n, keepdims)
        count = math.prod(x.shape[a] for a in axes_n)
        work = x.astype(accumulate_dtype(dtype), copy=False)
        with np.errstate(all="ignore"):
            if kind.pre == "square":
                work = work * work
            elif kind.pre == "abs":
                work = np.abs(work)
            if kind.combine == "sum":
                acc = np.sum(work, axis=axes_n, keepdims=True, dtype=work.dtype)
            elif kind.combine == "prod":
                acc = np.prod(work, axis=axes_n, keepdims=True, dtype=work.dtype)
            else:
                fn = np.max if kind.combine == "max" else np.min
                extra = {}
                if count == 0:
                    extra["initial"] = reduce_identity(kind.combine, dtype)
                acc = fn(work, axis=axes_n, keepdims=True, **extra)
            if kind.post == "mean":
                if dtype.is_float:
                    acc = acc / count if count else np.full_like(acc, np.nan)
                else:
                    acc = _trunc_div(acc, count) if count else np.zeros_like(acc)
            elif kind.post == "sqrt":
                acc = np.sqrt(acc) if dtype.is_float else _isqrt(acc)
            elif kind.post == "log":
                acc = np.log(acc)
        return np.asarray(acc).astype(x.dtype).reshape(out_shape)

    return reference


for _name, _kind in REDUCE_KINDS.items():
    OPS.register(
        OpDef(
            _name,
            _make_reduce_infer(_name, _kind),
            _make_reduce_reference(_name, _kind),
            attrs=(attr("axes", AttrKind.INTS), attr("keepdims", AttrKind.INT, 1, (0, 1))),
            doc=f"{_kind.combine} reduction over `axes` (pre={_kind.pre}, post={_kind.post}); "
            "() reduces nothing.",
            extra={"reduce": _kind},
        )
    )


# -- ArgMax / ArgMin --------------------------------------------------------------------------
def _make_arg_infer(name: str):
    def infer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
        x = inputs[0]
        require_dtype(x, NUMERIC_TYPES, f"{name} input 0")
        if x.rank == 0:
            raise ShapeError(f"{name} needs an input of rank >= 1, got a scalar")
        axis = normalize_axis(attrs["axis"], x.rank, what=f"{name} axis")
        if x.shape[axis] == 0:
            raise ShapeError(f"{name} over axis {axis} of size 0 (shape {x.shape}) is undefined")
        return (TensorType(reduced_shape(x.shape, (axis,), attrs["keepdims"]), DType.INT64),)

    return infer


def _make_arg_reference(largest: bool):
    def reference(x: np.ndarray, *, axis: int, keepdims: int, select_last_index: int):
        x = np.asarray(x)
        axis = normalize_axis(axis, x.ndim)
        fn = np.argmax if largest else np.argmin
        # numpy picks the first extreme (the first NaN when there is one); the last one is
        # the first of the flipped array.
        if select_last_index:
            index = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            index = fn(x, axis=axis)
        index = np.expand_dims(index, axis) if keepdims else index
        return np.asarray(index, dtype=np.int64)

    return reference


for _name, _largest in (("ArgMax", True), ("ArgMin", False)):
    OPS.register(
        OpDef(
            _name,
            _make_arg_infer(_name),
            _make_arg_reference(_largest),
            attrs=(
                attr("axis", AttrKind.INT, 0),
                attr("keepdims", AttrKind.INT, 1, (0, 1)),
                attr("select_last_index", AttrKind.INT, 0, (0, 1)),
            ),
            doc="Index (int64) of the first (or last) extreme along `axis`; NaN counts as "
            "the extreme, as in numpy.",
            extra={"largest": _largest},
        )
    )


# -- CumSum, CumProd --------------------------------------------------------------------------
def _make_cumulative_infer(name: str):
    def infer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
        x = inputs[0]
        require_dtype(x, NUMERIC_TYPES, f"{name} input 0")
        if x.rank == 0:
            raise ShapeError(f"{name} needs an input of rank >= 1, got a scalar")
        normalize_axis(attrs["axis"], x.rank, what=f"{name} axis")
        return (x,)

    return infer


def _make_cumulative_reference(combine: str):
    def reference(x: np.ndarray, *, axis: int, exclusive: int, reverse: int) -> np.ndarray:
        return _cumulative(x, combine, axis, exclusive, reverse)

    return reference


def _cumulative(x: np.ndarray, combine: str, axis: int, exclusive: int, reverse: int
                ) -> np.ndarray:
    """Sequential sums (products) in the compute type (float for half, as the kernel), so
    the order of operations is the kernel's; ints wrap in their own type."""
    x = np.asarray(x)
    axis = normalize_axis(axis, x.ndim)
    dtype = DType.from_numpy(x.dtype)
    work = x.astype(np.float32) if dtype.is_float and dtype.itemsize < 4 else x
    if reverse:
        work = np.flip(work, axis)
    scan = np.cumsum if combine == "sum" else np.cumprod
    with np.errstate(all="ignore"):
        out = scan(work, axis=axis, dtype=work.dtype)
    if exclusive:  # shift by one along the axis: element i gets the result before it
        shifted = np.zeros_like(out) if combine == "sum" else np.ones_like(out)
        dst = [slice(None)] * x.ndim
        src = [slice(None)] * x.ndim
        dst[axis], src[axis] = slice(1, None), slice(0, -1)
        shifted[tuple(dst)] = out[tuple(src)]
        out = shifted
    if reverse:
        out = np.flip(out, axis)
    return out.astype(x.dtype)


for _name, _combine in (("CumSum", "sum"), ("CumProd", "prod")):
    OPS.register(
        OpDef(
            _name,
            _make_cumulative_infer(_name),
            _make_cumulative_reference(_combine),
            attrs=(
                attr("axis", AttrKind.INT),
                attr("exclusive", AttrKind.INT, 0, (0, 1)),
                attr("reverse", AttrKind.INT, 0, (0, 1)),
            ),
            doc=f"Running {_combine} along `axis` (exclusive: without the element itself; "
            "reverse: from the end).",
            extra={"combine": _combine},
        )
    )


# -- TopK -------------------------------------------------------------------------------------
def _infer_topk(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    require_dtype(x, NUMERIC_TYPES, "TopK input 0")
    if x.rank == 0:
        raise ShapeError("TopK needs an input of rank >= 1, got a scalar")
    axis = normalize_axis(attrs["axis"], x.rank, what="TopK axis")
    k = attrs["k"]
    if not 0 <= k <= x.shape[axis]:
        raise ShapeError(f"TopK k={k} must be in [0, {x.shape[axis]}] (axis {axis} of shape "
                         f"{x.shape})")
    shape = x.shape[:axis] + (k,) + x.shape[axis + 1:]
    return (TensorType(shape, x.dtype), TensorType(shape, DType.INT64))


def topk_order(x: np.ndarray, axis: int, largest: bool) -> np.ndarray:
    """Indices sorting `x` along `axis` best first: largest (or smallest) value first, equal
    values by lower index, NaN greater than every number (numpy's sort order)."""
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    index = np.broadcast_to(np.arange(x.shape[axis]).reshape(shape), x.shape)
    if largest:
        # ascending by (value, -index), then flipped: descending values, ties by index
        return np.flip(np.lexsort((-index, x), axis=axis), axis)
    return np.lexsort((index, x), axis=axis)


def _reference_topk(x: np.ndarray, *, k: int, axis: int, largest: int, sorted: int):  # noqa: A002
    x = np.asarray(x)
    axis = normalize_axis(axis, x.ndim)
    order = np.take(topk_order(x, axis, bool(largest)), np.arange(k), axis=axis)
    return np.take_along_axis(x, order, axis=axis), order.astype(np.int64)


OPS.register(
    OpDef(
        "TopK",
        _infer_topk,
        _reference_topk,
        attrs=(
            attr("k", AttrKind.INT),
            attr("axis", AttrKind.INT, -1),
            attr("largest", AttrKind.INT, 1, (0, 1)),
            attr("sorted", AttrKind.INT, 1, (0, 1)),
        ),
        num_outputs=2,
        doc="The k largest (smallest) values along `axis` and their int64 indices, best "
        "first; equal values by lower index. Always sorted (allowed for sorted=0).",
    )
)
