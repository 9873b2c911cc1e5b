"""From one IR node to OpenCL kernel launches: the registry of kernel builders.

A kernel builder (`@kernel_builder("Op", ...)`, one per op family in codegen/kernels/)
turns a `NodeSpec` into `Lowered`. A builder that cannot handle a spec on a target (a dtype
the device lacks, an attribute it does not do) returns None and the op runs on the host.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from ember.codegen.families import Target
from ember.codegen.types import Lowered, NodeSpec
from ember.ir import DType

__all__ = ["KERNEL_BUILDERS", "kernel_builder", "lower", "device_dtype_ok"]

log = logging.getLogger(__name__)

Builder = Callable[[NodeSpec, Target], "Lowered | None"]
KERNEL_BUILDERS: dict[str, Builder] = {}


def kernel_builder(*ops: str) -> Callable[[Builder], Builder]:
    """Register a builder for one or more ops."""

    def register(fn: Builder) -> Builder:
        for op in ops:
            if op in KERNEL_BUILDERS:
                raise ValueError(f"kernel builder for {op} registered twice")
            KERNEL_BUILDERS[op] = fn
        return fn

    return register


def device_dtype_ok(dtype: DType, target: Target) -> bool:
    """Can the device store and compute this dtype? float16 is stored as half and computed
    in float through vload_half/vstore_half, which every OpenCL device has."""
    if dtype.cl_name is None:
        return False
    if dtype is DType.FLOAT64:
        return target.traits.fp64
    return True


@functools.lru_cache(maxsize=4096)
def lower(spec: NodeSpec, target: Target) -> Lowered | None:
    """The launches for a node on a target, or None when it must run on the host."""
    builder = KERNEL_BUILDERS.get(spec.op)
    if builder is None:
        return None
    for t in (*spec.inputs, *spec.outputs):
        if not device_dtype_ok(t.dtype, target):
            return None
    return builder(spec, target)
