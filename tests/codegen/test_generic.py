"""Generic kernels (codegen/generic.py, runtime/generic_plans.py): a kernel's varying literals
become arguments only where C allows a run-time value, a generic kernel answers exactly the
kernels it stands for, and a model with a free dim runs every new size from the program it
built once, with results equal to the numpy reference."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import ember
from ember.codegen.generic import GenericKernels, generalize, kernel_form
from ember.codegen.types import Kernel
from ember.runtime import opencl
from tests.harness import assert_close


def kernel(name: str, body: str, before: str = "", size: int = 16) -> Kernel:
    source = before.replace("@N", str(size)) + (
        f"__kernel void {name}(__global float* out)\n{{\n"
        + body.replace("@N", str(size)) + "\n}\n")
    return Kernel(name, source)


def test_a_literal_in_the_body_becomes_an_argument_and_matches_later_sizes():
    body = "    const int i = get_global_id(0);\n    if (i >= @N) return;\n    out[i] = i % 7;"
    generic = generalize([kernel("ew_aaaaaaaaaaaa", body, size=16),
                          kernel("ew_bbbbbbbbbbbb", body, size=23)])
    assert generic is not None
    assert generic.kernel.scalar_types[0] == "int"
    assert "(ember_n0)" in generic.kernel.source and ">= 16" not in generic.kernel.source
    assert "% 7" in generic.kernel.source  # a literal that did not vary stays a literal
    registry = GenericKernels()
    registry.add(generic)
    found = registry.answer(kernel("ew_cccccccccccc", body, size=101))
    assert found is not None and found[1] == (101,)
    other = kernel("ew_dddddddddddd", body.replace("% 7", "% 5"), size=101)
    assert registry.answer(other) is None  # a constant that differs: not this kernel


@pytest.mark.parametrize("body, before", [
    ("    float acc[@N];\n    acc[0] = 1;\n    out[0] = acc[0];", ""),  # array bound
    ("    switch (get_global_id(0)) { case @N: out[0] = 1; }", ""),  # case label
    ("#if SIZE > 4\n    out[0] = 1;\n#endif", "#define SIZE @N\n"),  # preprocessor condition
    ("    out[0] = helper();", "#define SIZE @N\nint helper(void) { return SIZE; }\n"),
    ("    out[0] = helper();", "int helper(void) { return @N; }\n"),  # in a helper function
    ("    __local float tile[SIZE];\n    tile[0] = 1;\n    out[0] = tile[0];",
     "#define SIZE @N\n"),  # a macro that bounds an array
])
def test_a_literal_where_c_wants_a_constant_is_not_generalized(body, before):
    samples = [kernel(f"k_{n:012x}", body, before, size=n) for n in (16, 23)]
    assert generalize(samples) is None


def test_a_macro_used_only_in_the_body_becomes_an_argument():
    before = "#define SIZE @N\n#define HALF (SIZE / 2)\n"
    body = "    const int i = get_global_id(0);\n    if (i >= HALF) return;\n    out[i] = SIZE;"
    generic = generalize([kernel(f"k_{n:012x}", body, before, size=n) for n in (16, 40)])
    assert generic is not None and "#define SIZE (ember_n0)" in generic.kernel.source


def test_skeleton_ignores_comments_and_the_kernel_name():
    a = kernel("ew_aaaaaaaaaaaa", "    /* 16 of them */ out[0] = @N;", size=16)
    b = kernel("ew_bbbbbbbbbbbb", "    /* 23 of them */ out[0] = @N;", size=23)
    assert kernel_form(a).skeleton == kernel_form(b).skeleton
    assert kernel_form(a).literals != kernel_form(b).literals


# -- a model with a free dim, end to end ------------------------------------------------------
def dynamic_model() -> onnx.ModelProto:
    """x[n, 24] -> LayerNorm -> MatMul 24x40 -> Softmax -> + Gather(table, ids[n]): every
    kernel's sizes follow n."""
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((24, 40)).astype(np.float32)
    table = rng.standard_normal((50, 40)).astype(np.float32)
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["norm"], axis=-1),
        helper.make_node("MatMul", ["norm", "w"], ["proj"]),
        helper.make_node("Softmax", ["proj"], ["probs"], axis=-1),
        helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
        helper.make_node("Add", ["probs", "rows"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "dynamic_rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 24]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 40])],
        [onnx.numpy_helper.from_array(weights, "w"),
         onnx.numpy_helper.from_array(table, "table"),
         onnx.numpy_helper.from_array(np.linspace(0.5, 1.5, 24, dtype=np.float32), "gamma"),
         onnx.numpy_helper.from_array(np.zeros(24, np.float32), "beta")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feeds(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {"x": rng.standard_normal((n, 24)).astype(np.float32),
            "ids": rng.integers(0, 50, n).astype(np.int64)}


@pytest.fixture(scope="module")
def dynamic_models():
    model = dynamic_model()
    reference = ember.compile(model, target="cpu")
    return model, reference


def test_new_sizes_reuse_the_program_built_once(opencl_target, dynamic_models, caplog):
    model, reference = dynamic_models
    compiled = ember.compile(model, target=opencl_target)
    compiled(**feeds(9))
    programs = len(opencl._PROGRAMS)
    with caplog.at_level(logging.INFO, logger="ember.compiler"):
        for n in (10, 1, 77, 33):
            out = compiled(**feeds(n))["y"]
            assert_close(out, reference(**feeds(n))["y"], f"y at n={n}")
    specialized = [r.getMessage() for r in caplog.records
                   if f"on {opencl_target} for" in r.getMessage()]
    assert len(specialized) == 4 and all(" ms" in m for m in specialized)
    plan = compiled.plan
    generic = [launch for step in plan.steps if step.lowered is not None
               for launch in step.lowered.launches if launch.kernel.scalar_types]
    assert generic, "no launch runs a generic kernel"
    # the sizes that followed n came from one shared program: at most the new forms that
    # small sizes take (n = 1) were built since
    assert len(opencl._PROGRAMS) - programs <= 2


def test_a_mean_over_a_free_dim_runs_on_generic_kernels(opencl_target, caplog):
    """ReduceMean divides by the reduced count: that count is a kernel argument too, so a
    new length runs every launch on the generic kernels and builds nothing."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),
         helper.make_node("Sub", ["x", "m"], ["y"])], "centered",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = ember.compile(model, target=opencl_target)
    for n in (40, 77):  # the first lengths teach the generic kernels
        compiled(x=np.ones((3, n), np.float32))
    programs = len(opencl._PROGRAMS)
    for n in (130, 301):
        x = np.random.default_rng(n).standard_normal((3, n)).astype(np.float32)
        with caplog.at_level(logging.INFO, logger="ember.compiler"):
            y = compiled(x=x)["y"]
        # a mean of n float32 terms, |x| <= 5: the sum's bound
        assert_close(y, x - x.mean(axis=1, keepdims=True), f"y at n={n}",
                     (1e-5, 1e-5 + n * 2.0**-24 * 5))
        launches = [launch for step in compiled.plan.steps if step.lowered is not None
                    for launch in step.lowered.launches]
        assert launches and all(launch.kernel.scalar_types for launch in launches)
    assert len(opencl._PROGRAMS) == programs


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 200))
def test_any_size_matches_the_reference(opencl_target, dynamic_models, n):
    model, reference = dynamic_models
    compiled = _shared_model(opencl_target, model)
    out = compiled(**feeds(n))["y"]
    assert_close(out, reference(**feeds(n))["y"], f"y at n={n}")


_MODELS: dict[str, ember.CompiledModel] = {}


def _shared_model(target: str, model: onnx.ModelProto) -> ember.CompiledModel:
    """One compiled model across hypothesis examples: later sizes run on generic kernels."""
    if target not in _MODELS:
        _MODELS[target] = ember.compile(model, target=target)
    return _MODELS[target]


def test_a_model_keeps_a_bounded_number_of_shapes():
    from ember.compiler import KEPT_SHAPES

    compiled = ember.compile(dynamic_model(), target="numpy")
    for n in range(1, KEPT_SHAPES + 4):
        compiled(**feeds(n))
    assert len(compiled._specializations) == KEPT_SHAPES
    compiled(**feeds(1))  # dropped, planned again
    assert (1, 24) in [shapes[0] for shapes in compiled._specializations]


def test_the_weights_are_on_the_device_once_for_all_shapes(opencl_target, dynamic_models):
    model, reference = dynamic_models
    compiled = ember.compile(model, target=opencl_target)
    for n in (5, 40):
        assert_close(compiled(**feeds(n))["y"], reference(**feeds(n))["y"], f"y at n={n}")
    first, second = compiled._specializations.values()

    def weights(spec) -> dict[int, object]:
        """id(read-only constant array) -> its device buffer."""
        return {id(array): spec.executor.buffers[slot]
                for slot, array in spec.plan.constants.items() if not array.flags.writeable}

    shared = weights(first).keys() & weights(second).keys()
    assert shared, "no constant array is shared between the two shapes' plans"
    assert all(weights(first)[k] is weights(second)[k] for k in shared)


def test_a_new_shape_on_generic_kernels_starts_no_build_workers(opencl_target, tmp_path):
    from ember.workers import isolated, shared_pool

    if not isolated():
        pytest.skip("builds run in this process (EMBER_WORKERS=0): no workers to count")
    compiled = ember.compile(dynamic_model(), target=opencl_target, cache=tmp_path)
    compiled(**feeds(30))
    jobs = shared_pool().jobs
    compiled(**feeds(62))  # the same forms: 30 + 32
    assert shared_pool().jobs == jobs
    warmed = [line for lines in opencl._WARMED.values() for line in lines]
    assert any("_g" in line for line in warmed), "no generic launch is recorded as warmed"
