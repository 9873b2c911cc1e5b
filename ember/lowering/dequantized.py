"""Reading DequantizeLinear and the small graph edits that the quantization rewrites
(quant.py: integer products; weight_only.py: weights kept 8 or 4 bits) share."""

from __future__ import annotations

import math

import numpy as np

from ember.ir import DType, Graph, Value
from ember.lowering.passes import PassContext, try_node
from ember.lowering.rules import remove_dead

__all__ = ["INT8_TYPES", "dequantized", "is_scalar", "varies_along", "reshaped",
           "added_if_supported", "replace_node"]

INT8_TYPES = frozenset({DType.INT8, DType.UINT8})


def dequantized(graph: Graph, value: Value, op: str = "DequantizeLinear"
                 ) -> tuple[Value, Value, Value] | None:
    """(q, scale, zero) when `value` is `op`(q, scale, zero) with an int8/uint8 q."""
    if graph.op(value.node) != op:
        return None
    q, scale, zero = graph.inputs_of(value.node)
    if op == "DequantizeLinear" and graph.dtype_of(q) not in INT8_TYPES:
        return None
    if graph.dtype_of(scale) is not DType.FLOAT32:
        return None
    return q, scale, zero


def is_scalar(graph: Graph, value: Value) -> bool:
    return math.prod(graph.type_of(value).shape) == 1


def varies_along(graph: Graph, value: Value, axis: int, rank: int) -> int | None:
    """The length of `value` if it varies along `axis` of a rank-`rank` tensor only (1 for
    a scalar); None when it varies along another axis."""
    shape = graph.type_of(value).shape
    if math.prod(shape) == 1:
        return 1
    if len(shape) > rank:
        return None
    padded = (1,) * (rank - len(shape)) + tuple(shape)
    if any(d != 1 for i, d in enumerate(padded) if i != axis):
        return None
    return padded[axis]


def reshaped(graph: Graph, value: Value, shape: tuple[int, ...]) -> Value:
    """`value` in another shape (same elements): a constant, or a Reshape view."""
    constant = graph.constant_value(value)
    if constant is not None:
        return graph.add_constant(np.reshape(constant, shape))
    if graph.type_of(value).shape == shape:
        return value
    return graph.add("Reshape", value, shape=shape)


def added_if_supported(graph: Graph, ctx: PassContext, op: str, inputs: list[Value],
                       attrs: dict, name: str) -> Value | None:
    """The new node's result, or None (and no node) where the target has no kernel."""
    node = try_node(graph, ctx, op, inputs, attrs, name)
    return None if node is None else Value(node, 0)


def replace_node(graph: Graph, old: int, new: Value) -> None:
    graph.replace_all_uses(Value(old, 0), new)
    remove_dead(graph, old)
