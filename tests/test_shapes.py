"""Named dims shared between inputs are one dim: one input's shape fixes the others', a dim
nobody fixed is an InputError naming it, and inputs that disagree on a shared dim are an
InputError naming both, at the call, before anything runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.cli import main
from ember.errors import InputError, ShapeError
from ember.frontends.dims import resolve_shapes
from tests.harness import assert_close

VOCAB, WIDTH = 11, 6


def sentence_model() -> onnx.ModelProto:
    """input_ids and attention_mask, both [batch_size, sequence_length]: embeddings scaled
    by the mask, mask-weighted mean over the sequence, then a projection."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal((VOCAB, WIDTH)).astype(np.float32),
                                     "embedding"),
             numpy_helper.from_array(rng.standard_normal((WIDTH, 3)).astype(np.float32),
                                     "projection"),
             numpy_helper.from_array(np.array([-1], np.int64), "last"),
             numpy_helper.from_array(np.array([1], np.int64), "seq_axis")]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["tokens"], name="embed"),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT,
                         name="mask_float"),
        helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"], name="mask3"),
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"], name="apply_mask"),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["total"], keepdims=0,
                         name="sum_tokens"),
        helper.make_node("ReduceSum", ["mask", "seq_axis"], ["count"], keepdims=1,
                         name="count_tokens"),
        helper.make_node("Div", ["total", "count"], ["mean"], name="mean"),
        helper.make_node("MatMul", ["mean", "projection"], ["logits"], name="project"),
    ]
    dims = ["batch_size", "sequence_length"]
    graph = helper.make_graph(
        nodes, "sentence",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, dims),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", 3])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def sentence_feeds(batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (rng.random((batch, seq)) < 0.7).astype(np.int64)
    mask[:, 0] = 1  # every row has a token: the mean is defined
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq)).astype(np.int64),
            "attention_mask": mask}


def onnxruntime_logits(feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(sentence_model().SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(["logits"], feeds)[0]


# -- shared dims end to end ------------------------------------------------------------------
def test_one_inputs_shape_fixes_the_dims_it_shares(any_target) -> None:
    model = ember.compile(sentence_model(), target=any_target,
                          input_shapes={"input_ids": (2, 9)})
    graph = model.graph
    shapes = {name: graph.type_of(v).shape for name, v in graph.input_values().items()}
    assert shapes == {"input_ids": (2, 9), "attention_mask": (2, 9)}
    feeds = sentence_feeds(2, 9)
    assert_close(model(**feeds)["logits"], onnxruntime_logits(feeds), "logits")
    assert len(model._specializations) == 1  # the call used the compiled shapes


def test_a_model_given_no_shapes_compiles_at_its_first_call(any_target) -> None:
    model = ember.compile(sentence_model(), target=any_target)
    with pytest.raises(InputError, match=r"no size for input 'input_ids' dim 0 "
                                         r"\('batch_size'\).*input_shapes"):
        model.stats  # nothing says how large the inputs are yet
    for batch, seq in ((3, 5), (1, 12)):
        feeds = sentence_feeds(batch, seq, seed=batch)
        assert_close(model(**feeds)["logits"], onnxruntime_logits(feeds), "logits")
    assert model.stats.steps > 0  # the last call's specialization


def test_a_dim_nobody_gives_is_named() -> None:
    model = sentence_model()
    model.graph.input[1].type.tensor_type.shape.dim[1].dim_param = "mask_length"
    with pytest.raises(InputError) as info:
        ember.compile(model, target="cpu", input_shapes={"input_ids": (2, 9)})
    text = str(info.value)
    assert "input 'attention_mask' dim 1 ('mask_length')" in text and "input_ids" not in text
    unnamed = sentence_model()
    unnamed.graph.input[1].type.tensor_type.shape.dim[1].Clear()
    with pytest.raises(InputError, match=r"input 'attention_mask' dim 1 \(unnamed\)"):
        ember.compile(unnamed, target="cpu", input_shapes={"input_ids": (2, 9)})
    fixed = ember.compile(unnamed, target="cpu",
                          input_shapes={"input_ids": (2, 9), "attention_mask": (2, 9)})
    feeds = sentence_feeds(2, 9)
    assert_close(fixed(**feeds)["logits"], onnxruntime_logits(feeds), "logits")


def test_shapes_that_disagree_on_a_shared_dim_at_compile() -> None:
    with pytest.raises(InputError, match=r"inputs 'input_ids' and 'attention_mask' share dim "
                                         r"'sequence_length'.*9 in 'input_ids' \(dim 1\) and "
                                         r"4 in 'attention_mask' \(dim 1\)"):
        ember.compile(sentence_model(), target="cpu",
                      input_shapes={"input_ids": (2, 9), "attention_mask": (2, 4)})


def test_arrays_that_disagree_on_a_shared_dim_fail_before_anything_runs(any_target) -> None:
    model = ember.compile(sentence_model(), target=any_target,
                          input_shapes={"input_ids": (2, 9)})
    feeds = sentence_feeds(2, 9)
    for name, shape, dim, sizes in (("attention_mask", (2, 4), "sequence_length", (9, 4)),
                                    ("attention_mask", (3, 9), "batch_size", (2, 3))):
        bad = dict(feeds, **{name: np.ones(shape, np.int64)})
        with pytest.raises(InputError) as info:
            model(**bad)
        text = str(info.value)
        assert re.search(rf"inputs 'input_ids' and 'attention_mask' share dim '{dim}'", text)
        assert f"{sizes[0]} in 'input_ids'" in text and f"{sizes[1]} in 'attention_mask'" in text
        assert len(model._specializations) == 1  # nothing compiled, nothing ran
    assert_close(model(**feeds)["logits"], onnxruntime_logits(feeds), "logits")


def test_cli_shape_of_one_input_fixes_the_other(tmp_path: Path, capsys) -> None:
    path = tmp_path / "sentence.onnx"
    onnx.save(sentence_model(), str(path))
    assert main(["run", str(path), "--shape", "input_ids=2x7", "--target", "cpu",
                 "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "input  attention_mask: shape (2, 7) int64" in out
    assert re.search(r"^output logits: shape \(2, 3\) float32", out, re.MULTILINE)
    for command in ("run", "show"):
        assert main([command, str(path), "--target", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "input 'input_ids' dim 0 ('batch_size')" in err and "--shape" in err
    assert main(["show", str(path), "--shape", "attention_mask=2x7", "--target", "cpu"]) == 0
    assert "input_ids" in capsys.readouterr().out


# -- the resolution rule itself --------------------------------------------------------------
NAMES = ("a", "b", "c")


@st.composite
def signatures(draw):
    """Up to three inputs of rank 0..3 whose dims are fixed sizes or names from NAMES, the
    names' true sizes, and which inputs are given."""
    sizes = {name: draw(st.integers(0, 5)) for name in NAMES}
    signature, shapes = {}, {}
    for i in range(draw(st.integers(1, 3))):
        dims = draw(st.lists(st.one_of(st.integers(0, 4), st.sampled_from(NAMES)), max_size=3))
        signature[f"in{i}"] = tuple(dims)
        shapes[f"in{i}"] = tuple(sizes[d] if isinstance(d, str) else d for d in dims)
    given_names = draw(st.sets(st.sampled_from(sorted(signature))))
    return signature, shapes, given_names


@given(signatures())
def test_resolution_fills_exactly_the_dims_the_given_shapes_name(case) -> None:
    signature, shapes, given_names = case
    named_by_given = {d for n in given_names for d in signature[n] if isinstance(d, str)}
    open_dims = [(n, axis) for n, dims in signature.items() if n not in given_names
                 for axis, d in enumerate(dims) if isinstance(d, str) and d not in named_by_given]
    given_shapes = {n: shapes[n] for n in given_names}
    if open_dims:
        with pytest.raises(InputError) as info:
            resolve_shapes(signature, given_shapes)
        for name, axis in open_dims:
            assert f"input {name!r} dim {axis} ({signature[name][axis]!r})" in str(info.value)
    else:
        assert resolve_shapes(signature, given_shapes) == shapes


def test_a_given_shape_must_fit_the_declared_one() -> None:
    signature = {"x": ("n", 4), "y": ("n",)}
    with pytest.raises(ShapeError, match=r"input 'x': dim 1 is fixed at 4 by the model, "
                                         r"input_shapes gives 5"):
        resolve_shapes(signature, {"x": (2, 5)})
    with pytest.raises(ShapeError, match=r"input 'y': input_shapes gives rank 2"):
        resolve_shapes(signature, {"y": (2, 2)})
    with pytest.raises(ShapeError, match=r"unknown input\(s\) \['z'\]"):
        resolve_shapes(signature, {"z": (1,)})
    with pytest.raises(InputError, match=r"inputs 'x' and 'y' share dim 'n'"):
        resolve_shapes(signature, {"x": (2, 4), "y": (3,)})
    assert resolve_shapes(signature, {"y": (3,)}) == {"x": (3, 4), "y": (3,)}
