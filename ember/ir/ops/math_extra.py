"""Small math ops that run on the host: Det (a batched determinant, a LAPACK call), and the
window functions BlackmanWindow / HammingWindow / HannWindow, whose length is the value of
their input (folded when that is a constant; otherwise their output shape is data-dependent).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.errors import DataDependentError, DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.common import FLOAT_TYPES, require_dtype
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["WINDOWS", "window"]


# -- Det --------------------------------------------------------------------------------------
def _infer_det(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    require_dtype(x, FLOAT_TYPES, "Det input 0")
    if x.rank < 2 or x.shape[-1] != x.shape[-2]:
        raise ShapeError(f"Det needs square matrices in the last two axes, got {x.shape}")
    return (TensorType(x.shape[:-2], x.dtype),)


def _reference_det(x: np.ndarray) -> np.ndarray:
    """LU in float64 (numpy's det), rounded once to the input's type."""
    return np.asarray(np.linalg.det(x.astype(np.float64))).astype(x.dtype)


OPS.register(OpDef(
    "Det", _infer_det, _reference_det,
    doc="The determinant of each matrix in the last two axes.",
))


# -- windows ----------------------------------------------------------------------------------
# Each window as its cosine terms: w[n] = sum_k a_k cos(2 pi k n / N), with N the length
# (periodic) or the length - 1 (symmetric).
WINDOWS: dict[str, tuple[float, ...]] = {
    "HannWindow": (0.5, -0.5),
    "HammingWindow": (25.0 / 46.0, -(1.0 - 25.0 / 46.0)),
    "BlackmanWindow": (0.42, -0.5, 0.08),
}
_SIZE_TYPES = frozenset({DType.INT32, DType.INT64})


def window(name: str, size: int, periodic: int, dtype: DType) -> np.ndarray:
    """The window of `size` points, computed in float64 and rounded once."""
    n = np.arange(size, dtype=np.float64)
    period = size if periodic else size - 1
    with np.errstate(all="ignore"):
        w = sum(a * np.cos(2.0 * np.pi * k * n / period) for k, a in enumerate(WINDOWS[name]))
    return np.asarray(w, dtype=np.float64).astype(dtype.np_dtype)


def _make_window_infer(name: str):
    def infer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
        require_dtype(inputs[0], _SIZE_TYPES, f"{name} size")
        if attrs["output_datatype"] not in FLOAT_TYPES and not attrs["output_datatype"].is_integer:
            raise DTypeError(f"{name} output_datatype {attrs['output_datatype']} is not numeric")
        raise DataDependentError(f"{name}: the output's length is the value of its input")

    return infer


def _make_window_reference(name: str):
    def reference(size: np.ndarray, *, output_datatype: DType, periodic: int) -> np.ndarray:
        flat = np.asarray(size).reshape(-1)
        if flat.size != 1 or int(flat[0]) < 0:
            raise ShapeError(f"{name} size must be one non-negative integer, got {size!r}")
        return window(name, int(flat[0]), periodic, output_datatype)

    return reference


for _name in WINDOWS:
    OPS.register(OpDef(
        _name, _make_window_infer(_name), _make_window_reference(_name),
        attrs=(attr("output_datatype", AttrKind.DTYPE, DType.FLOAT32),
               attr("periodic", AttrKind.INT, 1, (0, 1))),
        doc="A window of `size` (the input's value) points, as torch's *_window.",
    ))
