"""Observers against hand-computed values: min/max exact, percentiles against numpy, the
histogram's exact re-binning, bounded memory, and the clipping searches on data whose best
range is known."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ember.quantization.observers import (
    HistogramObserver,
    MinMaxObserver,
    make_observer,
)

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)
batch_lists = st.lists(arrays(np.float32, st.integers(1, 50), elements=finite), min_size=1,
                       max_size=6)


@given(batch_lists)
def test_minmax_is_exact_and_streaming_equals_one_shot(batches):
    streaming = MinMaxObserver()
    for b in batches:
        streaming.update(b)
    whole = np.concatenate(batches)
    one_shot = MinMaxObserver()
    one_shot.update(whole)
    assert streaming.range() == one_shot.range() == (float(whole.min()), float(whole.max()))


def test_minmax_ignores_non_finite_values():
    observer = MinMaxObserver()
    observer.update(np.array([np.nan, -np.inf, 2.0, -3.0, np.inf], np.float32))
    assert observer.range() == (-3.0, 2.0)


@given(batch_lists)
def test_histogram_keeps_every_value_while_it_grows(batches):
    observer = HistogramObserver("percentile", bins=64)
    for b in batches:
        observer.update(b)
    whole = np.concatenate(batches).astype(np.float64)
    assert observer.counts.sum() == whole.size
    assert observer.lo <= whole.min() and whole.max() <= observer.hi
    # each value sits in the bin that holds it (re-binning moves no mass across edges); a
    # value within float rounding of an edge may sit on either side of it
    position = (whole - observer.lo) / observer.width
    near_edge = np.abs(position - np.rint(position)) < 1e-6
    index = np.clip(np.floor(position), 0, 63).astype(int)
    sure = np.bincount(index[~near_edge], minlength=64)
    either = np.bincount(np.clip(np.rint(position[near_edge]), 0, 64).astype(int), minlength=65)
    assert np.all(sure <= observer.counts)
    assert np.all(observer.counts <= sure + either[:64] + either[1:])


@pytest.mark.parametrize("q", [90.0, 99.0, 99.9])
def test_percentile_within_one_bin_of_numpy(q):
    rng = np.random.default_rng(0)
    # the range grows over the batches (scale 1, then 3, then 10)
    batches = [rng.standard_normal(4000) * s for s in (1.0, 3.0, 10.0)]
    observer = HistogramObserver("percentile", bins=2048, percentile=q)
    for b in batches:
        observer.update(b)
    whole = np.concatenate(batches)
    lo, hi = observer.range()
    # the histogram finds the bin where the cumulative count reaches q% of the values: the
    # smallest value whose empirical CDF reaches q, numpy's "inverted_cdf", lies in that bin
    assert abs(hi - np.percentile(whole, q, method="inverted_cdf")) <= observer.width
    assert abs(lo - np.percentile(whole, 100 - q, method="inverted_cdf")) <= observer.width


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_state_does_not_grow_with_batches(method):
    observer = make_observer(method)
    rng = np.random.default_rng(1)
    observer.update(rng.standard_normal(100))
    size = observer.state_bytes
    for i in range(200):
        observer.update(rng.standard_normal(100) * (1 + i))  # the range keeps growing
    assert observer.state_bytes == size


def test_entropy_clips_rare_outliers():
    """Gaussian data with 0.01% outliers at 100: keeping them would make the 8-bit step ~0.8,
    coarser than most values, so the KL search clips them, yet keeps the bulk (|x| < 3)."""
    rng = np.random.default_rng(2)
    data = rng.standard_normal(200_000)
    data[:20] = 100.0
    observer = make_observer("entropy")
    observer.update(data)
    lo, hi = observer.range(levels=255, symmetric=True)
    assert 3.0 < hi < 50.0 and lo == -hi


@pytest.mark.parametrize(("levels", "optimum"), [(16, 5.03), (256, 9.89)])
def test_mse_finds_the_known_clip_of_laplace_data(levels, optimum):
    """The MSE-optimal symmetric clip of Laplace(0, 1) data is 5.03 at 4 bits and 9.89 at 8
    bits (Banner et al., ACIQ, 2019); the search works on a 2048-bin histogram with 96
    candidates, within 10%."""
    rng = np.random.default_rng(2)
    observer = make_observer("mse")
    observer.update(rng.laplace(0.0, 1.0, 200_000))
    lo, hi = observer.range(levels=levels, symmetric=True)
    assert lo == -hi and abs(hi - optimum) < 0.1 * optimum


def test_mse_keeps_the_whole_range_of_uniform_data():
    """Uniform data has no tail: clipping only adds error, so MSE picks (about) min/max."""
    rng = np.random.default_rng(3)
    data = rng.uniform(-1.0, 1.0, 100_000)
    observer = make_observer("mse")
    observer.update(data)
    lo, hi = observer.range()
    assert hi > 0.95 and lo < -0.95


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_ranges_are_deterministic(method):
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal(1000) * (i + 1) for i in range(4)]
    ranges = []
    for _ in range(2):
        observer = make_observer(method)
        for b in batches:
            observer.update(b)
        ranges.append(observer.range())
    assert ranges[0] == ranges[1]
