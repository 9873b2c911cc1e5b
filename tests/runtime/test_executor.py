"""The OpenCL executor: one program per model, programs shared between models, buffers
allocated once and reused between calls, host steps interleaved with device steps."""

from __future__ import annotations

import numpy as np

import ember
from ember.frontends.builder import GraphBuilder
from ember.runtime import opencl
from ember.runtime.numpy import evaluate_graph
from tests.harness import assert_close


def chain_graph():
    b = GraphBuilder("chain")
    x = b.input("x", (3, 5))
    y = b.Tanh(b.Mul(x, b.constant(np.full((5,), 0.5, np.float32))))
    # bfloat16 has no OpenCL type: this Cast runs on the host between device steps.
    z = b.Cast(b.Cast(y, to=ember.ir.DType.BFLOAT16), to=ember.ir.DType.FLOAT32)
    b.output("z", b.Add(z, x))
    return b.build()


def test_host_steps_between_device_steps(opencl_target):
    graph = chain_graph()
    model = ember.compile(graph, target=opencl_target, opt_level=0)
    assert model.stats.host_steps == 2 and model.stats.device_steps == 3
    x = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    assert_close(model(x=x)["z"], evaluate_graph(graph, {"x": x})["z"])


def test_buffers_are_reused_between_calls(opencl_target):
    model = ember.compile(chain_graph(), target=opencl_target)
    executor = model._current.executor
    before = dict(executor.buffers)
    x = np.ones((3, 5), np.float32)
    first = model(x=x)["z"]
    second = model(x=x)["z"]
    np.testing.assert_array_equal(first, second)
    assert all(executor.buffers[k] is v for k, v in before.items())


def test_one_program_per_model_shared_between_models(opencl_target):
    ember.compile(chain_graph(), target=opencl_target)
    count = len(opencl._PROGRAMS)
    again = ember.compile(chain_graph(), target=opencl_target)
    assert len(opencl._PROGRAMS) == count
    assert len(again._current.executor.programs) == 1


def test_outputs_do_not_alias_inputs_or_constants(any_target):
    b = GraphBuilder("passthrough")
    x = b.input("x", (4,))
    b.output("y", b.Identity(x))
    b.output("c", b.constant(np.arange(4, dtype=np.float32)))
    model = ember.compile(b.build(), target=any_target)
    x_value = np.zeros(4, np.float32)
    out = model(x=x_value)
    out["y"][0] = 5.0
    out["c"][0] = 7.0
    assert x_value[0] == 0.0
    np.testing.assert_array_equal(model(x=x_value)["c"], np.arange(4, dtype=np.float32))
