"""Run an ExecutionPlan whose steps all run on the host, through the ops' numpy references.

A model compiled for the numpy target runs its graph (runtime/numpy.py); a bundle keeps the
plan, not the graph, so a loaded numpy-target bundle runs here: the same references on the
same attributes in the same order, giving the same arrays.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from ember.errors import DeviceError
from ember.ir import HOST, OPS
from ember.runtime.types import ExecutionPlan

__all__ = ["run_on_host", "Timings"]

Timings = list[tuple[str, str, float]]  # (step, op, seconds) in execution order


def run_on_host(plan: ExecutionPlan, inputs: Mapping[str, np.ndarray],
                timings: Timings | None = None) -> dict[str, np.ndarray]:
    """Outputs by name, each a new array the caller owns; each step's time is appended to
    `timings` when one is given."""
    # a constant's stored array may have gained an axis (ascontiguousarray makes a scalar
    # 1-D): the slot's type has its shape
    values: dict[int, np.ndarray] = {slot: array.reshape(plan.slots[slot].type.shape)
                                     for slot, array in plan.constants.items()}
    for name, slot in plan.inputs.items():
        values[slot] = np.asarray(inputs[name])
    for step in plan.steps:
        if step.placement != HOST:
            raise DeviceError(f"{step.op} {step.name!r} has device launches; the plan needs "
                              f"an OpenCL device")
        start = time.perf_counter()
        results = OPS[step.op].evaluate([values[s] for s in step.inputs], step.attrs)
        for slot, result in zip(step.outputs, results):
            want = plan.slots[slot].type.dtype.np_dtype
            array = np.asarray(result)
            values[slot] = array if array.dtype == want else array.astype(want)
        if timings is not None:
            timings.append((step.name, step.op, time.perf_counter() - start))
    return {name: np.array(values[slot], copy=True) for name, slot in plan.outputs}
