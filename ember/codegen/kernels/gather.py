"""Kernels of the selecting movement ops: Gather, GatherElements (`gather.cl.j2`), GatherND
(`gather_nd.cl.j2`), OneHot (`onehot.cl.j2`) and Trilu (`trilu.cl.j2`). Data is moved as
unsigned integers of its element size, so one kernel serves every dtype of that size."""

from __future__ import annotations

import math

from ember.codegen.csrc import contiguous_strides, index_type, load_expr
from ember.codegen.families import Target
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.codegen.kernels.movement import bits_literal, storage_type
from ember.ir import DType

__all__: list[str] = []


def _launch(name: str, source: str, size: int, args: tuple) -> Lowered:
    if size == 0:
        return Lowered(())
    return Lowered((Launch(Kernel(name, source), (size,), None, args),))


@kernel_builder("Gather", "GatherElements")
def build_gather(spec: NodeSpec, target: Target) -> Lowered:
    data, indices = spec.inputs
    out = spec.outputs[0]
    axis = spec.attrs["axis"] % data.rank
    ctype = storage_type(data.dtype)
    itype = indices.dtype.cl_name
    idx = index_type(out.size, data.size)
    common = {"ctype": ctype, "itype": itype, "size": out.size, "axis_dim": data.shape[axis],
              "idx": idx}
    if spec.op == "Gather":
        inner = math.prod(data.shape[axis + 1:])
        nidx = max(indices.size, 1)
        two_d = inner >= 16
        name = kernel_name("gather", inner, nidx, two_d, common)
        source = render("gather.cl.j2", name=name, kind="gather", inner=inner, nidx=nidx,
                        two_d=two_d, label=f"{data.shape} axis {axis} by {indices.shape}",
                        **common)
        if two_d and out.size:
            launch = Launch(Kernel(name, source), (inner, out.size // inner), None,
                            ((IN, 0), (IN, 1), (OUT, 0)))
            return Lowered((launch,))
    else:
        strides = contiguous_strides(data.shape)
        name = kernel_name("gather_el", out.shape, strides, axis, common)
        source = render("gather.cl.j2", name=name, kind="elements", axis=axis, two_d=False,
                        shape=out.shape, data_strides=strides,
                        label=f"elements of {data.shape} axis {axis}", **common)
    return _launch(name, source, out.size, ((IN, 0), (IN, 1), (OUT, 0)))


@kernel_builder("GatherND")
def build_gather_nd(spec: NodeSpec, target: Target) -> Lowered:
    data, indices = spec.inputs
    out = spec.outputs[0]
    b = spec.attrs["batch_dims"]
    depth = indices.shape[-1]
    dims = data.shape[b:b + depth]
    inner = math.prod(data.shape[b + depth:])
    params = {
        "ctype": storage_type(data.dtype), "itype": indices.dtype.cl_name, "size": out.size,
        "idx": index_type(out.size, data.size, indices.size), "dims": dims, "inner": inner,
        "strides": contiguous_strides(data.shape)[b:b + depth],
        "batch_stride": math.prod(data.shape[b:]),
        "tuples": max(math.prod(indices.shape[b:-1]), 1), "two_d": inner >= 16,
    }
    name = kernel_name("gather_nd", params)
    source = render("gather_nd.cl.j2", name=name, label=f"{data.shape} by {indices.shape}, "
                    f"batch_dims {b}", **params)
    if params["two_d"] and out.size:
        launch = Launch(Kernel(name, source), (inner, out.size // inner), None,
                        ((IN, 0), (IN, 1), (OUT, 0)))
        return Lowered((launch,))
    return _launch(name, source, out.size, ((IN, 0), (IN, 1), (OUT, 0)))


@kernel_builder("OneHot")
def build_onehot(spec: NodeSpec, target: Target) -> Lowered:
    indices, out = spec.inputs[0], spec.outputs[0]
    axis = spec.attrs["axis"] % out.rank
    depth = spec.attrs["depth"]
    off, on = spec.attrs["values"].reshape(-1)
    if indices.dtype.is_float:
        itype = "double" if indices.dtype is DType.FLOAT64 else "float"
    else:
        itype = "long"
    load = load_expr(indices.dtype, "indices", "o * " + str(math.prod(out.shape[axis + 1:]))
                     + " + r")
    params = {
        "size": out.size, "depth": depth, "inner": math.prod(out.shape[axis + 1:]),
        "ctype": storage_type(out.dtype), "iptr": indices.dtype.cl_name, "itype": itype,
        "load": f"({itype})({load})", "signed": indices.dtype.is_signed,
        "on": bits_literal(on, out.dtype), "off": bits_literal(off, out.dtype),
        "idx": index_type(out.size),
    }
    name = kernel_name("onehot", params)
    source = render("onehot.cl.j2", name=name, label=f"{indices.shape} depth {depth} "
                    f"axis {axis}", **params)
    return _launch(name, source, out.size, ((IN, 0), (OUT, 0)))


@kernel_builder("Trilu")
def build_trilu(spec: NodeSpec, target: Target) -> Lowered:
    x = spec.inputs[0]
    params = {"size": x.size, "rows": x.shape[-2], "cols": x.shape[-1],
              "upper": bool(spec.attrs["upper"]), "k": spec.attrs["k"],
              "ctype": storage_type(x.dtype), "idx": index_type(x.size)}
    name = kernel_name("trilu", params)
    source = render("trilu.cl.j2", name=name, label=f"{x.shape} k {spec.attrs['k']}",
                    **params)
    if x.size == 0:
        return Lowered(())
    cols = x.shape[-1]
    return Lowered((Launch(Kernel(name, source), (cols, x.size // cols), None,
                           ((IN, 0), (OUT, 0))),))
