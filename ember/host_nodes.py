"""Host nodes of a staged model: the nodes that run on the host between compiled segments.

If, Loop, Scan and SequenceMap call their branch or body as a compiled sub-model (the
runtime's `body`); the sequence and optional ops work on host values (a list of arrays,
None or a value); a data-dependent op (NonZero, Unique, ...) is imported alone with its
inputs as constants, which folds it through its reference. Every handler checks the kinds
of values it is given, so a malformed model is an EmberError naming the node.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import helper

from ember.errors import (
    DTypeError,
    EmberError,
    InputError,
    ShapeError,
    UnsupportedOpError,
)
from ember.frontends.onnx.checks import node_label
from ember.frontends.onnx.partial import import_segment
from ember.runtime.numpy import evaluate_graph

__all__ = ["HOST_OPS", "HostRuntime", "run_host_node"]

Env = Mapping[str, Any]


class HostRuntime(Protocol):
    """What host nodes need of a staged model: its name and opset, and a branch or body
    as a callable sub-model (values by name in, its outputs by name out)."""

    name: str
    opset: int

    def body(self, graph: onnx.GraphProto) -> Callable[[Env], Mapping[str, Any]]: ...


def run_host_node(node: onnx.NodeProto, values: Env, runtime: HostRuntime) -> dict[str, Any]:
    """Run one deferred node on host values; its outputs by name."""
    args = [values[n] if n else None for n in node.input]
    handler = HOST_OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if handler is not None:
        results = handler(node, args, runtime, values)
    else:
        results = _fold_node(node, args, runtime)
    return {name: result for name, result in zip(node.output, results) if name}


def _fold_node(node: onnx.NodeProto, args: list[Any], runtime: HostRuntime) -> list[Any]:
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
