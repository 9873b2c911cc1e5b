"""The ONNX frontend: load a model, convert its nodes onto ember's op set.

Converters live in one module per op family; importing this package registers them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from ember.frontends.onnx import elementwise, linalg, movement, nn, reduce  # noqa: F401
from ember.frontends.onnx import movement_const, movement_resize  # noqa: F401  (register on import)
from ember.frontends.onnx import quant  # noqa: F401  (quantized ops, com.microsoft ones too)
from ember.frontends.onnx import legacy, math_extra  # noqa: F401  (register on import)
from ember.frontends.onnx import attention  # noqa: F401  (Attention and its relatives)
from ember.frontends.onnx import einsum  # noqa: F401  (Einsum as MatMul / ReduceSum / ...)
from ember.frontends.onnx import decode_state  # noqa: F401  (TensorScatter, CausalConvWithState)
from ember.frontends.onnx import control_flow  # noqa: F401  (If, Loop, Scan, sequences)
from ember.frontends.onnx import dynamic  # noqa: F401  (value-dependent shapes, ReverseSequence)
from ember.frontends.onnx import loss  # noqa: F401  (losses)
from ember.frontends.onnx import ml  # noqa: F401  (ai.onnx.ml domain)
from ember.frontends.onnx import strings  # noqa: F401  (text ops)
from ember.frontends.onnx import recurrent  # noqa: F401  (LSTM, GRU, RNN)
from ember.frontends.onnx import vision, signal  # noqa: F401  (vision and signal ops)
from ember.frontends.onnx.importer import CONVERTERS, import_graph, value_info_type
from ember.frontends.onnx.loader import load_model, model_opset
from ember.ir import DType, Graph

__all__ = ["import_onnx", "import_graph", "load_model", "input_signature", "CONVERTERS", "model_opset"]


def input_signature(model: onnx.ModelProto) -> dict[str, tuple[tuple[int | str | None, ...], DType]]:
    """Each graph input's dims (ints, or a name/None where symbolic) and dtype."""
    initializers = {t.name for t in model.graph.initializer}
    return {
        info.name: value_info_type(info)
        for info in model.graph.input
        if info.name not in initializers
    }


def import_onnx(
    model,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    constant_inputs: Mapping[str, np.ndarray] | None = None,
) -> Graph:
    """Load (path, bytes or ModelProto) and convert to a Graph with static shapes."""
    return import_graph(
        load_model(model), input_shapes=input_shapes, constant_inputs=constant_inputs
    )
