"""Tuning the row kernels (softmax and the norms, kind "rows") and the attention kernel:
every candidate computes the reference on odd shapes, and a tuned set reaches the kernel at
opt_level 3. (The GEMM and GEMV kinds: test_tuner.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.codegen.types import NodeSpec
from ember.codegen.kernels.rows import RowParams
from ember.codegen.params import search_space
from ember.tuning.tuner import TuneBudget, Tuner
from ember.tuning.db import TuningDB
from ember.frontends.builder import GraphBuilder
from ember.ir import OPS, DType, TensorType
from tests.harness import assert_close

pytestmark = pytest.mark.opencl

F32 = DType.FLOAT32
QUICK = TuneBudget(repeats=1, warmup=0, rotate_bytes=0)




def row_spec(op: str, shapes: list[tuple[int, ...]], **attrs) -> NodeSpec:
    made = OPS[op].make_attrs(attrs)
    inputs = tuple(TensorType(s, F32) for s in shapes)
    outputs = tuple(OPS[op].infer(list(inputs), made))
    return NodeSpec(op, made, inputs, outputs, frozenset())


ROW_CASES = {  # rows and row lengths that no LOCAL divides, both templates (test_nn.py's
    # test_row_kernels_correct_for_every_local_size covers strided rows and InstanceNorm)
    "softmax_rows": row_spec("Softmax", [(3, 37)], axis=-1),
    "layernorm_bias": row_spec("LayerNormalization", [(5, 33), (33,), (33,)], axis=-1),
}


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_every_row_candidate_is_correct_on_odd_shapes(case, device):
    spec = ROW_CASES[case]
    space = search_space("rows", device.target)
    assert RowParams(1) in space.legal and len(space) > 3
    result = Tuner(device, None, QUICK, progress=False).tune(spec, candidates=space.legal)
    assert result.kind == "rows" and result.unit == "GB/s" and result.exhausted
    assert {t.params for t in result.trials} >= set(space.legal)
    assert not result.rejected, [(t.params, t.error) for t in result.rejected]


def test_a_local_the_device_cannot_run_is_refused(device):
    too_big = RowParams(device.target.traits.max_work_group_size * 2)
    result = Tuner(device, None, QUICK, progress=False).tune(ROW_CASES["softmax_rows"],
                                                             candidates=[too_big])
    (trial,) = [t for t in result.trials if t.params == too_big]
    assert trial.seconds is None and "max work-group size" in trial.error


def _softmax_model():
    b = GraphBuilder("tuned_softmax")
    b.output("y", b.op("Softmax", b.input("x", (6, 300)), axis=-1))
    x = np.random.default_rng(5).standard_normal((6, 300)).astype(np.float32)
    e = np.exp(x - x.max(-1, keepdims=True))
    return b.build(), x, e / e.sum(-1, keepdims=True)


def _softmax_step(model):
    (step,) = [s for s in model.plan.steps if s.op == "Softmax"]
    return step


def test_tuned_local_reaches_the_kernel(device, opencl_target):
    graph, x, expected = _softmax_model()
    budget = TuneBudget(model_seconds=10, kernel_seconds=10, repeats=2, warmup=0)
    tuned = ember.compile(graph, target=opencl_target, tune=budget)
    (result,) = tuned.tune_results
    assert result.kind == "rows" and result.best is not None
    assert _softmax_step(tuned).lowered.tuning.params == result.best.params
    assert_close(tuned(x=x)["y"], expected, tolerance=(1e-5, 1e-6))

    # a chosen LOCAL in the DB: opt_level 3 launches with it, opt_level 2 keeps the rule's
    db = TuningDB(device.target)
    chosen = RowParams(8)
    db.put(result.kind, result.key, chosen, seconds=0.0)
    db.save()
    at_o3 = _softmax_step(ember.compile(graph, target=opencl_target, opt_level=3))
    assert at_o3.lowered.tuning.level == "device" and at_o3.lowered.tuning.params == chosen
    (launch,) = at_o3.lowered.launches
    assert launch.local_size == (8,) and launch.global_size == (6 * 8,)
    at_o2 = _softmax_step(ember.compile(graph, target=opencl_target))
    assert at_o2.lowered.tuning.level == "family"
    o3 = ember.compile(graph, target=opencl_target, opt_level=3)
    assert_close(o3(x=x)["y"], expected, tolerance=(1e-5, 1e-6))


# -- attention ------------------------------------------------------------------------------
def attention_spec(q, k, v, mask=None, **attrs) -> NodeSpec:
    made = OPS["Attention"].make_attrs({"scale": 0.25, **attrs})
    inputs = tuple(TensorType(s, F32) for s in (q, k, v) + ((mask,) if mask else ()))
    outputs = tuple(OPS["Attention"].infer(list(inputs), made))
    return NodeSpec("Attention", made, inputs, outputs, frozenset())


def test_every_attention_candidate_is_correct_on_odd_shapes(device):
    """Odd Sq, Sk and head sizes (idle lanes in the last key block, rows past Sq), a
    broadcast mask; every legal set of the CPU space, sampled down to keep the test short."""
    spec = attention_spec((2, 13, 16), (2, 19, 16), (2, 19, 24), (1, 13, 19))
    space = search_space("attention", device.target)
    assert len(space) > QUICK.exhaustive_limit  # large: the tuner samples it
    picked = space.legal[::8]
    result = Tuner(device, None, QUICK, progress=False).tune(spec, candidates=picked)
    assert result.kind == "attention" and result.unit == "GFLOP/s" and result.flops > 0
    assert {t.params for t in result.trials} >= set(picked)
    assert not result.rejected, [(t.params, t.error) for t in result.rejected]


# -- the CPU convolutions: depthwise and conv_rows ------------------------------------------
def conv_spec(x, w, **attrs) -> NodeSpec:
    made = OPS["Conv"].make_attrs(attrs)
    inputs = (TensorType(x, F32), TensorType(w, F32))
    return NodeSpec("Conv", made, inputs, tuple(OPS["Conv"].infer(list(inputs), made)),
                    frozenset({1}))


CONV_CASES = {  # odd widths (partial vectors), stride 2 with padding, a 5x5 kernel
    "depthwise": conv_spec((1, 5, 13, 19), (5, 1, 3, 3), group=5, strides=(2, 2),
                           pads=(1, 1, 1, 1)),
    "conv_rows": conv_spec((1, 3, 11, 37), (6, 3, 5, 5), strides=(1, 2), pads=(2, 2, 2, 2)),
}


@pytest.mark.parametrize("kind", list(CONV_CASES))
def test_every_cpu_conv_candidate_is_correct_on_odd_shapes(kind, device):
    if device.target.family.name != "cpu":
        pytest.skip("these conv strategies serve CPU devices only")
    space = search_space(kind, device.target)
    picked = space.legal[::max(1, len(space) // 12)]
    result = Tuner(device, None, QUICK, progress=False).tune(CONV_CASES[kind], candidates=picked)
    assert result.kind == kind and result.unit == "GFLOP/s"
    assert {t.params for t in result.trials} >= set(picked)
    assert not result.rejected, [(t.params, t.error) for t in result.rejected]
