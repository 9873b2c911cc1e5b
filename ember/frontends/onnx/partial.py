"""Importing up to the nodes that need run-time values: the first segment of a staged model.

A node whose converter raises DataDependentError (NonZero on computed data, an If on a
computed condition, a Loop that does not unroll, any op on sequences or optionals) cannot be
compiled before its inputs are known. `import_segment` defers it, and every node that reads
what it produces, and imports the rest as usual. The segment's outputs are the values the
deferred nodes and the wanted outputs read; values that folded to constants are handed back
as arrays instead (no compiled step needs to produce them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from ember.errors import DataDependentError, EmberError
from ember.frontends.onnx.control_flow import node_reads, rolled_back_on_failure
from ember.frontends.onnx.importer import ImportContext, convert_node
from ember.ir import Graph, TensorType

__all__ = ["Segment", "import_segment"]


@dataclass
class Segment:
    graph: Graph  # what compiles now; its outputs are named after the ONNX values
    constants: dict[str, np.ndarray]  # values the later nodes or the outputs read, folded
    deferred: list[onnx.NodeProto] = field(default_factory=list)  # in the graph's order
    reason: str = ""  # why the first deferred node is deferred

    @property
    def inputs(self) -> list[str]:
        return self.graph.input_names()


def import_segment(name: str, nodes: Sequence[onnx.NodeProto], opset: int,
                   inputs: Mapping[str, TensorType | None],
                   constants: Mapping[str, np.ndarray], outputs: Sequence[str]) -> Segment:
    """Import `nodes` over `inputs` (a TensorType each, None for a host value: a sequence,
    an optional) and `constants`, deferring what needs run-time values; `outputs` are the
    names the caller wants."""
    graph = Graph(name)
    ctx = ImportContext(graph, opset)
    for key, array in constants.items():
        ctx.values[key] = graph.add_constant(np.asarray(array), name=key)
    waiting: set[str] = set()  # names the deferred nodes produce, and host-value inputs
    for key, graph_type in inputs.items():
        if graph_type is None:
            waiting.add(key)
        else:
            ctx.values[key] = graph.add_input(key, graph_type)
    deferred: list[onnx.NodeProto] = []
    reason = ""
    for node in nodes:
        if not waiting.intersection(node_reads(node)):
            try:
                with rolled_back_on_failure(graph):
                    convert_node(ctx, node)
                continue
            except DataDependentError as exc:
                reason = reason or str(exc)
        deferred.append(node)
        waiting.update(n for n in node.output if n)
    ctx.node = None
    needed = [n for node in deferred for n in node_reads(node)] + list(outputs)
    graph_outputs, folded = [], {}
    for key in dict.fromkeys(needed):
        if key in waiting or key not in ctx.values and key in inputs:
            continue  # produced later, or a host value the caller holds
        if key not in ctx.values:
            raise EmberError(f"{name}: {key!r} is produced by no node")
        value = ctx.values[key]
        array = graph.constant_value(value)
        if array is not None:
            folded[key] = array
        elif graph.op(value.node) != "Input":
            graph_outputs.append((key, value))
    graph.set_outputs(graph_outputs)
    return Segment(graph, folded, deferred, reason)
