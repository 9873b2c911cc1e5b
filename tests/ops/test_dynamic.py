"""NonZero, Unique, Compress, NonMaxSuppression (output shapes that depend on values) and
ReverseSequence.

The references are checked against plain loop implementations on hypothesis-drawn inputs
(NMS on box grids that make ties, identical, touching, flipped and empty boxes, and IoUs
exactly on the threshold) and against the expected outputs of ONNX's own node cases; the
converters against onnxruntime, with constant inputs (the node folds) and, for Compress
with a constant condition and ReverseSequence, with graph inputs on the device.
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.errors import DataDependentError, ShapeError
from ember.ir import OPS
from ember.ir.ops.dynamic import non_max_suppression
from tests.harness import assert_close


def evaluate(op: str, inputs: list, **attrs) -> tuple[np.ndarray, ...]:
    return OPS[op].evaluate(inputs, OPS[op].make_attrs(attrs))


# -- loop implementations ---------------------------------------------------------------------
def nonzero_loop(x: np.ndarray) -> np.ndarray:
    x = x.reshape(x.shape or (1,))
    found = [index for index in np.ndindex(x.shape) if x[index] != 0]
    return np.array(found, dtype=np.int64).reshape(len(found), x.ndim).T


def unique_loop(x: np.ndarray, axis: int | None, sorted_: bool):
    """Distinct elements (or slices along axis), found one by one in input order."""
    slices = list(x.reshape(-1)) if axis is None else [np.take(x, i, axis=axis)
                                                      for i in range(x.shape[axis])]
    keys = [tuple(np.asarray(s).reshape(-1).tolist()) for s in slices]
    first: dict[tuple, int] = {}
    for position, key in enumerate(keys):
        first.setdefault(key, position)
    order = sorted(first, key=lambda k: (k, first[k])) if sorted_ else list(first)
    rank = {key: r for r, key in enumerate(order)}
    indices = np.array([first[k] for k in order], dtype=np.int64)
    inverse = np.array([rank[k] for k in keys], dtype=np.int64)
    counts = np.array([keys.count(k) for k in order], dtype=np.int64)
    source = x.reshape(-1) if axis is None else x
    y = np.take(source, indices, axis=0 if axis is None else axis)
    return y, indices, inverse, counts


def compress_loop(x: np.ndarray, condition: np.ndarray, axis: int | None) -> np.ndarray:
    source = x.reshape(-1) if axis is None else np.moveaxis(x, axis, 0)
    kept = [source[i] for i in range(len(condition)) if condition[i]]
    out = np.array(kept, dtype=x.dtype).reshape((len(kept),) + source.shape[1:])
    return out if axis is None else np.moveaxis(out, 0, axis)


def _extent(box, center: int):
    """(x_lo, x_hi, y_lo, y_hi) of one box, in its own float type."""
    if center:
        cx, cy, w, h = box
        return cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
    y1, x1, y2, x2 = box
    return min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)


def overlaps_too_much(candidate, kept, center: int, threshold) -> bool:
    cx0, cx1, cy0, cy1 = _extent(candidate, center)
    kx0, kx1, ky0, ky1 = _extent(kept, center)
    width, height = min(cx1, kx1) - max(cx0, kx0), min(cy1, ky1) - max(cy0, ky0)
    if width <= 0 or height <= 0:
        return False
    inter = width * height
    area_c, area_k = (cx1 - cx0) * (cy1 - cy0), (kx1 - kx0) * (ky1 - ky0)
    union = area_c + area_k - inter
    if inter <= 0 or area_c <= 0 or area_k <= 0 or union <= 0:
        return False
    return inter / union > threshold


def nms_loop(boxes, scores, limit, iou, score_min, center: int) -> np.ndarray:
    rows = []
    for b in range(boxes.shape[0]):
        for c in range(scores.shape[1]):
            s = scores[b, c]
            order = sorted((i for i in range(s.size) if score_min is None or s[i] > score_min),
                           key=lambda i: (-s[i], i))
            kept: list[int] = []
            for i in order:
                if len(kept) >= limit:
                    break
                if not any(overlaps_too_much(boxes[b, i], boxes[b, k], center, iou)
                           for k in kept):
                    kept.append(i)
            rows += [(b, c, i) for i in kept]
    return np.array(rows, dtype=np.int64).reshape(len(rows), 3)


# -- references against the loops -------------------------------------------------------------
_SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


@given(st.integers(0, 2**32 - 1), _SHAPES, st.sampled_from([np.float32, np.int32, np.bool_]))
def test_nonzero_matches_loop(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, 3, size=shape) * rng.integers(0, 2, size=shape)).astype(dtype)
    (got,) = evaluate("NonZero", [x])
    np.testing.assert_array_equal(got, nonzero_loop(x))
    assert got.dtype == np.int64 and got.shape == (max(x.ndim, 1), np.count_nonzero(x))


@given(st.integers(0, 2**32 - 1), st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
       st.booleans(), st.booleans(), st.sampled_from([np.float32, np.int64]))
def test_unique_matches_loop(seed, shape, along_axis, sorted_, dtype):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    if along_axis and x.ndim > 1:  # repeat a slice so that some are equal
        axis = int(rng.integers(-x.ndim, x.ndim))
        picks = rng.integers(0, x.shape[axis], size=x.shape[axis])
        x = np.take(x, picks, axis=axis)
    else:
        axis = None
    got = evaluate("Unique", [x], axis=axis, sorted=int(sorted_))
    expected = unique_loop(x, None if axis is None else axis % x.ndim, sorted_)
    for name, g, e in zip(("Y", "indices", "inverse_indices", "counts"), got, expected):
        np.testing.assert_array_equal(g, e, err_msg=name)
        assert g.dtype == e.dtype and g.shape == e.shape, name


@given(st.integers(0, 2**32 - 1), st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
       st.booleans(), st.integers(-1, 2))
def test_compress_matches_loop(seed, shape, along_axis, extra):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    axis = int(rng.integers(-x.ndim, x.ndim)) if along_axis else None
    dim = x.size if axis is None else x.shape[axis]
    length = max(dim + min(extra, 0), 0)
    condition = rng.random(length) < 0.5
    if extra > 0:  # past the axis only False is allowed
        condition = np.concatenate([condition, np.zeros(extra, np.bool_)])
    (got,) = evaluate("Compress", [x, condition], axis=axis)
    np.testing.assert_array_equal(got, compress_loop(x, condition, axis))


def test_compress_past_the_axis_is_an_error():
    with pytest.raises(ShapeError, match="position 3 of an axis of size 3"):
        evaluate("Compress", [np.zeros((2, 3), np.float32), np.array([0, 1, 0, 1], bool)],
                 axis=1)
    with pytest.raises(ShapeError, match="Compress axis 0 given for a scalar"):
        evaluate("Compress", [np.float32(1), np.array([1], bool)], axis=0)
    with pytest.raises(ShapeError, match="Unique axis 0 given for a scalar"):
        evaluate("Unique", [np.float32(1)], axis=0)


# Box coordinates on a small grid: equal, touching, flipped and empty boxes are common.
_GRID = st.integers(0, 2**32 - 1)


@settings(deadline=None)
@given(_GRID, st.integers(1, 2), st.integers(1, 3), st.integers(0, 12), st.sampled_from([0, 1]),
       st.sampled_from([None, 0, 1, 2, 100]), st.sampled_from([None, 0.0, 0.25, 1 / 3, 0.5, 1.0]),
       st.sampled_from([None, 0.0, 0.5]), st.sampled_from([1, 3, 256]))
def test_nms_matches_loop(seed, batches, classes, count, center, limit, iou, score_min, chunk):
    rng = np.random.default_rng(seed)
    boxes = rng.integers(0, 4, size=(batches, count, 4)).astype(np.float32)
    if center:
        boxes[..., 2:] = rng.integers(0, 3, size=(batches, count, 2))
    scores = rng.choice(np.float32([0.0, 0.25, 0.5, 0.75]), size=(batches, classes, count))
    optional = [None if v is None else np.array([v], dtype)
                for v, dtype in ((limit, np.int64), (iou, np.float32), (score_min, np.float32))]
    got = non_max_suppression(boxes, scores, *optional, center_point_box=center,
                              chunk_size=chunk)
    expected = nms_loop(boxes, scores, limit or 0, np.float32(iou or 0.0),
                        None if score_min is None else np.float32(score_min), center)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64 and got.shape == expected.shape


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_nms_chunks_see_the_boxes_kept_before(chunk):
    rng = np.random.default_rng(11)
    corner = rng.uniform(0, 10, size=(2, 60, 2))
    boxes = np.float32(np.concatenate([corner, corner + rng.uniform(1, 4, (2, 60, 2))], -1))
    scores = np.float32(rng.random((2, 3, 60)))
    optional = [np.array([40], np.int64), np.float32([0.3]), np.float32([0.2])]
    got = non_max_suppression(boxes, scores, *optional, chunk_size=chunk)
    np.testing.assert_array_equal(got, nms_loop(boxes, scores, 40, np.float32(0.3),
                                                np.float32(0.2), 0))


def test_nms_iou_exactly_on_the_threshold_keeps_the_box():
    # IoU of the two boxes is 1/3 in float32: not above a threshold of float32(1/3)
    boxes = np.float32([[[0, 0, 1, 2], [0, 1, 1, 3]]])
    scores = np.float32([[[0.9, 0.8]]])
    limit, thr = np.array([5], np.int64), np.float32([1 / 3])
    (got,) = evaluate("NonMaxSuppression", [boxes, scores, limit, thr])
    np.testing.assert_array_equal(got, [[0, 0, 0], [0, 0, 1]])
    (got,) = evaluate("NonMaxSuppression", [boxes, scores, limit, np.float32([0.33])])
    np.testing.assert_array_equal(got, [[0, 0, 0]])


# -- references against ONNX's node cases -----------------------------------------------------
_CASE_MODULES = {"nonzero": "NonZero", "unique": "Unique", "compress": "Compress",
                 "nonmaxsuppression": "NonMaxSuppression"}


def _node_cases(module_name: str, monkeypatch) -> list:
    """(node, inputs, outputs, name) of every case an onnx case module exports."""
    module = importlib.import_module(f"onnx.backend.test.case.node.{module_name}")
    found = []
    monkeypatch.setattr(module, "expect", lambda node, inputs, outputs, name, **_: found.append(
        (node, inputs, outputs, name)))
    owner = getattr(module, _CASE_MODULES.get(module_name, "ReverseSequence"))
    for attribute in dir(owner):
        if attribute.startswith("export"):
            getattr(owner, attribute)()
    return found


def _array(value) -> np.ndarray:
    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)


@pytest.mark.parametrize("module_name", sorted(_CASE_MODULES))
def test_references_match_onnx_node_cases(module_name, monkeypatch):
    cases = _node_cases(module_name, monkeypatch)
    assert cases
    for node, inputs, outputs, name in cases:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        got = evaluate(node.op_type, [_array(a) for a in inputs], **attrs)
        for g, e in zip(got, outputs):
            e = _array(e)
            np.testing.assert_array_equal(g, e, err_msg=name)
            assert g.dtype == e.dtype and g.shape == e.shape, name


# -- converters against onnxruntime -----------------------------------------------------------
def _model(nodes, graph_inputs: dict[str, np.ndarray], constants: dict[str, np.ndarray],
           outputs: list[str], opset: int) -> onnx.ModelProto:
    info = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in graph_inputs.items()]
    inits = [numpy_helper.from_array(a, n) for n, a in constants.items()]
    outs = [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in outputs]
    graph = helper.make_graph(nodes, "dynamic", info, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model)
    for out in inferred.graph.output:  # onnxruntime needs the element types
        match = [v for v in inferred.graph.value_info if v.name == out.name]
        if match:
            out.type.CopyFrom(match[0].type)
    return inferred


def _onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


_N = helper.make_node
_RNG = np.random.default_rng(5)
_X = np.float32(_RNG.integers(-1, 2, size=(3, 4, 2)))
_BOXES = np.float32(_RNG.integers(0, 5, size=(2, 9, 4)))
_SCORES = np.float32(_RNG.choice([0.1, 0.4, 0.7, 0.9], size=(2, 3, 9)))
FOLDED_CASES = [
    ("nonzero", [_N("NonZero", ["x"], ["y"])], {"x": _X}, ["y"], 13),
    ("unique_unsorted_axis", [_N("Unique", ["x"], ["y", "i", "v", "c"], axis=-1, sorted=0)],
     {"x": _X}, ["y", "i", "v", "c"], 11),
    ("unique_flat_some_outputs", [_N("Unique", ["x"], ["y", "", "v"])], {"x": _X},
     ["y", "v"], 11),
    ("compress_flat", [_N("Compress", ["x", "m"], ["y"])],
     {"x": _X, "m": _X.reshape(-1) > 0}, ["y"], 11),
    ("nms", [_N("NonMaxSuppression", ["b", "s", "k", "t", "u"], ["y"], center_point_box=1)],
     {"b": _BOXES, "s": _SCORES, "k": np.array([3], np.int64), "t": np.float32([0.2]),
      "u": np.float32([0.3])}, ["y"], 11),
    ("nms_no_score_threshold", [_N("NonMaxSuppression", ["b", "s", "k", "t"], ["y"])],
     {"b": _BOXES, "s": _SCORES, "k": np.array([9], np.int64), "t": np.float32([0.0])},
     ["y"], 11),
]


@pytest.mark.parametrize("case", FOLDED_CASES, ids=[c[0] for c in FOLDED_CASES])
def test_constant_inputs_fold_like_onnxruntime(case):
    _, nodes, constants, outputs, opset = case
    model = _model(nodes, {}, constants, outputs, opset)
    expected = _onnxruntime(model, {})
    result = ember.compile(model, target="cpu")()
    for name, want in zip(outputs, expected):
        assert_close(result[name], want, f"{case[0]} output {name}")


def test_value_dependent_node_on_a_graph_input_is_data_dependent():
    model = _model([_N("Relu", ["x"], ["r"]), _N("NonZero", ["r"], ["y"], name="where_set")],
                   {"x": _X}, {}, ["y"], 13)
    with pytest.raises(DataDependentError, match="NonZero node 'where_set'") as raised:
        ember.frontends.onnx.import_onnx(model)
    assert raised.value.node == "where_set"


def test_compress_with_constant_condition_runs_as_a_gather(any_target):
    condition = np.array([True, False, True, True], np.bool_)
    nodes = [_N("Compress", ["x", "m"], ["y"], axis=1), _N("Compress", ["x", "m"], ["z"])]
    model = _model(nodes, {"x": _X}, {"m": condition}, ["y", "z"], 11)
    expected = _onnxruntime(model, {"x": _X})
    compiled = ember.compile(model, target=any_target, strict=any_target != "cpu")
    result = compiled(x=_X)
    assert_close(result["y"], expected[0], "Compress axis 1")
    assert_close(result["z"], expected[1], "Compress flattened")


# (shape, time axis, lengths): both axis orders, ranks 2 to 4, lengths 0 and full
REVERSE_CASES = [((5, 3), 0, [5, 0, 2]), ((3, 4, 2), 1, [1, 4, 3]), ((4, 2, 3, 2), 0, [3, 4])]


def test_reverse_sequence_matches_onnxruntime(any_target):
    nodes, feeds = [], {}
    for i, (shape, time_axis, lens) in enumerate(REVERSE_CASES):
        feeds[f"x{i}"] = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        feeds[f"l{i}"] = np.array(lens, np.int64)
        nodes.append(_N("ReverseSequence", [f"x{i}", f"l{i}"], [f"y{i}"], time_axis=time_axis,
                        batch_axis=1 - time_axis))
    outputs = [f"y{i}" for i in range(len(REVERSE_CASES))]
    model = _model(nodes, feeds, {}, outputs, 10)
    expected = _onnxruntime(model, feeds)
    result = ember.compile(model, target=any_target, strict=any_target != "cpu")(**feeds)
    for name, want in zip(outputs, expected):
        assert_close(result[name], want, f"ReverseSequence {name}")


def test_reverse_sequence_lengths_out_of_range_stay_in_bounds():
    x = np.arange(12, dtype=np.int32).reshape(4, 3)
    node = _N("ReverseSequence", ["x", "l"], ["y"])
    model = _model([node], {"x": x, "l": np.zeros(3, np.int64)}, {}, ["y"], 10)
    out = ember.compile(model, target="cpu")(x=x, l=np.array([9, -2, 4], np.int64))["y"]
    np.testing.assert_array_equal(out, np.stack([x[::-1, 0], x[:, 1], x[::-1, 2]], axis=1))
