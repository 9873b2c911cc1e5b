"""Structural and type verifier, run after every pass in tests.

Checks, per node in topological order: the op is registered, the attributes match its schema,
input ports are 0..n-1 with no gaps, the arity fits, and re-inferring the output types gives
the stored ones. Errors name the node, the op, the port, the expected and the actual type.
"""

from __future__ import annotations

import networkx as nx

from ember.errors import EmberError, VerifyError
from ember.ir.graph import Graph
from ember.ir.ops import OPS

__all__ = ["verify"]


def verify(graph: Graph) -> None:
    if not nx.is_directed_acyclic_graph(graph.nx):
        raise VerifyError(f"graph {graph.name!r} has a cycle")
    for node in graph.topological_order():
        _verify_node(graph, node)
    names = [name for name, _ in graph.outputs]
    if len(set(names)) != len(names):
        raise VerifyError(f"graph outputs repeat a name: {names}")
    for name, value in graph.outputs:
        if value.node not in graph.nx:
            raise VerifyError(f"graph output {name!r} refers to a removed node")
        if value.port >= len(graph.output_types(value.node)):
            raise VerifyError(f"graph output {name!r} refers to a missing port {value.port}")
    inputs = graph.input_names()
    if len(set(inputs)) != len(inputs):
        raise VerifyError(f"graph inputs repeat a name: {inputs}")


def _verify_node(graph: Graph, node: int) -> None:
    data = graph.nx.nodes[node]
    label = f"{data.get('name')!r} ({data.get('op')})"
    if data.get("op") not in OPS:
        raise VerifyError(f"node {label}: op is not registered")
    op = OPS[data["op"]]
    ports = sorted(d["in"] for _, _, d in graph.nx.in_edges(node, data=True))
    if ports != list(range(len(ports))):
        raise VerifyError(f"node {label}: input ports {ports} are not 0..{len(ports) - 1}")
    for u, _, d in graph.nx.in_edges(node, data=True):
        if d["out"] >= len(graph.output_types(u)):
            raise VerifyError(f"node {label}: input {d['in']} reads a missing port {d['out']}")
    try:
        attrs = op.make_attrs(dict(data["attrs"]), node=data["name"])
        if attrs != data["attrs"]:
            raise VerifyError(f"node {label}: attributes {data['attrs']} are not normalized")
        inferred = op.infer_types(graph.input_types(node), attrs, node=data["name"])
    except VerifyError:
        raise
    except EmberError as exc:
        raise VerifyError(f"node {label}: {exc}") from exc
    stored = data["outputs"]
    if tuple(inferred) != tuple(stored):
        for port, (want, got) in enumerate(zip(inferred, stored)):
            if want != got:
                raise VerifyError(
                    f"node {label}: output {port} has type {got}, inference says {want}"
                )
        raise VerifyError(f"node {label}: {len(stored)} outputs stored, {len(inferred)} inferred")
