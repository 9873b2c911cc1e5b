"""Reduce* kernels: one template (`reduce.cl.j2`) for sum, prod, max and min, with the square
and abs pre-maps (ReduceSumSquare, ReduceL2, ReduceL1) and the mean / sqrt / log post-maps
(ReduceMean, ReduceL2, ReduceLogSum).

The host simplifies the axes first (size-1 axes dropped, neighbouring axes of one kind
merged), so every axes set becomes "kept dims x reduced dims" with input strides, and one
kernel shape serves any subset of axes. Work split, per `ReduceParams`:

* a work-item per output looping over its reduced elements (GROUP=1) is the default: on a
  CPU each work-item then streams memory on one core, and for reductions over outer axes
  neighbouring work-items read neighbouring addresses, which is what a GPU wants;
* on CPUs the accumulator is a floatN (VEC): N lanes over a contiguous reduced axis, or N
  neighbouring outputs when the innermost axis is kept, so the loop runs on SIMD units
  (4-7x faster than scalar on PoCL; the lanes are combined at the end);
* on GPUs a work-group per output (GROUP>1, a local-memory tree at the end) when the
  innermost reduced axis is contiguous and long, so that a group's reads coalesce;
* with few outputs and long reductions each output is cut into SPLIT pieces, reduced in
  parallel into a scratch buffer, and a second, tiny launch combines the pieces. This is
  what keeps a full reduction (one output) from running on a single core / compute unit.

ArgMax/ArgMin and CumSum/CumProd (`axis_ops.py`) and TopK (`topk.py`) register from here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ember.codegen.csrc import (
    compute_type, contiguous_strides, extensions_for, float_literal, half_load, index_type,
    load_expr, store_stmt,
)
from ember.codegen.families import Target
from ember.codegen.types import IN, OUT, TMP, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.ir import OPS, DType
from ember.ir.ops.common import normalize_axes
from ember.ir.ops.reduce import REDUCE_KINDS, ReduceKind

__all__ = [
    "ReduceLayout", "ReduceParams", "reduce_layout", "default_params", "render_reduce",
    "accumulator_type", "identity_literal", "index_type", "C_SIZES", "float_literal",
]

# Byte size of the C types the kernels use for accumulators and scratch buffers.
C_SIZES = {"uchar": 1, "char": 1, "ushort": 2, "short": 2, "uint": 4, "int": 4, "ulong": 8,
           "long": 8, "float": 4, "double": 8, "half": 2}
# Signed ints sum and multiply in their unsigned type: wrapping, with no signed-overflow UB.
_UNSIGNED = {"char": "uchar", "short": "ushort", "int": "uint", "long": "ulong"}
# (lowest, highest) of each integer C type, as OpenCL C's limits.h macros.
_INT_LIMITS = {
    "char": ("CHAR_MIN", "CHAR_MAX"), "short": ("SHRT_MIN", "SHRT_MAX"),
    "int": ("INT_MIN", "INT_MAX"), "long": ("LONG_MIN", "LONG_MAX"),
    "uchar": ("0", "UCHAR_MAX"), "ushort": ("0", "USHRT_MAX"), "uint": ("0U", "UINT_MAX"),
    "ulong": ("0UL", "ULONG_MAX"),
}


# -- shared helpers (axis_ops.py and topk.py use them too) ----------------------------------




def accumulator_type(dtype: DType, combine: str) -> str:
    """The C type a reduction accumulates in: float for half, unsigned for signed sums."""
    ctype = compute_type(dtype)
    if combine in ("sum", "prod") and ctype in _UNSIGNED and dtype is not DType.BOOL:
        return _UNSIGNED[ctype]
    return ctype


def identity_literal(combine: str, dtype: DType, acc: str) -> str:
    """The C literal an empty reduction starts from (ONNX: max of nothing is -inf, ...)."""
    if combine == "sum":
        return f"({acc})0"
    if combine == "prod":
        return f"({acc})1"
    if dtype is DType.BOOL:
        return "(uchar)1" if combine == "min" else "(uchar)0"
    if dtype.is_float:
        return float_literal(-math.inf if combine == "max" else math.inf, acc)
    low, high = _INT_LIMITS[acc]
    return f"({acc}){low if combine == 'max' else high}"


# -- layout ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReduceLayout:
    """A reduction of a contiguous tensor as (size, input stride) dims, outermost first."""

    kept: tuple[tuple[int, int], ...]
    reduced: tuple[tuple[int, int], ...]  # never empty: (1, 1) when nothing is reduced
    count: int  # reduced elements per output
    outputs: int


def reduce_layout(shape: Sequence[int], axes: Sequence[int]) -> ReduceLayout:
    """Drop size-1 axes and merge neighbouring axes of the same kind (kept / reduced)."""
    strides = contiguous_strides(shape)
    groups: list[list[int]] = []  # [reduced?, size, stride]
    for axis, (dim, stride) in enumerate(zip(shape, strides)):
        if dim == 1:
            continue
        kind = int(axis in axes)
        if groups and groups[-1][0] == kind:
            groups[-1][1] *= dim
            groups[-1][2] = stride
        else:
            groups.append([kind, dim, stride])
    kept = tuple((size, stride) for kind, size, stride in groups if not kind)
    reduced = tuple((size, stride) for kind, size, stride in groups if kind)
    count = math.prod(shape[a] for a in axes)
    outputs = math.prod(size for size, _ in kept)
    if count == 0:
        reduced = ((0, 1),)
    elif not reduced:
        reduced = ((1, 1),)
    return ReduceLayout(kept, reduced, count, outputs)


# -- tunables -------------------------------------------------------------------------------
VEC_WIDTHS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class ReduceParams:
    group: int = 1  # work-items per (output, piece); a power of two
    split: int = 1  # pieces per output
    vec: int = 1  # floatN accumulator width
    vec_axis: str = "none"  # "none" | "reduced" | "kept": what the VEC lanes run along

    def units(self, layout: ReduceLayout) -> int:
        """Work units of the first launch: (output or VEC outputs, piece) pairs."""
        per = self.vec if self.vec_axis == "kept" else 1
        return layout.outputs // per * self.split

    def violations(self, layout: ReduceLayout, dtype: DType, target: Target) -> list[str]:
        """The constraints these params break, each with its reason (empty: valid)."""
        bad = []
        acc_bytes = C_SIZES[accumulator_type(dtype, "sum")]
        if self.group < 1 or self.group & (self.group - 1):
            bad.append(f"group={self.group} is not a power of two  # the tree halves it")
        if self.group > target.traits.max_work_group_size:
            bad.append(f"group={self.group} > max work-group size  # one group per piece")
        if self.group * acc_bytes > target.traits.local_mem_bytes:
            bad.append(f"group={self.group} scratch exceeds local memory")
        if not 1 <= self.split <= max(layout.count, 1):
            bad.append(f"split={self.split} not in [1, count]  # every piece gets elements")
        if self.vec not in VEC_WIDTHS:
            bad.append(f"vec={self.vec} not in {VEC_WIDTHS}  # OpenCL vector widths")
        if (self.vec > 1) != (self.vec_axis != "none"):
            bad.append(f"vec={self.vec} with vec_axis={self.vec_axis!r}  # lanes need an axis")
        if self.vec > 1 and (self.group > 1 or not dtype.is_float):
            bad.append("vec > 1 needs group 1 and a float type  # one floatN per work-item")
        if self.vec_axis == "reduced" and (len(layout.reduced) != 1 or layout.reduced[0][1] != 1):
            bad.append("vec_axis 'reduced' needs one contiguous reduced dim  # vloadN")
        if self.vec_axis == "kept" and (
            not layout.kept or layout.kept[-1][1] != 1 or layout.kept[-1][0] % self.vec
        ):
            bad.append("vec_axis 'kept' needs a contiguous innermost kept dim, a multiple of "
                       "vec  # VEC outputs share one vloadN")
        return bad


def default_params(layout: ReduceLayout, dtype: DType, target: Target) -> ReduceParams:
    """Defaults per device kind (see the module docstring for the reasoning)."""
    count, outputs = layout.count, max(layout.outputs, 1)
    inner_contiguous = layout.reduced[-1][1] == 1
    if target.family.is_gpu:
        # Enough work-items in flight to cover the device: ~2048 per compute unit.
        wanted = target.traits.compute_units * 2048
        group = 1
        if inner_contiguous and count >= 64:
            group = min(64 if count < 4096 else 256, target.traits.max_work_group_size)
            group = 1 << (group.bit_length() - 1)
        split = 1
        if outputs * group < wanted and count >= group * 64:
            split = min(-(-wanted // (outputs * group)), count // (group * 32), 64)
        return ReduceParams(max(group, 1), max(split, 1))
    # CPU / generic: one work-item per output (or per VEC outputs) with floatN accumulators
    # over contiguous memory; long reductions with few outputs split over the cores.
    vec, vec_axis, units = 1, "none", outputs
    if dtype.is_float:
        widest = 4 if dtype is DType.FLOAT64 else 8  # 256 bits (see axis_ops.build_cumsum)
        if len(layout.reduced) == 1 and inner_contiguous and count >= 2 * widest:
            vec, vec_axis = widest, "reduced"
        elif layout.kept and layout.kept[-1][1] == 1:
            vec = next(v for v in (16, 8, 4, 2, 1) if v <= widest and layout.kept[-1][0] % v == 0)
            vec_axis = "kept" if vec > 1 else "none"
            units = outputs // vec
    cores = max(target.traits.compute_units, 1)
    split = 1
    if units < cores * 4 and count >= 1 << 15:
        split = min(-(-cores * 4 // units), count // 4096, 64)
    return ReduceParams(1, split, vec, vec_axis)


# -- per-kind C snippets --------------------------------------------------------------------
def _combine_expr(combine: str, dtype: DType) -> str:
    if combine == "sum":
        return "(a) + (b)"
    if combine == "prod":
        return "(a) * (b)"
    if dtype.is_float:  # NaN wins, as numpy's max/min propagate it
        cmp = ">" if combine == "max" else "<"
        return f"((b) {cmp} (a) || isnan(b)) ? (b) : (a)"
    return f"{combine}((a), (b))"


def _post_expr(kind: ReduceKind, dtype: DType, acc: str, count: int, name: str
               ) -> tuple[str, str]:
    """(C expression of POST(a), helper function source or ""). A mean divides by the
    template's DIVISOR macro (the reduced count, an integer literal), so that a kernel over
    another count is the same kernel with another value there (codegen/generic.py)."""
    ctype = compute_type(dtype)
    if kind.post == "mean":
        if dtype.is_float:
            return f"(a) / ({acc})DIVISOR", ""
        if count == 0:
            return f"({ctype})0", ""
        if dtype.is_signed:
            return f"({ctype})((long)({ctype})(a) / (long)DIVISOR)", ""
        return f"({ctype})((ulong)(a) / (ulong)DIVISOR)", ""
    if kind.post == "log":
        return "log(a)", ""
    if kind.post == "sqrt":
        if dtype.is_float:
            return "sqrt(a)", ""
        helper = (
            f"inline long {name}_isqrt(long s) {{  /* floor(sqrt(s)); 0 for s <= 0 */\n"
            "    if (s <= 0) return 0;\n"
            "    long r = (long)sqrt((float)s);\n"
            "    while (r * r > s) r--;\n"
            "    while ((r + 1) * (r + 1) <= s) r++;\n"
            "    return r;\n"
            "}"
        )
        return f"({ctype}){name}_isqrt((long)({ctype})(a))", helper
    return "a", ""


def _vcombine_expr(combine: str) -> str:
    """COMBINE on floatN values (select picks b in the lanes whose condition is set)."""
    if combine in ("sum", "prod"):
        return "(a) + (b)" if combine == "sum" else "(a) * (b)"
    cmp = ">" if combine == "max" else "<"
    return f"select((a), (b), ((b) {cmp} (a)) | ((b) != (b)))"  # b != b: b is NaN


def _pre_expr(kind: ReduceKind, dtype: DType) -> str:
    """PRE(x) on the loaded (float, or unsigned accumulator) value; an integer abs happens
    in the load, before the signed value becomes its unsigned accumulator."""
    if kind.pre == "square":
        return "(x) * (x)"
    if kind.pre == "abs" and dtype.is_float:
        return "fabs(x)"
    return "x"


def _load(kind: ReduceKind, dtype: DType, acc: str) -> str:
    """One element as the accumulator type (abs(char) is its uchar magnitude: numpy's abs
    wraps the type's minimum to itself, the same bits)."""
    value = load_expr(dtype, "in", "off")
    if kind.pre == "abs" and dtype.is_signed and not dtype.is_float:
        value = f"abs({value})"
    return f"({acc}){value}"


def _vload(dtype: DType, vec: int, offset: str) -> str:
    if dtype is DType.FLOAT16:
        return half_load(vec, f"in + ({offset})")
    return f"vload{vec}(0, in + ({offset}))"


def _tree_steps(group: int) -> list[int]:
    return [group >> k for k in range(1, group.bit_length())]


def render_reduce(op: str, dtype: DType, layout: ReduceLayout, params: ReduceParams
                  ) -> Lowered:
    """The launches of one reduction: one, or two when SPLIT > 1 (pieces, then combine)."""
    kind: ReduceKind = OPS[op].extra["reduce"]
    acc = accumulator_type(dtype, kind.combine)
    ctype, vec, split = compute_type(dtype), params.vec, params.split
    key = (op, dtype.name, layout, params)
    name = kernel_name("reduce", *key)
    post, helper = _post_expr(kind, dtype, acc, layout.count, name)
    units = params.units(layout)
    common = {
        "identity": identity_literal(kind.combine, dtype, acc),
        "combine": _combine_expr(kind.combine, dtype),
        "vcombine": _vcombine_expr(kind.combine),
        "acc": acc,
        "lanes": [f"{i:x}" for i in range(vec)],
        "label": f"{op} {dtype} count={layout.count}",
    }
    # The store of the first launch: the final result, or the partial of one piece.
    if split > 1 and params.vec_axis == "kept":
        store = "\n    ".join(f"out[(o + {i}) * SPLIT + piece] = acc.s{i:x};"
                              for i in range(vec))
    elif split > 1:
        store = "out[unit] = acc;"
    elif params.vec_axis == "kept":
        half = "_half" if dtype is DType.FLOAT16 else ""
        store = f"vstore{half}{vec}(POST(acc), 0, out + o);"
    else:
        store = store_stmt(dtype, "out", "o", f"({ctype})POST(acc)")
    vload_at = "base + r" if params.vec_axis == "reduced" else "off"
    first = render(
        "reduce.cl.j2", name=name, kept=layout.kept, reduced=layout.reduced,
        count=layout.count, group=params.group, split=split, vec=vec,
        vec_axis=params.vec_axis, units=units, in_ptr=dtype.cl_name,
        out_ptr=acc if split > 1 else dtype.cl_name,
        load=_load(kind, dtype, acc), vload=_vload(dtype, vec, vload_at), pre=_pre_expr(kind, dtype),
        post="a" if split > 1 else post, helper="" if split > 1 else helper, store=store,
        divisor=layout.count,
        tree_steps=_tree_steps(params.group),
        idx=index_type(units * params.group * vec, math.prod((layout.count, layout.outputs))),
        **common,
    )
    extensions = extensions_for([dtype])
    launches = [_launch(Kernel(name, first, extensions), units, params.group,
                        ((IN, 0), (TMP if split > 1 else OUT, 0)))]
    temps: tuple[int, ...] = ()
    if split > 1:  # combine the SPLIT partials of each output: a reduction over (outputs, SPLIT)
        name2 = kernel_name("reduce_pieces", *key)
        post2, helper2 = _post_expr(kind, dtype, acc, layout.count, name2)
        second = render(
            "reduce.cl.j2", name=name2, kept=((layout.outputs, split),), reduced=((split, 1),),
            count=split, group=1, split=1, vec=1, vec_axis="none", units=layout.outputs,
            in_ptr=acc, out_ptr=dtype.cl_name, load="in[off]", vload="", pre="x", post=post2,
            helper=helper2, store=store_stmt(dtype, "out", "o", f"({ctype})POST(acc)"),
            divisor=layout.count,
            tree_steps=[], idx=index_type(layout.outputs * split), **{**common, "lanes": []},
        )
        launches.append(_launch(Kernel(name2, second, extensions), layout.outputs, 1,
                                ((TMP, 0), (OUT, 0))))
        temps = (layout.outputs * split * C_SIZES[acc],)
    note = f"group={params.group} split={split} vec={vec} along {params.vec_axis}"
    return Lowered(tuple(launches), temps=temps, notes=(note,))


def _launch(kernel: Kernel, units: int, group: int, args) -> Launch:
    if group > 1:
        return Launch(kernel, (units * group,), (group,), args)
    return Launch(kernel, (units,), None, args)


@kernel_builder(*REDUCE_KINDS)
def build_reduce(spec: NodeSpec, target: Target) -> Lowered | None:
    x, out = spec.inputs[0], spec.outputs[0]
    kind: ReduceKind = OPS[spec.op].extra["reduce"]
    if out.size == 0:
        return Lowered(())
    if kind.post == "sqrt" and not x.dtype.is_float and x.dtype.itemsize > 4:
        return None  # the float-seeded integer sqrt is exact only for sums below 2**32
    if kind.post == "log" and not x.dtype.is_float:
        return None  # the reference's float log of an integer sum, converted back
    layout = reduce_layout(x.shape, normalize_axes(spec.attrs["axes"], x.rank))
    params = default_params(layout, x.dtype, target)
    if params.violations(layout, x.dtype, target):
        params = ReduceParams()
    return render_reduce(spec.op, x.dtype, layout, params)


# Registration of the other kernels of the family.
