"""Pooling kernels: windowed MaxPool / AveragePool (`pool.cl.j2`) and GlobalMaxPool /
GlobalAveragePool (`global_pool.cl.j2`, a row kernel per (n, c) plane).

The window geometry is the IR's (`pool_geometry`), so the kernel and the reference cannot
disagree about output sizes, pads or ceil mode; everything is baked into the source.

Windowed pools come in two forms of one template. GPUs get "item": one work-item per output,
its window bounds computed per output. On a CPU that form ran at 50 ns per output (PoCL
cannot vectorize across work-items whose loops have data-dependent bounds, and calls
isnan() out of line): 0.1 ms for resnet_mini's 3x3/2 MaxPool of 16x32x32. CPU devices get
"rows": a work-item walks TW outputs of one output row, the outputs whose window lies inside
the row VW at a time as explicit vectors (PoCL's auto-vectorizer gives up on these loops),
the few at the row's edges one at a time: 8-10 us for the same pool, about onnxruntime's
speed on a 64x112x112 one. `PoolRowParams` holds its tunables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ember.codegen.csrc import c_literal, compute_type, extensions_for, index_type, int_literal
from ember.codegen.families import Target
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.codegen.kernels.rows import RowParams, accumulator, choose_row_params, loader, row_lowered, storer
from ember.codegen.params import Checked
from ember.ir import DType
from ember.ir.ops.pool import PoolGeometry, pool_geometry

__all__ = ["build_pool", "build_global_pool", "lowest_literal", "PoolRowParams",
           "default_row_params"]


def lowest_literal(dtype: DType) -> str:
    """The identity of max in the compute type: -inf for floats, the minimum for ints."""
    if dtype.is_float:
        return "(-INFINITY)"
    low = int(np.iinfo(dtype.np_dtype).min)
    if low == 0:
        return f"(({dtype.cl_name})0)"
    # min + 1 - 1: the literal of the minimum itself does not fit its own type in C
    return f"(({dtype.cl_name})({c_literal(low + 1, DType.INT64)} - 1))"


def _spatial_index(coords: list[str], dims: tuple[int, ...], column_major: bool) -> str:
    """C expression of the flat index of `coords` within `dims`."""
    order = range(len(dims) - 1, -1, -1) if column_major else range(len(dims))
    expr = ""
    for d in order:
        expr = coords[d] if not expr else f"({expr}) * {dims[d]} + {coords[d]}"
    return expr or "0"


@dataclass(frozen=True)
class PoolRowParams(Checked):
    """Tunables of pool.cl.j2's "rows" form (its header says what each one does)."""

    vw: int = 8
    tw: int = 64
    local: int = 1

    def violations(self) -> list[str]:
        """Every constraint this set breaks, each with its reason."""
        rules = [
            (self.vw in (0, 2, 4, 8, 16), "vw in (0, 2, 4, 8, 16): OpenCL vector widths, 0 off"),
            (self.tw >= 1 and (self.vw == 0 or self.tw % self.vw == 0),
             "tw a multiple of vw: a work-item's outputs are whole vectors"),
            (self.local >= 1, "local >= 1: a work-group has work-items"),
        ]
        return [reason for ok, reason in rules if not ok]



def default_row_params(dtype: DType, out_last: int, target: Target) -> PoolRowParams:
    """Vectors as wide as the device's SIMD registers (at most 16 lanes), narrower for rows
    shorter than a vector; 64 outputs per work-item (measured on PoCL, see the template)."""
    simd_bytes = max(16, 4 * target.traits.preferred_vector_width)
    vw = max(2, min(16, simd_bytes // _itemsize(dtype)))
    while vw > 2 and vw > out_last:
        vw //= 2
    return PoolRowParams(vw=vw, tw=max(64, vw), local=1)


def _itemsize(dtype: DType) -> int:
    """Bytes of one element in the compute type (half is computed in float)."""
    return 4 if dtype is DType.FLOAT16 else dtype.itemsize


def _vector_span(g: PoolGeometry, vw: int) -> tuple[int, int, int]:
    """(chunks per tap, VLO, VHI) of the rows form: a tap of a vector block at output o reads
    `chunks` * vw elements from o * stride - pad + t * dilation along the last dim; blocks
    may start at VLO .. VHI - vw, where every read lies inside the row."""
    size, k, s = g.in_shape[-1], g.kernel[-1], g.strides[-1]
    d, pad, out = g.dilations[-1], g.pads_begin[-1], g.out_shape[-1]
    chunks = -(-((vw - 1) * s + 1) // vw)
    vlo = min(out, -(-pad // s))
    last_start = (size - chunks * vw + pad - (k - 1) * d) // s  # floor: may be negative
    vhi = max(vlo, min(out, last_start + vw))
    return chunks, vlo, vhi


@kernel_builder("MaxPool", "AveragePool")
def build_pool(spec: NodeSpec, target: Target,
               params: PoolRowParams | None = None) -> Lowered | None:
    """CPU devices get the "rows" form (`params` or the defaults), GPUs the "item" form."""
    x, y = spec.inputs[0], spec.outputs[0]
    attrs = spec.attrs
    g = pool_geometry(x, attrs)
    is_max = spec.op == "MaxPool"
    indices = is_max and bool(attrs["indices"])
    storage_order = attrs["storage_order"] if is_max else 0
    k = len(g.kernel)
    total = y.size
    plane = math.prod(g.in_shape)
    if total == 0:
        return Lowered(())
    rows_form = params is not None or target.traits.device_type == "CPU"
    if rows_form:
        params = params or default_row_params(x.dtype, g.out_shape[-1], target)
        params.validate()
        if indices:  # the index of the first maximum is kept one output at a time
            params = replace(params, vw=0)
    coords = [f"p{d}" for d in range(k)]
    values = dict(
        label=spec.op,
        k=k,
        in_shape=g.in_shape,
        out_shape=g.out_shape,
        kernel=g.kernel,
        strides=g.strides,
        dilations=g.dilations,
        pads_begin=g.pads_begin,
        pads_end=g.pads_end,
        is_max=is_max,
        is_float=x.dtype.is_float,
        half=x.dtype is DType.FLOAT16,
        indices=indices,
        storage_order=storage_order,
        include_pad=(not is_max) and bool(attrs["count_include_pad"]),
        total=total,
        plane=plane,
        ptr=x.dtype.cl_name,
        acc=compute_type(x.dtype) if is_max else accumulator(x.dtype),
        itemsize=x.dtype.itemsize,
        lowest=lowest_literal(x.dtype),
        load=loader(x.dtype, "x"),
        store=storer(y.dtype, "y"),
        row_major=_spatial_index(coords, g.in_shape, False),
        col_major=_spatial_index(coords, g.in_shape, True),
        outer_index=_spatial_index(coords[:-1], g.in_shape[:-1], False),
        lit=int_literal,
    )
    if not rows_form:
        name = kernel_name("pool", spec)
        values.update(idx=index_type(x.size, total, x.size + plane))
        source = render("pool.cl.j2", name=name, form="item", **values)
        launch_size, local = (total,), None
    else:
        assert params is not None
        tw = params.tw
        rows = total // g.out_shape[-1]
        chunks = -(-g.out_shape[-1] // tw)
        nchunks, vlo, vhi = _vector_span(g, params.vw) if params.vw else (0, 0, 0)
        # stride 2 into 8 float lanes: accumulate in the order one vshufps produces (as
        # conv_depthwise.py does); the store puts the lanes back
        order = ((0, 1, 4, 5, 2, 3, 6, 7) if (g.strides[-1], params.vw) == (2, 8)
                 and values["acc"] == "float" else tuple(range(params.vw)))
        items = -(-rows * chunks // params.local) * params.local
        values.update(idx=index_type(x.size, total, x.size + plane, items))
        name = kernel_name("pool_rows", spec, params)
        source = render("pool.cl.j2", name=name, form="rows", vw=params.vw, tw=tw, rows=rows,
                        nacc=min(g.kernel[-1], 4), order=order,
                        unorder="" if order == tuple(range(len(order))) else
                        ".s" + "".join("%x" % order.index(n) for n in range(len(order))),
                        mask_t=f"{'long' if x.dtype is DType.FLOAT64 else 'int'}{params.vw}",
                        chunks=chunks, nchunks=nchunks, vlo=vlo, vhi=vhi, **values)
        launch_size, local = (items,), (params.local,)
    kernel = Kernel(name, source, extensions_for([x.dtype]))
    args = ((IN, 0), (OUT, 0)) + (((OUT, 1),) if indices else ())
    return Lowered((Launch(kernel, launch_size, local, args),))


@kernel_builder("GlobalMaxPool", "GlobalAveragePool")
def build_global_pool(spec: NodeSpec, target: Target,
                      params: RowParams | None = None) -> Lowered | None:
    x, y = spec.inputs[0], spec.outputs[0]
    is_max = spec.op == "GlobalMaxPool"
    rows = x.shape[0] * x.shape[1]
    n = math.prod(x.shape[2:])
    if rows == 0:
        return Lowered(())
    acc = compute_type(x.dtype) if is_max else accumulator(x.dtype)
    acc_bytes = 8 if acc in ("double", "long", "ulong") else 4
    params = params or choose_row_params(rows, n, 1, target, acc_bytes)
    params.validate(target, acc_bytes)
    if is_max and x.dtype.is_float:
        combine = "((((b) > (a)) || isnan(b)) ? (b) : (a))"
    else:
        combine = "(((b) > (a)) ? (b) : (a))"
    name = kernel_name("gpool", spec, params)
    source = render(
        "global_pool.cl.j2",
        name=name,
        label=spec.op,
        nrows=rows,
        n=n,
        local=params.local,
        steps=params.steps,
        is_max=is_max,
        combine=combine,
        init=lowest_literal(x.dtype) if is_max else "0",
        idx=index_type(x.size, rows * params.local),
        ptr=x.dtype.cl_name,
        acc=acc,
        load=loader(x.dtype, "x"),
        store=storer(y.dtype, "y"),
        lit=int_literal,
    )
    kernel = Kernel(name, source, extensions_for([x.dtype]))
    return row_lowered(kernel, rows, params)
