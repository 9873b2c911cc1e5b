"""The GridSample kernel (`grid_sample.cl.j2`): every mode (nearest, linear, cubic) and
padding (zeros, border, reflection) over 1 to 3 spatial axes, float tensors only.

The per-axis work (coordinate, padding, taps) is rendered once per axis, the tap products
once per combination of taps (2^r for linear, 4^2 for cubic), so the channel loop only
loads and sums. Coordinates and weights are computed in double where the device has fp64
(as the float64 reference does), else in float.
"""

from __future__ import annotations

import itertools
import math

from ember.codegen.csrc import (
    contiguous_strides,
    extensions_for,
    float_literal,
    index_type,
    int_literal,
)
from ember.codegen.families import Target
from ember.codegen.kernels.rows import loader, storer
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.ir import DType
from ember.ir.ops.vision import CUBIC_A

__all__ = ["build_grid_sample"]

_TAPS = {"nearest": (1, 0), "linear": (2, 0), "cubic": (4, 1)}  # (taps, taps before floor)


def _weights(mode: str, t: str, lit) -> list[str]:
    """C expressions of the taps' weights for fraction `t` (Keys' cubic, as the reference)."""
    one = lit(1.0)
    if mode == "linear":
        return [f"({one} - {t})", t]
    a = CUBIC_A

    def near(d: str) -> str:
        return f"((({lit(a + 2)} * ({d}) - {lit(a + 3)}) * ({d}) * ({d})) + {one})"

    def far(d: str) -> str:
        return f"((({lit(a)} * ({d}) - {lit(5 * a)}) * ({d}) + {lit(8 * a)}) * ({d}) - {lit(4 * a)})"

    return [far(f"{t} + {one}"), near(t), near(f"{one} - {t}"), far(f"{lit(2.0)} - {t}")]


def _reflector(ct: str, lit):
    """For the template: C statements mirroring `var` into the axis' borders."""
    def reflect(var: str, axis: dict) -> str:
        lo, hi, span = axis["lo"], axis["hi"], axis["span"]
        if axis["span_value"] <= 0:
            return f"        if ({var} < {lo} || {var} > {hi}) {var} = {lo};"
        return "\n".join([
            f"        if ({var} < {lo} || {var} > {hi}) {{",
            f"            const int below = {var} < {lo};",
            f"            const {ct} dx = below ? {lo} - {var} : {var} - {hi};",
            f"            const {ct} flips = floor(dx / {span});",
            f"            const {ct} rem = dx - flips * {span};",
            (f"            {var} = (below == (fmod(flips, {lit(2.0)}) == {lit(0.0)})) "
            f"? {lo} + rem : {hi} - rem;"),
            "        }",
        ])

    return reflect


@kernel_builder("GridSample")
def build_grid_sample(spec: NodeSpec, target: Target) -> Lowered | None:
    x, grid, out = spec.inputs[0], spec.inputs[1], spec.outputs[0]
    if not x.dtype.is_float or not grid.dtype.is_float:
        return None  # integer images keep the reference's float64 sums on the host
    if out.size == 0:
        return Lowered(())
    if DType.FLOAT64 in (x.dtype, grid.dtype) and not target.traits.fp64:
        return None
    mode, padding = spec.attrs["mode"], spec.attrs["padding_mode"]
    align = bool(spec.attrs["align_corners"])
    double = target.traits.fp64
    ct = "double" if double else "float"
    lit = lambda v: float_literal(v, ct)
    dims = x.shape[2:]
    r = len(dims)
    taps, first = _TAPS[mode]
    axes = []
    for k, size in enumerate(dims):
        lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        axes.append({
            "k": k, "size": size, "column": r - 1 - k, "taps": taps, "first": first,
            "size_f": lit(size), "size_m1": lit(size - 1), "lo": lit(lo), "hi": lit(hi),
            "span": lit(hi - lo), "span_value": hi - lo,
            "guard_lo": lit(-4.0), "guard_hi": lit(size + 3.0),
            "weights": [] if mode == "nearest" else _weights(mode, f"t{k}", lit),
        })
    strides = contiguous_strides(dims)
    terms = []
    for combo in itertools.product(range(taps), repeat=r):
        terms.append({
            "weight": " * ".join(f"w{k}_{t}" for k, t in enumerate(combo)),
            "offset": " + ".join(f"i{k}_{t} * {strides[k]}" for k, t in enumerate(combo)),
            "inside": " && ".join(f"in{k}_{t}" for k, t in enumerate(combo)),
        })
    n = x.shape[0]
    plane_out = math.prod(out.shape[2:])
    total = n * plane_out
    params = {
        "mode": mode, "padding": padding, "align": align, "nearest": mode == "nearest",
        "channels": x.shape[1], "plane_in": math.prod(dims), "plane_out": plane_out,
        "total": total, "axes": axes, "terms": terms, "ct": ct,
        "idx": index_type(x.size, out.size, grid.size),
        "x_ptr": x.dtype.cl_name, "grid_ptr": grid.dtype.cl_name,
        "zero": lit(0.0), "one": lit(1.0), "two": lit(2.0),
    }
    name = kernel_name("grid_sample", spec.inputs, params)
    label = f"{mode} {padding} align_corners={int(align)} {x.dtype}{list(x.shape)} -> " \
            f"{list(out.shape)}"
    source = render("grid_sample.cl.j2", name=name, label=label, lit=int_literal,
                    load_x=loader(x.dtype, "x"), load_grid=loader(grid.dtype, "grid"),
                    store_y=storer(x.dtype, "y"), reflect=_reflector(ct, lit), **params)
    kernel = Kernel(name, source, extensions_for([x.dtype, grid.dtype, DType.FLOAT64 if double
                                                   else x.dtype]))
    return Lowered((Launch(kernel, (total,), None, ((IN, 0), (IN, 1), (OUT, 0))),))
