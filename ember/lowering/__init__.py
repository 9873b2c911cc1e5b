"""Lowering: passes that rewrite the IR (simplification, folding, rewrite rules, exporter
patterns, attention, fusion, placement), in pipelines per opt level. Memory planning runs on
the execution plan (runtime/memory.py). Lowering imports only `ember.ir`."""

from ember.lowering.passes import FixedPoint, PassContext, PassManager, PassRecord, PassResult
from ember.lowering.pipelines import PIPELINES, build_pipeline

__all__ = [
    "FixedPoint", "PassContext", "PassManager", "PassRecord", "PassResult", "PIPELINES",
    "build_pipeline",
]
