"""A GEMV (a product with one row of A, or a few) for CPU OpenCL devices (PoCL), and its
MatMul and Conv lowerings.

A GEMV does two flops per element of B and reads B once: it is bound by how fast B streams
from memory, not by arithmetic. The register-tiled GEMM of gemm_cpu.py with one row reads
B rows of NR columns at a stride of N, which the prefetchers follow badly; here every
work-item owns whole panels of NR output columns and reads each one as a single contiguous
stream (gemv_cpu.cl.j2):

- "packed" (a constant B, packed once at compile time in `gemm_cpu.pack_b`'s layout):
  panel p is K x NR floats, contiguous. On a 1 x 768 x 3072 product with B in L3 it streams
  at about numpy's (OpenBLAS) speed, 2x what the GEMM did on B as stored.
- "cols" (B stored N x K: ONNX Gemm's transB, attention's q @ K^T): each output is a dot
  product of two contiguous rows, summed in K-vectors and reduced across lanes at the end
  (10x the GEMM's gathered lanes for one row, 2.5-3x for 2-4 rows).
- "rows" (B stored K x N and not constant): vector loads along N at a stride, as the GEMM.

Where it applies (`gemv_applies`): one row of A, a batch of single rows against one B
(folded into rows, `gemv_rows`), and up to MAX_ROWS rows where B is not packed.

Interface: `GemvProblem` describes one problem (M = 1..MAX_ROWS rows of A, N, K, batches;
the kernel parameter declarations; a `prologue` run per work-item with `batch` in scope
that sets base offsets; `AOperand` and `gemm_cpu.BOperand` saying how A and B are
addressed; `store`, a statement run per output element with `value`, `gm`, `gn` and the
prologue's variables in scope: an epilogue's `store(...)`). `gemv_steps` gives its launches
and scratch buffers: with `ksplit` > 1 the K range is cut into parts whose partial sums go
to a scratch buffer, and a second kernel adds them and runs the store.
`matmul_gemv` and `conv_gemv` are the kernel builders' entry points.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from ember.codegen.csrc import ctype_bytes, extensions_for
from ember.codegen.kernels.epilogue import EpilogueCode
from ember.codegen.families import Target
from ember.codegen.kernels.gemm_cpu import (
    BOperand, CpuGemmParams, batch_prologue, default_store, matmul_b_operand, matmul_params,
    pack_b,
)
from ember.codegen.types import IN, OUT, TMP, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.render import kernel_name, render
from ember.codegen.params import Checked, Lookup, ParamKind, gemv_rules, param_kinds, params_for, register_kind, tuning_key
from ember.ir import DType
from ember.ir.ops.linalg import ConvGeometry, matmul_dims

__all__ = [
    "GemvParams", "DEFAULT_GEMV_PARAMS", "MAX_ROWS", "AOperand",
    "GemvProblem", "render_gemv", "render_gemv_reduce", "gemv_launch", "gemv_reduce_launch",
    "gemv_partial_bytes", "gemv_steps", "pack_gemv_b", "matmul_gemv_problem", "gemv_params",
    "gemv_rows", "gemv_applies", "matmul_gemv", "conv_gemv_ok", "conv_gemv",
]

MAX_ROWS = 4  # rows of A one work-item holds (M of a GEMV problem)
MIN_KCHUNK = 32  # `fitted` never cuts K into parts shorter than this
REDUCE_CHUNK = 256  # outputs per work-item of the reduction kernel (ksplit > 1)


@dataclass(frozen=True)
class GemvParams(Checked):
    """Tunables of gemv_cpu.cl.j2 (its header says what each one does)."""

    vw: int = 16
    nv: int = 2
    ku: int = 1
    ppw: int = 1
    ksplit: int = 1

    @property
    def nr(self) -> int:
        return self.vw * self.nv

    def violations(self, itemsize: int = 4) -> list[str]:
        """Every constraint this set breaks, each with its reason."""
        rules = [
            (self.vw in (1, 2, 4, 8, 16), "vw in (1, 2, 4, 8, 16): OpenCL vector widths"),
            (1 <= self.nv <= 16, "1 <= nv <= 16: a panel has vectors, all in registers"),
            (self.ku in (1, 2, 4, 8), "ku in (1, 2, 4, 8): unroll factors of the K loop"),
            (self.ppw >= 1, "ppw >= 1: a work-item owns at least one panel"),
            (self.ksplit >= 1, "ksplit >= 1: K is cut into that many parts"),
            (self.vw * itemsize <= 64, "vw * itemsize <= 64: at most one 512-bit vector"),
        ]
        return [reason for ok, reason in rules if not ok]


    def fitted(self, n: int, k: int, layout: str) -> GemvParams:
        """The same kernel shape shrunk where the problem is smaller: panels no wider than N
        needs ("cols": lanes run along K, so vectors no longer than K and at most N rows at
        a time), no more panels per work-item than there are, K parts of at least
        MIN_KCHUNK."""
        vw, nv = self.vw, self.nv
        if layout == "cols":
            nv = min(nv, max(n, 1))
            while vw > 1 and vw > k:
                vw //= 2
        else:
            while nv > 1 and vw * (nv - 1) >= n:
                nv -= 1
            while vw > 1 and vw // 2 >= n:
                vw //= 2
        panels = -(-n // (vw * nv))
        ksplit = max(1, min(self.ksplit, -(-k // MIN_KCHUNK)))
        return replace(self, vw=vw, nv=nv, ppw=max(1, min(self.ppw, panels)), ksplit=ksplit)


# Measured on the development machine (2 cores, PoCL 3 compiling AVX2 code for
# znver3, B in L3; 1 x 768 x 3072):
# 64-column panels, one per work-item, K unrolled twice, were the best set or within noise of
# it in all three layouts (packed at numpy's speed; 32-column panels lose 40% on "rows").
# Splitting K gained nothing there, even for N of one panel (1 x 16384 x 64): one core
# already streams at the bandwidth both share. It is for CPUs with more cores than panels.
DEFAULT_GEMV_PARAMS = GemvParams(vw=16, nv=4, ku=2, ppw=1, ksplit=1)




@dataclass(frozen=True)
class AOperand:
    """How the kernel reads A: A(gm, gk) = ptr[offset + gm * row_stride + gk * k_stride]."""

    ptr: str
    ctype: str
    offset: str  # C expression (may use the prologue's variables)
    row_stride: int
    k_stride: int = 1

    @property
    def half(self) -> bool:
        return self.ctype == "half"


@dataclass(frozen=True)
class GemvProblem:
    """One GEMV problem as the kernel sees it (see the module docstring)."""

    m: int
    n: int
    k: int
    batches: int
    params: tuple[str, ...]
    a: AOperand
    b: BOperand
    store: str
    prologue: str = ""
    acc: str = "float"
    idx: str = "int"
    label: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.m <= MAX_ROWS:
            raise ValueError(f"a GEMV holds 1..{MAX_ROWS} rows of A, got M={self.m}")
        if self.n < 1 or self.batches < 1:
            raise ValueError(f"GEMV of an empty result (N={self.n}, batches={self.batches}): "
                             f"launch nothing instead")




def _values(problem: GemvProblem, params: GemvParams, name: str) -> dict[str, object]:
    itemsize = ctype_bytes(problem.acc)
    params.validate(itemsize)
    panels = -(-problem.n // params.nr)
    decls = problem.params
    if params.ksplit > 1:
        decls += (f"__global {problem.acc}* restrict partial",)
    halves, w = [], params.vw // 2  # widths of the lane-adding steps: 16 -> 8, 4, 2, 1
    while w >= 1:
        halves.append(w)
        w //= 2
    return {
        "name": name, "p": params, "m": problem.m, "n": problem.n, "k": problem.k,
        "batches": problem.batches, "decls": decls, "prologue": problem.prologue,
        "halves": halves, "a": problem.a, "b": problem.b, "store": problem.store,
        "acc": problem.acc,
        "idx": problem.idx, "itemsize": itemsize, "panels": panels,
        "kchunk": -(-problem.k // params.ksplit), "reduce_chunk": REDUCE_CHUNK,
        "label": problem.label or f"{problem.m}x{problem.n}x{problem.k}",
    }


def render_gemv(problem: GemvProblem, params: GemvParams, name: str) -> str:
    """The OpenCL source of the product kernel: parameters `problem.params`, then (with
    ksplit > 1) the partial-sum buffer."""
    return render("gemv_cpu.cl.j2", kind="gemv", **_values(problem, params, name))


def render_gemv_reduce(problem: GemvProblem, params: GemvParams, name: str) -> str:
    """The kernel (same parameters) that adds the K parts' partial sums and stores them."""
    if params.ksplit < 2:
        raise ValueError("render_gemv_reduce is for ksplit > 1")
    return render("gemv_cpu.cl.j2", kind="reduce", **_values(problem, params, name))


Sizes = tuple[tuple[int, int, int], tuple[int, int, int]]


def gemv_launch(problem: GemvProblem, params: GemvParams) -> Sizes:
    """(global, local): one work-item per PPW panels and K part, work-groups of one."""
    groups = -(-(-(-problem.n // params.nr)) // params.ppw)
    return (groups, params.ksplit, problem.batches), (1, 1, 1)


def gemv_reduce_launch(problem: GemvProblem, params: GemvParams) -> Sizes:
    return (-(-(problem.m * problem.n) // REDUCE_CHUNK), 1, problem.batches), (1, 1, 1)


def gemv_partial_bytes(problem: GemvProblem, params: GemvParams) -> int:
    """Bytes of the partial-sum buffer (0 without a K split)."""
    if params.ksplit < 2:
        return 0
    cells = problem.batches * params.ksplit * problem.m * problem.n
    return cells * ctype_bytes(problem.acc)


def gemv_steps(problem: GemvProblem, params: GemvParams, name: str,
               args: tuple[tuple[str, int], ...], extensions: frozenset[str] = frozenset()
               ) -> tuple[tuple[Launch, ...], tuple[int, ...]]:
    """The launches and scratch buffers of `problem` (`args`: the arguments of
    `problem.params`, in order), for a Lowered."""
    kernel = Kernel(name, render_gemv(problem, params, name), extensions)
    if params.ksplit < 2:
        return (Launch(kernel, *gemv_launch(problem, params), args),), ()
    reduce = Kernel(name + "_sum", render_gemv_reduce(problem, params, name + "_sum"),
                    extensions)
    with_partial = (*args, (TMP, 0))
    return ((Launch(kernel, *gemv_launch(problem, params), with_partial),
             Launch(reduce, *gemv_reduce_launch(problem, params), with_partial)),
            (gemv_partial_bytes(problem, params),))


def pack_gemv_b(array: np.ndarray, params: GemvParams, *, trans: bool = False) -> np.ndarray:
    """B [..., K, N] (or [..., N, K] with `trans`) in the "packed" layout: panels of NR
    columns, K-major, zero padded (gemm_cpu.pack_b's layout with these panels)."""
    return pack_b(array, CpuGemmParams(mr=1, vw=params.vw, nv=params.nv), trans=trans)


# -- problems ---------------------------------------------------------------------------------
def matmul_gemv_problem(a_shape: tuple[int, ...], b_shape: tuple[int, ...], dtype: DType,
                        trans_a: int, trans_b: int, *, params: GemvParams,
                        packed_b: bool = False, store: str | None = None,
                        extra_params: tuple[str, ...] = (), idx: str = "int") -> GemvProblem:
    """The GemvProblem of MatMul(a, b) (M <= MAX_ROWS) with kernel parameters
    (a, b, c, *extra_params). With `packed_b` the kernel reads `pack_gemv_b(B, params,
    trans=trans_b)`. A custom `store` may use `c_off` (the output index)."""
    dims = matmul_dims(a_shape, b_shape, trans_a, trans_b)
    m, n, k = dims.m, dims.n, dims.k
    ctype = dtype.cl_name
    acc = "float" if dtype is DType.FLOAT16 else ctype
    b_matrix = -(-n // params.nr) * k * params.nr if packed_b else k * n
    a = AOperand("a", ctype, "a_base", 1 if trans_a else k, m if trans_a else 1)
    store = store if store is not None else default_store(dtype)
    return GemvProblem(
        m=m, n=n, k=k, batches=dims.batch_size, params=matmul_params(dtype, extra_params),
        a=a, b=matmul_b_operand(ctype, k, n, packed_b, trans_b),
        store=f"const {idx} c_off = c_base + gm * {n} + gn;\n{store}",
        prologue=batch_prologue(dims, b_matrix, idx), acc=acc, idx=idx,
        label=f"MatMul {tuple(a_shape)}{'^T' if trans_a else ''} x "
              f"{tuple(b_shape)}{'^T' if trans_b else ''} {dtype}"
              + (" (B packed)" if packed_b else ""))


def gemv_rows(a_shape: tuple[int, ...], b_shape: tuple[int, ...], trans_a: int,
              trans_b: int) -> tuple[tuple[int, ...], int]:
    """A's shape and trans_a as the GEMV reads A: a batch of single rows against one B
    (no batch axes of its own) is a single product with the batch as its rows, same memory
    layout of A and C (e.g. a few sequences' next token: (8, 1, 768) @ (768, 3072))."""
    dims = matmul_dims(a_shape, b_shape, trans_a, trans_b)
    if dims.m == 1 and dims.batch_size > 1 and math.prod(dims.b_batch) == 1:
        return (dims.batch_size, dims.k), 0
    return tuple(a_shape), trans_a


def gemv_applies(spec: NodeSpec) -> bool:
    """Whether a float MatMul on a CPU device runs as a GEMV: always for one row of A
    (after `gemv_rows`); for 2..MAX_ROWS rows when B is read as stored (measured 1.2x the
    GEMM's speed on K x N, 3x on N x K) or the rows are a folded batch (the GEMM would read
    B once per row). A packed B with a few rows of A stays on the GEMM, whose M x 16 tiles
    measured 1.1-1.35x faster there."""
    a, b = spec.inputs[:2]
    trans_a, trans_b = spec.attrs["trans_a"], spec.attrs["trans_b"]
    rows_shape, rows_trans_a = gemv_rows(a.shape, b.shape, trans_a, trans_b)
    m = matmul_dims(rows_shape, b.shape, rows_trans_a, trans_b).m
    if m == 1:
        return True
    folded = matmul_dims(a.shape, b.shape, trans_a, trans_b).m == 1
    return m <= MAX_ROWS and (folded or 1 not in spec.packable)


def gemv_params(spec: NodeSpec, target: Target, m: int, n: int, k: int, layout: str
                ) -> tuple[Lookup, GemvParams]:
    """The tunables of a GEMV spec (tuned, else the defaults) and the set fitted to the
    problem: `GemvParams.fitted`, and for M > 1 fewer vectors per panel (then lanes) until
    M rows of accumulators fit the registers the kind's rules allow one row (M x NV
    vectors cost what one row of M * NV does)."""
    itemsize = 8 if spec.inputs[0].dtype is DType.FLOAT64 else 4
    lookup = params_for("gemv_cpu", tuning_key(spec), target, itemsize)
    params = lookup.params.fitted(n, k, layout)
    kind = param_kinds()["gemv_cpu"]
    while m > 1 and kind.violations(replace(params, nv=params.nv * m), target, itemsize):
        if params.nv > 1:
            params = replace(params, nv=params.nv - 1)
        elif params.vw > 1:
            params = replace(params, vw=params.vw // 2)
        else:
            break
    return lookup, params


def matmul_gemv(spec: NodeSpec, epilogue: EpilogueCode, idx: str, target: Target) -> Lowered:
    """A MatMul that `gemv_applies` to as a GEMV; a constant B (`spec.packable`) is packed
    once at compile time into the panels the kernel streams."""
    a, b = spec.inputs[:2]
    out = spec.outputs[0]
    a_shape, trans_a = gemv_rows(a.shape, b.shape, spec.attrs["trans_a"], spec.attrs["trans_b"])
    trans_b = spec.attrs["trans_b"]
    dims = matmul_dims(a_shape, b.shape, trans_a, trans_b)
    pack = 1 in spec.packable
    layout = "packed" if pack else ("cols" if trans_b else "rows")
    lookup, params = gemv_params(spec, target, dims.m, dims.n, dims.k, layout)
    problem = matmul_gemv_problem(a_shape, b.shape, a.dtype, trans_a, trans_b, params=params,
                                  packed_b=pack, store=epilogue.store("c", "c_off", "value"),
                                  extra_params=epilogue.declarations, idx=idx)
    name = kernel_name("matmul_gemv", spec.inputs, out, spec.attrs.key(), params, pack)
    args = ((IN, 0), (IN, 1), (OUT, 0)) + tuple((IN, i) for i in range(2, len(spec.inputs)))
    launches, temps = gemv_steps(problem, params, name, args,
                                 extensions_for([a.dtype, out.dtype]))
    packed = ((1, functools.partial(pack_gemv_b, params=params, trans=bool(trans_b))),) \
        if pack else ()
    return Lowered(launches, temps=temps, packed=packed, tuning=lookup)


# -- convolutions with one output pixel -------------------------------------------------------
def conv_gemv_ok(g: ConvGeometry) -> bool:
    """A conv whose one output pixel per image sees its whole input, unpadded and
    undilated (e.g. a 1x1 conv on a 1x1 map, a classifier conv as wide as its map): per
    (image, group), y = W x with x read contiguously in W's (channel, position) order."""
    return (all(o == 1 for o in g.out_spatial) and g.kernel == g.in_spatial
            and not any(g.pads_begin)
            and all(d == 1 or k == 1 for d, k in zip(g.dilations, g.kernel)))


def conv_gemv(spec: NodeSpec, g: ConvGeometry, epilogue: EpilogueCode, value: str, idx: str,
              n_base: int, target: Target) -> Lowered:
    """Conv(x, w[, bias]) with `conv_gemv_ok` geometry as a GEMV per (image, group): M = 1,
    N = output channels of the group, K = input channels x kernel positions, W as B stored
    N x K ("cols"), or packed when constant. `value` is the stored expression of `value`
    (the product, maybe plus bias[oc]); kernel parameters (x, w, [bias,] y, *extras)."""
    dtype = spec.inputs[0].dtype
    ctype = dtype.cl_name
    cig, cog = g.cin_per_group, g.cout_per_group
    in_size = math.prod(g.in_spatial)  # = kernel positions: the kernel covers the input
    kdim = cig * in_size
    pack = 1 in spec.packable
    lookup, params = gemv_params(spec, target, 1, cog, kdim, "packed" if pack else "cols")
    w_group = -(-cog // params.nr) * kdim * params.nr if pack else cog * kdim
    b = (BOperand("w", "packed", ctype, f"grp * {w_group}") if pack
         else BOperand("w", "cols", ctype, f"grp * {w_group}", kdim))
    decls = [f"__global const {ctype}* restrict x", f"__global const {ctype}* restrict w"]
    if n_base > 2:
        decls.append(f"__global const {ctype}* restrict bias")
    decls += [f"__global {ctype}* restrict y", *epilogue.declarations]
    problem = GemvProblem(
        m=1, n=cog, k=kdim, batches=g.batch * g.group, params=tuple(decls),
        a=AOperand("x", ctype, f"(img * {g.in_channels} + grp * {cig}) * {in_size}", kdim),
        b=b, prologue=f"const {idx} img = batch / {g.group}, grp = batch % {g.group};",
        store=(f"const {idx} oc = grp * {cog} + gn;\nconst {idx} y_off = img * "
               f"{g.out_channels} + oc;\n" + epilogue.store("y", "y_off", value)),
        acc="float" if dtype is DType.FLOAT16 else ctype, idx=idx,
        label=f"Conv x{(g.batch, g.in_channels, *g.in_spatial)} kernel {g.kernel} as GEMV "
              f"group {g.group} {dtype}" + (" (W packed)" if pack else ""))
    name = kernel_name("conv_gemv", spec.inputs, spec.outputs, spec.attrs.key(), params, pack)
    args = tuple((IN, i) for i in range(n_base)) + ((OUT, 0),) + tuple(
        (IN, i) for i in range(n_base, len(spec.inputs)))
    launches, temps = gemv_steps(problem, params, name, args,
                                 extensions_for([dtype, spec.outputs[0].dtype]))
    packed = ((1, functools.partial(_pack_conv_w, shape=(g.group, cog, kdim), params=params)),
              ) if pack else ()
    return Lowered(launches, temps=temps, packed=packed, tuning=lookup)


def _pack_conv_w(w: np.ndarray, *, shape: tuple[int, int, int], params: GemvParams
                 ) -> np.ndarray:
    """W [Cout, Cin/group, *kernel] as per-group B^T = W_g [cog, kdim], packed."""
    return pack_gemv_b(w.reshape(shape), params, trans=True)


# -- the tunable kind, registered beside its params ----------------------------------------
_SMALL_GEMV = GemvParams(vw=4, nv=4)  # 4 accumulators: fits SSE, and doubles
GEMV_KIND = register_kind(ParamKind(
    "gemv_cpu", GemvParams,
    defaults={"family": {"cpu": DEFAULT_GEMV_PARAMS},
              "generic": {"gpu": _SMALL_GEMV, "other": _SMALL_GEMV}},
    axes=(("vw", (4, 8, 16)), ("nv", (1, 2, 4, 8)), ("ku", (1, 2, 4)), ("ppw", (1, 2, 4, 8)),
          ("ksplit", (1, 2, 4, 8))),
    own=lambda p, t, itemsize: p.violations(itemsize), rules=gemv_rules(),
))
