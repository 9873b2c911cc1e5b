"""Observers: streaming statistics of one tensor, turned into a quantization range.

Every observer keeps a fixed amount of state, whatever the number of batches: min/max keeps
two numbers; the histogram observers keep `bins` counts over a range that grows with the
data. When a batch falls outside the range, the histogram is re-binned exactly: the new bin
width is an integer multiple of the old one and the old edges stay on new edges, so each
old bin lands whole in one new bin (no mass is split or guessed).

The range a histogram gives depends on the method:
- percentile: the two-sided percentiles of the data (default 99.99, i.e. [P0.01, P99.99]);
- entropy: the clipping range whose quantized distribution is closest to the data in
  Kullback-Leibler divergence (the TensorRT calibration), over symmetric candidates;
- mse: the clipping range with the least expected squared error, clipping error of the
  bins outside plus step^2/12 rounding noise for the mass inside.
Everything is deterministic: no sampling, the same batches give the same range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["METHODS", "Observer", "MinMaxObserver", "HistogramObserver", "make_observer"]

METHODS = ("minmax", "percentile", "entropy", "mse")


class Observer:
    """One tensor's statistics. `update` takes every batch's values; `range` gives (lo, hi)."""

    def update(self, values: np.ndarray) -> None:
        raise NotImplementedError

    def range(self, levels: int = 255, symmetric: bool = False) -> tuple[float, float]:
        raise NotImplementedError

    @property
    def state_bytes(self) -> int:
        """Bytes of state kept: what must not grow with the number of batches."""
        raise NotImplementedError


def _finite(values: np.ndarray) -> np.ndarray:
    flat = np.asarray(values, dtype=np.float64).ravel()
    return flat[np.isfinite(flat)]


class MinMaxObserver(Observer):
    """The exact min and max of everything seen (non-finite values ignored)."""

    def __init__(self) -> None:
        self.lo = math.inf
        self.hi = -math.inf

    def update(self, values: np.ndarray) -> None:
        flat = _finite(values)
        if flat.size:
            self.lo = min(self.lo, float(flat.min()))
            self.hi = max(self.hi, float(flat.max()))

    def range(self, levels: int = 255, symmetric: bool = False) -> tuple[float, float]:
        if self.lo > self.hi:  # nothing seen
            return 0.0, 0.0
        return self.lo, self.hi

    @property
    def state_bytes(self) -> int:
        return 16


@dataclass
class HistogramObserver(Observer):
    """A fixed-size histogram over a range that grows, re-binned exactly as it grows."""

    method: str = "percentile"
    bins: int = 2048
    percentile: float = 99.99

    def __post_init__(self) -> None:
        if self.method not in ("percentile", "entropy", "mse"):
            raise ValueError(f"HistogramObserver: unknown method {self.method!r}")
        self.counts = np.zeros(self.bins, dtype=np.float64)
        self.lo = 0.0
        self.width = 0.0  # bin width; 0 until the first values arrive
        self.minmax = MinMaxObserver()

    @property
    def state_bytes(self) -> int:
        return int(self.counts.nbytes) + 40

    @property
    def hi(self) -> float:
        return self.lo + self.width * self.bins

    def update(self, values: np.ndarray) -> None:
        flat = _finite(values)
        if not flat.size:
            return
        self.minmax.update(flat)
        lo, hi = float(flat.min()), float(flat.max())
        if self.width == 0.0:
            span = hi - lo
            # a hair wider than the data, so that the max lies inside the last bin rather
            # than on its right edge (which a later, wider grid gives to the next bin)
            self.width = (span if span > 0 else max(abs(lo), 1e-6)) * (1 + 1e-6) / self.bins
            self.lo = lo if span > 0 else lo - self.width * self.bins / 2
        elif lo < self.lo or hi > self.hi:
            self._grow(lo, hi)
        index = np.floor((flat - self.lo) / self.width).astype(np.int64)
        np.clip(index, 0, self.bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.bins)

    def _grow(self, lo: float, hi: float) -> None:
        """Widen bins by an integer factor m and shift by whole new bins, so that old bin i
        falls into new bin (shift * m + i) // m."""
        lo, hi = min(lo, self.lo), max(hi, self.hi)
        # bins - 1: aligning the low edge on a whole new bin may cost up to one bin of reach
        factor = max(1, math.ceil((hi - lo) / (self.width * (self.bins - 1))))
        while True:
            width = self.width * factor
            shift = max(0, math.ceil((self.lo - lo) / width - 1e-12))
            new_lo = self.lo - shift * width
            if new_lo + width * self.bins >= hi and new_lo <= lo:
                break
            factor = max(factor + 1, int(factor * 1.001))
        target = (shift * factor + np.arange(self.bins)) // factor
        counts = np.zeros(self.bins, dtype=np.float64)
        np.add.at(counts, target, self.counts)
        self.counts, self.lo, self.width = counts, new_lo, width

    # -- ranges --------------------------------------------------------------------------------
    def centers(self) -> np.ndarray:
        return self.lo + self.width * (np.arange(self.bins) + 0.5)

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1), linear inside the bin where the cumulative count crosses."""
        total = self.counts.sum()
        if total == 0:
            return 0.0
        cumulative = np.cumsum(self.counts)
        target = q * total
        i = int(np.searchsorted(cumulative, target, side="left"))
        i = min(i, self.bins - 1)
        before = cumulative[i - 1] if i else 0.0
        inside = (target - before) / self.counts[i] if self.counts[i] else 0.0
        value = self.lo + self.width * (i + inside)
        return float(min(max(value, self.minmax.lo), self.minmax.hi))

    def range(self, levels: int = 255, symmetric: bool = False) -> tuple[float, float]:
        if self.width == 0.0:
            return 0.0, 0.0
        if self.method == "percentile":
            lo = self.quantile(1.0 - self.percentile / 100.0)
            hi = self.quantile(self.percentile / 100.0)
            if symmetric:
                bound = max(abs(lo), abs(hi))
                return -bound, bound
            return lo, hi
        candidates = self._candidates(levels, symmetric)
        score = self._kl if self.method == "entropy" else self._mse
        errors = [score(lo, hi, levels) for lo, hi in candidates]
        return candidates[int(np.argmin(errors))]

    def _candidates(self, levels: int, symmetric: bool) -> list[tuple[float, float]]:
        """Clipping ranges [max(lo, -t), min(hi, t)] for thresholds t up to max|x|, wide
        enough to hold at least `levels` bins (so entropy has a distribution to compare)."""
        data_lo, data_hi = self.minmax.lo, self.minmax.hi
        bound = max(abs(data_lo), abs(data_hi))
        out: list[tuple[float, float]] = []
        for t in bound * np.linspace(0.05, 1.0, 96):
            lo, hi = (-t, t) if symmetric else (max(data_lo, -t), min(data_hi, t))
            if (hi - lo) >= min(levels, self.bins) * self.width or t == bound:
                out.append((float(lo), float(hi)))
        return out

    def _mse(self, lo: float, hi: float, levels: int) -> float:
        step = (hi - lo) / (levels - 1) if hi > lo else 0.0
        centers = self.centers()
        clipped = np.clip(centers, lo, hi)
        inside = (centers >= lo) & (centers <= hi)
        error = self.counts * (centers - clipped) ** 2
        return float(error.sum() + self.counts[inside].sum() * step * step / 12.0)

    def _kl(self, lo: float, hi: float, levels: int) -> float:
        first = int(np.clip(np.floor((lo - self.lo) / self.width), 0, self.bins - 1))
        last = int(np.clip(np.ceil((hi - self.lo) / self.width), first + 1, self.bins))
        reference = self.counts[first:last].copy()
        reference[0] += self.counts[:first].sum()
        reference[-1] += self.counts[last:].sum()
        total = reference.sum()
        if total == 0:
            return math.inf
        expanded = np.zeros_like(reference)
        for group in np.array_split(np.arange(reference.size), min(levels, reference.size)):
            mass = self.counts[first:last][group]
            nonzero = mass > 0
            if nonzero.any():
                expanded[group[nonzero]] = mass.sum() / nonzero.sum()
        p = reference / total
        q_total = expanded.sum()
        if q_total == 0:
            return math.inf
        q = expanded / q_total
        support = p > 0
        q = np.where(q > 0, q, 1e-12)  # clipped mass the coarse grid gives none: heavily paid
        return float(np.sum(p[support] * np.log(p[support] / q[support])))


def make_observer(method: str, bins: int = 2048, percentile: float = 99.99) -> Observer:
    if method == "minmax":
        return MinMaxObserver()
    if method in ("percentile", "entropy", "mse"):
        return HistogramObserver(method, bins, percentile)
    raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
