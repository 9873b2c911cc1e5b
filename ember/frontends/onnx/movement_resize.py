"""The ONNX Resize converter: resolves roi, scales or sizes, axes (opset 18+) and
keep_aspect_ratio_policy into ember's full-rank `sizes` and `scales` attributes, the way
ONNX's definition computes them."""

from __future__ import annotations

import math

import numpy as np
import onnx

from ember.errors import ShapeError, UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import Value
from ember.ir.ops.common import normalize_axes

__all__ = ["resolve_resize"]


def _given(array: np.ndarray | None) -> np.ndarray | None:
    """An optional tensor input: absent or empty both mean 'not given'."""
    if array is None or np.asarray(array).size == 0:
        return None
    return np.asarray(array).reshape(-1)


def resolve_resize(in_shape: tuple[int, ...], axes: tuple[int, ...],
                   scales: np.ndarray | None, sizes: np.ndarray | None, policy: str
                   ) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(output sizes, per-axis scale factors) for all axes of the input."""
    rank = len(in_shape)
    if (scales is None) == (sizes is None):
        raise ShapeError("Resize needs exactly one of scales and sizes")
    if scales is not None:
        if len(scales) != len(axes):
            raise ShapeError(f"Resize scales {scales.tolist()} must have {len(axes)} entries")
        factors = [1.0] * rank
        for i, a in enumerate(axes):
            factors[a] = float(scales[i])
        out = tuple(int(math.floor(factors[k] * in_shape[k])) for k in range(rank))
        return out, tuple(factors)
    if len(sizes) != len(axes):
        raise ShapeError(f"Resize sizes {sizes.tolist()} must have {len(axes)} entries")
    out_list = list(in_shape)
    for i, a in enumerate(axes):
        out_list[a] = int(sizes[i])
    if any(in_shape[a] == 0 for a in axes):
        raise ShapeError(f"Resize by sizes cannot scale the empty input {in_shape}")
    factors = [out_list[k] / in_shape[k] if k in axes else 1.0 for k in range(rank)]
    if policy != "stretch":
        chosen = [factors[a] for a in axes]
        scale = min(chosen) if policy == "not_larger" else max(chosen)
        factors = [scale if k in axes else 1.0 for k in range(rank)]
        out_list = [int(scale * in_shape[k] + 0.5) if k in axes else in_shape[k]
                    for k in range(rank)]
    return tuple(out_list), tuple(factors)


@onnx_op("Resize")
def _resize(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    shape = ctx.type_of(x).shape
    rank = len(shape)
    axes_attr = ctx.attr(node, "axes")
    axes = tuple(range(rank)) if axes_attr is None else normalize_axes(
        [int(a) for a in axes_attr], rank, what="Resize axes")
    policy = ctx.attr(node, "keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise UnsupportedOpError(f"{ctx.where}: keep_aspect_ratio_policy {policy!r}")
    roi_in = _given(ctx.const_input(node, 1, "roi"))
    scales = _given(ctx.const_input(node, 2, "scales"))
    sizes = _given(ctx.const_input(node, 3, "sizes"))
    out, factors = resolve_resize(shape, axes, scales, sizes, policy)
    coord = ctx.attr(node, "coordinate_transformation_mode", "half_pixel")
    roi = None
    if coord == "tf_crop_and_resize":
        full = [0.0] * rank + [1.0] * rank
        if roi_in is not None:
            if len(roi_in) != 2 * len(axes):
                raise ShapeError(f"Resize roi {roi_in.tolist()} must have 2 entries per axis")
            for i, a in enumerate(axes):
                full[a], full[rank + a] = float(roi_in[i]), float(roi_in[len(axes) + i])
        roi = tuple(full)
    attrs = {
        "sizes": out,
        "scales": factors,
        "mode": ctx.attr(node, "mode", "nearest"),
        "coordinate_transformation_mode": coord,
        "nearest_mode": ctx.attr(node, "nearest_mode", "round_prefer_floor"),
        "cubic_coeff_a": float(ctx.attr(node, "cubic_coeff_a", -0.75)),
        "exclude_outside": int(ctx.attr(node, "exclude_outside", 0)),
        "extrapolation_value": float(ctx.attr(node, "extrapolation_value", 0.0)),
        "antialias": int(ctx.attr(node, "antialias", 0)),
        "roi": roi,
    }
    return [ctx.add("Resize", [x], attrs)]
