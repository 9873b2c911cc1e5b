"""Codegen: from IR nodes to OpenCL C kernels rendered from Jinja templates. Importing this
package registers the kernel builder of every op family."""

from ember.codegen import elementwise, linalg, movement, nn, reduce, views  # noqa: F401
from ember.codegen import attention  # noqa: F401  (fused scaled dot-product attention)
from ember.codegen.families import DeviceTraits, Family, Target, detect_family
from ember.codegen.kernels import KERNEL_BUILDERS, Kernel, Launch, Lowered, NodeSpec, lower

__all__ = [
    "DeviceTraits", "Family", "Target", "detect_family", "KERNEL_BUILDERS", "Kernel", "Launch",
    "Lowered", "NodeSpec", "lower",
]
