"""Run a graph with the numpy references: the ground truth for tests and the executor used
when no OpenCL device exists. An environment keyed by Value, a topological loop, done."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from ember.ir import OPS, Graph, Value

__all__ = ["evaluate_graph", "evaluate_node"]


def evaluate_node(graph: Graph, node: int, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Run one node's reference and make the results exactly the inferred types."""
    op = OPS[graph.op(node)]
    results = op.evaluate(args, graph.attrs(node))
    out = []
    for result, want in zip(results, graph.output_types(node)):
        result = np.asarray(result)
        if result.dtype != want.dtype.np_dtype:
            result = result.astype(want.dtype.np_dtype)
        if result.shape != want.shape:
            raise AssertionError(
                f"{graph.op(node)} reference for {graph.node_name(node)!r} returned shape "
                f"{result.shape}, inference says {want.shape}"
            )
        out.append(result)
    return tuple(out)


def evaluate_graph(graph: Graph, inputs: Mapping[str, np.ndarray],
                   timings: list[tuple[str, str, float]] | None = None
                   ) -> dict[str, np.ndarray]:
    """Evaluate every node in topological order; returns outputs by name. With `timings`,
    (node, op, seconds) of every node but inputs and constants is appended to it."""
    env: dict[Value, np.ndarray] = {}
    for node in graph.topological_order():
        op = graph.op(node)
        if op == "Input":
            env[Value(node, 0)] = np.asarray(inputs[graph.node_name(node)])
            continue
        args = [env[v] for v in graph.inputs_of(node)]
        start = time.perf_counter()
        for port, result in enumerate(evaluate_node(graph, node, args)):
            env[Value(node, port)] = result
        if timings is not None and op != "Constant":
            timings.append((graph.node_name(node), op, time.perf_counter() - start))
    return {name: env[value] for name, value in graph.outputs}
