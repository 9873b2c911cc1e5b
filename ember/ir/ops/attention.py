"""Scaled dot-product attention as one op: O = softmax(cap(Q K^T * scale) + mask, axis=-1) @ V.

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

`softcap` c > 0 bounds the scores before the mask, cap(s) = c * tanh(s / c) (ONNX Attention's
softcap; 0 leaves them alone). `zero_masked_rows` gives zeros for a query row with no key
left (every score -inf), as ONNX Attention defines it, instead of the NaN an unfused Softmax
gives; `zero_masked_rows=2` zeroes every row the unfused Softmax makes NaN (one holding a NaN
or +inf score, too), as exporters' Where(IsNaN(P), 0, P) guard does. ONNX's Attention node itself (heads, grouped-query K/V, causal and padding masks,
caches) is mapped onto this op by the ONNX frontend.

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

__all__ = ["AttentionGeometry", "attention_geometry", "attention_reference", "full_perm",
           "linear_attention_reference"]


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
                        v_perm: Sequence[int] = (), out_perm: Sequence[int] = (),
                        softcap: float = 0.0, zero_masked_rows: int = 0) -> np.ndarray:
    """The decomposition the op replaces, computed in float32 (float64 for float64 tensors)
    with the stable softmax (the row max is subtracted first). Scores are rounded to the
    compute type before the mask is added, as the unfused graph's Add does; a row whose
    scores are all -inf gives NaN, as the unfused Softmax does (zeros with
    `zero_masked_rows`), one holding a NaN or +inf gives NaN. With no keys (Sk = 0) the
    output is zeros, as the unfused P @ V with an empty inner axis."""
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
            if softcap > 0:
                scores = acc.type(softcap) * np.tanh(scores * acc.type(1.0 / softcap))
            if mask is not None:
                scores = scores + mask.astype(acc, copy=False)
            scores = np.broadcast_to(scores, g.scores_shape)
            shifted = scores - scores.max(axis=-1, keepdims=True)  # NaN propagates
            weights = np.exp(shifted)
            probs = weights / weights.sum(axis=-1, keepdims=True)
            if zero_masked_rows == 2:
                probs = np.where(np.isnan(probs), 0, probs)
            elif zero_masked_rows:
                probs = np.where(np.isneginf(scores.max(axis=-1, keepdims=True)), 0, probs)
            out = np.matmul(probs, vv)
        out = np.broadcast_to(out, g.logical_out)
    return np.transpose(out, g.out_perm).astype(q.dtype)


_INTS = AttrKind.INTS

ATTENTION = OPS.register(OpDef(
    "Attention", _infer, attention_reference,
    attrs=(attr("scale", AttrKind.FLOAT, 1.0), attr("q_perm", _INTS, ()),
           attr("k_perm", _INTS, ()), attr("v_perm", _INTS, ()), attr("out_perm", _INTS, ()),
           attr("softcap", AttrKind.FLOAT, 0.0),
           attr("zero_masked_rows", AttrKind.INT, 0, (0, 1, 2))),
    num_inputs=(3, 4),
    doc="softmax(cap(Q K^T * scale) + mask, axis=-1) @ V with Q, K, V read through q_perm, "
        "k_perm, v_perm and the result written through out_perm (empty perm: identity); "
        "cap(s) = softcap * tanh(s / softcap) when softcap > 0; zero_masked_rows: a row "
        "whose scores are all -inf gives zeros rather than NaN (2: also one holding a NaN "
        "or +inf score).",
))


# -- LinearAttention --------------------------------------------------------------------------
def _linear_heads(q: Sequence[int], k: Sequence[int], v: Sequence[int], state: Sequence[int],
                  decay: Sequence[int], beta: Sequence[int], hq: int, hkv: int
                  ) -> tuple[int, int]:
    """(dk, dv) after checking every shape (ShapeError naming the parts)."""
    if hq <= 0 or hkv <= 0 or hq % hkv:
        raise ShapeError(f"LinearAttention q_num_heads {hq} must be a positive multiple of "
                         f"kv_num_heads {hkv}")
    if len(q) != 3 or len(k) != 3 or len(v) != 3 or q[:2] != k[:2] or q[:2] != v[:2]:
        raise ShapeError(f"LinearAttention query {tuple(q)}, key {tuple(k)} and value "
                         f"{tuple(v)} must be [batch, time, heads * size] alike")
    if q[2] % hq or k[2] % hkv or v[2] % hkv or q[2] // hq != k[2] // hkv:
        raise ShapeError(f"LinearAttention hidden sizes {q[2]}, {k[2]}, {v[2]} do not split "
                         f"into {hq} / {hkv} heads of one key size")
    dk, dv = k[2] // hkv, v[2] // hkv
    b, t = q[0], q[1]
    if tuple(state) != (b, hkv, dk, dv):
        raise ShapeError(f"LinearAttention state {tuple(state)} must be {(b, hkv, dk, dv)}")
    if tuple(decay[:2]) != (b, t) or len(decay) != 3 or decay[2] not in (hkv, hkv * dk):
        raise ShapeError(f"LinearAttention decay {tuple(decay)} must be [{b}, {t}, {hkv} or "
                         f"{hkv * dk}]")
    if tuple(beta[:2]) != (b, t) or len(beta) != 3 or beta[2] not in (hkv, 1):
        raise ShapeError(f"LinearAttention beta {tuple(beta)} must be [{b}, {t}, {hkv} or 1]")
    return dk, dv


def _infer_linear(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    q, k, v, state, decay, beta = inputs
    if q.dtype not in FLOAT_TYPES or any(t.dtype != q.dtype for t in (k, v, decay, beta)):
        raise DTypeError(f"LinearAttention takes float query/key/value/decay/beta of one "
                         f"dtype, got {[str(t.dtype) for t in inputs]}")
    if state.dtype not in FLOAT_TYPES:
        raise DTypeError(f"LinearAttention state must be float, got {state.dtype}")
    hq, hkv = attrs["q_num_heads"], attrs["kv_num_heads"]
    _, dv = _linear_heads(q.shape, k.shape, v.shape, state.shape, decay.shape, beta.shape,
                          hq, hkv)
    return (TensorType((q.shape[0], q.shape[1], hq * dv), q.dtype),
            TensorType(state.shape, state.dtype))


def linear_attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                               state: np.ndarray, decay: np.ndarray, beta: np.ndarray, *,
                               q_num_heads: int, kv_num_heads: int, scale: float = 0.0,
                               delta: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The recurrence over time, in float32: per K/V head the state S [dk, dv] decays by
    exp(decay_t), then (delta rule) v_t is replaced by beta_t (v_t - k_t S), then
    S += k_t^T v_t; query head h reads out scale * q_t S of K/V head h // (Hq / Hkv)."""
    hq, hkv = q_num_heads, kv_num_heads
    dk, dv = _linear_heads(q.shape, k.shape, v.shape, state.shape, decay.shape, beta.shape,
                           hq, hkv)
    b, t = q.shape[:2]
    f32 = np.float32
    qh = q.astype(f32).reshape(b, t, hkv, hq // hkv, dk)
    kh = k.astype(f32).reshape(b, t, hkv, dk)
    vh = v.astype(f32).reshape(b, t, hkv, dv)
    gate = np.exp(decay.astype(f32).reshape(b, t, hkv, -1))  # [.., 1 or dk]
    rate = np.broadcast_to(beta.astype(f32), (b, t, hkv))
    s = state.astype(f32).copy()
    factor = f32(scale) if scale else f32(1.0 / np.sqrt(dk))
    out = np.zeros((b, t, hkv, hq // hkv, dv), f32)
    for step in range(t):
        s = s * gate[:, step, :, :, None]
        value = vh[:, step]
        if delta:
            value = rate[:, step, :, None] * (value - np.einsum("bhd,bhdm->bhm", kh[:, step], s))
        s = s + kh[:, step, :, :, None] * value[:, :, None, :]
        out[:, step] = factor * np.einsum("bhgd,bhdm->bhgm", qh[:, step], s)
    return out.reshape(b, t, hq * dv).astype(q.dtype), s.astype(state.dtype)


LINEAR_ATTENTION = OPS.register(OpDef(
    "LinearAttention", _infer_linear, linear_attention_reference,
    attrs=(attr("q_num_heads", AttrKind.INT), attr("kv_num_heads", AttrKind.INT),
           attr("scale", AttrKind.FLOAT, 0.0), attr("delta", AttrKind.INT, 1, (0, 1))),
    num_inputs=(6, 6), num_outputs=2,
    doc="Gated (delta-rule) linear attention over time: query/key/value [B, T, heads * "
        "size], state [B, Hkv, dk, dv], decay [B, T, Hkv or Hkv * dk] (log gates), beta "
        "[B, T, Hkv or 1]; outputs [B, T, Hq * dv] and the final state. scale 0: 1/sqrt(dk).",
))
