"""Resize: nearest, linear and cubic interpolation (with antialiasing), ONNX semantics.

Resizing is separable: along each resized axis, output position y reads `n` neighbours of
a source coordinate x(y) with weights. `axis_taps` computes those (indices, weights, and
whether y falls outside a tf_crop_and_resize box) in float64 exactly as ONNX's reference
does; the numpy reference applies them axis by axis and the OpenCL kernel
(codegen/resize.py) computes the same formulas per work-item.

The frontend resolves ONNX's scales/sizes/axes/keep_aspect_ratio_policy into two full-rank
attributes: `sizes` (the output shape) and `scales` (the factor used in the coordinate
transform, per axis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = [
    "axis_taps", "resized_axes", "tap_count", "source_coordinates", "cast_value",
    "COORDINATE_MODES", "NEAREST_MODES",
]

COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel",
                    "align_corners", "asymmetric", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def resized_axes(in_shape: Sequence[int], attrs: Attrs) -> tuple[int, ...]:
    """Axes that really resize. ONNX skips an axis whose scale is ~1, whose size does not
    change and whose roi is the whole axis: it is copied exactly."""
    roi = attrs["roi"]
    rank = len(in_shape)
    out = []
    for axis in range(rank):
        same = (math.isclose(attrs["scales"][axis], 1.0)
                and attrs["sizes"][axis] == in_shape[axis])
        if same and roi is not None:
            same = math.isclose(roi[axis], 0.0) and math.isclose(roi[rank + axis], 1.0)
        if not same:
            out.append(axis)
    return tuple(out)


def tap_count(attrs: Attrs, scale: float) -> int:
    """Neighbours read per output position on an axis with this scale."""
    mode = attrs["mode"]
    if mode == "nearest":
        return 2
    s = min(scale, 1.0) if attrs["antialias"] else 1.0
    if mode == "linear":
        return 2 if not attrs["antialias"] else 2 - 2 * (math.floor(-1.0 / s) + 1)
    return 4 if not attrs["antialias"] else 2 - 2 * (math.floor(-2.0 / s) + 1)


def source_coordinates(y: np.ndarray, in_w: int, out_w: int, scale: float, attrs: Attrs,
                       roi: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """x(y) in float64 per coordinate_transformation_mode, and the extrapolated mask."""
    mode = attrs["coordinate_transformation_mode"]
    width = scale * in_w  # ONNX uses the unrounded output width
    outside = np.zeros(y.shape, dtype=bool)
    if mode == "align_corners":
        x = np.zeros_like(y) if width == 1 else y * (in_w - 1) / (width - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        r0, r1 = roi if roi is not None else (0.0, 1.0)
        if width == 1:
            x = np.full_like(y, (r1 - r0) * (in_w - 1) / 2)
        else:
            x = y * (r1 - r0) * (in_w - 1) / (width - 1)
        x = x + r0 * (in_w - 1)
        outside = (x < 0) | (x > in_w - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full_like(y, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    else:  # half_pixel_symmetric
        offset = (in_w / 2) * (1 - out_w / width)
        x = offset + (y + 0.5) / scale - 0.5
    return x, outside


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    x2 = x * x
    x3 = x * x2
    near = (a + 2) * x3 - (a + 3) * x2 + 1
    far = a * x3 - 5 * a * x2 + 8 * a * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _weights(ratio: np.ndarray, n: int, scale: float, attrs: Attrs) -> np.ndarray:
    """[out, n] weights of the n neighbours starting at floor(x) + 1 - n/2."""
    mode, r = attrs["mode"], ratio[:, None]
    if mode == "nearest":
        nearest = attrs["nearest_mode"]
        if nearest == "round_prefer_floor":
            up = r > 0.5
        elif nearest == "round_prefer_ceil":
            up = r >= 0.5
        else:
            up = np.full(r.shape, nearest == "ceil")
        up = up | (r == 1.0)  # an exact source pixel: the right-hand neighbour is it
        return np.concatenate([~up, up], axis=1).astype(np.float64)
    if not attrs["antialias"]:
        if mode == "linear":
            return np.concatenate([1 - r, r], axis=1)
        a = attrs["cubic_coeff_a"]
        # Same polynomial forms as ONNX (distances 1+r, r, 1-r, 2-r).
        return np.concatenate([
            ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
            ((a + 2) * r - (a + 3)) * r * r + 1,
            ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
            ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a,
        ], axis=1)
    s = min(scale, 1.0)
    offsets = np.arange(1 - n // 2, 1 - n // 2 + n)[None, :]
    args = (offsets - r) * s
    if mode == "linear":
        w = np.clip(1 - np.abs(args), 0, 1)
    else:
        w = _cubic(args, attrs["cubic_coeff_a"])
    return w / w.sum(axis=1, keepdims=True)


def axis_taps(in_w: int, out_w: int, scale: float, attrs: Attrs,
              roi: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices [out_w, n] clamped into [0, in_w), weights [out_w, n], outside [out_w])."""
    n = tap_count(attrs, scale)
    y = np.arange(out_w, dtype=np.float64)
    x, outside = source_coordinates(y, in_w, out_w, scale, attrs, roi)
    floor = np.floor(x)
    ratio = np.where(x == floor, 1.0, x - floor)
    weights = _weights(ratio, n, scale, attrs)
    # The window of the n nearest points, ties to the smaller index (ONNX pads by n/2).
    padded = x + n // 2
    p = np.floor(padded)
    start = p.astype(np.int64) + np.where(padded - p == 0, -(n // 2), 1 - n // 2) - n // 2
    index = start[:, None] + np.arange(n)[None, :]
    if attrs["exclude_outside"]:
        weights = np.where((index < 0) | (index >= in_w), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    return np.clip(index, 0, max(in_w - 1, 0)), weights, outside


def _infer_resize(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    sizes, scales = attrs["sizes"], attrs["scales"]
    if len(sizes) != x.rank or len(scales) != x.rank:
        raise ShapeError(f"Resize sizes {sizes} and scales {scales} must have rank {x.rank}")
    if attrs["roi"] is not None and len(attrs["roi"]) != 2 * x.rank:
        raise ShapeError(f"Resize roi {attrs['roi']} must have 2 * rank entries")
    if any(s <= 0 for s in scales) or any(d < 0 for d in sizes):
        raise ShapeError(f"Resize scales {scales} must be > 0 and sizes {sizes} >= 0")
    for axis in resized_axes(x.shape, attrs):
        if x.shape[axis] == 0 and sizes[axis] > 0:
            raise ShapeError(f"Resize cannot resize the empty axis {axis} to {sizes[axis]}")
    if not (x.dtype.is_float or x.dtype.is_integer):
        raise DTypeError(f"Resize expects a numeric tensor, got {x.dtype}")
    if attrs["antialias"] and attrs["mode"] == "nearest":
        raise ShapeError("Resize antialias is not defined for mode 'nearest'")
    return (x.with_shape(sizes),)


def cast_value(value: float, dtype: np.dtype) -> np.ndarray:
    """A float result in the output dtype: integers round half to even and saturate."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        value = np.clip(np.round(value), info.min, info.max)
    return np.asarray(value).astype(dtype)


def _resize(x: np.ndarray, **kwargs) -> np.ndarray:
    attrs = Attrs(kwargs)
    nearest = attrs["mode"] == "nearest"
    # Nearest copies elements exactly; interpolation computes in float64.
    result = x if nearest else x.astype(np.float64)
    fill = cast_value(attrs["extrapolation_value"], x.dtype) if nearest else \
        np.float64(attrs["extrapolation_value"])
    rank = x.ndim
    roi = attrs["roi"]
    for axis in resized_axes(x.shape, attrs):
        out_w = attrs["sizes"][axis]
        if out_w == 0 or result.size == 0:
            shape = list(result.shape)
            shape[axis] = out_w
            result = np.zeros(shape, result.dtype)
            continue
        pair = (roi[axis], roi[rank + axis]) if roi is not None else None
        index, weights, outside = axis_taps(x.shape[axis], out_w, attrs["scales"][axis],
                                            attrs, pair)
        if nearest:
            result = np.take(result, np.where(weights[:, 1] > 0, index[:, 1], index[:, 0]),
                             axis=axis)
            # exclude_outside drops a chosen neighbour outside the input: the value is 0.
            dropped = weights.sum(axis=1) == 0
            if dropped.any():
                mask = dropped.reshape((1,) * axis + (out_w,) + (1,) * (rank - axis - 1))
                result = np.where(mask, np.zeros((), x.dtype), result)
        else:
            gathered = np.take(result, index, axis=axis)  # axis -> (out_w, n)
            shape = (1,) * axis + weights.shape + (1,) * (rank - axis - 1)
            result = (gathered * weights.reshape(shape)).sum(axis=axis + 1)
        if outside.any():
            mask = outside.reshape((1,) * axis + (out_w,) + (1,) * (rank - axis - 1))
            result = np.where(mask, fill, result)
    return result.copy() if nearest else cast_value(result, x.dtype)


_S = AttrKind.STRING
OPS.register(OpDef(
    "Resize", _infer_resize, _resize,
    attrs=(
        attr("sizes", AttrKind.INTS),
        attr("scales", AttrKind.FLOATS),
        attr("mode", _S, "nearest", ("nearest", "linear", "cubic")),
        attr("coordinate_transformation_mode", _S, "half_pixel", COORDINATE_MODES),
        attr("nearest_mode", _S, "round_prefer_floor", NEAREST_MODES),
        attr("cubic_coeff_a", AttrKind.FLOAT, -0.75),
        attr("exclude_outside", AttrKind.INT, 0),
        attr("extrapolation_value", AttrKind.FLOAT, 0.0),
        attr("antialias", AttrKind.INT, 0),
        attr("roi", AttrKind.FLOATS, None),
    ),
    doc="Interpolating resize (nearest/linear/cubic, optional antialias), ONNX semantics.",
))
