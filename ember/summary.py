"""The text of `CompiledModel.summary()`: steps, placement, kernels, memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ember.runtime.plan import HOST

if TYPE_CHECKING:
    from ember.compiler import CompiledModel

__all__ = ["format_summary"]


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def format_summary(model: CompiledModel, max_rows: int = 400) -> str:
    plan = model.plan
    stats = model.stats
    if model.device is not None:
        t = model.device.info.traits
        where = f"{model.target} {t.name} (family {model.device.info.family.name})"
    else:
        where = "cpu (numpy executor)"
    lines = [
        f"ember model {model.graph.name!r} on {where}, opt_level {model.opt_level}",
        "inputs:  " + ", ".join(f"{n} {plan.slots[s].type}" for n, s in plan.inputs.items()),
        "outputs: " + ", ".join(f"{n} {plan.slots[s].type}" for n, s in plan.outputs),
        f"steps: {stats.steps} ({stats.device_steps} device, {stats.host_steps} host); "
        f"kernel launches per call: {stats.kernel_launches}; distinct kernels: {stats.kernels}",
    ]
    if model.device is not None:
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
    if host and model.device is not None:
        ops = sorted({s.op for s in host})
        lines.append(f"host fallback ({len(host)} steps): {', '.join(ops)}")
    return "\n".join(lines)
