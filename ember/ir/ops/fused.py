"""Fused ops: an elementwise expression DAG as one op, and the epilogue of MatMul / Conv.

`FusedExpr` is the DAG that fusion passes build from a region of elementwise nodes. Value
indices 0..n_inputs-1 are the expression's inputs and n_inputs + k is the result of node k,
so an expression is a plain, hashable value that can live in an attribute (AttrKind.ANY),
be evaluated by the numpy reference here and rendered to OpenCL C by codegen.

`FusedElementwise` runs one FusedExpr over inputs broadcast to a common shape (several
outputs allowed). MatMul and Conv carry an optional `epilogue`: a FusedExpr whose input 0
is the product and whose other inputs are the op's trailing inputs (bias, residual, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ember.errors import ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.common import broadcast_shapes
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["ExprNode", "FusedExpr", "epilogue_inputs", "infer_epilogue", "apply_epilogue"]


@dataclass(frozen=True)
class ExprNode:
    """One op of a DAG; `args` index the DAG's values (inputs first, then node results)."""

    op: str
    args: tuple[int, ...]
    attrs: Attrs
    dtype: DType


@dataclass(frozen=True)
class FusedExpr:
    n_inputs: int
    nodes: tuple[ExprNode, ...]
    outputs: tuple[int, ...]  # value indices the fused op returns, in order

    def value_dtype(self, index: int, input_dtypes: Sequence[DType]) -> DType:
        n = self.n_inputs
        return input_dtypes[index] if index < n else self.nodes[index - n].dtype

    def evaluate(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The numpy reference: every node through its own op's reference, in order."""
        if len(arrays) != self.n_inputs:
            raise ShapeError(f"fused expression {self} takes {self.n_inputs} inputs, "
                             f"got {len(arrays)}")
        values = [np.asarray(a) for a in arrays]
        for node in self.nodes:
            result = OPS[node.op].evaluate([values[i] for i in node.args], node.attrs)[0]
            values.append(np.asarray(result).astype(node.dtype.np_dtype, copy=False))
        return [values[i] for i in self.outputs]

    @property
    def label(self) -> str:
        """What the expression contains, e.g. 'Add+Relu' (for dumps and Graphviz)."""
        return "+".join(node.op for node in self.nodes) or "copy"

    def __repr__(self) -> str:
        return f"<{self.label}>"

    @staticmethod
    def single(op: str, attrs: Attrs, n_inputs: int, dtype: DType) -> FusedExpr:
        """The one-node expression of a plain elementwise op."""
        return FusedExpr(n_inputs, (ExprNode(op, tuple(range(n_inputs)), attrs, dtype),),
                         (n_inputs,))


# -- FusedElementwise -------------------------------------------------------------------------
def _infer_fused(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    expr: FusedExpr = attrs["expr"]
    if len(inputs) != expr.n_inputs:
        raise ShapeError(f"expression {expr} takes {expr.n_inputs} inputs, got {len(inputs)}")
    shape = broadcast_shapes(*(t.shape for t in inputs))
    dtypes = [t.dtype for t in inputs]
    return tuple(TensorType(shape, expr.value_dtype(i, dtypes)) for i in expr.outputs)


def _fused_reference(*arrays: np.ndarray, expr: FusedExpr) -> tuple[np.ndarray, ...]:
    shape = broadcast_shapes(*(a.shape for a in arrays))
    return tuple(np.broadcast_to(r, shape) for r in expr.evaluate(arrays))


FUSED_ELEMENTWISE = OPS.register(OpDef(
    "FusedElementwise", _infer_fused, _fused_reference,
    attrs=(attr("expr", AttrKind.ANY),), num_inputs=(1, -1), num_outputs=-1,
    elementwise=True,
    doc="A region of elementwise ops as one DAG over inputs broadcast to one shape; built "
        "by fusion, never imported.",
))


# -- epilogues of MatMul / Conv ----------------------------------------------------------------
def epilogue_inputs(epilogue: FusedExpr | None) -> int:
    """How many trailing inputs of the op belong to its epilogue."""
    return 0 if epilogue is None else epilogue.n_inputs - 1


def infer_epilogue(base: TensorType, extras: Sequence[TensorType],
                   epilogue: FusedExpr | None, op: str) -> TensorType:
    """The op's output type once the epilogue is applied to its product `base`."""
    if epilogue is None:
        return base
    if len(extras) != epilogue.n_inputs - 1 or len(epilogue.outputs) != 1:
        raise ShapeError(f"{op} epilogue {epilogue} takes {epilogue.n_inputs - 1} extra "
                         f"input(s) and gives one output; got {len(extras)} extra input(s)")
    for i, t in enumerate(extras):
        if broadcast_shapes(base.shape, t.shape) != base.shape:
            raise ShapeError(f"{op} epilogue input {i} of shape {t.shape} does not broadcast "
                             f"to the product's shape {base.shape}")
    dtypes = [base.dtype, *(t.dtype for t in extras)]
    return TensorType(base.shape, epilogue.value_dtype(epilogue.outputs[0], dtypes))


def apply_epilogue(base: np.ndarray, extras: Sequence[np.ndarray],
                   epilogue: FusedExpr | None) -> np.ndarray:
    if epilogue is None:
        return base
    result = epilogue.evaluate([base, *extras])[0]
    return np.broadcast_to(result, base.shape)
