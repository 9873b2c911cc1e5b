"""The Python API in onnxruntime's habits: a feed dict, `run(output_names, feeds)`, readable
reprs, `profile()` as a table, `summary(shapes=)`, the `numpy` target name, and the ONNX
backend's devices and `run_node`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ember
from ember import onnx_backend
from ember.cli import main
from ember.errors import DeviceError, InputError
from tests.harness import assert_close, real_devices


def two_output_model(batch: str | int = "batch") -> onnx.ModelProto:
    """x [batch, 4], b [4] -> pos = Relu(x + b), neg = Relu(-(x + b)), total = Sum over
    axis 1 of x * b: three outputs whose order differs from nothing else in the model."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])
    outputs = [helper.make_tensor_value_info("pos", TensorProto.FLOAT, [batch, 4]),
               helper.make_tensor_value_info("neg", TensorProto.FLOAT, [batch, 4]),
               helper.make_tensor_value_info("total", TensorProto.FLOAT, [batch])]
    nodes = [helper.make_node("Add", ["x", "b"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["pos"], name="relu_pos"),
             helper.make_node("Neg", ["s"], ["n"], name="negate"),
             helper.make_node("Relu", ["n"], ["neg"], name="relu_neg"),
             helper.make_node("Mul", ["x", "b"], ["p"], name="mul"),
             helper.make_node("ReduceSum", ["p", "axes"], ["total"], keepdims=0, name="sum")]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(nodes, "habits", [x, b], outputs, initializer=[axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feeds(batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, 4)).astype(np.float32),
            "b": rng.standard_normal(4).astype(np.float32)}


def expected(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    s = f["x"] + f["b"]
    return {"pos": np.maximum(s, 0), "neg": np.maximum(-s, 0),
            "total": (f["x"] * f["b"]).sum(axis=1)}


# -- 1. a feed dict as the one positional argument -----------------------------------------
def test_a_feed_dict_is_the_inputs(any_target):
    model = ember.compile(two_output_model(), target=any_target)
    f = feeds()
    by_dict = model(f)
    for name, want in expected(f).items():
        assert_close(by_dict[name], want, name)
        assert_close(by_dict[name], model(**f)[name], name)
    with pytest.raises(InputError, match="one dict or by name, not both"):
        model({"x": f["x"]}, b=f["b"])
    with pytest.raises(InputError, match=r"missing input\(s\) \['b'\]"):
        model({"x": f["x"]})
    with pytest.raises(InputError, match=r"unknown input 'z'; the model's inputs are \['x', 'b'\]"):
        model({**f, "z": f["x"]})
    with pytest.raises(InputError, match="feed dict keys are input names"):
        model({0: f["x"], 1: f["b"]})


# -- 2. run(output_names, feeds) -------------------------------------------------------------
def test_run_returns_the_named_outputs_in_their_order(any_target):
    model = ember.compile(two_output_model(), target=any_target)
    f = feeds(3)
    want = expected(f)
    everything = model.run(None, f)
    assert isinstance(everything, list) and len(everything) == 3
    for got, name in zip(everything, ["pos", "neg", "total"]):
        assert_close(got, want[name], name)
    total, pos = model.run(["total", "pos"], f)
    assert_close(total, want["total"], "total")
    assert_close(pos, want["pos"], "pos")
    assert model.run([], f) == []
    with pytest.raises(InputError, match=r"unknown output\(s\) \['logits'\]; the model's "
                                         r"outputs are \['pos', 'neg', 'total'\]"):
        model.run(["pos", "logits"], f)
    with pytest.raises(InputError, match="list of output names"):
        model.run("pos", f)
    with pytest.raises(InputError, match="feeds is a dict"):
        model.run(None, [f["x"], f["b"]])


# -- 3. readable reprs -----------------------------------------------------------------------
def test_compiled_model_repr_says_what_it_is_without_compiling():
    model = ember.compile(two_output_model(), target="numpy", opt_level=1)
    text = repr(model)
    assert text == ("<ember.CompiledModel 'habits' on numpy, opt_level 1, inputs x[batch, 4] "
                    "float32, b[4] float32; outputs pos[batch, 4] float32, neg[batch, 4] "
                    "float32, total[batch] float32; 0 shapes compiled>")
    assert not model._specializations  # repr compiled nothing
    model(**feeds(2))
    assert repr(model).endswith("; 1 shape compiled>")
    model(**feeds(5))
    assert repr(model).endswith("; 2 shapes compiled>")


def test_compiled_model_repr_names_the_device(opencl_target):
    model = ember.compile(two_output_model(batch=2), target=opencl_target)
    info = next(d for d in ember.devices() if d.target == opencl_target)
    assert repr(model).startswith(f"<ember.CompiledModel 'habits' on {opencl_target} "
                                  f"{info.traits.name}, opt_level 2, inputs x[2, 4] float32")
    assert repr(model).endswith("; 1 shape compiled>")


def test_device_reprs_are_one_line_each():
    found = ember.devices()
    for info in found:
        text = repr(info)
        t = info.traits
        assert "\n" not in text and text.startswith(f"<DeviceInfo {info.target} {t.name!r} ")
        assert f"{t.device_type}, family {info.family.name}, {t.compute_units} compute unit" \
            in text
        assert text.endswith(", simulator>") == t.simulator
    lines = repr(found).splitlines()
    assert len(lines) == max(len(found), 1)
    for line, info in zip(lines, found):
        assert repr(info) in line
    assert found == list(found)  # still a list


# -- 4. profile() as a table -----------------------------------------------------------------
def test_profile_is_a_table_of_steps_sorted_by_time(any_target):
    model = ember.compile(two_output_model(batch=2), target=any_target, opt_level=0)
    profile = model.profile(feeds(), runs=3, warmup=1)
    assert isinstance(profile, ember.Profile) and profile.runs == 3 and profile.warmup == 1
    ops = sorted(r.op for r in profile.rows)
    assert ops == ["Add", "Mul", "Neg", "ReduceSum", "Relu", "Relu"]
    placements = {r.placement for r in profile.rows}
    assert placements == ({"host"} if any_target == "cpu" else {"device"})
    medians = [r.median_ms for r in profile.rows]
    assert medians == sorted(medians, reverse=True) and min(medians) >= 0
    assert all(r.mean_ms >= 0 for r in profile.rows)
    assert profile.total_ms == pytest.approx(sum(medians))
    if profile.total_ms > 0:
        assert sum(r.share for r in profile.rows) == pytest.approx(1.0)
    relu = next(t for t in profile.by_op() if t.op == "Relu")
    relu_rows = [r for r in profile.rows if r.op == "Relu"]
    assert relu.steps == 2 and relu.median_ms == pytest.approx(sum(r.median_ms for r in relu_rows))
    assert [t.median_ms for t in profile.by_op()] == sorted(
        (t.median_ms for t in profile.by_op()), reverse=True)
    text = str(profile)
    lines = text.splitlines()
    assert "profile of 'habits'" in lines[0] and "x[2, 4], b[4]" in lines[0]
    assert len(lines) == 2 + len(profile.rows) + 1  # title, header, one per step, total
    assert "total of the medians over 6 steps" in lines[-1]
    assert "3 run(s) after 1 warmup" in lines[-1]
    assert "Relu" in profile.format(by_op=True)
    assert "... 4 more steps" in profile.format(max_rows=2)
    dicts = profile.to_dicts()  # the rows in execution order, as profile() returned before
    assert [d["op"] for d in dicts] == ["Add", "Relu", "Neg", "Relu", "Mul", "ReduceSum"]
    assert all(d["seconds"] == pytest.approx(d["median_ms"] / 1e3) for d in dicts)
    with pytest.raises(InputError, match="runs >= 1"):
        model.profile(feeds(), runs=0)


# -- 5. summary(shapes=) ---------------------------------------------------------------------
def test_summary_for_given_shapes_and_for_the_last_run():
    model = ember.compile(two_output_model(), target="numpy")
    model(**feeds(2))
    other = model.summary(shapes={"x": (5, 4)})
    assert "input shapes x[5, 4], b[4]" in other.splitlines()[0]
    assert "pos float32[5,4]" in other and "total float32[5]" in other
    last = model.summary()
    assert "input shapes x[2, 4], b[4]" in last.splitlines()[0]
    assert "pos float32[2,4]" in last
    assert len(model._specializations) == 2
    assert model.summary(shapes={"x": (5, 4)}) == other  # compiled once, kept
    assert len(model._specializations) == 2
    with pytest.raises(InputError, match="batch"):
        model.summary(shapes={"b": (4,)})


# -- 6. target names -------------------------------------------------------------------------
def test_numpy_is_the_target_name_and_cpu_its_alias(capsys):
    f = feeds()
    by_name = ember.compile(two_output_model(), target="numpy")
    by_alias = ember.compile(two_output_model(), target="cpu")
    assert by_name.target == by_alias.target == "numpy" and by_name.device is None
    assert_close(by_alias(**f)["pos"], by_name(**f)["pos"], "pos")
    assert "on numpy (the numpy executor)" in by_name.summary().splitlines()[0]
    with pytest.raises(DeviceError, match=r"use None, 'numpy' \(alias 'cpu'\), 'opencl'"):
        ember.compile(two_output_model(), target="numpy2")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy: the numpy executor (alias: cpu)" in out
    if any(d.traits.device_type == "CPU" for d in ember.devices()):
        assert "(alias: cpu), not the OpenCL CPU device above" in out


# -- 7. the ONNX backend ---------------------------------------------------------------------
@pytest.mark.parametrize("device", ["CPU", "GPU", "GPU:7", "OPENCL", "OPENCL:9:9", "NUMPY",
                                    "numpy", "CUDA", "CPU:1", "TPU", "", "opencl:x"])
def test_supports_device_agrees_with_prepare(device):
    model = two_output_model(batch=2)
    try:
        rep = onnx_backend.prepare(model, device=device)
    except DeviceError:
        assert not onnx_backend.supports_device(device)
    else:
        assert onnx_backend.supports_device(device)
        f = feeds()
        outputs = rep.run(f)
        assert_close(outputs.total, expected(f)["total"], "total")


def test_backend_devices_on_this_machine():
    has_gpu = any(d.traits.device_type == "GPU" for d in real_devices())
    assert onnx_backend.supports_device("CPU") and onnx_backend.supports_device("NUMPY")
    assert onnx_backend.supports_device("OPENCL") == bool(real_devices())
    assert onnx_backend.supports_device("GPU") == has_gpu
    assert not onnx_backend.supports_device("garbage")
    assert onnx_backend.prepare(two_output_model(), device="NUMPY").target == "numpy"
    with pytest.raises(DeviceError, match="use 'CPU'"):
        onnx_backend.prepare(two_output_model(), device="garbage")


def test_run_node_wraps_one_node():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    add = helper.make_node("Add", ["a", "b"], ["c"])
    (c,) = onnx_backend.run_node(add, [a, b], device="NUMPY")
    assert_close(c, a + b, "Add")
    (c,) = onnx_backend.run_node(add, {"b": b, "a": a}, outputs_info=[(np.float32, (2, 3))])
    assert_close(c, a + b, "Add with outputs_info")
    (square,) = onnx_backend.run_node(helper.make_node("Mul", ["a", "a"], ["s"]), [a, a])
    assert_close(square, a * a, "Mul of one input twice")
    # a value ember needs at compile time (Reshape's shape) given as an input
    (y,) = onnx_backend.run_node(helper.make_node("Reshape", ["x", "shape"], ["y"]),
                                 [np.arange(6, dtype=np.int32), np.array([3, 2], np.int64)])
    assert_close(y, np.arange(6, dtype=np.int32).reshape(3, 2), "Reshape")
    values, indices = onnx_backend.run_node(
        helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=-1),
        [np.array([[3, 1, 2, 5]], np.float32), np.array([2], np.int64)])
    assert_close(values, np.array([[5, 3]], np.float32), "TopK values")
    assert_close(indices, np.array([[3, 0]], np.int64), "TopK indices")
    (clipped,) = onnx_backend.run_node(  # an omitted optional input ("") is no graph input
        helper.make_node("Clip", ["x", "", "hi"], ["y"]),
        [np.array([-1.0, 0.5, 2.0], np.float32), np.array(1.0, np.float32)])
    assert_close(clipped, np.array([-1.0, 0.5, 1.0], np.float32), "Clip")
    with pytest.raises(InputError, match=r"has 2 named input\(s\)"):
        onnx_backend.run_node(add, [a])
    with pytest.raises(InputError, match="outputs_info has 2 entries"):
        onnx_backend.run_node(add, [a, b], outputs_info=[(np.float32, (2, 3))] * 2)
