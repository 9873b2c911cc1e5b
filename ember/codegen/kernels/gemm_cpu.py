"""A register-tiled GEMM for CPU OpenCL devices (PoCL), and its MatMul and Conv problems.

The local-memory tiled GEMM of tiled_gemm.cl.j2 is the right shape for a GPU and runs at
1-2 GFLOP/s on PoCL: a CPU wants each work-item to hold an MR x NR block of C in vector
registers, with B rows read as contiguous vectors and A elements broadcast (gemm_cpu.cl.j2).

Interface (how a kernel builder uses it):

- `CpuGemm` describes one problem: sizes M, N, K and the batch count; the kernel parameter
  declarations in order (`params`, e.g. "__global const float* restrict a"; epilogue inputs
  are simply more declarations); a `prologue` of statements run once per work-item with
  `batch` (the grid's third index) in scope, which usually sets base offsets; how A is read,
  either `a_expr` (a C expression of A(gm, gk) in the compute type, with `gm`, `gk` and the
  prologue's variables in scope; rows past M are clamped, so it is only evaluated in bounds)
  or `conv` (a `ConvGather`: A(pixel, (kernel position, input channel)) gathered from an
  NC{spatial} image, zero outside it); how B is addressed (`BOperand`: layout "rows"
  (K x N row-major with row stride `stride`), "cols" (stored N x K, column stride
  `stride`) or "packed" (`pack_b`), with an element `offset` expression that may use the
  prologue's variables); and `store`, a statement run once per in-range element with
  `value` (compute type), `gm`, `gn` and the prologue's variables in scope. The store may do
  anything at (gm, gn): add a bias, apply an activation, read a residual, write half.
  Optionally `vstore`, the same for a vector: run instead of `store` in tiles wholly
  inside the result, once per `store_width(params)` consecutive columns of a row, with
  `vvalue` (a vector of that many lanes), `gm` and `gn` (its first column) in scope; it may
  read and write vectors with EP_VLOAD(p) and EP_VSTORE(p, v) (epilogue.VLOAD/VSTORE).
  Edge tiles keep the scalar `store`.
- `render_cpu_gemm(problem, params, name)` gives the kernel source; `cpu_gemm_launch`
  its global and local sizes (M, N >= 1: a builder returns no launch for an empty output).
  K may be 0 (the result is then all zeros, through the store).
- `matmul_problem` and `conv_problem` build the `CpuGemm` of a MatMul (batch broadcast,
  trans_a/trans_b, optionally packed B) and of a Conv (pixels as M, output channels as N,
  so that the weight is the vector operand: `pack_conv_weight` packs it). A pointwise conv
  (1x1, no stride or pads) is also the plain product Y = W @ X: `conv1x1_problem`.
- Packing: a constant B is packed once on the host (`pack_b`, `pack_conv_weight`; the
  packed array replaces the constant). A B that is not constant can be packed on the device
  by `render_cpu_pack`'s kernel into a temp buffer of `packed_b_shape(...)` words before the
  product: worth it for "cols" (trans_b) B and whenever M spans several tiles, since the
  packed kernel runs 2-5x faster than gathered or 4 KiB-strided rows (bench_gemm.py).

`CpuGemmParams` holds the tunables and their constraints; `DEFAULT_CPU_GEMM_PARAMS` was
measured best on the development machine (PoCL 3 compiling AVX2 code for znver3); the
kind's search space (registered at the end of this module) is what the tuner measures, and
the tests run a spread of it on odd shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from ember.codegen.csrc import broadcast_strides, contiguous_strides
from ember.codegen.render import render
from ember.codegen.params import Checked, ParamKind, cpu_gemm_rules, register_kind
from ember.ir import DType
from ember.ir.ops.linalg import ConvGeometry, MatMulDims, matmul_dims

__all__ = [
    "CpuGemmParams", "DEFAULT_CPU_GEMM_PARAMS", "GEMV_CPU_GEMM_PARAMS", "cpu_gemm_params",
    "BOperand", "ConvGather", "CpuGemm", "render_cpu_gemm",
    "cpu_gemm_launch", "render_cpu_pack", "cpu_pack_launch", "pack_b", "packed_b_shape",
    "pack_conv_weight", "matmul_problem", "conv_problem", "PACK_ROWS", "is_pointwise",
    "conv1x1_problem", "store_width", "batch_prologue", "matmul_b_operand", "default_store",
    "matmul_params",
]

BLayout = Literal["rows", "cols", "packed"]


@dataclass(frozen=True)
class CpuGemmParams(Checked):
    """Tunables of gemm_cpu.cl.j2 (its header says what each one does)."""

    mr: int = 6
    vw: int = 8
    nv: int = 2
    ku: int = 1
    group_m: int = 0

    @property
    def nr(self) -> int:
        return self.vw * self.nv

    def violations(self, itemsize: int = 4) -> list[str]:
        """Every constraint this set breaks, each with its reason."""
        rules = [
            (self.mr >= 1 and self.nv >= 1, "mr >= 1 and nv >= 1: a tile has rows and vectors"),
            (self.vw in (1, 2, 4, 8, 16), "vw in (1, 2, 4, 8, 16): OpenCL vector widths"),
            (self.ku in (1, 2, 4, 8), "ku in (1, 2, 4, 8): unroll factors of the K loop"),
            (self.group_m >= 0, "group_m >= 0: M tiles per band (0: all of them)"),
            (self.mr * self.nv <= 32,
             "mr * nv <= 32: the accumulators must fit the vector registers"),
            (self.vw * itemsize <= 64, "vw * itemsize <= 64: at most one 512-bit vector"),
            (self.mr * self.nr <= 512, "mr * nr <= 512: the register tile stays small"),
        ]
        return [reason for ok, reason in rules if not ok]


    def fitted(self, m: int, n: int) -> CpuGemmParams:
        """The same kernel shape with the tile shrunk where the problem is smaller than a
        tile: rows down to M, vectors (then lanes) down to what N fills."""
        mr, vw, nv = min(self.mr, m), self.vw, self.nv
        while nv > 1 and vw * (nv - 1) >= n:
            nv -= 1
        while vw > 1 and vw // 2 >= n:
            vw //= 2
        return replace(self, mr=mr, vw=vw, nv=nv)


# Measured on the development machine (2 cores, PoCL 3 compiling AVX2 code for znver3:
# 16 vector registers):
# 6 x 16 tiles (12 accumulators, 2 B vectors, 1 broadcast) are the classic AVX2 shape and won.
DEFAULT_CPU_GEMM_PARAMS = CpuGemmParams(mr=6, vw=8, nv=2, ku=1, group_m=0)
# This kernel on a single row (tests, benchmarks/bench_gemm.py; MatMuls with M = 1 take
# gemv_cpu.py): bound by streaming B, so wide tiles.
GEMV_CPU_GEMM_PARAMS = CpuGemmParams(mr=1, vw=16, nv=4, ku=1, group_m=0)


def cpu_gemm_params(m: int, n: int) -> CpuGemmParams:
    """The default tiling for an M x N result (GEMV shape for a single row)."""
    base = GEMV_CPU_GEMM_PARAMS if m == 1 else DEFAULT_CPU_GEMM_PARAMS
    return base.fitted(m, n)




@dataclass(frozen=True)
class BOperand:
    """How the kernel reads B: pointer name, layout, element offset and stride."""

    ptr: str
    layout: BLayout
    ctype: str = "float"  # the C type B is stored as ("half" is read with vload_half)
    offset: str = "0"  # C expression (may use the prologue's variables)
    stride: int = 0  # rows: elements between rows; cols: between columns; packed: unused

    @property
    def half(self) -> bool:
        return self.ctype == "half"


@dataclass(frozen=True)
class ConvGather:
    """A(pixel, k) of a convolution with output pixels as rows: k runs over (kernel
    position, input channel of the group), X is NC{spatial} row-major."""

    ptr: str
    ctype: str
    offset: str  # C expression: element offset of this batch's first input channel
    cig: int  # input channels per group
    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]

    @property
    def half(self) -> bool:
        return self.ctype == "half"

    @property
    def rank(self) -> int:
        return len(self.kernel)

    @property
    def ksize(self) -> int:
        return math.prod(self.kernel)

    @property
    def in_size(self) -> int:
        return math.prod(self.in_spatial)


@dataclass(frozen=True)
class CpuGemm:
    """One GEMM problem as the kernel sees it (see the module docstring)."""

    m: int
    n: int
    k: int
    batches: int
    params: tuple[str, ...]
    b: BOperand
    store: str
    a_expr: str | None = None
    conv: ConvGather | None = None
    prologue: str = ""
    acc: str = "float"
    idx: str = "int"
    label: str = ""
    extensions: frozenset[str] = field(default=frozenset())
    vstore: str | None = None

    def __post_init__(self) -> None:
        if (self.a_expr is None) == (self.conv is None):
            raise ValueError("CpuGemm reads A through exactly one of a_expr and conv")
        if self.conv is not None and self.b.layout == "rows":
            raise ValueError("a conv CpuGemm reads B as 'cols' (W) or 'packed'")
        if self.conv is not None and self.k != self.conv.cig * self.conv.ksize:
            raise ValueError(f"conv K {self.k} != {self.conv.cig} * {self.conv.ksize}")


_ITEMSIZE = {"double": 8, "long": 8, "ulong": 8}


def render_cpu_gemm(problem: CpuGemm, params: CpuGemmParams, name: str) -> str:
    """The OpenCL source of `problem` with tunables `params` as kernel `name`."""
    itemsize = _ITEMSIZE.get(problem.acc, 4)
    params.validate(itemsize)
    if problem.m < 1 or problem.n < 1 or problem.batches < 1:
        raise ValueError(f"CpuGemm of an empty result (M={problem.m}, N={problem.n}, "
                         f"batches={problem.batches}): launch nothing instead")
    conv = problem.conv
    conv_values = None
    if conv is not None:
        conv_values = {
            **{f: getattr(conv, f) for f in ConvGather.__dataclass_fields__},
            "half": conv.half, "rank": conv.rank, "ksize": conv.ksize, "in_size": conv.in_size,
            "in_strides": contiguous_strides(conv.in_spatial),
            "out_div": contiguous_strides(conv.out_spatial),
            "k_div": contiguous_strides(conv.kernel),
        }
    tiles_m = -(-problem.m // params.mr)
    band = tiles_m if params.group_m == 0 else min(params.group_m, tiles_m)
    ew = store_width(params)
    return render(
        "gemm_cpu.cl.j2", kind="gemm", name=name, p=params, tiles_m=tiles_m, band=band,
        tiles_n=-(-problem.n // params.nr), m=problem.m, n=problem.n, k=problem.k,
        batches=problem.batches, params=problem.params, prologue=problem.prologue,
        a_mode="expr" if conv is None else "conv", a_expr=problem.a_expr, conv=conv_values,
        b=problem.b, store=problem.store, acc=problem.acc, idx=problem.idx,
        itemsize=itemsize, label=problem.label or f"{problem.m}x{problem.n}x{problem.k}",
        vstore=problem.vstore if ew > 1 else None, ew=ew,
    )


# Lanes of the vector store: one AVX2 register of float (the vector helpers of
# kernels.HELPERS stop at float8).
STORE_VECTOR_WIDTH = 8


def store_width(params: CpuGemmParams) -> int:
    """Lanes per vector of a `vstore` (a divisor of NR); 1 means no vector store."""
    return min(params.vw, STORE_VECTOR_WIDTH)


def cpu_gemm_launch(problem: CpuGemm, params: CpuGemmParams
                    ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(global size, local size): one work-item per register tile, work-groups of one."""
    tiles_n = -(-problem.n // params.nr)
    tiles_m = -(-problem.m // params.mr)
    return (tiles_m * tiles_n, 1, problem.batches), (1, 1, 1)


# -- packing ----------------------------------------------------------------------------------
_BITS = {1: "uchar", 2: "ushort", 4: "uint", 8: "ulong"}
PACK_ROWS = 64  # rows of one panel per work-item of the pack kernel (fewer, fatter items)


def render_cpu_pack(b: BOperand, k: int, n: int, batches: int, params: CpuGemmParams,
                    name: str, itemsize: int, idx: str = "int") -> str:
    """A kernel (parameters: source B, packed output) that packs `batches` B matrices of
    K x N, stored as `b.layout` ("rows" or "cols") and contiguous one after the other, into
    the layout `pack_b` makes: for a B that is not a constant (a temp buffer of
    `packed_b_shape(k, n, nr, (batches,))` words holds it)."""
    if b.layout == "packed":
        raise ValueError("render_cpu_pack takes a 'rows' or 'cols' B")
    return render("gemm_cpu.cl.j2", kind="pack", name=name, p=params, b=b, k=k, n=n,
                  batches=batches, idx=idx, bits=_BITS[itemsize], pack_rows=PACK_ROWS,
                  label=f"pack {k}x{n}")


def cpu_pack_launch(k: int, n: int, batches: int, params: CpuGemmParams
                    ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    return (-(-k // PACK_ROWS), -(-n // params.nr), batches), (1, 1, 1)


def packed_b_shape(k: int, n: int, nr: int, batch: tuple[int, ...] = ()) -> tuple[int, ...]:
    return (*batch, -(-n // nr), k, nr)


def pack_b(array: np.ndarray, params: CpuGemmParams, *, trans: bool = False) -> np.ndarray:
    """B [..., K, N] (or [..., N, K] with `trans`) as panels of NR columns, K-major, zero
    padded to whole panels: [..., ceil(N / NR), K, NR], what the "packed" layout reads."""
    b = np.swapaxes(array, -1, -2) if trans else array
    if b.ndim < 2:
        b = b.reshape(-1, 1)
    k, n = b.shape[-2:]
    nr = params.nr
    panels = -(-n // nr)
    padded = np.zeros((*b.shape[:-1], panels * nr), dtype=array.dtype)
    padded[..., :n] = b
    out = padded.reshape(*b.shape[:-2], k, panels, nr)
    return np.ascontiguousarray(np.moveaxis(out, -2, -3))


def pack_conv_weight(w: np.ndarray, group: int, params: CpuGemmParams) -> np.ndarray:
    """Conv W [Cout, Cin/group, *kernel] as the packed B of `conv_problem`: per group,
    rows k = kernel position * Cin/group + input channel, columns = output channels."""
    cout, cig = w.shape[:2]
    ksize = math.prod(w.shape[2:])
    wg = w.reshape(group, cout // group, cig, ksize)
    b = np.transpose(wg, (0, 3, 2, 1)).reshape(group, ksize * cig, cout // group)
    return pack_b(b, params)


# -- problems ---------------------------------------------------------------------------------
def batch_prologue(dims: MatMulDims, b_matrix: int, idx: str) -> str:
    """C lines setting a_base, b_base and c_base for the work-item's `batch` index: the
    batch axes where A or B broadcast (size 1) add nothing to its base. `b_matrix` is the
    element count of one B matrix as stored (packed panels are padded)."""
    m, n, k = dims.m, dims.n, dims.k
    a_strides = broadcast_strides(dims.a_batch, dims.batch)
    b_strides = broadcast_strides(dims.b_batch, dims.batch)
    lines = [f"{idx} a_base = 0, b_base = 0;"]
    if any(size > 1 for size in dims.batch):
        lines.append(f"{idx} rest = batch;")
    for size, sa, sb in reversed(list(zip(dims.batch, a_strides, b_strides))):
        if size == 1:
            continue
        lines.append(f"{{ const {idx} coord = rest % {size}; rest /= {size};")
        if sa:
            lines.append(f"  a_base += coord * {sa * m * k};")
        if sb:
            lines.append(f"  b_base += coord * {sb * b_matrix};")
        lines.append("}")
    lines.append(f"const {idx} c_base = batch * {m * n};")
    return "\n".join(lines)


def matmul_b_operand(ctype: str, k: int, n: int, packed: bool, trans_b: int) -> BOperand:
    """How a MatMul kernel reads B: packed panels, or as stored (N x K with trans_b)."""
    if packed:
        return BOperand("b", "packed", ctype, "b_base")
    return BOperand("b", "cols", ctype, "b_base", k) if trans_b else \
        BOperand("b", "rows", ctype, "b_base", n)


def default_store(dtype: DType) -> str:
    """Writing `value` at `c_off` of c (half through vstore_half)."""
    return "vstore_half(value, c_off, c);" if dtype is DType.FLOAT16 else "c[c_off] = value;"


def matmul_params(dtype: DType, extra_params: tuple[str, ...]) -> tuple[str, ...]:
    """The parameter list (a, b, c, *extra_params) of a MatMul kernel."""
    ctype = dtype.cl_name
    return (f"__global const {ctype}* restrict a", f"__global const {ctype}* restrict b",
            f"__global {ctype}* restrict c", *extra_params)


def matmul_problem(a_shape: tuple[int, ...], b_shape: tuple[int, ...], dtype: DType,
                   trans_a: int, trans_b: int, *, params: CpuGemmParams,
                   packed_b: bool = False, store: str | None = None,
                   extra_params: tuple[str, ...] = (), idx: str = "int",
                   vstore: str | None = None) -> CpuGemm:
    """The CpuGemm of MatMul(a, b) with kernel parameters (a, b, c, *extra_params).

    `b_shape` is B's logical shape; with `packed_b` the kernel reads the array `pack_b(B,
    params, trans=trans_b)` instead. `store` defaults to writing c at the output index;
    a custom one may use `c_off` (that index) besides `value`, `gm` and `gn`, and so may a
    `vstore` (lanes along n: c_off + l)."""
    dims = matmul_dims(a_shape, b_shape, trans_a, trans_b)
    m, n, k = dims.m, dims.n, dims.k
    ctype = dtype.cl_name
    acc = "float" if dtype is DType.FLOAT16 else ctype
    b_matrix = (-(-n // params.nr)) * k * params.nr if packed_b else k * n
    a_off = f"a_base + gk * {m} + gm" if trans_a else f"a_base + gm * {k} + gk"
    a_expr = f"vload_half({a_off}, a)" if dtype is DType.FLOAT16 else f"a[{a_off}]"
    c_off = f"const {idx} c_off = c_base + gm * {n} + gn;"
    store = store if store is not None else default_store(dtype)
    return CpuGemm(
        m=m, n=n, k=k, batches=dims.batch_size, params=matmul_params(dtype, extra_params),
        b=matmul_b_operand(ctype, k, n, packed_b, trans_b), store=c_off + "\n" + store,
        a_expr=a_expr, prologue=batch_prologue(dims, b_matrix, idx), acc=acc, idx=idx,
        vstore=None if vstore is None else c_off + "\n" + vstore,
        label=f"MatMul {tuple(a_shape)}{'^T' if trans_a else ''} x "
              f"{tuple(b_shape)}{'^T' if trans_b else ''} {dtype}"
              + (" (B packed)" if packed_b else ""),
    )


def conv_problem(g: ConvGeometry, dtype: DType, *, params: CpuGemmParams,
                 packed_w: bool = False, has_bias: bool = False, store: str | None = None,
                 extra_params: tuple[str, ...] = (), idx: str = "int",
                 vstore: str | None = None) -> CpuGemm:
    """The CpuGemm of Conv(x, w[, bias]) with kernel parameters (x, w, [bias,] y,
    *extra_params): per (image, group) batch, M = output pixels, N = output channels of the
    group, K = kernel positions x input channels of the group. With `packed_w` the kernel
    reads `pack_conv_weight(W, group, params)` instead of W. A custom `store` may use
    `y_off` (the output index) and `oc` (the output channel) besides `value`, `gm`, `gn`, and
    so may a `vstore` (lanes along output channels: y_off + l * pixels, oc + l)."""
    ctype = dtype.cl_name
    acc = "float" if dtype is DType.FLOAT16 else ctype
    cig, cog = g.cin_per_group, g.cout_per_group
    ksize = math.prod(g.kernel)
    kdim = cig * ksize
    out_size = math.prod(g.out_spatial)
    in_size = math.prod(g.in_spatial)
    prologue = "\n".join([
        f"const {idx} img = batch / {g.group}, grp = batch % {g.group};",
        f"const {idx} y_base = (img * {g.out_channels} + grp * {cog}) * {out_size};",
    ])
    gather = ConvGather("x", ctype, f"(img * {g.in_channels} + grp * {cig}) * {in_size}", cig,
                        g.in_spatial, g.out_spatial, g.kernel, g.strides, g.dilations,
                        g.pads_begin)
    if packed_w:
        b = BOperand("w", "packed", ctype, f"grp * {-(-cog // params.nr) * kdim * params.nr}")
    else:
        b = BOperand("w", "cols", ctype, f"grp * {cog * kdim}", kdim)

    head = (f"const {idx} oc = grp * {cog} + gn;\n"
            f"const {idx} y_off = y_base + gn * {out_size} + gm;\n")
    store, decls = _conv_store(dtype, has_bias, store, extra_params)
    return CpuGemm(
        m=out_size, n=cog, k=kdim, batches=g.batch * g.group, params=tuple(decls), b=b,
        store=head + store, conv=gather, prologue=prologue, acc=acc, idx=idx,
        vstore=None if vstore is None else head + vstore,
        label=f"Conv x{(g.batch, g.in_channels, *g.in_spatial)} kernel {g.kernel} -> "
              f"{g.out_shape} group {g.group} {dtype}" + (" (W packed)" if packed_w else ""),
    )


def _load(dtype: DType, ptr: str, off: str) -> str:
    return f"vload_half({off}, {ptr})" if dtype is DType.FLOAT16 else f"{ptr}[{off}]"


def _conv_store(dtype: DType, has_bias: bool, store: str | None,
                extra_params: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """A conv problem's store (default: y[y_off] = value (+ bias[oc])) and its parameter
    declarations (x, w, [bias,] y, *extra_params)."""
    ctype = dtype.cl_name
    if store is None:
        result = f"value + {_load(dtype, 'bias', 'oc')}" if has_bias else "value"
        store = (f"vstore_half({result}, y_off, y);" if dtype is DType.FLOAT16
                 else f"y[y_off] = {result};")
    decls = [f"__global const {ctype}* restrict x", f"__global const {ctype}* restrict w"]
    if has_bias:
        decls.append(f"__global const {ctype}* restrict bias")
    return store, (*decls, f"__global {ctype}* restrict y", *extra_params)


def is_pointwise(g: ConvGeometry) -> bool:
    """A 1x1 convolution without stride or padding: per image and group, Y = W @ X."""
    return (all(k == 1 for k in g.kernel) and all(s == 1 for s in g.strides)
            and not any(g.pads_begin) and not any(g.pads_end))


def conv1x1_problem(g: ConvGeometry, dtype: DType, *, has_bias: bool = False,
                    store: str | None = None, extra_params: tuple[str, ...] = (),
                    idx: str = "int", vstore: str | None = None) -> CpuGemm:
    """The CpuGemm of a pointwise Conv (`is_pointwise`) as the plain product Y = W @ X per
    (image, group) batch: M = output channels of the group (W rows read as scalars),
    N = pixels (X rows, contiguous: vector loads, nothing to pack), K = input channels of the
    group. Kernel parameters (x, w, [bias,] y, *extra_params), as `conv_problem`'s; a
    custom `store` may use `y_off` and `oc` as there (a `vstore`'s lanes run along pixels:
    y_off + l, one oc). Measured as fast as `conv_problem` with packed W on 1x1 convs,
    without packing."""
    if not is_pointwise(g):
        raise ValueError(f"conv1x1_problem needs a 1x1 conv without stride or pads, got {g}")
    ctype = dtype.cl_name
    acc = "float" if dtype is DType.FLOAT16 else ctype
    cig, cog = g.cin_per_group, g.cout_per_group
    pixels = math.prod(g.out_spatial)

    prologue = "\n".join([
        f"const {idx} img = batch / {g.group}, grp = batch % {g.group};",
        f"const {idx} w_base = grp * {cog * cig};",
        f"const {idx} y_base = (img * {g.out_channels} + grp * {cog}) * {pixels};",
    ])
    head = (f"const {idx} oc = grp * {cog} + gm;\n"
            f"const {idx} y_off = y_base + gm * {pixels} + gn;\n")
    store, decls = _conv_store(dtype, has_bias, store, extra_params)
    return CpuGemm(
        m=cog, n=pixels, k=cig, batches=g.batch * g.group, params=tuple(decls),
        b=BOperand("x", "rows", ctype, f"(img * {g.in_channels} + grp * {cig}) * {pixels}",
                   pixels),
        store=head + store, a_expr=_load(dtype, "w", f"w_base + gm * {cig} + gk"),
        prologue=prologue, vstore=None if vstore is None else head + vstore,
        acc=acc, idx=idx,
        label=f"pointwise Conv x{(g.batch, g.in_channels, *g.in_spatial)} -> {g.out_shape} "
              f"group {g.group} {dtype}",
    )


# -- the tunable kind, registered beside its params ----------------------------------------
_SMALL = CpuGemmParams(mr=4, vw=4, nv=2, ku=1, group_m=0)  # fits 16 SSE registers
CPU_GEMM_KIND = register_kind(ParamKind(
    "gemm_cpu", CpuGemmParams,
    defaults={"family": {"cpu": DEFAULT_CPU_GEMM_PARAMS},
              "generic": {"gpu": _SMALL, "other": _SMALL}},
    axes=(("mr", (1, 2, 3, 4, 6, 8)), ("vw", (4, 8, 16)), ("nv", (1, 2, 3, 4)),
          ("ku", (1, 2, 4)), ("group_m", (0, 1, 4, 16))),
    own=lambda p, t, itemsize: p.violations(itemsize), rules=cpu_gemm_rules(),
))
