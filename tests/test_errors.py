"""Bad models and impossible sizes: one EmberError that names the culprit, raised before
anything is allocated, and ember (the model, or a fresh compile) works afterwards."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ember
from ember.errors import (
    DeviceError,
    ModelLoadError,
    ResourceError,
    UnsupportedOpError,
)
from ember.frontends.onnx.checks import MAX_OPSET
from ember.runtime.device import resolve_target
from ember.runtime.resources import check_buffers, driver_failures, host_available_bytes


def _vi(name: str, dims, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, dims)


def _model(nodes, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _relu(opset: int = 17) -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                  [_vi("x", [3])], [_vi("y", [3])], opset)


def _works(target: str = "cpu") -> None:
    """A fresh compile and call after an error."""
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    np.testing.assert_array_equal(ember.compile(_relu(), target=target)(x=x)["y"],
                                  np.maximum(x, 0))


# -- ember's own checks come before onnx's checker -------------------------------------------
def test_unsupported_ops_are_named_before_onnx_checker() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="fine"),
             helper.make_node("FancyOp", ["a"], ["b"], name="fancy_1"),
             helper.make_node("FancyOp", ["b"], ["c"], name="fancy_2"),
             helper.make_node("Inverse", ["c"], ["d"], name="inv", domain="com.example")]
    nodes.append(helper.make_node("Relu", ["d"], ["y"], name="last"))
    model = _model(nodes, [_vi("x", [2, 2])], [_vi("y", [2, 2])])
    model.opset_import.append(helper.make_opsetid("com.example", 3))
    with pytest.raises(onnx.checker.ValidationError):  # onnx alone would stop at its checker
        onnx.checker.check_model(model)
    with pytest.raises(UnsupportedOpError) as info:
        ember.compile(model, target="cpu")
    text = str(info.value)
    for part in ("ONNX op FancyOp", "node 'fancy_1'", "opset 17", "2 nodes", "Inverse",
                 "domain 'com.example'", "node 'inv'", "opset 3"):
        assert part in text, (part, text)
    _works()


def test_a_cycle_names_its_nodes() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="entry"),
             helper.make_node("Add", ["a", "c"], ["b"], name="add_back"),
             helper.make_node("Neg", ["b"], ["c"], name="negate"),
             helper.make_node("Relu", ["b"], ["y"], name="exit")]
    model = _model(nodes, [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(ModelLoadError,
                       match=r"cycle through nodes Add 'add_back' -> Neg 'negate' -> "
                             r"Add 'add_back'"):
        ember.compile(model, target="cpu")
    _works()


def test_an_opset_newer_than_ember_names_both() -> None:
    with pytest.raises(UnsupportedOpError,
                       match=rf"opset {MAX_OPSET + 1}; ember supports ONNX opsets up to "
                             rf"{MAX_OPSET}"):
        ember.compile(_relu(MAX_OPSET + 1), target="cpu")
    with pytest.raises(UnsupportedOpError, match="opset 99"):
        ember.compile(_relu(99).SerializeToString(), target="cpu")
    x = np.array([-1.0, 3.0, 0.0], np.float32)
    np.testing.assert_array_equal(ember.compile(_relu(MAX_OPSET), target="cpu")(x=x)["y"],
                                  np.maximum(x, 0))


def test_text_that_is_not_utf8_is_a_load_error() -> None:
    blob = _relu().SerializeToString()
    corrupted = blob.replace(b"relu", b"r\xffl\xfe")  # the node's name, now invalid UTF-8
    assert corrupted != blob
    with pytest.raises(ModelLoadError, match=r"model\.graph\.node\[0\]\.name is not valid UTF-8"):
        ember.compile(corrupted, target="cpu")
    _works()


def test_a_flag_attribute_outside_0_1_is_refused_by_name() -> None:
    node = helper.make_node("ReduceSum", ["x"], ["y"], keepdims=2, name="sum_rows")
    model = _model([node], [_vi("x", [2, 3])], [_vi("y", [2, 1])], opset=11)
    with pytest.raises(UnsupportedOpError, match=r"ReduceSum 'sum_rows': attribute keepdims=2"):
        ember.compile(model, target="cpu")
    _works()


# -- sizes, before allocation -----------------------------------------------------------------
def _traits(target: str):
    return resolve_target(target).info.traits


def test_an_input_over_the_largest_allocation(opencl_target) -> None:
    limit = _traits(opencl_target).max_alloc_bytes
    assert limit > 0
    n = limit // 4 + 1
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [n])], [_vi("y", [n])])
    with pytest.raises(ResourceError) as info:
        ember.compile(model, target=opencl_target)
    text = str(info.value)
    assert "tensor 'x'" in text and f"({4 * n} bytes)" in text and f"({limit} bytes)" in text
    assert "CL_DEVICE_MAX_MEM_ALLOC_SIZE" in text
    _works(opencl_target)


def test_buffers_over_global_memory(opencl_target) -> None:
    """Tensors that each fit one allocation but not, all together, the device's memory."""
    traits = _traits(opencl_target)
    per_tensor = min(traits.max_alloc_bytes, traits.global_mem_bytes) // 4  # floats
    count = traits.global_mem_bytes // (4 * per_tensor) + 2  # tensors, x included
    nodes = [helper.make_node("Neg", [f"t{i}"], [f"t{i + 1}"], name=f"neg{i}")
             for i in range(count - 1)]
    model = _model(nodes, [_vi("t0", [per_tensor])], [_vi(f"t{count - 1}", [per_tensor])])
    with pytest.raises(ResourceError) as info:  # O0 and no sharing: one buffer per tensor
        ember.compile(model, target=opencl_target, opt_level=0, plan_memory=False)
    text = str(info.value)
    assert f"({traits.global_mem_bytes} bytes)" in text and "CL_DEVICE_GLOBAL_MEM_SIZE" in text
    assert f"({count * 4 * per_tensor} bytes) in all" in text and "tensor 't" in text
    _works(opencl_target)


def test_the_global_memory_check_reads_the_traits(opencl_target) -> None:
    """The same plan against a device with less global memory than the plan needs."""
    model = ember.compile(_relu(), target=opencl_target, opt_level=0)
    plan = model.plan
    total = sum(plan.memory.buffers)
    small = dataclasses.replace(_traits(opencl_target), global_mem_bytes=total - 1)
    with pytest.raises(ResourceError,
                       match=rf"\b{total} bytes\)? in all.*GLOBAL_MEM_SIZE\): {total - 1} bytes"):
        check_buffers(plan, plan.memory, small)
    check_buffers(plan, plan.memory, dataclasses.replace(small, global_mem_bytes=total))


def test_a_result_too_large_fails_the_call_and_the_next_call_works(any_target) -> None:
    """x [n, 1] @ y [1, n] is n * n floats: refused before anything is allocated (inputs of
    a few hundred KiB, a result larger than the device's largest allocation, or on numpy
    than the host memory available), then a small call runs."""
    model_proto = _model([helper.make_node("MatMul", ["x", "y"], ["z"], name="outer")],
                         [_vi("x", ["n", 1]), _vi("y", [1, "n"])], [_vi("z", ["n", "n"])])
    model = ember.compile(model_proto, target=any_target)
    if any_target == "cpu":
        limit = host_available_bytes()
        if limit is None:
            pytest.skip("this system does not report its available memory")
        limit *= 4  # well past what is available now, whatever runs beside the test
    else:
        limit = _traits(any_target).max_alloc_bytes
    n = math.isqrt(limit // 4) + 1
    with pytest.raises(ResourceError) as info:
        model(x=np.ones((n, 1), np.float32), y=np.ones((1, n), np.float32))
    assert "tensor 'outer'" in str(info.value) and f"({4 * n * n} bytes)" in str(info.value)
    x = np.arange(3, dtype=np.float32).reshape(3, 1)
    y = np.arange(3, dtype=np.float32).reshape(1, 3)
    np.testing.assert_array_equal(model(x=x, y=y)["z"], x @ y)


def test_driver_errors_become_device_errors(opencl_target) -> None:
    import pyopencl as cl

    device = resolve_target(opencl_target)
    with pytest.raises(DeviceError, match="allocating an empty buffer failed") as info:
        with driver_failures("allocating an empty buffer"):
            cl.Buffer(device.context, cl.mem_flags.READ_WRITE, 0)  # INVALID_BUFFER_SIZE
    assert isinstance(info.value.__cause__, cl.Error)


def test_memory_errors_become_resource_errors() -> None:
    with pytest.raises(ResourceError, match="making 4 EiB failed: .*MemoryError") as info:
        with driver_failures("making 4 EiB"):
            np.empty(1 << 62, np.uint8)
    assert isinstance(info.value.__cause__, MemoryError)
