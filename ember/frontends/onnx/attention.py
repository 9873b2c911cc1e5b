"""Converters of ONNX's Attention (opsets 23-25), onto ember's fused `Attention` op, and of
RotaryEmbedding (opset 23), onto ember's `RotaryEmbedding` (a Gather looks up the angles of
position_ids first).

ONNX Attention takes Q, K, V as [B, S, heads * size] (3-D, with q_num_heads/kv_num_heads)
or [B, heads, S, size] (4-D). Grouped-query attention shares each K/V head between
G = Hq / Hkv consecutive query heads; here Q is viewed as [B, Hkv, G, Sq, D] and K, V as
[B, Hkv, 1, Sk, D], so the fused op's batch broadcasting reuses a K/V head without copying
it (the 3-D layouts are read through the op's perms, no transpose runs). The masks ONNX
composes (attn_mask, bool or additive and possibly shorter than the keys; is_causal and
the sliding window, aligned to the end of the past cache or of nonpad_kv_seqlen; the
padding of nonpad_kv_seqlen) become one additive mask built from ember ops, folded to a
constant where nothing in it depends on an input. A row left with no key gives zeros.

past_key/past_value are concatenated with K/V on the sequence axis (present_key/value).
The qk_matmul_output output needs the score matrix itself: then the node is lowered to
MatMul, Tanh, Add, Softmax, Where, MatMul instead of the fused op, as ONNX's reference
computes it (Q and K each scaled by sqrt(scale) in the input type).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from ember.errors import ShapeError, UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import DType, Value

__all__: list[str] = []


def _wanted(node: onnx.NodeProto, index: int) -> bool:
    return index < len(node.output) and bool(node.output[index])


@dataclass(frozen=True)
class _Heads:
    batch: int
    hq: int
    hkv: int
    sq: int
    d: int
    dv: int
    rank: int  # 3 or 4: the layout of Q, K, V and Y

    @property
    def groups(self) -> int:
        return self.hq // self.hkv


def _heads(ctx: ImportContext, node: onnx.NodeProto, q: Value, k: Value, v: Value) -> _Heads:
    qs, ks, vs = (ctx.type_of(x).shape for x in (q, k, v))
    if not len(qs) == len(ks) == len(vs) or len(qs) not in (3, 4):
        raise ShapeError(f"{ctx.where}: Q {qs}, K {ks} and V {vs} must all be 3-D or all 4-D")
    if len(qs) == 4:
        b, hq, sq, d = qs
        hkv, dv = ks[1], vs[3]
        if vs[1] != hkv or ks[3] != d or ks[0] != b or vs[0] != b or vs[2] != ks[2]:
            raise ShapeError(f"{ctx.where}: Q {qs}, K {ks} and V {vs} do not fit "
                             f"[B, heads, S, size] together")
    else:
        hq, hkv = ctx.attr(node, "q_num_heads"), ctx.attr(node, "kv_num_heads")
        if hq is None or hkv is None:
            raise UnsupportedOpError(f"{ctx.where}: 3-D inputs need q_num_heads and "
                                     f"kv_num_heads")
        hq, hkv = int(hq), int(hkv)
        b, sq = qs[0], qs[1]
        if hq <= 0 or hkv <= 0 or qs[2] % hq or ks[2] % hkv or vs[2] % hkv:
            raise ShapeError(f"{ctx.where}: hidden sizes Q {qs[2]}, K {ks[2]}, V {vs[2]} "
                             f"do not split into {hq} / {hkv} heads")
        d, dv = qs[2] // hq, vs[2] // hkv
        if ks[2] // hkv != d or ks[0] != b or vs[0] != b or vs[1] != ks[1]:
            raise ShapeError(f"{ctx.where}: Q {qs}, K {ks} and V {vs} do not fit together")
    if hq % hkv:
        raise ShapeError(f"{ctx.where}: {hq} query heads cannot share {hkv} K/V heads")
    return _Heads(b, hq, hkv, sq, d, dv, len(qs))


def _kv_4d(ctx: ImportContext, x: Value, h: _Heads) -> Value:
    """K or V as [B, Hkv, S, size] (a 3-D input is split into heads)."""
    if h.rank == 4:
        return x
    b, s, hidden = ctx.type_of(x).shape
    split = ctx.add("Reshape", [x], {"shape": (b, s, h.hkv, hidden // h.hkv)})
    return ctx.add("Transpose", [split], {"perm": (0, 2, 1, 3)})


def _cache(ctx: ImportContext, node: onnx.NodeProto, x: Value, past_index: int,
           h: _Heads) -> Value:
    """present = Concat(past, x) on the sequence axis, [B, Hkv, S_total, size]."""
    past = ctx.input(node, past_index)
    x4 = _kv_4d(ctx, x, h)
    if past is None:
        return x4
    ps, xs = ctx.type_of(past).shape, ctx.type_of(x4).shape
    if len(ps) != 4 or ps[:2] != xs[:2] or ps[3] != xs[3]:
        raise ShapeError(f"{ctx.where}: past cache {ps} does not fit {xs} on the "
                         f"sequence axis")
    return ctx.add("Concat", [past, x4], {"axis": 2})


# -- the mask --------------------------------------------------------------------------------
def _bias(ctx: ImportContext, node: onnx.NodeProto, h: _Heads, sk: int, past_len: int,
          dtype: DType) -> Value | None:
    """The additive mask (0 / -inf, plus a float attn_mask), broadcastable to
    [B, Hq, Sq, Sk]; None when nothing is masked."""
    np_dtype = dtype.np_dtype
    mask = ctx.input(node, 3)
    nonpad = ctx.input(node, 6)
    causal = bool(ctx.attr(node, "is_causal", 0))
    left = int(ctx.attr(node, "left_window_size", -1))
    right = int(ctx.attr(node, "right_window_size", -1))
    if nonpad is not None and ctx.input(node, 4) is not None:
        raise UnsupportedOpError(f"{ctx.where}: nonpad_kv_seqlen cannot be combined with "
                                 f"past_key/past_value")
    allowed: list[Value] = []
    additive: Value | None = None
    if mask is not None:
        mask = _pad_keys(ctx, mask, sk)
        if ctx.type_of(mask).dtype is DType.BOOL:
            allowed.append(mask)
        elif ctx.type_of(mask).dtype != dtype:
            raise UnsupportedOpError(f"{ctx.where}: attn_mask of {ctx.type_of(mask).dtype} "
                                     f"with Q of {dtype}; it must be bool or Q's type")
        else:
            additive = mask
    # The query at row i sits at position offset + i among the keys: offset is the past
    # length (one for all), or nonpad_kv_seqlen[b] - Sq per batch (an external cache).
    i = np.arange(h.sq, dtype=np.int64)[:, None]
    j = np.arange(sk, dtype=np.int64)[None, :]
    if nonpad is not None:
        count = ctx.add("Reshape", [_int64(ctx, nonpad)],
                        {"shape": (ctx.type_of(nonpad).size, 1, 1, 1)})
        offset = ctx.add("Sub", [count, ctx.constant(np.array(h.sq, np.int64))])
        allowed.append(ctx.add("Less", [ctx.constant(j.reshape(1, 1, 1, sk)), count]))
    else:
        offset = ctx.constant(np.array(past_len, np.int64))
    if causal:  # key j <= position
        allowed.append(ctx.add("LessOrEqual", [ctx.constant(j - i), offset]))
    if left >= 0:  # position - key <= left
        allowed.append(ctx.add("LessOrEqual", [offset, ctx.constant(left + j - i)]))
    if right >= 0:  # key - position <= right
        allowed.append(ctx.add("LessOrEqual", [ctx.constant(j - i - right), offset]))
    if not allowed:
        return additive
    keep = allowed[0]
    for term in allowed[1:]:
        keep = ctx.add("And", [keep, term])
    zero, never = (ctx.constant(np.array(x, np_dtype)) for x in (0.0, -np.inf))
    bias = ctx.add("Where", [keep, zero, never])
    return bias if additive is None else ctx.add("Add", [additive, bias])


def _int64(ctx: ImportContext, x: Value) -> Value:
    if ctx.type_of(x).dtype is DType.INT64:
        return x
    return ctx.add("Cast", [x], {"to": DType.INT64})


def _pad_keys(ctx: ImportContext, mask: Value, sk: int) -> Value:
    """A mask shorter than the keys masks the rest (-inf, or False for a bool mask); as in
    ONNX's reference, a last axis of 1 is such a short mask too, not a broadcast one."""
    t = ctx.type_of(mask)
    if t.rank == 0:
        raise ShapeError(f"{ctx.where}: attn_mask must have rank >= 1")
    width = t.shape[-1]
    if width == sk:
        return mask
    if width > sk:
        raise ShapeError(f"{ctx.where}: attn_mask {t.shape} has more keys than the "
                         f"{sk} of K")
    fill = False if t.dtype is DType.BOOL else -np.inf
    rest = ctx.constant(np.full(t.shape[:-1] + (sk - width,), fill, t.dtype.np_dtype))
    return ctx.add("Concat", [mask, rest], {"axis": -1})


def _grouped(ctx: ImportContext, bias: Value, h: _Heads) -> Value:
    """A mask broadcastable to [B, Hq, Sq, Sk] as one broadcastable to
    [B, Hkv, G, Sq, Sk]."""
    shape = (1,) * (4 - ctx.type_of(bias).rank) + ctx.type_of(bias).shape
    b, heads, sq, sk = shape
    split = (h.hkv, h.groups) if heads == h.hq and heads > 1 else (1, 1)
    return ctx.add("Reshape", [bias], {"shape": (b, *split, sq, sk)})


# -- the two lowerings -----------------------------------------------------------------------
def _scale(ctx: ImportContext, node: onnx.NodeProto, h: _Heads, dtype: DType) -> float:
    """sqrt(scale) rounded to the input type, as ONNX applies it to Q and to K."""
    scale = ctx.attr(node, "scale")
    scale = 1.0 / math.sqrt(h.d) if scale is None else float(scale)
    return float(dtype.np_dtype.type(math.sqrt(scale))) if scale >= 0 else math.nan


def _fused(ctx: ImportContext, q: Value, k: Value, v: Value, bias: Value | None,
           h: _Heads, scale_root: float, softcap: float) -> Value:
    g = h.groups
    if h.rank == 4:
        q5 = ctx.add("Reshape", [q], {"shape": (h.batch, h.hkv, g, h.sq, h.d)})
        q_perm: tuple[int, ...] = ()
    else:
        q5 = ctx.add("Reshape", [q], {"shape": (h.batch, h.sq, h.hkv, g, h.d)})
        q_perm = (0, 2, 3, 1, 4)
    k5, k_perm = _shared_kv(ctx, k, h, h.d)
    v5, v_perm = _shared_kv(ctx, v, h, h.dv)
    inputs = [q5, k5, v5] + ([] if bias is None else [_grouped(ctx, bias, h)])
    attrs = {"scale": scale_root * scale_root, "q_perm": q_perm, "k_perm": k_perm,
             "v_perm": v_perm, "softcap": softcap, "zero_masked_rows": 1,
             "out_perm": (0, 3, 1, 2, 4) if h.rank == 3 else ()}
    out = ctx.add("Attention", inputs, attrs)
    return _merge(ctx, out, h, already_split=h.rank == 3)


def _shared_kv(ctx: ImportContext, x: Value, h: _Heads, size: int
               ) -> tuple[Value, tuple[int, ...]]:
    """K or V (4-D [B, Hkv, Sk, size], or 3-D [B, Sk, Hkv * size] as given) viewed as
    [B, Hkv, 1, Sk, size], with the perm that reads it so."""
    shape = ctx.type_of(x).shape
    if len(shape) == 4:
        return ctx.add("Reshape", [x], {"shape": (h.batch, h.hkv, 1, shape[2], size)}), ()
    split = ctx.add("Reshape", [x], {"shape": (h.batch, shape[1], h.hkv, 1, size)})
    return split, (0, 2, 3, 1, 4)


def _merge(ctx: ImportContext, out: Value, h: _Heads, already_split: bool) -> Value:
    """[B, Hkv, G, Sq, Dv] (or [B, Sq, Hkv, G, Dv] when already_split) as Y."""
    if h.rank == 4:
        return ctx.add("Reshape", [out], {"shape": (h.batch, h.hq, h.sq, h.dv)})
    if not already_split:
        out = ctx.add("Transpose", [out], {"perm": (0, 3, 1, 2, 4)})
    return ctx.add("Reshape", [out], {"shape": (h.batch, h.sq, h.hq * h.dv)})


def _unfused(ctx: ImportContext, node: onnx.NodeProto, q: Value, k: Value, v: Value,
             bias: Value | None, h: _Heads, scale_root: float, softcap: float,
             dtype: DType) -> tuple[Value, Value]:
    """(Y, qk_matmul_output) computed step by step, as ONNX's reference does."""
    g, sk = h.groups, ctx.type_of(k).shape[2]
    if h.rank == 4:
        q5 = ctx.add("Reshape", [q], {"shape": (h.batch, h.hkv, g, h.sq, h.d)})
    else:
        q5 = ctx.add("Transpose", [ctx.add("Reshape", [q], {
            "shape": (h.batch, h.sq, h.hkv, g, h.d)})], {"perm": (0, 2, 3, 1, 4)})
    root = ctx.constant(np.array(scale_root, dtype.np_dtype))
    q5 = ctx.add("Mul", [q5, root])
    k5 = ctx.add("Reshape", [ctx.add("Mul", [k, root])], {"shape": (h.batch, h.hkv, 1, sk, h.d)})
    scores = ctx.add("MatMul", [q5, k5], {"trans_b": 1})
    if softcap > 0:
        cap = ctx.constant(np.array(softcap, dtype.np_dtype))
        scores = ctx.add("Mul", [ctx.add("Tanh", [ctx.add("Div", [scores, cap])]), cap])
    mode = int(ctx.attr(node, "qk_matmul_output_mode", 0))
    if mode not in (0, 1, 2, 3):
        raise UnsupportedOpError(f"{ctx.where}: qk_matmul_output_mode {mode} is not 0..3")
    qk = scores
    bias5 = None if bias is None else _grouped(ctx, bias, h)
    if bias5 is not None:
        scores = ctx.add("Add", [scores, bias5])
    if mode == 2:
        qk = scores
    precision = ctx.attr(node, "softmax_precision")
    if precision is not None and DType.from_onnx(int(precision)) != dtype:
        scores = ctx.add("Cast", [scores], {"to": DType.from_onnx(int(precision))})
    probs = ctx.add("Softmax", [scores], {"axis": -1})
    if bias5 is not None:  # rows whose mask leaves no key give zeros
        row_max = ctx.add("ReduceMax", [bias5], {"axes": (-1,), "keepdims": 1})
        empty = ctx.add("IsInf", [row_max], {"detect_positive": 0})
        zero = ctx.constant(np.array(0, ctx.type_of(probs).dtype.np_dtype))
        probs = ctx.add("Where", [empty, zero, probs])
    if ctx.type_of(probs).dtype != dtype:
        probs = ctx.add("Cast", [probs], {"to": dtype})
    if mode == 3:
        qk = probs
    v5 = ctx.add("Reshape", [v], {"shape": (h.batch, h.hkv, 1, sk, h.dv)})
    out = _merge(ctx, ctx.add("MatMul", [probs, v5]), h, already_split=False)
    full = (h.batch, h.hkv, g, h.sq, sk)
    if ctx.type_of(qk).shape != full:
        qk = ctx.add("Expand", [qk], {"shape": full})
    return out, ctx.add("Reshape", [qk], {"shape": (h.batch, h.hq, h.sq, sk)})


@onnx_op("Attention")
def _attention(ctx: ImportContext, node: onnx.NodeProto) -> list[Value | None]:
    q, k, v = (ctx.input(node, i) for i in range(3))
    if q is None or k is None or v is None:
        raise UnsupportedOpError(f"{ctx.where}: Q, K and V are required")
    dtype = ctx.type_of(q).dtype
    if not dtype.is_float:
        raise UnsupportedOpError(f"{ctx.where}: Attention takes float tensors, got {dtype}")
    h = _heads(ctx, node, q, k, v)
    if (ctx.input(node, 4) is None) != (ctx.input(node, 5) is None):
        raise UnsupportedOpError(f"{ctx.where}: past_key and past_value come together")
    past = ctx.input(node, 4)
    past_len = 0 if past is None else ctx.type_of(past).shape[2]
    qk_wanted = _wanted(node, 3)
    # present_key/value are 4-D; without a cache the fused op reads a 3-D K/V in place.
    split_kv = past is not None or qk_wanted or h.rank == 4
    present_k = _cache(ctx, node, k, 4, h) if split_kv or _wanted(node, 1) else None
    present_v = _cache(ctx, node, v, 5, h) if split_kv or _wanted(node, 2) else None
    sk = ctx.type_of(k).shape[-2 if h.rank == 4 else 1] + past_len
    bias = _bias(ctx, node, h, sk, past_len, dtype)
    scale_root = _scale(ctx, node, h, dtype)
    softcap = float(ctx.attr(node, "softcap", 0.0) or 0.0)
    if qk_wanted:
        y, qk = _unfused(ctx, node, q, present_k, present_v, bias, h, scale_root, softcap,
                         dtype)
    else:
        y = _fused(ctx, q, present_k if split_kv else k, present_v if split_kv else v, bias,
                   h, scale_root, softcap)
        qk = None
    return [y, present_k if _wanted(node, 1) else None,
            present_v if _wanted(node, 2) else None, qk]


# -- RotaryEmbedding -------------------------------------------------------------------------
@onnx_op("RotaryEmbedding")
def _rotary_embedding(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """[B, H, S, D] is rotated in place; [B, S, H * D] is viewed as [B, S, H, D]. With
    position_ids the caches [positions, R/2] are looked up (a Gather) into [B, S, R/2]."""
    x, cos, sin, positions = (ctx.input(node, i) for i in range(4))
    if x is None or cos is None or sin is None:
        raise UnsupportedOpError(f"{ctx.where}: input, cos_cache and sin_cache are required")
    shape = ctx.type_of(x).shape
    if len(shape) == 3:
        heads = int(ctx.attr(node, "num_heads", 0) or 0)
        if heads <= 0 or shape[2] % heads:
            raise ShapeError(f"{ctx.where}: a 3-D input {shape} needs num_heads dividing "
                             f"its hidden size")
        x4 = ctx.add("Reshape", [x], {"shape": (shape[0], shape[1], heads, shape[2] // heads)})
        seq_axis = 1
    elif len(shape) == 4:
        x4, seq_axis = x, 2
    else:
        raise ShapeError(f"{ctx.where}: input must be 3-D or 4-D, got {shape}")
    if positions is not None:
        cos, sin = (ctx.add("Gather", [c, positions], {"axis": 0}) for c in (cos, sin))
    attrs = {"interleaved": int(ctx.attr(node, "interleaved", 0)),
             "rotary_dim": int(ctx.attr(node, "rotary_embedding_dim", 0) or 0),
             "seq_axis": seq_axis}
    out = ctx.add("RotaryEmbedding", [x4, cos, sin], attrs)
    return [out if len(shape) == 4 else ctx.add("Reshape", [out], {"shape": shape})]


# -- LinearAttention -------------------------------------------------------------------------
_UPDATE_RULES = {"linear": (False, False), "gated": (True, False), "delta": (False, True),
                 "gated_delta": (True, True)}


@onnx_op("LinearAttention")
def _linear_attention(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """The rule's absent inputs become neutral ones: a zero state, a zero log decay
    (exp(0) = 1), a unit beta; whether the delta correction applies is the op's `delta`."""
    q, k, v, past, decay, beta = (ctx.input(node, i) for i in range(6))
    if q is None or k is None or v is None:
        raise UnsupportedOpError(f"{ctx.where}: query, key and value are required")
    rule = ctx.attr(node, "update_rule", "gated_delta") or "gated_delta"
    if rule not in _UPDATE_RULES:
        raise UnsupportedOpError(f"{ctx.where}: update_rule {rule!r} is not one of "
                                 f"{sorted(_UPDATE_RULES)}")
    gated, delta = _UPDATE_RULES[rule]
    if gated != (decay is not None) or delta != (beta is not None):
        raise UnsupportedOpError(f"{ctx.where}: update_rule {rule!r} takes decay "
                                 f"{'and' if gated else 'but not'}, beta "
                                 f"{'' if delta else 'not '}as inputs")
    hq, hkv = ctx.attr(node, "q_num_heads"), ctx.attr(node, "kv_num_heads")
    if hq is None or hkv is None:
        raise UnsupportedOpError(f"{ctx.where}: q_num_heads and kv_num_heads are required")
    hq, hkv = int(hq), int(hkv)
    qs, ks, vs = (ctx.type_of(x).shape for x in (q, k, v))
    dtype = ctx.type_of(q).dtype.np_dtype
    if len(ks) != 3 or len(vs) != 3 or ks[2] % hkv or vs[2] % hkv:
        raise ShapeError(f"{ctx.where}: key {ks} and value {vs} must be [batch, time, "
                         f"{hkv} * size]")
    b, t = qs[0], qs[1]
    if past is None:
        past = ctx.constant(np.zeros((b, hkv, ks[2] // hkv, vs[2] // hkv), dtype))
    if decay is None:
        decay = ctx.constant(np.zeros((b, t, hkv), dtype))
    if beta is None:
        beta = ctx.constant(np.ones((b, t, 1), dtype))
    attrs = {"q_num_heads": hq, "kv_num_heads": hkv, "delta": int(delta),
             "scale": float(ctx.attr(node, "scale", 0.0) or 0.0)}
    return list(ctx.add_multi("LinearAttention", [q, k, v, past, decay, beta], attrs))
