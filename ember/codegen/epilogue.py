"""Fused epilogues rendered into the store of a MatMul or Conv kernel.

The kernel computes its product value; instead of writing it, it runs the epilogue's
expression DAG (codegen/elementwise.py's C forms) on it and writes the result. The extra
inputs (bias, residual, scale, ...) are extra kernel parameters `ep0, ep1, ...`, read at the
output element through broadcast strides decomposed from the output's flat offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ember.codegen.elementwise import (
    C_EXPRESSIONS, compute_type, expression_supported, load_expr, pointer_type, store_stmt,
)
from ember.codegen.render import broadcast_strides
from ember.ir import DType, TensorType
from ember.ir.ops.fused import FusedExpr

__all__ = ["EpilogueCode", "epilogue_code"]


@dataclass(frozen=True)
class EpilogueCode:
    """What a kernel template needs: extra parameters, and how to store one value."""

    expr: FusedExpr | None
    extras: tuple[TensorType, ...]
    out: TensorType
    base_dtype: DType
    idx: str

    @property
    def params(self) -> tuple[str, ...]:
        """Signature entries for the extra inputs, each ending with a comma."""
        return tuple(f"__global const {pointer_type(t.dtype)}* restrict ep{i},"
                     for i, t in enumerate(self.extras))

    @property
    def declarations(self) -> tuple[str, ...]:
        """The same parameters without the trailing commas."""
        return tuple(param.rstrip(",") for param in self.params)

    @property
    def label(self) -> str:
        return f" + epilogue {self.expr.label}" if self.expr is not None else ""

    def store(self, pointer: str, offset: str, value: str) -> str:
        """C statements storing `value` (the product) at flat `offset` of the output."""
        if self.expr is None:
            return store_stmt(self.out.dtype, pointer, offset, value)
        lines = [f"const {self.idx} ep_o = {offset};",
                 f"const {compute_type(self.base_dtype)} ep_v0 = {value};"]
        shape = self.out.shape
        strided = [i for i, t in enumerate(self.extras) if 1 < t.size and t.shape != shape]
        if strided:
            lines.append(f"{self.idx} ep_rest = ep_o;")
            for axis in reversed(range(len(shape))):
                lines.append(f"const {self.idx} ep_c{axis} = ep_rest % {shape[axis]}; "
                             f"ep_rest /= {shape[axis]};")
        for i, t in enumerate(self.extras):
            if t.size == 1:
                off = "0"
            elif t.shape == shape:
                off = "ep_o"
            else:
                strides = broadcast_strides(t.shape, shape)
                off = " + ".join(f"ep_c{a} * {s}" for a, s in enumerate(strides) if s) or "0"
            lines.append(f"const {compute_type(t.dtype)} ep_v{i + 1} = "
                         f"{load_expr(t.dtype, f'ep{i}', off)};")
        dtypes = [self.base_dtype, *(t.dtype for t in self.extras)]
        n = self.expr.n_inputs
        for k, node in enumerate(self.expr.nodes):
            args = [f"ep_v{i}" for i in node.args]
            arg_dtypes = [self.expr.value_dtype(i, dtypes) for i in node.args]
            text = C_EXPRESSIONS[node.op](args, node.attrs, arg_dtypes, node.dtype)
            lines.append(f"const {compute_type(node.dtype)} ep_v{n + k} = {text};")
        lines.append(store_stmt(self.out.dtype, pointer, "ep_o", f"ep_v{self.expr.outputs[0]}"))
        return "{\n" + "\n".join("    " + line for line in lines) + "\n}"


def epilogue_code(expr: FusedExpr | None, extras: Sequence[TensorType], out: TensorType,
                  base_dtype: DType, idx: str) -> EpilogueCode | None:
    """The epilogue of a node, or None when one of its ops has no C form for these types."""
    if expr is not None:
        dtypes = [base_dtype, *(t.dtype for t in extras)]
        for node in expr.nodes:
            if not expression_supported(node, [expr.value_dtype(i, dtypes) for i in node.args]):
                return None
    return EpilogueCode(expr, tuple(extras), out, base_dtype, idx)
