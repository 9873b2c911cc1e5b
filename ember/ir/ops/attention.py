"""Scaled dot-product attention as one op: O = softmax(Q K^T * scale + mask, axis=-1) @ V.

Exported transformers spell attention as a dozen nodes (head-split transposes, two MatMuls,
a scale, a mask Add, Softmax, the head-merge transpose); `FuseAttention` (lowering) turns
them into one `Attention` node, and one kernel computes it without ever storing the
[Sq, Sk] score matrix. The permutation attributes let the node read Q, K and V through the
head-split transposes and write through the head-merge transpose, so no transpose runs:

    Q = transpose(q, q_perm)   [batch..., Sq, D]
    K = transpose(k, k_perm)   [batch..., Sk, D]    (K itself: the op computes Q @ K^T)
    V = transpose(v, v_perm)   [batch..., Sk, Dv]
    mask                       broadcastable to [batch..., Sq, Sk], added to the scores
    out = transpose(O, out_perm)

An empty perm means identity (not ONNX Transpose's reversal). The batch dims of Q, K and V
broadcast as numpy's matmul does. `attention_geometry` computes all of this once; type
inference, the reference and the kernel builder read the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.ops.common import FLOAT_TYPES, broadcast_shapes
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["AttentionGeometry", "attention_geometry", "attention_reference", "full_perm"]


def full_perm(perm: Sequence[int], rank: int, what: str, shape: Sequence[int]) -> tuple[int, ...]:
    """`perm` checked against a rank; the empty perm is the identity."""
    if len(perm) == 0:
        return tuple(range(rank))
    if sorted(perm) != list(range(rank)):
        raise ShapeError(f"{what} {tuple(perm)} is not a permutation of the {rank} axes of "
                         f"shape {tuple(shape)}")
    return tuple(perm)


@dataclass(frozen=True)
class AttentionGeometry:
    """The logical problem behind an Attention node.

    `*_perm` are full permutations: logical axis i of Q is axis q_perm[i] of the q input
    (likewise K, V); axis i of the output is logical axis out_perm[i] of O. `*_batch` are
    the logical batch shapes of Q, K and V, `batch` their broadcast."""

    q_perm: tuple[int, ...]
    k_perm: tuple[int, ...]
    v_perm: tuple[int, ...]
    out_perm: tuple[int, ...]
    q_batch: tuple[int, ...]
    k_batch: tuple[int, ...]
    v_batch: tuple[int, ...]
    batch: tuple[int, ...]
    sq: int
    sk: int
    d: int
    dv: int
    mask_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...]

    @property
    def batch_size(self) -> int:
        return math.prod(self.batch)

    @property
    def logical_out(self) -> tuple[int, ...]:
        """O's shape before out_perm: [batch..., Sq, Dv]."""
        return self.batch + (self.sq, self.dv)

    @property
    def scores_shape(self) -> tuple[int, ...]:
        return self.batch + (self.sq, self.sk)


def _logical(shape: Sequence[int], perm: Sequence[int], name: str) -> tuple[tuple[int, ...],
                                                                              tuple[int, ...]]:
    if len(shape) < 2:
        raise ShapeError(f"Attention input {name} must have rank >= 2 (its last two axes, "
                         f"after {name}_perm, are the matrix), got shape {tuple(shape)}")
    p = full_perm(perm, len(shape), f"{name}_perm", shape)
    return p, tuple(shape[i] for i in p)


def attention_geometry(q: Sequence[int], k: Sequence[int], v: Sequence[int],
                       mask: Sequence[int] | None, q_perm: Sequence[int] = (),
                       k_perm: Sequence[int] = (), v_perm: Sequence[int] = (),
                       out_perm: Sequence[int] = ()) -> AttentionGeometry:
    """Check the shapes against each other; raise ShapeError naming the disagreeing parts."""
    qp, ql = _logical(q, q_perm, "q")
    kp, kl = _logical(k, k_perm, "k")
    vp, vl = _logical(v, v_perm, "v")
    if ql[-1] != kl[-1]:
        raise ShapeError(f"Attention Q {ql} and K {kl} (after q_perm/k_perm) must share the "
                         f"head size D (last axis): {ql[-1]} != {kl[-1]}")
    if kl[-2] != vl[-2]:
        raise ShapeError(f"Attention K {kl} and V {vl} (after k_perm/v_perm) must share the "
                         f"key count Sk (axis -2): {kl[-2]} != {vl[-2]}")
    try:
        batch = broadcast_shapes(ql[:-2], kl[:-2], vl[:-2])
    except ShapeError as exc:
        raise ShapeError(f"Attention batch dims of Q {ql}, K {kl} and V {vl} (after the "
                         f"perms) do not broadcast: {exc}") from None
    sq, sk, d, dv = ql[-2], kl[-2], ql[-1], vl[-1]
    scores = batch + (sq, sk)
    if mask is not None:
        mask = tuple(mask)
        fits = len(mask) <= len(scores) and all(
            m in (1, s) for m, s in zip(reversed(mask), reversed(scores)))
        if not fits:
            raise ShapeError(f"Attention mask {mask} does not broadcast to the scores "
                             f"[batch..., Sq, Sk] = {scores}")
    logical_out = batch + (sq, dv)
    op = full_perm(out_perm, len(logical_out), "out_perm", logical_out)
    return AttentionGeometry(qp, kp, vp, op, ql[:-2], kl[:-2], vl[:-2], batch, sq, sk, d, dv,
                             mask, tuple(logical_out[i] for i in op))


def _geometry(inputs: Sequence[TensorType], attrs: Attrs) -> AttentionGeometry:
    mask = inputs[3].shape if len(inputs) > 3 else None
    return attention_geometry(inputs[0].shape, inputs[1].shape, inputs[2].shape, mask,
                              attrs["q_perm"], attrs["k_perm"], attrs["v_perm"],
                              attrs["out_perm"])


def _infer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    dtype = inputs[0].dtype
    if dtype not in FLOAT_TYPES:
        raise DTypeError(f"Attention takes float tensors, got q of {dtype}")
    for name, t in zip(("k", "v", "mask"), inputs[1:]):
        if t.dtype != dtype:
            raise DTypeError(f"Attention input {name} has dtype {t.dtype}; expected q's "
                             f"{dtype} (a boolean mask must be turned into an additive one)")
    return (TensorType(_geometry(inputs, attrs).out_shape, dtype),)


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """float64 stays float64; every other float is computed in float32, as the kernel does."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                        mask: np.ndarray | None = None, *, scale: float = 1.0,
                        q_perm: Sequence[int] = (), k_perm: Sequence[int] = (),
                        v_perm: Sequence[int] = (), out_perm: Sequence[int] = ()) -> np.ndarray:
    """The decomposition the op replaces, computed in float32 (float64 for float64 tensors)
    with the stable softmax (the row max is subtracted first). Scores are rounded to the
    compute type before the mask is added, as the unfused graph's Add does; a row whose
    scores are all -inf, or hold a NaN or +inf, gives NaN, as the unfused Softmax does. With
    no keys (Sk = 0) the output is zeros, as the unfused P @ V with an empty inner axis."""
    g = attention_geometry(q.shape, k.shape, v.shape, None if mask is None else mask.shape,
                           q_perm, k_perm, v_perm, out_perm)
    acc = _compute_dtype(q.dtype)
    qq = np.transpose(q, g.q_perm).astype(acc, copy=False)
    kk = np.transpose(k, g.k_perm).astype(acc, copy=False)
    vv = np.transpose(v, g.v_perm).astype(acc, copy=False)
    if g.sk == 0:
        out = np.zeros(g.logical_out, acc)
    else:
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            scores = np.matmul(qq, np.swapaxes(kk, -1, -2)) * acc.type(scale)
            if mask is not None:
                scores = scores + mask.astype(acc, copy=False)
            scores = np.broadcast_to(scores, g.scores_shape)
            shifted = scores - scores.max(axis=-1, keepdims=True)  # NaN propagates
            weights = np.exp(shifted)
            probs = weights / weights.sum(axis=-1, keepdims=True)
            out = np.matmul(probs, vv)
        out = np.broadcast_to(out, g.logical_out)
    return np.transpose(out, g.out_perm).astype(q.dtype)


_INTS = AttrKind.INTS

ATTENTION = OPS.register(OpDef(
    "Attention", _infer, attention_reference,
    attrs=(attr("scale", AttrKind.FLOAT, 1.0), attr("q_perm", _INTS, ()),
           attr("k_perm", _INTS, ()), attr("v_perm", _INTS, ()), attr("out_perm", _INTS, ())),
    num_inputs=(3, 4),
    doc="softmax(Q K^T * scale + mask, axis=-1) @ V with Q, K, V read through q_perm, "
        "k_perm, v_perm and the result written through out_perm (empty perm: identity).",
))
