"""Depthwise 2-D convolution for CPU OpenCL devices (PoCL): rows of output as vectors.

conv_direct.cl.j2 computes one output element per work-item with a bounds check per tap,
about 1 GFLOP/s on PoCL. Here a work-item computes whole output rows of one (image,
channel): a row is cut into chunks of NV vectors of VW lanes held in registers, and every
tap (ky, kx) adds weight * (input vector) to each accumulator, written `a * b + c`
(contracted to FMA) with vectors read through an under-aligned vector type, since PoCL calls
vloadN and fma out of line (gemm_cpu.py found the same; min() too).

Padding costs nothing in the inner loop: OW, the stride, the pads and the dilation are
compile-time constants, so which lanes of which tap read inside the input row is known when
the kernel is generated (`plan_row`). Each (vector, kx) tap becomes one of
- a plain vector load (every lane valid, stride 1);
- a window load of L <= 16 consecutive elements inside the row and a swizzle that picks each
  lane's element (stride 2 takes every other one); lanes in the padding are cleared by a bit
  mask (0 * x would turn inf into NaN);
- lane-by-lane scalar loads (windows longer than 16 elements, rows shorter than the window).
Chunks whose taps are the same relative to the chunk's start (the interior) share one
run-time loop; the others (the edges) are peeled, each with its own code. Rows of the kernel
window that fall outside the image are skipped by one branch per output row and ky. With
stride 2, accumulators hold their columns in the order one shuffle produces (_LANE_ORDERS).

Each chunk is then stored element by element through the caller's store statement (a fused
epilogue: bias, activation, residual, a cast), so every epilogue EpilogueCode renders works.

Measured on the development machine (2 cores, PoCL 3 / LLVM 14 compiling AVX2
# code for znver3), the 3x3
convolutions of mobilenetv2_mini run at 11-45 GFLOP/s (launch-bound below 10 us; conv_direct:
about 1-2), and 112x112 or 56x56 images at 35-90 GFLOP/s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ember.codegen.csrc import extensions_for, half_load
from ember.codegen.kernels.epilogue import EpilogueCode
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.render import kernel_name, render
from ember.codegen.params import Checked, ParamKind, accumulators_fit, register_kind
from ember.ir import DType
from ember.ir.ops.linalg import ConvGeometry

__all__ = [
    "DepthwiseParams", "DEFAULT_DEPTHWISE_PARAMS", "Tap", "Segment",
    "depthwise_supported", "depthwise_cpu_lowered", "plan_row", "row_blocks", "TapCode",
]

# Vector lengths OpenCL C has (1 stands for a scalar).
_LENGTHS = (1, 2, 4, 8, 16)
_HEX = "0123456789abcdef"


@dataclass(frozen=True)
class DepthwiseParams(Checked):
    """Tunables of conv_depthwise.cl.j2 (its header says what each does).

    vw: lanes per vector before fitting (1, 2, 4, 8 or 16); nv: vectors per chunk (>= 1);
    rows: output rows per work-item (0: chosen from the problem size); unroll_ky: kernels
    of at most this many rows have their ky loop unrolled (weights in registers), taller
    ones loop over ky at run time (a KH-th of the code, as fast from 5x5 on)."""

    vw: int = 8
    nv: int = 4
    rows: int = 0
    unroll_ky: int = 3

    def violations(self) -> list[str]:
        rules = [
            (self.vw in _LENGTHS, "vw in (1, 2, 4, 8, 16): OpenCL vector widths"),
            (1 <= self.nv <= 16, "1 <= nv <= 16: the accumulators must fit the registers"),
            (self.rows >= 0, "rows >= 0: output rows per work-item (0: automatic)"),
            (self.unroll_ky >= 0, "unroll_ky >= 0: the tallest kernel unrolled over ky"),
        ]
        return [reason for ok, reason in rules if not ok]



# Measured best on the development machine (2 cores, PoCL 3 / LLVM 14 compiling AVX2
# code for znver3): 8 float
# lanes (one 256-bit register) and 4 accumulators per chunk leave registers for the 9 weights
# of a 3x3 kernel (nv = 6 or vw = 16 ran 2x slower on 112-wide rows, nv = 2 up to 30% slower
# with 5x5 and 7x7); whole channels per work-item (one row each: 2x slower, work-group
# overhead); ky unrolled for 3x3 (10-15% faster), looped from 5x5 on (same speed, compiles
# in about half the time).
DEFAULT_DEPTHWISE_PARAMS = DepthwiseParams(vw=8, nv=4, rows=0, unroll_ky=3)

# Work-items to aim for when the rows of one channel are split between work-items.
_TARGET_ITEMS = 64




@dataclass(frozen=True)
class Tap:
    """How one vector of one kernel column (kx) is read, relative to its chunk.

    `rel`: where the window of `length` elements starts, in elements from the chunk's
    input base (first output column * stride); `lanes`: per lane, its element in the window
    or None for a zero (padding, or a lane past the row's end). length 0: scalar loads, and
    `lanes` holds each lane's own offset from the chunk's input base."""

    rel: int
    length: int
    lanes: tuple[int | None, ...]


@dataclass(frozen=True)
class Segment:
    """Chunks first..last-1 of a row, which all read through the same taps (taps[j][kx])."""

    first: int
    last: int
    taps: tuple[tuple[Tap | None, ...], ...]


def _window(valid: list[tuple[int, int]], vw: int, width: int, base: int,
            stride: int) -> Tap | None:
    """The tap of one vector: `valid` holds (lane, input column) of the lanes that read;
    `base` is the chunk's input base. Windows start at base + a multiple of the stride
    where they can, so that the taps of several kx share loads (stride 2: x[2ox - 1] is the
    odd half of the window at 2ox - 2, x[2ox] and x[2ox + 1] both halves of the one at 2ox)."""
    if not valid:
        return None
    first, last = valid[0][1], valid[-1][1]
    span = last - first + 1
    length = next((n for n in _LENGTHS if n >= span), 0)
    if length == 0 or length > width:
        lanes = [None] * vw
        for lane, ix in valid:
            lanes[lane] = ix
        return Tap(0, 0, tuple(lanes))
    start = first - (first - base) % stride
    if start < 0 or start + length <= last or start + length > width:
        start = min(max(first, 0), width - length)
    lanes = [None] * vw
    for lane, ix in valid:
        lanes[lane] = ix - start
    return Tap(start, length, tuple(lanes))


def plan_row(g: ConvGeometry, vw: int, nv: int) -> tuple[Segment, ...]:
    """The chunks of one output row, grouped into segments of identical relative taps."""
    ow, iw = g.out_spatial[1], g.in_spatial[1]
    sw, dw, pl = g.strides[1], g.dilations[1], g.pads_begin[1]
    cw = vw * nv
    plans: list[tuple[tuple[Tap | None, ...], ...]] = []
    for c in range(-(-ow // cw)):
        base = c * cw * sw  # the chunk's input base: taps are relative to it
        vectors = []
        for j in range(min(nv, -(-(ow - c * cw) // vw))):
            taps = []
            for kx in range(g.kernel[1]):
                valid = []
                for lane in range(vw):
                    ox = c * cw + j * vw + lane
                    ix = ox * sw - pl + kx * dw
                    if ox < ow and 0 <= ix < iw:
                        valid.append((lane, ix))
                tap = _window(valid, vw, iw, base, sw)
                if tap is not None:
                    tap = replace(tap, rel=tap.rel - base) if tap.length else replace(
                        tap, lanes=tuple(None if i is None else i - base for i in tap.lanes))
                taps.append(tap)
            vectors.append(tuple(taps))
        plans.append(tuple(vectors))
    segments: list[Segment] = []
    for c, plan in enumerate(plans):
        if segments and segments[-1].taps == plan:
            segments[-1] = replace(segments[-1], last=c + 1)
        else:
            segments.append(Segment(c, c + 1, plan))
    return tuple(segments)


# Accumulator lane orders: lane l of an accumulator holds output column ox0 + order[l]. With
# stride 2 and 8 float lanes, the natural order costs two shuffles per tap (vshufps picks the
# even elements of each 128-bit half, vpermpd puts the halves in order); accumulating in
# vshufps's own order (0, 1, 4, 5, 2, 3, 6, 7) leaves one, and the chunk's store undoes it.
_LANE_ORDERS = {(2, 8, "float"): (0, 1, 4, 5, 2, 3, 6, 7)}


class TapCode:
    """C text of the taps: loads through under-aligned vector types, swizzles, zeros."""

    def __init__(self, name: str, dtype: DType, acc: str, vw: int, stride: int) -> None:
        self.name, self.dtype, self.acc, self.vw, self.stride = name, dtype, acc, vw, stride
        self.itemsize = 8 if acc == "double" else 4
        self.lengths: set[int] = {vw}
        self.order = _LANE_ORDERS.get((stride, vw, acc), tuple(range(vw)))

    def vtype(self, n: int) -> str:
        return self.acc if n == 1 else f"{self.acc}{n}"

    def utype(self, n: int) -> str:
        """The under-aligned vector typedef of n lanes (declared in the template)."""
        self.lengths.add(n)
        return f"{self.name}_v{n}"

    def typedefs(self) -> list[str]:
        return [f"typedef {self.vtype(n)} __attribute__((aligned({self.itemsize}))) "
                f"{self.name}_v{n};" for n in sorted(self.lengths) if n > 1]

    @property
    def unorder(self) -> str:
        """The swizzle that puts an accumulator's lanes back in column order ("" if they are)."""
        if self.order == tuple(range(self.vw)):
            return ""
        return ".s" + "".join(_HEX[self.order.index(k)] for k in range(self.vw))

    def _load(self, n: int, offset: str) -> str:
        half = self.dtype is DType.FLOAT16
        if n == 1:
            return f"vload_half({offset}, xr)" if half else f"xr[{offset}]"
        if half:
            return half_load(n, f"xr + ({offset})")
        return f"*(const __global {self.utype(n)}*)(xr + ({offset}))"

    def _vector(self, parts: list[str]) -> str:
        return parts[0] if self.vw == 1 else f"({self.vtype(self.vw)})({', '.join(parts)})"

    def render_taps(self, segments: Sequence[Segment]) -> list[list[list[str | None]]]:
        """(definition, lane vector) per segment, vector and kx: rendered before the
        template, so that the typedefs of every window length used are known."""
        return [[[None if tap is None else self.expr(tap) for tap in vector]
                 for vector in seg.taps] for seg in segments]

    def expr(self, tap: Tap) -> tuple[str, str]:
        """(statement defining `v` or "", expression of the lane vector in lane order)."""
        zero = f"({self.acc})0"
        lanes = [tap.lanes[k] for k in self.order]
        if tap.length == 0:
            return "", self._vector([zero if i is None else self._load(1, str(i))
                                     for i in lanes])
        load = self._load(tap.length, str(tap.rel))
        if lanes == list(range(self.vw)) and tap.length == self.vw:
            return "", load
        define = f"const {self.vtype(tap.length)} v = {load};"
        if tap.length == 1 or self.vw == 1:
            return define, self._vector([zero if i is None else "v" if tap.length == 1
                                         else f"v.s{_HEX[i]}" for i in lanes])
        if None not in lanes:
            return define, "v.s" + "".join(_HEX[i] for i in lanes)
        # Padding lanes: swizzle as if the row went on (clamped into the window), then clear
        # them with a bit mask: one shuffle and one AND, where lane-by-lane inserts of zeros
        # compiled to a chain of scalar loads and blends (and 0 * x would keep NaN and inf).
        lane0, index0 = next((k, i) for k, i in enumerate(tap.lanes) if i is not None)
        pattern = [min(max(index0 + (k - lane0) * self.stride, 0), tap.length - 1)
                   if i is None else i for k, i in enumerate(tap.lanes)]
        bits = "ulong" if self.acc == "double" else "uint"
        mask = ", ".join("0" if i is None else f"({bits})-1" for i in lanes)
        swizzle = "v.s" + "".join(_HEX[pattern[k]] for k in self.order)
        return define, (f"as_{self.vtype(self.vw)}(as_{bits}{self.vw}({swizzle}) & "
                        f"({bits}{self.vw})({mask}))")


def _fit(params: DepthwiseParams, g: ConvGeometry, acc: str) -> tuple[int, int]:
    """(vector lanes, vectors per chunk) for this problem: a lane window (vw - 1) * stride
    + 1 of at most 16 elements, at most a 256-bit register for double, no wider than OW."""
    ow, sw = g.out_spatial[1], g.strides[1]
    vw = params.vw if acc != "double" else min(params.vw, 4)
    while vw > 1 and ((vw - 1) * sw + 1 > 16 or vw // 2 >= ow):
        vw //= 2
    nv = max(1, min(params.nv, -(-ow // vw)))
    return vw, nv


def depthwise_supported(g: ConvGeometry) -> bool:
    """2-D convolutions whose groups read one input channel each."""
    return g.rank == 2 and g.cin_per_group == 1 and math.prod(g.out_shape) > 0


def row_blocks(rows: int, oh: int, others: int) -> tuple[int, int]:
    """(output rows per work-item, blocks of rows per image) for `oh` output rows: `rows`
    when given, else whole images per work-item unless the `others` work-items (channels x
    batch) are too few to keep the device busy."""
    if rows == 0:
        blocks = min(oh, max(1, -(-_TARGET_ITEMS // others)))
        rows = -(-oh // blocks)
    return rows, -(-oh // rows)


def depthwise_cpu_lowered(spec: NodeSpec, g: ConvGeometry, values: dict[str, Any],
                          params: DepthwiseParams | None = None) -> Lowered | None:
    """The CPU depthwise kernel of a Conv (`values`: conv.py's `_common(spec, g)`), or None
    where it does not apply (not 2-D, groups of several input channels, not float). The
    output dtype is the epilogue's (the store converts)."""
    dtype = spec.inputs[0].dtype
    if not depthwise_supported(g) or not dtype.is_float:
        return None
    params = params or DEFAULT_DEPTHWISE_PARAMS
    params.validate()
    acc: str = values["acc"]
    vw, nv = _fit(params, g, acc)
    oh = g.out_spatial[0]
    rows, blocks = row_blocks(params.rows, oh, g.batch * g.out_channels)
    ky_loop = g.kernel[0] > params.unroll_ky
    epilogue: EpilogueCode = values["epilogue"]
    name = kernel_name("conv_dw_cpu", spec.inputs, spec.outputs, spec.attrs.key(), vw, nv, rows,
                       ky_loop)
    code = TapCode(name, dtype, acc, vw, g.strides[1])
    segments = plan_row(g, vw, nv)
    kh, kw = g.kernel
    ih, iw = g.in_spatial
    sh, dh, pt = g.strides[0], g.dilations[0], g.pads_begin[0]
    # ky whose input row can fall outside the image for some output row: those get a branch
    row_checked = [not all(0 <= oy * sh - pt + ky * dh < ih for oy in range(oh))
                   for ky in range(kh)]
    # (definition of v or "", lane vector) per segment, vector and kx; rendered before the
    # template so that the typedefs of every window length used are known
    taps = code.render_taps(segments)
    has_bias: bool = values["has_bias"]
    source = render(
        "conv_depthwise.cl.j2", name=name, vw=vw, nv=nv, cw=vw * nv, rows=rows,
        chunks=-(-g.out_spatial[1] // (vw * nv)), segments=segments, taps=taps,
        row_checked=row_checked, ky_loop=ky_loop, vt=code.vtype(vw), vu=code.utype(vw),
        typedefs=code.typedefs(), unorder=code.unorder,
        kh=kh, kw=kw, ih=ih, iw=iw, oh=oh, ow=g.out_spatial[1], sh=sh, sw=g.strides[1],
        dh=dh, pt=pt, store_y=epilogue.store, **{k: values[k] for k in (
            "cin", "cout", "cog", "idx", "x_ptr", "y_ptr", "extra_params", "label",
            "load_x_dtype", "acc")}, has_bias=has_bias)
    kernel = Kernel(name, source, extensions_for([dtype, spec.outputs[0].dtype]))
    args = tuple((IN, i) for i in range(len(spec.inputs))) + ((OUT, 0),)
    return Lowered((Launch(kernel, (blocks, g.out_channels, g.batch), (1, 1, 1), args),))


# -- the tunable kind, registered beside its params ----------------------------------------
DEPTHWISE_KIND = register_kind(ParamKind(
    "depthwise", DepthwiseParams,
    defaults={"generic": dict.fromkeys(("gpu", "other"), DEFAULT_DEPTHWISE_PARAMS)},
    axes=(("vw", (4, 8, 16)), ("nv", (1, 2, 4, 6)), ("rows", (0, 1, 4)),
          ("unroll_ky", (0, 3, 7))),
    own=lambda p, t, itemsize: p.violations(), rules=(accumulators_fit("nv", lambda p: p.nv),),
))
