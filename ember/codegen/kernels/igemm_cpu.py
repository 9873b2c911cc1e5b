"""The integer GEMM of MatMulInteger and ConvInteger for CPU OpenCL devices (PoCL).

A float GEMM on a CPU does one multiply-add per lane per FMA; an int8 product can do two:
operands widened to int16 and multiplied in pairs whose products are summed into int32
lanes (x86's vpmaddwd, 16 multiply-adds per AVX2 instruction). LLVM 14 does not match the
portable form `convert_int8(a.even) * convert_int8(b.even) + ...` to it (it emits vpmulld,
2-3x slower), so where the compiler targets AVX2 the kernel calls the instruction's builtin. So both operands are stored as int words holding two int16 values of
consecutive K (igemm_cpu.cl.j2):

- A with its zero point subtracted, by a small pre-pass kernel per call ("pairs_a" for a
  MatMul, "pairs_x" for a conv: per input channel pair planes, no im2col), which also
  writes the row sums of (a - za) (a conv's per pixel channel sums, added over the taps);
- B as stored (int8 or uint8), in panels of NR columns (`pack_pairs`: once on the host for
  a constant B, else by the "pack_b" kernel into scratch memory before the product).

The zero point of B is applied in the store: sum (a - za)(b - zb) = sum (a - za) b -
zb * sum (a - za); every intermediate is an exact int32 (|a - za| <= 255, |b| <= 255).
benchmarks/quant_kernels.py prints its speed against ember's float32 GEMM and conv.

`IgemmParams` holds the tunables; the kind "igemm_cpu" is registered at the end.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from ember.codegen.csrc import contiguous_strides, extensions_for
from ember.codegen.families import Target
from ember.codegen.kernels.epilogue import EpilogueCode
from ember.codegen.kernels.gemm_cpu import batch_prologue
from ember.codegen.params import (
    Checked, ParamKind, accumulators_fit, params_for, register_kind, tuning_key,
)
from ember.codegen.render import kernel_name, render
from ember.codegen.types import IN, OUT, TMP, Kernel, Launch, Lowered, NodeSpec
from ember.ir.ops.linalg import ConvGeometry, matmul_dims

__all__ = [
    "IgemmParams", "DEFAULT_IGEMM_PARAMS", "LANES", "pack_pairs", "pack_matmul_pairs",
    "pack_conv_pairs", "pack_conv_rows", "igemm_matmul_cpu", "igemm_conv_cpu",
    "IM2COL_BELOW_CHANNELS",
]

LANES = 8  # int32 lanes of one vector of B words (a short16 of pairs)


@dataclass(frozen=True)
class IgemmParams(Checked):
    """Tunables of igemm_cpu.cl.j2's gemm kernel (its header says what each one does)."""

    mr: int = 4
    nv: int = 3
    ku: int = 1

    @property
    def vw(self) -> int:
        """Lanes of one accumulator vector (what the register rules count)."""
        return LANES

    @property
    def nr(self) -> int:
        return LANES * self.nv

    def violations(self, itemsize: int = 4) -> list[str]:
        """Every constraint this set breaks, each with its reason."""
        rules = [
            (self.mr >= 1 and self.nv >= 1, "mr >= 1 and nv >= 1: a tile has rows and vectors"),
            (self.ku in (1, 2, 4), "ku in (1, 2, 4): unroll factors of the K loop"),
            (self.mr * self.nv <= 32,
             "mr * nv <= 32: the accumulators must fit the vector registers"),
        ]
        return [reason for ok, reason in rules if not ok]

    def fitted(self, m: int, n: int) -> IgemmParams:
        """The same kernel shape with rows down to M and vectors down to what N fills."""
        nv = self.nv
        while nv > 1 and LANES * (nv - 1) >= n:
            nv -= 1
        return replace(self, mr=max(1, min(self.mr, m)), nv=nv)


# Measured on the development machine (2 cores, PoCL 3 compiling AVX2 code for znver3, 16
# vector registers; 1024^3, noisy): 6 x 16 and 5 x 16 tiles best (110-165 GOP/s), 4 x 24
# and 3 x 32 at 75-110, 2 x 48 at 60.
DEFAULT_IGEMM_PARAMS = IgemmParams(mr=6, nv=2, ku=1)


# -- host packing of a constant B -------------------------------------------------------------
def pack_pairs(b: np.ndarray, nr: int) -> np.ndarray:
    """B [batches, K, N] (K even: padded with zero rows by the caller) as panels of NR
    columns of int32 words (B[2k2, n], B[2k2+1, n]) as little-endian shorts:
    [batches, ceil(N/NR), K/2, NR], zero padded to whole panels."""
    batches, k, n = b.shape
    panels = -(-n // nr)
    padded = np.zeros((batches, k, panels * nr), np.int16)
    padded[:, :, :n] = b
    pairs = padded.reshape(batches, k // 2, 2, panels, nr).transpose(0, 3, 1, 4, 2)
    words = np.ascontiguousarray(pairs).astype("<i2", copy=False).view("<i4")
    return words.reshape(batches, panels, k // 2, nr)


def pack_matmul_pairs(b: np.ndarray, *, nr: int) -> np.ndarray:
    """A MatMulInteger's constant B [..., K, N] (or [K]) as the kernel reads it."""
    b3 = (b.reshape(math.prod(b.shape[:-2]), b.shape[-2], b.shape[-1]) if b.ndim >= 2
          else b.reshape(1, -1, 1))
    k = b3.shape[1]
    if k % 2:
        b3 = np.concatenate([b3, np.zeros_like(b3[:, :1])], axis=1)
    return _as_stored(pack_pairs(b3, nr), b.dtype)


def _as_stored(words: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The packed words as bytes of the constant's own dtype: the plan keeps a packed
    constant's dtype and sizes its buffer from the array's shape in that dtype."""
    return words.reshape(words.shape[0], -1).view(dtype)


def pack_conv_pairs(w: np.ndarray, *, group: int, nr: int) -> np.ndarray:
    """A ConvInteger's constant W [Cout, CIG, *kernel] as the kernel reads it: per group,
    rows k = kernel position * CIG_PAD + input channel (CIG_PAD: CIG rounded up to even,
    zero rows), columns = the group's output channels."""
    cout, cig = w.shape[:2]
    ksize = math.prod(w.shape[2:])
    cig_pad = cig + cig % 2
    wg = np.zeros((group, cout // group, cig_pad, ksize), w.dtype)
    wg[:, :, :cig] = w.reshape(group, cout // group, cig, ksize)
    b3 = np.transpose(wg, (0, 3, 2, 1)).reshape(group, ksize * cig_pad, cout // group)
    return _as_stored(pack_pairs(b3, nr), w.dtype)


def pack_conv_rows(w: np.ndarray, *, group: int, nr: int) -> np.ndarray:
    """A ConvInteger's constant W [Cout, CIG, *kernel] in the row order of the im2col path:
    per group, row k = input channel * kernel size + kernel position (W's own order; an odd
    K padded with a zero row), columns = the group's output channels."""
    cout = w.shape[0]
    k = math.prod(w.shape[1:])
    b3 = np.transpose(w.reshape(group, cout // group, k), (0, 2, 1))
    if k % 2:
        b3 = np.concatenate([b3, np.zeros_like(b3[:, :1])], axis=1)
    return _as_stored(pack_pairs(b3, nr), w.dtype)


# Input channels per group below which a conv gathers im2col rows of pairs first: the
# implicit GEMM's per-tap work (coordinates, bounds, row sums for MR pixels) is paid for
# every ceil(CIG/2) pairs, and a 3-channel 7x7 stem spends most of its time there (measured
# on the development machine, ResNet-18's stem 1x3x224x224: 9.2 ms implicit).
IM2COL_BELOW_CHANNELS = 8
# Work-items per group of the im2col kernel (consecutive pixels, which PoCL runs as lanes).
IM2COL_GROUP = 16


# -- lowering ---------------------------------------------------------------------------------
def _lookup(spec: NodeSpec, target: Target):
    return params_for("igemm_cpu", tuning_key(spec), target)


def _pack_b_launch(spec: NodeSpec, name: str, *, k2: int, n: int, nr: int, batches: int,
                   valid: str, offset: str, idx: str, tmp: int) -> Launch:
    """The kernel that packs a B that is not a constant into scratch buffer `tmp`."""
    b = spec.inputs[1]
    panels = -(-n // nr)
    source = render("igemm_cpu.cl.j2", kind="pack_b", name=name, b_type=b.dtype.cl_name,
                    idx=idx, nr=nr, n=n, k2s=k2, panels=panels, valid=valid, offset=offset,
                    label=f"pack {b}")
    return Launch(Kernel(name, source), (k2, panels, batches), (1, 1, 1),
                  ((IN, 1), (TMP, tmp)))


def _vector_store(epilogue: EpilogueCode, n: int, pointer: str, offset: str, out_step: int,
                  lane_axes: tuple[int, ...]) -> dict:
    """The template values of the vector store (8 columns of a tile row, `offset` the flat
    output offset of the first): none where the epilogue has no vector form (an int32
    result without an epilogue stays scalar: int32 is not exact in float) or N < 8."""
    store = None if n < LANES else epilogue.vector_store(
        pointer, offset, f"convert_float{LANES}(vvalue)", LANES, out_step, lane_axes)
    out = epilogue.out.dtype
    return {"vstore": store, "out_vector": f"{out.cl_name}{LANES}", "out_align": out.itemsize}


def _lane_zeros(b_zero: str) -> str:
    """The int8 of B's zero points at columns gn .. gn + 7 (`b_zero` is one at column gn)."""
    if "gn" not in b_zero:
        return b_zero
    return f"(int{LANES})(" + ", ".join(
        b_zero.replace("gn", f"gn + {lane}") for lane in range(LANES)) + ")"


def _gemm_kernel(spec: NodeSpec, params: IgemmParams, name: str, values: dict) -> Kernel:
    tiles_m = -(-values["m"] // params.mr)
    source = render("igemm_cpu.cl.j2", kind="gemm", name=name, p=params, tiles_m=tiles_m,
                    b_zero_vector=_lane_zeros(values["b_zero"]), **values)
    return Kernel(name, source, extensions_for([t.dtype for t in spec.outputs]))


def _tiles(m: int, n: int, params: IgemmParams) -> int:
    return -(-m // params.mr) * -(-n // params.nr)


def igemm_matmul_cpu(spec: NodeSpec, epilogue: EpilogueCode, idx: str,
                     target: Target) -> Lowered:
    """MatMulInteger (a, b, a_zero, b_zero, *epilogue inputs) on a CPU device."""
    a, b, az, bz = spec.inputs[:4]
    dims = matmul_dims(a.shape, b.shape)
    m, n, k = dims.m, dims.n, dims.k
    k2 = -(-k // 2)
    lookup = _lookup(spec, target)
    params = lookup.params.fitted(m, n)
    nr = params.nr
    a_rows = math.prod(dims.a_batch) * m
    b_batches = math.prod(dims.b_batch)
    b_matrix = -(-n // nr) * k2 * nr
    key = (spec.inputs, spec.outputs, spec.attrs.key(), params)
    pairs_name = kernel_name("igemm_pairs_a", key)
    pairs = Kernel(pairs_name, render(
        "igemm_cpu.cl.j2", kind="pairs_a", name=pairs_name, a_type=a.dtype.cl_name, idx=idx,
        az_size=az.size, m=m, k=k, k2=k2, rows=a_rows, label=f"A pairs of {a}"))
    launches = [Launch(pairs, (a_rows,), (1,), ((IN, 0), (IN, 2), (TMP, 0)))]
    temps = [max(4, (a_rows * k2 + a_rows) * 4)]
    pack = 1 in spec.packable and k2 > 0  # (K = 0: nothing to pack, nothing read)
    packed: tuple = ()
    if pack:
        packed = ((1, functools.partial(pack_matmul_pairs, nr=nr)),)
        b_arg = (IN, 1)
    else:
        temps.append(max(4, b_batches * b_matrix * 4))
        b_arg = (TMP, 1)
        if k2:
            launches.append(_pack_b_launch(
                spec, kernel_name("igemm_pack_b", key), k2=k2, n=n, nr=nr, batches=b_batches,
                valid=f"k < {k}", offset=f"batch * {k * n} + k * {n} + n", idx=idx, tmp=1))
    out = spec.outputs[0]
    decls = ("__global const int* restrict ap", "__global const int* restrict bp",
             f"__global const {bz.dtype.cl_name}* restrict bz",
             f"__global {out.dtype.cl_name}* restrict c", *epilogue.declarations)
    values = {
        "m": m, "n": n, "k2": k2, "batches": dims.batch_size, "a_mode": "rows",
        "a_rows": a_rows, "params": decls, "idx": idx, "conv": None,
        "prologue": batch_prologue(replace(dims, k=k2), b_matrix, idx),
        "b_zero": "(int)bz[0]" if bz.size == 1 else "(int)bz[gn]",
        "store": f"const {idx} c_off = c_base + gm * {n} + gn;\n"
                 + epilogue.store("c", "c_off", "value"),
        **_vector_store(epilogue, n, "c", f"c_base + gm * {n} + gn", 1, (out.rank - 1,)),
        "label": f"MatMulInteger {a} x {b} -> {out}{epilogue.label}"
                 + (" (B packed)" if pack else ""),
    }
    name = kernel_name("igemm_matmul", key, pack)
    launches.append(Launch(
        _gemm_kernel(spec, params, name, values), (_tiles(m, n, params), 1, dims.batch_size),
        (1, 1, 1),
        ((TMP, 0), b_arg, (IN, 3), (OUT, 0)) + tuple((IN, i) for i in range(4, len(spec.inputs)))))
    return Lowered(tuple(launches), temps=tuple(temps), packed=packed, tuning=lookup)


def igemm_conv_cpu(spec: NodeSpec, g: ConvGeometry, epilogue: EpilogueCode, idx: str,
                   target: Target) -> Lowered:
    """ConvInteger (x, w, x_zero, w_zero, *epilogue inputs) on a CPU device: an implicit
    GEMM with output pixels as M and the group's output channels as N."""
    x, w, _, wz = spec.inputs[:4]
    cig, cog = g.cin_per_group, g.cout_per_group
    cig2 = -(-cig // 2)
    ksize = math.prod(g.kernel)
    if ksize > 1 and cig < IM2COL_BELOW_CHANNELS:
        return _igemm_conv_im2col(spec, g, epilogue, idx, target)
    in_size, out_size = math.prod(g.in_spatial), math.prod(g.out_spatial)
    planes = g.batch * g.group
    k2 = ksize * cig2
    lookup = _lookup(spec, target)
    params = lookup.params.fitted(out_size, cog)
    nr = params.nr
    b_matrix = -(-cog // nr) * k2 * nr
    key = (spec.inputs, spec.outputs, spec.attrs.key(), params)
    pairs_name = kernel_name("igemm_pairs_x", key)
    pairs = Kernel(pairs_name, render(
        "igemm_cpu.cl.j2", kind="pairs_x", name=pairs_name, a_type=x.dtype.cl_name, idx=idx,
        cig=cig, cig2=cig2, in_size=in_size, planes=planes, label=f"X pairs of {x}"))
    launches = [Launch(pairs, (in_size, planes), (1, 1), ((IN, 0), (IN, 2), (TMP, 0)))]
    temps = [(planes * cig2 * in_size + planes * in_size) * 4]
    pack = 1 in spec.packable
    packed: tuple = ()
    if pack:
        packed = ((1, functools.partial(pack_conv_pairs, group=g.group, nr=nr)),)
        b_arg = (IN, 1)
    else:
        temps.append(g.group * b_matrix * 4)
        b_arg = (TMP, 1)
        cig_pad = 2 * cig2
        launches.append(_pack_b_launch(
            spec, kernel_name("igemm_pack_w", key), k2=k2, n=cog, nr=nr, batches=g.group,
            valid=f"k % {cig_pad} < {cig}",
            offset=f"((batch * {cog} + n) * {cig} + k % {cig_pad}) * {ksize} + k / {cig_pad}",
            idx=idx, tmp=1))
    out = spec.outputs[0]
    decls = ("__global const int* restrict xp", "__global const int* restrict bp",
             f"__global const {wz.dtype.cl_name}* restrict bz",
             f"__global {out.dtype.cl_name}* restrict y", *epilogue.declarations)
    conv = {
        "in_size": in_size, "cig2": cig2, "rank": g.rank, "ksize": ksize,
        "out_spatial": g.out_spatial, "out_div": contiguous_strides(g.out_spatial),
        "kernel": g.kernel, "k_div": contiguous_strides(g.kernel), "strides": g.strides,
        "dilations": g.dilations, "pads_begin": g.pads_begin, "in_spatial": g.in_spatial,
        "in_strides": contiguous_strides(g.in_spatial),
    }
    prologue = "\n".join([
        f"const {idx} img = batch / {g.group}, grp = batch % {g.group};",
        f"const {idx} b_base = grp * {b_matrix};",
        f"const {idx} x_off = batch * {cig2 * in_size};",
        f"const {idx} s_off = {planes * cig2 * in_size} + batch * {in_size};",
    ])
    values = {
        "m": out_size, "n": cog, "k2": k2, "batches": planes, "a_mode": "conv",
        "a_rows": 0, "params": decls, "idx": idx, "conv": conv, "prologue": prologue,
        "b_zero": "(int)bz[0]" if wz.size == 1 else f"(int)bz[grp * {cog} + gn]",
        "store": f"const {idx} y_off = (img * {g.out_channels} + grp * {cog} + gn) * "
                 f"{out_size} + gm;\n" + epilogue.store("y", "y_off", "value"),
        # lanes: 8 output channels of one pixel (strided by the pixel count)
        **_vector_store(epilogue, cog, "y", f"(img * {g.out_channels} + grp * {cog} + gn) * "
                        f"{out_size} + gm", out_size, (1,)),
        "label": f"ConvInteger {x} * {w} -> {out} kernel {g.kernel} group {g.group}"
                 f"{epilogue.label}" + (" (W packed)" if pack else ""),
    }
    name = kernel_name("igemm_conv", key, pack)
    launches.append(Launch(
        _gemm_kernel(spec, params, name, values), (_tiles(out_size, cog, params), 1, planes),
        (1, 1, 1),
        ((TMP, 0), b_arg, (IN, 3), (OUT, 0)) + tuple((IN, i) for i in range(4, len(spec.inputs)))))
    return Lowered(tuple(launches), temps=tuple(temps), packed=packed, tuning=lookup)


def _igemm_conv_im2col(spec: NodeSpec, g: ConvGeometry, epilogue: EpilogueCode, idx: str,
                       target: Target) -> Lowered:
    """ConvInteger with few input channels: the "pairs_im2col" kernel writes each output
    pixel's taps (input channel * kernel size + kernel position, W's order) as K2 words of
    pairs and their sum, and the GEMM reads them as the rows of A (as a MatMul's)."""
    x, w, _, wz = spec.inputs[:4]
    cig, cog = g.cin_per_group, g.cout_per_group
    k = cig * math.prod(g.kernel)
    k2 = -(-k // 2)
    in_size, out_size = math.prod(g.in_spatial), math.prod(g.out_spatial)
    planes = g.batch * g.group
    lookup = _lookup(spec, target)
    params = lookup.params.fitted(out_size, cog)
    nr = params.nr
    b_matrix = -(-cog // nr) * k2 * nr
    key = (spec.inputs, spec.outputs, spec.attrs.key(), params)
    conv = {
        "rank": g.rank, "ksize": math.prod(g.kernel), "out_spatial": g.out_spatial,
        "out_div": contiguous_strides(g.out_spatial), "kernel": g.kernel,
        "k_div": contiguous_strides(g.kernel), "strides": g.strides,
        "dilations": g.dilations, "pads_begin": g.pads_begin, "in_spatial": g.in_spatial,
        "in_strides": contiguous_strides(g.in_spatial),
    }
    pairs_name = kernel_name("igemm_im2col", key)
    pairs = Kernel(pairs_name, render(
        "igemm_cpu.cl.j2", kind="pairs_im2col", name=pairs_name, a_type=x.dtype.cl_name,
        idx=idx, cig=cig, k=k, k2=k2, in_size=in_size, out_size=out_size, planes=planes,
        conv=conv, label=f"im2col pairs of {x}"))
    launches = [Launch(pairs, (-(-out_size // IM2COL_GROUP) * IM2COL_GROUP, planes),
                       (IM2COL_GROUP, 1), ((IN, 0), (IN, 2), (TMP, 0)))]
    a_rows = planes * out_size
    temps = [(a_rows * k2 + a_rows) * 4]
    pack = 1 in spec.packable
    packed: tuple = ()
    if pack:
        packed = ((1, functools.partial(pack_conv_rows, group=g.group, nr=nr)),)
        b_arg = (IN, 1)
    else:
        temps.append(g.group * b_matrix * 4)
        b_arg = (TMP, 1)
        launches.append(_pack_b_launch(
            spec, kernel_name("igemm_pack_w_rows", key), k2=k2, n=cog, nr=nr,
            batches=g.group, valid=f"k < {k}", offset=f"(batch * {cog} + n) * {k} + k",
            idx=idx, tmp=1))
    out = spec.outputs[0]
    decls = ("__global const int* restrict ap", "__global const int* restrict bp",
             f"__global const {wz.dtype.cl_name}* restrict bz",
             f"__global {out.dtype.cl_name}* restrict y", *epilogue.declarations)
    prologue = "\n".join([
        f"const {idx} img = batch / {g.group}, grp = batch % {g.group};",
        f"const {idx} b_base = grp * {b_matrix};",
        f"const {idx} a_base = batch * {out_size * k2};",
    ])
    y_off = f"(img * {g.out_channels} + grp * {cog} + gn) * {out_size} + gm"
    values = {
        "m": out_size, "n": cog, "k2": k2, "batches": planes, "a_mode": "rows",
        "a_rows": a_rows, "params": decls, "idx": idx, "conv": None, "prologue": prologue,
        "b_zero": "(int)bz[0]" if wz.size == 1 else f"(int)bz[grp * {cog} + gn]",
        "store": f"const {idx} y_off = {y_off};\n" + epilogue.store("y", "y_off", "value"),
        **_vector_store(epilogue, cog, "y", y_off, out_size, (1,)),
        "label": f"ConvInteger {x} * {w} -> {out} kernel {g.kernel} group {g.group} im2col"
                 f"{epilogue.label}" + (" (W packed)" if pack else ""),
    }
    name = kernel_name("igemm_conv_im2col", key, pack)
    launches.append(Launch(
        _gemm_kernel(spec, params, name, values), (_tiles(out_size, cog, params), 1, planes),
        (1, 1, 1),
        ((TMP, 0), b_arg, (IN, 3), (OUT, 0)) + tuple((IN, i) for i in range(4, len(spec.inputs)))))
    return Lowered(tuple(launches), temps=tuple(temps), packed=packed, tuning=lookup)


# -- the tunable kind, registered beside its params ----------------------------------------
_SMALL = IgemmParams(mr=2, nv=2, ku=1)  # 4 accumulators: fits SSE's 16 registers with room
IGEMM_CPU_KIND = register_kind(ParamKind(
    "igemm_cpu", IgemmParams,
    defaults={"family": {"cpu": DEFAULT_IGEMM_PARAMS},
              "generic": {"gpu": _SMALL, "other": _SMALL}},
    axes=(("mr", (1, 2, 3, 4, 6, 8)), ("nv", (1, 2, 3, 4)), ("ku", (1, 2, 4))),
    own=lambda p, t, itemsize: p.violations(itemsize),
    rules=(accumulators_fit("mr * nv", lambda p: p.mr * p.nv),),
))
