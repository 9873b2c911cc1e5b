"""Measuring one kernel candidate: random inputs whose sums are exact, the numpy
reference's result, buffer copies rotated between runs, profiling-event times; and the job
a tuning worker runs (ember/workers.py) to measure a batch of candidates of one spec.

Inputs are small random integers stored as floats, so every sum of products is exact in
float32 and a correct kernel matches the reference within the float32 row of
tests/harness.py's TOLERANCE (half: computed in float, rounded once); any other result
rejects the candidate, as does a build or launch error. Outputs are filled with NaN before
the checked run, so an element a kernel never writes cannot pass.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ember.codegen.families import Target, TuningTable
from ember.codegen.types import Kernel, Lowered, NodeSpec
from ember.ir import OPS, DType
from ember.runtime.device import devices, resolve_target
from ember.runtime.opencl import program_source
from ember.tuning.progress import TuneProgress

__all__ = ["TOLERANCE", "TuningDevice", "TuneBudget", "Rejected", "Bench", "measure_batch",
           "measure_in_worker"]

log = logging.getLogger(__name__)

# Allowed (rtol, atol) per float dtype: the rows of tests/harness.py's TOLERANCE table.
TOLERANCE = {DType.FLOAT32: (1e-5, 1e-5), DType.FLOAT16: (2e-3, 2e-3),
             DType.FLOAT64: (1e-12, 1e-12)}


class TuningDevice(Protocol):
    """What the tuner needs of a device (runtime.device.OpenCLDevice has it)."""

    context: Any
    target: Target

    @property
    def profiling_queue(self) -> Any: ...


@dataclass(frozen=True)
class TuneBudget:
    """How long tuning may take, how thoroughly it measures, and who hears of its progress
    (`progress`: a TuneProgress, or True / False / None for tqdm's bar shown always / never
    / on a terminal; not part of the budget's identity, and never sent to a worker)."""

    model_seconds: float = 60.0
    kernel_seconds: float = 20.0
    repeats: int = 5  # timed runs per candidate (their median counts)
    warmup: int = 1
    exhaustive_limit: int = 24  # spaces up to this size are measured whole
    samples: int = 10  # random candidates measured before refining a large space
    restarts: int = 1  # further random samples (and refinements) once a refinement ends
    seed: int = 0
    rotate_bytes: int = 64 << 20  # buffer copies rotated through: at least this many bytes
    progress: bool | TuneProgress | None = field(default=None, compare=False, repr=False)


class Rejected(Exception):
    """A candidate that failed to build, to launch, or to compute the reference's result."""


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: DType) -> np.ndarray:
    """Integers in [-2, 2] (as floats too): sums of their products are exact."""
    if dtype is DType.BOOL:
        return rng.random(shape) < 0.5
    low = 0 if np.dtype(dtype.np_dtype).kind == "u" else -2
    return rng.integers(low, 3, size=shape).astype(dtype.np_dtype)


def _reference(spec: NodeSpec, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The op's numpy reference; half inputs are evaluated in float and rounded once, as
    the kernels compute them."""
    half = any(t.dtype is DType.FLOAT16 for t in spec.inputs)
    if half:
        arrays = [a.astype(np.float32) if a.dtype == np.float16 else a for a in arrays]
    results = OPS[spec.op].evaluate(list(arrays), spec.attrs)
    return [np.asarray(r).astype(t.dtype.np_dtype).reshape(t.shape)
            for r, t in zip(results, spec.outputs)]


def _mismatch(actual: np.ndarray, expected: np.ndarray, dtype: DType) -> str | None:
    if not dtype.is_float:
        bad = actual != expected
        return f"{int(bad.sum())} element(s) differ" if bad.any() else None
    rtol, atol = TOLERANCE[dtype]
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    ok = np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if ok.all():
        return None
    where = np.unravel_index(int(np.argmin(ok)), ok.shape)
    return (f"{int((~ok).sum())} of {ok.size} element(s) off; at {tuple(int(i) for i in where)}"
            f" got {a[where]!r}, expected {e[where]!r} (rtol {rtol}, atol {atol})")


class Bench:
    """Random inputs for one spec, its reference result, and copies of the device buffers
    to rotate between runs."""

    def __init__(self, spec: NodeSpec, device: TuningDevice, budget: TuneBudget,
                 seed: int = 0) -> None:
        import pyopencl as cl

        self.cl, self.spec, self.device, self.budget = cl, spec, device, budget
        rng = np.random.default_rng(seed)
        self.arrays = [_random(rng, t.shape, t.dtype) for t in spec.inputs]
        self.expected = _reference(spec, self.arrays)
        per_set = sum(a.nbytes for a in self.arrays) + sum(t.nbytes for t in spec.outputs)
        self.copies = max(1, min(8, math.ceil(budget.rotate_bytes / max(per_set, 1))))
        self.inputs = [[self._upload(a) for a in self.arrays] for _ in range(self.copies)]
        self.outputs = [[self._empty(t.nbytes) for t in spec.outputs]
                        for _ in range(self.copies)]

    def _empty(self, nbytes: int) -> Any:
        return self.cl.Buffer(self.device.context, self.cl.mem_flags.READ_WRITE, max(nbytes, 1))

    def _upload(self, array: np.ndarray) -> Any:
        array = np.ascontiguousarray(array)
        buffer = self._empty(array.nbytes)
        if array.nbytes:
            self.cl.enqueue_copy(self.device.profiling_queue, buffer, array)
        return buffer

    def measure(self, lowered: Lowered, program: Any) -> float:
        """Check one lowering against the reference, then its median time (seconds)."""
        cl, queue = self.cl, self.device.profiling_queue
        inputs = [list(row) for row in self.inputs]
        for i, layout in lowered.packed:  # the candidate's own layout of a constant input
            packed = layout(self.arrays[i])
            for row in inputs:
                row[i] = self._upload(packed)
        temps = [self._empty(n) for n in lowered.temps]
        aliases = dict(lowered.aliases)
        outputs = [[row_in[aliases[j]] if j in aliases else row_out[j]
                    for j in range(len(row_out))]
                   for row_in, row_out in zip(inputs, self.outputs)]
        runs = []
        for row_in, row_out in zip(inputs, outputs):
            kernels = []
            for launch in lowered.launches:
                try:
                    kernel = cl.Kernel(program, launch.kernel.name)
                    kernel.set_args(*launch.bind(row_in, row_out, temps))
                except cl.Error as exc:
                    raise Rejected(f"kernel {launch.kernel.name} not usable: {exc}") from None
                kernels.append((kernel, launch.global_size, launch.local_size))
            runs.append(kernels)

        def run(copy: int) -> float:
            try:
                events = [cl.enqueue_nd_range_kernel(queue, k, g, l) for k, g, l in runs[copy]]
                queue.finish()
            except cl.Error as exc:
                raise Rejected(f"launch failed: {exc}") from None
            return sum((e.profile.end - e.profile.start) * 1e-9 for e in events)

        for j, t in enumerate(self.spec.outputs):  # NaN / all-ones: unwritten cannot pass
            if t.nbytes and j not in aliases:
                cl.enqueue_fill_buffer(queue, outputs[0][j], np.uint8(0xFF), 0, t.nbytes)
        run(0)
        for j, (t, expected) in enumerate(zip(self.spec.outputs, self.expected)):
            actual = np.empty(t.shape, t.dtype.np_dtype)
            if actual.nbytes:
                cl.enqueue_copy(queue, actual, outputs[0][j])
            why = _mismatch(actual, expected, t.dtype)
            if why:
                raise Rejected(f"output {j} differs from the reference: {why}")
        for i in range(self.budget.warmup):
            run((i + 1) % self.copies)
        times = [run(i % self.copies) for i in range(max(self.budget.repeats, 1))]
        return statistics.median(times)


def _build(device: TuningDevice, lowereds: Sequence[Lowered]) -> Any:
    """One program holding every kernel of the lowerings (kernels they share built once)."""
    import pyopencl as cl

    kernels: dict[str, Kernel] = {}
    for lowered in lowereds:
        for k in lowered.kernels:
            kernels.setdefault(k.name, k)
    try:
        return cl.Program(device.context, program_source(list(kernels.values()))).build()
    except cl.Error as exc:
        raise Rejected(f"build failed: {str(exc).strip()[:500]}") from None


def measure_batch(device: TuningDevice, bench: Bench, candidates: Sequence[tuple[Any, Lowered]],
                   stop: float) -> list[tuple[Any, tuple[float | None, str | None]]]:
    """(params, (median seconds or None, error)) of each candidate measured before `stop`:
    their kernels built as one program (each alone when that fails, to find the culprit)."""
    try:
        program = _build(device, [lowered for _, lowered in candidates])
        programs: list[Any] = [program] * len(candidates)
    except Rejected:
        programs = []
        for _, lowered in candidates:
            try:
                programs.append(_build(device, [lowered]))
            except Rejected as exc:
                programs.append(exc)
    found: list[tuple[Any, tuple[float | None, str | None]]] = []
    for (params, lowered), program in zip(candidates, programs):
        if time.perf_counter() > stop and found:
            break
        if isinstance(program, Rejected):
            found.append((params, (None, str(program))))
            continue
        try:
            found.append((params, (bench.measure(lowered, program), None)))
        except Rejected as exc:
            found.append((params, (None, str(exc))))
    return found


@dataclass
class _WorkerDevice:
    """The tuner's device in a worker: the runtime's own device there, found by its
    fingerprint, measured with the target of the job at hand."""

    context: Any
    profiling_queue: Any
    target: Target


def _open_in_worker(fingerprint: str, target: Target) -> _WorkerDevice:
    for info in devices():
        if info.traits.fingerprint == fingerprint:
            device = resolve_target(info.target)
            assert device is not None
            return _WorkerDevice(device.context, device.profiling_queue, target)
    raise RuntimeError(f"no OpenCL device with fingerprint {fingerprint!r} in the worker")


_WORKER_STATE: dict[str, Any] = {}  # a worker's device and its last Bench


def measure_in_worker(fingerprint: str, spec: NodeSpec, target: Target, budget: TuneBudget,
                       lowerer: Callable[[NodeSpec, Target], Lowered | None],
                       tables: list[tuple[Any, TuningTable]], seconds: float
                       ) -> list[tuple[float | None, str | None]]:
    """A worker's job: lower each candidate (its params in its own table) and measure them
    as `measure_batch` does; the results in the candidates' order, those measured in time."""
    device = _WORKER_STATE.get("device")
    if device is None or _WORKER_STATE.get("fingerprint") != fingerprint:
        device = _open_in_worker(fingerprint, target)
        _WORKER_STATE.update(device=device, fingerprint=fingerprint, bench=None)
    device.target = target
    key = (spec, budget, fingerprint)
    bench = _WORKER_STATE.get("bench")
    if bench is None or _WORKER_STATE.get("bench_key") != key:
        bench = Bench(spec, device, budget, budget.seed)
        _WORKER_STATE.update(bench=bench, bench_key=key)
    candidates = []
    for params, table in tables:
        lowered = lowerer(spec, target.with_tuning(table))
        if lowered is None:
            raise RuntimeError(f"the builder did not take {params} in the worker")
        candidates.append((params, lowered))
    stop = time.perf_counter() + seconds
    return [result for _, result in measure_batch(device, bench, candidates, stop)]
