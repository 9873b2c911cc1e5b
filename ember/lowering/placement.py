"""Placement: decide for every op node whether it runs on the device or on the host.

An op runs on the device when the target has a kernel for it with these types (the
`supports` callback that compile() hands in); otherwise the numpy reference runs it on the
host. The decision is stored as the node's `placement` meta ("device" or "host").
"""

from __future__ import annotations

from ember.ir import DEVICE, HOST, Graph
from ember.lowering.passes import PassContext, PassResult

__all__ = ["Place", "DEVICE", "HOST"]


class Place:
    name = "Place"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        counts = {DEVICE: 0, HOST: 0}
        for node in graph.topological_order():
            if graph.op(node) in ("Input", "Constant"):
                continue
            where = DEVICE if ctx.supports is not None and ctx.supports(graph, node) else HOST
            graph.set_meta(node, "placement", where)
            counts[where] += 1
        return PassResult(False, counts)
