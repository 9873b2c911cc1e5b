"""BlockQuantMatMul with many rows of A (prefill) on CPU devices: a register-tiled GEMM that
dequantizes its B panels in private memory.

With M rows a weight is used M times, so the product is bound by arithmetic, not by how
fast W streams: the kernel must be a register-tiled GEMM like ember's float32 one
(gemm_cpu.py), and unpacking must cost little per use. qgemv_cpu's loop over M rows
unpacks each weight once per MR rows and re-reads A for every column; from 16 rows on it
ran 1.6-2.4x slower than the float32 GEMM (benchmarks/quant_kernels.py --cases prefill).

Here (qgemm_cpu.cl.j2) a work-item owns NR = 8 * NV columns of C and a band of up to
TB * MR rows. K runs in chunks of KC values: the chunk of the NR weight rows is unpacked
once into a panel of floats in private memory laid out as gemm_cpu's packed B (K-major,
vectors along N: the 4 bytes of 8 weight rows at one K make a uint8 whose lanes are 8
columns, so unpacking needs no transposition), at most 32 KiB that stay in L1, and every
MR-row tile of the band runs gemm_cpu's microkernel (MR x NV float8 sums, A broadcast)
over it. Each weight is unpacked once per band; W stays 4- (or 8-) bit in device memory
and is read once per band, 8x (4x) fewer bytes than the float32 GEMM's packed B.

Why not two launches (a kernel dequantizing W into gemm_cpu's packed panels in a scratch
buffer, then gemm_cpu on it): that scratch is N * K * 4 bytes (64 MiB at 4096 x 4096),
written to and read back from memory on every call (by estimate about what the float32
GEMM's own pass over its packed B costs) on top of that same GEMM: it could not reach the
float32 time. Here there is no scratch at all (nothing for the memory planner to hold).

Bit-faithfulness: each panel value is (q - z) * s in float32, q - z exact, one rounding:
the reference's dequantized weight bit for bit. Each output is summed along K in K's
order with one FMA per term, so |C - exact| <= gamma_K * (|A| @ |W_float|^T), the bound of
a float32 GEMM on those weights.

Where it applies (`prefill_applies`): devices whose family runs register-tiled kernels
(CPUs) and at least PREFILL_MIN_ROWS rows of A; fewer rows, and GPUs, keep qgemv_cpu's
kernels (plain OpenCL that works everywhere). BlockQuantMatMul's kernel builder is here
and calls qgemv_cpu's lowering for the rest. The tunable kind "qgemm_cpu" is registered
at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ember.codegen.csrc import extensions_for, index_type, load_expr
from ember.codegen.families import Target
from ember.codegen.kernels.epilogue import epilogue_code
from ember.codegen.kernels.qgemv_cpu import LANES, build_block_quant_matmul
from ember.codegen.params import (
    Checked,
    ParamKind,
    cpu_gemm_rules,
    params_for,
    register_kind,
    tuning_key,
)
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.ir import DType

__all__ = [
    "DEFAULT_QGEMM_CPU_PARAMS",
    "PREFILL_MIN_ROWS",
    "QgemmCpuParams",
    "block_quant_prefill",
    "build_block_quant_product",
    "prefill_applies",
]

# Rows of A from which the panel GEMM replaces qgemv_cpu's row loop. Measured on the
# development machine (fastest of 11 runs, 4096 x 4096 int4): 2 rows 3.2 ms against the
# row loop's 2.4, 4 rows 3.4 against 3.2, 8 rows 5.8 against 6.0, 12 rows 5.8 against 9.0;
# on the 4-row layers of tests/quantization's models 2.0 us against 3.6.
PREFILL_MIN_ROWS = 4
PANEL_BYTES = 32 * 1024  # a chunk's panel (KC x NR floats) stays in L1


@dataclass(frozen=True)
class QgemmCpuParams(Checked):
    """Tunables of qgemm_cpu.cl.j2 (its header says what each one does)."""

    mr: int = 6
    nv: int = 2
    kc: int = 256
    tb: int = 16
    ku: int = 1

    @property
    def vw(self) -> int:
        """Lanes of one accumulator vector (what the register rules count)."""
        return LANES

    def violations(self, itemsize: int = 4) -> list[str]:
        rules = [
            (self.mr >= 1 and self.nv >= 1, "mr >= 1 and nv >= 1: rows and vectors of a tile"),
            (self.tb >= 1, "tb >= 1: tiles per band"),
            (self.kc >= 16 and self.kc & (self.kc - 1) == 0,
             "kc a power of two >= 16: whole words of W, and block sizes divide it or it them"),
            (self.kc * self.nv * LANES * 4 <= PANEL_BYTES,
             f"kc * nv * 32 <= {PANEL_BYTES}: the chunk's panel stays in L1"),
            (self.ku in (1, 2, 4), "ku in (1, 2, 4): unroll factors of the chunk loop"),
        ]
        return [reason for ok, reason in rules if not ok]

    def fitted(self, rows: int, n: int) -> QgemmCpuParams:
        """Tiles no larger than they need to be: as many tiles along rows and columns as
        with MR and NV, each as small as that many can be (32 columns in tiles of 3 vectors
        take 2 tiles, of 2 vectors: no padded column), the band down to the tiles the rows
        fill."""
        tiles_m = -(-rows // self.mr)
        mr = -(-rows // tiles_m)
        groups = -(-n // LANES)
        nv = -(-groups // -(-groups // self.nv))
        return replace(self, mr=mr, nv=nv, tb=max(1, min(self.tb, tiles_m)))


# Measured on the development machine (2 cores, PoCL 3, znver3: 16 AVX2 registers, shared
# with other work, so +-30% between runs; the tuner's trials at 16, 64 and 128 rows of
# 4096 x 4096): 4 x 24 tiles (12 accumulators, as gemm_cpu's 6 x 16, but 16 rows fill
# them) were first or within noise of the first each time; chunks of 256 values (24 KiB
# of panel) beat 128 and 512; bands of 64 rows, K unrolled twice.
DEFAULT_QGEMM_CPU_PARAMS = QgemmCpuParams(mr=4, nv=3, kc=256, tb=16, ku=2)
_SMALL = QgemmCpuParams(mr=4, nv=1, kc=256, tb=16, ku=1)  # fits 16 SSE registers


def prefill_applies(rows: int, target: Target) -> bool:
    """Whether BlockQuantMatMul with `rows` rows of A runs as the panel GEMM."""
    return target.family.register_tiles and rows >= PREFILL_MIN_ROWS


@kernel_builder("BlockQuantMatMul")
def build_block_quant_product(spec: NodeSpec, target: Target) -> Lowered | None:
    """BlockQuantMatMul's builder: the panel GEMM for prefill on CPUs (`prefill_applies`),
    qgemv_cpu's kernels otherwise."""
    a = spec.inputs[0]
    out = spec.outputs[0]
    rows = math.prod(a.shape[:-1])
    if a.dtype not in (DType.FLOAT32, DType.FLOAT16) or out.size == 0 \
            or not prefill_applies(rows, target):
        return build_block_quant_matmul(spec, target)
    return block_quant_prefill(spec, target)


def block_quant_prefill(spec: NodeSpec, target: Target) -> Lowered | None:
    """The launch of a BlockQuantMatMul with many rows of A: the panel GEMM with the
    epilogue in its store (None: an epilogue the store cannot run)."""
    a, _, scales, _ = spec.inputs[:4]
    out = spec.outputs[0]
    attrs = spec.attrs
    bits, bs, k, n = attrs["bits"], attrs["block_size"], attrs["k"], attrs["n"]
    rows = math.prod(a.shape[:-1])
    nblocks = -(-k // bs)
    idx = index_type(*(t.size for t in (*spec.inputs, out)))
    epilogue = epilogue_code(attrs["epilogue"], spec.inputs[4:], out, a.dtype, idx)
    if epilogue is None:
        return None
    lookup = params_for("qgemm_cpu", tuning_key(spec), target)
    params = lookup.params.fitted(rows, n)
    kc = min(params.kc, 1 << (nblocks * bs - 1).bit_length())  # no longer than K needs
    decls = (f"__global const {a.dtype.cl_name}* restrict a", "__global const uchar* restrict w",
             f"__global const {scales.dtype.cl_name}* restrict scales",
             "__global const uchar* restrict zeros",
             f"__global {out.dtype.cl_name}* restrict c", *epilogue.declarations)
    name = kernel_name("qgemm_cpu", spec.inputs, out, attrs.key(), params)
    c_off = f"const {idx} c_off = gm * {n} + gn;\n"
    vstore = epilogue.vector_store("c", "c_off", "vvalue", LANES, 1, (len(out.shape) - 1,))
    source = render(
        "qgemm_cpu.cl.j2", name=name, params=decls, p=params, bits=bits, bs=bs,
        bpb=bs * bits // 8, nblocks=nblocks, k=k, n=n, rows=rows, idx=idx,
        a_type=a.dtype.cl_name, npl=32 // bits, kc=kc, seg=min(bs, kc), kb=nblocks * bs,
        band=params.tb * params.mr, unroll=1 if a.dtype is DType.FLOAT16 else params.ku,
        scale=lambda off: load_expr(scales.dtype, "scales", off),
        store=c_off + epilogue.store("c", "c_off", "value"),
        vstore=None if vstore is None else c_off + vstore,
        label=f"BlockQuantMatMul {a} x int{bits}[{n},{k}] blocks of {bs} -> {out}"
              f"{epilogue.label}")
    grid = (-(-n // (LANES * params.nv)), -(-rows // (params.tb * params.mr)))
    args = ((IN, 0), (IN, 1), (IN, 2), (IN, 3), (OUT, 0)) + tuple(
        (IN, i) for i in range(4, len(spec.inputs)))
    kernel = Kernel(name, source, extensions_for([out.dtype]))
    return Lowered((Launch(kernel, grid, (1, 1), args),), tuning=lookup)


# -- the tunable kind, registered beside its params -------------------------------------------
QGEMM_CPU_KIND = register_kind(ParamKind(
    "qgemm_cpu", QgemmCpuParams,
    defaults={"family": {"cpu": DEFAULT_QGEMM_CPU_PARAMS},
              "generic": {"gpu": _SMALL, "other": _SMALL}},
    axes=(("mr", (1, 2, 3, 4, 6, 8)), ("nv", (1, 2, 3)), ("kc", (64, 128, 256, 512)),
          ("tb", (2, 4, 8, 16)), ("ku", (1, 2, 4))),
    own=lambda p, t, itemsize: p.violations(itemsize), rules=cpu_gemm_rules(),
))
