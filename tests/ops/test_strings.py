"""Text ops and host-only string tensors: references against ONNX's reference implementation
(StringConcat, RegexFullMatch, StringSplit, TfIdfVectorizer) and against the ONNX spec's
wording (StringNormalizer), then models mixing string and numeric steps run on a device and
on numpy: strings stay on the host, never in a device buffer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.codegen.registry import device_dtype_ok
from ember.errors import UnsupportedOpError
from ember.ir import OPS, DType
from ember.ir.ops.strings import strings_array
from tests.harness import assert_close

S = TensorProto.STRING


def evaluate(op: str, inputs: list[np.ndarray], **attrs):
    return OPS[op].evaluate(inputs, OPS[op].make_attrs(attrs))


def onnx_reference(op: str, inputs: list[np.ndarray], outputs: int = 1, **attrs):
    names = [f"in{i}" for i in range(len(inputs))]
    node = helper.make_node(op, names, [f"out{i}" for i in range(outputs)], **attrs)
    return ReferenceEvaluator(node).run(None, dict(zip(names, inputs)))


def test_strings_never_reach_a_device():
    assert DType.STRING.host_only and not DType.FLOAT32.host_only
    assert DType.from_numpy(np.dtype("<U3")) is DType.STRING
    # the kernel registry refuses them on every target, so placement keeps them on the host
    assert not device_dtype_ok(DType.STRING, None)


def test_string_concat_and_regex_match_onnx():
    x = strings_array([["ab", ""], ["的", "x.com"]])
    y = strings_array([".com"])
    got = evaluate("StringConcat", [x, y])[0]
    np.testing.assert_array_equal(got, onnx_reference("StringConcat", [x, y])[0])
    assert got.dtype == object
    pattern = r"[\w.]+\.com"
    got = evaluate("RegexFullMatch", [got], pattern=pattern)[0]
    np.testing.assert_array_equal(got, [[True, False], [True, True]])  # ".com" alone: no
    with pytest.raises(UnsupportedOpError, match="cannot be compiled"):
        OPS["RegexFullMatch"].infer_types([ember.ir.TensorType((2,), DType.STRING)],
                                          OPS["RegexFullMatch"].make_attrs({"pattern": "(a"}))


@pytest.mark.parametrize("attrs", [{}, {"delimiter": "-"}, {"delimiter": "-", "maxsplit": 1},
                                   {"maxsplit": 2}])
def test_string_split_matches_onnx(attrs):
    x = strings_array([["a-b--c", " x  y z "], ["", "-"]])
    got = evaluate("StringSplit", [x], **attrs)
    expected = onnx_reference("StringSplit", [x], outputs=2, **attrs)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_string_normalizer_follows_the_spec():
    """Whole elements equal to a stopword go (compared case-insensitively unless
    is_case_sensitive), then the case changes; nothing left gives one empty string."""
    x = strings_array([["Monday", "tuesday", "MONDAY", "Mon day"]])
    got = evaluate("StringNormalizer", [x], stopwords=("monday",), case_change_action="UPPER")
    np.testing.assert_array_equal(got[0], [["TUESDAY", "MON DAY"]])
    got = evaluate("StringNormalizer", [x[0]], stopwords=("monday",), is_case_sensitive=1)
    np.testing.assert_array_equal(got[0], ["Monday", "tuesday", "MONDAY", "Mon day"])
    got = evaluate("StringNormalizer", [x[0, :1]], stopwords=("MONDAY",))
    np.testing.assert_array_equal(got[0], [""])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["TF", "IDF", "TFIDF"]), st.booleans(),
       st.booleans())
def test_tfidf_matches_onnx(seed, mode, weighted, batched):
    rng = np.random.default_rng(seed)
    low = int(rng.integers(1, 3))
    high = int(rng.integers(low, 4))
    counts = [int(rng.integers(0, 4)) for _ in range(3)]  # n-grams of length 1, 2, 3
    pool, starts = [], []
    for n, count in enumerate(counts, start=1):
        starts.append(len(pool))
        pool.extend(int(v) for v in rng.integers(0, 4, size=n * count))
    total = sum(counts)
    indexes = [int(i) for i in rng.permutation(max(total, 1))[:total]] or [0]
    attrs = {"mode": mode, "min_gram_length": low, "max_gram_length": high,
             "max_skip_count": int(rng.integers(0, 3)), "ngram_counts": starts,
             "ngram_indexes": indexes, "pool_int64s": pool or [0]}
    if weighted:
        attrs["weights"] = [float(w) for w in rng.uniform(0.5, 2, size=max(indexes) + 1)]
    x = rng.integers(0, 4, size=(3, 7) if batched else (9,)).astype(np.int64)
    if weighted or mode == "TF":
        expected = onnx_reference("TfIdfVectorizer", [x], **attrs)[0]
    else:  # ONNX's reference needs weights here: without, IDF is 1 where seen, TFIDF is TF
        counts = onnx_reference("TfIdfVectorizer", [x], **dict(attrs, mode="TF"))[0]
        expected = (counts > 0).astype(np.float32) if mode == "IDF" else counts
    ember_attrs = {k: v for k, v in attrs.items() if k != "pool_int64s"}
    got = evaluate("TfIdfVectorizer", [x], pool=tuple(attrs["pool_int64s"]), **ember_attrs)[0]
    assert_close(got, expected.astype(np.float32))


# -- models with string values ----------------------------------------------------------------
def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "text", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                   helper.make_opsetid("ai.onnx.ml", 4)])


def test_string_model_mixes_host_and_device_steps(any_target):
    """Strings in, strings and numbers out: concat with a string initializer, a transpose
    of strings, a regex test, a lookup to int64 and an Add that runs as a kernel. Run
    twice, so a second run does not read the first one's strings."""
    nodes = [
        helper.make_node("StringConcat", ["words", "suffix"], ["joined"]),
        helper.make_node("Transpose", ["joined"], ["flipped"], perm=[1, 0]),
        helper.make_node("RegexFullMatch", ["flipped"], ["hit"], pattern=r"[a-z]+\.com"),
        helper.make_node("LabelEncoder", ["words"], ["codes"], domain="ai.onnx.ml",
                         keys_strings=["a", "bb"], values_int64s=[10, 20]),
        helper.make_node("Add", ["codes", "codes"], ["twice"]),
    ]
    suffix = onnx.helper.make_tensor("suffix", S, [1], [b".com"])
    model = _model(
        nodes, [helper.make_tensor_value_info("words", S, [2, 3])],
        [helper.make_tensor_value_info("flipped", S, [3, 2]),
         helper.make_tensor_value_info("hit", TensorProto.BOOL, [3, 2]),
         helper.make_tensor_value_info("twice", TensorProto.INT64, [2, 3])], [suffix])
    compiled = ember.compile(model, target=any_target)
    for words in (np.array([["a", "bb", "C"], ["d", "", "bb"]], dtype=object),
                  np.array([["x", "a", "bb"], ["yy", "zz", "Q"]])):
        out = compiled(words=words)
        joined = np.char.add(words.astype(str), ".com").T
        np.testing.assert_array_equal(out["flipped"], joined)
        np.testing.assert_array_equal(out["hit"], [[bool(_plain(s)) for s in r]
                                                   for r in words.T.astype(str)])
        lookup = {"a": 10, "bb": 20}
        np.testing.assert_array_equal(out["twice"], [[2 * lookup.get(s, -1) for s in r]
                                                     for r in words.astype(str)])


def _plain(word: str) -> bool:
    return word.isascii() and word.isalpha() and word.islower()


def test_string_split_runs_on_computed_strings(any_target):
    """StringSplit's width depends on the data: it runs between compiled parts."""
    nodes = [helper.make_node("StringConcat", ["x", "sep"], ["joined"]),
             helper.make_node("StringSplit", ["joined"], ["parts", "count"], delimiter="-")]
    sep = onnx.helper.make_tensor("sep", S, [], [b"-end"])
    model = _model(nodes, [helper.make_tensor_value_info("x", S, [2])],
                   [helper.make_tensor_value_info("parts", S, [2, None]),
                    helper.make_tensor_value_info("count", TensorProto.INT64, [2])], [sep])
    out = ember.compile(model, target=any_target)(x=np.array(["a-b", "c"], dtype=object))
    np.testing.assert_array_equal(out["parts"], [["a", "b", "end"], ["c", "end", ""]])
    np.testing.assert_array_equal(out["count"], [3, 2])
