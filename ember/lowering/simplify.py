"""Graph simplification: constant folding, dead-code and common-subexpression elimination,
identity removal. Each pass is small, named for what it does, and reports counts."""

from __future__ import annotations

import numpy as np

from ember.ir import OPS, Graph, Value
from ember.lowering.passes import PassContext, PassResult

__all__ = ["FoldConstants", "EliminateDeadCode", "EliminateCommonSubexpressions", "RemoveIdentities"]

# Ops that pass their input through unchanged (Dropout is imported as Identity).
IDENTITY_OPS = frozenset({"Identity"})


class FoldConstants:
    """Evaluate nodes whose inputs are all constants and replace them by Constant nodes.
    Results larger than `size_limit` elements stay computed at run time."""

    name = "FoldConstants"

    def __init__(self, size_limit: int = 1 << 22) -> None:
        self.size_limit = size_limit

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded = 0
        for node in graph.topological_order():
            if graph.op(node) in ("Input", "Constant"):
                continue
            if not OPS[graph.op(node)].folds(graph.input_types(node), graph.output_types(node)):
                continue  # e.g. DequantizeLinear: its integer weights are the smaller form
            inputs = graph.inputs_of(node)
            arrays = [graph.constant_value(v) for v in inputs]
            if any(a is None for a in arrays):
                continue
            if sum(t.size for t in graph.output_types(node)) > self.size_limit:
                continue
            results = OPS[graph.op(node)].evaluate(arrays, graph.attrs(node))
            for port, (result, want) in enumerate(zip(results, graph.output_types(node))):
                result = np.asarray(result).astype(want.dtype.np_dtype, copy=False)
                name = graph.node_name(node) if len(results) == 1 else None
                const = graph.add_constant(result, name=name and f"{name}_folded")
                graph.replace_all_uses(Value(node, port), const)
            graph.remove_node(node)
            folded += 1
        return PassResult(folded > 0, {"folded": folded})


class EliminateDeadCode:
    """Remove nodes whose outputs reach no graph output. Graph inputs always stay: they are
    the model's signature."""

    name = "EliminateDeadCode"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        live: set[int] = set()
        stack = [value.node for _, value in graph.outputs]
        while stack:
            node = stack.pop()
            if node in live:
                continue
            live.add(node)
            stack.extend(v.node for v in graph.inputs_of(node))
        removed = 0
        for node in reversed(graph.topological_order()):
            if node not in live and graph.op(node) != "Input":
                graph.remove_node(node)
                removed += 1
        return PassResult(removed > 0, {"removed": removed})


class EliminateCommonSubexpressions:
    """Merge nodes with the same op, attributes, inputs and output types (and constants with
    the same value), keeping the first in topological order."""

    name = "EliminateCommonSubexpressions"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        seen: dict[tuple, int] = {}
        merged = 0
        for node in graph.topological_order():
            op = graph.op(node)
            if op == "Input":
                continue
            key = (op, graph.attrs(node).key(), tuple(graph.inputs_of(node)),
                   graph.output_types(node))
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            for port in range(len(graph.output_types(node))):
                graph.replace_all_uses(Value(node, port), Value(first, port))
            graph.remove_node(node)
            merged += 1
        return PassResult(merged > 0, {"merged": merged})


class RemoveIdentities:
    """Bypass Identity nodes (and what the importer turned into them, such as Dropout)."""

    name = "RemoveIdentities"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        removed = 0
        for node in graph.topological_order():
            if graph.op(node) not in IDENTITY_OPS:
                continue
            (source,) = graph.inputs_of(node)
            graph.replace_all_uses(Value(node, 0), source)
            graph.remove_node(node)
            removed += 1
        return PassResult(removed > 0, {"removed": removed})
