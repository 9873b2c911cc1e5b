"""Hypothesis strategies shared by the op and pass tests.

Shapes favour the sizes that break kernels: 1, primes, and sizes that are not multiples of
any tile. Array values come from a drawn seed through numpy's generator (fast for big
arrays); negative values are always in play, NaN/inf only where a test asks for them.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from ember.ir import DType

__all__ = [
    "DIMS", "dims", "shapes", "broadcastable_shapes", "arrays", "array_for", "float_dtypes",
    "FLOAT_DTYPES", "INT_DTYPES",
]

# Sizes that stress edge handling: 1, small primes, off-by-one around powers of two.
DIMS = (1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 33)
FLOAT_DTYPES = (DType.FLOAT32, DType.FLOAT16)
INT_DTYPES = (DType.INT32, DType.INT64, DType.INT8, DType.UINT8)


def dims(max_dim: int = 33) -> st.SearchStrategy[int]:
    return st.sampled_from([d for d in DIMS if d <= max_dim])


def shapes(min_rank: int = 0, max_rank: int = 4, max_dim: int = 17,
           max_size: int = 4096) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes with at most `max_size` elements."""
    return st.lists(dims(max_dim), min_size=min_rank, max_size=max_rank).map(tuple).filter(
        lambda s: int(np.prod(s)) <= max_size
    )


@st.composite
def broadcastable_shapes(draw, count: int = 2, min_rank: int = 0, max_rank: int = 4,
                         max_dim: int = 17) -> tuple[tuple[int, ...], ...]:
    """`count` shapes that broadcast together: each drops leading axes or sets axes to 1."""
    full = draw(shapes(min_rank, max_rank, max_dim))
    out = []
    for _ in range(count):
        drop = draw(st.integers(0, len(full)))
        shape = list(full[drop:])
        for axis in range(len(shape)):
            if draw(st.booleans()) and draw(st.booleans()):
                shape[axis] = 1
        out.append(tuple(shape))
    return tuple(out)


def array_for(seed: int, shape: tuple[int, ...], dtype: DType, *, low: float = -4.0,
              high: float = 4.0, special: bool = False) -> np.ndarray:
    """A deterministic array for (seed, shape, dtype). `special` mixes in NaN, inf and 0."""
    rng = np.random.default_rng(seed)
    if dtype is DType.BOOL:
        return rng.random(shape) < 0.5
    if dtype.is_float:
        values = rng.uniform(low, high, size=shape)
        if special and values.size:
            mask = rng.random(shape)
            values[mask < 0.05] = np.nan
            values[(mask >= 0.05) & (mask < 0.08)] = np.inf
            values[(mask >= 0.08) & (mask < 0.11)] = -np.inf
            values[(mask >= 0.11) & (mask < 0.14)] = 0.0
        return values.astype(dtype.np_dtype)
    info = np.iinfo(dtype.np_dtype)
    lo, hi = max(int(low) * 25, info.min), min(int(high) * 25, info.max)
    return rng.integers(lo, hi + 1, size=shape).astype(dtype.np_dtype)


@st.composite
def arrays(draw, shape: tuple[int, ...], dtype: DType, **kwargs) -> np.ndarray:
    seed = draw(st.integers(0, 2**32 - 1))
    return array_for(seed, shape, dtype, **kwargs)


def float_dtypes() -> st.SearchStrategy[DType]:
    return st.sampled_from(FLOAT_DTYPES)
