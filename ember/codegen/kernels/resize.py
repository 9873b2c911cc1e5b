"""The Resize kernel (`resize.cl.j2`): every ONNX mode (nearest, linear, cubic, antialias,
exclude_outside, every coordinate_transformation_mode) computed per output element with the
formulas of `ir/ops/resize.py`. The constants of those formulas are baked in as literals
computed here in float64, the same operations in the same order as the reference, so the
kernel's coordinates equal the reference's where the device has fp64."""

from __future__ import annotations

import numpy as np

from ember.codegen.csrc import contiguous_strides, index_type, load_expr, store_stmt
from ember.codegen.families import Target
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.kernels.movement import bits_literal, storage_type, strided_copy
from ember.codegen.render import kernel_name, render
from ember.ir import DType
from ember.ir.ops.resize import cast_value, resized_axes, tap_count

__all__: list[str] = []

# nearest_mode: when the right-hand neighbour is chosen (r is the fraction, 1 when x is an
# integer: then the right-hand neighbour is x itself).
_UP = {
    "round_prefer_floor": "(r{j} == {one} || r{j} > {half})",
    "round_prefer_ceil": "(r{j} == {one} || r{j} >= {half})",
    "floor": "(r{j} == {one})",
    "ceil": "1",
}


def _literal(value: float, double: bool) -> str:
    if double:
        text = repr(float(value))
    else:
        text = repr(float(np.float32(value))) + "f"
    if "inf" in text or "nan" in text:
        raise ValueError(f"non-finite resize constant {value}")
    return f"({text})"


def _axis_params(j: int, k: int, in_dim: int, out_dim: int, stride: int, spec: NodeSpec,
                 double: bool) -> dict:
    attrs = spec.attrs
    lit = lambda v: _literal(v, double)  # noqa: E731 - a local shorthand
    scale = attrs["scales"][k]
    width = scale * in_dim  # ONNX's unrounded output width
    mode = attrs["coordinate_transformation_mode"]
    n = tap_count(attrs, scale)
    p: dict = {"j": j, "k": k, "in_dim": in_dim, "out_dim": out_dim, "stride": stride,
               "n": n, "halfn": n // 2, "halfn_lit": lit(n // 2), "scale": lit(scale),
               "tf": mode == "tf_crop_and_resize", "last": lit(in_dim - 1)}
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and width != 1):
        p["coord"] = "half"
    elif mode == "pytorch_half_pixel":
        p.update(coord="const", c0=lit(-0.5))
    elif mode == "half_pixel_symmetric":
        p.update(coord="sym", c0=lit((in_dim / 2) * (1 - out_dim / width)))
    elif mode == "asymmetric":
        p["coord"] = "asym"
    elif mode == "align_corners":
        if width == 1:
            p.update(coord="const", c0=lit(0.0))
        else:
            p.update(coord="align", c0=lit(in_dim - 1), c1=lit(width - 1))
    else:  # tf_crop_and_resize
        rank = len(attrs["sizes"])
        roi = attrs["roi"]
        r0, r1 = (roi[k], roi[rank + k]) if roi is not None else (0.0, 1.0)
        if width == 1:
            x = (r1 - r0) * (in_dim - 1) / 2 + r0 * (in_dim - 1)
            p.update(coord="tf_const", c0=lit((r1 - r0) * (in_dim - 1) / 2),
                     c3=lit(r0 * (in_dim - 1)), const_outside=x < 0 or x > in_dim - 1)
        else:
            p.update(coord="tf", c0=lit(r1 - r0), c1=lit(in_dim - 1), c2=lit(width - 1),
                     c3=lit(r0 * (in_dim - 1)))
    kind = attrs["mode"]
    if attrs["antialias"] and kind != "nearest":
        kind += "_aa"
    p.update(kind=kind, s=lit(min(scale, 1.0)),
             normalize=bool(attrs["antialias"] or attrs["exclude_outside"]))
    if attrs["mode"] == "nearest":
        p["up"] = _UP[attrs["nearest_mode"]].format(j=j, half=lit(0.5), one=lit(1.0))
    return p


def _store(dtype: DType, double: bool) -> str:
    if dtype.is_float:
        value = "acc" if dtype is DType.FLOAT64 else "(float)acc"
        return store_stmt(dtype, "out0", "i", value)
    # Saturate to the largest values the accumulator type holds inside the integer range
    # (int32's max is not a float: clamping to it would round up out of range).
    info = np.iinfo(dtype.np_dtype)
    ftype = np.float64 if double else np.float32
    lo, hi = ftype(info.min), ftype(info.max)
    if int(hi) > info.max:
        hi = np.nextafter(hi, ftype(0))
    return (f"out0[i] = ({dtype.cl_name})clamp(rint(acc), {_literal(lo, double)}, "
            f"{_literal(hi, double)});")


@kernel_builder("Resize")
def build_resize(spec: NodeSpec, target: Target) -> Lowered | None:
    x, out = spec.inputs[0], spec.outputs[0]
    attrs = spec.attrs
    if out.size == 0:
        return Lowered(())
    nearest = attrs["mode"] == "nearest"
    if not nearest and x.dtype.is_integer and x.dtype.itemsize > 4:
        return None  # 64-bit integers do not round-trip through the float accumulator
    resized = resized_axes(x.shape, attrs)
    if not resized:  # nothing resizes: an exact copy
        return strided_copy(x.shape, contiguous_strides(x.shape), 0, x.dtype, x.size,
                            f"resize of {x.shape} that keeps every axis")
    double = target.traits.fp64
    ct = "double" if double else "float"
    lit = lambda v: _literal(v, double)  # noqa: E731
    strides = contiguous_strides(x.shape)
    axes = [_axis_params(j, k, x.shape[k], out.shape[k], strides[k], spec, double)
            for j, k in enumerate(resized)]
    a = attrs["cubic_coeff_a"]
    if nearest:
        fill = bits_literal(cast_value(attrs["extrapolation_value"], x.dtype.np_dtype),
                            x.dtype)
        ptr = storage_type(x.dtype)
        in_ptr = out_ptr = ptr
    else:
        fill = lit(attrs["extrapolation_value"])
        in_ptr, out_ptr = x.dtype.cl_name, out.dtype.cl_name
    params = {
        "mode": "nearest" if nearest else attrs["mode"], "antialias": attrs["antialias"],
        "coord": attrs["coordinate_transformation_mode"], "rank": x.rank,
        "in_shape": x.shape, "out_shape": out.shape, "in_strides": strides,
        "resized": resized, "axes": axes, "exclude": bool(attrs["exclude_outside"]),
        "size": out.size, "idx": index_type(out.size, x.size), "ct": ct,
        "ctype": storage_type(x.dtype), "in_ptr": in_ptr, "out_ptr": out_ptr, "fill": fill,
        "zero": lit(0.0), "one": lit(1.0), "half": lit(0.5), "a_lit": lit(a),
        "a2": lit(a + 2), "a3": lit(a + 3), "a4": lit(4 * a), "a5": lit(5 * a),
        "a8": lit(8 * a), "load": load_expr(x.dtype, "in0", f"q{len(axes) - 1}"),
        "store": _store(out.dtype, double), "exact_limit": lit(2.0**52 if double else 2.0**23),
    }
    name = kernel_name("resize", params)
    label = f"{attrs['mode']} {x.dtype} {x.shape} -> {out.shape}"
    source = render("resize.cl.j2", name=name, label=label, **params)
    extensions = frozenset({"cl_khr_fp64"}) if double or x.dtype is DType.FLOAT64 \
        else frozenset()
    kernel = Kernel(name, source, extensions)
    last = out.shape[-1]
    return Lowered((Launch(kernel, (last, out.size // last), None, ((IN, 0), (OUT, 0))),))
