"""Losses: NegativeLogLikelihoodLoss (SoftmaxCrossEntropyLoss imports as LogSoftmax + it).

The input holds log-probabilities (N, C, d1..dk) and the target class indices (N, d1..dk).
A target equal to `ignore_index` contributes nothing, to the sum and to the mean's divisor
alike; it may lie outside [0, C) (a padding label such as -100), so it is masked before
it is used as an index. Any other target outside [0, C) is an error. The mean divides by
the summed weights of the targets that count (their number without a weight input).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.ops.common import FLOAT_TYPES, require_dtype
from ember.ir.ops.movement_select import require_index_dtype
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["LOSS_REDUCTIONS"]

LOSS_REDUCTIONS = ("none", "sum", "mean")


def _infer_nll(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x, target = inputs[0], inputs[1]
    require_dtype(x, FLOAT_TYPES, "NegativeLogLikelihoodLoss input")
    require_index_dtype(target, "NegativeLogLikelihoodLoss target")
    if x.rank < 2 or target.shape != (x.shape[0],) + x.shape[2:]:
        raise ShapeError(f"NegativeLogLikelihoodLoss input {x.shape} (N, C, d1..) needs a "
                         f"target of shape (N, d1..), got {target.shape}")
    if len(inputs) > 2:
        weight = inputs[2]
        if weight.shape != (x.shape[1],):
            raise ShapeError(f"NegativeLogLikelihoodLoss weight {weight.shape} must have "
                             f"one value per class ({x.shape[1]})")
        if weight.dtype is not x.dtype:
            raise DTypeError(f"NegativeLogLikelihoodLoss weight has dtype {weight.dtype}; "
                             f"expected the input's {x.dtype}")
    shape = target.shape if attrs["reduction"] == "none" else ()
    return (x.with_shape(shape),)


def _nll(x: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None, *,
         reduction: str = "mean", ignore_index: int | None = None) -> np.ndarray:
    classes = x.shape[1]
    target = np.asarray(target).astype(np.int64)
    counted = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    bad = counted & ((target < 0) | (target >= classes))
    if bad.any():
        raise ShapeError(f"NegativeLogLikelihoodLoss target {int(target[bad][0])} is out of "
                         f"range for {classes} classes")
    index = np.where(counted, target, 0)
    picked = np.take_along_axis(x, index[:, None], axis=1)[:, 0].astype(np.float64)
    w = counted.astype(np.float64)
    if weight is not None:
        w = w * np.asarray(weight, np.float64)[index]
    loss = -picked * w
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            loss = loss.sum() / w.sum()
    return np.asarray(loss).astype(x.dtype)


OPS.register(OpDef(
    "NegativeLogLikelihoodLoss", _infer_nll, _nll,
    attrs=(attr("reduction", AttrKind.STRING, "mean", LOSS_REDUCTIONS),
           attr("ignore_index", AttrKind.INT, None)),
    num_inputs=(2, 3),
    doc="-input[n, target[n, d..], d..] times the target's weight; reduced by none, sum or "
        "the weighted mean. Targets equal to ignore_index count for nothing.",
))
