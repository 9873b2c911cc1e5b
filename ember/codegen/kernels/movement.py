"""Kernels of the data-movement ops.

Most movement ops are one strided copy (`movement.cl.j2`): the output, in order, reads the
input at `base + sum(coord * stride)` over a view shape. Transpose, Slice, Expand, Tile,
DepthToSpace and SpaceToDepth only differ in the view and strides they hand it; Concat and
Split are one such copy per piece. Pad has `pad.cl.j2`. Reshape is a view (no launch).
Elements are copied as unsigned integers of their size, so dtypes of one size share kernels.
Gather-like ops are in `codegen/gather.py`, Resize in `codegen/resize.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ember.codegen.csrc import broadcast_strides, contiguous_strides, index_type
from ember.codegen.families import Target
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.ir import DType
from ember.ir.ops.movement import block_permutation, slice_ranges, transpose_perm

__all__ = [
    "storage_type", "index_type", "coalesce", "copy_launch", "strided_copy", "bits_literal",
]

# Dimension 0 of a copy's launch spans at least this many elements where the view allows:
# CPU drivers vectorize along it, GPUs coalesce along it.
_MIN_INNER = 64
_UINT = {1: "uchar", 2: "ushort", 4: "uint", 8: "ulong"}
_UINT_NP = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def storage_type(dtype: DType) -> str:
    """The unsigned C type a copy moves elements of `dtype` as."""
    return _UINT[dtype.itemsize]




def bits_literal(value: object, dtype: DType) -> str:
    """A C literal of `value` converted to `dtype`, as the bits of its storage type."""
    array = np.asarray(value).astype(dtype.np_dtype).reshape(1)
    bits = int(array.view(_UINT_NP[dtype.itemsize])[0])
    suffix = "UL" if dtype.itemsize == 8 else "U"
    return f"(({storage_type(dtype)}){bits}{suffix})"


def coalesce(view: Sequence[int], strides: Sequence[int]
             ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Drop size-1 axes and merge axis k into k+1 when the input walks them as one
    (stride[k] == stride[k+1] * view[k+1]); the output is contiguous over the view, so
    that is the only condition."""
    dims = [(d, s) for d, s in zip(view, strides) if d != 1]
    merged: list[tuple[int, int]] = []
    for d, s in dims:
        if merged and merged[-1][1] == s * d:
            merged[-1] = (merged[-1][0] * d, s)
        else:
            merged.append((d, s))
    return tuple(d for d, _ in merged), tuple(s for _, s in merged)


def copy_launch(view: Sequence[int], strides: Sequence[int], base: int, dtype: DType,
                max_offset: int, label: str, *, out_row: int | None = None, out_base: int = 0,
                args: tuple = ((IN, 0), (OUT, 0))) -> Launch | None:
    """out[out_base + row * out_row + x] = in[base + sum(c_k * strides_k)] over the
    row-major view, x being the last view axis and row the rest (out_row defaults to the
    last axis' length: a contiguous output). None when the view is empty."""
    size = math.prod(view)
    if size == 0:
        return None
    if out_row is None:
        shape, steps = coalesce(view, strides)
    else:  # rows of the view land out_row apart: keep the view's own row axes
        shape, steps = tuple(view), tuple(strides)
    if not shape:
        shape, steps = (1,), (0,)
    split = len(shape) - 1
    if out_row is None:  # a short last axis: take more axes into dimension 0
        while split > 0 and math.prod(shape[split:]) < _MIN_INNER:
            split -= 1
    inner = math.prod(shape[split:])
    out_row = inner if out_row is None else out_row
    ctype = storage_type(dtype)
    idx = index_type(size, max_offset)
    name = kernel_name("copy", shape, steps, split, base, out_row, out_base, ctype)
    source = render("movement.cl.j2", name=name, label=label, view=shape, outer=shape[:split],
                    outer_strides=steps[:split], inner=shape[split:],
                    inner_strides=steps[split:], inner_size=inner, base=base, out_row=out_row,
                    out_base=out_base, ctype=ctype, idx=idx)
    return Launch(Kernel(name, source), (inner, size // inner), None, args)


def strided_copy(view: Sequence[int], strides: Sequence[int], base: int, dtype: DType,
                 in_size: int, label: str) -> Lowered:
    """One launch: out[i] = in[base + sum(c_k * strides_k)] over the row-major view."""
    launch = copy_launch(view, strides, base, dtype, in_size, label)
    return Lowered(() if launch is None else (launch,))


# -- views and strided copies ----------------------------------------------------------------
@kernel_builder("Reshape")
def build_reshape(spec: NodeSpec, target: Target) -> Lowered:
    return Lowered((), aliases=((0, 0),))


@kernel_builder("Transpose")
def build_transpose(spec: NodeSpec, target: Target) -> Lowered:
    x = spec.inputs[0]
    perm = transpose_perm(spec.attrs["perm"], x.rank)
    own = contiguous_strides(x.shape)
    return strided_copy(spec.outputs[0].shape, [own[p] for p in perm], 0, x.dtype, x.size,
                        f"transpose {x.shape} by {perm}")


@kernel_builder("Slice")
def build_slice(spec: NodeSpec, target: Target) -> Lowered:
    x = spec.inputs[0]
    ranges = slice_ranges(x.shape, spec.attrs)
    own = contiguous_strides(x.shape)
    if spec.outputs[0].size == 0:
        return Lowered(())
    base = sum(r.start * s for r, s in zip(ranges, own))
    strides = [r.step * s for r, s in zip(ranges, own)]
    return strided_copy(spec.outputs[0].shape, strides, base, x.dtype, x.size,
                        f"slice of {x.shape}")


@kernel_builder("Expand")
def build_expand(spec: NodeSpec, target: Target) -> Lowered:
    x, out = spec.inputs[0], spec.outputs[0]
    return strided_copy(out.shape, broadcast_strides(x.shape, out.shape), 0, x.dtype, x.size,
                        f"expand {x.shape} to {out.shape}")


@kernel_builder("Tile")
def build_tile(spec: NodeSpec, target: Target) -> Lowered:
    """Tile is a copy over the view (r0, d0, r1, d1, ...) with stride 0 on each repeat."""
    x = spec.inputs[0]
    own = contiguous_strides(x.shape)
    view, strides = [], []
    for d, r, s in zip(x.shape, spec.attrs["repeats"], own):
        view += [r, d]
        strides += [0, s]
    return strided_copy(view, strides, 0, x.dtype, x.size,
                        f"tile {x.shape} by {spec.attrs['repeats']}")


@kernel_builder("DepthToSpace", "SpaceToDepth")
def build_block(spec: NodeSpec, target: Target) -> Lowered:
    x = spec.inputs[0]
    shape6, perm, _ = block_permutation(spec.op, x.shape, spec.attrs["blocksize"],
                                        spec.attrs["mode"])
    own = contiguous_strides(shape6)
    return strided_copy([shape6[p] for p in perm], [own[p] for p in perm], 0, x.dtype,
                        x.size, f"{spec.op} {spec.attrs['mode']} of {x.shape}")


# -- Concat and Split ------------------------------------------------------------------------
def _joined(pieces: Sequence[tuple[int, ...]], joined: tuple[int, ...], axis: int,
            dtype: DType, split: bool) -> Lowered:
    """Concat (pieces are inputs) or Split (pieces are outputs): the joined tensor is
    OUTER x TOTAL, piece k is OUTER x LEN_k at column OFF_k; each piece is one contiguous
    row copy (a Slice for Split, a strided write for Concat)."""
    outer = math.prod(joined[:axis])
    inner = math.prod(joined[axis + 1:])
    total = joined[axis] * inner
    launches, offset = [], 0
    for k, shape in enumerate(pieces):
        length = shape[axis] * inner
        if split:
            launch = copy_launch((outer, length), (total, 1), offset, dtype, outer * total,
                                 f"split piece {k} of {joined} on axis {axis}",
                                 args=((IN, 0), (OUT, k)))
        else:
            launch = copy_launch((outer, length), (length, 1), 0, dtype, outer * total,
                                 f"concat piece {k} into {joined} on axis {axis}",
                                 out_row=total, out_base=offset, args=((IN, k), (OUT, 0)))
        if launch is not None:
            launches.append(launch)
        offset += length
    return Lowered(tuple(launches))


@kernel_builder("Concat")
def build_concat(spec: NodeSpec, target: Target) -> Lowered:
    out = spec.outputs[0]
    axis = spec.attrs["axis"] % out.rank
    return _joined([t.shape for t in spec.inputs], out.shape, axis, out.dtype, split=False)


@kernel_builder("Split")
def build_split(spec: NodeSpec, target: Target) -> Lowered:
    x = spec.inputs[0]
    axis = spec.attrs["axis"] % x.rank
    return _joined([t.shape for t in spec.outputs], x.shape, axis, x.dtype, split=True)


# -- Pad -------------------------------------------------------------------------------------
@kernel_builder("Pad")
def build_pad(spec: NodeSpec, target: Target) -> Lowered:
    x, out = spec.inputs[0], spec.outputs[0]
    if out.size == 0:
        return Lowered(())
    pads, mode, rank = spec.attrs["pads"], spec.attrs["mode"], x.rank
    own = contiguous_strides(x.shape)
    axes: list[dict] = []
    for k in range(rank):
        before, after = pads[k], pads[rank + k]
        lo = max(-before, 0)
        m = x.shape[k] - lo - max(-after, 0)
        padded = before > 0 or after > 0
        entry = {"out": out.shape[k], "before": max(before, 0), "m": m, "lo": lo,
                 "stride": own[k], "padded": padded}
        if not padded and lo == 0 and entry["out"] == x.shape[k]:
            if entry["out"] == 1:
                continue  # contributes nothing to either offset
            prev = axes[-1] if axes else None
            if prev is not None and not prev["padded"] and prev["lo"] == 0 \
                    and prev["out"] == prev["m"]:
                prev.update(out=prev["out"] * entry["out"], m=prev["m"] * entry["out"],
                            stride=entry["stride"])
                continue
        axes.append(entry)
    if not axes:  # a scalar, or only size-1 axes: one element
        axes.append({"out": 1, "before": 0, "m": 1, "lo": 0, "stride": 0, "padded": False})
    for k, entry in enumerate(axes):
        entry["k"] = k
    ctype = storage_type(x.dtype)
    value = bits_literal(spec.attrs["value"], x.dtype)
    idx = index_type(out.size, x.size)
    key = tuple(tuple(sorted(a.items())) for a in axes)
    name = kernel_name("pad", key, mode, value, ctype)
    source = render("pad.cl.j2", name=name, label=f"{x.shape} -> {out.shape}", mode=mode,
                    shape=out.shape, axes=axes, ctype=ctype, value=value, idx=idx)
    last = axes[-1]["out"]
    launch = Launch(Kernel(name, source), (last, out.size // last), None, ((IN, 0), (OUT, 0)))
    return Lowered((launch,))


# Gather-like ops and Resize register on import.
