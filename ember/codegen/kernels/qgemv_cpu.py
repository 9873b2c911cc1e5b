"""BlockQuantMatMul: a @ dequantized(W).T with MatMulNBits' 4- or 8-bit weights in blocks.

For one row of A (decoding one token) the product reads each weight once: it is bound by
how fast W streams from memory, and 4-bit weights stream 8x faster than float32 ones, so
the unpacking must cost next to nothing. The weights stay packed in device memory and are
unpacked in registers (qgemv_cpu.cl.j2): 32 bytes of W as 8 uint lanes, each value turned
into an exact float (q - zero) by masking it in place inside the bits of 2^23 and
subtracting, multiplied into float accumulators along K; the lanes' order of K is matched
by a copy of A that a small first kernel writes ("prep", A scaled by the powers of two the
in-place values carry). The zero point is subtracted per value, so the result keeps the
float32 accumulation bound of the reference (not the looser one of folding the zero point
into a sum of A). More rows of A (prefill) run the same loop over MR rows per work-item,
unpacking W once per MR rows; that re-reads A for every column and stays slower than the
float32 GEMM from 16 rows on, so on CPUs qgemm_cpu.py's panel GEMM takes prefill (its
builder of the op calls `build_block_quant_matmul` for the rest).

Two tunable kinds share `QgemvParams`: "qgemv" (one row of A) and "qgemm" (more rows).
The kernels are plain OpenCL with work-groups of one work-item, so they also run on GPUs,
unoptimized there. A and the scales may be float32 or float16 (read with vload_half; the
output goes through the epilogue's store in A's dtype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ember.codegen.csrc import extensions_for, half_load, index_type, load_expr
from ember.codegen.families import Target
from ember.codegen.kernels.epilogue import epilogue_code
from ember.codegen.params import (
    Checked,
    ParamKind,
    accumulators_fit,
    params_for,
    register_kind,
    tuning_key,
)
from ember.codegen.render import kernel_name, render
from ember.codegen.types import IN, OUT, TMP, Kernel, Launch, Lowered, NodeSpec
from ember.ir import DType

__all__ = [
    "DEFAULT_QGEMM_PARAMS",
    "DEFAULT_QGEMV_PARAMS",
    "QgemvParams",
    "QuantLayout",
    "build_block_quant_matmul",
]

LANES = 8  # float lanes of one accumulator (and uint lanes of one 32-byte chunk of W)
CHUNK_BYTES = 32
MAGIC = 0x4B000000  # the bits of the float 2^23: OR-ing an integer below 2^23 into its
# mantissa gives the float 2^23 + integer


@dataclass(frozen=True)
class QgemvParams(Checked):
    """Tunables of qgemv_cpu.cl.j2 (its header says what each one does)."""

    mr: int = 1
    nv: int = 4
    dq: int = 0

    @property
    def vw(self) -> int:
        """Lanes of one accumulator vector (what the register rules count)."""
        return LANES

    def live_vectors(self) -> int:
        """Vectors a work-item holds in its K loop: MR accumulators of the current column,
        MR step sums (DQ = 0), and W's lanes (U and a source) and one value; the columns run
        one at a time, so NV adds none (the zero points and scales are operands that may as
        well stay in memory)."""
        return self.mr * (1 if self.dq else 2) + 4

    def violations(self, itemsize: int = 4) -> list[str]:
        rules = [
            (self.mr >= 1 and self.nv >= 1, "mr >= 1 and nv >= 1: rows of A and outputs"),
            (self.mr * self.nv <= 64, "mr * nv <= 64: the sums wait in a private array"),
            (self.dq in (0, 1), "dq in (0, 1): scale the step sums or each weight"),
        ]
        return [reason for ok, reason in rules if not ok]

    def fitted(self, rows: int, n: int) -> QgemvParams:
        return replace(self, mr=max(1, min(self.mr, rows)), nv=max(1, min(self.nv, n)))


@dataclass(frozen=True)
class Position:
    """Value j of a uint lane: taken from source vector `src` ("v<h>") at bit offset `o`."""

    j: int
    src: str
    o: int
    mask: str  # hex literal: MAGIC | value mask << o
    inv: str  # 2^-o, the factor prep applies to A


@dataclass(frozen=True)
class QuantLayout:
    """How the kernels cut K for `bits`-bit weights in blocks of `bs` (qgemv_cpu.cl.j2's
    header names these): chunks of CK values (32 bytes of W), steps of max(BS, CK) values,
    the vector loop over STEPS whole steps (KD values), the rest of K one value at a time."""

    bits: int
    bs: int
    k: int

    @property
    def npl(self) -> int:
        return 32 // self.bits

    @property
    def ck(self) -> int:
        return LANES * self.npl

    @property
    def nblocks(self) -> int:
        return -(-self.k // self.bs)

    @property
    def lpb(self) -> int:
        return self.bs // self.npl

    @property
    def bps(self) -> int:
        return max(1, LANES // self.lpb)

    @property
    def cps(self) -> int:
        return max(1, self.lpb // LANES)

    @property
    def steps(self) -> int:
        return self.nblocks // self.bps

    @property
    def kd(self) -> int:
        return self.steps * self.cps * self.ck

    @property
    def groups(self) -> int:
        """Groups of 8 blocks whose scales and zero points the kernel reads as vectors."""
        return self.nblocks // LANES if self.steps else 0

    @property
    def group_steps(self) -> int:
        return self.groups * LANES // self.bps

    @property
    def sources(self) -> int:
        """uint vectors each chunk is unpacked from: V_h = (u >> 2 * bits * h) | MAGIC for
        h < NPL / 2, holding value 2h at bit 0 and value 2h + 1 at bit `bits`."""
        return self.npl // 2

    def positions(self) -> tuple[Position, ...]:
        out = []
        for j in range(self.npl):
            o = self.bits * (j % 2)
            mask = MAGIC | (((1 << self.bits) - 1) << o)
            out.append(Position(j, f"v{j // 2}", o, f"0x{mask:08x}", f"{2.0 ** -o!r}f"))
        return tuple(out)


# Measured on the development machine (2 cores, PoCL 3, znver3, shared with other work;
# benchmarks/quant_kernels.py and instruction counts of the compiled loops): one row of A,
# 4 columns per work-item (one at a time, so NV only sets the grid), step sums scaled once
# (DQ = 0: 0.76 instructions per weight at blocks of 32 against 0.87 with DQ = 1). Several
# rows: 4 x 2 with each weight scaled (DQ = 1), within noise of 8 x 1 and 2 x 4 (DQ = 0).
# The small sets fit any vector unit (SSE counts two registers per vector).
DEFAULT_QGEMV_PARAMS = QgemvParams(mr=1, nv=4, dq=0)
DEFAULT_QGEMM_PARAMS = QgemvParams(mr=4, nv=2, dq=1)
_SMALL_QGEMV = QgemvParams(mr=1, nv=2, dq=0)
_SMALL_QGEMM = QgemvParams(mr=2, nv=1, dq=1)


def build_block_quant_matmul(spec: NodeSpec, target: Target) -> Lowered | None:
    """The row-loop lowering (qgemv_cpu.cl.j2): every device, any rows; qgemm_cpu's
    builder of the op calls it except for prefill on CPUs."""
    a, _, scales, _ = spec.inputs[:4]
    out = spec.outputs[0]
    if a.dtype not in (DType.FLOAT32, DType.FLOAT16):
        return None
    if out.size == 0:
        return Lowered(())
    attrs = spec.attrs
    bits, bs, k, n = attrs["bits"], attrs["block_size"], attrs["k"], attrs["n"]
    rows = math.prod(a.shape[:-1])
    idx = index_type(*(t.size for t in (*spec.inputs, out)), rows * k)
    epilogue = epilogue_code(attrs["epilogue"], spec.inputs[4:], out, a.dtype, idx)
    if epilogue is None:
        return None
    kind = "qgemv" if rows == 1 else "qgemm"
    lookup = params_for(kind, tuning_key(spec), target)
    params = lookup.params.fitted(rows, n)
    layout = QuantLayout(bits, bs, k)
    a_type = a.dtype.cl_name
    prep_decl = ("__global const float* restrict ap",) if layout.steps else ()
    decls = (f"__global const {a_type}* restrict a", *prep_decl,
             "__global const uchar* restrict w",
             f"__global const {scales.dtype.cl_name}* restrict scales",
             "__global const uchar* restrict zeros",
             f"__global {out.dtype.cl_name}* restrict c", *epilogue.declarations)
    name = kernel_name("qgemv", spec.inputs, out, attrs.key(), params)
    values = {
        "p": params, "bits": bits, "bs": bs, "bpb": bs * bits // 8, "nblocks": layout.nblocks,
        "k": k, "n": n, "rows": rows, "idx": idx, "a_type": a_type, "npl": layout.npl,
        "ck": layout.ck, "ka": layout.kd, "kd": layout.kd, "steps": layout.steps,
        "groups": layout.groups, "group_steps": layout.group_steps, "bps": layout.bps,
        "cps": layout.cps, "lpb": layout.lpb, "sources": layout.sources,
        "positions": layout.positions(),
        "offsets": sorted({pos.o for pos in layout.positions()}),
        "label": f"BlockQuantMatMul {a} x int{bits}[{n},{k}] blocks of {bs} -> {out}"
                 f"{epilogue.label}"}
    source = render(
        "qgemv_cpu.cl.j2", kind="main", name=name, params=decls,
        scale=lambda off: load_expr(scales.dtype, "scales", off),
        scale8=lambda off: (half_load(LANES, f"scales + {off}") if scales.dtype is DType.FLOAT16
                            else f"*(const __global {name}_f8*)(scales + {off})"),
        store=f"const {idx} c_off = gm * {n} + gn;\n" + epilogue.store("c", "c_off", "value"),
        **values)
    extensions = extensions_for([out.dtype])
    kernel = Kernel(name, source, extensions)
    grid = (-(-n // params.nv), -(-rows // params.mr))
    prep_arg = ((TMP, 0),) if layout.steps else ()
    args = ((IN, 0), *prep_arg, (IN, 1), (IN, 2), (IN, 3), (OUT, 0)) + tuple(
        (IN, i) for i in range(4, len(spec.inputs)))
    main = Launch(kernel, grid, (1, 1), args)
    if not layout.steps:
        return Lowered((main,), tuning=lookup)
    prep_name = name + "_a"
    prep = Kernel(prep_name, render("qgemv_cpu.cl.j2", kind="prep", name=prep_name,
                                    **values), extensions)
    prep_launch = Launch(prep, (layout.steps * layout.cps, rows), (1, 1), ((IN, 0), (TMP, 0)))
    return Lowered((prep_launch, main), temps=(rows * layout.kd * 4,), tuning=lookup)


# -- the tunable kinds, registered beside their params -------------------------------------
# Two of `live_vectors` (a W lane and a value) are the two the rule keeps free.
_RULES = (accumulators_fit("(mr * (2 - dq) + 2)", lambda p: p.live_vectors() - 2),)
_AXES = (("mr", (1, 2, 3, 4, 6, 8)), ("nv", (1, 2, 3, 4, 6, 8)), ("dq", (0, 1)))
QGEMV_KIND = register_kind(ParamKind(
    "qgemv", QgemvParams,
    defaults={"family": {"cpu": DEFAULT_QGEMV_PARAMS},
              "generic": {"gpu": _SMALL_QGEMV, "other": _SMALL_QGEMV}},
    axes=(("mr", (1,)), ("nv", (1, 2, 3, 4, 6, 8, 12)), ("dq", (0, 1))),
    own=lambda p, t, itemsize: p.violations(itemsize), rules=_RULES,
))
QGEMM_KIND = register_kind(ParamKind(
    "qgemm", QgemvParams,
    defaults={"family": {"cpu": DEFAULT_QGEMM_PARAMS},
              "generic": {"gpu": _SMALL_QGEMM, "other": _SMALL_QGEMM}},
    axes=_AXES, own=lambda p, t, itemsize: p.violations(itemsize), rules=_RULES,
))
