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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ember.runtime.cache import BinaryCache
from ember.codegen.families import Target
from ember.codegen.registry import lower
from ember.codegen.params import TUNABLE_OPS
from ember.tuning.tuner import TuneBudget, TuneResult, tuned_target
from ember.errors import CompileError, DTypeError, InputError, ShapeError, UnsupportedOpError
from ember.frontends.dims import bind_named_dims, dims_text, is_dynamic, resolve_shapes
from ember.frontends.onnx import import_graph, input_signature, load_model
from ember.ir import DType, Graph, verify
from ember.lowering import PassContext, PassManager, PassRecord, build_pipeline
from ember.runtime.device import OpenCLDevice, resolve_target
from ember.runtime.memory import build_memory_plan
from ember.runtime.numpy import evaluate_graph
from ember.runtime.opencl import OpenCLExecutor, prebuild
from ember.runtime.plan import DEVICE, HOST, ExecutionPlan, build_plan, node_spec
from ember.summary import ModelStats, format_summary, model_stats
from ember.runtime.resources import (
    check_buffers,
    check_tensors,
    check_tensors_on_host,
    driver_failures,
)

__all__ = ["compile", "CompiledModel", "ModelStats"]

log = logging.getLogger(__name__)

Dims = tuple[int | str | None, ...]


@dataclass
class _Specialization:
    shapes: tuple[tuple[int, ...], ...]
    graph: Graph
    plan: ExecutionPlan
    executor: OpenCLExecutor | None
    records: list[PassRecord]
    compile_seconds: float


class CompiledModel:
    """A model compiled for one target. Call it with numpy arrays (by input name or by
    position); it returns a dict of output name -> array.

    Safe to call from several threads: a specialization's device buffers are reused between
    calls, so calls on one model take turns (a lock held from specialization to the last
    output read); each caller gets its own result arrays. Models do not share buffers, so
    threads calling different models run side by side."""

    def __init__(self, source: onnx.ModelProto | Graph, device: OpenCLDevice | None,
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
        else:
            self._signature = input_signature(source)
            self.output_names = [o.name for o in source.graph.output]
        self.input_names = list(self._signature)
        self._specializations: dict[tuple, _Specialization] = {}
        self._current: _Specialization | None = None
        # one call at a time per model: the executor's buffers are shared between calls
        self._lock = threading.RLock()

    # -- compiling ------------------------------------------------------------------------
    @property
    def target(self) -> str:
        return self.device.info.target if self.device is not None else "cpu"

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
        else:
            resolved = resolve_shapes(
                {name: dims for name, (dims, _) in self._signature.items()}, shapes or {},
                hint="give it in compile()'s input_shapes, or call the model with arrays")
            key = tuple(resolved[name] for name in self.input_names)
            if key not in self._specializations:
                graph = import_graph(self._source, input_shapes=resolved)
        if key in self._specializations:
            self._current = self._specializations[key]
            return self._current
        # sizes first: a tensor no device or host can hold fails here, before any allocation
        if self.device is not None:
            check_tensors(graph, self.device.info.traits)
        else:
            check_tensors_on_host(graph)
        target = self.device.target if self.device is not None else None
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
        if target is not None and (self.tune or self.opt_level >= 3):
            target = self._tuned_target(graph, target)
        plan = build_plan(graph, target, plan_memory=self.plan_memory,
                          pack_constants=self.opt_level >= 2)
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
                executor = OpenCLExecutor(plan, self.device, cache=self.cache)
        spec = _Specialization(key, graph, plan, executor, records,
                               time.perf_counter() - start)
        self._specializations[key] = spec
        self._current = spec
        return spec

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
                              pack_constants=self.opt_level >= 2)
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

    # -- calling --------------------------------------------------------------------------
    def _bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if len(args) > len(self.input_names):
            raise InputError(f"model takes {len(self.input_names)} input(s) "
                             f"{self.input_names}, got {len(args)} positional")
        feeds: dict[str, Any] = dict(zip(self.input_names, args))
        for name, value in kwargs.items():
            if name not in self._signature:
                raise InputError(f"unknown input {name!r}; the model's inputs are {self.input_names}")
            if name in feeds:
                raise InputError(f"input {name!r} given both by position and by name")
            feeds[name] = value
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"missing input(s) {missing}; the model's inputs are {self.input_names}")
        bound = {}
        for name, value in feeds.items():
            dims, dtype = self._signature[name]
            array = np.asarray(value)
            if array.dtype != dtype.np_dtype:
                raise DTypeError(f"input {name!r} expects dtype {dtype}, got {array.dtype}")
            if array.ndim != len(dims):
                raise ShapeError(f"input {name!r} expects rank {len(dims)} shape "
                                 f"{dims_text(dims)}, got shape {array.shape}")
            for axis, (want, got) in enumerate(zip(dims, array.shape)):
                if isinstance(want, int) and want != got:
                    raise ShapeError(f"input {name!r} expects shape {dims_text(dims)}, got "
                                     f"{array.shape} (dim {axis}: {got} != {want})")
            bound[name] = array
        # inputs whose dims share a name must agree on it, before anything runs
        bind_named_dims({name: dims for name, (dims, _) in self._signature.items()},
                        {name: array.shape for name, array in bound.items()}, "the call")
        return bound

    def _for_shapes(self, feeds: Mapping[str, np.ndarray]) -> _Specialization:
        key = tuple(feeds[name].shape for name in self.input_names)
        spec = self._specializations.get(key)
        if spec is None:
            log.info("specializing for input shapes %s", key)
            spec = self._specialize({name: feeds[name].shape for name in self.input_names})
        self._current = spec
        return spec

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        feeds = self._bind(args, kwargs)
        with self._lock:
            spec = self._for_shapes(feeds)
            with driver_failures(f"running the model on {self._where()} with input shapes "
                                 f"{spec.shapes}"):
                if spec.executor is None:
                    results = evaluate_graph(spec.graph, feeds)
                    return {name: np.array(value, copy=True) for name, value in results.items()}
                return spec.executor.run(feeds)

    def profile(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Per-step timings of one call: device time from OpenCL profiling events, host time
        for steps that ran through numpy."""
        feeds = self._bind(args, kwargs)
        with self._lock:
            spec = self._for_shapes(feeds)
            with driver_failures(f"profiling the model on {self._where()} with input shapes "
                                 f"{spec.shapes}"):
                if spec.executor is None:
                    return _profile_numpy(spec.graph, feeds)
                _, timings = spec.executor.run(feeds, profile=True)
        by_name = {s.name: s for s in spec.plan.steps}
        return [
            {"step": name, "op": op, "placement": by_name[name].placement, "seconds": seconds}
            for name, op, seconds in timings
        ]

    # -- reporting ------------------------------------------------------------------------
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
            if self._current is None:
                self._specialize(None)
            assert self._current is not None
            return self._current

    @property
    def stats(self) -> ModelStats:
        return model_stats(self.plan, on_device=self.device is not None)

    def summary(self) -> str:
        if self.device is not None:
            t = self.device.info.traits
            where = f"{self.target} {t.name} (family {self.device.info.family.name})"
        else:
            where = "cpu (numpy executor)"
        return format_summary(self.plan, self.stats, on_device=self.device is not None,
                              title=f"ember model {self.graph.name!r} on {where}, "
                                    f"opt_level {self.opt_level}")


def _profile_numpy(graph: Graph, feeds: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    from ember.runtime.numpy import evaluate_node
    from ember.ir import Value

    env: dict[Value, np.ndarray] = {}
    rows = []
    for node in graph.topological_order():
        op = graph.op(node)
        if op == "Input":
            env[Value(node, 0)] = feeds[graph.node_name(node)]
            continue
        start = time.perf_counter()
        results = evaluate_node(graph, node, [env[v] for v in graph.inputs_of(node)])
        if op != "Constant":
            rows.append({"step": graph.node_name(node), "op": op, "placement": HOST,
                         "seconds": time.perf_counter() - start})
        for port, r in enumerate(results):
            env[Value(node, port)] = r
    return rows


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
) -> CompiledModel:
    """Compile an ONNX model (path, bytes or ModelProto), an ember Graph, or the result of
    ember.quantize (its QDQ `.model`) for a target.

    target: None (first OpenCL GPU, else first OpenCL device, else numpy), "cpu" (numpy),
    "opencl" or "opencl:P:D". input_shapes gives inputs' shapes: a named dim shared between
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
    """
    with driver_failures(f"opening the target {target or 'default'!s}"):
        device = resolve_target(target)
    if isinstance(getattr(model, "model", None), onnx.ModelProto):
        model = model.model  # a QuantizedModel; read by attribute, quantization sits above
    source = model if isinstance(model, Graph) else load_model(model)
    compiled = CompiledModel(source, device, opt_level, strict, tune, verify_passes, record_ir,
                             plan_memory, cache=cache)
    # A model with dims nobody gave compiles at its first call, for the arrays' shapes;
    # input_shapes (or tune=, which measures kernels now) compiles now, every dim known.
    if input_shapes is not None or tune or not compiled.dynamic:
        compiled._specialize(input_shapes)
    return compiled
