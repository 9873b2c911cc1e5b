"""Runs an ExecutionPlan on one OpenCL device.

All the plan's kernels are built as one program (one build per model; built programs are
kept per process and shared between models). Buffers are allocated once per executor, as the
plan's MemoryPlan says (tensors whose lifetimes do not overlap share one), and reused between
calls; constants are uploaded once. Host steps read their inputs back, run the numpy
reference and write their outputs to the device again (reads and writes cover the tensor's
own bytes, which may be fewer than its shared buffer's).

Cold builds run in worker processes first (`prebuild`, called by the compiler before the
executor is made): on PoCL most compiling happens at each kernel's first launch, where a
driver bug can abort the process. Workers (ember/workers.py, running runtime/warm.py, which
imports nothing but pyopencl and numpy so that a worker starts quickly) build the same
program and launch each kernel once, with its real launch sizes, on zeroed scratch buffers
of its arguments' sizes, one kernel per job over min(cores, kernels / 4) workers; that fills
PoCL's kernel cache, from which the executor then builds and launches quickly (drivers
without a cache of their own build again here, and ember's binary cache keeps the result).
A program counts as warm (no workers) when this process built it, when the binary cache
holds it, or when a marker says workers built it into the PoCL cache in use
(`<PoCL cache>/ember-warm/<key>`, cleared, exported and imported with it). The marker lists
the launches the workers made (kernel and work-group, or grid where the driver picks the
work-group, as PoCL compiles per work-group size): a model's shared program of generic
kernels is launched differently by each input shape, and what no worker launched yet is
warmed in workers first, also in a process that built the program already. A kernel that
kills its worker is reported by step; the compiler sends those steps to the host.
EMBER_WORKERS=0 builds in this process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ember.runtime.cache import (
    POCL_PLATFORM, BinaryCache, cache_key, ember_version, resolve_cache, write_file_atomic,
)
from ember.runtime.pocl_cache import pocl_cache_in_use
from ember.codegen.types import Kernel
from ember.codegen.mathlib import program_header
from ember.workers import isolated, shared_pool, worker_count
from ember.errors import CompileError, DeviceError
from ember.ir import OPS
from ember.runtime.device import OpenCLDevice
from ember.runtime.memory import build_memory_plan
from ember.runtime.plan import HOST, ExecutionPlan, Step
from ember.runtime.types import CONSTANT
from ember.runtime.warm import warm_kernel

__all__ = ["OpenCLExecutor", "build_program", "program_from_binary", "program_source", "prebuild",
           "BuildCrash"]

log = logging.getLogger(__name__)

_PROGRAMS: dict[tuple[int, str], object] = {}
_PROGRAMS_LOCK = threading.Lock()
# the launches workers made of each program (see _prebuild_program), by (context, digest)
_WARMED: dict[tuple[int, str], set[str]] = {}


def program_source(kernels: list[Kernel]) -> str:
    return program_header(kernels) + "\n".join(k.source for k in kernels)


def build_program(device: OpenCLDevice, source: str, options: tuple[str, ...] = (),
                  cache: bool | str | os.PathLike[str] | BinaryCache | None = True):
    """Build (or reuse) a program. A failure raises CompileError with the build log and the
    path of the source written out for reading. Builds go through the binary cache
    (runtime/cache.py): `cache` is True (the default cache), False, a directory or a
    BinaryCache."""
    import pyopencl as cl

    digest = hashlib.sha256((source + "\0" + " ".join(options)).encode()).hexdigest()
    key = (id(device.context), digest)
    with _PROGRAMS_LOCK:
        program = _PROGRAMS.get(key)
    if program is not None:
        return program
    start = time.perf_counter()
    store = resolve_cache(cache)
    stored_as = ""
    if store is not None:
        stored_as = cache_key(source, options, device.info.traits.fingerprint, ember_version())
        program = _load_binary(store, stored_as, device, source, options)
    if program is None:
        try:
            program = cl.Program(device.context, source).build(options=list(options))
        except cl.Error as exc:
            path = Path(tempfile.gettempdir()) / f"ember-failed-{digest[:16]}.cl"
            path.write_text(source)
            what = getattr(exc, "what", None)
            try:
                log_text = str(what() if callable(what) else exc)
            except Exception:  # noqa: BLE001 - the log is best effort; the error still stands
                log_text = str(exc)
            raise CompileError(
                f"OpenCL build failed on {device.info.traits.name}", log_text, str(path)
            ) from None
        if store is not None and store.wants_binary(device.info.traits):
            _store_binary(store, stored_as, device, source, options, program)
    log.debug("built program %s in %.3fs", digest[:12], time.perf_counter() - start)
    with _PROGRAMS_LOCK:
        _PROGRAMS[key] = program
    return program


def program_from_binary(device: OpenCLDevice, source: str, binary: bytes,
                        options: tuple[str, ...] = ()):
    """Build `source`'s program from a binary the driver made earlier (a bundle's), and keep
    it as `build_program` keeps what it builds, so that an executor of that source uses it.
    A binary the driver refuses raises CompileError with the driver's message."""
    import pyopencl as cl

    digest = hashlib.sha256((source + "\0" + " ".join(options)).encode()).hexdigest()
    with _PROGRAMS_LOCK:
        program = _PROGRAMS.get((id(device.context), digest))
    if program is not None:
        return program
    try:
        program = cl.Program(device.context, [device.device], [binary]).build(
            options=list(options))
    except cl.Error as exc:
        raise CompileError(f"the driver of {device.info.traits.name} refused the program "
                           f"binary ({str(exc).splitlines()[0] if str(exc) else exc!r})"
                           ) from None
    with _PROGRAMS_LOCK:
        _PROGRAMS.setdefault((id(device.context), digest), program)
    return program


def _load_binary(store: BinaryCache, key: str, device: OpenCLDevice, source: str,
                 options: tuple[str, ...]):
    """The program from its cached binary, or None. A binary the driver refuses is deleted:
    the caller builds from source and stores a fresh one."""
    import pyopencl as cl

    traits = device.info.traits
    kept = store.wants_binary(traits)
    binary = store.load(key, source, options, traits.fingerprint, kept=kept)
    if binary is None:
        if kept:
            log.info("program %s is not in the binary cache %s for %s: building from source",
                     key[:12], store.root, traits.name)
        elif traits.platform == POCL_PLATFORM:
            log.debug("program %s: PoCL builds it through its own kernel cache (%s); ember "
                      "stores PoCL binaries only in `ember cache build`", key[:12],
                      pocl_cache_in_use() or "PoCL's default place")
        else:
            log.debug("program %s: building from source (%r stores no binaries)", key[:12],
                      store)
        return None
    try:
        program = cl.Program(device.context, [device.device], [binary]).build(
            options=list(options))
    except cl.Error as exc:
        store.reject(key, f"was refused by the driver ({str(exc).splitlines()[0]})")
        store.record("misses")
        return None
    store.record("hits")
    log.info("program %s loaded from the binary cache %s", key[:12], store.root)
    return program


def _store_binary(store: BinaryCache, key: str, device: OpenCLDevice, source: str,
                  options: tuple[str, ...], program) -> None:
    import pyopencl as cl

    try:
        binaries = program.get_info(cl.program_info.BINARIES)
    except cl.Error as exc:  # a driver may not hand binaries out: then nothing is cached
        log.info("no program binary from %s (%s); not cached", device.info.traits.name, exc)
        return
    if binaries and binaries[0]:
        store.store(key, source, options, device.info.traits.fingerprint, bytes(binaries[0]))


# -- cold builds in workers ------------------------------------------------------------------
@dataclass(frozen=True)
class BuildCrash:
    """A step whose kernel killed the worker that built and launched it."""

    op: str
    name: str
    kernel: str
    reason: str  # e.g. "worker killed by SIGABRT (LLVM ERROR: ...)"




def _launches_by_kernel(plan: ExecutionPlan) -> dict[str, set]:
    """Each kernel's distinct launches: sizes, the bytes of every buffer argument and the
    scalar arguments."""
    found: dict[str, set] = {}
    for step in plan.steps:
        if step.placement == HOST or step.lowered is None:
            continue
        for launch in step.lowered.launches:
            sizes = launch.bind([plan.slots[s].type.nbytes for s in step.inputs],
                                [plan.slots[s].type.nbytes for s in step.outputs],
                                step.lowered.temps)
            found.setdefault(launch.kernel.name, set()).add(
                (tuple(launch.global_size), launch.local_size and tuple(launch.local_size),
                 tuple(sizes), tuple(launch.scalar_arguments())))
    return found


def _warm_marker(store: BinaryCache, key: str, device: OpenCLDevice) -> Path:
    """Where workers record that they built program `key` into the PoCL cache in use."""
    pocl = pocl_cache_in_use() if device.info.traits.platform == POCL_PLATFORM else None
    return (pocl or store.root) / "ember-warm" / key


_KERNELS_PER_WORKER = 4


def prebuild(plan: ExecutionPlan, device: OpenCLDevice,
             cache: bool | str | os.PathLike[str] | BinaryCache | None = True
             ) -> list[BuildCrash]:
    """Build and launch each cold program's kernels in workers (see the module docstring);
    the steps whose kernel killed its worker (empty: the executor can build safely). Build
    or launch errors that do not kill a worker are left to the executor to report."""
    if not isolated():
        return []
    launches = _launches_by_kernel(plan)
    crashed: dict[str, str] = {}
    for kernels in plan.programs():
        crashed.update(_prebuild_program(kernels, launches, device, cache))
    found = []
    for step in plan.steps:
        if step.lowered is None:
            continue
        for kernel in step.lowered.kernels:
            if kernel.name in crashed:
                found.append(BuildCrash(step.op, step.name, kernel.name,
                                        str(crashed[kernel.name])))
                break
    return found


def _prebuild_program(kernels: list, launches: dict[str, set], device: OpenCLDevice,
                      cache: bool | str | os.PathLike[str] | BinaryCache | None
                      ) -> dict[str, str]:
    """Build one program in workers and launch its kernels that `launches` lists; the
    kernels that killed their worker, with the reason."""
    source = program_source(kernels)
    digest = hashlib.sha256((source + "\0").encode()).hexdigest()
    program_id = (id(device.context), digest)
    with _PROGRAMS_LOCK:
        if program_id in _PROGRAMS and program_id not in _WARMED:
            return {}  # built here, outside the workers (EMBER_WORKERS=0, a warm start)
        warmed = set(_WARMED.get(program_id, ()))
    # what a launch compiles on a driver that compiles per work-group size (PoCL): the
    # kernel and its work-group, or its grid where the driver picks the work-group
    needed = {name: {_warmed_as(name, launch) for launch in launches[name]}
              for name in (k.name for k in kernels) if name in launches}
    store = resolve_cache(cache)
    marker = None
    if store is not None:
        key = cache_key(source, (), device.info.traits.fingerprint, ember_version())
        marker = _warm_marker(store, key, device)
        try:
            if store.entry_dir(key).is_dir():
                return {}
            if marker.exists():
                warmed |= set(marker.read_text().split("\n")) - {""}
        except OSError:
            pass
    where = (device.info.platform_index, device.info.device_index)
    # a shared program (generic kernels) is launched differently by each shape: only what
    # no worker launched yet goes to the workers
    names = [name for name, done in needed.items() if not done <= warmed]
    with _PROGRAMS_LOCK:
        _WARMED.setdefault(program_id, set()).update(warmed)
    jobs = [(warm_kernel, (where, source, (), name,
                           sorted((launch for launch in launches[name]
                                   if _warmed_as(name, launch) not in warmed), key=str)))
            for name in names]
    if not jobs:
        return {}
    start = time.perf_counter()
    # each worker builds the whole program first (~0.3-0.5 s on PoCL): another worker pays
    # off only for several kernels
    parallel = min(worker_count(), -(-len(jobs) // _KERNELS_PER_WORKER))
    try:
        outcomes = shared_pool().run(jobs, timeout=600.0, parallel=parallel)
    except OSError as exc:  # no process could be started (limits, no memory): build here
        log.warning("could not start build workers (%s); building in this process", exc)
        return {}
    log.info("built %d kernel(s) in workers in %.2fs", len(jobs), time.perf_counter() - start)
    crashed = {name: o.error for name, o in zip(names, outcomes) if o.crashed}
    for name, o in zip(names, outcomes):
        if not o.ok and not o.crashed:
            log.debug("kernel %s in a worker: %s", name, o.error)
    if crashed or not all(o.ok for o in outcomes):
        return crashed
    done = warmed.union(*needed.values())
    with _PROGRAMS_LOCK:
        _WARMED[program_id] = done
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            write_file_atomic(marker, "\n".join(sorted(done)).encode(), durable=False)
        except OSError as exc:
            log.debug("could not write %s: %s", marker, exc)
    return crashed


def _warmed_as(name: str, launch: tuple) -> str:
    """How a warm marker names one launch of kernel `name` (see _prebuild_program)."""
    global_size, local_size = launch[0], launch[1]
    if local_size is None:
        return f"{name} grid {'x'.join(map(str, global_size))}"
    return f"{name} group {'x'.join(map(str, local_size))}"


class _BoundLaunch:
    __slots__ = ("kernel", "global_size", "local_size")

    def __init__(self, kernel, global_size, local_size) -> None:
        self.kernel = kernel
        self.global_size = global_size
        self.local_size = local_size


class SharedConstants:
    """Device buffers of the constants a model's plans share (its weights, which the
    importer reads once and PackedConstants packs once), kept across the executors of its
    input shapes so the weights are on the device once. `shareable(array)` says which
    arrays are such constants (a plan's own constants, e.g. a slice that depends on the
    shape, are not kept)."""

    def __init__(self, shareable: Callable[[np.ndarray], bool]) -> None:
        self._shareable = shareable
        self._buffers: dict[int, tuple[np.ndarray, object]] = {}

    def get(self, array: np.ndarray):
        found = self._buffers.get(id(array))
        return found[1] if found is not None and found[0] is array else None

    def keep(self, array: np.ndarray, buffer) -> None:
        if self._shareable(array):
            self._buffers[id(array)] = (array, buffer)


class OpenCLExecutor:
    """Runs one plan. `shared_constants`, kept by the model across its plans (one per input
    shape), lets plans that hold the same constant array use one device buffer."""

    def __init__(self, plan: ExecutionPlan, device: OpenCLDevice,
                 cache: bool | str | os.PathLike[str] | BinaryCache | None = True,
                 shared_constants: SharedConstants | None = None) -> None:
        import pyopencl as cl

        self._cl = cl
        self.plan = plan
        self.device = device
        # kernel name -> its program: the model's shared program of generic kernels, and
        # this shape's own
        self._program_of: dict[str, object] = {}
        self.programs = []
        for kernels in plan.programs():
            program = build_program(device, program_source(kernels), cache=cache)
            self.programs.append(program)
            self._program_of.update((k.name, program) for k in kernels)
        self.memory = plan.memory if plan.memory is not None else build_memory_plan(plan)
        # a read-only constant another executor of the model uploaded: its buffer, shared
        reused: dict[int, object] = {}
        if shared_constants is not None:
            for index, array in plan.constants.items():
                found = shared_constants.get(array)
                buffer = self.memory.buffer_of[index]
                if found is not None and self.memory.kinds[buffer] == CONSTANT:
                    reused[buffer] = found
        # Kernel args do not keep their buffers alive: the executor must (else use-after-free).
        self._arenas = [
            reused[b] if b in reused
            else cl.Buffer(device.context, cl.mem_flags.READ_WRITE, max(nbytes, 1))
            for b, nbytes in enumerate(self.memory.buffers)
        ]
        self.buffers: dict[int, object] = {
            slot.index: self._arenas[self.memory.buffer_of[slot.index]] for slot in plan.slots
        }
        # strings: only host steps read and write them, and they never pass a device buffer
        self._host_only = frozenset(s.index for s in plan.slots if s.type.dtype.host_only)
        self._host_values: dict[int, np.ndarray] = {}
        for index, array in plan.constants.items():
            buffer = self.memory.buffer_of[index]
            if buffer in reused and index not in self._host_only:
                continue
            self._write(index, array)
            if shared_constants is not None and self.memory.kinds[buffer] == CONSTANT:
                shared_constants.keep(array, self._arenas[buffer])
        self._steps = [(step, self._bind(i, step)) for i, step in enumerate(plan.steps)]
        device.queue.finish()

    # -- setup ----------------------------------------------------------------------------
    def _bind(self, index: int, step: Step) -> list[_BoundLaunch]:
        if step.placement == HOST or step.lowered is None:
            return []
        cl = self._cl
        temps = [self._arenas[b] for b in self.memory.temps[index]]
        bound = []
        for launch in step.lowered.launches:
            kernel = cl.Kernel(self._program_of[launch.kernel.name], launch.kernel.name)
            kernel.set_args(*launch.bind([self.buffers[s] for s in step.inputs],
                                         [self.buffers[s] for s in step.outputs], temps),
                            *launch.scalar_arguments())
            bound.append(_BoundLaunch(kernel, launch.global_size, launch.local_size))
        return bound

    # -- transfers ------------------------------------------------------------------------
    def _write(self, slot: int, array: np.ndarray) -> None:
        t = self.plan.slots[slot].type
        array = np.ascontiguousarray(array, dtype=t.dtype.np_dtype)
        if slot in self._host_only:
            self._host_values[slot] = array
        elif array.nbytes:
            self._cl.enqueue_copy(self.device.queue, self.buffers[slot], array, is_blocking=False)

    # -- running --------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, np.ndarray], *, profile: bool = False):
        """Run the plan. With `profile`, also returns per-step seconds."""
        cl = self._cl
        queue = self.device.profiling_queue if profile else self.device.queue
        # Uploads and downloads do not block: the in-order queue runs them before and after
        # the kernels, pyopencl keeps the host arrays alive until their copy is done, and
        # one wait at the end replaces a round trip per transfer.
        for name, slot in self.plan.inputs.items():
            array = np.ascontiguousarray(inputs[name], dtype=self.plan.slots[slot].type.dtype.np_dtype)
            if slot in self._host_only:
                self._host_values[slot] = array
            elif array.nbytes:
                cl.enqueue_copy(queue, self.buffers[slot], array, is_blocking=False)
        timings: list[tuple[str, str, float]] = []
        for step, launches in self._steps:
            if step.placement == HOST:
                start = time.perf_counter()
                self._run_host(step, queue)
                if profile:
                    timings.append((step.name, step.op, time.perf_counter() - start))
                continue
            events = []
            for launch in launches:
                try:
                    events.append(
                        cl.enqueue_nd_range_kernel(
                            queue, launch.kernel, launch.global_size, launch.local_size
                        )
                    )
                except cl.Error as exc:
                    raise DeviceError(f"launching {step.op} {step.name!r} failed: {exc}") from exc
            if profile:
                queue.finish()
                seconds = sum((e.profile.end - e.profile.start) * 1e-9 for e in events)
                timings.append((step.name, step.op, seconds))
        results = {}
        for name, slot in self.plan.outputs:
            results[name] = self._read_from(queue, slot, wait=False)
        queue.finish()
        if profile:
            return results, timings
        return results

    def _read_from(self, queue, slot: int, wait: bool = True) -> np.ndarray:
        if slot in self._host_only:
            return self._host_values[slot]
        t = self.plan.slots[slot].type
        out = np.empty(t.shape, dtype=t.dtype.np_dtype)
        if out.nbytes:
            self._cl.enqueue_copy(queue, out, self.buffers[slot], is_blocking=wait)
        return out

    def _run_host(self, step: Step, queue) -> None:
        args = []
        for slot in step.inputs:
            constant = self.plan.constants.get(slot)
            args.append(constant if constant is not None else self._read_from(queue, slot))
        results = OPS[step.op].evaluate(args, step.attrs)
        for slot, result in zip(step.outputs, results):
            t = self.plan.slots[slot].type
            array = np.ascontiguousarray(np.asarray(result).astype(t.dtype.np_dtype, copy=False))
            if array.shape != t.shape:
                array = array.reshape(t.shape)
            if slot in self._host_only:
                self._host_values[slot] = array
            elif array.nbytes:
                self._cl.enqueue_copy(queue, self.buffers[slot], array, is_blocking=True)
