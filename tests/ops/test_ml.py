"""ai.onnx.ml ops: TreeEnsemble and LabelEncoder references against ONNX's reference
implementation on drawn trees and tables, and the converters (TreeEnsemble, LabelEncoder,
Binarizer, ArrayFeatureExtractor) against onnxruntime on a device and on numpy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.errors import ShapeError
from ember.ir import OPS
from tests.harness import assert_close

ML = "ai.onnx.ml"


def _ml_model(node: onnx.NodeProto, inputs: list[onnx.ValueInfoProto],
              outputs: list[onnx.ValueInfoProto], ml_opset: int) -> onnx.ModelProto:
    graph = helper.make_graph([node], "ml", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(ML, ml_opset),
                                                   helper.make_opsetid("", 19)])


def _random_forest(rng, features: int, targets: int) -> dict:
    """TreeEnsemble attributes of 1..3 random trees (interior nodes listed tree by tree)."""
    attrs = {k: [] for k in ("nodes_featureids", "nodes_modes", "nodes_splits",
                             "nodes_truenodeids", "nodes_falsenodeids", "nodes_trueleafs",
                             "nodes_falseleafs", "nodes_missing_value_tracks_true",
                             "leaf_targetids", "leaf_weights", "tree_roots")}
    members: list[float] = []

    def leaf() -> int:
        attrs["leaf_targetids"].append(int(rng.integers(0, targets)))
        attrs["leaf_weights"].append(float(rng.uniform(-5, 5)))
        return len(attrs["leaf_weights"]) - 1

    def grow(depth: int) -> int:
        index = len(attrs["nodes_modes"])
        mode = int(rng.integers(0, 7))
        attrs["nodes_modes"].append(mode)
        attrs["nodes_featureids"].append(int(rng.integers(0, features)))
        attrs["nodes_splits"].append(float(rng.integers(-2, 3)))
        attrs["nodes_missing_value_tracks_true"].append(int(rng.integers(0, 2)))
        if mode == 6:  # set membership: nonzero members (ONNX's reference ends a set at 0)
            members.extend(float(v) for v in rng.choice([-2, -1, 1, 2], size=2, replace=False))
            members.append(np.nan)
        for side in ("true", "false"):
            attrs[f"nodes_{side}nodeids"].append(-1)
            attrs[f"nodes_{side}leafs"].append(-1)
        for side in ("true", "false"):
            is_leaf = depth == 0 or rng.random() < 0.3
            child = leaf() if is_leaf else grow(depth - 1)
            attrs[f"nodes_{side}nodeids"][index] = child
            attrs[f"nodes_{side}leafs"][index] = int(is_leaf)
        return index

    for _ in range(int(rng.integers(1, 4))):
        attrs["tree_roots"].append(grow(int(rng.integers(0, 4))))
    attrs["nodes_modes"] = np.array(attrs["nodes_modes"], np.uint8)
    attrs["nodes_splits"] = np.array(attrs["nodes_splits"], np.float32)
    attrs["leaf_weights"] = np.array(attrs["leaf_weights"], np.float32)
    if members:
        attrs["membership_values"] = np.array(members, np.float32)
    attrs["n_targets"] = targets
    return attrs


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 3]))
def test_tree_ensemble_reference_matches_onnx(seed, aggregate):
    rng = np.random.default_rng(seed)
    features, targets = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    attrs = _random_forest(rng, features, targets)
    attrs["aggregate_function"] = aggregate
    x = rng.integers(-3, 4, size=(7, features)).astype(np.float32)
    x[rng.random(x.shape) < 0.15] = np.nan
    onnx_attrs = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
                  for k, v in attrs.items()}
    node = helper.make_node("TreeEnsemble", ["x"], ["y"], domain=ML, **onnx_attrs)
    model = _ml_model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], 5)
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    op = OPS["TreeEnsemble"]
    ember_attrs = dict(attrs, nodes_modes=attrs["nodes_modes"].tolist())
    got = op.evaluate([x], op.make_attrs(ember_attrs))[0]
    assert_close(got, expected.astype(np.float32))


def test_tree_ensemble_post_transforms():
    """A single-leaf tree per target (both branches on one leaf): the scores are the leaf
    weights, then softmax / logistic as ONNX defines them."""
    op = OPS["TreeEnsemble"]
    attrs = {"nodes_splits": np.zeros(2, np.float32), "nodes_featureids": [0, 0],
             "nodes_modes": [0, 0], "nodes_truenodeids": [0, 1], "nodes_falsenodeids": [0, 1],
             "nodes_trueleafs": [1, 1], "nodes_falseleafs": [1, 1], "leaf_targetids": [0, 1],
             "leaf_weights": np.array([1.0, 0.0], np.float32), "tree_roots": [0, 1],
             "n_targets": 2}
    x = np.zeros((3, 1), np.float32)
    run = lambda transform: op.evaluate([x], op.make_attrs(dict(attrs, post_transform=transform)))[0]
    e = np.exp(1.0)
    assert_close(run(1), np.tile(np.float32([e / (e + 1), 1 / (e + 1)]), (3, 1)))
    assert_close(run(2), np.tile(np.float32([1 / (1 + np.exp(-1.0)), 0.5]), (3, 1)))
    assert_close(run(3), np.tile(np.float32([1.0, 0.0]), (3, 1)))


def test_tree_ensemble_infer_refuses_a_feature_beyond_the_input():
    from ember.ir import DType, TensorType

    op = OPS["TreeEnsemble"]
    attrs = op.make_attrs({
        "nodes_splits": np.zeros(1, np.float32), "nodes_featureids": [3], "nodes_modes": [0],
        "nodes_truenodeids": [0], "nodes_falsenodeids": [0], "nodes_trueleafs": [1],
        "nodes_falseleafs": [1], "leaf_targetids": [0], "leaf_weights": np.ones(1, np.float32),
        "tree_roots": [0], "n_targets": 1})
    with pytest.raises(ShapeError, match="feature"):
        op.infer_types([TensorType((2, 3), DType.FLOAT32)], attrs)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([np.int64, np.float32]),
       st.sampled_from([np.int64, np.float32]))
def test_label_encoder_reference_matches_onnx(seed, key_type, value_type):
    rng = np.random.default_rng(seed)
    keys = rng.integers(-4, 5, size=int(rng.integers(1, 6))).astype(key_type)
    values = rng.integers(-100, 100, size=keys.size).astype(value_type)
    x = rng.integers(-6, 7, size=(3, 4)).astype(key_type)
    default = np.array([7], value_type)
    node = helper.make_node("LabelEncoder", ["x"], ["y"], domain=ML,
                            keys_tensor=numpy_helper.from_array(keys),
                            values_tensor=numpy_helper.from_array(values),
                            default_tensor=numpy_helper.from_array(default))
    elem = helper.np_dtype_to_tensor_dtype
    model = _ml_model(node, [helper.make_tensor_value_info("x", elem(x.dtype), None)],
                      [helper.make_tensor_value_info("y", elem(values.dtype), None)], 4)
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    op = OPS["LabelEncoder"]
    got = op.evaluate([x], op.make_attrs({"keys": keys, "values": values,
                                          "default": default}))[0]
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype


def test_label_encoder_nan_key_matches_every_nan():
    op = OPS["LabelEncoder"]
    keys = np.array([1.5, np.nan], np.float32)
    x = np.array([np.nan, 1.5, -np.nan, 2.0], np.float32)
    got = op.evaluate([x], op.make_attrs({"keys": keys, "values": np.array([1, 2]),
                                          "default": np.array([-1])}))[0]
    np.testing.assert_array_equal(got, [2, 1, 2, -1])


# -- converters against onnxruntime -----------------------------------------------------------
def _against_onnxruntime(model: onnx.ModelProto, feeds: dict, target: str) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(None, feeds)))
    actual = ember.compile(model, target=target)(**feeds)
    for name in names:
        assert_close(actual[name], expected[name], name)


def test_ml_pipeline_matches_onnxruntime(any_target):
    """Binarizer, ArrayFeatureExtractor, TreeEnsemble and an int64 -> float LabelEncoder in
    one model, so host and device steps hand values to each other."""
    rng = np.random.default_rng(3)
    forest = _random_forest(rng, 3, 2)
    forest.pop("nodes_missing_value_tracks_true")
    forest = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
              for k, v in forest.items()}
    nodes = [
        helper.make_node("ArrayFeatureExtractor", ["x", "cols"], ["picked"], domain=ML),
        helper.make_node("Binarizer", ["picked"], ["bits"], domain=ML, threshold=0.5),
        helper.make_node("TreeEnsemble", ["picked"], ["scores"], domain=ML, **forest),
        helper.make_node("LabelEncoder", ["labels"], ["coded"], domain=ML,
                         keys_int64s=[1, 2, 3], values_floats=[0.5, 1.5, 2.5],
                         default_float=-1.0),
    ]
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    graph = helper.make_graph(
        nodes, "ml",
        [helper.make_tensor_value_info("x", f32, [5, 4]),
         helper.make_tensor_value_info("cols", i64, [3]),
         helper.make_tensor_value_info("labels", i64, [6])],
        [helper.make_tensor_value_info("bits", f32, [5, 3]),
         helper.make_tensor_value_info("scores", f32, [5, 2]),
         helper.make_tensor_value_info("coded", f32, [6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(ML, 5),
                                                    helper.make_opsetid("", 19)])
    feeds = {"x": rng.integers(-3, 4, size=(5, 4)).astype(np.float32),
             "cols": np.array([3, 0, 1], np.int64),
             "labels": np.array([1, 3, 9, 2, 2, -1], np.int64)}
    _against_onnxruntime(model, feeds, any_target)


def test_array_feature_extractor_on_a_vector_gives_one_row(any_target):
    node = helper.make_node("ArrayFeatureExtractor", ["x", "i"], ["y"], domain=ML)
    model = _ml_model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5]),
                             helper.make_tensor_value_info("i", TensorProto.INT64, [2, 1])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], 1)
    feeds = {"x": np.arange(5, dtype=np.float32), "i": np.array([[4], [1]], np.int64)}
    _against_onnxruntime(model, feeds, any_target)
