"""The pass pipelines per opt level, as one explicit table."""

from __future__ import annotations

from ember.errors import EmberError
from ember.lowering.attention import FuseAttention
from ember.lowering.fold import FoldAffineIntoConv, FoldBatchNorm
from ember.lowering.fusion import FoldTransposeIntoMatMul, FuseElementwise, FuseEpilogues
from ember.lowering.passes import FixedPoint, Pass
from ember.lowering.patterns import PATTERN_PASSES
from ember.lowering.placement import Place
from ember.lowering.quant import FuseQuantizedProducts
from ember.lowering.weight_only import FoldWidenedConstants
from ember.lowering.rules import ApplyRules
from ember.lowering.simplify import (
    EliminateCommonSubexpressions,
    EliminateDeadCode,
    FoldConstants,
    RemoveIdentities,
)

__all__ = ["PIPELINES", "build_pipeline"]


def _simplify(rules: bool = False) -> FixedPoint:
    """O1's clean-up; from O2 on also the algebraic rules (rules.py)."""
    algebra = (ApplyRules(),) if rules else ()
    return FixedPoint(
        "simplify",
        (RemoveIdentities(), *algebra, FoldConstants(), EliminateCommonSubexpressions(),
         EliminateDeadCode()),
    )


def _fold() -> FixedPoint:
    # Conv -> Mul -> BN needs FoldBatchNorm again after FoldAffineIntoConv.
    return FixedPoint("fold", (FoldBatchNorm(), FoldAffineIntoConv()))


def _fuse() -> list[Pass | FixedPoint]:
    # Patterns first (they match the exporters' op chains, which region fusion and
    # epilogues would swallow); then transposes, so that a folded Transpose is not a region
    # input; then regions, so that a whole region (bias + activation + residual) becomes one
    # epilogue.
    # Quantized products first: their DequantizeLinear inputs would otherwise be fused into
    # elementwise regions in front of a float product. It folds back to float the int8
    # weights widened in the graph that no integer kernel took (FoldWidenedConstants does
    # that at the levels without it).
    return [FuseQuantizedProducts(), *PATTERN_PASSES, FuseAttention(), FoldTransposeIntoMatMul(),
            FuseElementwise(), FuseEpilogues(), EliminateDeadCode()]


# O0: import + placement (every op its own kernel). O1: + simplification. O2 and O3: + the
# algebraic rules, BN and constant-affine folding into convolutions (simplify runs first so
# constant subgraphs are plain constants, and again after to drop what the folds orphaned),
# and fusion.
PIPELINES = {
    0: lambda: [FoldWidenedConstants(), Place()],
    1: lambda: [_simplify(), FoldWidenedConstants(), Place()],
    2: lambda: [_simplify(rules=True), _fold(), _simplify(rules=True), *_fuse(), Place()],
    3: lambda: [_simplify(rules=True), _fold(), _simplify(rules=True), *_fuse(), Place()],
}


def build_pipeline(opt_level: int) -> list[Pass | FixedPoint]:
    if opt_level not in PIPELINES:
        raise EmberError(f"opt_level must be one of {sorted(PIPELINES)}, got {opt_level!r}")
    return PIPELINES[opt_level]()
