"""Codegen: from IR nodes to OpenCL C kernels rendered from Jinja templates.

    types.py      NodeSpec, Kernel, Launch, Lowered
    registry.py   @kernel_builder, lower(), device_dtype_ok
    params.py     tunable kinds: ParamKind, rules, defaults per level, search spaces, keys
    families.py   device -> Family and traits; Target
    render.py     the Jinja environment and its compiled-template cache
    csrc.py       index types, literals, strides, half loads and stores
    mathlib.py    C helpers (erf, tanh, exp) and the program header
    kernels/      one module per kernel family (its docstring maps ops to modules)
    templates/    the *.cl.j2 kernels

Importing this package registers every kernel builder and tunable kind (codegen.kernels).
"""

from ember.codegen import kernels  # noqa: F401  (registration happens on import)
from ember.codegen.families import DeviceTraits, Family, Target, detect_family
from ember.codegen.registry import KERNEL_BUILDERS, lower
from ember.codegen.types import Kernel, Launch, Lowered, NodeSpec

__all__ = [
    "DeviceTraits", "Family", "Target", "detect_family", "KERNEL_BUILDERS", "Kernel", "Launch",
    "Lowered", "NodeSpec", "lower",
]
