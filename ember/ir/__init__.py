"""The IR: dtypes, tensor types, the graph, the op registry, the verifier, text dumps."""

from __future__ import annotations

from ember.ir.attrs import Attrs, AttrKind, AttrSpec
from ember.ir.dtypes import DType
from ember.ir.graph import DEVICE, HOST, Graph, Use, Value
from ember.ir.ops import OPS, OpDef
from ember.ir.text import to_dot, to_text
from ember.ir.types import TensorType
from ember.ir.verify import verify

__all__ = [
    "DEVICE", "HOST", "Attrs", "AttrKind", "AttrSpec", "DType", "Graph", "OPS", "OpDef", "TensorType",
    "Use", "Value", "to_dot", "to_text", "verify",
]
