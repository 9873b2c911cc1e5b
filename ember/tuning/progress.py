"""What the tuner tells while it measures: `TuneProgress` hears it (every method does
nothing, so a display overrides only what it shows), and `TuneBar` shows it as one tqdm bar
on stderr over a model's kernels and their candidates.

The bar counts kernels, a kernel's share filled as its candidates are measured, and its
ETA never passes the budget: it is the rate so far's estimate, capped by what the model's
budget and the kernels' own budgets leave. Times are `time.perf_counter()` seconds, the
clock the tuner's deadlines use.
"""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = ["TuneProgress", "TuneBar", "progress_of"]


class TuneProgress:
    """Callbacks of one tuning run (`Tuner.tune_all`, or a single `Tuner.tune`)."""

    def begin(self, kernels: int, deadline: float, kernel_seconds: float) -> None:
        """`kernels` distinct kernels will be tuned, all of them by `deadline`, each within
        `kernel_seconds`."""

    def kernel(self, label: str, planned: int, stop: float) -> None:
        """A kernel's search starts: about `planned` candidates, until `stop` at the latest
        (planned 0: it is not measured, e.g. already in the TuningDB)."""

    def candidate(self, measured: int, planned: int, best: str | None) -> None:
        """A candidate was measured: `measured` of about `planned` so far (the plan grows
        when a refinement adds neighbours); `best` is the best rate yet, e.g. '3.1 GFLOP/s'."""

    def kernel_done(self) -> None:
        """The kernel's search ended."""

    def end(self) -> None:
        """The run ended (its budget may have left kernels untuned)."""


def _interval(seconds: float) -> str:
    """[H:]MM:SS, as tqdm writes its times."""
    from tqdm import tqdm

    return tqdm.format_interval(seconds)


def _bar_class() -> type:
    """tqdm with two more fields for its format: `kernels` (done / all) and `eta`, read
    from `fields()` (set before tqdm's first display)."""
    from tqdm import tqdm

    class _Bar(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, fields: Any, **kwargs: Any) -> None:
            self.fields = fields
            super().__init__(*args, **kwargs)

        @property
        def format_dict(self) -> dict[str, Any]:
            found = super().format_dict
            found.update(self.fields())
            return found

    return _Bar


class TuneBar(TuneProgress):
    """One tqdm bar over a model's kernels and their candidates, with an ETA within the
    budget. `show`: None lets tqdm decide (shown on a terminal), False hides it."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {kernels} [{elapsed}<{eta}]{postfix}"

    def __init__(self, show: bool | None = None, file: Any = None) -> None:
        self.show, self.file = show, file
        self._bar: Any = None
        self._kernels = 0
        self._done = 0
        self._fraction = 0.0  # of the current kernel
        self._deadline = math.inf
        self._kernel_seconds = math.inf
        self._stop = math.inf  # the current kernel's
        self._start = self._kernel_start = time.perf_counter()
        self._single = False  # begun by `kernel` for one kernel: ended by `kernel_done`

    # -- TuneProgress -----------------------------------------------------------------------
    def begin(self, kernels: int, deadline: float, kernel_seconds: float) -> None:
        self.end()
        self._kernels, self._done, self._fraction = kernels, 0, 0.0
        self._deadline, self._kernel_seconds = deadline, kernel_seconds
        self._start = time.perf_counter()
        self._bar = _bar_class()(total=max(kernels, 1), desc="tuning", file=self.file,
                                 bar_format=self.FORMAT, dynamic_ncols=True,
                                 fields=self._fields,
                                 disable=None if self.show is None else not self.show)

    def kernel(self, label: str, planned: int, stop: float) -> None:
        if self._bar is None:  # a single kernel tuned on its own: a bar of its own
            self.begin(1, stop, stop - time.perf_counter())
            self._single = True
        self._fraction, self._stop = 0.0, stop
        self._kernel_start = time.perf_counter()
        self._bar.set_description_str(label[:40], refresh=False)
        self._bar.set_postfix_str(f"{planned} candidates" if planned else "", refresh=False)
        self._refresh()

    def candidate(self, measured: int, planned: int, best: str | None) -> None:
        if self._bar is None:
            return
        # the larger of the candidates' and the time's share, never going back (the plan
        # grows when a refinement adds neighbours)
        now = time.perf_counter()
        spent = ((now - self._kernel_start) / (self._stop - self._kernel_start)
                 if self._kernel_start < self._stop < math.inf else 0.0)
        self._fraction = min(max(self._fraction, measured / max(planned, 1), spent), 0.99)
        text = f"candidate {measured}/{max(planned, measured)}"
        self._bar.set_postfix_str(f"{text}, best {best}" if best else text, refresh=False)
        self._refresh()

    def kernel_done(self) -> None:
        if self._bar is None:
            return
        self._done, self._fraction, self._stop = self._done + 1, 0.0, math.inf
        self._refresh()
        if self._single:
            self.end()

    def end(self) -> None:
        if self._bar is not None:
            self._bar.set_description_str("tuned", refresh=False)
            self._bar.set_postfix_str("", refresh=False)
            self._refresh()
            self._bar.close()
            self._bar = None
        self._single = False

    # -- the display --------------------------------------------------------------------------
    def eta(self, now: float | None = None) -> float:
        """Seconds left: the rate so far's estimate, capped by the budgets."""
        now = time.perf_counter() if now is None else now
        progress = self._done + self._fraction
        left = max(self._kernels - progress, 0.0)
        estimate = (now - self._start) * left / progress if progress > 0 else math.inf
        current = max(self._stop - now, 0.0) if self._stop < math.inf else 0.0
        after = max(self._kernels - self._done - (1 if self._stop < math.inf else 0), 0)
        cap = min(self._deadline - now,
                  current + (after * self._kernel_seconds if after else 0.0))
        return max(min(estimate, cap), 0.0)

    def _fields(self) -> dict[str, str]:
        """The bar's own format fields: kernels done of all, and the ETA."""
        left = self.eta()
        return {"kernels": f"{self._done}/{self._kernels} kernels",
                "eta": _interval(left) if left < math.inf else "?"}

    def _refresh(self) -> None:
        self._bar.n = min(self._done + self._fraction, self._bar.total)
        self._bar.refresh()


def progress_of(progress: bool | None | TuneProgress) -> TuneProgress:
    """A TuneProgress for the tuner's `progress` argument: an object as given, else a bar
    (True: always shown, False: hidden, None: shown on a terminal)."""
    return progress if isinstance(progress, TuneProgress) else TuneBar(progress)
