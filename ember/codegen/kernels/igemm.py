"""MatMulInteger and ConvInteger: the kernel builders and their strategy per device.

CPU devices take the pairwise int16 GEMM of igemm_cpu.py. Other devices take the
local-memory tiled GEMM (tiled_gemm.cl.j2, kind "gemm", via matmul.cl.j2 and conv.cl.j2)
with int accumulators, the zero points subtracted as each element is loaded into the tile
(a padded conv tap is left at 0, which is x - x_zero at a padding position). Both run the
node's epilogue in the store, which may change the dtype (int32 product -> float -> ... ->
QuantizeLinear -> int8).
"""

from __future__ import annotations

import functools

from ember.codegen.csrc import broadcast_strides, extensions_for, index_type
from ember.codegen.families import Target
from ember.codegen.kernels.conv import _common as conv_template_values
from ember.codegen.kernels.epilogue import EpilogueCode, epilogue_code
from ember.codegen.kernels.igemm_cpu import igemm_conv_cpu, igemm_matmul_cpu
from ember.codegen.kernels.matmul import gemm_launch, gemm_params
from ember.codegen.params import params_for, tuning_key
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.ir import DType
from ember.ir.ops.linalg import conv_geometry, matmul_dims

__all__ = ["build_matmul_integer", "build_conv_integer"]


def _epilogue(spec: NodeSpec) -> tuple[EpilogueCode | None, str]:
    idx = index_type(*(t.size for t in (*spec.inputs, *spec.outputs)))
    return epilogue_code(spec.attrs["epilogue"], spec.inputs[4:], spec.outputs[0], DType.INT32,
                         idx), idx


def _minus_zero(ptr_type: str, ptr: str, off: str, zero: str) -> str:
    """An operand element read as int with its zero point subtracted."""
    return f"((int)((const __global {ptr_type}*){ptr})[{off}] - (int){zero})"


@kernel_builder("MatMulInteger")
def build_matmul_integer(spec: NodeSpec, target: Target) -> Lowered | None:
    if spec.outputs[0].size == 0:
        return Lowered(())
    epilogue, idx = _epilogue(spec)
    if epilogue is None:
        return None
    if target.family.register_tiles:
        return igemm_matmul_cpu(spec, epilogue, idx, target)
    a, b, az, bz = spec.inputs[:4]
    out = spec.outputs[0]
    dims = matmul_dims(a.shape, b.shape)
    m, n, k = dims.m, dims.n, dims.k
    lookup = params_for("gemm", tuning_key(spec), target, 4)
    params = gemm_params(target, m, n, k, 4, lookup.params)
    batch_axes = [
        {"size": size, "a_stride": sa * m * k, "b_stride": sb * k * n}
        for size, sa, sb in zip(dims.batch, broadcast_strides(dims.a_batch, dims.batch),
                                broadcast_strides(dims.b_batch, dims.batch))
        if size > 1
    ]
    zero_params = (f"__global const {az.dtype.cl_name}* restrict az,",
                   f"__global const {bz.dtype.cl_name}* restrict bz,")
    name = kernel_name("matmul_integer", spec.inputs, out, spec.attrs.key(), params)
    source = render(
        "matmul.cl.j2",
        name=name, p=params, m=m, n=n, k=k, acc="int", idx=idx, trans_a=0, trans_b=0,
        batches=dims.batch_size, batch_shape=dims.batch, batch_axes=batch_axes,
        extra_params=(*zero_params, *epilogue.params),
        a_ptr=a.dtype.cl_name, b_ptr=b.dtype.cl_name, c_ptr=out.dtype.cl_name,
        load_a=_minus_zero(a.dtype.cl_name, "a", f"a_base + gm * {k} + gk",
                           "az[0]" if az.size == 1 else "az[gm]"),
        load_b=_minus_zero(b.dtype.cl_name, "b", f"b_base + gk * {n} + gn",
                           "bz[0]" if bz.size == 1 else "bz[gn]"),
        store=epilogue.store("c", f"c_base + gm * {n} + gn", "value"),
        label=f"MatMulInteger {a} x {b} -> {out}{epilogue.label}",
    )
    kernel = Kernel(name, source, extensions_for([out.dtype]))
    global_size, local_size = gemm_launch(params, m, n, dims.batch_size)
    args = tuple((IN, i) for i in range(len(spec.inputs))) + ((OUT, 0),)
    return Lowered((Launch(kernel, global_size, local_size, args),), tuning=lookup)


@kernel_builder("ConvInteger")
def build_conv_integer(spec: NodeSpec, target: Target) -> Lowered | None:
    x, w, xz, wz = spec.inputs[:4]
    g = conv_geometry(x.shape, w.shape, spec.attrs)
    if spec.outputs[0].size == 0:
        return Lowered(())
    epilogue, idx = _epilogue(spec)
    if epilogue is None:
        return None
    if target.family.register_tiles:
        return igemm_conv_cpu(spec, g, epilogue, idx, target)
    values = conv_template_values(spec, g)
    if values is None:
        return None
    cog = g.cout_per_group

    def load(ptr: str, off: str) -> str:
        if ptr == "w":
            zero = "wz[0]" if wz.size == 1 else f"wz[grp * {cog} + gm]"
            return _minus_zero(w.dtype.cl_name, "w", off, zero)
        return _minus_zero(x.dtype.cl_name, "x", off, "xz[0]")

    values.update(
        acc="int", has_bias=False, epilogue=epilogue, load_x_dtype=load,
        store_y=functools.partial(epilogue.store, "y"),
        extra_params=(f"__global const {xz.dtype.cl_name}* restrict xz,",
                      f"__global const {wz.dtype.cl_name}* restrict wz,", *epilogue.params),
        label=f"ConvInteger {x} * {w} -> {spec.outputs[0]}{epilogue.label}")
    lookup = params_for("gemm", tuning_key(spec), target, 4)
    params = gemm_params(target, cog, values["out_size"], values["kdim"], 4, lookup.params)
    name = kernel_name("conv_integer", spec.inputs, spec.outputs, spec.attrs.key(), params)
    source = render("conv.cl.j2", name=name, p=params, **values)
    kernel = Kernel(name, source, extensions_for([spec.outputs[0].dtype]))
    global_size, local_size = gemm_launch(params, cog, values["out_size"], values["batches"])
    args = tuple((IN, i) for i in range(len(spec.inputs))) + ((OUT, 0),)
    return Lowered((Launch(kernel, global_size, local_size, args),), tuning=lookup)
