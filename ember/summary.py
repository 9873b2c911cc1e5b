"""What a compiled model reports about itself: its numbers (`ModelStats`, for benchmarks
and tests) and the text of `CompiledModel.summary()` (steps, placement, kernels, memory).
Both read the ExecutionPlan only."""

from __future__ import annotations

from dataclasses import dataclass

from ember.ir import HOST
from ember.runtime.memory import build_memory_plan
from ember.runtime.types import ExecutionPlan

__all__ = ["ModelStats", "model_stats", "format_summary"]


@dataclass(frozen=True)
class ModelStats:
    """Numbers about one specialization of a compiled model (benchmarks and tests read them)."""

    steps: int
    device_steps: int
    host_steps: int
    kernel_launches: int  # per inference
    kernels: int  # distinct kernels in the program
    # Device buffers (runtime/memory.py): all of them (inputs, constants, activations,
    # scratch) with the memory plan, and one buffer per tensor (the naive plan). The
    # activation figures leave the constants (weights) out: planning cannot share those.
    peak_device_bytes: int
    naive_device_bytes: int
    peak_activation_bytes: int
    naive_activation_bytes: int


def model_stats(plan: ExecutionPlan, *, on_device: bool) -> ModelStats:
    """The numbers of one specialization's plan (device memory is 0 on the numpy target)."""
    memory = plan.memory if plan.memory is not None else build_memory_plan(plan)
    return ModelStats(
        steps=len(plan.steps),
        device_steps=sum(1 for s in plan.steps if s.placement != HOST),
        host_steps=len(plan.host_steps),
        kernel_launches=plan.kernel_launches,
        kernels=len(plan.kernels()),
        peak_device_bytes=memory.planned_bytes if on_device else 0,
        naive_device_bytes=memory.naive_bytes if on_device else 0,
        peak_activation_bytes=memory.planned_activation_bytes if on_device else 0,
        naive_activation_bytes=memory.naive_activation_bytes if on_device else 0,
    )


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def format_summary(plan: ExecutionPlan, stats: ModelStats, *, title: str, on_device: bool,
                   max_rows: int = 400) -> str:
    lines = [
        title,
        "inputs:  " + ", ".join(f"{n} {plan.slots[s].type}" for n, s in plan.inputs.items()),
        "outputs: " + ", ".join(f"{n} {plan.slots[s].type}" for n, s in plan.outputs),
        f"steps: {stats.steps} ({stats.device_steps} device, {stats.host_steps} host); "
        f"kernel launches per call: {stats.kernel_launches}; distinct kernels: {stats.kernels}",
    ]
    if on_device:
        lines.append(
            f"device memory: {_mib(stats.peak_device_bytes)} "
            f"(naive plan {_mib(stats.naive_device_bytes)}, "
            f"{_percent(stats.peak_device_bytes, stats.naive_device_bytes)}); "
            f"without weights {_mib(stats.peak_activation_bytes)} "
            f"(naive {_mib(stats.naive_activation_bytes)}, "
            f"{_percent(stats.peak_activation_bytes, stats.naive_activation_bytes)})"
        )
    lines.append(f"{'#':>4}  {'placement':9}  {'launches':>8}  {'op':18}  {'output':28}  step")
    for i, step in enumerate(plan.steps[:max_rows]):
        out = ", ".join(str(plan.slots[s].type) for s in step.outputs)
        lines.append(
            f"{i:>4}  {step.placement:9}  {step.launches:>8}  {step.op:18}  {out:28}  {step.name}"
        )
    if len(plan.steps) > max_rows:
        lines.append(f"  ... {len(plan.steps) - max_rows} more steps")
    host = [s for s in plan.steps if s.placement == HOST]
    if host and on_device:
        ops = sorted({s.op for s in host})
        lines.append(f"host fallback ({len(host)} steps): {', '.join(ops)}")
    return "\n".join(lines)
