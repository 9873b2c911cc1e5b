"""Kernels of the linear-algebra family: MatMul (matmul.py), Conv and ConvTranspose
(conv.py), and BatchNormalization (here: one work-item per element)."""

from __future__ import annotations

import math

from ember.codegen.csrc import (
    c_literal, compute_type, extensions_for, index_type, load_expr, store_stmt,
)
from ember.codegen.families import Target
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.ir import DType

__all__ = ["build_batchnorm"]


@kernel_builder("BatchNormalization")
def build_batchnorm(spec: NodeSpec, target: Target) -> Lowered | None:
    x, params = spec.inputs[0], spec.inputs[1:]
    out = spec.outputs[0]
    if out.size == 0:
        return Lowered(())
    # Parameters of another float type (opset 15 allows it) are computed in X's type.
    acc = compute_type(x.dtype)
    eps_type = DType.FLOAT64 if acc == "double" else DType.FLOAT32
    name = kernel_name("batchnorm", spec.inputs, out, spec.attrs.key())
    source = render(
        "batchnorm.cl.j2",
        name=name, acc=acc, idx=index_type(x.size), size=out.size, channels=x.shape[1],
        inner=math.prod(x.shape[2:]), epsilon=spec.attrs["epsilon"],
        eps=c_literal(spec.attrs["epsilon"], eps_type),
        x_ptr=x.dtype.cl_name, p_ptrs=[p.dtype.cl_name for p in params],
        loads=[load_expr(p.dtype, ptr, "c")
               for p, ptr in zip(params, ("scale", "bias", "mean", "var"))],
        load_x=load_expr(x.dtype, "x", "i"), store=store_stmt(out.dtype, "y", "i", "value"),
        label=f"{x} -> {out}",
    )
    dtypes = [t.dtype for t in spec.inputs]
    kernel = Kernel(name, source, extensions_for(dtypes))
    args = tuple((IN, i) for i in range(5)) + ((OUT, 0),)
    return Lowered((Launch(kernel, (out.size,), None, args),))
