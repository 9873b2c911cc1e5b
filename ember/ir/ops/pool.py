"""Pooling ops: MaxPool (with optional Indices), AveragePool, GlobalMaxPool, GlobalAveragePool.

Windows follow ONNX (and onnxruntime / PyTorch): explicit begin/end pads, dilations, and
`ceil_mode`, where the last window must start inside the input or its begin padding.
auto_pad is resolved to explicit pads by the frontend (`resolve_auto_pad`), so the ops only
know explicit geometry. Window positions in the padding never take part: MaxPool takes the
maximum of the real elements (NaN propagates), AveragePool divides by the number of real
elements, or with `count_include_pad` by the number of positions inside the padded input.
A window with no real element gives -inf (the dtype's minimum for ints), index -1, and NaN
for an average without count_include_pad.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ember.errors import ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.common import FLOAT_TYPES, NUMERIC_TYPES, require_dtype
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["PoolGeometry", "pool_geometry", "pool_output_size", "resolve_auto_pad", "AUTO_PADS"]

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
_I = AttrKind.INT
_INTS = AttrKind.INTS


@dataclass(frozen=True)
class PoolGeometry:
    """Every spatial fact of one pooling window walk, with defaults filled in."""

    in_shape: tuple[int, ...]  # spatial input dims
    out_shape: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]


def pool_output_size(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int,
                     ceil_mode: bool) -> int:
    """One output dim. In ceil mode a window that would start past the input and its begin
    padding is dropped (onnxruntime's and PyTorch's rule)."""
    extent = (kernel - 1) * dilation + 1
    span = size + begin + end - extent
    if span < 0:
        return 0
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + begin:
        out -= 1
    return out


def resolve_auto_pad(auto_pad: str, in_shape: Sequence[int], kernel: Sequence[int],
                     strides: Sequence[int], dilations: Sequence[int]) -> tuple[int, ...]:
    """Explicit pads (begins then ends) for an ONNX auto_pad mode; SAME gives ceil(in/stride)
    outputs, SAME_UPPER puts the odd pad at the end, SAME_LOWER at the begin."""
    k = len(in_shape)
    if auto_pad == "VALID":
        return (0,) * (2 * k)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad {auto_pad!r} has no explicit pads")
    begins, ends = [], []
    for i in range(k):
        out = -(-in_shape[i] // strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_shape[i], 0)
        small = total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else total - small)
        ends.append(total - small if auto_pad == "SAME_UPPER" else small)
    return tuple(begins + ends)


def pool_geometry(x: TensorType | tuple[int, ...], attrs: Attrs | dict) -> PoolGeometry:
    """Validate the window attributes against the input and compute the output dims."""
    shape = x.shape if isinstance(x, TensorType) else tuple(x)
    kernel = tuple(attrs["kernel_shape"])
    k = len(kernel)
    if len(shape) != k + 2:
        raise ShapeError(f"input of shape {shape} must have rank {k + 2} (N, C and "
                         f"{k} spatial dims for kernel_shape {kernel})")
    strides = tuple(attrs["strides"]) or (1,) * k
    dilations = tuple(attrs["dilations"]) or (1,) * k
    pads = tuple(attrs["pads"]) or (0,) * (2 * k)
    for name, values, want in (("strides", strides, k), ("dilations", dilations, k),
                               ("pads", pads, 2 * k)):
        if len(values) != want:
            raise ShapeError(f"{name} {values} must have {want} values for kernel {kernel}")
    if min(kernel, default=1) < 1 or min(strides, default=1) < 1 or min(dilations, default=1) < 1:
        raise ShapeError(f"kernel_shape {kernel}, strides {strides} and dilations {dilations} "
                         f"must be positive")
    if min(pads, default=0) < 0:
        raise ShapeError(f"pads {pads} must not be negative")
    in_shape = shape[2:]
    out = tuple(
        pool_output_size(in_shape[i], kernel[i], strides[i], dilations[i], pads[i], pads[k + i],
                         bool(attrs["ceil_mode"]))
        for i in range(k)
    )
    if any(o < 1 for o in out) and all(d > 0 for d in in_shape):
        raise ShapeError(f"kernel {kernel} (dilations {dilations}) does not fit input {shape} "
                         f"with pads {pads}: output dims would be {out}")
    return PoolGeometry(in_shape, out, kernel, strides, dilations, pads[:k], pads[k:])


# -- references -------------------------------------------------------------------------------
def _windows(x: np.ndarray, g: PoolGeometry, fill) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, real, inside_pads), each shaped (N, C, *out, prod(kernel)): the window
    elements, whether each is a real input element, and whether it lies in the padded input."""
    k = len(g.kernel)
    widths = []
    for i in range(k):
        extent = (g.kernel[i] - 1) * g.dilations[i] + 1
        need = (g.out_shape[i] - 1) * g.strides[i] + extent
        tail = max(need - g.in_shape[i] - g.pads_begin[i], g.pads_end[i], 0)
        widths.append((g.pads_begin[i], tail))
    padded = np.pad(x, [(0, 0), (0, 0), *widths], constant_values=fill)
    real = np.pad(np.ones(g.in_shape, bool), widths, constant_values=False)
    inside = np.zeros(real.shape, bool)
    ends = [g.pads_begin[i] + g.in_shape[i] + g.pads_end[i] for i in range(k)]
    inside[tuple(slice(0, end) for end in ends)] = True

    def gather(a: np.ndarray, lead: int) -> np.ndarray:
        extents = [(g.kernel[i] - 1) * g.dilations[i] + 1 for i in range(k)]
        axes = tuple(range(lead, lead + k))
        view = np.lib.stride_tricks.sliding_window_view(a, extents, axis=axes)
        index = (slice(None),) * lead
        index += tuple(slice(0, g.out_shape[i] * g.strides[i], g.strides[i]) for i in range(k))
        index += tuple(slice(None, None, g.dilations[i]) for i in range(k))
        view = view[index]
        return view.reshape(*view.shape[: lead + k], -1)

    return gather(padded, 2), gather(real, 0), gather(inside, 0)


def _lowest(dtype: np.dtype):
    """The identity of max: the minimum of an int type, -inf for the float types (numpy's
    and ml_dtypes' bfloat16/float8, whose kind is not "f")."""
    return np.iinfo(dtype).min if dtype.kind in "iu" else -np.inf


def _max_pool(x, *, kernel_shape, strides, pads, dilations, ceil_mode, storage_order, indices):
    g = pool_geometry(x.shape, dict(kernel_shape=kernel_shape, strides=strides, pads=pads,
                                    dilations=dilations, ceil_mode=ceil_mode))
    out_shape = x.shape[:2] + g.out_shape
    if 0 in out_shape or 0 in x.shape:
        empty = np.full(out_shape, _lowest(x.dtype), x.dtype)
        return (empty, np.full(out_shape, -1, np.int64)) if indices else empty
    lowest = _lowest(x.dtype)
    values, real, _ = _windows(x, g, lowest)
    key = np.where(real, values, x.dtype.type(lowest))
    best = key.max(axis=-1)  # NaN propagates
    if not indices:
        return best.astype(x.dtype)
    hit = real & ((key == best[..., None]) | (np.isnan(key) & np.isnan(best)[..., None])
                  if x.dtype.kind not in "iu" else key == best[..., None])
    first = hit.argmax(axis=-1)
    found = hit.any(axis=-1)
    k = len(g.kernel)
    window = np.unravel_index(first, g.kernel)
    grids = np.meshgrid(*[np.arange(o) for o in g.out_shape], indexing="ij")
    coords = [grids[i] * g.strides[i] - g.pads_begin[i] + window[i] * g.dilations[i]
              for i in range(k)]
    order = range(k) if storage_order == 0 else range(k - 1, -1, -1)
    flat = np.zeros(first.shape, np.int64)
    for i in order:  # row-major: last spatial axis fastest; column-major: first fastest
        flat = flat * g.in_shape[i] + coords[i]
    n, c = x.shape[:2]
    plane = math.prod(g.in_shape)
    flat = flat + (np.arange(n * c, dtype=np.int64).reshape(n, c, *([1] * k)) * plane)
    return best.astype(x.dtype), np.where(found, flat, -1).astype(np.int64)


def _average_pool(x, *, kernel_shape, strides, pads, dilations, ceil_mode, count_include_pad):
    g = pool_geometry(x.shape, dict(kernel_shape=kernel_shape, strides=strides, pads=pads,
                                    dilations=dilations, ceil_mode=ceil_mode))
    out_shape = x.shape[:2] + g.out_shape
    if 0 in out_shape or 0 in x.shape:
        return np.full(out_shape, np.nan, x.dtype)
    values, real, inside = _windows(x.astype(np.float64), g, 0.0)
    count = (inside if count_include_pad else real).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):  # inf - inf, 0 / 0: NaN as in C
        total = np.where(real, values, 0.0).sum(axis=-1)
        return (total / count).astype(x.dtype)


def _global_pool(kind: str):
    def reference(x):
        axes = tuple(range(2, x.ndim))
        if kind == "max":
            if x.size == 0 or 0 in x.shape[2:]:
                return np.full(x.shape[:2] + (1,) * len(axes), _lowest(x.dtype), x.dtype)
            return x.max(axis=axes, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return x.astype(np.float64).mean(axis=axes, keepdims=True).astype(x.dtype)

    return reference


# -- inference --------------------------------------------------------------------------------
def _infer_max_pool(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    require_dtype(x, NUMERIC_TYPES, "MaxPool input X")
    g = pool_geometry(x, attrs)
    y = TensorType(x.shape[:2] + g.out_shape, x.dtype)
    return (y, y.with_dtype(DType.INT64)) if attrs["indices"] else (y,)


def _infer_average_pool(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    require_dtype(x, FLOAT_TYPES, "AveragePool input X")
    return (TensorType(x.shape[:2] + pool_geometry(x, attrs).out_shape, x.dtype),)


def _infer_global(allowed: frozenset[DType], op: str):
    def infer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
        x = inputs[0]
        require_dtype(x, allowed, f"{op} input X")
        if x.rank < 2:
            raise ShapeError(f"{op} input has shape {x.shape}; expected rank >= 2 (N, C, ...)")
        return (TensorType(x.shape[:2] + (1,) * (x.rank - 2), x.dtype),)

    return infer


_WINDOW = (
    attr("kernel_shape", _INTS),
    attr("strides", _INTS, ()),
    attr("pads", _INTS, ()),
    attr("dilations", _INTS, ()),
    attr("ceil_mode", _I, 0, (0, 1)),
)

MAX_POOL = OPS.register(OpDef(
    "MaxPool", _infer_max_pool, _max_pool,
    attrs=_WINDOW + (attr("storage_order", _I, 0, (0, 1)), attr("indices", _I, 0, (0, 1))),
    num_outputs=-1,
    doc="Max over each window; with indices=1 a second output holds the flat input index "
        "(row-major, or column-major over the spatial dims with storage_order=1).",
))
AVERAGE_POOL = OPS.register(OpDef(
    "AveragePool", _infer_average_pool, _average_pool,
    attrs=_WINDOW + (attr("count_include_pad", _I, 0, (0, 1)),),
    doc="Mean over each window (real elements, or all positions inside the pads).",
))
GLOBAL_MAX_POOL = OPS.register(OpDef(
    "GlobalMaxPool", _infer_global(NUMERIC_TYPES, "GlobalMaxPool"), _global_pool("max"),
    doc="Max over all spatial dims of each (n, c).",
))
GLOBAL_AVERAGE_POOL = OPS.register(OpDef(
    "GlobalAveragePool", _infer_global(FLOAT_TYPES, "GlobalAveragePool"), _global_pool("avg"),
    doc="Mean over all spatial dims of each (n, c).",
))
