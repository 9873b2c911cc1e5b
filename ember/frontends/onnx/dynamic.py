"""Converters of the ops whose output shape depends on input values (NonZero, Unique,
Compress, NonMaxSuppression) and of ReverseSequence.

The data-dependent ones go through `ctx.add_data_dependent`: folded when their inputs are
constants, else DataDependentError (the node then runs on the host between compiled
segments). Compress with a constant condition has a static shape: it becomes a Gather with
constant indices and runs on the device. ReverseSequence has a static shape too: its
per-element source index along the time axis is computed from the sequence lengths with
elementwise ops, and a GatherElements moves the data, so it runs on the device even when the
lengths are only known at run time.
"""

from __future__ import annotations

import numpy as np
import onnx

from ember.errors import DTypeError, ShapeError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import Value
from ember.ir.ops.common import normalize_axis
from ember.ir.ops.dynamic import compress_indices

__all__: list[str] = []


def _outputs(node: onnx.NodeProto, results: tuple[Value, ...]) -> list[Value | None]:
    """The results the node names; an output left empty ("") gets None."""
    return [value if index < len(node.output) and node.output[index] else None
            for index, value in enumerate(results)][:len(node.output)]


@onnx_op("NonZero")
def _nonzero(ctx: ImportContext, node: onnx.NodeProto) -> list[Value | None]:
    return _outputs(node, ctx.add_data_dependent("NonZero", [ctx.input(node, 0)]))


@onnx_op("Unique")
def _unique(ctx: ImportContext, node: onnx.NodeProto) -> list[Value | None]:
    x = ctx.input(node, 0)
    axis = ctx.attr(node, "axis")
    if axis is not None:
        axis = normalize_axis(int(axis), ctx.type_of(x).rank, what=f"{ctx.where} axis")
    attrs = {"axis": axis, "sorted": 1 if ctx.attr(node, "sorted", 1) else 0}
    return _outputs(node, ctx.add_data_dependent("Unique", [x], attrs))


@onnx_op("Compress")
def _compress(ctx: ImportContext, node: onnx.NodeProto) -> list[Value | None]:
    x, condition = ctx.input(node, 0), ctx.input(node, 1)
    x_type = ctx.type_of(x)
    axis = ctx.attr(node, "axis")
    if axis is not None:
        if x_type.rank == 0:
            raise ShapeError(f"{ctx.where}: axis {axis} given for a scalar input")
        axis = normalize_axis(int(axis), x_type.rank, what=f"{ctx.where} axis")
    known = ctx.graph.constant_value(condition)
    if known is None:
        return _outputs(node, ctx.add_data_dependent("Compress", [x, condition],
                                                     {"axis": axis}))
    if axis is None:
        x = ctx.add("Reshape", [x], {"shape": (x_type.size,)})
    dim = x_type.size if axis is None else x_type.shape[axis]
    kept = ctx.constant(compress_indices(np.asarray(known), dim))
    return [ctx.add("Gather", [x, kept], {"axis": 0 if axis is None else axis})]


@onnx_op("NonMaxSuppression")
def _non_max_suppression(ctx: ImportContext, node: onnx.NodeProto) -> list[Value | None]:
    inputs = [ctx.input(node, i) for i in range(5)]  # absent optional inputs are None
    attrs = {"center_point_box": int(ctx.attr(node, "center_point_box", 0))}
    return _outputs(node, ctx.add_data_dependent("NonMaxSuppression", inputs, attrs))


def _plane(axis: int, length: int) -> tuple[int, ...]:
    """The (axis 0, axis 1) shape with `length` on `axis` and 1 on the other."""
    return tuple(length if a == axis else 1 for a in range(2))


@onnx_op("ReverseSequence")
def _reverse_sequence(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """out[t, b] = x[lens[b] - 1 - t, b] where t < lens[b], else x[t, b]. Lengths outside
    [0, time steps], which onnxruntime refuses, reverse the whole axis (above) or nothing
    (below): every read stays in bounds."""
    x, lens = ctx.input(node, 0), ctx.input(node, 1)
    shape = ctx.type_of(x).shape
    lens_type = ctx.type_of(lens)
    if len(shape) < 2:
        raise ShapeError(f"{ctx.where}: input must have rank >= 2, got shape {shape}")
    time_axis = normalize_axis(int(ctx.attr(node, "time_axis", 0)), 2,
                               what=f"{ctx.where} time_axis")
    batch_axis = normalize_axis(int(ctx.attr(node, "batch_axis", 1)), 2,
                                what=f"{ctx.where} batch_axis")
    if time_axis == batch_axis:
        raise ShapeError(f"{ctx.where}: time_axis and batch_axis are both {time_axis}")
    steps, batch = shape[time_axis], shape[batch_axis]
    if lens_type.shape != (batch,):
        raise ShapeError(f"{ctx.where}: sequence_lens has shape {lens_type.shape}; expected "
                         f"({batch},), one length per batch entry")
    if not lens_type.dtype.is_integer:
        raise DTypeError(f"{ctx.where}: sequence_lens must be integer, got {lens_type.dtype}")
    index_dtype = lens_type.dtype.np_dtype
    lens = ctx.add("Reshape", [lens], {"shape": _plane(batch_axis, batch)})
    lens = ctx.add("Min", [lens, ctx.constant(np.array(steps, dtype=index_dtype))])
    time = np.arange(steps, dtype=index_dtype).reshape(_plane(time_axis, steps))
    reversed_source = ctx.add("Sub", [lens, ctx.constant(time + 1)])
    inside = ctx.add("Less", [ctx.constant(time), lens])
    source = ctx.add("Where", [inside, reversed_source, ctx.constant(time)])
    if len(shape) > 2:
        source = ctx.add("Reshape", [source], {"shape": ctx.type_of(source).shape
                                               + (1,) * (len(shape) - 2)})
    if ctx.type_of(source).shape != shape:
        source = ctx.add("Expand", [source], {"shape": shape})
    return [ctx.add("GatherElements", [x, source], {"axis": time_axis})]
