"""The autotuner: measure a kernel's candidate parameters on the device, keep the fastest
one that computes the right result, and remember it in the TuningDB.

How tuned parameters reach the kernels: a builder asks `families.params_for(kind, key,
target)`; the answer comes from `target.tuning` (a hashable TuningTable that `tuned_target`
fills from the DB for one model's kernels) before the defaults. So a candidate is measured
by lowering the spec for a target whose table holds just that candidate: the tuner runs
exactly the code path compile() runs, and `lower()`'s cache stays correct. The builder
reports which kind and key it looked up (`Lowered.tuning`), so the tuner never guesses.

Measuring (`Bench`): inputs are small random integers stored as floats, so every sum of
products is exact in float32 and a correct kernel matches the numpy reference (`OPS[op].
evaluate`) within the float32 row of tests/harness.py's TOLERANCE (half: computed in float,
rounded once); any other result rejects the candidate, as does a build or launch error.
Outputs are filled with NaN before the checked run, so an element a kernel never writes
cannot pass. Times are OpenCL profiling-event times: warm-up runs, then the median of
repeats, each run on the next of several copies of the buffers so that caches do not
flatter.

Isolation: candidates are measured in worker processes (ember/workers.py: a kernel that
crashes the driver kills a worker, not the caller). A job measures up to `_CHUNK` candidates
(one program build, one Bench per worker for the spec); the worker opens the tuner's device
by its fingerprint, lowers each candidate itself from (spec, target with that candidate's
table) through the tuner's `lowerer` (a module-level function, pickled by name) and runs
`Bench.measure`, exactly as in process. When a job's worker dies, each of its candidates is
measured again alone, so that only the one that crashed is rejected, with the signal in its
error. EMBER_WORKERS=0 measures in this process.

Search: the builder's own (default) parameters first, then every candidate when the space
is small, else a random sample and a local refinement around the best (one axis step at a
time, until no neighbour is faster), then another sample and refinement (`restarts`),
within a time budget per kernel and per model. Results go to the DB after each
kernel, so an interrupted run resumes where it stopped: a kernel the DB answers (its own
entry, or one of its size bucket: db.py) is skipped, unless that entry is marked incomplete
(the model's budget ended its search early), which is searched again from its best set.
Progress goes to a TuneProgress (progress.py; by default tqdm's bar over the kernels).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ember.codegen.families import Target, TuningTable
from ember.codegen.types import Lowered, NodeSpec
from ember.codegen.registry import lower
from ember.codegen.params import Lookup, key_tensors, param_kinds, search_space, tunable_spec
from ember.tuning.bench import (
    TOLERANCE, Bench, Rejected, TuneBudget, TuningDevice, measure_batch, measure_in_worker,
)
from ember.tuning.db import TuningDB, is_complete
from ember.tuning.progress import TuneProgress, progress_of
from ember.workers import isolated, shared_pool
from ember.ir import DType
from ember.ir.ops.attention import attention_geometry

__all__ = ["TuneBudget", "Trial", "TuneResult", "Tuner", "Bench", "Rejected", "tuned_target",
           "spec_flops", "spec_work", "shapes_text", "TOLERANCE", "TuneProgress"]

log = logging.getLogger(__name__)

_CHUNK = 8  # candidates built into one program (one build instead of eight)
# A kernel stopped by the model's deadline still counts as complete when it had at least this
# share of its own budget: when the two budgets are equal, the first kernel's ends a moment
# after the model's (it starts a moment after the model's clock does).
_FULL_SHARE = 0.9


@dataclass(frozen=True)
class Trial:
    params: Any
    seconds: float | None  # median device time; None when rejected
    error: str | None = None


@dataclass
class TuneResult:
    """What tuning one kernel found."""

    kind: str
    key: str
    flops: int  # the work one run does, in `unit`s x 1e9 per second (see spec_work)
    default: Lookup  # what the builder uses untuned
    trials: list[Trial] = field(default_factory=list)
    elapsed: float = 0.0
    skipped: bool = False  # already in the DB: nothing measured
    exhausted: bool = False  # every candidate of the space was measured
    unit: str = "GFLOP/s"  # "GB/s" for kernels that move data more than they multiply
    cut_short: bool = False  # the model's budget ended the search before the kernel's own
    stored: dict[str, Any] | None = None  # the DB entry that answered a skipped kernel
    spec: NodeSpec | None = None  # the problem tuned

    @property
    def from_bucket(self) -> bool:
        """Skipped because an entry of the kernel's size bucket answers it."""
        return self.stored is not None and self.stored.get("key") != self.key

    def _accepted(self) -> list[Trial]:
        return [t for t in self.trials if t.seconds is not None]

    @property
    def best(self) -> Trial | None:
        accepted = self._accepted()
        return min(accepted, key=lambda t: t.seconds) if accepted else None

    @property
    def default_trial(self) -> Trial | None:
        return next((t for t in self.trials if t.params == self.default.params), None)

    @property
    def rejected(self) -> list[Trial]:
        return [t for t in self.trials if t.seconds is None]

    def gflops(self, seconds: float | None) -> float | None:
        return self.flops / seconds * 1e-9 if seconds else None

    @property
    def speedup(self) -> float | None:
        best, default = self.best, self.default_trial
        if best is None or default is None or default.seconds is None:
            return None
        return default.seconds / best.seconds


def spec_flops(spec: NodeSpec) -> int:
    """Multiply-adds x 2 of a MatMul / Conv / ConvTranspose / Attention spec (0 for other
    ops; attention's softmax is not counted)."""
    out = spec.outputs[0]
    if spec.op == "MatMul":
        a = spec.inputs[0]
        k = a.shape[-2] if spec.attrs["trans_a"] else a.shape[-1]
        return 2 * out.size * k
    if spec.op in ("Conv", "ConvTranspose"):
        w = spec.inputs[1]
        per = w.shape[1] * math.prod(w.shape[2:])
        return 2 * (out.size if spec.op == "Conv" else spec.inputs[0].size) * per
    if spec.op == "Attention":
        a = spec.attrs
        g = attention_geometry(*(t.shape for t in spec.inputs[:3]),
                               spec.inputs[3].shape if len(spec.inputs) > 3 else None,
                               a["q_perm"], a["k_perm"], a["v_perm"], a["out_perm"])
        return 2 * g.batch_size * g.sq * g.sk * (g.d + g.dv)
    return 0


def shapes_text(key: str) -> str:
    """A tuning key's operands for people: the first tensor's dtype, then the first two
    tensors' shapes ('float32 11x19, 19x29'; a fused epilogue's inputs left out)."""
    tensors = key_tensors(key)[:2]
    if not tensors:
        return key.split(" ", 1)[0]
    dims = ["x".join(map(str, shape)) or "scalar" for _, shape in tensors]
    return f"{tensors[0][0]} {', '.join(dims)}"


def spec_work(spec: NodeSpec) -> tuple[int, str]:
    """What a kernel's speed is counted in: FLOPs for products, else the bytes it reads and
    writes (row kernels: softmax, norms), with the rate's unit."""
    flops = spec_flops(spec)
    if flops:
        return flops, "GFLOP/s"
    return sum(t.size * t.dtype.itemsize for t in (*spec.inputs, *spec.outputs)), "GB/s"




@dataclass
class _Count:
    """Candidates of one kernel: about how many the search plans, and how many it measured."""

    planned: int
    measured: int = 0


class Tuner:
    """Tunes kernels of one device and stores the winners in its TuningDB.

    `lowerer` is how a spec becomes launches (`lower`, the compiler's own path); tests
    pass a wrapper that breaks one candidate's kernel to show it is rejected. Workers get it
    pickled by name: it must be a module-level function of an importable module.
    `progress` (else the budget's): a TuneProgress, or whether tqdm's bar shows (None: on a
    terminal)."""

    def __init__(self, device: TuningDevice, db: TuningDB | None = None,
                 budget: TuneBudget = TuneBudget(), *,
                 progress: bool | TuneProgress | None = None,
                 lowerer: Callable[[NodeSpec, Target], Lowered | None] = lower) -> None:
        self.device = device
        self.target = device.target.with_tuning(TuningTable())
        self.db = db
        self.progress = progress_of(progress if progress is not None else budget.progress)
        self.budget = replace(budget, progress=None)  # what workers get: plain data
        self.lowerer = lowerer

    def lookup_of(self, spec: NodeSpec) -> tuple[NodeSpec, Lookup] | None:
        """The plain problem a spec tunes as and its untuned lookup (None: not tunable)."""
        plain = tunable_spec(spec)
        lowered = self.lowerer(plain, self.target) if plain is not None else None
        if lowered is None or lowered.tuning is None or lowered.tuning.key is None:
            return None
        return plain, lowered.tuning

    def tune(self, spec: NodeSpec, *, candidates: Sequence[Any] | None = None,
             deadline: float | None = None, force: bool = False) -> TuneResult | None:
        """Tune one spec (None when its builder has no tunables on this target). Explicit
        `candidates` are all measured (no budget), else the kind's search space is.
        A kernel the DB answers (its own entry or its size bucket's, complete) is skipped
        unless `force`; an incomplete entry's set is measured again, then the search."""
        found = self.lookup_of(spec)
        if found is None:
            return None
        plain, lookup = found
        work, unit = spec_work(plain)
        result = TuneResult(lookup.kind, lookup.key, work, lookup, unit=unit, spec=plain)
        label = f"{plain.op} {shapes_text(lookup.key)}"
        stored = (self.db.find(lookup.kind, lookup.key)
                  if self.db is not None and not force and candidates is None else None)
        start = time.perf_counter()
        if stored is not None and is_complete(stored):
            result.skipped, result.stored = True, stored
            self.progress.kernel(label, 0, start)
            self.progress.kernel_done()
            return result
        own_stop = start + self.budget.kernel_seconds
        stop = math.inf if candidates is not None else min(
            deadline if deadline is not None else math.inf, own_stop)
        itemsize = 8 if plain.inputs[0].dtype is DType.FLOAT64 else 4
        space = search_space(lookup.kind, self.target, itemsize)
        kind = param_kinds()[lookup.kind]
        pool = list(candidates) if candidates is not None else list(space.legal)
        # in a worker (which makes its own Bench), else here
        bench = None if isolated() else Bench(plain, self.device, self.budget,
                                              self.budget.seed)
        seen: dict[tuple[str, ...], Trial] = {}
        exhaustive = candidates is not None or len(pool) <= self.budget.exhaustive_limit
        count = _Count(1 + (len(pool) if exhaustive else self.budget.samples))
        self.progress.kernel(label, count.planned, stop)

        def measure(batch: Iterable[Any]) -> None:
            todo = []
            for params in batch:
                if time.perf_counter() > stop:
                    break
                if any(t.params == params for t in result.trials):
                    continue
                broken = kind.violations(params, self.target, itemsize)
                if broken:
                    result.trials.append(Trial(params, None, "illegal here: " + "; ".join(broken)))
                    continue
                table = TuningTable.of({(lookup.kind, lookup.key): params})
                lowered = self.lowerer(plain, self.target.with_tuning(table))
                if lowered is None or lowered.tuning is None or lowered.tuning.level != "device":
                    result.trials.append(Trial(params, None, "the builder did not take it"))
                    continue
                names = tuple(k.name for k in lowered.kernels)
                if names in seen:  # fitted to the problem, it is a kernel already measured
                    result.trials.append(Trial(params, seen[names].seconds, seen[names].error))
                    continue
                todo.append((params, lowered, names))
            for i in range(0, len(todo), _CHUNK):
                self._measure_chunk(bench, todo[i:i + _CHUNK], result, seen, stop, count,
                                    plain)

        measure([lookup.params])
        if stored is not None:  # an incomplete search: its best set so far, measured again
            resumed = kind.params_type(**stored["params"])
            count.planned += 1
            measure([resumed])
        if exhaustive:
            measure(pool)
            result.exhausted = {t.params for t in result.trials} >= set(pool)
        else:
            rng = random.Random(f"{self.budget.seed}|{lookup.kind}|{lookup.key}")
            for restart in range(self.budget.restarts + 1):
                tried = {t.params for t in result.trials}
                fresh = [p for p in space.sample(len(space), rng) if p not in tried]
                if restart:
                    count.planned += min(len(fresh), self.budget.samples)
                measure(fresh[:self.budget.samples])
                while time.perf_counter() <= stop and result.best is not None:
                    tried = {t.params for t in result.trials}
                    nearby = [p for p in space.neighbours(result.best.params) if p not in tried]
                    if not nearby:
                        break
                    count.planned += len(nearby)
                    measure(nearby)
                if time.perf_counter() > stop:
                    break
        now = time.perf_counter()
        result.elapsed = now - start
        # ended by the model's deadline with less than its own budget: searched again later
        result.cut_short = (candidates is None and not result.exhausted and now > stop
                            and stop - start < _FULL_SHARE * (own_stop - start))
        self._store(result)
        self.progress.kernel_done()
        return result

    def _measure_chunk(self, bench: Bench | None, todo: list, result: TuneResult,
                       seen: dict[tuple[str, ...], Trial], stop: float, count: _Count,
                       plain: NodeSpec) -> None:
        for params, (seconds, error) in self._measure_many(todo, result, stop, bench, plain):
            names = next(n for p, _, n in todo if p == params)
            trial = Trial(params, seconds, error)
            if trial.error:
                log.info("%s candidate %s rejected: %s", result.kind, params, trial.error)
            result.trials.append(trial)
            seen[names] = trial
            count.measured += 1
            best = result.best
            rate = (f"{result.gflops(best.seconds) or 0:.1f} {result.unit}"
                    if best is not None else None)
            self.progress.candidate(count.measured, count.planned, rate)

    def _measure_many(self, todo: list, result: TuneResult, stop: float, bench: Bench | None,
                      plain: NodeSpec | None) -> list[tuple[Any, tuple[float | None, str | None]]]:
        """(params, (seconds, error)) of the candidates measured before `stop`: in this
        process (`bench` given) or in a worker, each alone again when a batch crashed."""
        if bench is not None:
            return measure_batch(self.device, bench, [(p, lw) for p, lw, _ in todo], stop)
        assert plain is not None
        table_of = [(params, TuningTable.of({(result.kind, result.key): params}))
                    for params, _, _ in todo]
        job = (measure_in_worker, (self.device.target.traits.fingerprint, plain, self.target,
                                    self.budget, self.lowerer, table_of,
                                    stop - time.perf_counter()))
        timeout = max(60.0, 20 * self.budget.kernel_seconds)
        pool = shared_pool()
        try:
            (outcome,) = pool.run([job], timeout, parallel=1)
        except OSError as exc:  # no worker could be started: nothing is measured unsafely
            return [(p, (None, f"no tuning worker could be started: {exc}"))
                    for p, _ in table_of]
        if outcome.ok:
            return list(zip([p for p, _ in table_of], outcome.value))[:len(outcome.value)]
        if not outcome.crashed:
            return [(p, (None, outcome.error)) for p, _ in table_of]
        if len(table_of) == 1:
            return [(table_of[0][0], (None, outcome.error))]
        found = []  # the batch crashed: which candidate did it?
        for one in table_of:
            if time.perf_counter() > stop and found:
                break
            alone = (measure_in_worker, (*job[1][:5], [one], stop - time.perf_counter()))
            (outcome,) = pool.run([alone], timeout, parallel=1)
            found.append((one[0], outcome.value[0] if outcome.ok and outcome.value
                           else (None, outcome.error or "not measured")))
        return found

    def _store(self, result: TuneResult) -> None:
        best = result.best
        if best is None:
            log.warning("tuning %s %s: no candidate computed the reference result",
                        result.kind, result.key)
            return
        if self.db is None:
            return
        default = result.default_trial
        self.db.put(result.kind, result.key, best.params, seconds=best.seconds,
                    **{"gflops" if result.unit == "GFLOP/s" else "gbps":
                       result.gflops(best.seconds)},
                    default_params=str(result.default.params),
                    default_seconds=default.seconds if default else None,
                    default_level=result.default.level,
                    candidates=len(result.trials), rejected=len(result.rejected),
                    exhausted=result.exhausted, complete=not result.cut_short)
        try:
            self.db.save()
        except OSError as exc:  # a read-only cache: this process still uses the result
            log.warning("could not save the TuningDB %s: %s", self.db.path, exc)

    def tune_all(self, specs: Iterable[NodeSpec], *, force: bool = False) -> list[TuneResult]:
        """Tune the distinct problems of `specs` (largest first) within the model budget."""
        found: dict[tuple[str, str], NodeSpec] = {}
        for spec in specs:
            hit = self.lookup_of(spec)
            if hit is not None:
                found.setdefault((hit[1].kind, hit[1].key), hit[0])
        # products first (where tuning pays most), then the rest, larger first
        order = sorted(found.values(), key=lambda s: (spec_flops(s) > 0, spec_work(s)[0]),
                       reverse=True)
        if not order:
            return []
        deadline = time.perf_counter() + self.budget.model_seconds
        self.progress.begin(len(order), deadline, self.budget.kernel_seconds)
        results = []
        try:
            for spec in order:
                if time.perf_counter() > deadline:
                    log.info("tuning budget of %.0f s spent; %d kernel(s) left untuned",
                             self.budget.model_seconds, len(order) - len(results))
                    break
                result = self.tune(spec, deadline=deadline, force=force)
                if result is not None:
                    results.append(result)
        finally:
            self.progress.end()
        return results


def tuned_target(specs: Sequence[NodeSpec], device: TuningDevice, *, tune: bool,
                 budget: TuneBudget = TuneBudget(), db: TuningDB | None = None,
                 progress: bool | TuneProgress | None = None
                 ) -> tuple[Target, list[TuneResult]]:
    """The device's target carrying the DB's tuned params for these specs (each kernel's
    own, else its size bucket's: TuningDB.table), tuning the ones the DB lacks first when
    `tune`; and what tuning found."""
    db = db if db is not None else TuningDB(device.target)
    tuner = Tuner(device, db, budget, progress=progress)
    results = tuner.tune_all(specs) if tune else []
    keys = []
    for spec in specs:
        hit = tuner.lookup_of(spec)
        if hit is not None:
            keys.append((hit[1].kind, hit[1].key))
    return device.target.with_tuning(db.table(keys)), results
