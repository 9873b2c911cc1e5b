"""Graph boundary ops: `Input` (a graph input) and `Constant` (a weight or folded value)."""

from __future__ import annotations

import numpy as np

from ember.ir.attrs import AttrKind
from ember.ir.dtypes import DType
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType


def _infer_input(inputs, attrs):
    return (TensorType(attrs["shape"], attrs["dtype"]),)


def _reference_input(**attrs):
    raise RuntimeError("Input has no reference: executors feed it")


def _infer_constant(inputs, attrs):
    value: np.ndarray = attrs["value"]
    return (TensorType(value.shape, DType.from_numpy(value.dtype)),)


def _reference_constant(*, value):
    return value


INPUT = OPS.register(
    OpDef(
        "Input",
        _infer_input,
        _reference_input,
        attrs=(attr("shape", AttrKind.INTS), attr("dtype", AttrKind.DTYPE)),
        num_inputs=(0, 0),
        doc="A graph input; the node's name is the input's name.",
    )
)
CONSTANT = OPS.register(
    OpDef(
        "Constant",
        _infer_constant,
        _reference_constant,
        attrs=(attr("value", AttrKind.TENSOR),),
        num_inputs=(0, 0),
        doc="A constant tensor (weights, folded shape arithmetic).",
    )
)


IDENTITY = OPS.register(
    OpDef(
        "Identity",
        lambda inputs, attrs: (inputs[0],),
        lambda x: x,
        doc="Passes its input through (ONNX Identity, and Dropout at inference).",
    )
)
