"""The RotaryEmbedding kernel (`rotary.cl.j2`): one work-item per output element, which
reads its own feature, its pair partner and the pair's angle; features past rotary_dim are
copied. Shapes, strides and the pairing are baked in as constants."""

from __future__ import annotations

from ember.codegen.csrc import (
    compute_type, extensions_for, index_type, int_literal, load_expr, store_stmt,
)
from ember.codegen.families import Target
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.ir import DType
from ember.ir.ops.rotary import rotary_dims

__all__: list[str] = []


@kernel_builder("RotaryEmbedding")
def build_rotary(spec: NodeSpec, target: Target) -> Lowered | None:
    x, cos = spec.inputs[:2]
    dtype = x.dtype
    if dtype not in (DType.FLOAT32, DType.FLOAT16, DType.FLOAT64):
        return None
    a = spec.attrs
    r = rotary_dims(x.shape, cos.shape, a["rotary_dim"], a["seq_axis"])
    if x.size == 0:
        return Lowered(())
    b, a1, a2, d = x.shape
    params = {
        "d": d, "r": r, "half": r // 2, "interleaved": bool(a["interleaved"]),
        # x [B, A1, A2, D]: the sequence is axis seq_axis, the heads the other one
        "seq_inner": a["seq_axis"] == 2, "a1": a1, "a2": a2,
        "cos_batch": cos.shape[0] > 1, "seq": cos.shape[1],
        "dtype": dtype, "t": compute_type(dtype), "idx": index_type(x.size, cos.size),
    }
    name = kernel_name("rotary", params)
    source = render(
        "rotary.cl.j2", name=name, label=f"{x} rotary_dim {r}", lit=int_literal,
        ptr=dtype.cl_name, load=lambda p, o: load_expr(dtype, p, o),
        store=lambda p, o, v: store_stmt(dtype, p, o, v), **params)
    kernel = Kernel(name, source, extensions_for([dtype]))
    return Lowered((Launch(kernel, (x.size,), None, ((IN, 0), (IN, 1), (IN, 2), (OUT, 0))),))
