"""Direct 2-D convolution for CPU OpenCL devices when each group has few input channels (an
RGB stem: 3 channels, 7x7, stride 2): rows of output as vectors, several output channels
per work-item.

The register-tiled GEMM of gemm_cpu.py gathers its A operand per kernel position and then
loops over the input channels of the group; with 3 of them the gather costs as much as the
products (about 25 GFLOP/s on the 3->16 7x7 stem, against about 50 on 16->16 3x3 convs).
Here a work-item holds OCB output channels x NV vectors of VW output columns in registers;
every input vector it reads (one tap: input channel, ky, kx) feeds OCB accumulators. The
input rows are read as in conv_depthwise.py, whose row planning this module reuses: which
lanes of which tap read inside the row is decided when the kernel is generated (`plan_row`),
so the inner loops hold no bounds checks, and input rows outside the image are skipped.
The same kernel also beats the GEMM, by less, on convs of up to 16 input channels per group
whose output rows are wide (see SMALL_CIN below for the measurements).

`conv_rows_lowered` applies to float 2-D convs with few input channels per group
(`conv_rows_supported`: up to 4, or up to 16 on rows of 16 outputs; conv.py sends
such convs here on CPU devices); the stored result goes through the epilogue's scalar store,
so every fused epilogue works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ember.codegen.kernels.conv_depthwise import TapCode, plan_row, row_blocks
from ember.codegen.csrc import extensions_for
from ember.codegen.kernels.epilogue import EpilogueCode
from ember.codegen.kernels.gemm_cpu import is_pointwise
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.render import kernel_name, render
from ember.codegen.params import Checked, ParamKind, accumulators_fit, register_kind
from ember.ir.ops.linalg import ConvGeometry

__all__ = ["ConvRowsParams", "DEFAULT_CONV_ROWS_PARAMS", "SMALL_CIN", "MEDIUM_CIN",
           "MEDIUM_MIN_WIDTH", "conv_rows_supported", "conv_rows_lowered"]

# Input channels per group up to which the direct kernel beats the CPU GEMM (packed W),
# measured on the development machine (2 cores, AVX2, PoCL 3 / LLVM 14): 2-4x on RGB stems
# (3->16 7x7/2 at 64x64, 3->64 7x7/2 at 224x224), so always; 1.3-2x on 3x3 convs of 8 to
# 16 input channels with output rows of two vectors of 8 or more (16->16 at 16x16, 16->64
# at 32x32, 16->16 5x5 at 64x64), so there (rows of one vector: a tie, 16->32 /2 to 8x8);
# from 32 channels on the GEMM is as fast or faster (1.5x on 64->64 at 4x4).
SMALL_CIN = 4
MEDIUM_CIN = 16
MEDIUM_MIN_WIDTH = 16


@dataclass(frozen=True)
class ConvRowsParams(Checked):
    """Tunables of conv_rows.cl.j2 (its header says what each does): vw lanes per vector,
    nv vectors per chunk, ocb output channels per work-item (fitted down to a divisor of the
    group's output channels), rows output rows per work-item (0: chosen from the size)."""

    vw: int = 8
    nv: int = 2
    ocb: int = 4
    rows: int = 0

    def violations(self) -> list[str]:
        rules = [
            (self.vw in (1, 2, 4, 8, 16), "vw in (1, 2, 4, 8, 16): OpenCL vector widths"),
            (self.nv >= 1 and self.ocb >= 1, "nv >= 1 and ocb >= 1: a work-item computes"),
            (self.nv * self.ocb <= 16,
             "nv * ocb <= 16: the accumulators must fit the vector registers"),
            (self.rows >= 0, "rows >= 0: output rows per work-item (0: automatic)"),
        ]
        return [reason for ok, reason in rules if not ok]



# Measured best on the development machine (2 cores, AVX2, PoCL 3 / LLVM 14) on the stem
# 3->16 7x7/2 at 64x64: 8 lanes, 2 vectors, 4 output channels: 8 accumulators, registers
# left for the tap vectors and the broadcast weights.
DEFAULT_CONV_ROWS_PARAMS = ConvRowsParams(vw=8, nv=2, ocb=4, rows=0)




def conv_rows_supported(g: ConvGeometry) -> bool:
    """2-D convolutions (not pointwise: conv1x1_problem's plain product is as fast) whose
    groups read at most SMALL_CIN input channels, or at most MEDIUM_CIN with output rows of
    at least MEDIUM_MIN_WIDTH."""
    if g.rank != 2 or is_pointwise(g) or g.batch * g.out_channels == 0:
        return False
    cig = g.cin_per_group
    return 1 <= cig <= SMALL_CIN or (
        cig <= MEDIUM_CIN and g.out_spatial[1] >= MEDIUM_MIN_WIDTH)


def _fit(params: ConvRowsParams, g: ConvGeometry, acc: str) -> tuple[int, int, int]:
    """(vector lanes, vectors per chunk, output channels per work-item) for this problem: a
    lane window (vw - 1) * stride + 1 of at most 16 elements, at most a 256-bit register for
    double, no wider than OW; ocb a divisor of the group's output channels."""
    ow, sw = g.out_spatial[1], g.strides[1]
    vw = params.vw if acc != "double" else min(params.vw, 4)
    while vw > 1 and ((vw - 1) * sw + 1 > 16 or vw // 2 >= ow):
        vw //= 2
    nv = max(1, min(params.nv, -(-ow // vw)))
    ocb = min(params.ocb, g.cout_per_group)
    while g.cout_per_group % ocb:
        ocb -= 1
    return vw, nv, ocb


def conv_rows_lowered(spec: NodeSpec, g: ConvGeometry, values: dict[str, Any],
                      params: ConvRowsParams | None = None) -> Lowered | None:
    """The direct CPU kernel of a Conv (`values`: conv.py's `_common(spec, g)`), or None
    where it does not apply (`conv_rows_supported`, or not float)."""
    dtype = spec.inputs[0].dtype
    if not conv_rows_supported(g) or not dtype.is_float:
        return None
    params = params or DEFAULT_CONV_ROWS_PARAMS
    params.validate()
    acc: str = values["acc"]
    vw, nv, ocb = _fit(params, g, acc)
    oh = g.out_spatial[0]
    oc_blocks = g.out_channels // ocb
    rows, blocks = row_blocks(params.rows, oh, g.batch * oc_blocks)
    epilogue: EpilogueCode = values["epilogue"]
    name = kernel_name("conv_rows", spec.inputs, spec.outputs, spec.attrs.key(), vw, nv, ocb,
                       rows)
    code = TapCode(name, dtype, acc, vw, g.strides[1])
    segments = plan_row(g, vw, nv)
    kh, kw = g.kernel
    ih, iw = g.in_spatial
    sh, dh, pt = g.strides[0], g.dilations[0], g.pads_begin[0]
    # a branch per (output row, ky) only where an input row can fall outside the image
    row_checked = any(not 0 <= oy * sh - pt + ky * dh < ih for oy in range(oh)
                      for ky in range(kh))
    taps = code.render_taps(segments)
    source = render(
        "conv_rows.cl.j2", name=name, vw=vw, nv=nv, ocb=ocb, cw=vw * nv, rows=rows,
        blocks=blocks, oc_blocks=oc_blocks, chunks=-(-g.out_spatial[1] // (vw * nv)),
        segments=segments, taps=taps, row_checked=row_checked, vt=code.vtype(vw),
        vu=code.utype(vw), typedefs=code.typedefs(), unorder=code.unorder,
        kh=kh, kw=kw, ih=ih, iw=iw, oh=oh, ow=g.out_spatial[1], sh=sh, sw=g.strides[1],
        dh=dh, pt=pt, store_y=epilogue.store, **{k: values[k] for k in (
            "cin", "cout", "cig", "cog", "group", "idx", "x_ptr", "y_ptr", "extra_params",
            "label", "load_x_dtype", "acc", "has_bias")})
    kernel = Kernel(name, source, extensions_for([dtype, spec.outputs[0].dtype]))
    args = tuple((IN, i) for i in range(len(spec.inputs))) + ((OUT, 0),)
    return Lowered((Launch(kernel, (blocks, oc_blocks, g.batch), (1, 1, 1), args),))


# -- the tunable kind, registered beside its params ----------------------------------------
CONV_ROWS_KIND = register_kind(ParamKind(
    "conv_rows", ConvRowsParams,
    defaults={"generic": dict.fromkeys(("gpu", "other"), DEFAULT_CONV_ROWS_PARAMS)},
    axes=(("vw", (4, 8, 16)), ("nv", (1, 2, 3, 4)), ("ocb", (1, 2, 4, 8)), ("rows", (0, 1))),
    own=lambda p, t, itemsize: p.violations(), rules=(accumulators_fit("nv * ocb", lambda p: p.nv * p.ocb),),
))
