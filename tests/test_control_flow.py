"""If, Loop and Scan folded at import: decided by compile-time values, they leave no host
node, and the compiled graph computes what onnxruntime computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import ember
from ember.errors import EmberError, UnsupportedOpError
from ember.frontends.onnx.control_flow import UNROLL_LIMIT, free_names
from ember.frontends.onnx.partial import import_segment
from ember.ir import DType, TensorType
from tests.harness import assert_close

F = T.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "cf", inputs, outputs, list(initializers))
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _reference(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def _check(model: onnx.ModelProto, feeds: dict, target: str) -> ember.CompiledModel:
    compiled = ember.compile(model, target=target)
    actual = compiled(**feeds)
    for info, expected in zip(model.graph.output, _reference(model, feeds)):
        assert_close(actual[info.name], expected, info.name)
    return compiled


def _if_on_shape() -> onnx.ModelProto:
    """y = x * 2 when x has 3 columns, else x + 1: the condition folds from the shape;
    both branches read the outer `x` and the outer initializer `two`."""
    then = h.make_graph([h.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                        [h.make_tensor_value_info("t", F, None)])
    other = h.make_graph([h.make_node("Add", ["x", "two"], ["e0"]),
                          h.make_node("Sub", ["e0", "one"], ["e"])], "else", [],
                         [h.make_tensor_value_info("e", F, None)])
    nodes = [h.make_node("Shape", ["x"], ["s"], start=1),
             h.make_node("ReduceSum", ["s"], ["cols"], keepdims=0),
             h.make_node("Equal", ["cols", "three"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    inits = [onnx.numpy_helper.from_array(np.array(2, np.float32), "two"),
             onnx.numpy_helper.from_array(np.array(1, np.float32), "one"),
             onnx.numpy_helper.from_array(np.array(3, np.int64), "three")]
    return _model(nodes, [h.make_tensor_value_info("x", F, ["n", "m"])],
                  [h.make_tensor_value_info("y", F, ["n", "m"])], inits)


@pytest.mark.parametrize("columns", [3, 4])
def test_if_on_a_shape_folds(any_target, columns):
    x = np.arange(2 * columns, dtype=np.float32).reshape(2, columns)
    compiled = _check(_if_on_shape(), {"x": x}, any_target)
    assert compiled.staged is None  # no host node: the branch was inlined


def _counting_loop(trips: int, scan: bool = True) -> onnx.ModelProto:
    """acc += x * i for i < trips; each iteration's acc is a scan output."""
    body = h.make_graph(
        [h.make_node("Cast", ["i"], ["fi"], to=F), h.make_node("Mul", ["x", "fi"], ["xi"]),
         h.make_node("Add", ["acc", "xi"], ["acc_out"]),
         h.make_node("Identity", ["cond"], ["cond_out"])]
        + ([h.make_node("Identity", ["acc_out"], ["each"])] if scan else []),
        "body", [h.make_tensor_value_info("i", T.INT64, []),
                 h.make_tensor_value_info("cond", T.BOOL, []),
                 h.make_tensor_value_info("acc", F, [3])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []),
         h.make_tensor_value_info("acc_out", F, [3])]
        + ([h.make_tensor_value_info("each", F, [3])] if scan else []))
    outputs = ["total"] + (["steps"] if scan else [])
    inits = [onnx.numpy_helper.from_array(np.array(trips, np.int64), "trips"),
             onnx.numpy_helper.from_array(np.zeros(3, np.float32), "zero")]
    return _model([h.make_node("Loop", ["trips", "", "zero"], outputs, body=body)],
                  [h.make_tensor_value_info("x", F, [3])],
                  [h.make_tensor_value_info("total", F, [3])]
                  + ([h.make_tensor_value_info("steps", F, [trips, 3])] if scan else []),
                  inits)


def test_loop_with_a_constant_trip_count_unrolls(any_target):
    compiled = _check(_counting_loop(5), {"x": np.array([1, 2, 3], np.float32)}, any_target)
    assert compiled.staged is None


def test_loop_past_the_unroll_limit_runs_on_the_host(any_target):
    model = _counting_loop(UNROLL_LIMIT + 1, scan=False)
    compiled = _check(model, {"x": np.array([1, -2, 0.5], np.float32)}, any_target)
    assert compiled.staged is not None
    assert compiled.staged.host_nodes() == ["Loop 'total'"]


def test_scan_unrolls(any_target):
    """A running sum over the rows of x, in reverse, its outputs stacked on axis 1."""
    body = h.make_graph([h.make_node("Add", ["s", "row"], ["s_out"]),
                         h.make_node("Mul", ["s_out", "row"], ["o"])], "body",
                        [h.make_tensor_value_info("s", F, [2]),
                         h.make_tensor_value_info("row", F, [2])],
                        [h.make_tensor_value_info("s_out", F, [2]),
                         h.make_tensor_value_info("o", F, [2])])
    model = _model([h.make_node("Scan", ["s0", "x"], ["final", "stacked"], body=body,
                                num_scan_inputs=1, scan_input_directions=[1],
                                scan_output_axes=[1])],
                   [h.make_tensor_value_info("s0", F, [2]),
                    h.make_tensor_value_info("x", F, [4, 2])],
                   [h.make_tensor_value_info("final", F, [2]),
                    h.make_tensor_value_info("stacked", F, [2, 4])])
    feeds = {"s0": np.array([0.5, -1], np.float32),
             "x": np.arange(8, dtype=np.float32).reshape(4, 2) / 4}
    assert _check(model, feeds, any_target).staged is None


def test_opset8_scan_keeps_its_batch_axis(any_target):
    """Opset 8's Scan: a batch axis first on states and scan inputs (scan axis 1), the
    second scan input read in reverse; each batch entry scans its own rows."""
    body = h.make_graph([h.make_node("Add", ["s", "row"], ["s_out"]),
                         h.make_node("Mul", ["s_out", "back"], ["o"])], "body",
                        [h.make_tensor_value_info("s", F, [2]),
                         h.make_tensor_value_info("row", F, [2]),
                         h.make_tensor_value_info("back", F, [2])],
                        [h.make_tensor_value_info("s_out", F, [2]),
                         h.make_tensor_value_info("o", F, [2])])
    model = _model([h.make_node("Scan", ["", "s0", "x", "x"], ["final", "stacked"],
                                body=body, num_scan_inputs=2, directions=[0, 1])],
                   [h.make_tensor_value_info("s0", F, [3, 2]),
                    h.make_tensor_value_info("x", F, [3, 4, 2])],
                   [h.make_tensor_value_info("final", F, [3, 2]),
                    h.make_tensor_value_info("stacked", F, [3, 4, 2])], opset=8)
    rng = np.random.default_rng(8)
    feeds = {"s0": rng.standard_normal((3, 2)).astype(np.float32),
             "x": rng.standard_normal((3, 4, 2)).astype(np.float32)}
    assert _check(model, feeds, any_target).staged is None


def test_a_loop_that_does_not_unroll_leaves_no_node_behind():
    """The body's condition depends on x: unrolling stops at the first iteration and the
    nodes it added are removed; the Loop is deferred, with the reason."""
    body = h.make_graph([h.make_node("ReduceSum", ["v"], ["total"], keepdims=0),
                         h.make_node("Less", ["total", "limit"], ["go"]),
                         h.make_node("Add", ["v", "v"], ["v_out"])], "body",
                        [h.make_tensor_value_info("i", T.INT64, []),
                         h.make_tensor_value_info("c", T.BOOL, []),
                         h.make_tensor_value_info("v", F, [2])],
                        [h.make_tensor_value_info("go", T.BOOL, []),
                         h.make_tensor_value_info("v_out", F, [2])])
    node = h.make_node("Loop", ["", "start", "x"], ["y"], body=body)
    segment = import_segment("m", [node], 17, {"x": TensorType((2,), DType.FLOAT32)},
                             {"start": np.array(True), "limit": np.array(100, np.float32)},
                             ["y"])
    assert [n.name or n.output[0] for n in segment.deferred] == ["y"]
    assert "computes the loop condition" in segment.reason
    assert sorted(segment.graph.op(n) for n in segment.graph.nodes()) == \
        ["Constant", "Constant", "Input"]
    assert segment.graph.outputs == []  # x is the caller's; the constants come back as arrays
    assert set(segment.constants) == {"start", "limit"}


def test_free_names_see_nested_subgraphs():
    inner = h.make_graph([h.make_node("Add", ["a", "outer"], ["b"])], "inner", [],
                         [h.make_tensor_value_info("b", F, None)])
    body = h.make_graph([h.make_node("Neg", ["p"], ["a"]),
                         h.make_node("If", ["flag"], ["r"], then_branch=inner,
                                     else_branch=inner)], "body",
                        [h.make_tensor_value_info("p", F, None)],
                        [h.make_tensor_value_info("r", F, None)])
    assert free_names(body) == ["flag", "outer"]


def test_an_unsupported_op_inside_a_branch_is_named_at_load():
    branch = h.make_graph([h.make_node("NoSuchOp", ["x"], ["t"])], "b", [],
                          [h.make_tensor_value_info("t", F, None)])
    model = h.make_model(h.make_graph(
        [h.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)], "m",
        [h.make_tensor_value_info("c", T.BOOL, []), h.make_tensor_value_info("x", F, [2])],
        [h.make_tensor_value_info("y", F, [2])]),
        opset_imports=[h.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match="NoSuchOp"):
        ember.compile(model, target="cpu")


def _running_sum_scan(scanned: int = 1, **attrs) -> onnx.ModelProto:
    body = h.make_graph([h.make_node("Add", ["s", "row"], ["s_out"])], "body",
                        [h.make_tensor_value_info("s", F, [2]),
                         h.make_tensor_value_info("row", F, [2])],
                        [h.make_tensor_value_info("s_out", F, [2])])
    node = h.make_node("Scan", ["s0", "x"], ["final"], body=body, num_scan_inputs=scanned,
                       **attrs)
    graph = h.make_graph([node], "cf", [h.make_tensor_value_info("s0", F, [2]),
                                        h.make_tensor_value_info("x", F, [4, 2])],
                         [h.make_tensor_value_info("final", F, [2])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def _loop_over(trips: np.ndarray, body_inputs: int = 3) -> onnx.ModelProto:
    formal = [h.make_tensor_value_info("i", T.INT64, []),
              h.make_tensor_value_info("cond", T.BOOL, []),
              h.make_tensor_value_info("v", F, [2])][:body_inputs]
    body = h.make_graph([h.make_node("Identity", ["cond"], ["cond_out"]),
                         h.make_node("Identity", ["x"], ["v_out"])], "body", formal,
                        [h.make_tensor_value_info("cond_out", T.BOOL, []),
                         h.make_tensor_value_info("v_out", F, [2])])
    graph = h.make_graph([h.make_node("Loop", ["n", "", "x"], ["y"], body=body)], "cf",
                         [h.make_tensor_value_info("x", F, [2])],
                         [h.make_tensor_value_info("y", F, [2])],
                         [onnx.numpy_helper.from_array(trips, "n")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def _without_state(model: onnx.ModelProto) -> onnx.ModelProto:
    model.graph.node[0].input[0] = ""  # a mutant's: the state left out
    return model


@pytest.mark.parametrize("model, message", [
    (_without_state(_running_sum_scan()), "input 0 is required"),
    (_running_sum_scan(3), "num_scan_inputs 3 must be between 1 and"),
    (_running_sum_scan(scan_input_axes=[0, 1]), "scan_input_axes/directions need 1"),
    (_loop_over(np.array([2, 3], np.int64)), "the trip count must hold one value"),
    (_loop_over(np.array(2.5, np.float32)), "the trip count must be an integer"),
    (_loop_over(np.array(2, np.int64), body_inputs=2), "its body takes 2 input"),
], ids=["scan_state_left_out", "scan_count", "scan_axes", "loop_trips_shape",
        "loop_trips_dtype", "loop_body_inputs"])
def test_malformed_loops_and_scans_are_refused_by_name(model, message):
    feeds = {"s0": np.zeros(2, np.float32), "x": np.ones((4, 2), np.float32)}
    if len(model.graph.input) == 1:
        feeds = {"x": np.ones(2, np.float32)}
    with pytest.raises(EmberError, match=message):
        ember.compile(model, target="cpu")(**feeds)
