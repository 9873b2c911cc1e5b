"""Pooling kernels: windowed MaxPool / AveragePool (`pool.cl.j2`, one work-item per output)
and GlobalMaxPool / GlobalAveragePool (`global_pool.cl.j2`, a row kernel per (n, c) plane).

The window geometry is the IR's (`pool_geometry`), so the kernel and the reference cannot
disagree about output sizes, pads or ceil mode; everything is baked into the source.
"""

from __future__ import annotations

import math

import numpy as np

from ember.codegen.elementwise import compute_type, extensions_for
from ember.codegen.families import Target
from ember.codegen.kernels import IN, OUT, Kernel, Launch, Lowered, NodeSpec, kernel_builder
from ember.codegen.render import c_literal, kernel_name, render
from ember.codegen.rows import (
    RowParams, accumulator, choose_row_params, index_type, lit, loader, row_lowered, storer,
)
from ember.ir import DType
from ember.ir.ops.pool import pool_geometry

__all__ = ["build_pool", "build_global_pool", "lowest_literal"]


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


@kernel_builder("MaxPool", "AveragePool")
def build_pool(spec: NodeSpec, target: Target) -> Lowered | None:
    x, y = spec.inputs[0], spec.outputs[0]
    attrs = spec.attrs
    g = pool_geometry(x, attrs)
    is_max = spec.op == "MaxPool"
    indices = is_max and bool(attrs["indices"])
    storage_order = attrs["storage_order"] if is_max else 0
    k = len(g.kernel)
    total = y.size
    plane = math.prod(g.in_shape)
    idx = index_type(x.size, total, x.size + plane)
    if total == 0:
        return Lowered(())
    coords = [f"p{d}" for d in range(k)]
    name = kernel_name("pool", spec)
    source = render(
        "pool.cl.j2",
        name=name,
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
        indices=indices,
        storage_order=storage_order,
        include_pad=(not is_max) and bool(attrs["count_include_pad"]),
        total=total,
        plane=plane,
        idx=idx,
        ptr=x.dtype.cl_name,
        acc=compute_type(x.dtype) if is_max else accumulator(x.dtype),
        lowest=lowest_literal(x.dtype),
        load=loader(x.dtype, "x"),
        store=storer(y.dtype, "y"),
        row_major=_spatial_index(coords, g.in_shape, False),
        col_major=_spatial_index(coords, g.in_shape, True),
        lit=lit,
    )
    kernel = Kernel(name, source, extensions_for([x.dtype]))
    args = ((IN, 0), (OUT, 0)) + (((OUT, 1),) if indices else ())
    return Lowered((Launch(kernel, (total,), None, args),))


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
        lit=lit,
    )
    kernel = Kernel(name, source, extensions_for([x.dtype]))
    return row_lowered(kernel, rows, params)
