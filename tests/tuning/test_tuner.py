"""The autotuner on the PoCL device: it never selects a wrong kernel.

Every candidate of small search spaces is driven through the tuner on odd shapes (1, primes,
non-multiples of every tile; trans_b, batches, packed and unpacked B; a strided, padded conv;
the local-memory GEMM through int32 MatMul and ConvTranspose), and each one must compute
the numpy reference's result; candidates whose kernels are deliberately broken through the
tuner's `lowerer` hook must be rejected. Then: tuned parameters reach the kernels of
compile(tune=...) and opt_level 3, tuning resumes where the DB has results, and the budget
stops a large search. The DB file itself is tested in test_tuning_db.py."""

from __future__ import annotations

import dataclasses
import io
import re
import time

import numpy as np
import pytest

import ember
from ember.codegen.kernels.gemm_cpu import CpuGemmParams
from ember.codegen.kernels.gemv_cpu import GemvParams
from ember.codegen.types import Kernel, Lowered, NodeSpec
from ember.codegen.registry import lower
from ember.codegen.kernels.matmul import GemmParams
from ember.codegen.params import BUCKET_SOURCE, param_kinds, search_space
from ember.tuning.progress import TuneBar, TuneProgress
from ember.tuning.tuner import TuneBudget, Tuner
from ember.tuning.db import TuningDB
from ember.frontends.builder import GraphBuilder
from ember.ir import OPS, DType, TensorType
from tests.harness import assert_close, space_sample

pytestmark = pytest.mark.opencl

F32 = DType.FLOAT32
QUICK = TuneBudget(repeats=1, warmup=0, rotate_bytes=0)




def matmul(a_shape, b_shape, dtype=F32, *, trans_b=0, packed=True) -> NodeSpec:
    attrs = OPS["MatMul"].make_attrs({"trans_b": trans_b})
    a, b = TensorType(a_shape, dtype), TensorType(b_shape, dtype)
    (out,) = OPS["MatMul"].infer([a, b], attrs)
    return NodeSpec("MatMul", attrs, (a, b), (out,), frozenset({1}) if packed else frozenset())


def conv(x_shape, w_shape, op="Conv", **attrs) -> NodeSpec:
    attrs = OPS[op].make_attrs(attrs)
    x, w = TensorType(x_shape, F32), TensorType(w_shape, F32)
    (out,) = OPS[op].infer([x, w], attrs)
    return NodeSpec(op, attrs, (x, w), (out,), frozenset({1}))


CPU_CASES = {  # each spans several tiles of every candidate, none a multiple of one
    "primes_trans_b": matmul((17, 31), (19, 31), trans_b=1),
    "batched_unpacked": matmul((2, 5, 7), (2, 7, 11), packed=False),
    # 6 input channels: 3 would take conv_rows.py's direct kernel, which has no GEMM tunables
    "conv_stride_pad": conv((1, 6, 11, 13), (5, 6, 3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
}


def legal_cpu_candidates(device) -> list[CpuGemmParams]:
    """ember's small CPU search space, less what this device's rules reject (so the tuner
    would never try it here)."""
    rules = param_kinds()["gemm_cpu"]
    return [p for p in space_sample("gemm_cpu", 22) if not rules.violations(p, device.target)]


@pytest.mark.parametrize("case", list(CPU_CASES))
def test_every_cpu_candidate_is_correct_on_odd_shapes(case, device):
    spec = CPU_CASES[case]
    candidates = legal_cpu_candidates(device)
    result = Tuner(device, None, QUICK, progress=False).tune(spec, candidates=candidates)
    assert result.kind in ("gemm_cpu", "gemv_cpu") and result.exhausted
    assert {t.params for t in result.trials} >= set(candidates)
    assert not result.rejected, [(t.params, t.error) for t in result.rejected]
    assert result.best is not None and result.best.params in {*candidates, result.default.params}


def test_illegal_candidates_are_refused_with_the_rule(device):
    """Whichever candidates break this device's register rule (its vector unit decides
    which: families.vector_unit) are refused unmeasured, with the rule's reason."""
    cases = [(CpuGemmParams(mr=8, vw=16, nv=4), "gemm_cpu", CPU_CASES["primes_trans_b"]),
             (GemvParams(vw=16, nv=16), "gemv_cpu", GEMV_CASES["rows_unpacked"])]
    illegal = [(params, spec) for params, kind, spec in cases
               if param_kinds()[kind].violations(params, device.target)]
    if not illegal:
        pytest.skip(f"{device.target.traits.name}: its vector unit holds even these tiles")
    for params, spec in illegal:
        result = Tuner(device, None, QUICK, progress=False).tune(spec, candidates=[params])
        (trial,) = [t for t in result.trials if t.params == params]
        assert trial.seconds is None and "illegal here" in trial.error
        assert "accumulators" in trial.error


GEMV_CASES = {  # N and K of 1, primes, none a multiple of a panel, an unroll or a K part
    "packed": matmul((1, 67), (67, 37)),
    "rows_unpacked": matmul((1, 13), (13, 37), packed=False),
    "trans_b_packed": matmul((1, 31), (29, 31), trans_b=1),
    "trans_b_unpacked": matmul((1, 71), (3, 71), trans_b=1, packed=False),
    "batch_rows_k1": matmul((3, 1, 1), (1, 131)),  # single rows folded into 3 rows
    "batched_n1_unpacked": matmul((2, 1, 37), (2, 37, 1), packed=False),
    "few_rows_trans_b": matmul((4, 43), (19, 43), trans_b=1, packed=False),
}


def legal_gemv_candidates(device) -> list[GemvParams]:
    rules = param_kinds()["gemv_cpu"]
    return [p for p in space_sample("gemv_cpu", 15) if not rules.violations(p, device.target)]


@pytest.mark.parametrize("case", list(GEMV_CASES))
def test_every_gemv_candidate_is_correct_on_odd_shapes(case, device):
    """The GEMV's candidates through the tuner, as ember tune drives them (the tests in
    tests/ops/test_gemv_cpu.py run the same set on more shapes)."""
    candidates = legal_gemv_candidates(device)
    result = Tuner(device, None, QUICK, progress=False).tune(GEMV_CASES[case],
                                                             candidates=candidates)
    assert result.kind == "gemv_cpu" and result.exhausted
    assert {t.params for t in result.trials} >= set(candidates)
    assert not result.rejected, [(t.params, t.error) for t in result.rejected]
    assert result.best is not None


GEMM_CANDIDATES = (GemmParams(8, 8, 8, 1, 1, 0), GemmParams(16, 16, 8, 2, 4, 1),
                   GemmParams(32, 16, 16, 4, 2, 0), GemmParams(16, 32, 32, 8, 8, 1))


@pytest.mark.parametrize("spec", [
    matmul((13, 17), (17, 11), DType.INT32),  # integers take the local-memory GEMM
    conv((1, 4, 5, 3), (4, 3, 3, 3), op="ConvTranspose", strides=(2, 2), pads=(1, 0, 1, 0)),
], ids=["int32_matmul", "conv_transpose"])
def test_every_local_memory_gemm_candidate_is_correct(spec, device):
    result = Tuner(device, None, QUICK, progress=False).tune(spec, candidates=GEMM_CANDIDATES)
    assert result.kind == "gemm" and result.exhausted
    assert not result.rejected, [(t.params, t.error) for t in result.rejected]


# -- broken kernels are rejected ----------------------------------------------------------------
BROKEN = {  # params -> how its kernel is broken (source text replaced)
    CpuGemmParams(4, 8, 3): ("c[c_off] = value;", "c[c_off] = value * 1.0001f;"),
    CpuGemmParams(8, 8, 1): ("c[c_off] = value;", "if (gn != 0) c[c_off] = value;"),
    CpuGemmParams(4, 16, 1): ("c[c_off] = value;", "c[c_off] = value +;"),  # does not build
}


def breaking_lowerer(spec: NodeSpec, target) -> Lowered | None:
    """`lower`, except that the kernels of the BROKEN params are rendered with a bug."""
    lowered = lower(spec, target)
    broken = BROKEN.get(lowered.tuning.params) if lowered and lowered.tuning else None
    if broken is None or lowered.tuning.level != "device":
        return lowered
    old, new = broken
    launches = []
    for launch in lowered.launches:
        k = launch.kernel
        assert old in k.source
        bad = Kernel(k.name + "_broken", k.source.replace(old, new).replace(k.name,
                                                                             k.name + "_broken"))
        launches.append(dataclasses.replace(launch, kernel=bad))
    return dataclasses.replace(lowered, launches=tuple(launches))


def test_broken_candidates_are_rejected_and_never_selected(device):
    spec = matmul((9, 23), (23, 35))
    candidates = [CpuGemmParams(6, 8, 2), *BROKEN]
    db = TuningDB(device.target)
    result = Tuner(device, db, QUICK, progress=False, lowerer=breaking_lowerer).tune(
        spec, candidates=candidates)
    errors = {t.params: t.error for t in result.trials}
    assert "differs from the reference" in errors[CpuGemmParams(4, 8, 3)]  # off by 1e-4
    assert "differs from the reference" in errors[CpuGemmParams(8, 8, 1)]  # a column unwritten
    assert "build failed" in errors[CpuGemmParams(4, 16, 1)]
    assert errors[CpuGemmParams(6, 8, 2)] is None
    assert result.best.params == CpuGemmParams(6, 8, 2)
    assert db.get(result.kind, result.key) == CpuGemmParams(6, 8, 2)


# -- tuned parameters reach the kernels ---------------------------------------------------------
def _model(m: int = 23, k: int = 19, n: int = 45):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = GraphBuilder("tuned_matmul")
    b.output("y", b.op("Relu", b.op("MatMul", b.input("x", (m, k)), b.constant(w))))
    x = rng.standard_normal((m, k)).astype(np.float32)
    return b.build(), x, np.maximum(x @ w, 0)


def _matmul_step(model):
    (step,) = [s for s in model.plan.steps if s.op == "MatMul"]
    return step


def test_tuned_params_reach_the_kernel(device, opencl_target):
    graph, x, expected = _model()
    budget = TuneBudget(model_seconds=4, kernel_seconds=4, repeats=2, warmup=0, samples=4)
    tuned = ember.compile(graph, target=opencl_target, tune=budget)
    (result,) = tuned.tune_results
    step = _matmul_step(tuned)
    db = TuningDB(device.target)
    best = db.get(result.kind, result.key)
    assert best == result.best.params
    assert step.lowered.tuning.level == "device" and step.lowered.tuning.params == best
    source = step.lowered.kernels[0].source
    fitted = best.fitted(23, 45)
    assert f"#define MR {fitted.mr}\n" in source and f"#define KU {best.ku}\n" in source
    assert_close(tuned(x=x)["y"], expected, tolerance=(1e-5, 1e-4))

    # a chosen, non-default set in the DB: opt_level 3 builds with it, opt_level 2 does not
    chosen = CpuGemmParams(mr=3, vw=4, nv=2, ku=2, group_m=1)
    db.put(result.kind, result.key, chosen, seconds=0.0)
    db.save()
    at_o3 = _matmul_step(ember.compile(graph, target=opencl_target, opt_level=3))
    assert at_o3.lowered.tuning.params == chosen
    assert "#define MR 3\n#define VW 4\n#define NV 2\n" in at_o3.lowered.kernels[0].source
    at_o2 = _matmul_step(ember.compile(graph, target=opencl_target))
    assert at_o2.lowered.tuning.level == "family"
    assert at_o2.lowered.kernels[0].name != at_o3.lowered.kernels[0].name

    # tuning again resumes: the kernel is in the DB, nothing is measured
    again = ember.compile(graph, target=opencl_target, tune=budget)
    assert [r.skipped for r in again.tune_results] == [True]
    assert _matmul_step(again).lowered.tuning.params == chosen
    assert_close(again(x=x)["y"], expected, tolerance=(1e-5, 1e-4))


def test_budget_stops_a_large_search(device):
    spec = matmul((33, 40), (40, 50))
    assert len(search_space("gemm_cpu", device.target)) > QUICK.exhaustive_limit
    # a tenth of a second: far less than 40 candidates take, even with their kernels built
    # and the worker warm from earlier tests
    budget = dataclasses.replace(QUICK, kernel_seconds=0.1, samples=40)
    result = Tuner(device, None, budget, progress=False).tune(spec)
    assert not result.exhausted and result.default_trial is not None
    assert len(result.trials) < 40 and result.elapsed < 10
    assert result.default.params == param_kinds()["gemm_cpu"].defaults["family"]["cpu"]


# -- size buckets, resuming a search the budget cut short, progress -------------------------------
def test_a_new_size_in_a_tuned_bucket_is_answered_from_the_db_unmeasured(device, opencl_target):
    """Tuned at 23 rows, compiled with tune= at 29 (the bucket 17-32 of 23): the kernel is not
    measured and takes the 23-row entry's params; at 40 rows (bucket 33-64) opt_level 3 has
    nothing tuned."""
    graph, _, _ = _model(m=23)
    budget = TuneBudget(model_seconds=1, kernel_seconds=1, repeats=1, warmup=0, samples=2)
    (tuned,) = ember.compile(graph, target=opencl_target, tune=budget).tune_results
    db = TuningDB(device.target)
    assert len(db) == 1 and not tuned.skipped

    graph, x, expected = _model(m=29)
    model = ember.compile(graph, target=opencl_target, tune=budget)
    (result,) = model.tune_results
    assert result.skipped and result.from_bucket and not result.trials
    assert result.key != tuned.key and result.stored["key"] == tuned.key
    lookup = _matmul_step(model).lowered.tuning
    assert (lookup.level, lookup.source) == ("device", BUCKET_SOURCE)
    assert lookup.params == db.get(tuned.kind, tuned.key)
    assert_close(model(x=x)["y"], expected, tolerance=(1e-5, 1e-4))
    db.reload()
    assert len(db) == 1  # nothing new was tuned or stored

    graph, _, _ = _model(m=40)
    at_o3 = _matmul_step(ember.compile(graph, target=opencl_target, opt_level=3))
    assert at_o3.lowered.tuning.level == "family"


def test_a_search_the_model_budget_cut_short_is_searched_again(device):
    """Stopped by the model's deadline well before its own budget, a kernel is stored as
    incomplete; the next tuning measures its best set again and searches on."""
    spec = matmul((33, 40), (40, 50))
    db = TuningDB(device.target)
    budget = dataclasses.replace(QUICK, kernel_seconds=30)
    first = Tuner(device, db, budget, progress=False).tune(
        spec, deadline=time.perf_counter() + 0.2)
    assert first.cut_short and first.best is not None
    assert db.entry(first.kind, first.key)["complete"] is False

    again = Tuner(device, db, dataclasses.replace(QUICK, kernel_seconds=0.5),
                  progress=False).tune(spec)
    assert not again.skipped and not again.cut_short
    assert first.best.params in {t.params for t in again.trials}
    assert len(again.trials) > 1
    assert TuningDB(device.target).entry(again.kind, again.key)["complete"] is True
    skipped = Tuner(device, db, QUICK, progress=False).tune(spec)
    assert skipped.skipped and not skipped.from_bucket


class _Heard(TuneProgress):
    """What a TuneProgress hears, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def begin(self, kernels, deadline, kernel_seconds):
        self.events.append(("begin", kernels))

    def kernel(self, label, planned, stop):
        self.events.append(("kernel", label, planned))

    def candidate(self, measured, planned, best):
        self.events.append(("candidate", measured))

    def kernel_done(self):
        self.events.append(("done",))

    def end(self):
        self.events.append(("end",))


def test_progress_hears_every_kernel_and_candidate_and_the_bar_keeps_to_the_budget(device):
    specs = [matmul((9, 23), (23, 35)), matmul((1, 13), (13, 37))]
    heard = _Heard()
    budget = dataclasses.replace(QUICK, model_seconds=30, kernel_seconds=0.3, progress=heard)
    results = Tuner(device, TuningDB(device.target), budget).tune_all(specs)
    events = heard.events
    assert events[0] == ("begin", 2) and events[-1] == ("end",)
    starts = [e for e in events if e[0] == "kernel"]
    assert [e[1] for e in starts] == ["MatMul float32 9x23, 23x35", "MatMul float32 1x13, 13x37"]
    assert len([e for e in events if e[0] == "done"]) == 2
    begun = [i for i, e in enumerate(events) if e[0] == "kernel"]
    ended = [i for i, e in enumerate(events) if e[0] == "done"]
    for result, first, last in zip(results, begun, ended):
        counts = [e[1] for e in events[first:last] if e[0] == "candidate"]
        assert counts == list(range(1, len(counts) + 1))  # each measured one, heard once
        assert 1 <= len(counts) <= len(result.trials)

    out = io.StringIO()
    bar = TuneBar(show=True, file=out)
    now = time.perf_counter()
    bar.begin(3, now + 10, 4)
    bar.kernel("MatMul float32 9x23, 23x35", 10, now + 4)
    bar.candidate(5, 10, "3.0 GFLOP/s")
    assert 0 < bar.eta() <= 10  # never past the model's budget
    assert bar.eta(now + 3) <= 1 + 2 * 4  # the current kernel's stop, then two budgets
    bar.kernel_done()
    bar.end()
    text = out.getvalue()
    assert "0/3 kernels" in text and "1/3 kernels" in text
    assert "candidate 5/10, best 3.0 GFLOP/s" in text
    etas = [int(m[0]) * 60 + int(m[1]) for m in re.findall(r"<(\d+):(\d+)\]", text)]
    assert etas and max(etas) <= 10
