"""Every tunable kind's legal search space on Oclgrind, for every device family: each
candidate must compute the numpy reference through the tuner's own path (it checks every
result) without one invalid access. The family is forced on the simulator (target
"oclgrind@FAMILY"), so the GPU families' spaces (work-groups of whole warps, local-memory
tiles) run although no test machine has such a GPU.

Spaces of up to SPREAD[kind] sets run whole; larger ones (the GEMMs', attention's) run as a
deterministic spread: every k-th legal set, plus the first legal set holding any axis value
the stride missed, so that every legal value of every axis runs at least once (the test
asserts it). The shapes are small and odd: partial tiles and vectors, rows past the end,
idle lanes in the last key block, strided and padded convolutions."""

from __future__ import annotations

from typing import Any

import pytest

from ember.codegen.families import TuningTable
from ember.codegen.registry import lower
from ember.codegen.mathlib import program_header
from ember.codegen.params import search_space
from ember.tuning.tuner import Bench, Rejected, TuneBudget, Tuner
from ember.ir import DType
from ember.runtime.device import resolve_target
from tests.tuning.test_tune_kinds import CONV_CASES, ROW_CASES, attention_spec
from tests.tuning.test_tuner import matmul
from tests.oclgrind.conftest import FAMILY_NAMES

pytestmark = pytest.mark.oclgrind

QUICK = TuneBudget(repeats=1, warmup=0, rotate_bytes=0)
SPREAD = {"gemm": 32, "gemm_cpu": 64, "gemv_cpu": 48, "rows": 16, "attention": 48,
          "depthwise": 108, "conv_rows": 84}
CPU_ONLY = ("gemm_cpu", "gemv_cpu", "depthwise", "conv_rows")


def spec_for(kind: str, family: str):
    """A problem whose builder looks up `kind` on `family`."""
    if kind == "gemm":  # CPU devices take the local-memory GEMM for integer MatMul only
        return (matmul((5, 13), (13, 11), DType.INT32) if family == "cpu"
                else matmul((17, 31), (19, 31), trans_b=1))
    return {
        "gemm_cpu": matmul((17, 31), (19, 31), trans_b=1),
        "gemv_cpu": matmul((1, 31), (31, 19)),
        "rows": ROW_CASES["layernorm_bias"],
        "attention": attention_spec((2, 13, 16), (2, 19, 16), (2, 19, 24), (1, 13, 19)),
        "depthwise": CONV_CASES["depthwise"],
        "conv_rows": CONV_CASES["conv_rows"],
    }[kind]


def measure_loadable(device, spec, kind: str, candidates: list[Any]) -> list[Any]:
    """Checks each candidate whose kernels Oclgrind 19.10 can load with the tuner's Bench
    (the reference check), and returns those it cannot load: it stops with a fatal
    'Unsupported constant int size: 32 bytes' on many of conv_rows.cl.j2's kernels (LLVM
    turns their private output tile into one 256-bit integer), a limit of the simulator,
    not an invalid access. The tuner itself would measure the default set first."""
    import pyopencl as cl

    bench = Bench(spec, device, QUICK)
    key = lower(spec, device.target).tuning.key
    unloadable = []
    for params in candidates:
        table = TuningTable.of({(kind, key): params})
        lowered = lower(spec, device.target.with_tuning(table))
        assert lowered.tuning.params == params
        source = program_header(list(lowered.kernels)) + "\n".join(
            k.source for k in lowered.kernels)
        program = cl.Program(device.context, source).build()
        try:
            for k in lowered.kernels:
                cl.Kernel(program, k.name)
        except cl.Error:
            unloadable.append(params)
            continue
        try:
            bench.measure(lowered, program)
        except Rejected as exc:
            pytest.fail(f"{params}: {exc}")
    return unloadable


CASES = [(kind, family) for kind in SPREAD for family in FAMILY_NAMES
         if family == "cpu" or kind not in CPU_ONLY]


@pytest.mark.parametrize("kind, family", CASES, ids=[f"{k}-{f}" for k, f in CASES])
def test_every_candidate_is_memory_safe_and_correct(kind, family):
    device = resolve_target(f"oclgrind@{family}")
    spec = spec_for(kind, family)
    space = search_space(kind, device.target)
    assert len(space) > 0, space.rejected
    picked = space.spread(SPREAD[kind])
    for name, values in space.axes:  # every legal value of every axis runs
        legal_values = {getattr(p, name) for p in space.legal}
        assert legal_values <= {getattr(p, name) for p in picked}, name
    if kind == "conv_rows":
        unloadable = measure_loadable(device, spec, kind, picked)
        assert len(unloadable) < len(picked), "Oclgrind loads none of the conv_rows kernels"
        return
    result = Tuner(device, None, QUICK, progress=False).tune(spec, candidates=picked)
    assert result is not None and result.kind == kind
    assert {t.params for t in result.trials} >= set(picked)
    assert not result.rejected, [(t.params, t.error) for t in result.rejected]
