"""The Attention kernel against its numpy reference: shapes that break blocks and vectors
(1, primes, Sq != Sk, Dv past the slice limit, D past the private-copy limit), permuted
and broadcast operands of any batch rank, broadcast and -inf masks, float32 / float16 /
float64, every tunable set, and the rows the softmax turns into NaN, which must match the
unfused graph (MatMul, Mul, Add, Softmax, MatMul) run by ember.

Tolerance. Kernel and reference both compute in float32 (float64 for float64 tensors),
in different orders. A score is a D-term dot product, scaled and masked: each side is off
the exact score by at most e = (D + 2) * u * (S + M), with S = max |scale| * (|Q| @ |K|^T)
and M = max |mask| over finite mask entries (Higham's gamma_n bound, plus the scale and
mask roundings). A softmax weight then changes by a factor within 1 +- (2e + 8u) (the
scores' shift, and exp's and the division's few ulps), and the output sums Sk weighted
values (another Sk * u relative). So each side is within max|V| * (2e + (Sk + 8) u) of the
exact output and the two within twice that: atol = 2 * max|V| * (2e + (Sk + 8) u), on top
of the dtype's TOLERANCE row (the final rounding to half). u = 2**-24 (2**-53 for float64).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import ember
from ember.codegen.kernels import attention as att
from ember.codegen import registry as codegen_kernels
from ember.codegen.families import DeviceTraits, Target
from ember.errors import DTypeError, ShapeError
from ember.frontends.builder import GraphBuilder
from ember.ir import OPS, DType, TensorType
from ember.ir.ops.attention import attention_geometry
from tests.harness import TOLERANCE, assert_close, check_op, run_op
from tests.strategies import array_for, broadcastable_shapes

pytestmark = pytest.mark.opencl

UNIT_ROUNDOFF = {DType.FLOAT32: 2.0**-24, DType.FLOAT16: 2.0**-24, DType.FLOAT64: 2.0**-53}
SEQ = (1, 2, 3, 5, 8, 13, 17, 33)
HEAD = (1, 2, 3, 5, 8, 16, 17, 33, 64)
SCALES = (1.0, 0.125, 0.3, -0.7, 2.0)


def attention_tolerance(arrays: list[np.ndarray], attrs: dict) -> tuple[float, float]:
    """(rtol, atol) for one Attention call (see the module doc)."""
    q, k, v = arrays[:3]
    dtype = DType.from_numpy(q.dtype)
    rtol, atol = TOLERANCE[dtype]
    u = UNIT_ROUNDOFF[dtype]
    g = attention_geometry(q.shape, k.shape, v.shape, arrays[3].shape if len(arrays) > 3
                           else None, attrs.get("q_perm", ()), attrs.get("k_perm", ()),
                           attrs.get("v_perm", ()), attrs.get("out_perm", ()))
    # Non-finite entries make their rows NaN on both sides: they bound nothing.
    qq = np.abs(np.nan_to_num(np.transpose(q, g.q_perm).astype(np.float64), posinf=0,
                              neginf=0))
    kk = np.abs(np.nan_to_num(np.transpose(k, g.k_perm).astype(np.float64), posinf=0,
                              neginf=0))
    scores = abs(attrs.get("scale", 1.0)) * np.matmul(qq, np.swapaxes(kk, -1, -2))
    s_max = float(scores.max()) if scores.size else 0.0
    m_max = 0.0
    if len(arrays) > 3:
        finite = np.abs(arrays[3][np.isfinite(arrays[3])].astype(np.float64))
        m_max = float(finite.max()) if finite.size else 0.0
    v_max = float(np.abs(v.astype(np.float64)).max()) if v.size else 0.0
    # A softcap c maps scores 1-Lipschitz (c * tanh(s / c)); tanh adds a few ulps of c.
    e = (g.d + 2) * u * (s_max + m_max) + 4 * u * attrs.get("softcap", 0.0)
    return rtol, atol + 2.0 * v_max * (2.0 * e + (g.sk + 8) * u)


def _physical(logical: tuple[int, ...], perm: tuple[int, ...]) -> tuple[int, ...]:
    """The stored shape whose transpose by `perm` has the shape `logical`."""
    shape = [0] * len(logical)
    for i, axis in enumerate(perm):
        shape[axis] = logical[i]
    return tuple(shape)


@st.composite
def attention_case(draw, dtypes=(DType.FLOAT32, DType.FLOAT32, DType.FLOAT16)):
    sq, sk = draw(st.sampled_from(SEQ)), draw(st.sampled_from(SEQ))
    d, dv = draw(st.sampled_from(HEAD)), draw(st.sampled_from(HEAD))
    qb, kb, vb = draw(broadcastable_shapes(3, max_rank=2, max_dim=3))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**32 - 1))
    arrays, attrs = [], {"scale": draw(st.sampled_from(SCALES))}
    for i, (name, logical) in enumerate((("q", qb + (sq, d)), ("k", kb + (sk, d)),
                                         ("v", vb + (sk, dv)))):
        perm = tuple(draw(st.permutations(range(len(logical)))))
        if perm != tuple(range(len(perm))):
            attrs[f"{name}_perm"] = perm
        arrays.append(array_for(seed + i, _physical(logical, perm), dtype))
    batch = tuple(np.broadcast_shapes(qb, kb, vb))
    scores = batch + (sq, sk)
    mask_kind = draw(st.sampled_from(["none", "full", "keys", "rows", "square", "batch1"]))
    if mask_kind != "none":
        shape = {"full": scores, "keys": (1, sk), "rows": (sq, 1), "square": (sq, sk),
                 "batch1": (1,) * len(batch) + (sq, sk)}[mask_kind]
        mask = array_for(seed + 3, shape, dtype)
        if draw(st.booleans()):  # causal-style -inf entries (a row may end up all -inf)
            mask[np.random.default_rng(seed).random(shape) < 0.3] = -np.inf
        arrays.append(mask)
    out_perm = tuple(draw(st.permutations(range(len(batch) + 2))))
    if out_perm != tuple(range(len(out_perm))):
        attrs["out_perm"] = out_perm
    if draw(st.booleans()):
        attrs["softcap"] = draw(st.sampled_from((0.5, 3.0, 50.0)))
    if draw(st.booleans()):  # 1: rows with no key give zeros; 2: NaN rows too
        attrs["zero_masked_rows"] = draw(st.sampled_from((1, 2)))
    return arrays, attrs


def test_attention_kernel_matches_reference(opencl_target):
    @given(case=attention_case())
    def check(case):
        arrays, attrs = case
        check_op("Attention", arrays, attrs, target=opencl_target,
                 tolerance=attention_tolerance(arrays, attrs))

    check()


def _check(arrays: list[np.ndarray], attrs: dict, target: str) -> None:
    check_op("Attention", arrays, attrs, target=target,
             tolerance=attention_tolerance(arrays, attrs))


def _qkv(shape_q, shape_k, shape_v, dtype=DType.FLOAT32, seed=0):
    return [array_for(seed + i, s, dtype) for i, s in enumerate((shape_q, shape_k, shape_v))]


@pytest.mark.parametrize("shapes, attrs", [
    (((7, 3), (1, 3), (1, 5)), {}),  # Sk = 1: every weight is 1
    (((2, 5, 1), (2, 9, 1), (2, 9, 4)), {"scale": 0.5}),  # D = 1
    (((1, 1, 64), (1, 13, 64), (1, 13, 64)), {}),  # one query row (decoding)
    (((3, 300), (17, 300), (17, 300)), {"scale": 0.05}),  # D past the private copy (4 rows)
    (((2, 7, 5), (2, 11, 5), (2, 11, 301)), {}),  # Dv past one slice: overlapping slices
    (((4, 6, 2, 8), (4, 6, 2, 8), (4, 6, 2, 8)),  # BERT-style, batch 4
     {"q_perm": (0, 2, 1, 3), "k_perm": (0, 2, 1, 3), "v_perm": (0, 2, 1, 3),
      "out_perm": (0, 2, 1, 3), "scale": 0.35}),
])
def test_attention_edge_shapes(shapes, attrs, opencl_target):
    _check(_qkv(*shapes), attrs, opencl_target)


def test_attention_float64_and_float16_with_mask(opencl_target):
    for dtype in (DType.FLOAT64, DType.FLOAT16):
        arrays = _qkv((2, 9, 17), (2, 13, 17), (1, 13, 5), dtype)
        arrays.append(array_for(9, (9, 13), dtype))
        _check(arrays, {"scale": 0.2, "out_perm": (1, 0, 2)}, opencl_target)


def test_attention_without_keys_gives_zeros(opencl_target):
    arrays = _qkv((2, 3, 4), (2, 0, 4), (2, 0, 5))
    out, _ = run_op("Attention", arrays, {}, target=opencl_target)
    assert_close(out[0], np.zeros((2, 3, 5), np.float32))
    _check(arrays, {}, "cpu")


def test_attention_with_empty_head_uses_the_mask_alone(opencl_target):
    arrays = _qkv((3, 0), (4, 0), (4, 6)) + [array_for(5, (3, 4), DType.FLOAT32)]
    _check(arrays, {"scale": 3.0}, opencl_target)


# -- NaN rows: the fused op gives what the unfused graph gives ----------------------------------
def _unfused(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float,
             target: str) -> np.ndarray:
    b = GraphBuilder("unfused")
    qi, ki, vi, mi = (b.input(n, a.shape, DType.from_numpy(a.dtype))
                      for n, a in zip("qkvm", (q, k, v, mask)))
    scores = b.Mul(b.MatMul(qi, ki, trans_b=1), b.constant(np.asarray(scale, q.dtype)))
    probs = b.Softmax(b.Add(scores, mi), axis=-1)
    b.output("o", b.MatMul(probs, vi))
    model = ember.compile(b.build(), target=target, opt_level=0, strict=target != "cpu")
    return model(q=q, k=k, v=v, m=mask)["o"]


def test_attention_special_rows_match_the_unfused_graph(opencl_target):
    q, k, v = _qkv((6, 4), (5, 4), (5, 3))
    mask = array_for(7, (6, 5), DType.FLOAT32)
    mask[0, :] = -np.inf  # every key masked: softmax of all -inf is NaN
    mask[1, 1:] = -np.inf  # one key left: its weight is exactly 1
    mask[2, :2] = -np.inf
    mask[3, 2] = np.inf  # a +inf score: inf - inf in the softmax, NaN
    q[4, 1] = np.nan  # NaN in a query row
    attrs = {"scale": 0.5}
    for target in (opencl_target, "cpu"):
        fused, _ = run_op("Attention", [q, k, v, mask], attrs, target=target)
        unfused = _unfused(q, k, v, mask, 0.5, target)
        assert np.array_equal(np.isnan(fused[0]), np.isnan(unfused)), target
        assert np.isnan(fused[0][[0, 3, 4]]).all() and not np.isnan(fused[0][[1, 2, 5]]).any()
        assert_close(fused[0], unfused, f"fused vs unfused on {target}",
                     attention_tolerance([q, k, v, mask], attrs))
    np.testing.assert_array_equal(fused[0][1], v[0])


def test_attention_masked_rows_give_zeros_when_asked(opencl_target):
    """zero_masked_rows (ONNX Attention's rule): a row with every key masked gives zeros;
    a NaN or +inf score still gives NaN, and the other rows are unchanged."""
    q, k, v = _qkv((5, 4), (6, 4), (6, 3))
    mask = array_for(7, (5, 6), DType.FLOAT32)
    mask[0, :] = -np.inf
    mask[1, 2] = np.inf
    q[2, 0] = np.nan
    attrs = {"scale": 0.5, "zero_masked_rows": 1, "softcap": 2.0}
    for target in (opencl_target, "cpu"):
        out, _ = run_op("Attention", [q, k, v, mask], attrs, target=target)
        assert np.array_equal(out[0][0], np.zeros(3, np.float32)), target
        assert np.isnan(out[0][[1, 2]]).all() and not np.isnan(out[0][[0, 3, 4]]).any()
    _check([q, k, v, mask], attrs, opencl_target)


def test_attention_softcap_bounds_the_scores():
    q, k, v = _qkv((3, 4), (5, 4), (5, 2))
    attrs = OPS["Attention"].make_attrs({"scale": 1.0, "softcap": 0.01})
    (out,) = OPS["Attention"].evaluate([q * 1e3, k, v], attrs)
    # every score within +-0.01: the weights are all but uniform
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(axis=0), out.shape), rtol=0,
                               atol=0.05 * float(np.abs(v).max()))


def test_attention_large_scores_stay_finite(opencl_target):
    """Scores near 1e4 would overflow exp without the running max."""
    q, k, v = _qkv((5, 8), (40, 8), (40, 8))
    _check([q * 60, k * 60, v], {"scale": 1.0}, opencl_target)


# -- tunables -----------------------------------------------------------------------------------
def _gpu_target(max_work_group: int) -> Target:
    traits = DeviceTraits("Ellesmere", "Advanced Micro Devices, Inc.", "OpenCL 2.0", "3.0",
                          "AMD APP", "GPU", 36, max_work_group, 32768, frozenset())
    return Target.of(traits)


def test_default_params_are_valid():
    target = _gpu_target(256)
    for family, params in att.DEFAULT_ATTENTION_PARAMS.items():
        params.validate(target)
        for sq, sk in [(1, 1), (1, 0), (3, 2), (33, 17)]:
            assert not params.fitted(sq, sk).violations(target), (family, sq, sk)
    assert att.attention_params(_gpu_target(16), 128, 128).local == 16  # cut to the device
    broken = att.AttentionParams(rows=0, kblock=3, vec=5, local=3).violations(_gpu_target(2))
    assert len(broken) == 5 and any("kblock" in reason for reason in broken)


@pytest.mark.parametrize("rows, kblock, vec, local", [
    (1, 1, 1, 1), (1, 8, 4, 32), (3, 2, 2, 4), (4, 16, 16, 1), (16, 4, 8, 2), (5, 8, 1, 16),
])
def test_every_tunable_set_is_correct_on_odd_shapes(rows, kblock, vec, local, opencl_target,
                                                    monkeypatch):
    """GPU sets (work-groups of 32, one row each) run on the CPU device too: every set must
    be right on odd shapes (blocks with idle lanes, rows past Sq, a padded grid)."""
    params = att.AttentionParams(rows, kblock, vec, local)
    monkeypatch.setitem(att.DEFAULT_ATTENTION_PARAMS, "cpu", params)
    codegen_kernels.lower.cache_clear()
    try:
        arrays = _qkv((2, 13, 16), (2, 19, 16), (2, 19, 24), seed=rows + kblock)
        arrays.append(array_for(4, (1, 13, 19), DType.FLOAT32))
        _check(arrays, {"scale": 0.25, "k_perm": ()}, opencl_target)
        half = _qkv((17, 3, 8), (17, 3, 8), (17, 3, 8), DType.FLOAT16, seed=vec)
        perm = {"q_perm": (1, 0, 2), "k_perm": (1, 0, 2), "v_perm": (1, 0, 2),
                "out_perm": (1, 0, 2)}
        _check(half, perm, opencl_target)
    finally:
        codegen_kernels.lower.cache_clear()


# -- type inference -----------------------------------------------------------------------------
def _infer(*shapes, **attrs):
    types = [TensorType(s, DType.FLOAT32) for s in shapes]
    op = OPS["Attention"]
    return op.infer_types(types, op.make_attrs(attrs), node="att")


def test_attention_infers_the_permuted_output_shape():
    (out,) = _infer((2, 7, 3, 4), (2, 9, 3, 4), (2, 9, 3, 5), (1, 1, 7, 9),
                    q_perm=(0, 2, 1, 3), k_perm=(0, 2, 1, 3), v_perm=(0, 2, 1, 3),
                    out_perm=(0, 2, 1, 3))
    assert out.shape == (2, 7, 3, 5)
    assert _infer((5, 1, 7, 4), (3, 9, 4), (9, 2))[0].shape == (5, 3, 7, 2)


@pytest.mark.parametrize("shapes, attrs, words", [
    (((7, 4), (9, 3), (9, 5)), {}, ["head size D", "4 != 3"]),
    (((7, 4), (9, 4), (8, 5)), {}, ["key count Sk", "9 != 8"]),
    (((2, 7, 4), (3, 9, 4), (9, 5)), {}, ["batch dims", "do not broadcast"]),
    (((7, 4), (9, 4), (9, 5), (2, 9)), {}, ["mask (2, 9)", "(7, 9)"]),
    (((7, 4), (9, 4), (9, 5)), {"q_perm": (0, 0)}, ["q_perm (0, 0)", "permutation"]),
    (((7, 4), (9, 4), (9, 5)), {"out_perm": (0, 1, 2)}, ["out_perm", "2 axes"]),
    (((4,), (9, 4), (9, 5)), {}, ["q must have rank >= 2"]),
])
def test_attention_shape_errors_name_the_parts(shapes, attrs, words):
    with pytest.raises(ShapeError) as info:
        _infer(*shapes, **attrs)
    message = str(info.value)
    assert "'att'" in message and all(w in message for w in words), message


def test_attention_dtype_errors():
    op = OPS["Attention"]
    f, h = DType.FLOAT32, DType.FLOAT16
    with pytest.raises(DTypeError, match="mask has dtype bool"):
        op.infer_types([TensorType((2, 2), f)] * 3 + [TensorType((2, 2), DType.BOOL)],
                       op.make_attrs({}), node="att")
    with pytest.raises(DTypeError, match="input k has dtype float16"):
        op.infer_types([TensorType((2, 2), f), TensorType((2, 2), h), TensorType((2, 2), f)],
                       op.make_attrs({}), node="att")
    with pytest.raises(DTypeError, match="float tensors"):
        op.infer_types([TensorType((2, 2), DType.INT32)] * 3, op.make_attrs({}), node="att")


def test_geometry_counts_every_axis():
    g = attention_geometry((3, 5, 2, 4), (3, 6, 2, 4), (3, 6, 2, 7), (5, 6),
                           (0, 2, 1, 3), (0, 2, 1, 3), (0, 2, 1, 3), (0, 2, 1, 3))
    assert (g.batch, g.sq, g.sk, g.d, g.dv) == ((3, 2), 5, 6, 4, 7)
    assert g.out_shape == (3, 5, 2, 7) and g.batch_size == 6
    assert math.prod(g.scores_shape) == 3 * 2 * 5 * 6 and g.logical_out == (3, 2, 5, 7)
