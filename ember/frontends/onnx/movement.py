"""Converters of ONNX's data-movement ops.

Compile-time inputs (shapes, axes, starts, pads, repeats, scales) are read with
`ctx.const_input` and become resolved attributes; the opset differences (axes as an
attribute before 13, as an input from 13; Split's num_outputs from 18; Pad's axes from 18)
are handled here. Ops whose result depends only on static shapes or constants (Shape, Size,
ConstantOfShape, Range, EyeLike, Constant) become Constant nodes directly. Resize lives in
`movement_resize`, the constant producers in `movement_const`.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from ember.errors import ShapeError, UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import Value
from ember.ir.ops.common import normalize_axes, normalize_axis

__all__ = ["resolve_reshape", "split_sizes"]


def _ints(array: np.ndarray | None) -> list[int] | None:
    return None if array is None else [int(v) for v in np.asarray(array).reshape(-1)]


def _axes(ctx: ImportContext, node: onnx.NodeProto, index: int, first_opset: int
          ) -> list[int] | None:
    """Axes given as an attribute (opsets before `first_opset`) or as input `index`."""
    if ctx.opset < first_opset:
        value = ctx.attr(node, "axes")
        return None if value is None else [int(a) for a in value]
    return _ints(ctx.const_input(node, index, "axes"))


def _reshape(ctx: ImportContext, x: Value, shape: tuple[int, ...]) -> Value:
    return ctx.add("Reshape", [x], {"shape": tuple(shape)})


# -- Reshape and its relatives ---------------------------------------------------------------
def resolve_reshape(in_shape: tuple[int, ...], spec: list[int], allowzero: bool
                    ) -> tuple[int, ...]:
    """ONNX Reshape's target: 0 copies the input dim (unless allowzero), -1 is inferred."""
    out = []
    for i, d in enumerate(spec):
        if d == 0 and not allowzero:
            if i >= len(in_shape):
                raise ShapeError(f"Reshape shape {spec}: 0 at index {i} copies a dim the "
                                 f"input {in_shape} lacks")
            d = in_shape[i]
        out.append(d)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise ShapeError(f"Reshape shape {spec} has more than one -1 or a negative dim")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        total = math.prod(in_shape)
        if known == 0 or total % known:
            raise ShapeError(f"Reshape cannot infer -1 in {spec} for input {in_shape}")
        out[out.index(-1)] = total // known
    return tuple(out)


@onnx_op("Reshape")
def _reshape_op(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    spec = _ints(ctx.const_input(node, 1, "shape"))
    shape = resolve_reshape(ctx.type_of(x).shape, spec, bool(ctx.attr(node, "allowzero", 0)))
    return [_reshape(ctx, x, shape)]


@onnx_op("Flatten")
def _flatten(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    shape = ctx.type_of(x).shape
    axis = int(ctx.attr(node, "axis", 1))
    if not -len(shape) <= axis <= len(shape):
        raise ShapeError(f"Flatten axis {axis} is out of range for rank {len(shape)}")
    if axis < 0:
        axis += len(shape)
    return [_reshape(ctx, x, (math.prod(shape[:axis]), math.prod(shape[axis:])))]


@onnx_op("Squeeze")
def _squeeze(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    shape = ctx.type_of(x).shape
    axes = _axes(ctx, node, 1, 13)
    if axes is None:
        axes = [k for k, d in enumerate(shape) if d == 1]
    axes = normalize_axes(axes, len(shape), what="Squeeze axes")
    for a in axes:
        if shape[a] != 1:
            raise ShapeError(f"Squeeze axis {a} of shape {shape} has size {shape[a]}, not 1")
    return [_reshape(ctx, x, tuple(d for k, d in enumerate(shape) if k not in axes))]


@onnx_op("Unsqueeze")
def _unsqueeze(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    shape = list(ctx.type_of(x).shape)
    axes = _axes(ctx, node, 1, 13)
    if axes is None:
        raise ShapeError("Unsqueeze needs axes")
    rank = len(shape) + len(axes)
    for a in sorted(normalize_axes(axes, rank, what="Unsqueeze axes")):
        shape.insert(a, 1)
    return [_reshape(ctx, x, tuple(shape))]


# -- Transpose, Concat, Split ----------------------------------------------------------------
@onnx_op("Transpose")
def _transpose(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    perm = ctx.attr(node, "perm")
    rank = ctx.type_of(x).rank
    perm = tuple(reversed(range(rank))) if perm is None else tuple(int(p) for p in perm)
    return [ctx.add("Transpose", [x], {"perm": perm})]


@onnx_op("Concat")
def _concat(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    values = [v for v in ctx.inputs(node) if v is not None]
    axis = int(ctx.attr(node, "axis"))
    rank = ctx.type_of(values[0]).rank
    return [ctx.add("Concat", values, {"axis": normalize_axis(axis, rank)})]


def split_sizes(dim: int, parts: int) -> tuple[int, ...]:
    """ONNX's equal split: chunks of ceil(dim / parts), the last one smaller."""
    if parts < 1:
        raise ShapeError(f"Split into {parts} parts")
    chunk = -(-dim // parts)
    sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(parts)]
    return tuple(sizes)


@onnx_op("Split")
def _split(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    shape = ctx.type_of(x).shape
    axis = normalize_axis(int(ctx.attr(node, "axis", 0)), len(shape))
    if ctx.opset < 13:
        splits = ctx.attr(node, "split")
    else:
        splits = _ints(ctx.const_input(node, 1, "split"))
    if splits is None:
        parts = int(ctx.attr(node, "num_outputs", len(node.output)))
        splits = split_sizes(shape[axis], parts)
    return list(ctx.add_multi("Split", [x], {"axis": axis, "splits": tuple(splits)}))


# -- Slice, Gather, Expand, Tile -------------------------------------------------------------
@onnx_op("Slice")
def _slice(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    starts = _ints(ctx.const_input(node, 1, "starts"))
    ends = _ints(ctx.const_input(node, 2, "ends"))
    axes = _ints(ctx.const_input(node, 3, "axes"))
    steps = _ints(ctx.const_input(node, 4, "steps"))
    rank = ctx.type_of(x).rank
    axes = list(range(len(starts))) if axes is None else [normalize_axis(a, rank) for a in axes]
    attrs = {"starts": tuple(starts), "ends": tuple(ends), "axes": tuple(axes),
             "steps": tuple(steps) if steps is not None else (1,) * len(starts)}
    return [ctx.add("Slice", [x], attrs)]


@onnx_op("Gather", "GatherElements")
def _gather(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    data, indices = ctx.input(node, 0), ctx.input(node, 1)
    axis = normalize_axis(int(ctx.attr(node, "axis", 0)), ctx.type_of(data).rank)
    return [ctx.add(node.op_type, [data, indices], {"axis": axis})]


@onnx_op("Expand")
def _expand(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    shape = _ints(ctx.const_input(node, 1, "shape"))
    return [ctx.add("Expand", [ctx.input(node, 0)], {"shape": tuple(shape)})]


@onnx_op("Tile")
def _tile(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    repeats = _ints(ctx.const_input(node, 1, "repeats"))
    return [ctx.add("Tile", [ctx.input(node, 0)], {"repeats": tuple(repeats)})]


# -- Pad, DepthToSpace, SpaceToDepth ---------------------------------------------------------
@onnx_op("Pad")
def _pad(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    rank = ctx.type_of(x).rank
    mode = ctx.attr(node, "mode", "constant")
    if ctx.opset < 11:
        raw = [int(p) for p in ctx.attr(node, "pads")]
        value = np.asarray(ctx.attr(node, "value", 0.0))
        axes = None
    else:
        raw = _ints(ctx.const_input(node, 1, "pads"))
        constant = ctx.const_input(node, 2, "constant_value")
        value = np.asarray(0.0) if constant is None or constant.size == 0 else constant
        axes = _ints(ctx.const_input(node, 3, "axes")) if ctx.opset >= 18 else None
    axes = list(range(rank)) if axes is None else list(normalize_axes(axes, rank, what="Pad axes"))
    if len(raw) != 2 * len(axes):
        raise ShapeError(f"Pad pads {raw} must have 2 entries per axis of {axes}")
    pads = [0] * (2 * rank)
    for i, a in enumerate(axes):
        pads[a], pads[rank + a] = raw[i], raw[len(axes) + i]
    value = np.asarray(value).reshape(-1)[0] if np.asarray(value).size else np.asarray(0.0)
    return [ctx.add("Pad", [x], {"pads": tuple(pads), "mode": mode, "value": np.asarray(value)})]


@onnx_op("DepthToSpace", "SpaceToDepth")
def _block(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    mode = ctx.attr(node, "mode", "DCR")
    attrs = {"blocksize": int(ctx.attr(node, "blocksize")), "mode": mode}
    return [ctx.add(node.op_type, [ctx.input(node, 0)], attrs)]


# -- Identity, Dropout -----------------------------------------------------------------------
@onnx_op("Identity")
def _identity(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    return [ctx.add("Identity", [ctx.input(node, 0)])]


@onnx_op("Dropout")
def _dropout(ctx: ImportContext, node: onnx.NodeProto) -> list[Value | None]:
    """Inference Dropout is the identity (its mask all True). Training mode with a non-zero
    ratio draws random numbers, which ember does not do."""
    x = ctx.input(node, 0)
    if ctx.opset >= 12:
        ratio_a = ctx.const_input(node, 1, "ratio")
        training_a = ctx.const_input(node, 2, "training_mode")
        ratio = 0.5 if ratio_a is None else float(np.asarray(ratio_a).reshape(-1)[0])
        training = training_a is not None and bool(np.asarray(training_a).reshape(-1)[0])
        if training and ratio != 0.0:
            raise UnsupportedOpError(
                f"{ctx.where}: training-mode Dropout with ratio {ratio} is random; ember "
                "runs inference only")
    outputs: list[Value | None] = [ctx.add("Identity", [x])]
    if len(node.output) > 1 and node.output[1]:
        shape = ctx.type_of(x).shape
        outputs.append(ctx.constant(np.ones(shape, dtype=np.bool_)))
    return outputs
