"""Tuner candidates run in worker processes (ember/workers.py): a candidate whose kernel
crashes the driver (here a store to address 16, SIGSEGV on any OS that leaves page 0
unmapped) is rejected with the signal, the rest of its batch is still measured, and
tuning picks a correct candidate. The wrapped lowerer reaches the workers by name."""

from __future__ import annotations

import dataclasses

import pytest

from ember.codegen.kernels.gemm_cpu import CpuGemmParams
from ember.codegen.types import Kernel, Lowered, NodeSpec
from ember.codegen.registry import lower
from ember.tuning.tuner import TuneBudget, Tuner
from ember.tuning.db import TuningDB
from ember.workers import isolated
from ember.ir import OPS, DType, TensorType

pytestmark = pytest.mark.opencl

QUICK = TuneBudget(repeats=1, warmup=0, rotate_bytes=0)
CRASHING = CpuGemmParams(4, 8, 2)
WILD_STORE = "*(__global volatile int*)16 = 1;"


def crashing_lowerer(spec: NodeSpec, target) -> Lowered | None:
    """`lower`, except that CRASHING's kernels begin with a store to address 16."""
    lowered = lower(spec, target)
    if (lowered is None or lowered.tuning is None or lowered.tuning.params != CRASHING
            or lowered.tuning.level != "device"):
        return lowered
    launches = []
    for launch in lowered.launches:
        k = launch.kernel
        at = k.source.index("{", k.source.index("__kernel")) + 1  # the kernel's body
        source = (k.source[:at] + "\n" + WILD_STORE + k.source[at:]).replace(
            k.name, k.name + "_wild")
        launches.append(dataclasses.replace(launch, kernel=Kernel(k.name + "_wild", source)))
    return dataclasses.replace(lowered, launches=tuple(launches))


def test_a_candidate_that_kills_its_worker_is_rejected_and_tuning_goes_on(device):
    if not isolated():
        pytest.skip("EMBER_WORKERS=0: candidates run in this process, a crash would end it")
    spec_attrs = OPS["MatMul"].make_attrs({})
    a, b = TensorType((9, 23), DType.FLOAT32), TensorType((23, 35), DType.FLOAT32)
    (out,) = OPS["MatMul"].infer([a, b], spec_attrs)
    spec = NodeSpec("MatMul", spec_attrs, (a, b), (out,), frozenset({1}))
    candidates = [CpuGemmParams(6, 8, 2), CRASHING, CpuGemmParams(4, 8, 1)]
    db = TuningDB(device.target)
    result = Tuner(device, db, QUICK, progress=False, lowerer=crashing_lowerer).tune(
        spec, candidates=candidates)
    errors = {t.params: t.error for t in result.trials}
    assert errors[CRASHING] is not None and "worker killed by SIGSEGV" in errors[CRASHING]
    assert errors[CpuGemmParams(6, 8, 2)] is None and errors[CpuGemmParams(4, 8, 1)] is None
    assert result.best is not None and result.best.params != CRASHING
    assert db.get(result.kind, result.key) == result.best.params
