"""ArgMax/ArgMin (`argreduce.cl.j2`) and CumSum/CumProd (`cumsum.cl.j2`): one work-item walks one
line along an axis. A tensor seen along one axis is (OUTER, N, INNER); `line_layout` gives
those three numbers, and the templates index `base + i * INNER`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ember.codegen.csrc import compute_type, extensions_for, index_type, load_expr, store_stmt
from ember.codegen.families import Target
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.kernels.reduce import accumulator_type
from ember.codegen.render import kernel_name, render
from ember.ir import OPS, DType
from ember.ir.ops.common import normalize_axis

__all__ = ["line_layout"]


def line_layout(shape: Sequence[int], axis: int) -> tuple[int, int, int]:
    """(OUTER, N, INNER): the product of the dims before `axis`, its size, the rest."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _take_expr(largest: bool, last: bool, is_float: bool) -> str:
    """When does element v replace the best so far? NaN is the extreme, as in numpy."""
    cmp = (">" if largest else "<") + ("=" if last else "")
    if not is_float:
        return f"(v) {cmp} (best)"
    if last:  # a later NaN always wins; nothing replaces a NaN but a NaN
        return f"isnan(v) || (!isnan(best) && (v) {cmp} (best))"
    return f"!isnan(best) && (isnan(v) || (v) {cmp} (best))"


@kernel_builder("ArgMax", "ArgMin")
def build_argreduce(spec: NodeSpec, target: Target) -> Lowered | None:
    x, out = spec.inputs[0], spec.outputs[0]
    if out.size == 0:
        return Lowered(())
    axis = normalize_axis(spec.attrs["axis"], x.rank)
    outer, n, inner = line_layout(x.shape, axis)
    largest = bool(OPS[spec.op].extra["largest"])
    last = bool(spec.attrs["select_last_index"])
    lines = outer * inner
    idx = index_type(x.size, lines)
    name = kernel_name("argreduce", spec.op, x.dtype.name, outer, n, inner, last)
    source = render(
        "argreduce.cl.j2", name=name, label=f"{spec.op} {x.dtype} over {n}", largest=largest,
        last=last, outer=outer, n=n, inner=inner, lines=lines, idx=idx,
        in_ptr=x.dtype.cl_name, ctype=compute_type(x.dtype),
        take=_take_expr(largest, last, x.dtype.is_float),
        load_first=load_expr(x.dtype, "in", "base"),
        load=load_expr(x.dtype, "in", "base + i * INNER"),
    )
    kernel = Kernel(name, source, extensions_for([x.dtype]))
    return Lowered((Launch(kernel, (lines,), None, ((IN, 0), (OUT, 0))),))


@kernel_builder("CumSum", "CumProd")
def build_cumsum(spec: NodeSpec, target: Target) -> Lowered | None:
    x = spec.inputs[0]
    if x.size == 0:
        return Lowered(())
    axis = normalize_axis(spec.attrs["axis"], x.rank)
    outer, n, inner = line_layout(x.shape, axis)
    exclusive, reverse = bool(spec.attrs["exclusive"]), bool(spec.attrs["reverse"])
    combine = OPS[spec.op].extra["combine"]
    acc = accumulator_type(x.dtype, combine)
    lines = outer * inner
    # Lines side by side in one floatN when they are neighbours in memory (a CPU's SIMD;
    # 256-bit vectors: wider ones change the call ABI of PoCL's builtins without AVX-512).
    vec = 1
    if x.dtype.is_float and not target.family.is_gpu:
        widths = (4, 2, 1) if x.dtype is DType.FLOAT64 else (8, 4, 2, 1)
        vec = next(v for v in widths if inner % v == 0)
    if vec > 1:
        half = "_half" if x.dtype is DType.FLOAT16 else ""
        acc_t = f"{acc}{vec}"
        load = f"vload{half}{vec}(0, in + off)"
        store = f"vstore{half}{vec}(acc, 0, out + off);"
    else:
        acc_t = acc
        load = f"({acc}){load_expr(x.dtype, 'in', 'off')}"
        store = store_stmt(x.dtype, "out", "off", f"({compute_type(x.dtype)})acc")
    name = kernel_name("cumsum", spec.op, x.dtype.name, outer, n, inner, exclusive, reverse,
                       vec)
    source = render(
        "cumsum.cl.j2", name=name, label=f"{spec.op} {x.dtype} over {n}", exclusive=exclusive,
        combine="*" if combine == "prod" else "+", identity=1 if combine == "prod" else 0,
        reverse=reverse, outer=outer, n=n, inner=inner, lines=lines, vec=vec,
        idx=index_type(x.size), in_ptr=x.dtype.cl_name, out_ptr=x.dtype.cl_name, acc=acc_t,
        load=load, store=store,
    )
    kernel = Kernel(name, source, extensions_for([x.dtype]))
    return Lowered((Launch(kernel, (lines // vec,), None, ((IN, 0), (OUT, 0))),))
