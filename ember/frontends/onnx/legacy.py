"""Converters of deprecated ONNX ops that are another op under an old name: Upsample (a
Resize by scales) and Scatter (ScatterElements). The loader lifts old models to opset 13,
and onnx's version converter usually renames them on the way; these cover the rest."""

from __future__ import annotations

import numpy as np
import onnx

from ember.errors import ShapeError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.frontends.onnx.movement_resize import resolve_resize
from ember.ir import Value
from ember.ir.ops.common import normalize_axis

__all__: list[str] = []


@onnx_op("Upsample")
def _upsample(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """Upsample's output index i reads input i / scale: Resize's asymmetric coordinates,
    rounded down for nearest."""
    x = ctx.input(node, 0)
    shape = ctx.type_of(x).shape
    given = ctx.attr(node, "scales")
    scales = np.asarray(given if given is not None else ctx.const_input(node, 1, "scales"),
                        dtype=np.float64).reshape(-1)
    if len(scales) != len(shape):
        raise ShapeError(f"{ctx.where}: scales {scales.tolist()} must have {len(shape)} entries")
    sizes, factors = resolve_resize(shape, tuple(range(len(shape))), scales, None, "stretch")
    mode = ctx.attr(node, "mode", "nearest")
    attrs = {
        "sizes": sizes, "scales": factors, "mode": "linear" if mode == "bilinear" else mode,
        "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor",
        "cubic_coeff_a": -0.75, "exclude_outside": 0, "extrapolation_value": 0.0,
        "antialias": 0, "roi": None,
    }
    return [ctx.add("Resize", [x], attrs)]


@onnx_op("Scatter")
def _scatter(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    data = ctx.input(node, 0)
    axis = normalize_axis(int(ctx.attr(node, "axis", 0)), ctx.type_of(data).rank,
                          what=f"{ctx.where} axis")
    attrs = {"axis": axis, "reduction": "none"}
    return [ctx.add("ScatterElements", ctx.inputs(node)[:3], attrs)]
