"""Data-movement ops: they move, copy or select elements and compute nothing.

Every compile-time parameter (shape, perm, starts, pads, repeats, block size) is a resolved
attribute: the ONNX frontend folds the ONNX inputs that carry them. `Reshape` is a view on
the device; the others copy. Gather-like ops live in `movement_select`, Resize in `resize`
(both imported here so that importing this module registers the whole family).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ember.errors import ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.ops.common import broadcast_shapes, normalize_axis, require_same_dtype
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["slice_ranges", "block_permutation", "PAD_MODES", "transpose_perm"]

_I = AttrKind.INT
_INTS = AttrKind.INTS


# -- Reshape ---------------------------------------------------------------------------------
def _infer_reshape(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    shape = attrs["shape"]
    if any(d < 0 for d in shape):
        raise ShapeError(f"Reshape shape {shape} must be resolved (no -1 or negative dims)")
    if math.prod(shape) != inputs[0].size:
        raise ShapeError(
            f"cannot reshape {inputs[0].shape} ({inputs[0].size} elements) to {shape} "
            f"({math.prod(shape)} elements)"
        )
    return (TensorType(shape, inputs[0].dtype),)


OPS.register(OpDef(
    "Reshape", _infer_reshape, lambda x, *, shape: np.reshape(x, shape),
    attrs=(attr("shape", _INTS),),
    doc="Same elements, new static shape (a view on the device). Flatten, Squeeze and "
        "Unsqueeze import as Reshape.",
))


# -- Transpose -------------------------------------------------------------------------------
def transpose_perm(perm: Sequence[int] | None, rank: int) -> tuple[int, ...]:
    """The permutation, defaulting to reversed axes; raise ShapeError unless it is one."""
    if perm is None or len(perm) == 0 and rank > 0:
        return tuple(reversed(range(rank)))
    if sorted(perm) != list(range(rank)):
        raise ShapeError(f"perm {tuple(perm)} is not a permutation of {rank} axes")
    return tuple(perm)


def _infer_transpose(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    perm = transpose_perm(attrs["perm"], x.rank)
    return (TensorType(tuple(x.shape[p] for p in perm), x.dtype),)


def _transpose(x: np.ndarray, *, perm: tuple[int, ...] | None) -> np.ndarray:
    return np.transpose(x, transpose_perm(perm, x.ndim))


OPS.register(OpDef(
    "Transpose", _infer_transpose, _transpose, attrs=(attr("perm", _INTS, None),),
    doc="Permute axes (perm empty/None: reverse them).",
))


# -- Concat and Split ------------------------------------------------------------------------
def _infer_concat(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    dtype = require_same_dtype(inputs, "Concat inputs")
    rank = inputs[0].rank
    if rank == 0:
        raise ShapeError("Concat inputs must have rank >= 1, got scalars")
    axis = normalize_axis(attrs["axis"], rank)
    first = inputs[0].shape
    for i, t in enumerate(inputs):
        if t.rank != rank or any(t.shape[k] != first[k] for k in range(rank) if k != axis):
            raise ShapeError(f"Concat input {i} has shape {t.shape}; expected {first} on "
                             f"every axis but {axis}")
    total = sum(t.shape[axis] for t in inputs)
    return (TensorType(first[:axis] + (total,) + first[axis + 1:], dtype),)


def _concat(*arrays: np.ndarray, axis: int) -> np.ndarray:
    return np.concatenate(arrays, axis=axis)


OPS.register(OpDef(
    "Concat", _infer_concat, _concat, attrs=(attr("axis", _I),), num_inputs=(1, -1),
    doc="Join tensors along one axis (negative axes count from the back).",
))


def _infer_split(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    axis = normalize_axis(attrs["axis"], x.rank)
    splits = attrs["splits"]
    if not splits or any(s < 0 for s in splits) or sum(splits) != x.shape[axis]:
        raise ShapeError(f"Split sizes {splits} must be >= 0 and sum to dim {axis} of "
                         f"{x.shape} ({x.shape[axis]})")
    return tuple(x.with_shape(x.shape[:axis] + (s,) + x.shape[axis + 1:]) for s in splits)


def _split(x: np.ndarray, *, axis: int, splits: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    points = np.cumsum(splits)[:-1]
    return tuple(np.split(x, points, axis=axis))


OPS.register(OpDef(
    "Split", _infer_split, _split, attrs=(attr("axis", _I, 0), attr("splits", _INTS)),
    num_outputs=-1, doc="Cut a tensor along one axis into pieces of the given sizes.",
))


# -- Slice -----------------------------------------------------------------------------------
def _clamp(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else (hi if v > hi else v)


def slice_ranges(shape: Sequence[int], attrs: Attrs) -> list[range]:
    """Per axis, the input indices a Slice keeps, by ONNX's rules: negative starts/ends
    count from the back, then starts clamp to [0, d] ([0, d-1] for negative steps) and ends
    to [0, d] ([-1, d-1]), so INT64 sentinels work. (Python's slices differ: a start before
    the beginning with a negative step gives nothing there, the first element here.)"""
    rank = len(shape)
    starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"]
    axes = tuple(range(len(starts))) if axes is None else axes
    steps = (1,) * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeError(f"Slice starts {starts}, ends {ends}, axes {axes} and steps {steps} "
                         f"must have one length")
    out = [range(d) for d in shape]
    seen: set[int] = set()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = normalize_axis(axis, rank, what="Slice axis")
        if axis in seen:
            raise ShapeError(f"Slice axes {axes} repeat axis {axis}")
        seen.add(axis)
        if step == 0:
            raise ShapeError(f"Slice step on axis {axis} is 0")
        d = shape[axis]
        start = start + d if start < 0 else start
        end = end + d if end < 0 else end
        if d == 0:
            out[axis] = range(0)  # [0, d-1] is empty: nothing to keep, whatever the step
        elif step > 0:
            out[axis] = range(_clamp(start, 0, d), _clamp(end, 0, d), step)
        else:
            out[axis] = range(_clamp(start, 0, d - 1), _clamp(end, -1, d - 1), step)
    return out


def _infer_slice(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    ranges = slice_ranges(inputs[0].shape, attrs)
    return (inputs[0].with_shape(tuple(len(r) for r in ranges)),)


def _slice(x: np.ndarray, **attrs) -> np.ndarray:
    ranges = slice_ranges(x.shape, Attrs(attrs))
    if any(len(r) == 0 for r in ranges):
        return np.zeros(tuple(len(r) for r in ranges), x.dtype)
    return x[tuple(slice(r.start, r.stop if r.stop >= 0 else None, r.step) for r in ranges)]


OPS.register(OpDef(
    "Slice", _infer_slice, _slice,
    attrs=(attr("starts", _INTS), attr("ends", _INTS), attr("axes", _INTS, None),
           attr("steps", _INTS, None)),
    doc="Strided window of a tensor (negative steps and indices, clamped ends).",
))


# -- Expand and Tile -------------------------------------------------------------------------
def _infer_expand(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    if any(d < 0 for d in attrs["shape"]):
        raise ShapeError(f"Expand shape {attrs['shape']} has a negative dim")
    return (inputs[0].with_shape(broadcast_shapes(inputs[0].shape, attrs["shape"])),)


def _expand(x: np.ndarray, *, shape: tuple[int, ...]) -> np.ndarray:
    return np.array(np.broadcast_to(x, broadcast_shapes(x.shape, shape)))


OPS.register(OpDef(
    "Expand", _infer_expand, _expand, attrs=(attr("shape", _INTS),),
    doc="Broadcast to a shape (bidirectionally: the output is the broadcast of both).",
))


def _infer_tile(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x, repeats = inputs[0], attrs["repeats"]
    if len(repeats) != x.rank or any(r < 0 for r in repeats):
        raise ShapeError(f"Tile repeats {repeats} must be {x.rank} non-negative ints")
    return (x.with_shape(tuple(d * r for d, r in zip(x.shape, repeats))),)


OPS.register(OpDef(
    "Tile", _infer_tile, lambda x, *, repeats: np.tile(x, repeats) if x.ndim else x.copy(),
    attrs=(attr("repeats", _INTS),), doc="Repeat a tensor along every axis.",
))


# -- Pad -------------------------------------------------------------------------------------
PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _check_pad(x: TensorType, attrs: Attrs) -> None:
    pads = attrs["pads"]
    if len(pads) != 2 * x.rank:
        raise ShapeError(f"Pad pads {pads} must have 2 * rank = {2 * x.rank} entries")
    for axis in range(x.rank):
        before, after = pads[axis], pads[x.rank + axis]
        kept = x.shape[axis] + min(before, 0) + min(after, 0)
        if kept < 0:
            raise ShapeError(f"Pad pads {pads} crop more than dim {axis} ({x.shape[axis]})")
        if attrs["mode"] != "constant" and kept == 0 and before + after + kept > 0:
            raise ShapeError(f"Pad mode {attrs['mode']!r} cannot pad the empty axis {axis}")


def _infer_pad(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    _check_pad(x, attrs)
    r = x.rank
    shape = tuple(x.shape[k] + attrs["pads"][k] + attrs["pads"][r + k] for k in range(r))
    return (x.with_shape(shape),)


def _pad(x: np.ndarray, *, pads: tuple[int, ...], mode: str, value: np.ndarray) -> np.ndarray:
    r = x.ndim
    # Negative pads crop first; the positive pads then extend what is left.
    crop = tuple(slice(max(-pads[k], 0), x.shape[k] - max(-pads[r + k], 0)) for k in range(r))
    kept = x[crop]
    width = [(max(pads[k], 0), max(pads[r + k], 0)) for k in range(r)]
    if mode == "constant":
        fill = np.asarray(value).astype(x.dtype).item() if x.dtype != object else value.item()
        return np.pad(kept, width, mode="constant", constant_values=fill)
    if all(w == (0, 0) for w in width):
        return kept.copy()
    return np.pad(kept, width, mode=mode)


OPS.register(OpDef(
    "Pad", _infer_pad, _pad,
    attrs=(attr("pads", _INTS), attr("mode", AttrKind.STRING, "constant", PAD_MODES),
           attr("value", AttrKind.TENSOR, np.float64(0.0))),
    doc="Pad (or, with negative pads, crop) every axis: pads = begins then ends.",
))


# -- DepthToSpace and SpaceToDepth ------------------------------------------------------------
def block_permutation(op: str, shape: Sequence[int], blocksize: int, mode: str
                      ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(6-D input view, perm, output shape): both ops are reshape -> transpose -> reshape."""
    if len(shape) != 4:
        raise ShapeError(f"{op} expects a 4-D NCHW tensor, got shape {tuple(shape)}")
    n, c, h, w = shape
    b = blocksize
    if b < 1:
        raise ShapeError(f"{op} blocksize must be >= 1, got {b}")
    if op == "DepthToSpace":
        if c % (b * b):
            raise ShapeError(f"DepthToSpace channels {c} are not a multiple of {b}*{b}")
        cb = c // (b * b)
        if mode == "DCR":
            return (n, b, b, cb, h, w), (0, 3, 4, 1, 5, 2), (n, cb, h * b, w * b)
        return (n, cb, b, b, h, w), (0, 1, 4, 2, 5, 3), (n, cb, h * b, w * b)
    if h % b or w % b:
        raise ShapeError(f"SpaceToDepth spatial dims {(h, w)} are not multiples of {b}")
    view = (n, c, h // b, b, w // b, b)
    perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
    return view, perm, (n, c * b * b, h // b, w // b)


def _block_op(name: str) -> None:
    def infer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
        _, _, out = block_permutation(name, inputs[0].shape, attrs["blocksize"], attrs["mode"])
        return (inputs[0].with_shape(out),)

    def reference(x: np.ndarray, *, blocksize: int, mode: str) -> np.ndarray:
        view, perm, out = block_permutation(name, x.shape, blocksize, mode)
        return np.transpose(x.reshape(view), perm).reshape(out)

    OPS.register(OpDef(
        name, infer, reference,
        attrs=(attr("blocksize", _I), attr("mode", AttrKind.STRING, "DCR", ("DCR", "CRD"))),
        doc=f"{name}: move blocks between channels and space (NCHW).",
    ))


_block_op("DepthToSpace")
_block_op("SpaceToDepth")
