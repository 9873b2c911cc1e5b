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
           "contiguous_strides", "broadcast_strides", "half_load", "half_store",
           "HALF_CALL_LANES",
           "compute_type", "pointer_type", "load_expr", "store_stmt", "extensions_for"]

# Half tensors are stored as half and computed in float (no cl_khr_fp16 needed). A
# conversion call takes at most 8 lanes: on CPUs PoCL's LLVM 14 aborts the process on
# 16-lane half conversions ("Do not know how to split this operator's operand"), and a
# 512-bit vector crossing a builtin call is passed one way by the builtin library (built for
# the host's AVX-512) and another by kernels compiled for a CPU without it.
HALF_CALL_LANES = 8


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


def half_load(lanes: int, pointer: str) -> str:
    """An expression: `lanes` halves at `pointer`, as float (floatN), in calls of at most
    HALF_CALL_LANES lanes."""
    if lanes == 1:
        return f"vload_half(0, {pointer})"
    if lanes > HALF_CALL_LANES:
        part = lanes // 2
        return (f"(float{lanes})({half_load(part, pointer)}, "
                f"{half_load(part, f'({pointer}) + {part}')})")
    return f"vload_half{lanes}(0, {pointer})"


def half_store(lanes: int, value: str, pointer: str) -> str:
    """Statements: the float(N) `value` stored as halves at `pointer`, in calls of at most
    HALF_CALL_LANES lanes."""
    if lanes == 1:
        return f"vstore_half({value}, 0, {pointer});"
    if lanes > HALF_CALL_LANES:
        part = lanes // 2
        return (half_store(part, f"({value}).lo", pointer) + " "
                + half_store(part, f"({value}).hi", f"({pointer}) + {part}"))
    return f"vstore_half{lanes}({value}, 0, {pointer});"


# -- element types ----------------------------------------------------------------------------------
def compute_type(dtype: DType) -> str:
    """The C type values of `dtype` are computed in (half is computed in float)."""
    return "float" if dtype is DType.FLOAT16 else dtype.cl_name


def pointer_type(dtype: DType) -> str:
    return dtype.cl_name


def load_expr(dtype: DType, pointer: str, offset: str) -> str:
    if dtype is DType.FLOAT16:
        return f"vload_half({offset}, {pointer})"
    return f"{pointer}[{offset}]"


def store_stmt(dtype: DType, pointer: str, offset: str, value: str) -> str:
    if dtype is DType.FLOAT16:
        return f"vstore_half({value}, {offset}, {pointer});"
    return f"{pointer}[{offset}] = {value};"


def extensions_for(dtypes: Sequence[DType]) -> frozenset[str]:
    return frozenset({"cl_khr_fp64"}) if DType.FLOAT64 in dtypes else frozenset()
