"""ONNX's Attention node (opsets 23-25) through ember against ONNX's own reference
(onnx.reference), on the default OpenCL device: 3-D and 4-D layouts, grouped-query heads,
past caches and present outputs, bool / float / short / broadcast masks, is_causal, the
sliding window, nonpad_kv_seqlen, softcap, scale and the qk_matmul_output modes; and the
decoding-state ops of onnx 1.23 (TensorScatter, CausalConvWithState, LinearAttention).

onnx.reference defines the op; onnxruntime's CPU kernel differs from it on the causal
frontier with a past cache, so it is not the yardstick here. Inputs lie in [-1, 1], so the
scores are small and ember's order of operations (one fused kernel, or MatMul / Softmax when
the scores are an output) stays within float32's TOLERANCE of the reference's.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.errors import ShapeError, UnsupportedOpError
from ember.ir import DType
from tests.harness import TOLERANCE, assert_close

pytestmark = pytest.mark.opencl

OUTPUTS = ("Y", "present_key", "present_value", "qk_matmul_output")


def _model(feeds: dict[str, np.ndarray | None], attrs: dict, outputs: tuple[str, ...],
           opset: int, shapes: list[tuple[int, ...]] | None = None) -> onnx.ModelProto:
    """One Attention node; the outputs' shapes (which onnx's checker wants) when known."""
    order = ("Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen")
    names = [n if feeds.get(n) is not None else "" for n in order]
    while names and not names[-1]:
        names.pop()
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                            a.shape) for n, a in feeds.items() if a is not None]
    node = helper.make_node("Attention", names,
                            [o if o in outputs else "" for o in OUTPUTS[:max(
                                OUTPUTS.index(o) for o in outputs) + 1]], **attrs)
    elem = helper.np_dtype_to_tensor_dtype(feeds["Q"].dtype)
    outs = [helper.make_tensor_value_info(o, elem, None if shapes is None else shapes[i])
            for i, o in enumerate(outputs)]
    graph = helper.make_graph([node], "attention", inputs, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _check(feeds: dict[str, np.ndarray | None], attrs: dict, outputs: tuple[str, ...],
           opset: int, target: str) -> ember.CompiledModel:
    given_feeds = {n: a for n, a in feeds.items() if a is not None}
    expected = ReferenceEvaluator(_model(feeds, attrs, outputs, opset)).run(None, given_feeds)
    model = _model(feeds, attrs, outputs, opset, [e.shape for e in expected])
    compiled = ember.compile(model, target=target)
    got = compiled(**given_feeds)
    dtype = DType.from_numpy(feeds["Q"].dtype)
    for name, want in zip(outputs, expected):
        assert_close(got[name], want, name, TOLERANCE[dtype])
    return compiled


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    return rng.uniform(-1, 1, size=shape).astype(dtype)


@st.composite
def attention_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rank = draw(st.sampled_from((3, 4)))
    hkv, groups = draw(st.sampled_from((1, 2))), draw(st.sampled_from((1, 3)))
    hq, b = hkv * groups, draw(st.sampled_from((1, 2)))
    sq, skv = draw(st.sampled_from((1, 3))), draw(st.sampled_from((2, 5)))
    d, dv = draw(st.sampled_from((4, 8))), draw(st.sampled_from((4, 6)))
    cache = draw(st.sampled_from(("none", "past", "nonpad")))
    past = 3 if cache == "past" else 0
    sk = skv + past
    attrs: dict = {}
    if rank == 3:
        attrs.update(q_num_heads=hq, kv_num_heads=hkv)
        feeds = {"Q": _uniform(rng, (b, sq, hq * d)), "K": _uniform(rng, (b, skv, hkv * d)),
                 "V": _uniform(rng, (b, skv, hkv * dv))}
    else:
        feeds = {"Q": _uniform(rng, (b, hq, sq, d)), "K": _uniform(rng, (b, hkv, skv, d)),
                 "V": _uniform(rng, (b, hkv, skv, dv))}
    window = draw(st.sampled_from((None, (1, -1), (0, 1)))) if rank == 4 else None
    # (a 1-D mask is read as [Sk] by the reference only together with a window)
    mask_shape = draw(st.sampled_from((None, (sq, sk), (hq, sq, sk), (b, 1, sq, sk),
                                       (b, hq, sq, sk - 1)) + ((sk,),) * (window is not None)))
    if mask_shape is not None:
        if draw(st.booleans()):
            mask = rng.random(mask_shape) < 0.7
        else:
            mask = _uniform(rng, mask_shape)
            mask[rng.random(mask_shape) < 0.3] = -np.inf
        feeds["attn_mask"] = mask
    if past:
        feeds["past_key"] = _uniform(rng, (b, hkv, past, d))
        feeds["past_value"] = _uniform(rng, (b, hkv, past, dv))
    opset = 23
    if cache == "nonpad":
        feeds["nonpad_kv_seqlen"] = rng.integers(0, skv + 1, size=b).astype(np.int64)
        opset = 24
    if draw(st.booleans()):
        attrs["is_causal"] = 1
    if window is not None:  # window attributes: opset 25, 4-D with no heads
        attrs["left_window_size"], attrs["right_window_size"] = window
        opset = 25
    attrs.update(draw(st.sampled_from(({}, {"softcap": 2.0}, {"scale": 0.3}))))
    outputs: tuple[str, ...] = ("Y",)
    if past:
        outputs += ("present_key", "present_value")
    mode = draw(st.sampled_from((None, 0, 1, 2, 3)))
    if mode is not None:
        outputs += ("qk_matmul_output",)
        if mode:
            attrs["qk_matmul_output_mode"] = mode
    return feeds, attrs, outputs, opset


@settings(max_examples=5)
@given(case=attention_cases())
def test_attention_node_matches_the_onnx_reference(case, opencl_target):
    feeds, attrs, outputs, opset = case
    _check(feeds, attrs, outputs, opset, opencl_target)


def test_fully_masked_rows_give_zeros_and_float16_follows_the_reference(opencl_target):
    rng = np.random.default_rng(3)
    mask = np.array([[False, False, False], [True, False, True]])
    feeds = {"Q": _uniform(rng, (1, 2, 2, 8), np.float16),
             "K": _uniform(rng, (1, 2, 3, 8), np.float16),
             "V": _uniform(rng, (1, 2, 3, 8), np.float16), "attn_mask": mask}
    _check(feeds, {}, ("Y",), 23, opencl_target)
    _check(feeds, {"qk_matmul_output_mode": 3, "softmax_precision": TensorProto.FLOAT},
           ("Y", "qk_matmul_output"), 24, opencl_target)


def test_attention_runs_as_one_fused_kernel(opencl_target):
    """Grouped-query 3-D attention with a causal mask: the head split, the shared K/V heads
    and the head merge are views; one kernel launch computes it."""
    rng = np.random.default_rng(5)
    feeds = {"Q": _uniform(rng, (2, 4, 6 * 8)), "K": _uniform(rng, (2, 5, 2 * 8)),
             "V": _uniform(rng, (2, 5, 2 * 8))}
    compiled = _check(feeds, {"q_num_heads": 6, "kv_num_heads": 2, "is_causal": 1},
                      ("Y",), 23, opencl_target)
    summary = compiled.summary()
    assert "kernel launches per call: 1;" in summary and " Attention " in summary, summary


@pytest.mark.parametrize("feeds, attrs, error, words", [
    ({"Q": (1, 2, 8), "K": (1, 3, 8), "V": (1, 3, 8)}, {}, UnsupportedOpError,
     "q_num_heads"),
    ({"Q": (1, 2, 12), "K": (1, 3, 8), "V": (1, 3, 8)},
     {"q_num_heads": 3, "kv_num_heads": 2}, ShapeError, "query heads cannot share"),
    ({"Q": (1, 2, 2, 8), "K": (1, 2, 3, 8), "V": (1, 2, 3, 8), "attn_mask": (2, 4)}, {},
     ShapeError, "more keys"),
])
def test_attention_errors_name_the_problem(feeds, attrs, error, words):
    arrays = {n: np.zeros(s, np.float32) for n, s in feeds.items()}
    with pytest.raises(error, match=words):
        ember.compile(_model(arrays, attrs, ("Y",), 23, [(1, 2, 8)]), target="cpu")


# -- the decoding-state ops of onnx 1.23, against ONNX's reference ---------------------------
def _node_model(op: str, feeds: dict[str, np.ndarray | None], outputs: list[str], attrs: dict,
                opset: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray],
                                     dict[str, np.ndarray]]:
    """The model (output shapes from ONNX's reference), the expected outputs, the feeds."""
    given_feeds = {n: a for n, a in feeds.items() if a is not None}
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                            a.shape) for n, a in given_feeds.items()]
    names = [n if feeds[n] is not None else "" for n in feeds]
    node = helper.make_node(op, names, outputs, **attrs)
    draft = helper.make_model(helper.make_graph([node], op, inputs, [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]),
        opset_imports=[helper.make_opsetid("", opset)])
    expected = ReferenceEvaluator(draft).run(None, given_feeds)
    outs = [helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(e.dtype), e.shape)
            for o, e in zip(outputs, expected)]
    model = helper.make_model(helper.make_graph([node], op, inputs, outs),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model, dict(zip(outputs, expected)), given_feeds


def _check_node(op, feeds, outputs, attrs, opset, target):
    model, expected, given_feeds = _node_model(op, feeds, outputs, attrs, opset)
    got = ember.compile(model, target=target)(**given_feeds)
    for name, want in expected.items():
        assert_close(got[name], want, name, TOLERANCE.get(DType.from_numpy(want.dtype)))


@pytest.mark.parametrize("mode, write", [("linear", [0, 2, 1]), ("circular", [3, 1, 4])])
def test_tensor_scatter_writes_the_update_at_each_batch_position(mode, write, opencl_target):
    rng = np.random.default_rng(2)
    feeds = {"past_cache": _uniform(rng, (3, 2, 5, 4)), "update": _uniform(rng, (3, 2, 2, 4)),
             "write_indices": np.array(write, np.int64)}
    _check_node("TensorScatter", feeds, ["present_cache"], {"mode": mode}, 24, opencl_target)


@pytest.mark.parametrize("k, past, bias, activation", [
    (4, True, True, "silu"), (3, False, False, "none"), (1, False, True, "swish")])
def test_causal_conv_with_state_matches_the_reference(k, past, bias, activation,
                                                      opencl_target):
    rng = np.random.default_rng(k)
    feeds = {"input": _uniform(rng, (2, 3, 6)), "weight": _uniform(rng, (3, 1, k)),
             "bias": _uniform(rng, (3,)) if bias else None,
             "past_state": _uniform(rng, (2, 3, k - 1)) if past else None}
    _check_node("CausalConvWithState", feeds, ["output", "present_state"],
                {"activation": activation}, 27, opencl_target)


@pytest.mark.parametrize("rule, heads, decay_width, beta_width, past", [
    ("gated_delta", (4, 2), 2 * 4, 2, True), ("gated", (2, 2), 2, None, False),
    ("delta", (2, 1), None, 1, True), ("linear", (2, 2), None, None, False)])
def test_linear_attention_matches_the_reference(rule, heads, decay_width, beta_width, past):
    rng = np.random.default_rng(len(rule))
    hq, hkv = heads
    b, t, dk, dv = 2, 3, 4, 5
    feeds = {"query": _uniform(rng, (b, t, hq * dk)), "key": _uniform(rng, (b, t, hkv * dk)),
             "value": _uniform(rng, (b, t, hkv * dv)),
             "past_state": _uniform(rng, (b, hkv, dk, dv)) if past else None,
             "decay": -rng.random((b, t, decay_width)).astype(np.float32)
             if decay_width else None,
             "beta": rng.random((b, t, beta_width)).astype(np.float32) if beta_width else None}
    _check_node("LinearAttention", feeds, ["output", "present_state"],
                {"q_num_heads": hq, "kv_num_heads": hkv, "update_rule": rule}, 27, "cpu")
