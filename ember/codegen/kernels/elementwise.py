"""Elementwise kernels generated from an expression DAG.

An `ElementwiseSpec` lists the kernel's input tensors and a small DAG of elementwise ops over
them; one op node is the one-node DAG, and fused regions (later) are bigger DAGs of the same
form. expressions.py says, per op, how one element (or vector) is computed in OpenCL C.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ember.codegen.csrc import (
    broadcast_strides, compute_type, contiguous_strides, extensions_for, load_expr, pointer_type,
    store_stmt,
)
from ember.codegen.families import Target
from ember.codegen.kernels.expressions import (
    C_EXPRESSIONS, expression_supported, float_vector, stored_vector, vector_dag,
)
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.ir import OPS, DType, TensorType
from ember.ir.ops.fused import ExprNode, FusedExpr

__all__ = ["ExprNode", "ElementwiseSpec", "render_elementwise", "EW_VECTOR_WIDTH"]


@dataclass(frozen=True)
class ElementwiseSpec:
    inputs: tuple[TensorType, ...]
    shape: tuple[int, ...]  # output shape (every output has it)
    nodes: tuple[ExprNode, ...]
    outputs: tuple[int, ...]  # value indices written to the kernel's outputs, in order

    def value_dtype(self, index: int) -> DType:
        n = len(self.inputs)
        return self.inputs[index].dtype if index < n else self.nodes[index - n].dtype


# -- rendering ------------------------------------------------------------------------------
# Lanes per work-item of the vectorized kernel (CPU devices): one float8, an AVX2 register.
EW_VECTOR_WIDTH = 8


def _vector_loads(spec: ElementwiseSpec, modes: Sequence[str], width: int
                  ) -> list[str] | None:
    """How each input is read as a vector of `width` consecutive output elements (starting
    at a multiple of `width`): "bcast" (one element, every lane) or "vec" (contiguous), or
    None when some input needs a lane-by-lane gather. A broadcast input's lanes move along
    the output's last axis only when no vector crosses a row (last dim % width == 0): then
    its last-axis stride, 0 or 1, says which."""
    loads = []
    for t, mode in zip(spec.inputs, modes):
        if mode == "scalar":
            loads.append("bcast")
        elif mode == "same":
            loads.append("vec")
        elif spec.shape[-1] % width == 0:
            last = broadcast_strides(t.shape, spec.shape)[-1]
            loads.append("bcast" if last == 0 else "vec")
        else:
            return None
    return loads


def render_elementwise(spec: ElementwiseSpec, target: Target) -> Lowered | None:
    """The kernel of `spec`: one work-item per element, or, on CPU devices when every value
    is float32 and every op has a vector form, one per EW_VECTOR_WIDTH elements computed as
    one floatN (the tail past the last whole vector element by element). PoCL vectorizes
    one-element work-items only when the body has no calls and uniform control flow, and
    reads floatN through under-aligned vector types several times faster than scalars."""
    n_in = len(spec.inputs)
    for k, node in enumerate(spec.nodes):
        if not expression_supported(node, [spec.value_dtype(i) for i in node.args]):
            return None
    size = 1
    for dim in spec.shape:
        size *= dim
    rank = len(spec.shape)
    out_strides = contiguous_strides(spec.shape)
    modes = ["scalar" if t.size == 1 else "same" if t.shape == spec.shape else "strided"
             for t in spec.inputs]
    inputs = [
        {
            "mode": mode,
            "ptr": pointer_type(t.dtype),
            "load": load_expr(t.dtype, f"in{i}", f"off{i}"),
            "strides": broadcast_strides(t.shape, spec.shape),
            "ctype": compute_type(t.dtype),
        }
        for i, (t, mode) in enumerate(zip(spec.inputs, modes))
    ]
    body = []
    for k, node in enumerate(spec.nodes):
        args = [f"v{i}" for i in node.args]
        arg_dtypes = [spec.value_dtype(i) for i in node.args]
        expr = C_EXPRESSIONS[node.op](args, node.attrs, arg_dtypes, node.dtype)
        body.append(f"const {compute_type(node.dtype)} v{n_in + k} = {expr};")
    outputs = []
    for j, index in enumerate(spec.outputs):
        dtype = spec.value_dtype(index)
        outputs.append(
            {"ptr": pointer_type(dtype), "store": store_stmt(dtype, f"out{j}", "i", f"v{index}")}
        )
    width = EW_VECTOR_WIDTH
    vector = None
    if target.family.register_tiles and size >= width and rank >= 1:
        loads = _vector_loads(spec, modes, width)
        vbody = vector_dag(spec.nodes, n_in, [t.dtype for t in spec.inputs], width, "u")
        if loads is not None and vbody is not None:
            vector = {"loads": loads, "body": vbody, "width": width,
                      "outputs": [stored_vector(f"u{index}", spec.value_dtype(index), width)
                                  for index in spec.outputs],
                      "in_types": [f"{t.dtype.cl_name}{width}" for t in spec.inputs],
                      "in_floats": [float_vector("{}", t.dtype, width) for t in spec.inputs],
                      "out_types": [f"{spec.value_dtype(i).cl_name}{width}"
                                    for i in spec.outputs]}
    index_type = "int" if size < 2**31 else "long"
    dtypes = [t.dtype for t in spec.inputs] + [n.dtype for n in spec.nodes]
    name = kernel_name("ew", spec, vector is not None)
    source = render(
        "elementwise.cl.j2",
        name=name,
        inputs=inputs,
        outputs=outputs,
        body=body,
        vector=vector,
        size=size,
        rank=rank,
        shape=spec.shape,
        out_strides=out_strides,
        idx=index_type,
        label=" ".join(n.op for n in spec.nodes),
    )
    kernel = Kernel(name, source, extensions_for(dtypes))
    if size == 0:
        return Lowered(())
    args = tuple((IN, i) for i in range(n_in)) + tuple((OUT, j) for j in range(len(outputs)))
    items = size if vector is None else -(-size // width)
    return Lowered((Launch(kernel, (items,), None, args),))


@kernel_builder(*[op.name for op in OPS if op.elementwise and op.name != "FusedElementwise"])
def build_elementwise(spec: NodeSpec, target: Target) -> Lowered | None:
    """One elementwise op node as a one-node DAG."""
    n_in = len(spec.inputs)
    node = ExprNode(spec.op, tuple(range(n_in)), spec.attrs, spec.outputs[0].dtype)
    return render_elementwise(
        ElementwiseSpec(spec.inputs, spec.outputs[0].shape, (node,), (n_in,)), target
    )


@kernel_builder("FusedElementwise")
def build_fused_elementwise(spec: NodeSpec, target: Target) -> Lowered | None:
    """A fused region: its whole DAG in one kernel, every output written by it."""
    expr: FusedExpr = spec.attrs["expr"]
    return render_elementwise(
        ElementwiseSpec(spec.inputs, spec.outputs[0].shape, expr.nodes, expr.outputs), target
    )
