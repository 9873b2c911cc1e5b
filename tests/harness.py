"""Run one op through ember on a target and compare it with the op's numpy reference.

TOLERANCE is the one table of allowed error per dtype (rtol, atol); integer and bool
results must be exact. Float16 is stored as half and computed in float, so its bound is one
half-precision rounding of the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import ember
from ember.codegen.families import DeviceTraits, Target
from ember.codegen.params import search_space
from ember.frontends.builder import GraphBuilder
from ember.ir import OPS, DType, Value

__all__ = ["real_devices", "space_sample", "TOLERANCE", "assert_close", "run_op", "check_op", "relative_l2", "KernelLauncher"]

TOLERANCE: dict[DType, tuple[float, float]] = {
    DType.FLOAT32: (1e-5, 1e-5),
    DType.FLOAT16: (2e-3, 2e-3),
    DType.FLOAT64: (1e-12, 1e-12),
}


def real_devices() -> list[ember.DeviceInfo]:
    """OpenCL devices other than simulators, in the order ember picks its default from
    (Oclgrind is used only by name, in the tests/oclgrind tier)."""
    found = [d for d in ember.devices() if not d.traits.simulator]
    gpus = [d for d in found if d.traits.device_type == "GPU"]
    return gpus + [d for d in found if d.traits.device_type != "GPU"]


# The widest CPU a tunable space is drawn for (AVX-512: 16 lanes, 32 registers): its space
# holds every set that any CPU's register rules admit, so a sample of it is what some
# machine's tuner may pick. The rules only keep accumulators in registers; every legal set
# of the kind's own constraints must compute the right result on any device.
WIDEST_CPU = Target.of(DeviceTraits(
    "pthread-reference", "GenuineIntel",
    "OpenCL 3.0 PoCL HSTR: pthread-x86_64-unknown-linux-gnu-skylake-avx512", "3.0",
    "Portable Computing Language", "CPU", 2, 4096, 1 << 20, frozenset(),
    preferred_vector_width=16, local_mem_real=False))


def space_sample(kind: str, count: int) -> list[Any]:
    """A deterministic spread of the registered search space of tunable `kind` (every
    value of every axis in it), for tests that run each candidate of a kind."""
    return search_space(kind, WIDEST_CPU).spread(count)


def relative_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    denom = np.linalg.norm(e.ravel())
    return float(np.linalg.norm((a - e).ravel()) / (denom if denom > 0 else 1.0))


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str = "output",
                 tolerance: tuple[float, float] | None = None) -> None:
    """Same shape and dtype; floats within TOLERANCE[dtype] (NaN must match NaN)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    dtype = DType.from_numpy(expected.dtype)
    if dtype.is_float:
        rtol, atol = tolerance or TOLERANCE.get(dtype, (1e-5, 1e-5))
        np.testing.assert_allclose(
            actual.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol,
            equal_nan=True, err_msg=what,
        )
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=what)


def run_op(op: str, arrays: Sequence[np.ndarray], attrs: Mapping[str, Any] | None = None,
           *, target: str, strict: bool = True) -> tuple[list[np.ndarray], ember.CompiledModel]:
    """Build a one-node graph (inputs in0.., outputs out0..), compile at O0 and run it.
    strict=True makes sure the op really ran as a device kernel."""
    b = GraphBuilder(f"single_{op}")
    values = [b.input(f"in{i}", a.shape, DType.from_numpy(a.dtype)) for i, a in enumerate(arrays)]
    result = b.op(op, *values, **dict(attrs or {}))
    results = (result,) if isinstance(result, Value) else result
    for i, value in enumerate(results):
        b.output(f"out{i}", value)
    model = ember.compile(b.build(), target=target, opt_level=0, strict=strict and target != "cpu")
    outputs = model(**{f"in{i}": a for i, a in enumerate(arrays)})
    return [outputs[f"out{i}"] for i in range(len(results))], model


def check_op(op: str, arrays: Sequence[np.ndarray], attrs: Mapping[str, Any] | None = None,
             *, target: str, tolerance: tuple[float, float] | None = None) -> ember.CompiledModel:
    """Assert that ember's result for one op equals the numpy reference."""
    opdef = OPS[op]
    expected = opdef.evaluate(list(arrays), opdef.make_attrs(dict(attrs or {})))
    actual, model = run_op(op, arrays, attrs, target=target)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, f"{op} output {i}", tolerance)
    return model


class KernelLauncher:
    """Builds rendered kernels into one program and runs them on numpy arrays: for tests of
    kernel generators that bypass ember.compile (candidate tilings, hand-made specs)."""

    def __init__(self, target: str) -> None:
        import pyopencl as cl

        from ember.runtime.device import resolve_target

        self.cl = cl
        self.device = resolve_target(target)

    def build(self, kernels: Sequence[Any]):
        """One program of the kernels (a kernel two runs share is built once)."""
        from ember.runtime.opencl import build_program, program_source

        unique = list({k.name: k for k in kernels}.values())
        return build_program(self.device, program_source(unique))

    def buffer(self, array: np.ndarray | int):
        """A device buffer holding `array`, or an uninitialized one of that many bytes."""
        cl, ctx = self.cl, self.device.context
        if isinstance(array, int):
            return cl.Buffer(ctx, cl.mem_flags.READ_WRITE, max(array, 1))
        array = np.ascontiguousarray(array)
        return cl.Buffer(ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR,
                         hostbuf=array if array.nbytes else np.zeros(1, array.dtype))

    def launch(self, program, name: str, sizes, *buffers) -> None:
        kernel = self.cl.Kernel(program, name)
        kernel.set_args(*buffers)
        self.cl.enqueue_nd_range_kernel(self.device.queue, kernel, *sizes)

    def read(self, buffer, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        if out.size:
            self.cl.enqueue_copy(self.device.queue, out, buffer)
        self.device.queue.finish()
        return out
