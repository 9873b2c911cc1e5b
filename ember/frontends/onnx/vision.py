"""Converters of ONNX's vision ops: GroupNormalization, GridSample, AffineGrid, DeformConv,
Col2Im, RoiAlign, MaxUnpool, LpPool and CenterCropPad.

Shape inputs (AffineGrid's size, Col2Im's image and block shapes, MaxUnpool's output_shape,
CenterCropPad's shape) must be compile-time constants and become attributes. Two ops are
rewritten onto ops that have device kernels: LpPool is (sum |x|^p over the window)^(1/p),
a depthwise Conv of ones between two Pows; CenterCropPad is one Pad whose negative pads
crop.
"""

from __future__ import annotations

import numpy as np
import onnx

from ember.errors import ShapeError, UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import DType, Value
from ember.ir.ops.pool import AUTO_PADS, pool_geometry, resolve_auto_pad

__all__: list[str] = []


def _ints(values) -> list[int]:
    return [int(v) for v in (values if values is not None else [])]


def _shape_input(ctx: ImportContext, node: onnx.NodeProto, index: int, what: str
                 ) -> list[int] | None:
    array = ctx.const_input(node, index, what)
    return None if array is None else _ints(np.asarray(array).reshape(-1))


@onnx_op("GroupNormalization")
def _group_norm(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """Opset 21's form (scale and bias per channel). Opset 18's per-group form never gets
    here: onnx's checker refuses GroupNormalization below opset 21 as deprecated."""
    groups = ctx.attr(node, "num_groups")
    if groups is None:
        raise UnsupportedOpError(f"{ctx.where}: attribute num_groups is required")
    attrs = {"num_groups": int(groups), "epsilon": float(ctx.attr(node, "epsilon", 1e-5)),
             "stash_type": DType.from_onnx(int(ctx.attr(node, "stash_type", 1)))}
    return [ctx.add("GroupNormalization", ctx.inputs(node)[:3], attrs)]


_GRID_MODES = {"bilinear": "linear", "bicubic": "cubic"}  # opset 16's names


@onnx_op("GridSample")
def _grid_sample(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    mode = ctx.attr(node, "mode", "linear" if ctx.opset >= 20 else "bilinear")
    attrs = {"mode": _GRID_MODES.get(mode, mode),
             "padding_mode": ctx.attr(node, "padding_mode", "zeros"),
             "align_corners": int(ctx.attr(node, "align_corners", 0))}
    return [ctx.add("GridSample", [ctx.input(node, 0), ctx.input(node, 1)], attrs)]


@onnx_op("AffineGrid")
def _affine_grid(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    size = _shape_input(ctx, node, 1, "size")
    return [ctx.add("AffineGrid", [ctx.input(node, 0)],
                    {"size": size, "align_corners": int(ctx.attr(node, "align_corners", 0))})]


@onnx_op("DeformConv")
def _deform_conv(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x, w, offset, bias, mask = (ctx.input(node, i) for i in range(5))
    inputs = [x, w, offset]
    if mask is not None and bias is None:  # the op's inputs are positional
        out_channels = ctx.type_of(w).shape[0]
        bias = ctx.constant(np.zeros(out_channels, ctx.type_of(x).dtype.np_dtype))
    inputs += [v for v in (bias, mask) if v is not None]
    attrs = {name: _ints(ctx.attr(node, name)) for name in
             ("dilations", "kernel_shape", "pads", "strides")}
    attrs.update(group=int(ctx.attr(node, "group", 1)),
                 offset_group=int(ctx.attr(node, "offset_group", 1)))
    return [ctx.add("DeformConv", inputs, attrs)]


@onnx_op("Col2Im")
def _col2im(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    attrs = {"image_shape": _shape_input(ctx, node, 1, "image_shape"),
             "block_shape": _shape_input(ctx, node, 2, "block_shape")}
    attrs.update({name: _ints(ctx.attr(node, name)) for name in
                  ("dilations", "pads", "strides")})
    return [ctx.add("Col2Im", [ctx.input(node, 0)], attrs)]


@onnx_op("RoiAlign")
def _roi_align(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    # before opset 16 RoiAlign had no attribute and shifted no half pixel
    default_mode = "half_pixel" if ctx.opset >= 16 else "output_half_pixel"
    attrs = {"coordinate_transformation_mode":
             ctx.attr(node, "coordinate_transformation_mode", default_mode),
             "mode": ctx.attr(node, "mode", "avg"),
             "output_height": int(ctx.attr(node, "output_height", 1)),
             "output_width": int(ctx.attr(node, "output_width", 1)),
             "sampling_ratio": int(ctx.attr(node, "sampling_ratio", 0)),
             "spatial_scale": float(ctx.attr(node, "spatial_scale", 1.0))}
    return [ctx.add("RoiAlign", ctx.inputs(node)[:3], attrs)]


@onnx_op("MaxUnpool")
def _max_unpool(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    output_shape = _shape_input(ctx, node, 2, "output_shape") or []
    attrs = {"kernel_shape": _ints(ctx.attr(node, "kernel_shape")),
             "strides": _ints(ctx.attr(node, "strides")),
             "pads": _ints(ctx.attr(node, "pads")), "output_shape": output_shape}
    return [ctx.add("MaxUnpool", [ctx.input(node, 0), ctx.input(node, 1)], attrs)]


@onnx_op("LpPool")
def _lp_pool(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    t = ctx.type_of(x)
    kernel = _ints(ctx.attr(node, "kernel_shape"))
    if not kernel or t.rank != len(kernel) + 2:
        raise ShapeError(f"{ctx.where}: kernel_shape {kernel} does not fit X {t.shape}")
    k = len(kernel)
    strides = _ints(ctx.attr(node, "strides")) or [1] * k
    dilations = _ints(ctx.attr(node, "dilations")) or [1] * k
    pads = _ints(ctx.attr(node, "pads")) or [0] * (2 * k)
    ceil_mode = int(ctx.attr(node, "ceil_mode", 0))
    auto_pad = ctx.attr(node, "auto_pad", "NOTSET") or "NOTSET"
    if auto_pad not in AUTO_PADS:
        raise UnsupportedOpError(f"{ctx.where}: auto_pad {auto_pad!r} is not one of {AUTO_PADS}")
    if auto_pad != "NOTSET":
        pads, ceil_mode = list(resolve_auto_pad(auto_pad, t.shape[2:], kernel, strides,
                                                dilations)), 0
    g = pool_geometry(t, {"kernel_shape": kernel, "strides": strides, "pads": pads,
                          "dilations": dilations, "ceil_mode": ceil_mode})
    # ceil mode's last window reaches past the end pad: zeros there add nothing to the sum
    ends = [max(pads[k + i], (g.out_shape[i] - 1) * strides[i] + (kernel[i] - 1)
                * dilations[i] + 1 - t.shape[2 + i] - pads[i]) for i in range(k)]
    p = float(ctx.attr(node, "p", 2))
    dtype = t.dtype.np_dtype
    magnitude = ctx.add("Abs", [x])
    powered = ctx.add("Mul", [magnitude, magnitude]) if p == 2 else magnitude if p == 1 \
        else ctx.add("Pow", [magnitude, ctx.constant(np.asarray(p, dtype))])
    ones = ctx.constant(np.ones((t.shape[1], 1, *kernel), dtype))
    sums = ctx.add("Conv", [powered, ones],
                   {"strides": strides, "dilations": dilations, "pads": pads[:k] + ends,
                    "group": t.shape[1]})
    if p == 1:
        return [sums]
    if p == 2:
        return [ctx.add("Sqrt", [sums])]
    return [ctx.add("Pow", [sums, ctx.constant(np.asarray(1.0 / p, dtype))])]


@onnx_op("CenterCropPad")
def _center_crop_pad(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    shape = ctx.type_of(x).shape
    rank = len(shape)
    target = _shape_input(ctx, node, 1, "shape")
    axes = _ints(ctx.attr(node, "axes")) or list(range(rank))
    if len(axes) != len(target) or any(not -rank <= a < rank for a in axes):
        raise ShapeError(f"{ctx.where}: shape {target} and axes {axes} do not fit input "
                         f"{shape}")
    pads = [0] * (2 * rank)
    for axis, size in zip(axes, target):
        axis %= rank
        grow = size - shape[axis]  # negative: crop
        begin = grow // 2 if grow >= 0 else -((-grow) // 2)
        pads[axis], pads[rank + axis] = begin, grow - begin
    return [ctx.add("Pad", [x], {"pads": pads, "mode": "constant"})]
