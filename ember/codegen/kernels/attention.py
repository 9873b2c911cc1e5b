"""The Attention kernel (`attention.cl.j2`): its tunables, their constraints, defaults per
device family, and the builder.

One launch per node. Each work-item owns ROWS query rows of one batch index (and one slice
of Dv when Dv is large) and streams the keys once: scores of a block of KBLOCK keys, then an
online-softmax update, then the block's share of P @ V. Strides derived from the shapes and
the perms are baked in, so the head split/merge transposes cost nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ember.codegen.csrc import (
    broadcast_strides, c_literal, compute_type, contiguous_strides, extensions_for, half_load,
    half_store, index_type, int_literal, load_expr, store_stmt,
)
from ember.codegen.families import Target
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, \
    render
from ember.codegen.params import Checked, ParamKind, Rule, params_for, register_kind, tuning_key
from ember.ir import DType
from ember.ir.ops.attention import AttentionGeometry, attention_geometry

__all__ = ["AttentionParams", "DEFAULT_ATTENTION_PARAMS", "attention_params",
           "build_attention", "DV_MAX", "Q_CAP"]

log = logging.getLogger(__name__)

DV_MAX = 256  # the largest Dv slice one work-item accumulates (private memory)
Q_CAP = 2048  # ROWS * D up to this: the query rows are copied to private memory
VECTOR_WIDTHS = (1, 2, 4, 8, 16)  # OpenCL's vector sizes (3 is left out: its loads differ)
# The widest vector (bytes) handed to or returned by an OpenCL builtin. PoCL links its
# builtins from a library built for the host's vector unit (AVX-512 on Zen 4), while it may
# compile the kernel for an LLVM CPU without it (znver3): a 512-bit argument is then passed
# one way and read another, and the builtin scribbles over the work-item's stack and the
# process's heap. Wider vectors are split into halves around every builtin call.
CALL_BYTES = 32


@dataclass(frozen=True)
class AttentionParams(Checked):
    """Tunables of attention.cl.j2 (its header says what each one does). `vec` and `kblock`
    count float lanes: for float64 tensors the kernel uses half as many (same vector bytes)."""

    rows: int  # query rows per work-item
    kblock: int  # keys per online-softmax block
    vec: int  # widest vector along D / Dv (used where the axis is contiguous and divisible)
    local: int = 1  # work-items per work-group

    def violations(self, target: Target | None = None) -> list[str]:
        """Every constraint this set breaks (on `target`, when given), each with its reason."""
        max_group = target.traits.max_work_group_size if target is not None else 1 << 30
        rules = [
            (self.local >= 1 and self.local & (self.local - 1) == 0,
             "local is a power of two: work-groups tile the padded grid"),
            (self.local <= max_group, f"local <= {max_group}: the device's largest work-group"),
            (1 <= self.rows <= 16, "1 <= rows <= 16: the rows' state lives in private memory"),
            (self.kblock in VECTOR_WIDTHS,
             f"kblock in {VECTOR_WIDTHS}: a block's scores are one vector"),
            (self.vec in VECTOR_WIDTHS, f"vec in {VECTOR_WIDTHS}: OpenCL vector sizes"),
        ]
        return [reason for ok, reason in rules if not ok]


    def fitted(self, sq: int, sk: int) -> AttentionParams:
        """No more rows than Sq, no bigger key block than needed for Sk keys."""
        fit = min((w for w in VECTOR_WIDTHS if w >= sk), default=VECTOR_WIDTHS[-1])
        return replace(self, rows=max(1, min(self.rows, sq)), kblock=min(self.kblock, fit))


# CPU (PoCL): work-groups of one work-item, whose explicit float8 vectors (AVX2's width)
# are the SIMD; a block of 8 keys makes the exponentials one float8 exp. Measured at seq 128,
# 2 heads of 64 on one core (PoCL compiling for znver3): 0.29 ms (rows 2-8 within noise of each other; kblock 4
# or vec 4 about 1.5x slower, vec 16 slower on AVX2). GPUs: one row per work-item keeps
# private memory small and the work-items many, grouped by a wavefront's worth.
DEFAULT_ATTENTION_PARAMS: dict[str, AttentionParams] = {
    "cpu": AttentionParams(rows=4, kblock=8, vec=8, local=1),
    "nvidia": AttentionParams(rows=1, kblock=8, vec=4, local=32),
    "amd-gcn": AttentionParams(rows=1, kblock=8, vec=4, local=64),
    "amd-rdna": AttentionParams(rows=1, kblock=8, vec=4, local=32),
    "intel-gpu": AttentionParams(rows=1, kblock=8, vec=4, local=16),
    "gpu": AttentionParams(rows=1, kblock=8, vec=4, local=32),
    "generic": AttentionParams(rows=1, kblock=4, vec=1, local=1),
}


def attention_params(target: Target, sq: int, sk: int,
                     params: AttentionParams | None = None) -> AttentionParams:
    """`params` (else the family default) fitted to the problem, with the work-group cut to
    the device."""
    if params is None:
        params = DEFAULT_ATTENTION_PARAMS.get(target.family.name,
                                              DEFAULT_ATTENTION_PARAMS["generic"])
    local = params.local
    while local > max(target.traits.max_work_group_size, 1):
        local //= 2
    return replace(params.fitted(sq, sk), local=local)


# -- strides --------------------------------------------------------------------------------
def _logical_strides(shape: Sequence[int], perm: Sequence[int]) -> tuple[int, ...]:
    """Element strides of transpose(x, perm) read in place from x; 0 on size-1 axes, so
    that a broadcast batch axis reads the same element again."""
    own = contiguous_strides(shape)
    return tuple(0 if shape[p] == 1 else own[p] for p in perm)


def _batch_strides(strides: Sequence[int], own_batch: Sequence[int],
                   batch: Sequence[int]) -> tuple[int, ...]:
    """Strides over the broadcast batch axes of a tensor whose own batch shape is
    `own_batch` (right-aligned, numpy's rule); 0 where it lacks or broadcasts the axis."""
    pad = len(batch) - len(own_batch)
    return tuple(0 if a < pad or own_batch[a - pad] == 1 else strides[a - pad]
                 for a in range(len(batch)))


@dataclass(frozen=True)
class _Strides:
    q: tuple[int, ...]  # per logical axis of Q: batch..., row, d
    k: tuple[int, ...]
    v: tuple[int, ...]
    mask: tuple[int, ...] | None  # per axis of the scores: batch..., row, key
    out: tuple[int, ...]  # per logical axis of O: batch..., row, dv


def _strides(spec: NodeSpec, g: AttentionGeometry) -> _Strides:
    q, k, v = (t.shape for t in spec.inputs[:3])
    nb = len(g.batch)

    def full(shape: Sequence[int], perm: Sequence[int], own: Sequence[int]) -> tuple[int, ...]:
        s = _logical_strides(shape, perm)
        return _batch_strides(s[:-2], own, g.batch) + s[-2:]

    mask = None
    if g.mask_shape is not None:
        mask = broadcast_strides(g.mask_shape, g.scores_shape)
    inverse = [0] * len(g.out_perm)
    for i, axis in enumerate(g.out_perm):
        inverse[axis] = i
    out_own = contiguous_strides(g.out_shape)
    out = tuple(out_own[inverse[a]] for a in range(nb + 2))
    return _Strides(full(q, g.q_perm, g.q_batch), full(k, g.k_perm, g.k_batch),
                    full(v, g.v_perm, g.v_batch), mask, out)


# -- rendering helpers ----------------------------------------------------------------------
def _vector_type(dtype: DType, width: int) -> str:
    base = compute_type(dtype)
    return base if width == 1 else f"{base}{width}"


def _loader(dtype: DType, pointer: str, width: int) -> Callable[[str], str]:
    """load(offset) -> an expression of `width` consecutive elements in the compute type.
    float/double vectors are read through the under-aligned vector type ATT_V{width}
    (the template typedefs it): PoCL calls vloadN out of line, a plain load it inlines."""
    if width == 1:
        if dtype is DType.FLOAT16:
            return lambda off: load_expr(dtype, pointer, f"({off})")
        return lambda off: f"({compute_type(dtype)}){load_expr(dtype, pointer, f'({off})')}"
    if dtype is DType.FLOAT16:
        return lambda off: half_load(width, f"{pointer} + ({off})")
    return lambda off: f"(*(const __global ATT_V{width}*)({pointer} + ({off})))"


def _storer(dtype: DType, pointer: str, width: int) -> Callable[[str, str], str]:
    if width == 1:
        return lambda off, value: store_stmt(dtype, pointer, f"({off})", value)
    if dtype is DType.FLOAT16:
        return lambda off, value: half_store(width, value, f"{pointer} + ({off})")
    return lambda off, value: f"*(__global ATT_V{width}*)({pointer} + ({off})) = {value};"


def _vector_call(function: str, value: str, scalar: str, width: int, itemsize: int) -> str:
    """`function(value)` on a vector of `width` lanes, as calls on pieces of at most
    CALL_BYTES (see there) put back together."""
    if width == 1 or width * itemsize <= CALL_BYTES:
        return f"{function}({value})"
    half = width // 2
    lo = _vector_call(function, f"({value}).lo", scalar, half, itemsize)
    hi = _vector_call(function, f"({value}).hi", scalar, half, itemsize)
    return f"({scalar}{width})({lo}, {hi})"


def _reduce_body(var: str, width: int, combine: str, scalar: str) -> str:
    """C statements returning the combination of a vector's lanes, as a tree of .lo / .hi
    halves; `combine` is an infix operator ("+") or a two-argument macro."""
    lines = []
    while width > 1:
        width //= 2
        half = scalar if width == 1 else f"{scalar}{width}"
        lo, hi = f"{var}.lo", f"{var}.hi"
        value = f"{lo} {combine} {hi}" if len(combine) == 1 else f"{combine}({lo}, {hi})"
        lines.append(f"    const {half} {var}{width} = {value};")
        var = f"{var}{width}"
    lines.append(f"    return {var};")
    return "\n".join(lines)


def _widest(limit: int, size: int, contiguous: bool) -> int:
    """The widest vector <= limit that divides `size`, when the axis is contiguous."""
    if not contiguous or size == 0:
        return 1
    return max(w for w in VECTOR_WIDTHS if w <= limit and size % w == 0)


# -- the builder ----------------------------------------------------------------------------
@kernel_builder("Attention")
def build_attention(spec: NodeSpec, target: Target,
                    params: AttentionParams | None = None) -> Lowered | None:
    out = spec.outputs[0]
    dtype = out.dtype
    if dtype not in (DType.FLOAT32, DType.FLOAT16, DType.FLOAT64):
        return None
    a = spec.attrs
    mask_t = spec.inputs[3] if len(spec.inputs) > 3 else None
    g = attention_geometry(*(t.shape for t in spec.inputs[:3]),
                           None if mask_t is None else mask_t.shape,
                           a["q_perm"], a["k_perm"], a["v_perm"], a["out_perm"])
    if out.size == 0:
        return Lowered(())
    lookup = None
    if params is None:  # tuned on this device (the TuningDB), else the family's default
        lookup = params_for("attention", tuning_key(spec), target)
        params = attention_params(target, g.sq, g.sk, lookup.params)
    if dtype is DType.FLOAT64:  # vec and kblock count float lanes: doubles get half
        params = replace(params, vec=max(1, params.vec // 2), kblock=max(1, params.kblock // 2))
    params = params.fitted(g.sq, g.sk)
    params.validate(target)
    st = _strides(spec, g)
    nb = len(g.batch)
    qs_r, qs_d = st.q[nb:]
    ks_j, ks_d = st.k[nb:]
    vs_j, vs_d = st.v[nb:]
    ms_r, ms_j = st.mask[nb:] if st.mask is not None else (0, 0)
    os_r, os_d = st.out[nb:]
    dvc = min(g.dv, DV_MAX)
    q_private = params.rows * g.d <= Q_CAP
    # Vectors along D need K contiguous along D (and Q too, unless Q is copied to private
    # memory), vectors along Dv need V contiguous along Dv; the output store copes either way.
    vd = _widest(params.vec, g.d, ks_d == 1 and (q_private or qs_d == 1))
    vv = _widest(params.vec, dvc, vs_d == 1)
    names = ("q_base", "k_base", "v_base", "m_base", "o_base")
    batch_axes = [
        {"size": size, "strides": [(n, s) for n, s in zip(names, per) if s]}
        for size, *per in zip(g.batch, st.q[:nb], st.k[:nb], st.v[:nb],
                              st.mask[:nb] if st.mask is not None else (0,) * nb, st.out[:nb])
        if size > 1
    ]
    nrb = -(-g.sq // params.rows)
    ndc = -(-g.dv // dvc)
    items = g.batch_size * nrb * ndc
    acc_dtype = DType.FLOAT64 if dtype is DType.FLOAT64 else DType.FLOAT32
    load_q = _loader(dtype, "q", vd)
    q_at = ((lambda r, c: f"qr[{r}][{c}]") if q_private else
            (lambda r, c: load_q(f"q_base + row_of({r}) * ATT_QS_R + {c} * (ATT_VD * ATT_QS_D)")))
    key = (spec, params)
    name = kernel_name("attention", *key)
    source = render(
        "attention.cl.j2",
        name=name, label=f"{' '.join(str(t) for t in spec.inputs)} -> {out}", p=params,
        sq=g.sq, sk=g.sk, d=g.d, dv=g.dv, dvc=dvc, nrb=nrb, ndc=ndc, items=items,
        batches=g.batch_size, batch_shape=g.batch, batch_axes=batch_axes,
        vd=vd, vv=vv, q_private=q_private, q_cap=Q_CAP,
        dv_max=DV_MAX, has_mask=mask_t is not None,
        scale=c_literal(a["scale"], acc_dtype),
        softcap=c_literal(a["softcap"], acc_dtype) if a["softcap"] > 0 else None,
        uncap=c_literal(1.0 / a["softcap"], acc_dtype) if a["softcap"] > 0 else None,
        zero_masked_rows=int(a["zero_masked_rows"]),
        qs_r=qs_r, qs_d=qs_d, ks_j=ks_j, ks_d=ks_d, vs_j=vs_j, vs_d=vs_d, ms_r=ms_r,
        ms_j=ms_j, os_r=os_r, os_d=os_d,
        idx=index_type(*(t.size for t in (*spec.inputs, out)), items * params.rows),
        t=compute_type(acc_dtype), tq=_vector_type(acc_dtype, vd),
        tv=_vector_type(acc_dtype, vv), q_ptr=dtype.cl_name,
        load_q=load_q, load_q1=_loader(dtype, "q", 1), q_at=q_at,
        load_k=_loader(dtype, "k", vd), load_v=_loader(dtype, "v", vv),
        load_mask=_loader(dtype, "mask", 1), hsum=lambda e: f"{name}_hsum_d({e})",
        kb=params.kblock, tk=_vector_type(acc_dtype, params.kblock),
        exp_k=lambda e: _vector_call("exp", e, compute_type(acc_dtype), params.kblock,
                                     acc_dtype.itemsize),
        reduce=lambda var, width, op: _reduce_body(var, width, op, compute_type(acc_dtype)),
        store=_storer(dtype, "out", vv), store1=_storer(dtype, "out", 1), lit=int_literal,
        vector_widths=[] if dtype is DType.FLOAT16 else sorted({vd, vv} - {1}),
        itemsize=dtype.itemsize,
    )
    kernel = Kernel(name, source, extensions_for([dtype]))
    args = tuple((IN, i) for i in range(len(spec.inputs))) + ((OUT, 0),)
    padded = -(-items // params.local) * params.local
    return Lowered((Launch(kernel, (padded,), (params.local,), args),),
                   notes=(f"rows={params.rows} kblock={params.kblock} vd={vd} vv={vv} "
                          f"local={params.local}",), tuning=lookup)


# -- the tunable kind, registered beside its params ----------------------------------------
ATTENTION_KIND = register_kind(ParamKind(
    "attention", AttentionParams,
    defaults={"family": DEFAULT_ATTENTION_PARAMS,
              "generic": {"gpu": DEFAULT_ATTENTION_PARAMS["gpu"],
                          "other": DEFAULT_ATTENTION_PARAMS["generic"]}},
    axes=(("rows", (1, 2, 4, 8)), ("kblock", (1, 2, 4, 8, 16)), ("vec", (1, 4, 8, 16)),
          ("local", (1, 16, 32, 64))),
    own=lambda p, t, itemsize: p.violations(t),
    rules=(Rule("local == 1 on CPU devices: a work-item's vectors are its SIMD, and a "
                "work-group runs on one core anyway",
                lambda p, t: t.family.is_gpu or p.local == 1),
           Rule("local % simd_width == 0 on GPUs: whole warps / wavefronts per group",
                lambda p, t: not t.family.is_gpu or p.local % t.simd_width == 0)),
))
