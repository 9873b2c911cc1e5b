"""compile() and CompiledModel: where the stages are tied together.

A model is imported (frontends), lowered (lowering passes, with placement asking codegen
which nodes have kernels), turned into an ExecutionPlan and run by the OpenCL executor, or
by numpy when there is no device. Models with symbolic dims are specialized again when
called with new shapes; each specialization is kept, keyed by the input shapes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ember.runtime.cache import GENERIC, BinaryCache, resolve_cache
from ember.codegen.families import Target
from ember.codegen.registry import lower
from ember.codegen.params import TUNABLE_OPS
from ember.tuning.tuner import TuneBudget, TuneResult, tuned_target
from ember.feeds import bind_feeds, select_outputs
from ember.errors import (
    CompileError, DataDependentError, DTypeError, UnsupportedOpError,
)
from ember.frontends.dims import is_dynamic, resolve_shapes
from ember.frontends.onnx import import_graph, input_signature, load_model, value_info_type
from ember.ir import DType, Graph, verify
from ember.lowering import PassContext, PassManager, PassRecord, build_pipeline
from ember.runtime.generic_plans import DiskStore, Generalized, GenericPlans
from ember.runtime.device import NUMPY, OpenCLDevice, resolve_target, with_threads
from ember.runtime.memory import build_memory_plan
from ember.runtime.numpy import evaluate_graph
from ember.runtime.opencl import OpenCLExecutor, SharedConstants, prebuild
from ember.runtime.plan import (
    DEVICE, HOST, ExecutionPlan, PackedConstants, build_plan, node_spec,
)
from ember.profile import Profile, check_counts, measure
from ember.staged import SegmentSource, StagedModel
from ember.summary import ModelStats, format_summary, model_stats
from ember.runtime.resources import (
    check_buffers,
    check_tensors,
    check_tensors_on_host,
    driver_failures,
)

__all__ = ["compile", "CompiledModel", "ModelStats", "Profile"]

log = logging.getLogger(__name__)

Dims = tuple[int | str | None, ...]
# input shapes whose plan and device buffers a model keeps: a service that sees every
# sentence length must not hold a copy of its buffers per length; a shape dropped costs
# its planning again (milliseconds on generic kernels) when it comes back
KEPT_SHAPES = 16


@dataclass
class _Specialization:
    shapes: tuple[tuple[int, ...], ...]
    graph: Graph
    plan: ExecutionPlan
    executor: OpenCLExecutor | None
    records: list[PassRecord]
    compile_seconds: float


class CompiledModel:
    """A model compiled for one target. Call it with numpy arrays (by input name, by
    position, or as one dict of input name -> array); it returns a dict of output name ->
    array. `run(output_names, feeds)` returns a list, as onnxruntime's session does.

    Safe to call from several threads: a specialization's device buffers are reused between
    calls, so calls on one model take turns (a lock held from specialization to the last
    output read); each caller gets its own result arrays. Models do not share buffers, so
    threads calling different models run side by side."""

    def __init__(self, source: onnx.ModelProto | Graph | SegmentSource,
                 device: OpenCLDevice | None,
                 opt_level: int, strict: bool, tune: bool | TuneBudget, verify_passes: bool,
                 record_ir: bool = False, plan_memory: bool | None = None,
                 cache: bool | str | os.PathLike | BinaryCache | None = True) -> None:
        self._source = source
        # memory planning is part of O2 and up (docs/ARCHITECTURE.md); O0 and O1 keep the naive plan
        self.plan_memory = opt_level >= 2 if plan_memory is None else plan_memory
        self.device = device
        self.opt_level = opt_level
        self.strict = strict
        self.tune = tune
        self.tune_results: list[TuneResult] = []  # what tune= measured (ember tune prints it)
        self._verify = verify_passes
        self._record_ir = record_ir
        self.cache = cache  # the binary cache (runtime/cache.py): see compile()
        if isinstance(source, Graph):
            self._signature: dict[str, tuple[Dims, DType]] = {
                name: (graph_type.shape, graph_type.dtype)
                for name, graph_type in (
                    (n, source.type_of(v)) for n, v in source.input_values().items()
                )
            }
            self.output_names = [name for name, _ in source.outputs]
        elif isinstance(source, SegmentSource):  # a staged model's segment, at any size
            self._signature = dict(source.signature)
            self.output_names = list(source.output_names)
        else:
            self._signature = input_signature(source)
            self.output_names = [o.name for o in source.graph.output]
        self.input_names = list(self._signature)
        self._specializations: dict[tuple, _Specialization] = {}
        self._current: _Specialization | None = None
        self._imported = False  # the ONNX model's checks have run
        self._initializers: dict[str, np.ndarray] = {}  # its initializers, read once
        self._initializer_ids: set[int] = set()
        if isinstance(source, SegmentSource):
            self._initializer_ids = {id(array) for array in source.weights}
        self._generic: GenericPlans | None = None  # generic kernels over its free dims
        self.generic_kernels = True  # compile(generic_kernels=): see there
        # the weights, packed and on the device once for all input shapes
        self._packed = PackedConstants()
        self._shared_constants = SharedConstants(self._is_weight)
        # one call at a time per model: the executor's buffers are shared between calls
        self._lock = threading.RLock()
        # a model whose import stops at a node needing run-time values runs staged
        # (ember/staged.py): compiled segments with host nodes between them
        self._staged: StagedModel | None = None

    # -- compiling ------------------------------------------------------------------------
    @property
    def target(self) -> str:
        return self.device.info.target if self.device is not None else NUMPY

    def _where(self) -> str:
        if self.device is None:
            return "the numpy target"
        return f"{self.device.info.target} ({self.device.info.traits.name})"

    @property
    def dynamic(self) -> bool:
        """Whether an input has a dim the model does not fix (a named or unknown dim)."""
        return is_dynamic({name: dims for name, (dims, _) in self._signature.items()})

    def _specialize(self, shapes: Mapping[str, Sequence[int]] | None) -> _Specialization:
        """Compile for the input shapes that `shapes` gives or implies (named dims shared
        between inputs are one dim); a dim left unknown raises InputError naming it."""
        start = time.perf_counter()
        if isinstance(self._source, Graph):
            graph = self._source.copy()
            key = tuple(graph.type_of(v).shape for v in graph.input_values().values())
            resolved = dict(zip(self.input_names, key))
        else:
            resolved = resolve_shapes(
                {name: dims for name, (dims, _) in self._signature.items()}, shapes or {},
                hint="give it in compile()'s input_shapes, or call the model with arrays")
            key = tuple(resolved[name] for name in self.input_names)
        if key in self._specializations:
            self._current = self._specializations[key]
            return self._current
        target = self.device.target if self.device is not None else None
        if not isinstance(self._source, Graph):
            graph = self._import(resolved)
        records = self._lower(graph, target)
        if target is not None and (self.tune or self.opt_level >= 3):
            target = self._tuned_target(graph, target)
        plan = build_plan(graph, target, plan_memory=self.plan_memory,
                          pack_constants=self.opt_level >= 2, packed=self._packed)
        generalized = None
        if (target is not None and self.generic_kernels and self.dynamic
                and not isinstance(self._source, Graph)):
            generalized = self._generalize(plan, resolved, target)
            plan = generalized.plan
        if self.strict and self.device is not None and plan.host_steps:
            listed = ", ".join(f"{s.op} {s.name!r}" for s in plan.host_steps[:10])
            raise UnsupportedOpError(
                f"strict=True: {len(plan.host_steps)} step(s) have no kernel on "
                f"{self.device.info.traits.name} and would run on the host: {listed}"
            )
        if self.device is not None:  # before any build or allocation
            check_buffers(plan, plan.memory or build_memory_plan(plan), self.device.info.traits)
        if self.device is not None and target is not None:
            plan = self._build_isolated(graph, target, plan)
        executor = None
        if self.device is not None:
            traits = self.device.info.traits
            memory = plan.memory if plan.memory is not None else build_memory_plan(plan)
            with driver_failures(f"building the program and allocating "
                                 f"{len(memory.buffers)} buffers on {traits.name} for input "
                                 f"shapes {key}"):
                executor = OpenCLExecutor(plan, self.device, cache=self.cache,
                                          shared_constants=self._shared_constants)
        spec = _Specialization(key, graph, plan, executor, records,
                               time.perf_counter() - start)
        self._specializations[key] = spec
        self._current = spec
        while len(self._specializations) > KEPT_SHAPES:  # the least recently used goes
            del self._specializations[next(iter(self._specializations))]
        if self._specializations.keys() != {key} or generalized is not None:
            log.info("specialized %r on %s for input shapes %s in %.0f ms%s", graph.name,
                     self.target, key, spec.compile_seconds * 1e3, _generic_note(generalized))
        return spec

    def _specialize_or_stage(self, shapes: Mapping[str, Sequence[int]] | None
                             ) -> _Specialization | None:
        """The specialization for `shapes`, or None when the model runs staged: its import
        met a node whose output shapes depend on run-time values (self._staged runs it)."""
        if self._staged is not None:
            return None
        try:
            return self._specialize(shapes)
        except DataDependentError as exc:
            assert not isinstance(self._source, Graph)  # a Graph's shapes are all known
            log.info("%r runs staged: %s", self._source.graph.name, exc)
            self._staged = StagedModel(self._source, self._compile_segment,
                                       initializers=self._initializers)
            return None

    def _compile_segment(self, source: SegmentSource) -> CompiledModel:
        """A staged model's segment (or branch, or loop body) as a model of its own, with
        this model's settings; it compiles for each size at its first call, on generic
        kernels over its free dims."""
        segment = CompiledModel(source, self.device, self.opt_level, self.strict, False,
                                self._verify, self._record_ir, self.plan_memory,
                                cache=self.cache)
        segment.generic_kernels = self.generic_kernels
        return segment

    def _import(self, shapes: Mapping[str, Sequence[int]]) -> Graph:
        """The ONNX model as a Graph for these input shapes; the model's checks and its
        initializers' arrays are done once and reused for every later shape."""
        if isinstance(self._source, SegmentSource):
            return self._source.graph_at(shapes)
        assert not isinstance(self._source, Graph)
        graph = import_graph(self._source, input_shapes=shapes, checked=self._imported,
                             arrays=self._initializers)
        if not self._imported:
            self._initializer_ids = {id(array) for array in self._initializers.values()}
        self._imported = True
        return graph

    def _is_weight(self, array: np.ndarray) -> bool:
        """Whether a plan's constant is one every input shape shares: an initializer's array
        as imported (held by `_initializers`, so its id stays its own), or its packed form."""
        return id(array) in self._initializer_ids or self._packed.holds(array)

    def _lower(self, graph: Graph, target: Target | None) -> list[PassRecord]:
        """Check the sizes, then run the pass pipeline on `graph` (in place)."""
        # sizes first: a tensor no device or host can hold fails here, before any allocation
        if self.device is not None:
            check_tensors(graph, self.device.info.traits)
        else:
            check_tensors_on_host(graph)
        supports = None
        if target is not None:
            pack = self.opt_level >= 2

            def supports(g: Graph, node: int) -> bool:
                # the very spec the plan compiles (packable constants included)
                return lower(node_spec(g, node, pack_constants=pack), target) is not None

        ctx = PassContext(
            opt_level=self.opt_level,
            family=target.family.name if target is not None else "numpy",
            supports=supports,
        )
        manager = PassManager(build_pipeline(self.opt_level), verify=self._verify,
                              keep_text=self._record_ir)
        records = manager.run(graph, ctx)
        verify(graph)
        return records

    def _generalize(self, plan: ExecutionPlan, shapes: Mapping[str, Sequence[int]],
                    target: Target) -> Generalized:
        """`plan` on the model's generic kernels (runtime/generic_plans.py), so that a new
        shape reuses the program built for an earlier one."""
        if self._generic is None:
            def plan_at(sample: Mapping[str, Sequence[int]]) -> ExecutionPlan | None:
                try:
                    graph = self._import(sample)
                    self._lower(graph, target)
                    return build_plan(graph, target, plan_memory=False,
                                      pack_constants=self.opt_level >= 2, packed=self._packed)
                except Exception as exc:  # noqa: BLE001 - a sample is optional: a size
                    # the model does not take (or a pass fails at) gives no sample
                    log.debug("no sample plan at %s: %s", dict(sample), exc)
                    return None

            cache = resolve_cache(self.cache)
            self._generic = GenericPlans(
                {name: dims for name, (dims, _) in self._signature.items()}, plan_at,
                gpu=target.family.is_gpu,
                store=DiskStore(cache.root / GENERIC) if cache is not None else None)
        return self._generic.apply(plan, shapes)

    def _build_isolated(self, graph: Graph, target: Target, plan: ExecutionPlan
                        ) -> ExecutionPlan:
        """Build a cold program in workers first (runtime/opencl.py `prebuild`); a step
        whose kernel kills its worker runs on the host instead, with a warning (strict:
        CompileError naming op, node and signal), and the plan is made again."""
        assert self.device is not None
        for _ in range(3):  # each round can only move steps to the host
            crashes = prebuild(plan, self.device, cache=self.cache)
            if not crashes:
                break
            listed = "; ".join(f"{c.op} {c.name!r}: {c.reason}" for c in crashes)
            if self.strict:
                raise CompileError(f"strict=True: {len(crashes)} kernel(s) crashed the "
                                   f"driver of {self.device.info.traits.name}: {listed}")
            names = {c.name for c in crashes}
            for node in graph.nodes():
                if graph.node_name(node) in names:
                    graph.set_meta(node, "placement", HOST)
            for c in crashes:
                log.warning("%s %r runs on the host: its kernel %s crashed the driver of %s "
                            "(%s)", c.op, c.name, c.kernel, self.device.info.traits.name,
                            c.reason)
            plan = build_plan(graph, target, plan_memory=self.plan_memory,
                              pack_constants=self.opt_level >= 2, packed=self._packed)
        return plan

    def _tuned_target(self, graph: Graph, target: Target) -> Target:
        """The target carrying tuned params for this graph's MatMul / Conv kernels: tuned now
        where the TuningDB lacks them (tune=), else as the DB has them (opt_level 3)."""
        assert self.device is not None
        specs = [node_spec(graph, node, pack_constants=self.opt_level >= 2)
                 for node in graph.topological_order()
                 if graph.op(node) in TUNABLE_OPS
                 and graph.meta(node, "placement", HOST) == DEVICE]
        budget = self.tune if isinstance(self.tune, TuneBudget) else TuneBudget()
        tuned, results = tuned_target(specs, self.device, tune=bool(self.tune), budget=budget)
        self.tune_results.extend(results)
        return target.with_tuning(tuned.tuning)

    # -- saving ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a bundle (runtime/bundle.py) that `ember.load` runs without compiling: every
        input shape compiled so far (a model whose dims are all fixed is compiled first),
        with its plan and program binaries, the device and driver, and the ONNX model."""
        from ember.runtime.bundle import save_compiled

        with self._lock:
            if not self._specializations and not self.dynamic:
                self._specialize_or_stage(None)
            if self._staged is not None:
                raise UnsupportedOpError(
                    f"save(): {self._source.graph.name!r} runs staged (host nodes "
                    f"{self._staged.host_nodes() or 'between segments'} decide shapes at run "
                    f"time); a bundle holds fixed plans only, so staged models are not saved")
            specs = list(self._specializations.values())
            source = self._source
            return save_compiled(
                path, [(s.shapes, s.plan, s.executor.programs if s.executor else ())
                       for s in specs],
                name=source.name if isinstance(source, Graph) else source.graph.name,
                inputs=self._signature, output_names=self.output_names, device=self.device,
                opt_level=self.opt_level,
                model=None if isinstance(source, Graph) else source.SerializeToString())

    # -- calling --------------------------------------------------------------------------
    def _bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return bind_feeds(self._signature, args, kwargs)

    def _for_shapes(self, feeds: Mapping[str, np.ndarray]) -> _Specialization | None:
        """The specialization for the feeds' shapes; None when the model runs staged."""
        key = tuple(feeds[name].shape for name in self.input_names)
        spec = self._specializations.pop(key, None)
        if spec is None:
            log.debug("specializing for input shapes %s", key)
            spec = self._specialize_or_stage(
                {name: feeds[name].shape for name in self.input_names})
            if spec is None:
                return None
        else:
            self._specializations[key] = spec  # the most recently used last
        self._current = spec
        return spec

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        feeds = self._bind(args, kwargs)
        with self._lock:
            spec = self._for_shapes(feeds)
            if spec is None:
                return self._staged(feeds)
            with driver_failures(f"running the model on {self._where()} with input shapes "
                                 f"{spec.shapes}"):
                if spec.executor is None:
                    results = evaluate_graph(spec.graph, feeds)
                    return {name: np.array(value, copy=True) for name, value in results.items()}
                return spec.executor.run(feeds)

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, Any]
            ) -> list[np.ndarray]:
        """The outputs named (None: all, in the model's order) as a list in that order, for
        the feeds by input name: onnxruntime's `InferenceSession.run`."""
        return select_outputs(self, self.input_names, self.output_names, output_names, feeds)

    def profile(self, *args: Any, runs: int = 10, warmup: int = 1, **kwargs: Any) -> Profile:
        """Per-step times over `runs` calls after `warmup` unmeasured ones (the first call
        of a specialization also builds kernels): device time from OpenCL profiling events,
        host time for steps that ran through numpy (every node on the numpy target). Inputs
        as for a call; an input named `runs` or `warmup` goes in a feed dict."""
        check_counts(runs, warmup)
        feeds = self._bind(args, kwargs)
        with self._lock:
            spec = self._for_shapes(feeds)
            if spec is None:
                raise UnsupportedOpError(f"profile(): {self._staged.name!r} runs staged; "
                                         f"profile its segments (summary() lists them)")
            placement = {s.name: s.placement for s in spec.plan.steps}
            with driver_failures(f"profiling the model on {self._where()} with input shapes "
                                 f"{spec.shapes}"):
                return measure(
                    lambda: self._timed_steps(spec, feeds),
                    lambda name: placement.get(name, HOST), runs=runs, warmup=warmup,
                    title=f"profile of {spec.graph.name!r} on {self._where()}, input shapes "
                          f"{self._shapes_text([feeds[n].shape for n in self.input_names])}")

    @staticmethod
    def _timed_steps(spec: _Specialization, feeds: Mapping[str, np.ndarray]
                     ) -> list[tuple[str, str, float]]:
        """(step, op, seconds) of one call, in execution order."""
        if spec.executor is None:
            timings: list[tuple[str, str, float]] = []
            evaluate_graph(spec.graph, feeds, timings)
            return timings
        return spec.executor.run(feeds, profile=True)[1]

    # -- reporting ------------------------------------------------------------------------
    @property
    def staged(self) -> StagedModel | None:
        """The staged runtime when the model has host nodes between compiled segments
        (known once it compiled: at compile() for fixed shapes, else at the first call)."""
        return self._staged

    @property
    def graph(self) -> Graph:
        return self._active().graph

    @property
    def plan(self) -> ExecutionPlan:
        return self._active().plan

    @property
    def pass_records(self) -> list[PassRecord]:
        return self._active().records

    def _active(self) -> _Specialization:
        with self._lock:
            if self._current is None and self._specialize_or_stage(None) is None:
                raise UnsupportedOpError(
                    f"{self._staged.name!r} runs staged: it has no single graph or plan; "
                    f"summary() lists its segments and host nodes")
            assert self._current is not None
            return self._current

    @property
    def stats(self) -> ModelStats:
        return model_stats(self.plan, on_device=self.device is not None)

    def summary(self, shapes: Mapping[str, Sequence[int]] | None = None) -> str:
        """The steps, placement, kernels and memory of the specialization for `shapes`
        (compiled now if it was not; dims as for compile()'s input_shapes), or without
        shapes of the one that ran last. The title names the input shapes it describes."""
        with self._lock:
            if self._staged is not None or (self._current is None and self.dynamic is False
                                            and self._specialize_or_stage(None) is None):
                return self._staged.summary()
            if shapes is None:
                spec = self._active()
            else:
                previous = self._current
                spec = self._specialize(shapes)
                if previous is not None:  # the model's "last run" stays the last run
                    self._current = previous
        on_device = self.device is not None
        return format_summary(spec.plan, model_stats(spec.plan, on_device=on_device),
                              on_device=on_device,
                              title=f"ember model {spec.graph.name!r} on {self._where_long()}, "
                                    f"opt_level {self.opt_level}, input shapes "
                                    f"{self._shapes_text(spec.shapes)}")

    def _where_long(self) -> str:
        if self.device is None:
            return f"{NUMPY} (the numpy executor)"
        info = self.device.info
        return f"{info.target} {info.traits.name} (family {info.family.name})"

    def _shapes_text(self, shapes: Sequence[Sequence[int]]) -> str:
        return ", ".join(f"{name}[{', '.join(map(str, shape))}]"
                         for name, shape in zip(self.input_names, shapes))

    def __repr__(self) -> str:
        """One line: name, target, opt level, the signature, and how many input shapes
        have been compiled (nothing is compiled to answer)."""
        source = self._source
        name = source.name if isinstance(source, (Graph, SegmentSource)) else source.graph.name
        where = NUMPY if self.device is None else (f"{self.device.info.target} "
                                                  f"{self.device.info.traits.name}")
        inputs = ", ".join(_signature_text(n, dims, dtype)
                           for n, (dims, dtype) in self._signature.items())
        outputs = ", ".join(_signature_text(n, *self._output_type(n))
                            for n in self.output_names)
        count = len(self._specializations)
        return (f"<ember.CompiledModel {name!r} on {where}, opt_level {self.opt_level}, "
                f"inputs {inputs}; outputs {outputs}; "
                f"{count} shape{'' if count == 1 else 's'} compiled>")

    def _output_type(self, name: str) -> tuple[Dims | None, DType | None]:
        """An output's declared dims and dtype, None where the model does not say."""
        if isinstance(self._source, Graph):
            value = dict(self._source.outputs)[name]
            graph_type = self._source.type_of(value)
            return graph_type.shape, graph_type.dtype
        if isinstance(self._source, SegmentSource):  # its outputs' sizes follow its inputs'
            return None, None
        info = next(o for o in self._source.graph.output if o.name == name)
        try:
            return value_info_type(info)
        except (DTypeError, UnsupportedOpError):  # not a tensor, or a dtype ember lacks
            return None, None


def _signature_text(name: str, dims: Dims | None, dtype: DType | None) -> str:
    """'input_ids[1, seq] int64': ints and dim names; '?' for a dim nobody named."""
    shape = "" if dims is None else "[" + ", ".join(
        str(d) if isinstance(d, int) else (d or "?") for d in dims) + "]"
    return f"{name}{shape}" + (f" {dtype}" if dtype is not None else "")


def _generic_note(generalized: Generalized | None) -> str:
    if generalized is None:
        return ""
    note = (f"; {generalized.generic_launches} of {generalized.launches} launches on "
            f"generic kernels")
    return note + (" (sampled other sizes)" if generalized.sampled else "")


def segment_compiler(target: str | None = None) -> Callable[[SegmentSource], CompiledModel]:
    """What compiles a staged model's segments for `target` with compile()'s defaults (for
    a StagedModel made outside a CompiledModel: the ONNX backend's)."""
    with driver_failures(f"opening the target {target or 'default'!s}"):
        device = with_threads(resolve_target(target), None)

    def compile_segment(source: SegmentSource) -> CompiledModel:
        return CompiledModel(source, device, opt_level=2, strict=False, tune=False,
                             verify_passes=False)

    return compile_segment


def compile(  # noqa: A001 - the public name of the API
    model: str | os.PathLike | bytes | onnx.ModelProto | Graph,
    *,
    target: str | None = None,
    opt_level: int = 2,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    tune: bool | TuneBudget = False,
    strict: bool = False,
    verify_passes: bool = False,
    record_ir: bool = False,
    plan_memory: bool | None = None,
    cache: bool | str | os.PathLike | BinaryCache | None = True,
    threads: int | None = None,
    generic_kernels: bool = True,
) -> CompiledModel:
    """Compile an ONNX model (path, bytes or ModelProto), an ember Graph, or the result of
    ember.quantize (its QDQ `.model`) for a target.

    target: None (first OpenCL GPU, else first OpenCL device, else numpy), "numpy" (alias
    "cpu"), "opencl" or "opencl:P:D". input_shapes gives inputs' shapes: a named dim shared between
    inputs is one dim, so one input's shape fixes it for the others, and a dim left unknown is
    an InputError naming it. Without input_shapes, a model with dims it does not fix compiles
    at its first call, for the arrays' shapes. strict refuses host fallback. verify_passes
    runs the IR verifier after every pass; record_ir keeps the IR text after every pass
    (`ember show --passes`).
    tune: measure the MatMul / Conv kernels' candidate parameters on the device (within
    TuneBudget()'s 60 s per model, or the TuneBudget given), keep them in the TuningDB
    (tuning/db.py) and build with the fastest correct ones; kernels already in the
    DB are not measured again. opt_level 3 uses what the DB holds without tuning.
    plan_memory: device buffer sharing (runtime/memory.py); by default on from opt_level 2,
    as part of the optimizations. False gives one buffer per tensor (the naive plan), for
    debugging a suspected wrong share; True plans memory at O0 and O1 too.
    cache: the binary cache of built programs (runtime/cache.py): True uses the one in
    EMBER_CACHE_DIR or the user cache directory, False builds from source every time, a
    directory or a BinaryCache uses that one.
    threads: how many threads run the kernels. On an OpenCL CPU device (PoCL) the model runs
    on a sub-device of that many compute units (device fission; a device that cannot be
    partitioned runs whole, with a warning); a GPU ignores it (a log line); numpy has no
    thread setting (its BLAS reads OMP_NUM_THREADS when the process starts), a warning says so.
    generic_kernels: a model with dims it does not fix runs every input shape on kernels
    that take the varying sizes as arguments (runtime/generic_plans.py), built once, so a new
    shape costs planning only; False builds each shape's kernels with its sizes written in
    (for comparison and debugging).
    """
    with driver_failures(f"opening the target {target or 'default'!s}"):
        device = with_threads(resolve_target(target), threads)
    if isinstance(getattr(model, "model", None), onnx.ModelProto):
        model = model.model  # a QuantizedModel; read by attribute, quantization sits above
    source = model if isinstance(model, Graph) else load_model(model)
    compiled = CompiledModel(source, device, opt_level, strict, tune, verify_passes, record_ir,
                             plan_memory, cache=cache)
    compiled.generic_kernels = generic_kernels
    # A model with dims nobody gave compiles at its first call, for the arrays' shapes;
    # input_shapes (or tune=, which measures kernels now) compiles now, every dim known.
    if input_shapes is not None or tune or not compiled.dynamic:
        compiled._specialize_or_stage(input_shapes)
    return compiled
