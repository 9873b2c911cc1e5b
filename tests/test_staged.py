"""Staged execution: nodes whose output shapes depend on run-time values run on the host
between compiled segments; branches and loop bodies run as compiled sub-models, cached by
shape. Checked against onnxruntime."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import ember
from ember.errors import InputError, ShapeError, UnsupportedOpError
from ember.ir import DType
from ember.onnx_backend import EmberBackend
from ember.runtime import opencl
from tests.harness import assert_close

F = T.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    model = h.make_model(h.make_graph(nodes, "staged", inputs, outputs, list(initializers)),
                         opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _reference(model: onnx.ModelProto, feeds: dict) -> list:
    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def _compare(model: onnx.ModelProto, actual: dict, feeds: dict) -> None:
    for info, expected in zip(model.graph.output, _reference(model, feeds)):
        assert_close(actual[info.name], expected, info.name)


def _nonzero_model() -> onnx.ModelProto:
    """The positions of x's positive entries, transposed, plus their mean row: the compiled
    Relu, NonZero on the host, the rest compiled for the count NonZero found."""
    nodes = [h.make_node("Relu", ["x"], ["r"]), h.make_node("NonZero", ["r"], ["nz"]),
             h.make_node("Transpose", ["nz"], ["t"]),
             h.make_node("Cast", ["t"], ["tf"], to=F),
             h.make_node("ReduceMean", ["tf"], ["mean"], axes=[0], keepdims=1),
             h.make_node("Add", ["tf", "mean"], ["y"])]
    return _model(nodes, [h.make_tensor_value_info("x", F, [3, 4])],
                  [h.make_tensor_value_info("y", F, [None, 2]),
                   h.make_tensor_value_info("r", F, [3, 4])], opset=17)


def test_a_data_dependent_node_splits_the_model(any_target):
    model = _nonzero_model()
    compiled = ember.compile(model, target=any_target)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    xs = [x, np.abs(x) + 1]  # some positions, then all 12
    for x in xs:
        _compare(model, compiled(x=x), {"x": x})
    assert compiled.staged.host_nodes() == ["NonZero 'nz'"]
    assert "host: NonZero 'nz'" in compiled.summary()
    before = compiled.staged.compilations
    _compare(model, compiled(x=xs[1]), {"x": xs[1]})  # same shapes: nothing compiles
    assert compiled.staged.compilations == before
    with pytest.raises(UnsupportedOpError, match="staged"):
        compiled.save("unused.ember")


def _positions_model() -> onnx.ModelProto:
    """NonZero -> Transpose -> Add: after the host node, a segment whose only size that
    varies is the count NonZero finds."""
    nodes = [h.make_node("Relu", ["x"], ["r"]), h.make_node("NonZero", ["r"], ["nz"]),
             h.make_node("Transpose", ["nz"], ["t"]),
             h.make_node("Cast", ["t"], ["tf"], to=F),
             h.make_node("Add", ["tf", "bias"], ["y"])]
    bias = onnx.numpy_helper.from_array(np.array([0.5, -1.5], np.float32), "bias")
    return _model(nodes, [h.make_tensor_value_info("x", F, [8, 8])],
                  [h.make_tensor_value_info("y", F, [None, 2])], [bias])


def _with_positives(count: int) -> np.ndarray:
    x = -np.ones(64, np.float32)
    x[np.random.default_rng(count).permutation(64)[:count]] = 2
    return x.reshape(8, 8)


def test_new_counts_reuse_the_programs_built_for_earlier_ones(opencl_target):
    """Once two counts showed which size varies, the segment after NonZero is one model
    with that size free: a new count is planned on its generic kernels, no program built."""
    model = _positions_model()
    compiled = ember.compile(model, target=opencl_target)
    for count in (20, 27):
        _compare(model, compiled(x=_with_positives(count)), {"x": _with_positives(count)})
    programs = len(opencl._PROGRAMS)
    for count in (9, 40, 0, 64, 33):
        x = _with_positives(count)
        _compare(model, compiled(x=x), {"x": x})
    assert len(opencl._PROGRAMS) == programs
    (plan,) = compiled.staged.root.plans.values()
    (segment,) = plan.rest.segments.values()  # one model for every count
    assert segment.signature == {"nz": ((2, "nz.1"), DType.INT64)}
    launches = [launch for step in segment.model.plan.steps if step.lowered is not None
                for launch in step.lowered.launches]
    assert launches and all(launch.kernel.scalar_types for launch in launches)
    assert compiled.staged.compilations == 1 + 7  # the first segment, and each count planned


def _if_on_values() -> onnx.ModelProto:
    """y = x * w when sum(x) > 0, else x - w (w an initializer, x captured by the branches)."""
    then = h.make_graph([h.make_node("Mul", ["x", "w"], ["t"])], "then", [],
                        [h.make_tensor_value_info("t", F, [2, 3])])
    other = h.make_graph([h.make_node("Sub", ["x", "w"], ["e"])], "else", [],
                         [h.make_tensor_value_info("e", F, [2, 3])])
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["y0"], then_branch=then, else_branch=other),
             h.make_node("Relu", ["y0"], ["y"])]
    inits = [onnx.numpy_helper.from_array(np.array(0, np.float32), "zero"),
             onnx.numpy_helper.from_array(np.linspace(-1, 1, 6, dtype=np.float32)
                                          .reshape(2, 3), "w")]
    return _model(nodes, [h.make_tensor_value_info("x", F, [2, 3])],
                  [h.make_tensor_value_info("y", F, [2, 3])], inits)


def test_an_if_on_computed_values_runs_the_taken_branch(any_target):
    model = _if_on_values()
    compiled = ember.compile(model, target=any_target)
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 1
    for feed in (x, -x):
        _compare(model, compiled(x=feed), {"x": feed})
    assert compiled.staged.host_nodes() == ["If 'y0'"]


def test_a_value_frozen_into_a_branch_stays_part_of_its_key(any_target):
    """The taken branch reshapes x to a shape given as an input: the branch is compiled
    with that shape's value frozen in, so another value is another model."""
    then = h.make_graph([h.make_node("Reshape", ["x", "shape"], ["t"])], "then", [],
                        [h.make_tensor_value_info("t", F, [None, None])])
    other = h.make_graph([h.make_node("Neg", ["x"], ["n"]),
                          h.make_node("Reshape", ["n", "shape"], ["e"])], "else", [],
                         [h.make_tensor_value_info("e", F, [None, None])])
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    model = _model(nodes, [h.make_tensor_value_info("x", F, [6]),
                           h.make_tensor_value_info("shape", T.INT64, [2])],
                   [h.make_tensor_value_info("y", F, [None, None])],
                   [onnx.numpy_helper.from_array(np.array(0, np.float32), "zero")])
    compiled = ember.compile(model, target=any_target)
    x = np.arange(6, dtype=np.float32) - 1
    for feed, shape in ((x, (2, 3)), (x, (3, 2)), (-x, (3, 2)), (x, (6, 1)), (x, (2, 3))):
        feeds = {"x": feed, "shape": np.array(shape, np.int64)}
        _compare(model, compiled(**feeds), feeds)
        assert compiled(**feeds)["y"].shape == shape


def _loop_with_computed_trips() -> onnx.ModelProto:
    """acc = acc * 0.5 + x, n times (n an input); every acc is a scan output."""
    body = h.make_graph(
        [h.make_node("Mul", ["acc", "half"], ["a0"]), h.make_node("Add", ["a0", "x"], ["acc_out"]),
         h.make_node("Identity", ["cond"], ["cond_out"]),
         h.make_node("Identity", ["acc_out"], ["each"])],
        "body", [h.make_tensor_value_info("i", T.INT64, []),
                 h.make_tensor_value_info("cond", T.BOOL, []),
                 h.make_tensor_value_info("acc", F, [4])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []),
         h.make_tensor_value_info("acc_out", F, [4]), h.make_tensor_value_info("each", F, [4])])
    inits = [onnx.numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             onnx.numpy_helper.from_array(np.zeros(4, np.float32), "zero")]
    return _model([h.make_node("Loop", ["n", "", "zero"], ["total", "steps"], body=body)],
                  [h.make_tensor_value_info("x", F, [4]), h.make_tensor_value_info("n", T.INT64, [])],
                  [h.make_tensor_value_info("total", F, [4]),
                   h.make_tensor_value_info("steps", F, [None, 4])], inits)


def test_a_loop_runs_its_compiled_body_each_iteration(any_target):
    model = _loop_with_computed_trips()
    compiled = ember.compile(model, target=any_target)
    x = np.array([1, -2, 3, 0.25], np.float32)
    for trips in (3, 6):
        feeds = {"x": x, "n": np.array(trips, np.int64)}
        _compare(model, compiled(**feeds), feeds)
    # the body's shapes never change: it compiled once, and nothing else needed compiling
    assert compiled.staged.compilations == 1


def test_a_loop_whose_carried_shape_grows_respecializes(any_target):
    """v = concat(v, v[-1:] + 1) twice: each iteration's body sees a new shape."""
    body = h.make_graph(
        [h.make_node("Slice", ["v", "minus_one", "big"], ["last"]),
         h.make_node("Add", ["last", "one"], ["next"]),
         h.make_node("Concat", ["v", "next"], ["v_out"], axis=0),
         h.make_node("Identity", ["cond"], ["cond_out"])],
        "body", [h.make_tensor_value_info("i", T.INT64, []),
                 h.make_tensor_value_info("cond", T.BOOL, []),
                 h.make_tensor_value_info("v", F, [None])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []),
         h.make_tensor_value_info("v_out", F, [None])])
    inits = [onnx.numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
             onnx.numpy_helper.from_array(np.array([1 << 20], np.int64), "big"),
             onnx.numpy_helper.from_array(np.array(1, np.float32), "one")]
    model = _model([h.make_node("Loop", ["n", "", "v0"], ["v"], body=body)],
                   [h.make_tensor_value_info("v0", F, [2]),
                    h.make_tensor_value_info("n", T.INT64, [])],
                   [h.make_tensor_value_info("v", F, [None])], inits)
    feeds = {"v0": np.array([0.5, 2], np.float32), "n": np.array(2, np.int64)}
    compiled = ember.compile(model, target=any_target)
    _compare(model, compiled(**feeds), feeds)


def _sequence_model() -> onnx.ModelProto:
    """Split x into rows, append y, drop the first, then concat: sequences on the host."""
    nodes = [h.make_node("SplitToSequence", ["x"], ["rows"], axis=0, keepdims=1),
             h.make_node("SequenceInsert", ["rows", "y"], ["more"]),
             h.make_node("SequenceErase", ["more", "zero"], ["fewer"]),
             h.make_node("SequenceLength", ["fewer"], ["count"]),
             h.make_node("ConcatFromSequence", ["fewer"], ["joined"], axis=0),
             h.make_node("Relu", ["joined"], ["out"])]
    inits = [onnx.numpy_helper.from_array(np.array(0, np.int64), "zero")]
    return _model(nodes, [h.make_tensor_value_info("x", F, [3, 2]),
                          h.make_tensor_value_info("y", F, [1, 2])],
                  [h.make_tensor_value_info("out", F, [3, 2]),
                   h.make_tensor_value_info("count", T.INT64, [])], inits)


def test_sequences_run_on_the_host(any_target):
    model = _sequence_model()
    compiled = ember.compile(model, target=any_target)
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(3, 2) - 2,
             "y": np.array([[7, -7]], np.float32)}
    _compare(model, compiled(**feeds), feeds)


def test_sequence_and_optional_values_through_the_backend():
    """Sequence inputs and outputs are lists; an empty optional is None."""
    seq = h.make_tensor_sequence_value_info
    model = _model([h.make_node("SequenceAt", ["s", "at"], ["item"]),
                    h.make_node("SequenceInsert", ["s", "item"], ["longer"]),
                    h.make_node("OptionalHasElement", ["maybe"], ["has"])],
                   [seq("s", F, [None]), h.make_tensor_value_info("at", T.INT64, []),
                    h.make_value_info("maybe", h.make_optional_type_proto(
                        h.make_tensor_type_proto(F, [2])))],
                   [h.make_tensor_value_info("item", F, [None]), seq("longer", F, [None]),
                    h.make_tensor_value_info("has", T.BOOL, [])], opset=18)
    items = [np.ones((2,), np.float32), np.arange(3, dtype=np.float32)]
    rep = EmberBackend.prepare(model, "NUMPY")
    item, longer, has = rep.run({"s": items, "at": np.array(-1, np.int64), "maybe": None})
    np.testing.assert_array_equal(item, items[1])
    assert [a.tolist() for a in longer] == [[1, 1], [0, 1, 2], [0, 1, 2]]
    assert not has
    *_, has = rep.run({"s": items, "at": np.array(0, np.int64),
                       "maybe": np.zeros(2, np.float32)})
    assert has


def test_a_failed_call_leaves_the_model_usable():
    model = _sequence_model()
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.array(5, np.int64), "zero"))
    compiled = ember.compile(bad, target="cpu")
    feeds = {"x": np.zeros((3, 2), np.float32), "y": np.ones((1, 2), np.float32)}
    with pytest.raises(InputError, match="out of range"):
        compiled(**feeds)
    ok = ember.compile(model, target="cpu")
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(ok(**feeds))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    for result in results:
        _compare(model, result, feeds)


def test_split_to_sequence_of_an_empty_axis_is_an_empty_sequence():
    nodes = [h.make_node("SplitToSequence", ["x"], ["rows"], axis=0, keepdims=0),
             h.make_node("SequenceLength", ["rows"], ["count"])]
    model = _model(nodes, [h.make_tensor_value_info("x", F, ["n", 3])],
                   [h.make_tensor_value_info("count", T.INT64, [])])
    feeds = {"x": np.zeros((0, 3), np.float32)}
    _compare(model, ember.compile(model, target="cpu")(**feeds), feeds)


def _host_value_case(case: str) -> tuple[onnx.ModelProto, dict]:
    """A model whose host node gets an input it cannot take, and the feeds that show it."""
    x = h.make_tensor_value_info("x", F, [3, 2])
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(3, 2)}
    split = h.make_node("SplitToSequence", ["x"], ["rows"], axis=0, keepdims=0)
    out = h.make_tensor_value_info("y", F, [None])
    if case == "tensor_as_sequence":  # a mutant's ConcatFromSequence reading SequenceLength
        nodes = [split, h.make_node("SequenceLength", ["rows"], ["count"]),
                 h.make_node("ConcatFromSequence", ["count"], ["y"], axis=0)]
        return _model(nodes, [x], [out]), feeds
    if case == "concat_axis":
        nodes = [split, h.make_node("ConcatFromSequence", ["rows"], ["y"], axis=1)]
        return _model(nodes, [x], [out]), feeds
    if case == "split_sizes":
        nodes = [h.make_node("SplitToSequence", ["x", "sizes"], ["parts"], axis=0),
                 h.make_node("ConcatFromSequence", ["parts"], ["y"], axis=0)]
        sizes = onnx.numpy_helper.from_array(np.array([4, -1], np.int64), "sizes")
        return _model(nodes, [x], [out], [sizes]), feeds
    # a Loop's scan output that changes shape between iterations
    body = h.make_graph(
        [h.make_node("Concat", ["v", "v"], ["v_out"], axis=0),
         h.make_node("Identity", ["cond"], ["cond_out"]),
         h.make_node("Identity", ["v_out"], ["each"])],
        "body", [h.make_tensor_value_info("i", T.INT64, []),
                 h.make_tensor_value_info("cond", T.BOOL, []),
                 h.make_tensor_value_info("v", F, [None])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []),
         h.make_tensor_value_info("v_out", F, [None]), h.make_tensor_value_info("each", F, [None])])
    model = _model([h.make_node("Loop", ["n", "", "v0"], ["v", "y"], body=body)],
                   [h.make_tensor_value_info("v0", F, [2]),
                    h.make_tensor_value_info("n", T.INT64, [])],
                   [h.make_tensor_value_info("v", F, [None]), out])
    return model, {"v0": np.ones(2, np.float32), "n": np.array(2, np.int64)}


@pytest.mark.parametrize("case, error, message", [
    ("tensor_as_sequence", InputError, "input 0 must be a sequence, got a tensor"),
    ("concat_axis", ShapeError, "axis 1 is out of range"),
    ("split_sizes", InputError, r"split \[4, -1\] must be non-negative"),
    ("growing_scan_output", ShapeError, "changes shape between iterations"),
])
def test_host_nodes_refuse_inputs_they_cannot_take(case, error, message):
    model, feeds = _host_value_case(case)
    with pytest.raises(error, match=message):
        ember.compile(model, target="cpu")(**feeds)
