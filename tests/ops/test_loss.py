"""NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss: the numpy reference against ONNX's
reference implementation (every reduction, ignore_index inside and outside the class range,
weights, ranks 2..4), and the converters against onnxruntime on a device and on numpy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.errors import ShapeError
from ember.ir import OPS, DType
from tests.harness import assert_close

REDUCTIONS = ["none", "sum", "mean"]


def _case(seed: int, rank: int, ignore: str):
    """log-probabilities (N, C, d..), targets, weights and the ignore_index to use."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in rng.integers(1, 4, size=rank))
    classes = int(rng.integers(2, 5))
    x = rng.uniform(-4, 0, size=(shape[0], classes) + shape[1:]).astype(np.float32)
    target = rng.integers(0, classes, size=shape).astype(np.int64)
    ignore_index = {"none": None, "inside": 1, "outside": -100}[ignore]
    if ignore_index is not None:
        target[rng.random(shape) < 0.3] = ignore_index
        target.reshape(-1)[0] = 0  # at least one counts: the mean stays defined
    weight = rng.uniform(0.5, 2, size=classes).astype(np.float32)
    return x, target, weight, ignore_index


def _onnx_reference(op: str, inputs: list[np.ndarray], outputs: int = 1, **attrs):
    names = [f"in{i}" for i in range(len(inputs))]
    attrs = {k: v for k, v in attrs.items() if v is not None}
    node = helper.make_node(op, names, [f"out{i}" for i in range(outputs)], **attrs)
    return ReferenceEvaluator(node).run(None, dict(zip(names, inputs)))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.sampled_from(REDUCTIONS),
       st.sampled_from(["none", "inside", "outside"]), st.booleans())
def test_nll_reference_matches_onnx(seed, rank, reduction, ignore, weighted):
    x, target, weight, ignore_index = _case(seed, rank, ignore)
    inputs = [x, target] + ([weight] if weighted else [])
    op = OPS["NegativeLogLikelihoodLoss"]
    got = op.evaluate(inputs, op.make_attrs({"reduction": reduction,
                                              "ignore_index": ignore_index}))[0]
    expected = _onnx_reference("NegativeLogLikelihoodLoss", inputs, reduction=reduction,
                               ignore_index=ignore_index)[0]
    assert_close(got, np.asarray(expected, np.float32))


def test_nll_refuses_a_target_outside_the_classes():
    op = OPS["NegativeLogLikelihoodLoss"]
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ShapeError, match="out of range"):
        op.evaluate([x, np.array([0, 3])], op.make_attrs({"ignore_index": -1}))


def test_nll_infer_checks_the_target_shape():
    from ember.ir import TensorType

    op = OPS["NegativeLogLikelihoodLoss"]
    with pytest.raises(ShapeError, match="target of shape"):
        op.infer_types([TensorType((2, 3, 4), DType.FLOAT32), TensorType((2, 3), DType.INT64)],
                       op.make_attrs({}))


def _sce_model(reduction: str, ignore_index: int | None, weighted: bool, rank: int
               ) -> onnx.ModelProto:
    inputs = ["x", "t"] + (["w"] if weighted else [])
    attrs = {"reduction": reduction}
    if ignore_index is not None:
        attrs["ignore_index"] = ignore_index
    node = helper.make_node("SoftmaxCrossEntropyLoss", inputs, ["loss", "log_prob"], **attrs)
    dims = [None] * rank
    graph = helper.make_graph(
        [node], "sce",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None] * (rank + 1)),
         helper.make_tensor_value_info("t", TensorProto.INT64, dims)]
        + ([helper.make_tensor_value_info("w", TensorProto.FLOAT, [None])] if weighted else []),
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT,
                                       dims if reduction == "none" else []),
         helper.make_tensor_value_info("log_prob", TensorProto.FLOAT, [None] * (rank + 1))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("reduction,ignore,weighted,rank", [
    ("mean", "outside", True, 3), ("none", "inside", False, 1), ("sum", "none", True, 2)])
def test_softmax_cross_entropy_matches_onnxruntime(reduction, ignore, weighted, rank,
                                                   any_target):
    import onnxruntime as ort

    x, target, weight, ignore_index = _case(7, rank, ignore)
    x = x * 3  # scores, not log-probabilities
    model = _sce_model(reduction, ignore_index, weighted, rank)
    feeds = {"x": x, "t": target} | ({"w": weight} if weighted else {})
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    actual = ember.compile(model, target=any_target)(**feeds)
    assert_close(actual["loss"], expected[0], "loss")
    assert_close(actual["log_prob"], expected[1], "log_prob")
