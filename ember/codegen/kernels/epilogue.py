"""Fused epilogues rendered into the store of a MatMul or Conv kernel.

The kernel computes its product value; instead of writing it, it runs the epilogue's
expression DAG (codegen/kernels/expressions.py's C forms) on it and writes the result. The extra
inputs (bias, residual, scale, ...) are extra kernel parameters `ep0, ep1, ...`, read at the
output element through broadcast strides decomposed from the output's flat offset.

`EpilogueCode.vector_store` is the same on a vector of consecutive lanes along the kernel's
vector direction (the CPU GEMM's full tiles): one coordinate decomposition per vector, each
extra input read as one element for every lane, as contiguous lanes, or lane by lane, the
expression on floatN (expressions.py's vector forms), one vector store where the
output is contiguous along the lanes, a scatter where it is not. Integer values (an int32
product, zero points, a QuantizeLinear result) are held as floats (expressions.vector_dag):
the kernel passes an integer product already converted, and an 8- or 16-bit integer output
is converted back at the store (VSTORE then writes that integer vector). It is None (the
kernel keeps the scalar store) where an op has no vector form, a value's type cannot be
held as floats, or an extra input's lanes are not evenly spaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ember.codegen.csrc import (
    broadcast_strides, compute_type, contiguous_strides, load_expr, pointer_type, store_stmt,
)
from ember.codegen.kernels.expressions import (
    C_EXPRESSIONS, VECTOR_INTEGERS, expression_supported, stored_vector, vector_dag, vector_type,
)
from ember.ir import DType, TensorType
from ember.ir.ops.fused import FusedExpr

__all__ = ["EpilogueCode", "epilogue_code", "vector_load", "lane_step", "VLOAD", "VSTORE"]

# Macros the kernel defines for vector code: an under-aligned vector of the store's width at
# a __global pointer, read (VLOAD(p)) or written (VSTORE(p, v)); vloadN is an out-of-line
# call on PoCL.
VLOAD, VSTORE = "EP_VLOAD", "EP_VSTORE"
# Integer outputs a vector store writes: every value of theirs is exact in float.
_EXACT_INTEGERS = VECTOR_INTEGERS - {DType.INT32}


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

    def _coordinates(self) -> list[str]:
        """C lines decomposing `ep_o` into output coordinates ep_c0.., where an extra input
        broadcasts (reads through strides)."""
        shape = self.out.shape
        if not any(1 < t.size and t.shape != shape for t in self.extras):
            return []
        lines = [f"{self.idx} ep_rest = ep_o;"]
        for axis in reversed(range(len(shape))):
            lines.append(f"const {self.idx} ep_c{axis} = ep_rest % {shape[axis]}; "
                         f"ep_rest /= {shape[axis]};")
        return lines

    def _extra_offset(self, t: TensorType) -> str:
        """C offset of an extra input's element at the output element `ep_o`."""
        if t.size == 1:
            return "0"
        if t.shape == self.out.shape:
            return "ep_o"
        strides = broadcast_strides(t.shape, self.out.shape)
        return " + ".join(f"ep_c{a} * {s}" for a, s in enumerate(strides) if s) or "0"

    def store(self, pointer: str, offset: str, value: str) -> str:
        """C statements storing `value` (the product) at flat `offset` of the output."""
        if self.expr is None:
            return store_stmt(self.out.dtype, pointer, offset, value)
        lines = [f"const {self.idx} ep_o = {offset};",
                 f"const {compute_type(self.base_dtype)} ep_v0 = {value};"]
        lines += self._coordinates()
        for i, t in enumerate(self.extras):
            lines.append(f"const {compute_type(t.dtype)} ep_v{i + 1} = "
                         f"{load_expr(t.dtype, f'ep{i}', self._extra_offset(t))};")
        dtypes = [self.base_dtype, *(t.dtype for t in self.extras)]
        n = self.expr.n_inputs
        for k, node in enumerate(self.expr.nodes):
            args = [f"ep_v{i}" for i in node.args]
            arg_dtypes = [self.expr.value_dtype(i, dtypes) for i in node.args]
            text = C_EXPRESSIONS[node.op](args, node.attrs, arg_dtypes, node.dtype)
            lines.append(f"const {compute_type(node.dtype)} ep_v{n + k} = {text};")
        lines.append(store_stmt(self.out.dtype, pointer, "ep_o", f"ep_v{self.expr.outputs[0]}"))
        return "{\n" + "\n".join("    " + line for line in lines) + "\n}"

    def vector_store(self, pointer: str, offset: str, value: str, width: int, out_step: int,
                     lane_axes: tuple[int, ...]) -> str | None:
        """C statements storing `value`, a float vector of `width` lanes (the product's values
        converted to float, when it is an integer product), where lane l is the
        output element at flat offset `offset` + l * `out_step`. The lanes run along the
        output axes `lane_axes` (consecutive, in row-major order) and never leave the block
        those axes span: lane l is `offset`'s element moved l places within the block. None
        where the vector form cannot express the epilogue (see the module docstring)."""
        if width == 1:
            return None
        if self.expr is None and (self.out.dtype is not DType.FLOAT32
                                  or self.base_dtype is not DType.FLOAT32):
            return None
        if self.out.dtype is not DType.FLOAT32 and self.out.dtype not in _EXACT_INTEGERS:
            return None
        lines = [f"const {self.idx} ep_o = {offset};",
                 f"const {vector_type(width)} ep_v0 = {value};"]
        out_value = "ep_v0"
        if self.expr is not None:
            shape = self.out.shape
            steps = [lane_step(t.shape, shape, lane_axes) for t in self.extras]
            if any(step is None for step in steps):
                return None
            body = vector_dag(self.expr.nodes, self.expr.n_inputs,
                              [self.base_dtype, *(t.dtype for t in self.extras)], width, "ep_v")
            if body is None:
                return None
            lines += self._coordinates()
            for i, (t, step) in enumerate(zip(self.extras, steps)):
                if t.size == 1:
                    step = 0
                elif t.shape == shape:
                    step = out_step
                load = vector_load(t.dtype, f"ep{i}", self._extra_offset(t), width, step)
                if load is None:
                    return None
                lines.append(f"const {vector_type(width)} ep_v{i + 1} = {load};")
            lines += body
            out_value = f"ep_v{self.expr.outputs[0]}"
        out_value = stored_vector(out_value, self.out.dtype, width)
        if out_step == 1:
            lines.append(f"{VSTORE}({pointer} + ep_o, {out_value});")
        else:
            lines.append(f"const {self.out.dtype.cl_name}{width} ep_out = {out_value};")
            lines += [f"{pointer}[ep_o + {lane * out_step}] = ep_out.s{lane:x};"
                      for lane in range(width)]
        return "{\n" + "\n".join("    " + line for line in lines) + "\n}"


def lane_step(in_shape: tuple[int, ...], out_shape: tuple[int, ...],
              lane_axes: tuple[int, ...]) -> int | None:
    """Elements between the values of an input (broadcast to `out_shape`) at consecutive
    lanes that run along `lane_axes` of the output, or None when that is not one number (the
    input broadcasts along some of those axes and not others)."""
    strides = broadcast_strides(in_shape, out_shape)
    axes = [a for a in lane_axes if out_shape[a] > 1]
    if not axes:
        return 0
    if all(strides[a] == 0 for a in axes):
        return 0
    inner = contiguous_strides([out_shape[a] for a in lane_axes])
    last = strides[axes[-1]] // inner[lane_axes.index(axes[-1])]
    for a in axes:
        if strides[a] != last * inner[lane_axes.index(a)]:
            return None
    return last


def vector_load(dtype: DType, pointer: str, offset: str, width: int, step: int) -> str | None:
    """A float vector of `width` lanes, lane l read at `offset` + l * `step` (0: one element
    for every lane, 1: contiguous through VLOAD, else gathered); None unless float32 or an
    integer type vector_dag holds as floats (read lane by lane unless broadcast)."""
    if dtype is not DType.FLOAT32 and dtype not in VECTOR_INTEGERS:
        return None
    vt = vector_type(width)
    if step == 0:
        return f"({vt})({pointer}[{offset}])"
    if step == 1 and dtype is DType.FLOAT32:
        return f"{VLOAD}({pointer} + {offset})"
    if dtype is not DType.FLOAT32:
        lanes = ", ".join(f"(float){pointer}[{offset} + {lane * step}]" for lane in range(width))
        return f"({vt})({lanes})"
    lanes = ", ".join(f"{pointer}[{offset} + {lane * step}]" for lane in range(width))
    return f"({vt})({lanes})"


def epilogue_code(expr: FusedExpr | None, extras: Sequence[TensorType], out: TensorType,
                  base_dtype: DType, idx: str) -> EpilogueCode | None:
    """The epilogue of a node, or None when one of its ops has no C form for these types."""
    if expr is not None:
        dtypes = [base_dtype, *(t.dtype for t in extras)]
        for node in expr.nodes:
            if not expression_supported(node, [expr.value_dtype(i, dtypes) for i in node.args]):
                return None
    return EpilogueCode(expr, tuple(extras), out, base_dtype, idx)
