"""The C text kernel builders write into templates: index types, literals, type sizes.

One place for them, so that every kernel spells a literal, picks an index type and sizes
an accumulator the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ember.ir import DType

__all__ = ["index_type", "int_literal", "c_literal", "float_literal", "ctype_bytes",
           "contiguous_strides", "broadcast_strides"]


def index_type(*sizes: int) -> str:
    """int while every index fits in 31 bits (faster on GPUs), long beyond."""
    return "int" if max(sizes, default=0) < 2**31 else "long"


def int_literal(value: int) -> str:
    """An integer literal for a #define (long where int would overflow)."""
    return f"{value}L" if abs(value) >= 2**31 else str(value)


def c_literal(value: float | int | bool, dtype: DType) -> str:
    """A C literal of `value` in the compute type of `dtype` (half computes in float)."""
    if dtype.is_float:
        value = float(value)
        if math.isnan(value):
            return "NAN"
        if math.isinf(value):
            return "INFINITY" if value > 0 else "(-INFINITY)"
        if dtype is DType.FLOAT64:
            return repr(value)
        return f"{np.float32(value)!r}f".replace("np.float32(", "").replace(")", "")
    if dtype is DType.BOOL:
        return "1" if value else "0"
    text = str(int(value))
    if dtype in (DType.INT64,):
        return f"{text}L"
    if dtype in (DType.UINT64,):
        return f"{text}UL"
    if dtype in (DType.UINT32,):
        return f"{text}U"
    return f"(({dtype.cl_name}){text})"


def float_literal(value: float, ctype: str) -> str:
    """A literal of `value` in the C float type `ctype` ("float" or "double")."""
    return c_literal(value, DType.FLOAT64 if ctype == "double" else DType.FLOAT32)


def ctype_bytes(ctype: str) -> int:
    """Bytes of a C scalar type that kernels accumulate in."""
    return 8 if ctype in ("double", "long", "ulong") else 4


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, acc = [], 1
    for dim in reversed(shape):
        strides.append(acc)
        acc *= max(dim, 1)
    return tuple(reversed(strides))


def broadcast_strides(in_shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, ...]:
    """Strides (in elements) to read `in_shape` at the coordinates of `out_shape`; 0 on axes
    where the input broadcasts."""
    pad = len(out_shape) - len(in_shape)
    own = contiguous_strides(in_shape)
    out = []
    for axis in range(len(out_shape)):
        k = axis - pad
        out.append(0 if k < 0 or in_shape[k] == 1 else own[k])
    return tuple(out)
