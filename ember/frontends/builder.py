"""Build ember graphs by hand: `b.Add(x, y)` adds an Add node and returns its value.

    b = GraphBuilder("mlp")
    x = b.input("x", (1, 64))
    h = b.Relu(b.MatMul(x, b.constant(w)))
    b.output("y", h)
    graph = b.build()
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ember.ir import OPS, DType, Graph, TensorType, Value, verify

__all__ = ["GraphBuilder"]


class GraphBuilder:
    def __init__(self, name: str = "graph") -> None:
        self.graph = Graph(name)

    def input(self, name: str, shape: tuple[int, ...], dtype: DType | str = DType.FLOAT32) -> Value:
        if isinstance(dtype, str):
            dtype = DType.from_name(dtype)
        elif not isinstance(dtype, DType):
            dtype = DType.from_numpy(dtype)
        return self.graph.add_input(name, TensorType(tuple(shape), dtype))

    def constant(self, value: Any, name: str | None = None) -> Value:
        return self.graph.add_constant(np.asarray(value), name=name)

    def op(self, op: str, *inputs: Value, name: str | None = None, **attrs: Any) -> Value | tuple[Value, ...]:
        """Add any op; returns one value, or a tuple for multi-output ops."""
        node = self.graph.add_node(op, inputs, attrs, name=name)
        count = len(self.graph.output_types(node))
        values = tuple(Value(node, port) for port in range(count))
        return values[0] if count == 1 else values

    def output(self, name: str, value: Value) -> None:
        self.graph.outputs.append((name, value))

    def build(self) -> Graph:
        verify(self.graph)
        return self.graph

    def __getattr__(self, op: str):
        if op[:1].isupper() and op in OPS:
            return lambda *inputs, **attrs: self.op(op, *inputs, **attrs)
        raise AttributeError(op)
