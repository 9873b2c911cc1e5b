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
from onnx import helper, numpy_helper

from ember.errors import (
    DTypeError,
    EmberError,
    InputError,
    NonConstantInputError,
    ShapeError,
    UnsupportedOpError,
)
from ember.frontends.onnx.checks import default_opset, node_label
from ember.frontends.onnx.control_flow import free_names, node_reads
from ember.frontends.onnx.partial import import_segment
from ember.ir import DType, Graph, TensorType
from ember.runtime.numpy import evaluate_graph

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


# -- host nodes -----------------------------------------------------------------------------
def run_host_node(node: onnx.NodeProto, values: Env, runtime: _Runtime) -> dict[str, Any]:
    """Run one deferred node on host values; its outputs by name."""
    args = [values[n] if n else None for n in node.input]
    handler = HOST_OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if handler is not None:
        results = handler(node, args, runtime, values)
    else:
        results = _fold_node(node, args, runtime)
    return {name: result for name, result in zip(node.output, results) if name}


def _fold_node(node: onnx.NodeProto, args: list[Any], runtime: _Runtime) -> list[Any]:
    """A data-dependent op (NonZero, Unique, ...) imported alone with its inputs as
    constants: its converter folds it through the op's reference."""
    if any(isinstance(a, list) for a in args):
        raise UnsupportedOpError(f"{node_label(node)} does not take a sequence input")
    known = {n: np.asarray(a) for n, a in zip(node.input, args) if n and a is not None}
    segment = import_segment(f"{runtime.name}/{node_label(node)}", [node], runtime.opset,
                             {}, known, [n for n in node.output if n])
    if segment.deferred:
        raise UnsupportedOpError(f"{node_label(node)}: {segment.reason}")
    results = dict(segment.constants)
    if segment.graph.outputs:  # results too large to fold: computed by numpy
        results.update(evaluate_graph(segment.graph, {}))
    return [results.get(n) if n else None for n in node.output]


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _truth(value: Any, what: str) -> bool:
    if value is None or isinstance(value, list):
        raise InputError(f"{what} must be a tensor, got {_kind(value)}")
    array = np.asarray(value)
    if array.size != 1:
        raise EmberError(f"{what} must hold one value, got shape {array.shape}")
    return bool(array.reshape(-1)[0])


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (an empty optional)"
    if isinstance(value, list):
        return f"a sequence of {len(value)}"
    array = np.asarray(value)
    return f"a tensor {list(array.shape)} {array.dtype}"


def _sequence_arg(node: onnx.NodeProto, args: list[Any], index: int) -> list[np.ndarray]:
    """Input `index` of a sequence op, which must be a sequence (a host list)."""
    value = args[index] if index < len(args) else None
    if not isinstance(value, list):
        raise InputError(f"{node_label(node)}: input {index} must be a sequence, got "
                         f"{_kind(value)}")
    return value


def _tensor_arg(node: onnx.NodeProto, args: list[Any], index: int) -> np.ndarray:
    """Input `index` of a host node, which must be a tensor."""
    value = args[index] if index < len(args) else None
    if value is None or isinstance(value, list):
        raise InputError(f"{node_label(node)}: input {index} must be a tensor, got "
                         f"{_kind(value)}")
    return np.asarray(value)


def _integer_scalar(node: onnx.NodeProto, args: list[Any], index: int, what: str) -> int:
    array = _tensor_arg(node, args, index)
    if array.size != 1 or array.dtype.kind not in "iu":
        raise InputError(f"{node_label(node)}: {what} must be one integer, got "
                         f"{_kind(array)}")
    return int(array.reshape(-1)[0])


def _same_dtype(node: onnx.NodeProto, items: Sequence[np.ndarray]) -> None:
    """A sequence holds tensors of one element type."""
    dtypes = sorted({str(a.dtype) for a in items})
    if len(dtypes) > 1:
        raise DTypeError(f"{node_label(node)}: a sequence holds one element type, got "
                         f"{dtypes}")


def _if(node, args, runtime, values):
    branch = _attr(node, "then_branch" if _truth(args[0], node_label(node) + " condition")
                   else "else_branch")
    outputs = runtime.body(branch)(values)
    return [outputs[o.name] for o in branch.output]


def _empty_like_output(info: onnx.ValueInfoProto) -> np.ndarray:
    """A scan output of a loop that ran no iteration: empty, of the body's declared type."""
    tensor = info.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else np.float32
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    # the body's declared per-iteration shape, when it declares every dim
    return np.zeros((0, *dims) if None not in dims else (0,), dtype=dtype)


def _stacked(node: onnx.NodeProto, items: list[Any], axis: int, what: str) -> np.ndarray:
    """Per-iteration values stacked on a new `axis`: they must be tensors of one shape."""
    arrays = [_tensor_arg(node, items, i) for i in range(len(items))]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise ShapeError(f"{node_label(node)}: {what} changes shape between iterations: "
                         f"{[list(s) for s in shapes]}")
    _same_dtype(node, arrays)
    rank = arrays[0].ndim + 1
    if not -rank <= axis < rank:
        raise ShapeError(f"{node_label(node)}: {what}'s axis {axis} is out of range for "
                         f"rank {rank}")
    return np.stack(arrays, axis=axis % rank)


def _body_arity(node: onnx.NodeProto, body: onnx.GraphProto, inputs: int,
                least_outputs: int) -> None:
    if len(body.input) != inputs or len(body.output) < least_outputs:
        raise InputError(f"{node_label(node)}: its body takes {len(body.input)} input(s) and "
                         f"gives {len(body.output)} output(s); the node needs {inputs} "
                         f"input(s) and at least {least_outputs} output(s)")


def _loop(node, args, runtime, values):
    trips, cond, carried = args[0], args[1], list(args[2:])
    body: onnx.GraphProto = _attr(node, "body")
    count = len(carried)
    _body_arity(node, body, 2 + count, 1 + count)
    missing = [2 + k for k, value in enumerate(carried) if value is None]
    if missing:
        raise InputError(f"{node_label(node)}: input {missing[0]} (a loop-carried value) is "
                         f"required")
    stage = runtime.body(body)
    formal = [i.name for i in body.input]
    limit = None if trips is None else _integer_scalar(node, args, 0, "the trip count")
    running = True if cond is None else _truth(cond, node_label(node) + " condition")
    if limit is None and cond is None:
        raise UnsupportedOpError(f"{node_label(node)} has neither a trip count nor a "
                                 f"condition: it would never end")
    scans: list[list[np.ndarray]] = []
    iteration = 0
    while running and (limit is None or iteration < limit):
        frame = {formal[0]: np.array(iteration, np.int64), formal[1]: np.array(running)}
        frame.update(zip(formal[2:], carried))
        outputs = stage(ChainMap(frame, values))
        results = [outputs[o.name] for o in body.output]
        running = _truth(results[0], node_label(node) + " body condition")
        carried = results[1:1 + count]
        scans.append(results[1 + count:])
        iteration += 1
    stacked = [_stacked(node, [s[k] for s in scans], 0, f"scan output {k}") if scans
               else _empty_like_output(body.output[1 + count + k])
               for k in range(len(body.output) - 1 - count)]
    return carried + stacked


def _scan(node, args, runtime, values):
    body: onnx.GraphProto = _attr(node, "body")
    scanned = int(_attr(node, "num_scan_inputs"))
    if not 1 <= scanned <= len(args):
        raise InputError(f"{node_label(node)}: num_scan_inputs {scanned} must be between 1 "
                         f"and its {len(args)} input(s)")
    states = list(args[:len(args) - scanned])
    missing = [k for k, value in enumerate(states) if value is None]
    if missing:
        raise InputError(f"{node_label(node)}: input {missing[0]} (a state) is required")
    inputs = [_tensor_arg(node, args, i) for i in range(len(states), len(args))]
    _body_arity(node, body, len(args), len(states))
    count = len(body.output) - len(states)
    in_axes = list(_attr(node, "scan_input_axes", [0] * scanned))
    in_reverse = list(_attr(node, "scan_input_directions", [0] * scanned))
    out_axes = list(_attr(node, "scan_output_axes", [0] * count))
    out_reverse = list(_attr(node, "scan_output_directions", [0] * count))
    if (len(in_axes), len(in_reverse), len(out_axes), len(out_reverse)) != (
            scanned, scanned, count, count):
        raise InputError(f"{node_label(node)}: scan_input_axes/directions need {scanned} "
                         f"entries and scan_output_axes/directions {count}")
    for axis, x in zip(in_axes, inputs):
        if not -x.ndim <= axis < x.ndim:
            raise ShapeError(f"{node_label(node)}: scan axis {axis} is out of range for "
                             f"scan input {list(x.shape)}")
    in_axes = [a % x.ndim for a, x in zip(in_axes, inputs)]
    lengths = sorted({x.shape[a] for a, x in zip(in_axes, inputs)})
    if len(lengths) != 1:
        raise ShapeError(f"{node_label(node)}: scan inputs disagree on the sequence length: "
                         f"{lengths}")
    length = lengths[0]
    stage = runtime.body(body)
    formal = [i.name for i in body.input]
    collected: list[list[np.ndarray]] = [[] for _ in range(count)]
    for step in range(length):
        frame = dict(zip(formal, states))
        for name, x, axis, reverse in zip(formal[len(states):], inputs, in_axes, in_reverse):
            frame[name] = np.take(x, length - 1 - step if reverse else step, axis=axis)
        outputs = stage(ChainMap(frame, values))
        results = [outputs[o.name] for o in body.output]
        states = results[:len(states)]
        for items, value in zip(collected, results[len(states):]):
            items.append(value)
    stacked = []
    for k, (items, axis, reverse, info) in enumerate(zip(collected, out_axes, out_reverse,
                                                         body.output[len(states):])):
        if not items:
            stacked.append(_empty_like_output(info))
            continue
        stacked.append(_stacked(node, items[::-1] if reverse else items, axis,
                                f"scan output {k}"))
    return states + stacked


def _sequence_map(node, args, runtime, values):
    body: onnx.GraphProto = _attr(node, "body")
    stage = runtime.body(body)
    formal = [i.name for i in body.input]
    length = len(_sequence_arg(node, args, 0))
    if len(formal) != len(args):
        raise InputError(f"{node_label(node)}: its body takes {len(formal)} input(s), the "
                         f"node passes {len(args)}")
    lengths = {len(a) for a in args if isinstance(a, list)}
    if lengths != {length}:
        raise InputError(f"{node_label(node)}: its sequences differ in length: "
                         f"{sorted(lengths)}")
    collected: list[list[Any]] = [[] for _ in body.output]
    for index in range(length):
        frame = {name: (a[index] if isinstance(a, list) else a) for name, a in zip(formal, args)}
        outputs = stage(ChainMap(frame, values))
        for items, info in zip(collected, body.output):
            items.append(outputs[info.name])
    return collected


def _position(node: onnx.NodeProto, args: list[Any], index: int, length: int,
              insert: bool) -> int:
    position = _integer_scalar(node, args, index, "the position")
    low, high = -length, length if insert else length - 1
    if not low <= position <= high:
        raise InputError(f"{node_label(node)}: position {position} is out of range for a "
                         f"sequence of {length}")
    return position + length if position < 0 else position


def _sequence_construct(node, args, *_):
    items = [_tensor_arg(node, args, i) for i in range(len(args))]
    _same_dtype(node, items)
    return [items]


def _sequence_insert(node, args, *_):
    sequence = list(_sequence_arg(node, args, 0))
    item = _tensor_arg(node, args, 1)
    _same_dtype(node, [*sequence, item])
    at = len(sequence) if len(args) < 3 or args[2] is None else _position(
        node, args, 2, len(sequence), True)
    sequence.insert(at, item)
    return [sequence]


def _sequence_at(node, args, *_):
    sequence = _sequence_arg(node, args, 0)
    return [sequence[_position(node, args, 1, len(sequence), False)]]


def _sequence_erase(node, args, *_):
    sequence = list(_sequence_arg(node, args, 0))
    if not sequence:
        raise InputError(f"{node_label(node)}: the sequence is empty")
    at = len(sequence) - 1 if len(args) < 2 or args[1] is None else _position(
        node, args, 1, len(sequence), False)
    del sequence[at]
    return [sequence]


def _sequence_length(node, args, *_):
    return [np.array(len(_sequence_arg(node, args, 0)), np.int64)]


def _concat_from_sequence(node, args, *_):
    items = [np.asarray(a) for a in _sequence_arg(node, args, 0)]
    if not items:
        raise InputError(f"{node_label(node)}: the sequence is empty")
    _same_dtype(node, items)
    new_axis = bool(_attr(node, "new_axis", 0))
    rank = items[0].ndim
    axis = int(_attr(node, "axis"))
    limit = rank + 1 if new_axis else rank
    if not -limit <= axis < limit:
        raise ShapeError(f"{node_label(node)}: axis {axis} is out of range for "
                         f"{'stacking' if new_axis else 'concatenating'} rank-{rank} tensors")
    axis %= limit
    shapes = [a.shape for a in items]
    keep = list(range(rank)) if new_axis else [d for d in range(rank) if d != axis]
    if any(len(s) != rank or [s[d] for d in keep] != [shapes[0][d] for d in keep]
           for s in shapes):
        raise ShapeError(f"{node_label(node)}: tensors of shapes {[list(s) for s in shapes]} "
                         f"do not {'stack' if new_axis else 'concatenate'} on axis {axis}")
    if new_axis:
        return [np.stack(items, axis=axis)]
    return [np.concatenate(items, axis=axis)]


def _split_to_sequence(node, args, *_):
    x = _tensor_arg(node, args, 0)
    axis = int(_attr(node, "axis", 0))
    if x.ndim == 0 or not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"{node_label(node)}: axis {axis} is out of range for input "
                         f"{list(x.shape)}")
    axis %= x.ndim
    length = x.shape[axis]
    if len(args) < 2 or args[1] is None:
        pieces = np.split(x, length, axis=axis) if length else []
        if not _attr(node, "keepdims", 1):
            pieces = [np.squeeze(p, axis=axis) for p in pieces]
        return [pieces]
    split = _tensor_arg(node, args, 1)
    if split.dtype.kind not in "iu" or split.ndim > 1:
        raise InputError(f"{node_label(node)}: split must be an integer scalar or 1-D, got "
                         f"{_kind(split)}")
    if split.ndim == 0:
        size = int(split)
        if size <= 0:
            raise InputError(f"{node_label(node)}: split size {size} must be positive")
        bounds = list(range(size, length, size))
    else:
        if (split < 0).any() or int(split.sum()) != length:
            raise InputError(f"{node_label(node)}: split {split.tolist()} must be "
                             f"non-negative and sum to the axis' length {length}")
        bounds = [int(b) for b in np.cumsum(split)[:-1]]
    return [np.split(x, bounds, axis=axis)]


def _optional_get(node, args, *_):
    if args[0] is None:
        raise InputError(f"{node_label(node)}: the optional is empty")
    return [args[0]]


HostOp = Callable[..., list[Any]]
HOST_OPS: dict[str, HostOp] = {
    "If": _if,
    "Loop": _loop,
    "Scan": _scan,
    "SequenceMap": _sequence_map,
    "Identity": lambda node, args, *_: [args[0]],
    "SequenceEmpty": lambda node, args, *_: [[]],
    "SequenceConstruct": _sequence_construct,
    "SequenceInsert": _sequence_insert,
    "SequenceAt": _sequence_at,
    "SequenceErase": _sequence_erase,
    "SequenceLength": _sequence_length,
    "ConcatFromSequence": _concat_from_sequence,
    "SplitToSequence": _split_to_sequence,
    "Optional": lambda node, args, *_: [args[0] if args else None],
    "OptionalHasElement": lambda node, args, *_: [np.array(bool(args) and args[0] is not None)],
    "OptionalGetElement": _optional_get,
}
