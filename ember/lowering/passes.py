"""Pass infrastructure: the Pass protocol, PassContext, PassManager and the pipelines.

A pass is a small named object whose `run(graph, ctx)` rewrites the graph in place and
returns a PassResult saying whether anything changed and what (counts by kind).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ember.errors import EmberError, PassError
from ember.ir import Graph, Value, to_text, verify

__all__ = [
    "Pass",
    "PassResult",
    "PassContext",
    "PassRecord",
    "PassManager",
    "FixedPoint",
    "try_node",
]

log = logging.getLogger(__name__)

# Answers "does the target have a kernel for this node?"; handed in by compile() so that
# lowering never imports codegen.
SupportsFn = Callable[[Graph, int], bool]


@dataclass(frozen=True)
class PassResult:
    changed: bool
    stats: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PassContext:
    opt_level: int = 2
    family: str = "generic"
    supports: SupportsFn | None = None  # None: no device, everything runs on the host
    disabled: frozenset[str] = frozenset()


def try_node(graph: Graph, ctx: PassContext, op: str, inputs: Sequence[Value], attrs: dict,
             name: str) -> int | None:
    """Add a node; keep it only when the target has a kernel for it (None: it was removed,
    and so it is without a target)."""
    node = graph.add_node(op, inputs, attrs, name=name)
    if ctx.supports is not None and ctx.supports(graph, node):
        return node
    graph.remove_node(node)
    return None


class Pass(Protocol):
    name: str

    def run(self, graph: Graph, ctx: PassContext) -> PassResult: ...


@dataclass(frozen=True)
class PassRecord:
    """What one pass run did, for `ember show --passes`."""

    name: str
    seconds: float
    changed: bool
    stats: Mapping[str, int]
    nodes_after: int
    text_after: str | None = None


class FixedPoint:
    """Runs a group of passes again and again until none of them changes the graph."""

    def __init__(self, name: str, passes: Sequence[Pass], max_iterations: int = 8) -> None:
        self.name = name
        self.passes = tuple(passes)
        self.max_iterations = max_iterations


class PassManager:
    def __init__(
        self,
        pipeline: Sequence[Pass | FixedPoint],
        *,
        verify: bool = False,
        keep_text: bool = False,
    ) -> None:
        self.pipeline = tuple(pipeline)
        self.verify = verify
        self.keep_text = keep_text
        self.records: list[PassRecord] = []

    def run(self, graph: Graph, ctx: PassContext) -> list[PassRecord]:
        for item in self.pipeline:
            if isinstance(item, FixedPoint):
                for _ in range(item.max_iterations):
                    changed = [self._run_one(p, graph, ctx) for p in item.passes]
                    if not any(changed):
                        break
            else:
                self._run_one(item, graph, ctx)
        return self.records

    def _run_one(self, p: Pass, graph: Graph, ctx: PassContext) -> bool:
        if p.name in ctx.disabled:
            return False
        start = time.perf_counter()
        try:
            result = p.run(graph, ctx)
            if self.verify:
                verify(graph)
        except EmberError as exc:
            prior = ", ".join(r.name for r in self.records) or "no other pass"
            raise PassError(f"{p.name} failed after {prior}: {exc}") from exc
        seconds = time.perf_counter() - start
        text = None
        if self.keep_text:
            text = to_text(graph)
        self.records.append(
            PassRecord(p.name, seconds, result.changed, dict(result.stats), len(graph), text)
        )
        log.debug("pass %s: changed=%s %s", p.name, result.changed, dict(result.stats))
        return result.changed
