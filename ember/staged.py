"""Staged execution: models whose shapes depend on values computed at run time.

The import stops at a node that needs run-time values (frontends/onnx/partial.py): what comes
before compiles as one segment; the node runs on the host once the segment has produced its
inputs; what comes after is imported again as a sub-model over the values known by then,
compiled for their shapes, and so on. Every stage's plans are cached by the shapes (and
the few values frozen into it) they were made for, so a later call with the same shapes
compiles nothing. Branches and loop bodies run as compiled sub-models the same way: a Loop's
body compiles once and its kernels run every iteration.

A segment's sizes change from call to call (the boxes an NMS keeps), so each segment of a
stage is one compiled model over all of them (`SegmentSource`): the dims seen to vary, and
the ones the ONNX graph leaves free, are free dims of that model, which runs every size on
its generic kernels (runtime/generic_plans.py). A new size then costs planning, not a
program build.

Host values: tensors are numpy arrays, sequences are lists of arrays, an empty optional is
None.
"""

from __future__ import annotations

import hashlib
import threading
from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ember.errors import (
    EmberError,
    InputError,
    NonConstantInputError,
)
from ember.frontends.onnx.checks import default_opset, node_label
from ember.frontends.onnx.control_flow import free_names, node_reads
from ember.frontends.onnx.partial import import_segment
from ember.host_nodes import run_host_node
from ember.ir import DType, Graph, TensorType

__all__ = ["CompiledSegment", "Compiler", "SegmentSource", "StagedModel"]

Env = Mapping[str, Any]


Dims = tuple[int | str | None, ...]
Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class SegmentSource:
    """A stage's segment at any sizes of its free dims: what the compiler makes one model of.
    `signature` holds the segment's tensor inputs (a str dim is free); `graph_at(shapes)`
    imports the segment at those sizes, refusing sizes at which it takes another form (other
    outputs), so that every graph the model plans computes the same values; `weights` are
    the constants every size shares (kept on the device once)."""

    name: str
    signature: Mapping[str, tuple[Dims, DType]]
    output_names: tuple[str, ...]
    weights: tuple[np.ndarray, ...]
    graph_at: Callable[[Shapes], Graph]


class CompiledSegment:
    """What the compiler hands back for a SegmentSource: called with its inputs by name (at
    any sizes of its free dims), returns its outputs by name; `summary()` describes the
    steps of the sizes it ran last."""

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]: ...

    def summary(self) -> str: ...


Compiler = Callable[[SegmentSource], CompiledSegment]

# Frozen inputs up to this many bytes are keyed by their bytes, larger ones by a digest.
_KEY_BYTES = 4096


def _value_key(name: str, value: Any, frozen: bool) -> tuple:
    """How one input enters a plan's cache key: its kind and shape, and its value when the
    segment was compiled with it frozen (a computed Reshape shape, a Slice's start)."""
    if value is None:
        return (name, "none")
    if isinstance(value, list):
        return (name, "seq", tuple((a.shape, str(a.dtype)) for a in map(np.asarray, value)))
    array = np.asarray(value)
    if not frozen:
        return (name, array.shape, str(array.dtype))
    # object (string) arrays hold pointers: key them by their values
    data = (repr(array.tolist()).encode() if array.dtype.hasobject
            else np.ascontiguousarray(array).tobytes())
    if len(data) > _KEY_BYTES:
        data = hashlib.blake2b(data, digest_size=16).digest()
    return (name, array.shape, str(array.dtype), data)


def _tensor_type(value: Any) -> TensorType | None:
    if value is None or isinstance(value, list):
        return None  # a host value: the nodes reading it run on the host
    array = np.asarray(value)
    return TensorType(tuple(array.shape), DType.from_numpy(array.dtype))


def _declared_dims(infos: Sequence[onnx.ValueInfoProto]) -> dict[str, Dims]:
    """The dims a graph declares for its tensor inputs that have a shape: an int, or the
    dim's name (None when unnamed) where the graph leaves it free."""
    found: dict[str, Dims] = {}
    for info in infos:
        tensor = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor.HasField("shape"):
            found[info.name] = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value >= 0
                else (d.dim_param or None) for d in tensor.shape.dim)
    return found


def _key_text(key: tuple) -> str:
    if key[1] == "none":
        return f"{key[0]} (empty optional)"
    if key[1] == "seq":
        return f"{key[0]} (sequence of {len(key[2])})"
    return f"{key[0]}[{', '.join(map(str, key[1]))}]" + (" (frozen)" if len(key) > 3 else "")


class _SegmentModel:
    """One compiled model for one form of a stage's segment (its inputs' dtypes and ranks,
    its outputs, the values frozen into it), over every size it is called with. Its free
    dims are the ones the graph declares free and the ones that varied between the sizes
    seen so far (dims that were equal at every size so far are one dim). A size that does
    not fit (a fixed dim varies, two dims that were equal differ) makes a new model with
    more free dims; the generic kernels learned so far are kept in the cache's generic/
    part and the built programs in the process, so the new model builds little."""

    def __init__(self, stage: Stage, types: Mapping[str, TensorType | None],
                 constants: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> None:
        self.stage = stage
        self.dtypes = {name: t.dtype for name, t in types.items() if t is not None}
        self.host_inputs = [name for name, t in types.items() if t is None]
        self.constants = dict(constants)
        self.outputs = outputs
        self.seen: dict[tuple, Mapping[str, tuple[int, ...]]] = {}
        self.signature: dict[str, tuple[Dims, DType]] | None = None
        self.model: CompiledSegment | None = None
        self.ran = False  # the current model ran at least once
        self._pending: tuple[tuple, Graph] | None = None

    @staticmethod
    def _shapes_key(shapes: Shapes) -> tuple:
        return tuple((name, tuple(shape)) for name, shape in sorted(shapes.items()))

    def prepare(self, shapes: Mapping[str, tuple[int, ...]], graph: Graph) -> None:
        """Make the model take `shapes`; `graph` is the segment imported at them (the
        model's plan for them starts from it rather than importing again)."""
        key = self._shapes_key(shapes)
        self.seen.setdefault(key, dict(shapes))
        signature = self._signature()
        if signature != self.signature:
            weights = tuple(a for a in self.constants.values() if isinstance(a, np.ndarray))
            self.model = self.stage.runtime.compiler(SegmentSource(
                self.stage.name, signature, self.outputs, weights, self._graph_at))
            self.signature = signature
            self.ran = False
        self._pending = (key, graph)

    def _signature(self) -> dict[str, tuple[Dims, DType]]:
        first = next(iter(self.seen.values()))
        declared = {}
        for name in self.dtypes:
            dims = self.stage.declared.get(name, ())
            # no usable declaration: every dim is learned
            declared[name] = dims if len(dims) == len(first[name]) else (0,) * len(first[name])
        # a dim name the sizes seen contradict (a body's loose declaration) names nothing
        sizes_of: dict[str, set[tuple[int, ...]]] = {}
        for name, dims in declared.items():
            for axis, dim in enumerate(dims):
                if isinstance(dim, str):
                    sizes_of.setdefault(dim, set()).add(
                        tuple(shapes[name][axis] for shapes in self.seen.values()))
        shared: dict[tuple[int, ...], str] = {}  # a learned dim's sizes so far -> its name
        signature = {}
        for name, dtype in self.dtypes.items():
            dims: list[int | str | None] = []
            for axis, (size, says) in enumerate(zip(first[name], declared[name])):
                sizes = tuple(shapes[name][axis] for shapes in self.seen.values())
                if isinstance(says, str) and len(sizes_of[says]) > 1:
                    says = None
                if not isinstance(says, int):
                    dims.append(says)
                elif len(set(sizes)) == 1:
                    dims.append(size)
                else:
                    dims.append(shared.setdefault(sizes, f"{name}.{axis}"))
            signature[name] = (tuple(dims), dtype)
        return signature

    def _graph_at(self, shapes: Shapes) -> Graph:
        """The segment imported at `shapes`; EmberError where it takes another form there
        (a value that folds at these sizes, a node deferred), so no sample of another form
        stands for this one."""
        key = self._shapes_key(shapes)
        if self._pending is not None and self._pending[0] == key:
            graph, self._pending = self._pending[1], None
            return graph
        stage = self.stage
        types: dict[str, TensorType | None] = {
            name: TensorType(tuple(shapes[name]), dtype) for name, dtype in self.dtypes.items()}
        types.update(dict.fromkeys(self.host_inputs))
        segment = import_segment(stage.name, stage.nodes, stage.runtime.opset, types,
                                 self.constants, stage.outputs)
        outputs = tuple(name for name, _ in segment.graph.outputs)
        if outputs != self.outputs:
            raise EmberError(f"{stage.name}: at input shapes {dict(shapes)} the segment "
                             f"computes {list(outputs)}, not {list(self.outputs)}")
        return segment.graph

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        assert self.model is not None
        results = self.model(**feeds)
        self.ran = True
        return results

    def describe(self, lines: list[str], pad: str) -> None:
        assert self.signature is not None
        free = sorted({str(d) for dims, _ in self.signature.values() for d in dims
                       if not isinstance(d, int)})
        lines.append(f"{pad}  one model for every size of this segment "
                     f"({'free dims ' + ', '.join(free) if free else 'no dim varied yet'}):")
        if self.model is not None and self.ran:
            lines.extend(f"{pad}    {line}" for line in self.model.summary().splitlines())


@dataclass
class _Plan:
    """One stage planned for one input signature: its segment's model (shared by the plans
    of every size of that segment), the host node and the stage after it."""
    compiled: _SegmentModel | None
    segment_inputs: list[str]
    constants: dict[str, np.ndarray]
    host: onnx.NodeProto | None
    rest: Stage | None
    reason: str


class _Runtime:
    """What every stage of one model shares: the compiler, the sub-models of its branches
    and bodies, and counts of what was compiled."""

    def __init__(self, compiler: Compiler, opset: int, name: str) -> None:
        self.compiler = compiler
        self.opset = opset
        self.name = name
        self.subgraphs: dict[int, tuple[onnx.GraphProto, Stage]] = {}
        self.initializers: dict[str, np.ndarray] = {}  # the model's, shared by every stage
        self.compilations = 0  # segments compiled so far, every stage together
        self.lock = threading.RLock()

    def body(self, graph: onnx.GraphProto) -> Stage:
        """The stage of a branch or body, made once per subgraph: its inputs are its formal
        inputs and the outer names it captures; the model's initializers it captures stay
        constants (other captured values may differ between calls: they are inputs)."""
        found = self.subgraphs.get(id(graph))
        if found is None:
            captured = free_names(graph)
            known = {n: self.initializers[n] for n in captured if n in self.initializers}
            for tensor in graph.initializer:
                known[tensor.name] = numpy_helper.to_array(tensor)
            stage = Stage(f"{self.name}/{graph.name or 'body'}", list(graph.node), self,
                          inputs=[i.name for i in graph.input] + [n for n in captured
                                                                  if n not in known],
                          outputs=[o.name for o in graph.output], constants=known,
                          freeze=True, declared=_declared_dims(graph.input))
            found = self.subgraphs[id(graph)] = (graph, stage)
        return found[1]


class Stage:
    """An ONNX (sub)graph run over the values it reads: compiled up to its first host node,
    then that node, then the rest as another stage."""

    def __init__(self, name: str, nodes: Sequence[onnx.NodeProto], runtime: _Runtime, *,
                 inputs: Sequence[str], outputs: Sequence[str],
                 constants: Mapping[str, np.ndarray], freeze: bool,
                 declared: Mapping[str, Dims] | None = None) -> None:
        self.name = name
        self.declared = dict(declared or {})  # dims the graph declares for its inputs
        self.nodes = list(nodes)
        self.runtime = runtime
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.constants = dict(constants)
        self.freeze = freeze  # inputs that must be compile-time values are frozen into it
        self.frozen: set[str] = set()
        self.plans: dict[tuple, _Plan] = {}
        self.segments: dict[tuple, _SegmentModel] = {}  # one per form of the segment

    def _key(self, env: Env) -> tuple:
        return tuple(_value_key(n, env[n], n in self.frozen) for n in self.inputs)

    def __call__(self, env: Env) -> dict[str, Any]:
        missing = [n for n in self.inputs if n not in env]
        if missing:
            raise InputError(f"{self.name}: no value for {missing}")
        plan = self.plans.get(self._key(env))
        new = plan is None
        if plan is None:
            plan = self._plan(env)
        values: dict[str, Any] = {n: env[n] for n in self.inputs}
        values.update(plan.constants)
        if plan.compiled is not None:
            values.update(plan.compiled(**{n: values[n] for n in plan.segment_inputs}))
        if new:  # only once its segment compiled and ran: a failure keeps none
            self.plans[self._key(env)] = plan
        if plan.host is not None:
            values.update(run_host_node(plan.host, ChainMap(values, self.constants),
                                        self.runtime))
        if plan.rest is not None:
            values.update(plan.rest(ChainMap(values, self.constants)))
        lookup = ChainMap(values, self.constants)
        return {n: lookup[n] for n in self.outputs}

    def _plan(self, env: Env) -> _Plan:
        while True:
            types = {n: _tensor_type(env[n]) for n in self.inputs if n not in self.frozen}
            constants = {**self.constants, **{n: np.asarray(env[n]) for n in self.frozen}}
            try:
                segment = import_segment(self.name, self.nodes, self.runtime.opset, types,
                                         constants, self.outputs)
                break
            except NonConstantInputError as exc:
                new = set(exc.names) & set(self.inputs) - self.frozen
                if not (self.freeze and new):
                    raise
                self.frozen |= new
        segment_inputs = segment.inputs
        compiled = None
        if segment.graph.outputs:
            compiled = self._segment_model(types, constants, segment.graph)
            self.runtime.compilations += 1
        host, rest = None, None
        if segment.deferred:
            host, later = segment.deferred[0], segment.deferred[1:]
            if later:
                known = {**constants, **segment.constants}
                produced = {n for node in later for n in node.output if n}
                reads = [n for node in later for n in node_reads(node)]
                rest_outputs = [n for n in self.outputs if n in produced]
                rest = Stage(f"{self.name}/{node_label(later[0])}", later, self.runtime,
                             inputs=[n for n in dict.fromkeys(reads)
                                     if n not in produced and n not in known],
                             outputs=rest_outputs,
                             constants={n: known[n] for n in dict.fromkeys(reads)
                                        if n in known and n not in produced},
                             freeze=True)
        return _Plan(compiled, segment_inputs, segment.constants, host, rest, segment.reason)

    def _segment_model(self, types: Mapping[str, TensorType | None],
                       constants: Mapping[str, np.ndarray], graph: Graph) -> _SegmentModel:
        """The model of the segment's form that `graph` (imported at these sizes) takes,
        made ready for them."""
        tensors = {n: t for n, t in types.items() if t is not None}
        outputs = tuple(name for name, _ in graph.outputs)
        key = (tuple((n, str(t.dtype), len(t.shape)) for n, t in tensors.items()), outputs,
               tuple(_value_key(n, constants[n], True) for n in sorted(self.frozen)))
        found = self.segments.get(key)
        if found is None:
            found = self.segments[key] = _SegmentModel(self, types, constants, outputs)
        found.prepare({n: t.shape for n, t in tensors.items()}, graph)
        return found

    def describe(self, lines: list[str], depth: int = 0) -> None:
        """What this stage compiled and what runs on the host, for summary()."""
        pad = "  " * depth
        described: set[int] = set()
        for key, plan in self.plans.items():
            shapes = ", ".join(_key_text(k) for k in key)
            lines.append(f"{pad}stage {self.name!r} for inputs {shapes or '(none)'}:")
            if plan.compiled is not None and id(plan.compiled) in described:
                lines.append(f"{pad}  the segment's model above, at these sizes")
            elif plan.compiled is not None:
                described.add(id(plan.compiled))
                plan.compiled.describe(lines, pad)
            if plan.host is not None:
                lines.append(f"{pad}  host: {node_label(plan.host)} ({plan.reason})")
            if plan.rest is not None:
                plan.rest.describe(lines, depth + 1)


class StagedModel:
    """A model with host nodes between compiled segments. Called with a dict of input name
    -> value (array, list for a sequence, None for an empty optional); returns the outputs
    by name. Calls take turns (the stages' caches are shared)."""

    def __init__(self, model: onnx.ModelProto, compiler: Compiler, *,
                 freeze_inputs: bool = False,
                 initializers: Mapping[str, np.ndarray] | None = None) -> None:
        graph = model.graph
        arrays = dict(initializers or {})
        for tensor in graph.initializer:
            if tensor.name not in arrays:
                arrays[tensor.name] = numpy_helper.to_array(tensor)
        self.name = graph.name or "model"
        self.runtime = _Runtime(compiler, default_opset(model), self.name)
        self.runtime.initializers = arrays
        self.input_names = [i.name for i in graph.input if i.name not in arrays]
        self.output_names = [o.name for o in graph.output]
        self.root = Stage(self.name, list(graph.node), self.runtime, inputs=self.input_names,
                          outputs=self.output_names, constants=arrays, freeze=freeze_inputs,
                          declared=_declared_dims(graph.input))

    def __call__(self, feeds: Env) -> dict[str, Any]:
        with self.runtime.lock:
            return self.root(feeds)

    @property
    def compilations(self) -> int:
        """How many segments (of the model, its branches and bodies) have been compiled."""
        return self.runtime.compilations

    def host_nodes(self) -> list[str]:
        """The nodes that ran on the host between segments, so far (branches and bodies
        included), each as 'Op name'."""
        found: list[str] = []

        def visit(stage: Stage) -> None:
            for plan in stage.plans.values():
                if plan.host is not None:
                    found.append(node_label(plan.host))
                if plan.rest is not None:
                    visit(plan.rest)

        visit(self.root)
        for _, stage in self.runtime.subgraphs.values():
            visit(stage)
        return list(dict.fromkeys(found))

    def summary(self) -> str:
        lines = [(f"staged model {self.name!r}: compiled segments with host nodes between "
                  f"them ({self.compilations} segment(s) compiled so far)")]
        self.root.describe(lines)
        for graph, stage in self.runtime.subgraphs.values():
            lines.append(f"subgraph {graph.name or 'body'!r} (a branch or loop body):")
            stage.describe(lines, 1)
        if not self.root.plans:
            lines.append("  (nothing compiled yet: segments compile at the first call)")
        return "\n".join(lines)
