"""The local-memory tiled GEMM: its tunables, their constraints, defaults per device family,
and the MatMul kernel builder. Conv and ConvTranspose reuse the same tiling (conv.py).

`GemmParams` is the one place that says what a legal parameter set is; `gemm_params`
picks the family default, falls back to smaller sets when a device cannot take it, and
shrinks tiles along dimensions that are smaller than a tile (a GEMV has M = 1).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, replace

from ember.codegen.csrc import (
    broadcast_strides, compute_type, extensions_for, index_type, load_expr,
)
from ember.codegen.kernels.epilogue import EpilogueCode, epilogue_code
from ember.codegen.families import Target
from ember.codegen.kernels.gemm_cpu import (
    cpu_gemm_launch, matmul_problem, pack_b, render_cpu_gemm, store_width,
)
from ember.codegen.kernels.gemv_cpu import gemv_applies, matmul_gemv
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.params import Checked, ParamKind, gemm_rules, params_for, register_kind, tuning_key
from ember.codegen.render import kernel_name, render
from ember.ir import DType
from ember.ir.ops.linalg import matmul_dims

__all__ = [
    "GemmParams", "DEFAULT_GEMM_PARAMS", "gemm_params", "gemm_launch", "index_type",
    "build_matmul",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GemmParams(Checked):
    """Tunables of tiled_gemm.cl.j2 (see its header for what each one does)."""

    tile_m: int
    tile_n: int
    tile_k: int
    wpt_m: int
    wpt_n: int
    lmem_pad: int = 0

    @property
    def local_m(self) -> int:
        return self.tile_m // self.wpt_m

    @property
    def local_n(self) -> int:
        return self.tile_n // self.wpt_n

    @property
    def threads(self) -> int:
        return self.local_m * self.local_n

    def local_bytes(self, itemsize: int) -> int:
        return self.tile_k * (self.tile_m + self.tile_n + 2 * self.lmem_pad) * itemsize

    def violations(self, target: Target, itemsize: int = 4) -> list[str]:
        """Every constraint this set breaks on `target`, each with its reason."""
        rules = [
            (min(self.tile_m, self.tile_n, self.tile_k, self.wpt_m, self.wpt_n) >= 1,
             "tiles and work per item are >= 1"),
            (self.tile_m % self.wpt_m == 0, "tile_m % wpt_m == 0: integer rows per item"),
            (self.tile_n % self.wpt_n == 0, "tile_n % wpt_n == 0: integer columns per item"),
            (self.lmem_pad in (0, 1), "lmem_pad is 0 or 1"),
            (self.wpt_m * self.wpt_n <= 64,
             "wpt_m * wpt_n <= 64: the register block must not spill"),
            (self.threads <= target.traits.max_work_group_size,
             f"local_m * local_n <= {target.traits.max_work_group_size}: the device's largest "
             f"work-group"),
            (self.local_bytes(itemsize) <= target.traits.local_mem_bytes,
             f"two tiles of {itemsize}-byte words fit in {target.traits.local_mem_bytes} bytes "
             f"of local memory"),
        ]
        return [reason for ok, reason in rules if not ok]


    def fitted(self, m: int, n: int, k: int) -> GemmParams:
        """The same tiling with tiles halved along dimensions shorter than half a tile, so
        that small problems do not launch mostly idle work-items."""
        tile_m, tile_n, tile_k = self.tile_m, self.tile_n, self.tile_k
        while tile_m > 1 and tile_m % 2 == 0 and tile_m // 2 >= m:
            tile_m //= 2
        while tile_n > 1 and tile_n % 2 == 0 and tile_n // 2 >= n:
            tile_n //= 2
        while tile_k > 1 and tile_k % 2 == 0 and tile_k // 2 >= k:
            tile_k //= 2
        return replace(self, tile_m=tile_m, tile_n=tile_n, tile_k=tile_k,
                       wpt_m=math.gcd(self.wpt_m, tile_m), wpt_n=math.gcd(self.wpt_n, tile_n))


# Defaults per family (the TuningDB replaces them per device). GPUs: 16x16 work-items with 4x4 blocks,
# the classic shape for 64-wide tiles. CPU (PoCL runs a work-group as loops over its items):
# 8x8 items with 8x8 blocks measured best of a small sweep, at 1.5-2 GFLOP/s on a 512^3
# product and a 64-channel 3x3 conv (2 cores, PoCL), about what a local-memory kernel reaches on a
# CPU; register-tiled floatN kernels are the way past it.
DEFAULT_GEMM_PARAMS: dict[str, GemmParams] = {
    "nvidia": GemmParams(64, 64, 16, 4, 4, 1),
    "amd-gcn": GemmParams(64, 64, 16, 4, 4, 1),
    "amd-rdna": GemmParams(64, 64, 16, 4, 4, 1),
    "intel-gpu": GemmParams(32, 32, 16, 2, 4, 1),
    "gpu": GemmParams(32, 32, 16, 2, 2, 1),
    "cpu": GemmParams(64, 64, 16, 8, 8, 0),
    "generic": GemmParams(16, 16, 16, 2, 2, 0),
}
# Tried in order when the family default does not fit the device; the last always does.
_FALLBACKS = (GemmParams(16, 16, 16, 2, 2, 0), GemmParams(8, 8, 8, 1, 1, 0),
              GemmParams(1, 1, 1, 1, 1, 0))


def gemm_params(target: Target, m: int, n: int, k: int, itemsize: int,
                first: GemmParams | None = None) -> GemmParams:
    """The tiling for an M x N x K product on `target`: `first` (what `params_for` gave:
    tuned or a default), else the family default; a fallback where it does not fit."""
    if first is None:
        first = DEFAULT_GEMM_PARAMS.get(target.family.name, DEFAULT_GEMM_PARAMS["generic"])
    for params in (first, *_FALLBACKS):
        fitted = params.fitted(m, n, k)
        if not fitted.violations(target, itemsize):
            if params is not first:
                log.debug("gemm params %s do not fit %s; using %s", first,
                          target.traits.name, params)
            return fitted
    raise AssertionError(f"no GEMM tiling fits {target.traits.name}")


def gemm_launch(params: GemmParams, m: int, n: int, batches: int
                ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(global size, local size) of a tiled GEMM kernel."""
    global_size = (-(-n // params.tile_n) * params.local_n,
                   -(-m // params.tile_m) * params.local_m, batches)
    return global_size, (params.local_n, params.local_m, 1)




@kernel_builder("MatMul")
def build_matmul(spec: NodeSpec, target: Target) -> Lowered | None:
    a, b = spec.inputs[:2]
    extras = spec.inputs[2:]
    out = spec.outputs[0]
    if out.dtype is DType.BOOL or out.dtype.cl_name is None:
        return None
    trans_a, trans_b = spec.attrs["trans_a"], spec.attrs["trans_b"]
    dims = matmul_dims(a.shape, b.shape, trans_a, trans_b)
    if out.size == 0:
        return Lowered(())
    m, n, k = dims.m, dims.n, dims.k
    acc = compute_type(a.dtype)
    idx = index_type(*(t.size for t in (*spec.inputs, out)))
    epilogue = epilogue_code(spec.attrs["epilogue"], extras, out, a.dtype, idx)
    if epilogue is None:
        return None
    if target.family.register_tiles and a.dtype.is_float and out.dtype is a.dtype:
        return cpu_matmul(spec, epilogue, idx, target)
    itemsize = 8 if acc in ("double", "long", "ulong") else 4
    lookup = params_for("gemm", tuning_key(spec), target, itemsize)
    params = gemm_params(target, m, n, k, itemsize, lookup.params)
    batch_axes = [
        {"size": size, "a_stride": sa * m * k, "b_stride": sb * k * n}
        for size, sa, sb in zip(dims.batch, broadcast_strides(dims.a_batch, dims.batch),
                                broadcast_strides(dims.b_batch, dims.batch))
        if size > 1
    ]
    a_off = "a_base + gk * {} + gm".format(m) if trans_a else "a_base + gm * {} + gk".format(k)
    b_off = "b_base + gn * {} + gk".format(k) if trans_b else "b_base + gk * {} + gn".format(n)
    name = kernel_name("matmul", spec.inputs, out, spec.attrs.key(), params)
    source = render(
        "matmul.cl.j2",
        name=name, p=params, m=m, n=n, k=k, acc=acc, idx=idx,
        trans_a=trans_a, trans_b=trans_b, batches=dims.batch_size, batch_shape=dims.batch,
        batch_axes=batch_axes, extra_params=epilogue.params,
        a_ptr=a.dtype.cl_name, b_ptr=b.dtype.cl_name, c_ptr=out.dtype.cl_name,
        load_a=load_expr(a.dtype, "a", a_off), load_b=load_expr(b.dtype, "b", b_off),
        store=epilogue.store("c", "c_base + gm * {} + gn".format(n), "value"),
        label=f"{a} x {b} -> {out}{epilogue.label}",
    )
    kernel = Kernel(name, source, extensions_for([a.dtype, out.dtype]))
    global_size, local_size = gemm_launch(params, m, n, dims.batch_size)
    args = tuple((IN, i) for i in range(len(spec.inputs))) + ((OUT, 0),)
    return Lowered((Launch(kernel, global_size, local_size, args),), tuning=lookup)


def cpu_matmul(spec: NodeSpec, epilogue: EpilogueCode, idx: str, target: Target) -> Lowered:
    """The register-tiled CPU strategy (gemm_cpu.py): no local memory, vector rows of B."""
    a, b = spec.inputs[:2]
    out = spec.outputs[0]
    trans_a, trans_b = spec.attrs["trans_a"], spec.attrs["trans_b"]
    dims = matmul_dims(a.shape, b.shape, trans_a, trans_b)
    if gemv_applies(spec):  # one row, or a few: B streamed in panels (gemv_cpu.py)
        return matmul_gemv(spec, epilogue, idx, target)
    lookup = params_for("gemm_cpu", tuning_key(spec), target,
                        8 if a.dtype is DType.FLOAT64 else 4)
    params = lookup.params.fitted(dims.m, dims.n)
    # A constant B is packed once, at compile time, into panels read with aligned vector
    # loads (2-5x faster than strided rows).
    pack = 1 in spec.packable
    # full tiles store vectors of columns: along the output's last axis, contiguous
    vstore = epilogue.vector_store("c", "c_off", "vvalue", store_width(params), 1,
                                   (len(out.shape) - 1,)) if b.rank > 1 else None
    problem = matmul_problem(a.shape, b.shape, a.dtype, trans_a, trans_b, params=params,
                             packed_b=pack, store=epilogue.store("c", "c_off", "value"),
                             extra_params=epilogue.declarations, idx=idx, vstore=vstore)
    name = kernel_name("matmul_cpu", spec.inputs, out, spec.attrs.key(), params, pack)
    source = render_cpu_gemm(problem, params, name)
    kernel = Kernel(name, source, extensions_for([a.dtype, out.dtype]))
    global_size, local_size = cpu_gemm_launch(problem, params)
    args = ((IN, 0), (IN, 1), (OUT, 0)) + tuple((IN, i) for i in range(2, len(spec.inputs)))
    packed = ((1, functools.partial(pack_b, params=params, trans=bool(trans_b))),) if pack else ()
    return Lowered((Launch(kernel, global_size, local_size, args),), packed=packed,
                   tuning=lookup)


# -- the tunable kind, registered beside its params ----------------------------------------
_FAMILY_GEMM = {k: v for k, v in DEFAULT_GEMM_PARAMS.items() if k not in ("gpu", "generic")}
GEMM_KIND = register_kind(ParamKind(
    "gemm", GemmParams,
    defaults={
        # From the vendors' documentation, not measured (no such GPU here; the tuner
        # replaces them per device): Ampere/Ada/Hopper SMs hold 64K registers with up
        # to 255 per thread, and RDNA3 (Navi 31/32) SIMDs 1.5x the VGPRs of RDNA2, so an
        # 8x4 register block per work-item (32 accumulators) stays resident.
        "arch": {**dict.fromkeys(("sm_80", "sm_86", "sm_87", "sm_89", "sm_90"),
                                 GemmParams(128, 64, 16, 8, 4, 1)),
                 **dict.fromkeys(("gfx1100", "gfx1101"), GemmParams(128, 64, 16, 8, 4, 1))},
        "family": _FAMILY_GEMM,
        # Apple: 32 KiB threadgroup memory, SIMD-groups of 32. Mali: local memory is
        # ordinary global memory, so small tiles and work in registers. Adreno: 32 KiB
        # of real local memory, waves of 64.
        "vendor": {"nvidia": DEFAULT_GEMM_PARAMS["nvidia"],
                   "amd": DEFAULT_GEMM_PARAMS["amd-gcn"],
                   "intel": DEFAULT_GEMM_PARAMS["intel-gpu"],
                   "apple": GemmParams(64, 64, 16, 4, 4, 0),
                   "arm": GemmParams(32, 32, 8, 4, 4, 0),
                   "qualcomm": GemmParams(32, 32, 16, 2, 2, 0)},
        "generic": {"gpu": DEFAULT_GEMM_PARAMS["gpu"], "other": DEFAULT_GEMM_PARAMS["generic"]},
    },
    axes=(("tile_m", (16, 32, 64, 128)), ("tile_n", (16, 32, 64, 128)),
          ("tile_k", (8, 16, 32)), ("wpt_m", (1, 2, 4, 8)), ("wpt_n", (1, 2, 4, 8)),
          ("lmem_pad", (0, 1))),
    own=lambda p, t, itemsize: p.violations(t, itemsize),
    rules=gemm_rules(),
))
