"""If, Loop and Scan folded at import, and the ops on sequences and optionals.

Most exported control flow is decided by compile-time values: an If on a shape test, a Loop
over a constant trip count. Such nodes are inlined: the taken branch's nodes, or the body's
nodes once per iteration, are converted into the enclosing graph like any other node (their
outer-scope names resolve to the enclosing values), so every later pass sees one ordinary
graph. What cannot be decided at import (a condition or trip count computed from inputs, a
loop past UNROLL_LIMIT iterations or NODE_BUDGET nodes, sequences and optionals, which are
host values) raises DataDependentError; the staged runtime (ember/staged.py) then runs the
node on the host between compiled segments.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import numpy_helper

from ember.errors import (
    DataDependentError,
    DTypeError,
    EmberError,
    ShapeError,
    UnsupportedOpError,
)
from ember.frontends.onnx.checks import LEGACY_DOMAIN
from ember.frontends.onnx.importer import ImportContext, convert_node, onnx_op
from ember.ir import Graph, Value
from ember.ir.ops.common import normalize_axis

__all__ = [
    "NODE_BUDGET",
    "OPTIONAL_OPS",
    "SEQUENCE_OPS",
    "UNROLL_LIMIT",
    "free_names",
    "inline_subgraph",
    "node_reads",
    "rolled_back_on_failure",
]

# Loops and scans unroll up to this many iterations ...
UNROLL_LIMIT = 64
# ... and while the nodes they add stay under this budget; past either they run on the host
# as a loop over the compiled body (a long unrolled loop costs compile time and code size).
NODE_BUDGET = 4096

SEQUENCE_OPS = ("SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceAt",
                "SequenceErase", "SequenceLength", "ConcatFromSequence", "SplitToSequence",
                "SequenceMap")
OPTIONAL_OPS = ("Optional", "OptionalHasElement", "OptionalGetElement")


# -- names a subgraph reads ---------------------------------------------------------------
def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def free_names(graph: onnx.GraphProto) -> list[str]:
    """The outer-scope names `graph` reads (its nested subgraphs' too), in first-use order:
    what a branch or body captures, and so what it needs as inputs when it runs alone."""
    bound = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    found: dict[str, None] = {}
    for node in graph.node:
        for name in node_reads(node):
            if name not in bound:
                found.setdefault(name)
        bound.update(n for n in node.output if n)
    for output in graph.output:
        if output.name not in bound:
            found.setdefault(output.name)
    return list(found)


def node_reads(node: onnx.NodeProto) -> list[str]:
    """The names a node reads: its inputs and what its subgraphs capture."""
    names = [n for n in node.input if n]
    for graph in subgraphs(node):
        names.extend(free_names(graph))
    return list(dict.fromkeys(names))


# -- inlining -----------------------------------------------------------------------------
@contextmanager
def rolled_back_on_failure(graph: Graph) -> Iterator[None]:
    """Nodes added inside the block are removed again when it raises, so that a failed
    attempt at folding leaves the graph as it found it."""
    before = set(graph.nodes())
    try:
        yield
    except BaseException:
        for node in sorted(set(graph.nodes()) - before, reverse=True):  # users first
            graph.remove_node(node)
        raise


def inline_subgraph(ctx: ImportContext, body: onnx.GraphProto, bindings: Mapping[str, Value],
                    prefix: str) -> list[Value]:
    """Convert `body`'s nodes into ctx.graph with its formal inputs bound to `bindings`;
    names it does not bind resolve to the enclosing scope. Node names get `prefix` so that
    an unrolled body's copies stay apart. Returns the values of `body`'s outputs."""
    outer_values, outer_node = ctx.values, ctx.node
    ctx.values = {**outer_values, **bindings}
    try:
        for tensor in body.initializer:
            ctx.values[tensor.name] = ctx.graph.add_constant(
                numpy_helper.to_array(tensor), name=f"{prefix}/{tensor.name}")
        for node in body.node:
            renamed = onnx.NodeProto()
            renamed.CopyFrom(node)
            renamed.name = f"{prefix}/{node.name or node.output[0]}"
            convert_node(ctx, renamed)
        missing = [o.name for o in body.output if o.name not in ctx.values]
        if missing:
            raise EmberError(f"{prefix}: subgraph output(s) {missing} are produced by no node")
        return [ctx.values[o.name] for o in body.output]
    finally:
        ctx.values, ctx.node = outer_values, outer_node


def _dynamic(ctx: ImportContext, node: onnx.NodeProto, why: str) -> DataDependentError:
    return DataDependentError(f"{ctx.where}: {why}", node=node.name or node.output[0])


def _label(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _scalar(ctx: ImportContext, node: onnx.NodeProto, index: int) -> np.ndarray | None:
    """The constant value of input `index`, None when absent; computed: DataDependentError."""
    value = ctx.input(node, index)
    if value is None:
        return None
    array = ctx.graph.constant_value(value)
    if array is None:
        raise _dynamic(ctx, node, f"input {node.input[index]!r} is computed at run time")
    return array


def _stack(ctx: ImportContext, items: Sequence[Value], axis: int) -> Value:
    """Per-iteration values stacked along a new `axis` (Reshape to insert it, Concat)."""
    shape = ctx.type_of(items[0]).shape
    axis = normalize_axis(axis, len(shape) + 1)
    expanded = tuple(shape[:axis]) + (1,) + tuple(shape[axis:])
    parts = [ctx.add("Reshape", [v], {"shape": expanded}) for v in items]
    return parts[0] if len(parts) == 1 else ctx.add("Concat", parts, {"axis": axis})


def _one(ctx: ImportContext, value: np.ndarray | None, what: str) -> np.ndarray | None:
    """A trip count or condition: one element (or absent)."""
    if value is not None and value.size != 1:
        raise ShapeError(f"{ctx.where}: {what} must hold one value, got shape "
                         f"{list(value.shape)}")
    return value


def _body_arity(ctx: ImportContext, body: onnx.GraphProto, inputs: int,
                least_outputs: int) -> None:
    if len(body.input) != inputs or len(body.output) < least_outputs:
        raise ShapeError(f"{ctx.where}: its body takes {len(body.input)} input(s) and gives "
                         f"{len(body.output)} output(s); the node needs {inputs} input(s) "
                         f"and at least {least_outputs} output(s)")


def _required(ctx: ImportContext, node: onnx.NodeProto, first: int) -> list[Value]:
    """Inputs `first`.. of a Loop (carried values) or Scan (states and scanned inputs): none
    may be left out."""
    values = [ctx.input(node, i) for i in range(first, len(node.input))]
    missing = [first + k for k, value in enumerate(values) if value is None]
    if missing:
        raise UnsupportedOpError(f"{ctx.where}: input {missing[0]} is required (a "
                                 f"loop-carried, state or scanned value)")
    return values


def _budget(ctx: ImportContext, node: onnx.NodeProto, start: int) -> None:
    if len(ctx.graph) - start > NODE_BUDGET:
        raise _dynamic(ctx, node, f"unrolling it would add more than {NODE_BUDGET} nodes")


# -- converters ---------------------------------------------------------------------------
@onnx_op("If")
def _if(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    cond = _scalar(ctx, node, 0)
    if cond is None or cond.size != 1:
        raise EmberError(f"{ctx.where}: the condition must be a single boolean")
    branch = ctx.attr(node, "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch")
    with rolled_back_on_failure(ctx.graph):
        return inline_subgraph(ctx, branch, {}, prefix=_label(node))


@onnx_op("Loop")
def _loop(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    trip = _one(ctx, _scalar(ctx, node, 0), "the trip count")
    cond = _one(ctx, _scalar(ctx, node, 1), "the condition")
    if trip is not None and trip.dtype.kind not in "iu":
        raise DTypeError(f"{ctx.where}: the trip count must be an integer, got {trip.dtype}")
    trips = None if trip is None else int(trip.reshape(-1)[0])
    if trips is None and cond is None:
        raise _dynamic(ctx, node, "it has neither a trip count nor a condition")
    if trips is not None and trips > UNROLL_LIMIT:
        raise _dynamic(ctx, node, f"{trips} iterations (unrolled up to {UNROLL_LIMIT})")
    body: onnx.GraphProto = ctx.attr(node, "body")
    carried = _required(ctx, node, 2)
    formal = [i.name for i in body.input]
    count = len(carried)
    _body_arity(ctx, body, 2 + count, 1 + count)
    running = True if cond is None else bool(cond.reshape(-1)[0])
    scans: list[list[Value]] = [[] for _ in range(len(body.output) - 1 - count)]
    start = len(ctx.graph)
    with rolled_back_on_failure(ctx.graph):
        iteration = 0
        while running and (trips is None or iteration < trips):
            if iteration >= UNROLL_LIMIT:
                raise _dynamic(ctx, node, f"it runs more than {UNROLL_LIMIT} iterations")
            bindings = dict(zip(formal[2:], carried))
            bindings[formal[0]] = ctx.constant(np.array(iteration, np.int64),
                                               name=f"{_label(node)}/{iteration}/i")
            bindings[formal[1]] = ctx.constant(np.array(running),
                                               name=f"{_label(node)}/{iteration}/cond")
            outputs = inline_subgraph(ctx, body, bindings, prefix=f"{_label(node)}/{iteration}")
            done = ctx.graph.constant_value(outputs[0])
            if done is None:
                raise _dynamic(ctx, node, "its body computes the loop condition at run time")
            running = bool(_one(ctx, done, "the body's condition").reshape(-1)[0])
            carried = outputs[1:1 + count]
            for collected, value in zip(scans, outputs[1 + count:]):
                collected.append(value)
            _budget(ctx, node, start)
            iteration += 1
        if scans and iteration == 0:
            raise _dynamic(ctx, node, "it runs no iteration, so its scan outputs' shapes are "
                                      "those of a body that never ran")
        return list(carried) + [_stack(ctx, collected, 0) for collected in scans]


@onnx_op("Scan")
def _scan(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    body: onnx.GraphProto = ctx.attr(node, "body")
    scanned = int(ctx.attr(node, "num_scan_inputs"))
    if not 1 <= scanned <= len(node.input):
        raise ShapeError(f"{ctx.where}: num_scan_inputs {scanned} must be between 1 and its "
                         f"{len(node.input)} input(s)")
    values = _required(ctx, node, 0)
    states, inputs = values[:len(values) - scanned], values[len(values) - scanned:]
    in_axes = list(ctx.attr(node, "scan_input_axes", [0] * scanned))
    in_reverse = list(ctx.attr(node, "scan_input_directions", [0] * scanned))
    _body_arity(ctx, body, len(node.input), len(states))
    outputs_count = len(body.output) - len(states)
    out_axes = list(ctx.attr(node, "scan_output_axes", [0] * outputs_count))
    out_reverse = list(ctx.attr(node, "scan_output_directions", [0] * outputs_count))
    if (len(in_axes), len(in_reverse), len(out_axes), len(out_reverse)) != (
            scanned, scanned, outputs_count, outputs_count):
        raise ShapeError(f"{ctx.where}: scan_input_axes/directions need {scanned} entries "
                         f"and scan_output_axes/directions {outputs_count}")
    if any(ctx.type_of(v).rank == 0 for v in inputs):
        raise ShapeError(f"{ctx.where}: a scan input must have a sequence axis, got a scalar")
    in_axes = [normalize_axis(a, ctx.type_of(v).rank) for a, v in zip(in_axes, inputs)]
    lengths = {ctx.type_of(v).shape[a] for a, v in zip(in_axes, inputs)}
    if len(lengths) != 1:
        raise EmberError(f"{ctx.where}: scan inputs disagree on the sequence length: "
                         f"{sorted(lengths)}")
    length = lengths.pop()
    if length > UNROLL_LIMIT or length == 0:
        raise _dynamic(ctx, node, f"a scan over {length} steps (unrolled: 1 to "
                                  f"{UNROLL_LIMIT})")
    formal = [i.name for i in body.input]
    collected: list[list[Value]] = [[] for _ in range(outputs_count)]
    start = len(ctx.graph)
    with rolled_back_on_failure(ctx.graph):
        for step in range(length):
            bindings = dict(zip(formal, states))
            for name, value, axis, reverse in zip(formal[len(states):], inputs, in_axes,
                                                  in_reverse):
                at = length - 1 - step if reverse else step
                shape = ctx.type_of(value).shape
                piece = ctx.add("Slice", [value], {"starts": (at,), "ends": (at + 1,),
                                                   "axes": (axis,), "steps": (1,)})
                bindings[name] = ctx.add("Reshape", [piece],
                                         {"shape": tuple(shape[:axis] + shape[axis + 1:])})
            results = inline_subgraph(ctx, body, bindings, prefix=f"{_label(node)}/{step}")
            states = results[:len(states)]
            for values, value in zip(collected, results[len(states):]):
                values.append(value)
            _budget(ctx, node, start)
        stacked = [_stack(ctx, values[::-1] if reverse else values, axis)
                   for values, axis, reverse in zip(collected, out_axes, out_reverse)]
        return list(states) + stacked


@onnx_op("Scan8", domain=LEGACY_DOMAIN)
def _scan_opset8(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """Scan of opset 8 (kept through the version converter by the loader): sequence_lens
    first, then states and scan inputs with a batch axis first and the scan axis second.
    Each batch entry is an opset-9 Scan over its slices, unrolled; the results are stacked
    on the batch axis."""
    scanned = int(ctx.attr(node, "num_scan_inputs"))
    values = [ctx.input(node, i) for i in range(1, len(node.input))]
    scans = values[len(values) - scanned:]
    batch, length = ctx.type_of(scans[0]).shape[:2]
    lengths = _scalar(ctx, node, 0)
    if lengths is not None and np.any(np.asarray(lengths) != length):
        raise UnsupportedOpError(f"{ctx.where}: sequence_lens {np.asarray(lengths).tolist()} "
                                 f"shorter than the scan axis ({length}) are not supported")
    directions = list(ctx.attr(node, "directions", [0] * scanned))
    label = _label(node)
    per_entry: list[list[Value]] = []
    for b in range(batch):
        names = []
        for index, value in enumerate(values):
            shape = ctx.type_of(value).shape
            piece = ctx.add("Slice", [value], {"starts": (b,), "ends": (b + 1,), "axes": (0,),
                                               "steps": (1,)})
            name = f"{label}/batch{b}/in{index}"
            ctx.values[name] = ctx.add("Reshape", [piece], {"shape": tuple(shape[1:])})
            names.append(name)
        entry = onnx.helper.make_node(
            "Scan", names, [f"{label}/batch{b}/out{i}" for i in range(len(node.output))],
            name=f"{label}/batch{b}", body=ctx.attr(node, "body"), num_scan_inputs=scanned,
            scan_input_directions=directions)
        try:
            per_entry.append(_scan(ctx, entry))
        except DataDependentError as exc:
            raise UnsupportedOpError(f"{ctx.where}: an opset-8 Scan runs unrolled only "
                                     f"({exc})") from exc
    return [_stack(ctx, list(outputs), 0) for outputs in zip(*per_entry)]


@onnx_op(*SEQUENCE_OPS, *OPTIONAL_OPS)
def _host_value_op(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """Sequences and optionals are host values (lists, None): these ops always run on the
    host, between compiled segments."""
    raise _dynamic(ctx, node, "sequences and optionals are host values")
