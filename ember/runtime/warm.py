"""The worker side of a cold build: build a program and launch each of its kernels once.

A build worker (ember/workers.py) runs `warm_kernel` for one kernel of a model's program:
it builds the whole program (kept per worker, so a worker's later kernels reuse it) and
launches the kernel once per distinct launch, with the real launch sizes, on zeroed
buffers of its arguments' sizes. On PoCL, which compiles a kernel at its first launch for
that work-group size, this fills PoCL's kernel cache, so the user's process then builds
and launches from it; if the driver dies doing so, only the worker does.

This module needs nothing but pyopencl and numpy: a worker that imports it starts in a
fraction of the time a worker importing the compiler would (onnx, the op registry).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

__all__ = ["warm_kernel", "Launches"]

# (global size, local size or None, bytes of each buffer argument, the scalar arguments
# after them as numpy scalars) per distinct launch
Launches = list[tuple[tuple[int, ...], tuple[int, ...] | None, tuple[int, ...],
                      tuple[np.generic, ...]]]

_BUILT: dict[tuple[tuple[int, int], str], tuple[Any, Any, Any]] = {}


def _program(where: tuple[int, int], source: str, options: tuple[str, ...]
             ) -> tuple[Any, Any, Any]:
    """(context, queue, program) of `source` on platform/device `where`, built once."""
    import pyopencl as cl

    digest = hashlib.sha256((source + "\0" + " ".join(options)).encode()).hexdigest()
    found = _BUILT.get((where, digest))
    if found is None:
        device = cl.get_platforms()[where[0]].get_devices()[where[1]]
        context = cl.Context([device])
        program = cl.Program(context, source).build(options=list(options))
        found = _BUILT[(where, digest)] = (context, cl.CommandQueue(context), program)
    return found


def warm_kernel(where: tuple[int, int], source: str, options: tuple[str, ...], name: str,
                launches: Launches) -> None:
    """Build the program and launch kernel `name` as `launches` say. The caller builds
    the program again, from the driver's cache where it keeps one (PoCL does), and stores
    the binary in ember's cache where that pays (runtime/cache.py)."""
    import pyopencl as cl

    context, queue, program = _program(where, source, options)
    for global_size, local_size, sizes, scalars in launches:
        if 0 in global_size:
            continue
        buffers = []
        for nbytes in sizes:
            buffer = cl.Buffer(context, cl.mem_flags.READ_WRITE, max(nbytes, 1))
            cl.enqueue_fill_buffer(queue, buffer, np.uint8(0), 0, max(nbytes, 1))
            buffers.append(buffer)
        kernel = cl.Kernel(program, name)
        kernel.set_args(*buffers, *scalars)
        cl.enqueue_nd_range_kernel(queue, kernel, global_size, local_size)
        queue.finish()
