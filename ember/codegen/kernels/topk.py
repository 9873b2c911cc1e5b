"""TopK (`topk.cl.j2`): one work-item per line keeps a sorted buffer of the K best elements
in private memory. K is capped at `MAX_K`: the buffer lives in registers (or spills to
private memory) and insertion is O(K) per element; larger K runs on the host through the
numpy reference, which sorts the whole line."""

from __future__ import annotations

from ember.codegen.csrc import compute_type, extensions_for, index_type, load_expr, store_stmt
from ember.codegen.kernels.axis_ops import line_layout
from ember.codegen.families import Target
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.ir.ops.common import normalize_axis

__all__ = ["MAX_K"]

MAX_K = 64


def _better_expr(largest: bool, is_float: bool) -> str:
    """Is a strictly better than b? NaN is greater than every number."""
    if largest:
        return "(a) > (b) || (isnan(a) && !isnan(b))" if is_float else "(a) > (b)"
    return "(a) < (b) || (isnan(b) && !isnan(a))" if is_float else "(a) < (b)"


@kernel_builder("TopK")
def build_topk(spec: NodeSpec, target: Target) -> Lowered | None:
    x, values = spec.inputs[0], spec.outputs[0]
    k = spec.attrs["k"]
    if values.size == 0:
        return Lowered(())
    if k > MAX_K:
        return None
    axis = normalize_axis(spec.attrs["axis"], x.rank)
    outer, n, inner = line_layout(x.shape, axis)
    largest = bool(spec.attrs["largest"])
    lines = outer * inner
    name = kernel_name("topk", x.dtype.name, outer, n, inner, k, largest)
    source = render(
        "topk.cl.j2", name=name, label=f"TopK {x.dtype} k={k} of {n}", largest=largest,
        outer=outer, n=n, inner=inner, k=k, lines=lines, idx=index_type(x.size),
        in_ptr=x.dtype.cl_name, ctype=compute_type(x.dtype),
        better=_better_expr(largest, x.dtype.is_float),
        load=load_expr(x.dtype, "in", "base + i * INNER"),
        store=store_stmt(x.dtype, "values", "off", "best[j]"),
    )
    kernel = Kernel(name, source, extensions_for([x.dtype]))
    return Lowered((Launch(kernel, (lines,), None, ((IN, 0), (OUT, 0), (OUT, 1))),))
