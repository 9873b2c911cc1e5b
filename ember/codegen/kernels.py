"""From one IR node to OpenCL kernel launches.

`NodeSpec` is the plain, hashable description codegen gets of a node (op, attributes, input
and output types). A kernel builder turns it into `Lowered`: the kernels to launch, their
sizes and arguments, scratch buffers, and outputs that are views of inputs. A builder that
cannot handle a spec on a target (a dtype the device lacks, an attribute it does not do)
returns None and the op runs on the host.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ember.codegen.families import Target
from ember.codegen.tunables import Lookup
from ember.ir import Attrs, DType, TensorType

__all__ = [
    "NodeSpec", "Kernel", "Launch", "Lowered", "KERNEL_BUILDERS", "kernel_builder",
    "lower", "IN", "OUT", "TMP", "device_dtype_ok", "program_header", "HELPERS",
]

log = logging.getLogger(__name__)

IN, OUT, TMP = "in", "out", "tmp"


@dataclass(frozen=True)
class NodeSpec:
    op: str
    attrs: Attrs
    inputs: tuple[TensorType, ...]
    outputs: tuple[TensorType, ...]
    # inputs that are compile-time constants the builder may store in another layout
    # (`Lowered.packed`); the plan offers them from opt_level 2 on
    packable: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Kernel:
    name: str
    source: str
    extensions: frozenset[str] = frozenset()  # e.g. {"cl_khr_fp64"}


@dataclass(frozen=True)
class Launch:
    kernel: Kernel
    global_size: tuple[int, ...]
    local_size: tuple[int, ...] | None
    args: tuple[tuple[str, int], ...]  # (IN, i) | (OUT, j) | (TMP, k), in kernel order


@dataclass(frozen=True)
class Lowered:
    launches: tuple[Launch, ...]
    temps: tuple[int, ...] = ()  # bytes of each scratch buffer
    # output j shares the buffer of input i (a view such as Reshape): no launch needed
    aliases: tuple[tuple[int, int], ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)
    # (input i, layout function): the plan uploads layout(constant value) in place of the
    # constant input i, once at compile time (pre-packed weights)
    packed: tuple[tuple[int, Callable[[np.ndarray], np.ndarray]], ...] = field(
        default=(), compare=False)
    # the tunables the builder looked up (kind, key, params, answering level): the tuner
    # reads which kind and key to tune from it
    tuning: Lookup | None = field(default=None, compare=False)

    @property
    def kernels(self) -> tuple[Kernel, ...]:
        return tuple(launch.kernel for launch in self.launches)


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


# Functions kernels may call, defined once per program that uses them (by name).
# ember_erf: float erf as erf's Taylor series below |x| = 0.5 and Abramowitz & Stegun 7.1.26
# above; PoCL's erf is an out-of-line call about 3.6x slower, which dominated GELU. Largest
# relative error measured against math.erf on 262144 normal(0, 2) draws: 5.9e-7 (5 ulp).
HELPERS: dict[str, str] = {
    "ember_erf": """
inline float ember_erf(float x) {
    const float a = fabs(x);
    if (a < 0.5f) {
        const float z = x * x;
        return x * (1.1283791671f + z * (-0.3761263890f + z * (0.1128379167f
            + z * (-0.0268661706f + z * (0.0052239776f + z * -0.0008548327f)))));
    }
    const float t = 1.0f / (1.0f + 0.3275911f * a);
    const float y = 1.0f - t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f
        + t * (-1.453152027f + t * 1.061405429f)))) * exp(-a * a);
    return copysign(y, x);
}
""",
}


def program_header(kernels: tuple[Kernel, ...] | list[Kernel]) -> str:
    """Pragmas and helper functions needed once at the top of a program holding these
    kernels."""
    extensions = sorted(set().union(*(k.extensions for k in kernels))) if kernels else []
    header = "".join(f"#pragma OPENCL EXTENSION {ext} : enable\n" for ext in extensions)
    for name, source in HELPERS.items():
        if any(name + "(" in k.source for k in kernels):
            header += source
    return header
