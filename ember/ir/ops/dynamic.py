"""Ops whose output shape depends on input *values*: NonZero, Unique, Compress and
NonMaxSuppression.

No static shape can be inferred for them, so `infer` raises DataDependentError. The
importer folds such a node through its reference when its inputs are constants; otherwise
the node runs on the host between compiled segments (see "Data-dependent shapes" in
docs/ARCHITECTURE.md). Compress with a constant condition never reaches here: it is an
ordinary Gather with constant indices.

The references follow onnxruntime where ONNX's own reference is silent or wrong: a scalar
NonZero has one coordinate row (ONNX's reference cannot take a scalar), and an unsorted
Unique along an axis takes its slices along that axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.errors import DataDependentError, DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.ops.common import normalize_axis
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["non_max_suppression"]


def _data_dependent(op: str, what: str):
    """The `infer` of an op without a static shape: the importer must fold the node (its
    inputs constant) or leave it to the host; nothing else may ask for its type."""

    def infer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
        raise DataDependentError(f"{op}: {what} depends on the input values; it has no "
                                 f"static shape")
    return infer


def _axis_of(x: np.ndarray, axis: int, op: str) -> int:
    if x.ndim == 0:
        raise ShapeError(f"{op} axis {axis} given for a scalar input")
    return normalize_axis(axis, x.ndim, what=f"{op} axis")


# -- NonZero ----------------------------------------------------------------------------------
def _nonzero(x: np.ndarray) -> np.ndarray:
    """(rank, count) int64 coordinates of the non-zero elements in row-major order; a
    scalar counts as one axis of size 1, as onnxruntime does."""
    return np.array(np.nonzero(np.atleast_1d(x)), dtype=np.int64).reshape(max(x.ndim, 1), -1)


# -- Unique -----------------------------------------------------------------------------------
def _unique(x: np.ndarray, *, axis: int | None = None, sorted: int = 1
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unique elements (axis None: of the flattened tensor) or slices along `axis`, with
    the index of each one's first occurrence, every input's index into the result and each
    one's count. sorted=0 keeps the order of first occurrence."""
    if axis is not None:
        axis = _axis_of(x, axis, "Unique")
    y, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True,
                                          return_counts=True, axis=axis)
    inverse = inverse.reshape(-1)
    if not sorted:
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        first, inverse, counts = first[order], rank[inverse], counts[order]
        y = x.reshape(-1)[first] if axis is None else np.take(x, first, axis=axis)
    as_i64 = (np.asarray(a, dtype=np.int64) for a in (first, inverse, counts))
    return (y, *as_i64)


# -- Compress ---------------------------------------------------------------------------------
def compress_indices(condition: np.ndarray, dim: int) -> np.ndarray:
    """The int64 positions that a Compress condition keeps along an axis of size `dim`; a
    condition longer than the axis may only hold False past its end."""
    if condition.ndim != 1:
        raise ShapeError(f"Compress condition must have rank 1, got shape {condition.shape}")
    kept = np.flatnonzero(condition).astype(np.int64)
    if kept.size and kept[-1] >= dim:
        raise ShapeError(f"Compress condition selects position {int(kept[-1])} of an axis "
                         f"of size {dim}")
    return kept


def _compress(x: np.ndarray, condition: np.ndarray, *, axis: int | None = None) -> np.ndarray:
    if axis is None:
        flat = x.reshape(-1)
        return flat[compress_indices(condition, flat.size)]
    axis = _axis_of(x, axis, "Compress")
    return np.take(x, compress_indices(condition, x.shape[axis]), axis=axis)


# -- NonMaxSuppression ------------------------------------------------------------------------
def _first_scalar(array: np.ndarray | None):
    """An optional scalar input: None when absent or empty, else its first element."""
    if array is None or np.asarray(array).size == 0:
        return None
    return np.asarray(array).reshape(-1)[0]


def _extents(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """(5, boxes) rows x_min, x_max, y_min, y_max, area, computed in the boxes' dtype the
    way ONNX's reference does, so that IoUs on a threshold compare exactly as there."""
    if center_point_box:
        cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
        half_w, half_h = w / boxes.dtype.type(2), h / boxes.dtype.type(2)
        x_min, x_max, y_min, y_max = cx - half_w, cx + half_w, cy - half_h, cy + half_h
    else:
        y1, x1, y2, x2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
        x_min, x_max = np.minimum(x1, x2), np.maximum(x1, x2)
        y_min, y_max = np.minimum(y1, y2), np.maximum(y1, y2)
    return np.stack([x_min, x_max, y_min, y_max, (x_max - x_min) * (y_max - y_min)])


def _overlap_above(candidates: np.ndarray, kept: np.ndarray, iou_threshold) -> np.ndarray:
    """(candidates, kept) bool: IoU above the threshold, for extents (5, n) and (5, m).
    Boxes that do not overlap, or that have no area, never suppress (ONNX's rule)."""
    cx0, cx1, cy0, cy1, c_area = (row[:, None] for row in candidates)
    kx0, kx1, ky0, ky1, k_area = (row[None, :] for row in kept)
    ix_min, ix_max = np.maximum(cx0, kx0), np.minimum(cx1, kx1)
    iy_min, iy_max = np.maximum(cy0, ky0), np.minimum(cy1, ky1)
    inter = (ix_max - ix_min) * (iy_max - iy_min)
    union = c_area + k_area - inter
    with np.errstate(all="ignore"):
        iou = inter / union
    return ((ix_max > ix_min) & (iy_max > iy_min) & (inter > 0) & (c_area > 0)
            & (k_area > 0) & (union > 0) & (iou > iou_threshold))


# Candidates are examined this many at a time: one IoU matrix against the boxes kept so
# far and one within the chunk, so a class costs a few numpy calls per chunk, and the
# candidates after the last box a class keeps are never compared at all.
_NMS_CHUNK = 256


def _select_class(scores: np.ndarray, extents: np.ndarray, limit: int, iou_threshold,
                  score_threshold, chunk_size: int) -> list[int]:
    """Greedy selection for one (batch, class): highest score first (ties: lower box index
    first), keeping a box unless a kept box overlaps it above the IoU threshold."""
    order = np.arange(scores.size)
    if score_threshold is not None:
        order = order[scores > score_threshold]
    order = order[np.argsort(-scores[order], kind="stable")]
    kept: list[int] = []
    for start in range(0, order.size, chunk_size):
        chunk = order[start:start + chunk_size]
        boxes = extents[:, chunk]
        alive = np.ones(chunk.size, dtype=bool)
        if kept:
            alive &= ~_overlap_above(boxes, extents[:, kept], iou_threshold).any(axis=1)
        within = _overlap_above(boxes, boxes, iou_threshold)
        for j in np.flatnonzero(alive):
            if not alive[j]:
                continue
            kept.append(int(chunk[j]))
            if len(kept) >= limit:
                return kept
            alive[j + 1:] &= ~within[j, j + 1:]
    return kept


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray,
                        max_output_boxes_per_class: np.ndarray | None = None,
                        iou_threshold: np.ndarray | None = None,
                        score_threshold: np.ndarray | None = None, *,
                        center_point_box: int = 0, chunk_size: int = _NMS_CHUNK
                        ) -> np.ndarray:
    """(selected, 3) int64 rows [batch, class, box], batch by batch, class by class, each
    class's boxes in the order they were kept. `chunk_size` changes only the speed."""
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise ShapeError(f"NonMaxSuppression boxes must have shape (batches, boxes, 4), got "
                         f"{boxes.shape}")
    if scores.ndim != 3 or scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
        raise ShapeError(f"NonMaxSuppression scores {scores.shape} must have shape (batches, "
                         f"classes, boxes) matching boxes {boxes.shape}")
    limit = _first_scalar(max_output_boxes_per_class)
    limit = 0 if limit is None else max(int(limit), 0)
    iou = _first_scalar(iou_threshold)
    iou = boxes.dtype.type(0) if iou is None else iou
    score_min = _first_scalar(score_threshold)
    rows: list[tuple[int, int, int]] = []
    for b in range(boxes.shape[0] if limit else 0):
        extents = _extents(boxes[b], center_point_box)
        for c in range(scores.shape[1]):
            kept = _select_class(scores[b, c], extents, limit, iou, score_min, chunk_size)
            rows.extend((b, c, box) for box in kept)
    return np.array(rows, dtype=np.int64).reshape(len(rows), 3)


def _check_nms(boxes: np.ndarray, scores: np.ndarray, *rest, center_point_box: int = 0):
    if not (np.issubdtype(boxes.dtype, np.floating) and np.issubdtype(scores.dtype, np.floating)):
        raise DTypeError(f"NonMaxSuppression boxes and scores must be float, got "
                         f"{boxes.dtype} and {scores.dtype}")
    return non_max_suppression(boxes, scores, *rest, center_point_box=center_point_box)


OPS.register(OpDef(
    "NonZero", _data_dependent("NonZero", "the number of non-zero elements"), _nonzero,
    doc="(rank, count) int64 coordinates of the non-zero elements, row-major order.",
))
OPS.register(OpDef(
    "Unique", _data_dependent("Unique", "the number of distinct elements"), _unique,
    attrs=(attr("axis", AttrKind.INT, None), attr("sorted", AttrKind.INT, 1, (0, 1))),
    num_outputs=4,
    doc="Distinct elements or slices, first-occurrence indices, inverse indices, counts.",
))
OPS.register(OpDef(
    "Compress", _data_dependent("Compress", "the number of selected slices"), _compress,
    attrs=(attr("axis", AttrKind.INT, None),), num_inputs=(2, 2),
    doc="Slices along axis (axis None: elements of the flattened input) where condition is "
        "true.",
))
OPS.register(OpDef(
    "NonMaxSuppression", _data_dependent("NonMaxSuppression", "the number of kept boxes"),
    _check_nms, attrs=(attr("center_point_box", AttrKind.INT, 0, (0, 1)),),
    num_inputs=(2, 5),
    doc="[batch, class, box] of the boxes greedy IoU suppression keeps, per batch and "
        "class.",
))
