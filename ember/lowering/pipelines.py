"""The pass pipelines per opt level, as one explicit table."""

from __future__ import annotations

from ember.errors import EmberError
from ember.lowering.passes import FixedPoint, Pass
from ember.lowering.placement import Place
from ember.lowering.simplify import (
    EliminateCommonSubexpressions,
    EliminateDeadCode,
    FoldConstants,
    RemoveIdentities,
)

__all__ = ["PIPELINES", "build_pipeline"]


def _simplify() -> FixedPoint:
    return FixedPoint(
        "simplify",
        (RemoveIdentities(), FoldConstants(), EliminateCommonSubexpressions(), EliminateDeadCode()),
    )


# O0: import + placement (every op its own kernel). O1: + simplification. O2 and O3 run O1's
# passes until fusion, layout and memory planning exist.
PIPELINES = {
    0: lambda: [Place()],
    1: lambda: [_simplify(), Place()],
    2: lambda: [_simplify(), Place()],
    3: lambda: [_simplify(), Place()],
}


def build_pipeline(opt_level: int) -> list[Pass | FixedPoint]:
    if opt_level not in PIPELINES:
        raise EmberError(f"opt_level must be one of {sorted(PIPELINES)}, got {opt_level!r}")
    return PIPELINES[opt_level]()
