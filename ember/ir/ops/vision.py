"""Vision ops: GroupNormalization, GridSample, AffineGrid, DeformConv, Col2Im, RoiAlign and
MaxUnpool.

Inputs that ONNX passes as tensors but that fix an output shape (AffineGrid's size, Col2Im's
image and block shapes, MaxUnpool's output_shape) are attributes here: the frontend reads
them as compile-time constants. References compute in float64 and cast to the input dtype.
GroupNormalization takes one scale and bias per channel (ONNX opset 21).

GridSample follows ONNX's reference (itself PyTorch's): a coordinate outside the sampling
borders is clamped (border) or reflected (reflection) first, then every tap index is
fetched with the padding rule (zeros outside, clamped, or reflected); nearest rounds half
to even before that.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.common import FLOAT_TYPES, NUMERIC_TYPES, require_dtype
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = [
    "CUBIC_A",
    "GRID_SAMPLE_MODES",
    "GRID_SAMPLE_PADDINGS",
    "col2im_blocks",
    "cubic_weights",
    "group_norm_rows",
]

_I, _F, _S, _IS = AttrKind.INT, AttrKind.FLOAT, AttrKind.STRING, AttrKind.INTS
GRID_SAMPLE_MODES = ("linear", "nearest", "cubic")
GRID_SAMPLE_PADDINGS = ("zeros", "border", "reflection")
CUBIC_A = -0.75  # Keys' coefficient, as PyTorch's bicubic grid_sample


def _require_same(t: TensorType, x: TensorType, what: str) -> None:
    if t.dtype is not x.dtype:
        raise DTypeError(f"{what} has dtype {t.dtype}; expected {x.dtype}")


# -- GroupNormalization -----------------------------------------------------------------------
def group_norm_rows(shape: Sequence[int], groups: int) -> tuple[int, int]:
    """(rows, n): one row per (batch, group), holding the group's channels' planes."""
    return shape[0] * groups, math.prod(shape[1:]) // groups


def _group_norm(x, scale, bias, *, num_groups, epsilon, stash_type):
    n, c = x.shape[:2]
    rows = x.astype(np.float64).reshape(n, num_groups, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = rows.mean(axis=-1, keepdims=True)
        diff = rows - mean
        inv = 1.0 / np.sqrt((diff * diff).mean(axis=-1, keepdims=True) + epsilon)
        shape = (1, c) + (1,) * (x.ndim - 2)
        y = (diff * inv).reshape(x.shape) * scale.astype(np.float64).reshape(shape) \
            + bias.astype(np.float64).reshape(shape)
    return y.astype(x.dtype)


def _infer_group_norm(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    require_dtype(x, FLOAT_TYPES, "GroupNormalization input X")
    groups = attrs["num_groups"]
    if x.rank < 2:
        raise ShapeError(f"GroupNormalization input has shape {x.shape}; expected rank >= 2")
    if groups < 1 or x.shape[1] % groups:
        raise ShapeError(f"GroupNormalization num_groups {groups} must divide the "
                         f"{x.shape[1]} channels of X {x.shape}")
    for name, t in zip(("scale", "bias"), inputs[1:]):
        if t.shape != (x.shape[1],):
            raise ShapeError(f"GroupNormalization input {name} has shape {t.shape}; expected "
                             f"({x.shape[1]},) (one value per channel)")
        _require_same(t, x, f"GroupNormalization input {name}")
    if attrs["stash_type"] not in FLOAT_TYPES:
        raise DTypeError(f"GroupNormalization stash_type {attrs['stash_type']} must be a "
                         "float type")
    return (x,)


OPS.register(OpDef(
    "GroupNormalization", _infer_group_norm, _group_norm,
    attrs=(attr("num_groups", _I), attr("epsilon", _F, 1e-5),
           attr("stash_type", AttrKind.DTYPE, DType.FLOAT32)),
    num_inputs=(3, 3),
    doc="Normalizes each (n, group of C/num_groups channels) over its channels and spatial "
        "dims, then scale[c] and bias[c].",
))


# -- GridSample -------------------------------------------------------------------------------
def cubic_weights(t: np.ndarray) -> tuple[np.ndarray, ...]:
    """Keys' cubic convolution weights of the taps at -1, 0, 1, 2 for fractions t."""
    a = CUBIC_A

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


def _reflect(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """v mirrored at lo and hi until it lies between them."""
    span = hi - lo
    if span <= 0:
        return np.full_like(v, lo)
    below, above = v < lo, v > hi
    dx = np.where(below, lo - v, np.where(above, v - hi, 0.0))
    flips = np.floor(dx / span)
    r = dx - flips * span
    even = flips % 2 == 0
    return np.where(below, np.where(even, lo + r, hi - r),
                    np.where(above, np.where(even, hi - r, lo + r), v))


def _grid_taps(coord: np.ndarray, size: int, mode: str, padding: str, align: bool
               ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(index, weight, inside) triples of one axis; an index outside the axis reads the
    padding value 0 (zeros padding: `inside` is False there, so that not even a NaN at the
    clamped index reaches the sum) or is already clamped/reflected into it."""
    lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
    if mode == "nearest":
        coord = np.rint(coord)
    outside = (coord < lo) | (coord > hi)
    if padding == "border":
        coord = np.where(outside, np.clip(coord, 0, size - 1), coord)
    elif padding == "reflection":
        coord = np.where(outside, _reflect(coord, lo, hi), coord)
    if mode == "nearest":
        taps = [(np.trunc(coord), np.ones_like(coord))]
    else:
        base = np.floor(coord)
        t = coord - base
        if mode == "linear":
            taps = [(base, 1 - t), (base + 1, t)]
        else:
            taps = [(base + k - 1, w) for k, w in enumerate(cubic_weights(t))]
    out = []
    for index, weight in taps:
        inside = np.ones(index.shape, bool)
        if padding == "zeros":
            inside = (index >= 0) & (index < size)
        elif padding == "reflection":
            index = np.trunc(_reflect(index, lo, hi))
        out.append((np.clip(index, 0, size - 1).astype(np.int64), weight, inside))
    return out


def _denormalize(g: np.ndarray, size: int, align: bool) -> np.ndarray:
    return (g + 1) / 2 * (size - 1) if align else ((g + 1) * size - 1) / 2


def _grid_sample(x, grid, *, mode, padding_mode, align_corners):
    n, c, *dims = x.shape
    out_spatial = grid.shape[1:-1]
    if 0 in x.shape or 0 in grid.shape:
        return np.zeros((n, c, *out_spatial), x.dtype)
    r = len(dims)
    g = grid.astype(np.float64).reshape(n, -1, r)[..., ::-1]  # grid lists (x, y, ...) order
    axes = [_grid_taps(_denormalize(g[..., k], dims[k], bool(align_corners)), dims[k], mode,
                       padding_mode, bool(align_corners)) for k in range(r)]
    strides = [math.prod(dims[k + 1:]) for k in range(r)]
    flat_x = x.astype(np.float64).reshape(n, c, -1)
    total = np.zeros((n, c, g.shape[1]))
    for combo in itertools.product(*axes):
        flat = sum(index * stride for (index, _, _), stride in zip(combo, strides))
        weight = math.prod(w for _, w, _ in combo)
        inside = np.logical_and.reduce([ok for _, _, ok in combo])
        values = np.take_along_axis(flat_x, flat[:, None, :], axis=2)
        total += np.where(inside[:, None, :], values, 0.0) * weight[:, None, :]
    return total.reshape(n, c, *out_spatial).astype(x.dtype)


def _infer_grid_sample(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x, grid = inputs
    require_dtype(x, NUMERIC_TYPES, "GridSample input X")
    require_dtype(grid, FLOAT_TYPES, "GridSample input grid")
    r = x.rank - 2
    if r < 1 or grid.rank != x.rank or grid.shape[-1] != r or grid.shape[0] != x.shape[0]:
        raise ShapeError(f"GridSample grid {grid.shape} does not fit X {x.shape}: expected "
                         f"(N, *out, {max(r, 1)}) with X's N and rank")
    if attrs["mode"] == "cubic" and r != 2:
        raise ShapeError(f"GridSample cubic mode samples 2-D images only, got X {x.shape}")
    return (x.with_shape(x.shape[:2] + grid.shape[1:-1]),)


OPS.register(OpDef(
    "GridSample", _infer_grid_sample, _grid_sample,
    attrs=(attr("mode", _S, "linear", GRID_SAMPLE_MODES),
           attr("padding_mode", _S, "zeros", GRID_SAMPLE_PADDINGS),
           attr("align_corners", _I, 0, (0, 1))),
    num_inputs=(2, 2),
    doc="Samples X at the normalized coordinates of grid ((x, y[, z]) in [-1, 1]) by "
        "nearest, (bi/tri)linear or bicubic interpolation.",
))


# -- AffineGrid -------------------------------------------------------------------------------
def _base_coords(size: int, align: bool) -> np.ndarray:
    if align:
        return np.linspace(-1.0, 1.0, size) if size > 1 else np.full(size, -1.0)
    return (2 * np.arange(size) + 1) / size - 1


def _affine_grid(theta, *, size, align_corners):
    spatial = tuple(size[2:])
    r = len(spatial)
    coords = np.meshgrid(*[_base_coords(d, bool(align_corners)) for d in spatial],
                         indexing="ij")
    # homogeneous points (x, y[, z], 1): the last spatial axis is x
    points = np.stack([c.reshape(-1) for c in coords[::-1]] + [np.ones(math.prod(spatial))])
    grid = theta.astype(np.float64) @ points  # (N, r, points)
    return np.swapaxes(grid, 1, 2).reshape(theta.shape[0], *spatial, r).astype(theta.dtype)


def _infer_affine_grid(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    theta = inputs[0]
    require_dtype(theta, FLOAT_TYPES, "AffineGrid input theta")
    size = tuple(attrs["size"])
    r = len(size) - 2
    if r not in (2, 3) or theta.shape != (size[0], r, r + 1) or min(size) < 0:
        raise ShapeError(f"AffineGrid theta {theta.shape} and size {size} do not fit: "
                         "expected (N, 2, 3) with (N, C, H, W) or (N, 3, 4) with "
                         "(N, C, D, H, W)")
    return (theta.with_shape((size[0], *size[2:], r)),)


OPS.register(OpDef(
    "AffineGrid", _infer_affine_grid, _affine_grid,
    attrs=(attr("size", _IS), attr("align_corners", _I, 0, (0, 1))),
    doc="The sampling grid of GridSample for an affine map theta of the normalized output "
        "coordinates.",
))


# -- DeformConv -------------------------------------------------------------------------------
def _bilinear_zeros(plane: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """plane (..., H, W) sampled at (y, x) of shape (..., P); corners outside count 0."""
    h, w = plane.shape[-2:]
    y0, x0 = np.floor(y), np.floor(x)
    flat = plane.reshape(*plane.shape[:-2], h * w)
    total = np.zeros(np.broadcast_shapes(plane.shape[:-2] + (1,), y.shape))
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        yi, xi = y0 + dy, x0 + dx
        weight = (1 - np.abs(y - yi)) * (1 - np.abs(x - xi))
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        index = (np.clip(yi, 0, h - 1) * w + np.clip(xi, 0, w - 1)).astype(np.int64)
        index = np.broadcast_to(index, total.shape)
        total += np.take_along_axis(flat, index, axis=-1) * np.where(inside, weight, 0.0)
    return total


def _deform_geometry(x: Sequence[int], w: Sequence[int], attrs) -> tuple[int, ...]:
    """The output's spatial dims for X, W and the window attributes."""
    kernel = tuple(attrs["kernel_shape"]) or tuple(w[2:])
    r = len(x) - 2
    strides = tuple(attrs["strides"]) or (1,) * r
    dilations = tuple(attrs["dilations"]) or (1,) * r
    pads = tuple(attrs["pads"]) or (0,) * (2 * r)
    return tuple((x[2 + i] + pads[i] + pads[r + i] - (kernel[i] - 1) * dilations[i] - 1)
                 // strides[i] + 1 for i in range(r))


def _deform_conv(x, w, offset, bias=None, mask=None, *, dilations, group, kernel_shape,
                 offset_group, pads, strides):
    n, c, ih, iw = x.shape
    oc, icg, kh, kw = w.shape
    sh, sw = strides or (1, 1)
    dh, dw = dilations or (1, 1)
    ph, pw = (pads or (0, 0, 0, 0))[:2]
    oh, ow = offset.shape[2:]
    k = kh * kw
    off = offset.astype(np.float64).reshape(n, offset_group, kh, kw, 2, oh, ow)
    ys = (np.arange(oh) * sh - ph)[:, None] + (np.arange(kh) * dh)[:, None, None, None]
    xs = (np.arange(ow) * sw - pw)[None, :] + (np.arange(kw) * dw)[None, :, None, None]
    y = ys[None, None] + off[:, :, :, :, 0]  # (n, og, kh, kw, oh, ow)
    xx = xs[None, None] + off[:, :, :, :, 1]
    m = (np.ones((n, offset_group, kh, kw, oh, ow)) if mask is None
         else mask.astype(np.float64).reshape(n, offset_group, kh, kw, oh, ow))
    per_group = c // offset_group
    planes = x.astype(np.float64).reshape(n, offset_group, per_group, ih, iw)
    cols = _bilinear_zeros(planes, y.reshape(n, offset_group, 1, -1),
                           xx.reshape(n, offset_group, 1, -1))
    cols = cols.reshape(n, offset_group, per_group, k, oh, ow) * m.reshape(
        n, offset_group, 1, k, oh, ow)
    cols = cols.reshape(n, group, icg, k, oh * ow)
    weights = w.astype(np.float64).reshape(group, oc // group, icg, k)
    out = np.einsum("goik,ngikp->ngop", weights, cols).reshape(n, oc, oh, ow)
    if bias is not None:
        out = out + bias.astype(np.float64).reshape(1, -1, 1, 1)
    return out.astype(x.dtype)


def _infer_deform_conv(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x, w, offset = inputs[:3]
    require_dtype(x, FLOAT_TYPES, "DeformConv input X")
    if x.rank != 4 or w.rank != 4:
        raise ShapeError(f"DeformConv takes 2-D images: X {x.shape} and W {w.shape} must "
                         "have rank 4")
    for name, t in zip(("W", "offset", "B", "mask"), inputs[1:]):
        _require_same(t, x, f"DeformConv input {name}")
    group, og = attrs["group"], attrs["offset_group"]
    n, c = x.shape[:2]
    kernel = tuple(attrs["kernel_shape"]) or w.shape[2:]
    if kernel != w.shape[2:] or group < 1 or og < 1 or c != w.shape[1] * group \
            or w.shape[0] % group or c % og:
        raise ShapeError(f"DeformConv X {x.shape}, W {w.shape}, group {group}, offset_group "
                         f"{og} and kernel_shape {kernel} do not fit")
    out = _deform_geometry(x.shape, w.shape, attrs)
    k = math.prod(kernel)
    if min(out) < 1 or offset.shape != (n, og * k * 2, *out):
        raise ShapeError(f"DeformConv offset has shape {offset.shape}; expected "
                         f"{(n, og * k * 2, *out)}")
    if len(inputs) > 3 and inputs[3].shape != (w.shape[0],):
        raise ShapeError(f"DeformConv B has shape {inputs[3].shape}; expected ({w.shape[0]},)")
    if len(inputs) > 4 and inputs[4].shape != (n, og * k, *out):
        raise ShapeError(f"DeformConv mask has shape {inputs[4].shape}; expected "
                         f"{(n, og * k, *out)}")
    return (x.with_shape((n, w.shape[0], *out)),)


OPS.register(OpDef(
    "DeformConv", _infer_deform_conv, _deform_conv,
    attrs=(attr("dilations", _IS, ()), attr("group", _I, 1), attr("kernel_shape", _IS, ()),
           attr("offset_group", _I, 1), attr("pads", _IS, ()), attr("strides", _IS, ())),
    num_inputs=(3, 5),
    doc="2-D convolution whose taps are moved by per-position offsets (sampled bilinearly, "
        "zeros outside) and scaled by an optional mask.",
))


# -- Col2Im -----------------------------------------------------------------------------------
def col2im_blocks(image: Sequence[int], block: Sequence[int], dilations, pads, strides
                  ) -> tuple[int, ...]:
    """The number of sliding blocks along each image axis."""
    r = len(image)
    return tuple((image[i] + pads[i] + pads[r + i] - (block[i] - 1) * dilations[i] - 1)
                 // strides[i] + 1 for i in range(r))


def _col2im_attrs(attrs, r: int) -> tuple[tuple[int, ...], ...]:
    return (tuple(attrs["dilations"]) or (1,) * r, tuple(attrs["pads"]) or (0,) * (2 * r),
            tuple(attrs["strides"]) or (1,) * r)


def _col2im(x, *, image_shape, block_shape, dilations, pads, strides):
    r = len(image_shape)
    dilations, pads, strides = _col2im_attrs(
        {"dilations": dilations, "pads": pads, "strides": strides}, r)
    blocks = col2im_blocks(image_shape, block_shape, dilations, pads, strides)
    n = x.shape[0]
    cols = x.astype(np.float64).reshape(n, -1, *block_shape, *blocks)
    c = cols.shape[1]
    padded_shape = [max(image_shape[i] + pads[i] + pads[r + i],
                        (blocks[i] - 1) * strides[i] + (block_shape[i] - 1) * dilations[i] + 1)
                    for i in range(r)]
    out = np.zeros((n, c, *padded_shape))
    for pos in itertools.product(*[range(b) for b in block_shape]):
        where = tuple(slice(pos[i] * dilations[i],
                            pos[i] * dilations[i] + (blocks[i] - 1) * strides[i] + 1,
                            strides[i]) for i in range(r))
        out[(slice(None), slice(None)) + where] += cols[(slice(None), slice(None)) + pos]
    crop = tuple(slice(pads[i], pads[i] + image_shape[i]) for i in range(r))
    return out[(slice(None), slice(None)) + crop].astype(x.dtype)


def _infer_col2im(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    require_dtype(x, NUMERIC_TYPES, "Col2Im input")
    image, block = tuple(attrs["image_shape"]), tuple(attrs["block_shape"])
    r = len(image)
    dilations, pads, strides = _col2im_attrs(attrs, r)
    if r < 1 or len(block) != r or len(dilations) != r or len(strides) != r \
            or len(pads) != 2 * r:
        raise ShapeError(f"Col2Im image_shape {image}, block_shape {block}, dilations "
                         f"{dilations}, pads {pads} and strides {strides} differ in rank")
    blocks = col2im_blocks(image, block, dilations, pads, strides)
    k = math.prod(block)
    if x.rank != 3 or min(blocks) < 1 or x.shape[1] % k or x.shape[2] != math.prod(blocks):
        raise ShapeError(f"Col2Im input {x.shape} must be (N, C * {k}, {math.prod(blocks)}) "
                         f"for blocks {block} sliding {blocks} times over image {image}")
    return (x.with_shape((x.shape[0], x.shape[1] // k, *image)),)


OPS.register(OpDef(
    "Col2Im", _infer_col2im, _col2im,
    attrs=(attr("image_shape", _IS), attr("block_shape", _IS), attr("dilations", _IS, ()),
           attr("pads", _IS, ()), attr("strides", _IS, ())),
    doc="Sums the columns of sliding blocks back into an image (the inverse of im2col).",
))


# -- RoiAlign ---------------------------------------------------------------------------------
def _roi_axis(start: float, size: float, bins: int, grid: int, limit: int):
    """Per (bin, sample) of one axis: the low and high pixel, their weights and whether the
    sample lies in the image (up to a pixel outside)."""
    step = size / bins
    at = start + np.arange(bins)[:, None] * step + (np.arange(grid)[None, :] + 0.5) * step / grid
    valid = (at >= -1.0) & (at <= limit)
    at = np.maximum(at, 0.0)
    low = np.floor(at).astype(np.int64)
    edge = low >= limit - 1
    low = np.where(edge, limit - 1, low)
    high = np.where(edge, limit - 1, low + 1)
    at = np.where(edge, low, at)
    frac = at - low
    return low, high, np.where(valid, 1 - frac, 0.0), np.where(valid, frac, 0.0)


def _roi_align(x, rois, batch_indices, *, coordinate_transformation_mode, mode,
               output_height, output_width, sampling_ratio, spatial_scale):
    _n, c, h, w = x.shape
    out = np.zeros((rois.shape[0], c, output_height, output_width))
    shift = 0.5 if coordinate_transformation_mode == "half_pixel" else 0.0
    data = x.astype(np.float64)
    for r, (roi, b) in enumerate(zip(rois.astype(np.float64), batch_indices)):
        x0, y0, x1, y1 = roi * spatial_scale - shift
        width, height = x1 - x0, y1 - y0
        if not shift:
            width, height = max(width, 1.0), max(height, 1.0)
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(height / output_height)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(width / output_width)
        if gh < 1 or gw < 1:
            continue
        yl, yh, wyl, wyh = _roi_axis(y0, height, output_height, gh, h)
        xl, xh, wxl, wxh = _roi_axis(x0, width, output_width, gw, w)
        plane = data[int(b)]  # (c, h, w)
        corners = []
        for ys, wy in ((yl, wyl), (yh, wyh)):
            for xs, wx in ((xl, wxl), (xh, wxh)):
                values = plane[:, ys[:, :, None, None], xs[None, None]]  # (c, ph, gh, pw, gw)
                corners.append(values * (wy[:, :, None, None] * wx[None, None]))
        if mode == "avg":
            out[r] = sum(corners).sum(axis=(2, 4)) / max(gh * gw, 1)
        else:
            out[r] = np.max(np.stack(corners), axis=0).max(axis=(2, 4))
    return out.astype(x.dtype)


def _infer_roi_align(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x, rois, indices = inputs
    require_dtype(x, FLOAT_TYPES, "RoiAlign input X")
    _require_same(rois, x, "RoiAlign input rois")
    if indices.dtype not in (DType.INT64, DType.INT32):
        raise DTypeError(f"RoiAlign batch_indices have dtype {indices.dtype}; expected int64")
    if x.rank != 4 or rois.rank != 2 or rois.shape[1] != 4 or indices.shape != rois.shape[:1]:
        raise ShapeError(f"RoiAlign X {x.shape}, rois {rois.shape} and batch_indices "
                         f"{indices.shape} must be (N, C, H, W), (R, 4) and (R,)")
    if attrs["output_height"] < 1 or attrs["output_width"] < 1:
        raise ShapeError("RoiAlign output_height and output_width must be positive")
    return (x.with_shape((rois.shape[0], x.shape[1], attrs["output_height"],
                          attrs["output_width"])),)


OPS.register(OpDef(
    "RoiAlign", _infer_roi_align, _roi_align,
    attrs=(attr("coordinate_transformation_mode", _S, "half_pixel",
                ("half_pixel", "output_half_pixel")),
           attr("mode", _S, "avg", ("avg", "max")), attr("output_height", _I, 1),
           attr("output_width", _I, 1), attr("sampling_ratio", _I, 0),
           attr("spatial_scale", _F, 1.0)),
    num_inputs=(3, 3),
    doc="Pools each region of interest into output_height x output_width bins of bilinear "
        "samples: their mean (avg), or the largest weighted corner of any sample (max, as "
        "ONNX's reference).",
))


# -- MaxUnpool --------------------------------------------------------------------------------
def _unpooled_shape(x: Sequence[int], attrs) -> tuple[int, ...]:
    kernel = tuple(attrs["kernel_shape"])
    r = len(kernel)
    strides = tuple(attrs["strides"]) or (1,) * r
    pads = tuple(attrs["pads"]) or (0,) * (2 * r)
    return tuple(x[:2]) + tuple((x[2 + i] - 1) * strides[i] - pads[i] - pads[r + i] + kernel[i]
                                for i in range(r))


def _max_unpool(x, indices, *, kernel_shape, strides, pads, output_shape):
    inferred = _unpooled_shape(x.shape, {"kernel_shape": kernel_shape, "strides": strides,
                                             "pads": pads})
    flat = np.zeros(math.prod(inferred), x.dtype)
    flat[indices.reshape(-1).astype(np.int64)] = x.reshape(-1)
    out = np.zeros(tuple(output_shape) if output_shape else inferred, x.dtype)
    out[tuple(slice(0, d) for d in inferred)] = flat.reshape(inferred)
    return out


def _infer_max_unpool(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x, indices = inputs
    require_dtype(x, NUMERIC_TYPES, "MaxUnpool input X")
    if indices.dtype is not DType.INT64 or indices.shape != x.shape:
        raise ShapeError(f"MaxUnpool indices {indices.shape} ({indices.dtype}) must be int64 "
                         f"of X's shape {x.shape}")
    kernel = tuple(attrs["kernel_shape"])
    r = len(kernel)
    if x.rank != r + 2 or len(attrs["strides"]) not in (0, r) or len(attrs["pads"]) not in (
            0, 2 * r):
        raise ShapeError(f"MaxUnpool X {x.shape} does not fit kernel_shape {kernel}, strides "
                         f"{attrs['strides']} and pads {attrs['pads']}")
    inferred = _unpooled_shape(x.shape, attrs)
    shape = tuple(attrs["output_shape"]) or inferred
    if len(shape) != x.rank or any(s < d for s, d in zip(shape, inferred)):
        raise ShapeError(f"MaxUnpool output_shape {shape} is smaller than the unpooled shape "
                         f"{inferred}")
    return (x.with_shape(shape),)


OPS.register(OpDef(
    "MaxUnpool", _infer_max_unpool, _max_unpool,
    attrs=(attr("kernel_shape", _IS), attr("strides", _IS, ()), attr("pads", _IS, ()),
           attr("output_shape", _IS, ())),
    num_inputs=(2, 2),
    doc="Scatters X to the flat positions of indices in the unpooled shape (zeros "
        "elsewhere); a larger output_shape extends it with zeros at the end of each axis, "
        "as ONNX's reference does.",
))
