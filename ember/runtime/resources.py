"""What a compiled model may allocate, checked before anything is allocated.

Every tensor, and every planned device buffer, must fit the device's largest allocation
(CL_DEVICE_MAX_MEM_ALLOC_SIZE) and all buffers together its global memory
(CL_DEVICE_GLOBAL_MEM_SIZE); on the numpy target every computed result must fit the host's
available memory. Past these limits a driver refuses with a bare status code, or (PoCL, numpy with
overcommit) accepts and takes the process down later; a ResourceError names the tensor,
its bytes and the limit instead. Failures that still come from the driver or the allocator
(`driver_failures`) become DeviceErrors that say what was being done.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ember.codegen.families import DeviceTraits
from ember.errors import DeviceError, ResourceError
from ember.ir import Graph
from ember.runtime.memory import MemoryPlan
from ember.runtime.plan import ExecutionPlan

__all__ = ["host_available_bytes", "check_tensors", "check_tensors_on_host",
           "check_buffers", "driver_failures", "byte_text"]


def byte_text(nbytes: int) -> str:
    """'4 TiB (4398046511104 bytes)': readable, and exact for whoever compares."""
    size, unit = float(nbytes), "bytes"
    for name in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024:
            break
        size, unit = size / 1024, name
    if unit == "bytes":
        return f"{nbytes} bytes"
    return f"{size:.4g} {unit} ({nbytes} bytes)"


def host_available_bytes() -> int | None:
    """Physical memory available to a new allocation now (MemAvailable), or None when the
    system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _tensors(graph: Graph, results_only: bool = False) -> Iterator[tuple[str, object, int]]:
    """(name, type, bytes) of every tensor of the graph: inputs, constants, results."""
    for node in graph.nodes():
        if results_only and graph.op(node) in ("Input", "Constant"):
            continue
        types = graph.output_types(node)
        for port, tensor_type in enumerate(types):
            name = graph.node_name(node) + (f":{port}" if len(types) > 1 else "")
            yield name, tensor_type, tensor_type.nbytes


def check_tensors(graph: Graph, traits: DeviceTraits) -> None:
    """ResourceError for the first tensor larger than the device's largest allocation (or
    its global memory, where a driver reports that as the smaller)."""
    limits = [(traits.max_alloc_bytes, "largest allocation", "CL_DEVICE_MAX_MEM_ALLOC_SIZE"),
              (traits.global_mem_bytes, "global memory", "CL_DEVICE_GLOBAL_MEM_SIZE")]
    known = [entry for entry in limits if entry[0] > 0]  # 0: not reported, not checked
    if not known:
        return
    limit, what, query = min(known)
    for name, tensor_type, nbytes in _tensors(graph):
        if nbytes > limit:
            raise ResourceError(
                f"tensor {name!r} ({tensor_type}) needs {byte_text(nbytes)}, more than the "
                f"{what} of {traits.name} ({query}): {byte_text(limit)}")


def check_tensors_on_host(graph: Graph, available: int | None = None) -> None:
    """ResourceError for the first result larger than the host's available memory (the
    numpy target computes every result in host memory). Constants and inputs are left out:
    when the model runs they exist already, and count in what is no longer available."""
    limit = host_available_bytes() if available is None else available
    if limit is None:
        return
    for name, tensor_type, nbytes in _tensors(graph, results_only=True):
        if nbytes > limit:
            raise ResourceError(
                f"tensor {name!r} ({tensor_type}) needs {byte_text(nbytes)}, more than the "
                f"host memory available to the numpy target: {byte_text(limit)}")


def _buffer_names(plan: ExecutionPlan, memory: MemoryPlan) -> dict[int, str]:
    """For each buffer, what a message calls it: its largest tensor, or a step's scratch."""
    largest: dict[int, tuple[int, str]] = {}
    for slot in plan.slots:
        buffer = memory.buffer_of.get(slot.index)
        if buffer is None:
            continue
        nbytes = slot.type.nbytes
        if buffer not in largest or nbytes > largest[buffer][0]:
            largest[buffer] = (nbytes, f"tensor {slot.name!r} ({slot.type})")
    names = {buffer: text for buffer, (_, text) in largest.items()}
    for step, temps in zip(plan.steps, memory.temps):
        for buffer in temps:
            names.setdefault(buffer, f"scratch of {step.op} {step.name!r}")
    return names


def check_buffers(plan: ExecutionPlan, memory: MemoryPlan, traits: DeviceTraits) -> None:
    """ResourceError for a planned buffer larger than the device's largest allocation, or
    for buffers that together exceed its global memory."""
    names: dict[int, str] | None = None
    if traits.max_alloc_bytes > 0:
        for buffer, nbytes in enumerate(memory.buffers):
            if nbytes > traits.max_alloc_bytes:
                names = names or _buffer_names(plan, memory)
                raise ResourceError(
                    f"device buffer {buffer} for {names.get(buffer, 'the plan')} needs "
                    f"{byte_text(nbytes)}, more than the largest allocation of {traits.name} "
                    f"(CL_DEVICE_MAX_MEM_ALLOC_SIZE): {byte_text(traits.max_alloc_bytes)}")
    total = sum(memory.buffers)
    if 0 < traits.global_mem_bytes < total:
        names = names or _buffer_names(plan, memory)
        top = sorted(range(len(memory.buffers)), key=lambda b: -memory.buffers[b])[:3]
        listed = ", ".join(f"{names.get(b, f'buffer {b}')}: {byte_text(memory.buffers[b])}"
                           for b in top)
        raise ResourceError(
            f"the model's {len(memory.buffers)} device buffers need {byte_text(total)} in all, "
            f"more than the global memory of {traits.name} (CL_DEVICE_GLOBAL_MEM_SIZE): "
            f"{byte_text(traits.global_mem_bytes)}; the largest: {listed}")


def _driver_error_types() -> tuple[type[BaseException], ...]:
    try:
        import pyopencl as cl
    except ImportError:  # no OpenCL at all: only the allocator can fail
        return (MemoryError,)
    return (MemoryError, cl.Error)


@contextlib.contextmanager
def driver_failures(doing: str) -> Iterator[None]:
    """Turn a pyopencl error or a MemoryError raised while `doing` into a DeviceError
    (ResourceError for memory) that says so; the original stays as __cause__."""
    try:
        yield
    except _driver_error_types() as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        memory = isinstance(exc, MemoryError) or "ALLOCATION" in first.upper() \
            or "OUT_OF" in first.upper()
        kind = ResourceError if memory else DeviceError
        raise kind(f"{doing} failed: {type(exc).__name__}: {first}") from exc
