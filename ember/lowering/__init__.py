"""Lowering: passes that rewrite the IR (simplify, place; later fuse, layout, quantize, plan
memory). Lowering imports only `ember.ir`."""

from ember.lowering.passes import FixedPoint, PassContext, PassManager, PassRecord, PassResult
from ember.lowering.pipelines import PIPELINES, build_pipeline

__all__ = [
    "FixedPoint", "PassContext", "PassManager", "PassRecord", "PassResult", "PIPELINES",
    "build_pipeline",
]
