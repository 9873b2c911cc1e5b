"""The IR: a typed dataflow graph held in one `networkx.MultiDiGraph`.

A node is one operation (node data: `op`, `attrs`, `outputs`, `name`). An edge u -> v with
data {"out": i, "in": j} says output port i of u feeds input port j of v. Passes change the
graph only through the methods here, which keep ports, types and graph outputs consistent.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import networkx as nx
import numpy as np

from ember.errors import EmberError
from ember.ir.attrs import Attrs
from ember.ir.dtypes import DType
from ember.ir.ops import OPS
from ember.ir.types import TensorType

__all__ = ["DEVICE", "HOST", "Graph", "Value", "Use"]

# A node's "placement" meta (set by lowering's placement, read by the execution plan):
# where its op runs.
DEVICE, HOST = "device", "host"


class Value(NamedTuple):
    """One tensor: output `port` of `node`."""

    node: int
    port: int = 0


class Use(NamedTuple):
    """A consumer of a value: input `port` of `node`."""

    node: int
    port: int


class Graph:
    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.nx = nx.MultiDiGraph()
        self.outputs: list[tuple[str, Value]] = []
        self._ids = itertools.count()
        self._order: list[int] | None = None  # topological order, until an edge changes

    # -- building -------------------------------------------------------------------------
    def add_node(
        self,
        op: str,
        inputs: Sequence[Value] = (),
        attrs: Mapping[str, Any] | Attrs | None = None,
        *,
        name: str | None = None,
        outputs: Sequence[TensorType] | None = None,
    ) -> int:
        """Add an op node; attributes are validated and output types inferred."""
        opdef = OPS[op]
        node = next(self._ids)
        label = name or f"{op.lower()}_{node}"
        if not isinstance(attrs, Attrs):
            attrs = opdef.make_attrs(attrs, node=label)
        in_types = [self.type_of(v) for v in inputs]
        if outputs is None:
            outputs = opdef.infer_types(in_types, attrs, node=label)
        self.nx.add_node(node, op=op, attrs=attrs, outputs=tuple(outputs), name=label)
        self._order = None
        for port, value in enumerate(inputs):
            self._check_value(value)
            self.nx.add_edge(value.node, node, out=value.port, **{"in": port})
        return node

    def add_input(self, name: str, type_: TensorType) -> Value:
        node = self.add_node("Input", (), {"shape": type_.shape, "dtype": type_.dtype}, name=name)
        return Value(node, 0)

    def add_constant(self, value: np.ndarray, name: str | None = None) -> Value:
        return Value(self.add_node("Constant", (), {"value": np.asarray(value)}, name=name), 0)

    def add(self, op: str, *inputs: Value, name: str | None = None, **attrs: Any) -> Value:
        """Add a single-output op and return its value (the builder's short form)."""
        return Value(self.add_node(op, inputs, attrs, name=name), 0)

    def set_outputs(self, outputs: Iterable[tuple[str, Value]]) -> None:
        self.outputs = [(name, Value(*v)) for name, v in outputs]

    # -- reading --------------------------------------------------------------------------
    def nodes(self) -> list[int]:
        return list(self.nx.nodes)

    def op(self, node: int) -> str:
        return self.nx.nodes[node]["op"]

    def attrs(self, node: int) -> Attrs:
        return self.nx.nodes[node]["attrs"]

    def node_name(self, node: int) -> str:
        return self.nx.nodes[node]["name"]

    def output_types(self, node: int) -> tuple[TensorType, ...]:
        return self.nx.nodes[node]["outputs"]

    def type_of(self, value: Value) -> TensorType:
        self._check_value(value)
        return self.nx.nodes[value.node]["outputs"][value.port]

    def inputs_of(self, node: int) -> list[Value]:
        """The values feeding `node`, ordered by input port."""
        # the adjacency itself, not an edge view: this is the IR's most frequent question
        edges = sorted(
            (data["in"], Value(u, data["out"]))
            for u, keyed in self.nx.pred[node].items() for data in keyed.values()
        )
        return [value for _, value in edges]

    def input_types(self, node: int) -> list[TensorType]:
        return [self.type_of(v) for v in self.inputs_of(node)]

    def users_of(self, value: Value) -> list[Use]:
        return sorted(
            Use(v, data["in"])
            for v, keyed in self.nx.succ[value.node].items() for data in keyed.values()
            if data["out"] == value.port
        )

    def is_output(self, value: Value) -> bool:
        return any(v == value for _, v in self.outputs)

    def input_nodes(self) -> list[int]:
        # Inputs have no predecessors: the topological order (ties by id) lists them by id.
        return sorted(n for n, op in self.nx.nodes(data="op") if op == "Input")

    def input_names(self) -> list[str]:
        return [self.node_name(n) for n in self.input_nodes()]

    def input_values(self) -> dict[str, Value]:
        return {self.node_name(n): Value(n, 0) for n in self.input_nodes()}

    def constant_value(self, value: Value) -> np.ndarray | None:
        """The array behind a value if it comes straight from a Constant node."""
        if self.op(value.node) == "Constant":
            return self.attrs(value.node)["value"]
        return None

    def topological_order(self) -> list[int]:
        """A deterministic topological order (ties broken by node id, i.e. creation order).
        Kept until the next structural edit: passes ask for it far more often than they
        rewire (add_node, set_input and remove_node forget it)."""
        if self._order is None:
            self._order = list(nx.lexicographical_topological_sort(self.nx))
        return list(self._order)

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    # -- rewriting ------------------------------------------------------------------------
    def replace_all_uses(self, old: Value, new: Value, *, outputs: bool = True) -> None:
        """Make every consumer of `old` read `new`. Graph outputs follow when `outputs` is
        true; otherwise a graph output on `old` is an error (it would be dropped)."""
        self._check_value(new)
        if old == new:
            return
        if self.type_of(old) != self.type_of(new):
            raise EmberError(
                f"replace_all_uses: type {self.type_of(old)} of {self._describe(old)} differs "
                f"from {self.type_of(new)} of {self._describe(new)}"
            )
        if not outputs and self.is_output(old):
            raise EmberError(f"replace_all_uses would drop graph output {self._describe(old)}")
        for use in self.users_of(old):
            self.set_input(use.node, use.port, new)
        self.outputs = [(name, new if v == old else v) for name, v in self.outputs]

    def set_input(self, node: int, port: int, value: Value) -> None:
        """Rewire input `port` of `node` to read `value` (types must agree)."""
        current = self.inputs_of(node)
        if port >= len(current):
            raise EmberError(f"node {self.node_name(node)!r} has no input port {port}")
        if self.type_of(current[port]) != self.type_of(value):
            raise EmberError(
                f"set_input: {self.node_name(node)!r} port {port} expects "
                f"{self.type_of(current[port])}, got {self.type_of(value)}"
            )
        old = current[port]
        for key, data in list(self.nx.get_edge_data(old.node, node).items()):
            if data["in"] == port:
                self.nx.remove_edge(old.node, node, key)
        self.nx.add_edge(value.node, node, out=value.port, **{"in": port})
        self._order = None

    def remove_node(self, node: int) -> None:
        """Remove a node; refuses while any of its outputs is still used or a graph output."""
        for port in range(len(self.output_types(node))):
            value = Value(node, port)
            if self.users_of(value) or self.is_output(value):
                raise EmberError(
                    f"cannot remove {self.node_name(node)!r} ({self.op(node)}): "
                    f"output {port} is still used"
                )
        self.nx.remove_node(node)
        self._order = None

    def set_attrs(self, node: int, attrs: Mapping[str, Any]) -> None:
        """Replace a node's attributes; the output types must not change."""
        op = OPS[self.op(node)]
        new_attrs = op.make_attrs(attrs, node=self.node_name(node))
        new_types = op.infer_types(self.input_types(node), new_attrs, node=self.node_name(node))
        if new_types != self.output_types(node):
            raise EmberError(f"set_attrs would change the types of {self.node_name(node)!r}")
        self.nx.nodes[node]["attrs"] = new_attrs

    def meta(self, node: int, key: str, default: Any = None) -> Any:
        """Annotations that passes leave for later stages (placement, memory slots)."""
        return self.nx.nodes[node].setdefault("meta", {}).get(key, default)

    def set_meta(self, node: int, key: str, value: Any) -> None:
        self.nx.nodes[node].setdefault("meta", {})[key] = value

    def copy(self) -> Graph:
        other = Graph(self.name)
        other.nx = self.nx.copy()
        for node in other.nx.nodes:  # meta dicts must not be shared between copies
            data = other.nx.nodes[node]
            if "meta" in data:
                data["meta"] = dict(data["meta"])
        other.outputs = list(self.outputs)
        other._ids = itertools.count(max(self.nx.nodes, default=-1) + 1)
        return other

    # -- helpers --------------------------------------------------------------------------
    def _check_value(self, value: Value) -> None:
        if value.node not in self.nx:
            raise EmberError(f"value {value} refers to a node not in graph {self.name!r}")
        if not 0 <= value.port < len(self.nx.nodes[value.node]["outputs"]):
            raise EmberError(
                f"node {self.node_name(value.node)!r} has no output port {value.port}"
            )

    def _describe(self, value: Value) -> str:
        return f"{self.node_name(value.node)!r}:{value.port}"

    def dtype_of(self, value: Value) -> DType:
        return self.type_of(value).dtype
