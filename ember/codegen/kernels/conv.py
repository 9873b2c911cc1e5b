"""Conv and ConvTranspose kernels, for any number of spatial axes (1-D, 2-D and 3-D alike).

Both are implicit GEMMs on the tiling of tiled_gemm.cl.j2 (GemmParams from matmul.py): the
weight of one group is the A matrix, and the B tile is gathered from X while it is loaded.
Convolutions whose groups have one input channel (depthwise) use a direct kernel instead,
since their GEMM would have a single row of K. On CPU devices, convolutions use the
register-tiled strategy of gemm_cpu.py, 2-D depthwise ones the row-vector kernel of
conv_depthwise.py, and 2-D ones with a few input channels per group (an RGB stem) the
row-vector kernel of conv_rows.py, which reads each input vector once for several output
channels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ember.codegen.csrc import (
    compute_type, contiguous_strides, ctype_bytes, extensions_for, index_type, load_expr,
)
from ember.codegen.kernels.conv_depthwise import depthwise_cpu_lowered
from ember.codegen.kernels.conv_rows import conv_rows_lowered, conv_rows_supported
from ember.codegen.kernels.epilogue import EpilogueCode, epilogue_code, vector_load
from ember.codegen.families import Target
from ember.codegen.kernels.gemm_cpu import (
    CpuGemmParams, conv1x1_problem, conv_problem, cpu_gemm_launch, is_pointwise,
    pack_conv_weight, render_cpu_gemm, store_width,
)
from ember.codegen.kernels.gemv_cpu import conv_gemv, conv_gemv_ok
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.kernels.matmul import gemm_launch, gemm_params
from ember.codegen.render import kernel_name, render
from ember.codegen.params import Lookup, params_for, tuning_key
from ember.ir import DType
from ember.ir.ops.fused import epilogue_inputs
from ember.ir.ops.linalg import ConvGeometry, conv_geometry

__all__ = ["build_conv", "build_conv_transpose"]


def _common(spec: NodeSpec, g: ConvGeometry) -> dict[str, Any] | None:
    """Template values shared by the three convolution templates (None: the epilogue has
    no device form)."""
    x = spec.inputs[0]
    dtype = x.dtype
    n_base = _base_inputs(spec)
    idx = index_type(*(t.size for t in (*spec.inputs, *spec.outputs)))
    epilogue = epilogue_code(spec.attrs.get("epilogue"), spec.inputs[n_base:], spec.outputs[0],
                             dtype, idx)
    if epilogue is None:
        return None
    return {
        "rank": g.rank,
        "in_spatial": g.in_spatial,
        "out_spatial": g.out_spatial,
        "kernel": g.kernel,
        "strides": g.strides,
        "dilations": g.dilations,
        "pads_begin": g.pads_begin,
        "group": g.group,
        "cin": g.in_channels,
        "cout": g.out_channels,
        "cig": g.cin_per_group,
        "cog": g.cout_per_group,
        "ksize": math.prod(g.kernel),
        "kdim": g.cin_per_group * math.prod(g.kernel),
        "in_size": math.prod(g.in_spatial),
        "out_size": math.prod(g.out_spatial),
        "in_strides": contiguous_strides(g.in_spatial),
        "k_strides": contiguous_strides(g.kernel),
        "batches": g.batch * g.group,
        "has_bias": n_base > 2,
        "acc": compute_type(dtype),
        "idx": idx,
        "x_ptr": dtype.cl_name,
        "y_ptr": spec.outputs[0].dtype.cl_name,
        "extra_params": epilogue.params,
        "load_x_dtype": functools.partial(load_expr, dtype),
        "store_y": functools.partial(epilogue.store, "y"),
        "epilogue": epilogue,
        "label": " ".join(str(t) for t in spec.inputs) + f" -> {spec.outputs[0]}"
                 + epilogue.label,
    }


def _base_inputs(spec: NodeSpec) -> int:
    """X, W and the optional bias: the inputs before the epilogue's."""
    return len(spec.inputs) - epilogue_inputs(spec.attrs.get("epilogue"))


def _args(spec: NodeSpec) -> tuple[tuple[str, int], ...]:
    return tuple((IN, i) for i in range(len(spec.inputs))) + ((OUT, 0),)




def _gemm_lowered(kind: str, template: str, spec: NodeSpec, g: ConvGeometry,
                  target: Target) -> Lowered | None:
    values = _common(spec, g)
    if values is None:
        return None
    itemsize = ctype_bytes(values["acc"])
    lookup = params_for("gemm", tuning_key(spec), target, itemsize)
    params = gemm_params(target, values["cog"], values["out_size"], values["kdim"], itemsize,
                         lookup.params)
    name = kernel_name(kind, spec.inputs, spec.outputs, spec.attrs.key(), params)
    source = render(template, name=name, p=params, **values)
    kernel = Kernel(name, source, extensions_for([spec.inputs[0].dtype, spec.outputs[0].dtype]))
    global_size, local_size = gemm_launch(params, values["cog"], values["out_size"],
                                          values["batches"])
    return Lowered((Launch(kernel, global_size, local_size, _args(spec)),), tuning=lookup)


def _direct_lowered(spec: NodeSpec, g: ConvGeometry) -> Lowered | None:
    values = _common(spec, g)
    if values is None:
        return None
    total = spec.outputs[0].size
    name = kernel_name("conv_direct", spec.inputs, spec.outputs, spec.attrs.key())
    source = render("conv_direct.cl.j2", name=name, total=total, **values)
    kernel = Kernel(name, source, extensions_for([spec.inputs[0].dtype, spec.outputs[0].dtype]))
    return Lowered((Launch(kernel, (total,), None, _args(spec)),))


@kernel_builder("Conv")
def build_conv(spec: NodeSpec, target: Target) -> Lowered | None:
    g = conv_geometry(spec.inputs[0].shape, spec.inputs[1].shape, spec.attrs)
    if spec.outputs[0].size == 0:
        return Lowered(())
    if g.cin_per_group == 1:
        if target.family.register_tiles:
            lowered = _tuned(depthwise_cpu_lowered, "depthwise", spec, g, target)
            if lowered is not None:
                return lowered
        return _direct_lowered(spec, g)
    x, out = spec.inputs[0], spec.outputs[0]
    if target.family.register_tiles and conv_rows_supported(g) and x.dtype.is_float:
        lowered = _tuned(conv_rows_lowered, "conv_rows", spec, g, target)
        if lowered is not None:
            return lowered
    if target.family.register_tiles and x.dtype.is_float and out.dtype is x.dtype:
        return _cpu_lowered(spec, g, target)
    return _gemm_lowered("conv", "conv.cl.j2", spec, g, target)


def _tuned(strategy: Callable[..., Lowered | None], kind: str, spec: NodeSpec,
           g: ConvGeometry, target: Target) -> Lowered | None:
    """A CPU conv strategy (depthwise, conv_rows) with the parameters of its `kind`: tuned
    on this device, else the default; None where the strategy does not apply."""
    values = _common(spec, g)
    if values is None:
        return None
    lookup = params_for(kind, tuning_key(spec), target)
    lowered = strategy(spec, g, values, lookup.params)
    return None if lowered is None else replace(lowered, tuning=lookup)


def _cpu_gemm_lookup(spec: NodeSpec, target: Target) -> Lookup:
    """The CPU GEMM tunables of a conv product (tuned, else the defaults)."""
    itemsize = 8 if spec.inputs[0].dtype is DType.FLOAT64 else 4
    return params_for("gemm_cpu", tuning_key(spec), target, itemsize)


# Work-items below which an untuned conv GEMM takes register tiles of 4 rows (pixels) instead
# of the default's 6: measured on the development machine (2 cores, AVX2, PoCL 3), 15-30%
# faster on 64->64 at 4x4 (12 -> 16 work-items) and 32->32 at 8x8 (22 -> 32), while 6 rows
# stay ahead on large images (64->64 at 56x56: 2092 work-items).
_SMALL_GRID = 64
_SMALL_GRID_MR = 4


def _small_grid_rows(lookup: Lookup, params: CpuGemmParams, m: int, n: int,
                     batches: int) -> CpuGemmParams:
    """`params` with fewer rows per tile where the default tiling leaves few work-items
    (tuned parameters are kept as they are)."""
    if lookup.level == "device" or params.mr <= _SMALL_GRID_MR:
        return params
    tiles = -(-m // params.mr) * -(-n // params.nr) * batches
    return replace(params, mr=_SMALL_GRID_MR) if tiles < _SMALL_GRID else params


def _cpu_lowered(spec: NodeSpec, g: ConvGeometry, target: Target) -> Lowered | None:
    """The register-tiled CPU strategy (gemm_cpu.py): a pointwise conv is the plain product
    W @ X per image; others gather im2col rows as A, with output channels as vector lanes."""
    values = _common(spec, g)
    if values is None:
        return None
    epilogue: EpilogueCode = values["epilogue"]
    dtype = spec.inputs[0].dtype
    has_bias = values["has_bias"]
    value = f"value + {load_expr(dtype, 'bias', 'oc')}" if has_bias else "value"
    store = epilogue.store("y", "y_off", value)
    if conv_gemv_ok(g):  # one output pixel that sees its whole input: a GEMV (gemv_cpu.py)
        return conv_gemv(spec, g, epilogue, value, values["idx"], _base_inputs(spec), target)
    packed: tuple = ()
    out_size = math.prod(g.out_spatial)
    if is_pointwise(g):
        lookup = _cpu_gemm_lookup(spec, target)
        params = lookup.params.fitted(g.cout_per_group, out_size)
        # vector store lanes: consecutive pixels of one channel (contiguous; one bias)
        vstore = _vector_store(epilogue, params, has_bias, dtype, 0, 1,
                               tuple(range(2, 2 + g.rank)))
        problem = conv1x1_problem(g, dtype, has_bias=has_bias, store=store,
                                  extra_params=epilogue.declarations, idx=values["idx"],
                                  vstore=vstore)
    else:
        lookup = _cpu_gemm_lookup(spec, target)
        params = _small_grid_rows(lookup, lookup.params.fitted(out_size, g.cout_per_group),
                                  out_size, g.cout_per_group, g.batch * g.group)
        pack = 1 in spec.packable
        # vector store lanes: consecutive output channels of one pixel (bias contiguous,
        # the output strided by the pixel count: stored lane by lane)
        vstore = _vector_store(epilogue, params, has_bias, dtype, 1, out_size, (1,))
        problem = conv_problem(g, dtype, params=params, packed_w=pack, has_bias=has_bias,
                               store=store, extra_params=epilogue.declarations,
                               idx=values["idx"], vstore=vstore)
        if pack:  # W packed once at compile time, output channels as aligned vector lanes
            packed = ((1, functools.partial(pack_conv_weight, group=g.group, params=params)),)
    name = kernel_name("conv_cpu", spec.inputs, spec.outputs, spec.attrs.key(), params,
                       bool(packed))
    kernel = Kernel(name, render_cpu_gemm(problem, params, name),
                    extensions_for([dtype, spec.outputs[0].dtype]))
    global_size, local_size = cpu_gemm_launch(problem, params)
    n_base = _base_inputs(spec)
    args = tuple((IN, i) for i in range(n_base)) + ((OUT, 0),) + tuple(
        (IN, i) for i in range(n_base, len(spec.inputs)))
    return Lowered((Launch(kernel, global_size, local_size, args),), packed=packed,
                   tuning=lookup)


def _vector_store(epilogue: EpilogueCode, params: CpuGemmParams, has_bias: bool,
                  dtype: DType, bias_step: int, out_step: int,
                  lane_axes: tuple[int, ...]) -> str | None:
    """The CPU GEMM's vector store of a conv (None: scalar stores only)."""
    width = store_width(params)
    value: str | None = "vvalue"
    if has_bias:
        bias = vector_load(dtype, "bias", "oc", width, bias_step)
        value = None if bias is None else f"vvalue + {bias}"
    if value is None:
        return None
    return epilogue.vector_store("y", "y_off", value, width, out_step, lane_axes)


@kernel_builder("ConvTranspose")
def build_conv_transpose(spec: NodeSpec, target: Target) -> Lowered | None:
    g = conv_geometry(spec.inputs[0].shape, spec.inputs[1].shape, spec.attrs, transpose=True)
    if spec.outputs[0].size == 0:
        return Lowered(())
    return _gemm_lowered("conv_transpose", "conv_transpose.cl.j2", spec, g, target)
