"""What `CompiledModel.profile()` returns: per-step times over several runs, as a table.

One run's times are noisy (a cold cache, a preempted thread), so a profile keeps every run's
time per step and reports the mean and the median; the median orders the rows and makes the
total, so that one slow run cannot reorder the table.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ember.errors import InputError

__all__ = ["Profile", "ProfileRow", "OpTime", "check_counts", "measure"]


@dataclass(frozen=True)
class ProfileRow:
    """One step of the plan (a numpy node on the numpy target): its times over the runs."""

    step: str
    op: str
    placement: str  # "device" or "host"
    mean_ms: float
    median_ms: float
    share: float  # of the profile's total, 0..1
    order: int  # the step's position in execution order


@dataclass(frozen=True)
class OpTime:
    """The steps of one op type together (`Profile.by_op()`)."""

    op: str
    steps: int
    placement: str  # "device", "host", or "device+host" when the op's steps are split
    mean_ms: float
    median_ms: float
    share: float


class Profile:
    """Per-step times of a model's calls, slowest first; `str()` prints the table."""

    def __init__(self, steps: Sequence[tuple[str, str, str]],
                 samples: Sequence[Mapping[str, float]], *, title: str = "",
                 warmup: int = 0) -> None:
        """steps: (name, op, placement) in execution order; samples: one mapping per run,
        step name -> seconds."""
        self.title = title
        self.runs = len(samples)
        self.warmup = warmup
        medians, means = {}, {}
        for name, _, _ in steps:
            times = [run[name] * 1e3 for run in samples if name in run]
            medians[name] = statistics.median(times) if times else 0.0
            means[name] = statistics.fmean(times) if times else 0.0
        self.total_ms: float = sum(medians.values())
        rows = [
            ProfileRow(name, op, placement, means[name], medians[name],
                       medians[name] / self.total_ms if self.total_ms else 0.0, order)
            for order, (name, op, placement) in enumerate(steps)
        ]
        self.rows: list[ProfileRow] = sorted(rows, key=lambda r: (-r.median_ms, r.order))

    def __len__(self) -> int:
        return len(self.rows)

    def by_op(self) -> list[OpTime]:
        """The rows summed per op type, slowest first."""
        grouped: dict[str, list[ProfileRow]] = {}
        for row in sorted(self.rows, key=lambda r: r.order):
            grouped.setdefault(row.op, []).append(row)
        totals = [
            OpTime(op, len(rows), "+".join(sorted({r.placement for r in rows})),
                   sum(r.mean_ms for r in rows), sum(r.median_ms for r in rows),
                   sum(r.share for r in rows))
            for op, rows in grouped.items()
        ]
        return sorted(totals, key=lambda t: -t.median_ms)

    def to_dicts(self) -> list[dict[str, Any]]:
        """The rows in execution order as dicts, "seconds" being the median (the form
        profile() returned before it returned a Profile)."""
        return [
            {"step": r.step, "op": r.op, "placement": r.placement, "seconds": r.median_ms / 1e3,
             "mean_ms": r.mean_ms, "median_ms": r.median_ms, "share": r.share}
            for r in sorted(self.rows, key=lambda r: r.order)
        ]

    def format(self, *, by_op: bool = False, max_rows: int | None = None) -> str:
        """The table: one line per step (per op type with by_op), then the total."""
        lines = [self.title] if self.title else []
        if by_op:
            lines.append(f"{'median ms':>10}  {'mean ms':>10}  {'share':>6}  "
                         f"{'placement':11}  {'steps':>5}  op")
            lines += [f"{t.median_ms:>10.3f}  {t.mean_ms:>10.3f}  {t.share:>6.1%}  "
                      f"{t.placement:11}  {t.steps:>5}  {t.op}" for t in self.by_op()]
        else:
            shown = self.rows if max_rows is None else self.rows[:max_rows]
            lines.append(f"{'median ms':>10}  {'mean ms':>10}  {'share':>6}  "
                         f"{'placement':9}  {'op':18}  step")
            lines += [f"{r.median_ms:>10.3f}  {r.mean_ms:>10.3f}  {r.share:>6.1%}  "
                      f"{r.placement:9}  {r.op:18}  {r.step}" for r in shown]
            if len(shown) < len(self.rows):
                lines.append(f"  ... {len(self.rows) - len(shown)} more steps")
        by_placement = {}
        for r in self.rows:
            by_placement[r.placement] = by_placement.get(r.placement, 0.0) + r.median_ms
        split = ", ".join(f"{p} {ms:.3f} ms" for p, ms in sorted(by_placement.items()))
        steps = f"{len(self.rows)} step{'' if len(self.rows) == 1 else 's'}"
        lines.append(f"{self.total_ms:>10.3f}  total of the medians over {steps} ({split}); "
                     f"{self.runs} run(s) after {self.warmup} warmup")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        slowest = f", slowest {self.rows[0].op} {self.rows[0].step!r}" if self.rows else ""
        return (f"<ember.Profile {len(self.rows)} step(s), {self.total_ms:.3f} ms total over "
                f"{self.runs} run(s){slowest}>")


def check_counts(runs: int, warmup: int) -> None:
    """InputError for counts no profile can have, before anything is compiled or run."""
    if runs < 1 or warmup < 0:
        raise InputError(f"profile needs runs >= 1 and warmup >= 0, got runs={runs}, "
                         f"warmup={warmup}")


def measure(call: Callable[[], Sequence[tuple[str, str, float]]],
            placement: Callable[[str], str], *, runs: int, warmup: int,
            title: str) -> Profile:
    """The Profile of `warmup` unmeasured then `runs` measured calls of `call`, which runs
    the model once and returns (step, op, seconds) in execution order; `placement(step)`
    says where a step ran. A model's profile() and a loaded bundle's measure alike."""
    check_counts(runs, warmup)
    samples = []
    for index in range(warmup + runs):
        timings = call()
        if index >= warmup:
            samples.append(timings)
    steps = [(name, op, placement(name)) for name, op, _ in samples[0]]
    return Profile(steps, [{name: s for name, _, s in run} for run in samples],
                   warmup=warmup, title=title)
