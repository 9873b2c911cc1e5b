"""The public API: compile/call/summary/stats/profile, target selection, dynamic shapes, and
bad input that must give one clear error and leave the model usable (onnxruntime's habits:
tests/test_api_habits.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ember
from ember.errors import (
    CompileError,
    DTypeError,
    InputError,
    ModelLoadError,
    ShapeError,
    UnsupportedOpError,
)


def tiny_model(batch: str | int = "batch", op: str = "Relu", opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])
    nodes = [helper.make_node("Add", ["x", "b"], ["s"], name="add"),
             helper.make_node(op, ["s"], ["y"], name="act")]
    graph = helper.make_graph(nodes, "tiny", [x, b], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feeds(batch: int = 2):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((batch, 4)).astype(np.float32),
            "b": rng.standard_normal(4).astype(np.float32)}


def expected(f):
    return np.maximum(f["x"] + f["b"], 0)


def test_compile_and_call_by_name_and_position(any_target):
    model = ember.compile(tiny_model(), target=any_target)
    f = feeds()
    np.testing.assert_allclose(model(**f)["y"], expected(f), rtol=1e-6)
    np.testing.assert_allclose(model(f["x"], f["b"])["y"], expected(f), rtol=1e-6)
    assert model.input_names == ["x", "b"] and model.output_names == ["y"]


def test_new_batch_size_specializes_again(any_target):
    model = ember.compile(tiny_model(), target=any_target, input_shapes={"x": (2, 4)})
    for batch in (2, 5, 1, 5):
        f = feeds(batch)
        np.testing.assert_allclose(model(**f)["y"], expected(f), rtol=1e-6)
    assert len(model._specializations) == 3


def test_bad_inputs_give_clear_errors_and_model_stays_usable(any_target):
    model = ember.compile(tiny_model(batch=2), target=any_target)
    f = feeds()
    with pytest.raises(InputError, match=r"unknown input 'z'.*\['x', 'b'\]"):
        model(**f, z=f["x"])
    with pytest.raises(InputError, match=r"missing input\(s\) \['b'\]"):
        model(x=f["x"])
    with pytest.raises(ShapeError, match=r"input 'x' expects shape \(2, 4\), got \(2, 5\)"):
        model(x=np.zeros((2, 5), np.float32), b=f["b"])
    with pytest.raises(ShapeError, match="expects rank 1"):
        model(x=f["x"], b=np.zeros((1, 4), np.float32))
    with pytest.raises(DTypeError, match="input 'x' expects dtype float32, got float64"):
        model(x=f["x"].astype(np.float64), b=f["b"])
    with pytest.raises(InputError, match="positional"):
        model(f["x"], f["b"], f["b"])
    np.testing.assert_allclose(model(**f)["y"], expected(f), rtol=1e-6)


def test_fixed_dim_mismatch_in_input_shapes():
    with pytest.raises(ShapeError, match="dim 1 is fixed at 4"):
        ember.compile(tiny_model(), target="cpu", input_shapes={"x": (2, 5)})


def test_malformed_and_truncated_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff\x12")
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        ember.compile(bad, target="cpu")
    good = tiny_model().SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError, match="truncated.onnx"):
        ember.compile(truncated, target="cpu")
    with pytest.raises(ModelLoadError, match="no ONNX model at"):
        ember.compile(tmp_path / "missing.onnx", target="cpu")
    ok = tmp_path / "ok.onnx"
    ok.write_bytes(good)
    f = feeds()
    np.testing.assert_allclose(ember.compile(ok, target="cpu")(**f)["y"], expected(f), rtol=1e-6)


def test_unsupported_ops_are_all_named():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("Bernoulli", ["a"], ["b"], name="first_bad"),
             helper.make_node("RandomUniformLike", ["b"], ["y"], name="second_bad")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError) as info:
        ember.compile(model, target="cpu")
    text = str(info.value)
    assert "Bernoulli" in text and "first_bad" in text and "opset 17" in text
    assert "RandomUniformLike" in text and "second_bad" in text


def test_build_failure_carries_log_and_source(opencl_target):
    from ember.runtime.device import resolve_target
    from ember.runtime.opencl import build_program

    device = resolve_target(opencl_target)
    with pytest.raises(CompileError) as info:
        build_program(device, "__kernel void broken(__global float* x) { x[0] = undefined_name; }")
    assert "undefined_name" in info.value.build_log
    assert info.value.source_path and open(info.value.source_path).read().startswith("__kernel")
    model = ember.compile(tiny_model(), target=opencl_target)
    f = feeds()
    np.testing.assert_allclose(model(**f)["y"], expected(f), rtol=1e-6)


def test_strict_refuses_host_fallback(opencl_target):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [3])
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16, name="to_bf16")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    relaxed = ember.compile(model, target=opencl_target)
    assert relaxed.stats.host_steps == 1 and "host fallback" in relaxed.summary()
    out = relaxed(x=np.array([1.0, 2.5, -3.0], np.float32))["y"]
    assert out.dtype.name == "bfloat16" and out.astype(np.float32).tolist() == [1.0, 2.5, -3.0]
    with pytest.raises(UnsupportedOpError, match="strict=True.*Cast 'to_bf16'"):
        ember.compile(model, target=opencl_target, strict=True)


def test_summary_stats_and_profile(any_target):
    model = ember.compile(tiny_model(batch=2), target=any_target, opt_level=0)
    text = model.summary()
    assert "Add" in text and "Relu" in text and "opt_level 0" in text
    stats = model.stats
    assert stats.steps == 2
    if any_target != "cpu":
        assert stats.kernel_launches == 2 and stats.device_steps == 2
    profile = model.profile(**feeds(), runs=2, warmup=0)
    assert sorted(r.op for r in profile.rows) == ["Add", "Relu"]
    assert all(r.median_ms >= 0 for r in profile.rows) and profile.runs == 2
    rows = profile.to_dicts()
    assert [r["op"] for r in rows] == ["Add", "Relu"] and all(r["seconds"] >= 0 for r in rows)


def test_devices_and_targets():
    found = ember.devices()
    for info in found:
        assert info.family.name and info.target.startswith("opencl:")
    with pytest.raises(ember.DeviceError, match="unknown target"):
        ember.compile(tiny_model(), target="tpu")
    with pytest.raises(ember.DeviceError, match="no OpenCL device 9:9"):
        ember.compile(tiny_model(), target="opencl:9:9")


def test_numpy_scalars_are_zero_d_tensors(any_target):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    node = helper.make_node("Exp", ["x"], ["y"])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    out = ember.compile(model, target=any_target)(x=np.float32(1.0))["y"]
    assert out.shape == () and abs(float(out) - np.e) < 1e-6
