"""ONNX ModelProto -> ember Graph.

Shapes are static once specialized, so shape arithmetic (Shape, Gather on shapes, Concat,
Range, ConstantOfShape, ...) is folded while importing: a node whose inputs are all
constants becomes a Constant. Inputs that ONNX passes as tensors but that ember needs as
compile-time values (Reshape's shape, Slice's starts, Pad's pads, reduction axes) become
attributes; when such an input is a graph input, NonConstantInputError names it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ember.errors import (
    DataDependentError,
    DTypeError,
    EmberError,
    ModelLoadError,
    NonConstantInputError,
    UnsupportedOpError,
)
from ember.frontends.dims import resolve_shapes
from ember.frontends.onnx.checks import check_model, default_opset, node_label, op_key
from ember.ir import OPS, DType, Graph, TensorType, Value

__all__ = ["ImportContext", "onnx_op", "CONVERTERS", "convert_node", "import_graph",
           "value_info_type"]

log = logging.getLogger(__name__)

Converter = Callable[["ImportContext", onnx.NodeProto], Sequence["Value | None"]]
CONVERTERS: dict[str, Converter] = {}

# Results of folding larger than this stay computed at run time.
FOLD_LIMIT = 1 << 24

# Attributes that ONNX defines as flags (0 or 1) on the ops ember converts.
FLAG_ATTRIBUTES = frozenset({
    "keepdims", "transA", "transB", "noop_with_empty_axes", "largest", "sorted", "exclusive",
    "reverse", "upper", "ceil_mode", "count_include_pad", "select_last_index",
    "training_mode", "allowzero", "detect_negative", "detect_positive",
})


def onnx_op(*op_types: str, domain: str = "") -> Callable[[Converter], Converter]:
    """Register the converter of one or more ONNX op types (of the default domain unless
    `domain` names another)."""

    def register(fn: Converter) -> Converter:
        for op_type in op_types:
            key = op_key(op_type, domain)
            if key in CONVERTERS:
                raise ValueError(f"converter for {key} registered twice")
            CONVERTERS[key] = fn
        return fn

    return register


@dataclass
class ImportContext:
    graph: Graph
    opset: int
    values: dict[str, Value] = field(default_factory=dict)
    node: onnx.NodeProto | None = None  # the node being converted (for messages)

    # -- reading a node ---------------------------------------------------------------------
    @property
    def where(self) -> str:
        node = self.node
        return f"{node.op_type} node {node.name or node.output[0]!r}" if node else "import"

    def input(self, node: onnx.NodeProto, index: int) -> Value | None:
        """The value of input `index`, or None when the optional input is absent."""
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.values:
            raise EmberError(f"{self.where}: input {name!r} is not produced by any node")
        return self.values[name]

    def inputs(self, node: onnx.NodeProto) -> list[Value | None]:
        return [self.input(node, i) for i in range(len(node.input))]

    def type_of(self, value: Value) -> TensorType:
        return self.graph.type_of(value)

    def const_input(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray | None:
        """The compile-time value of input `index` (None when absent). A graph input here
        raises NonConstantInputError naming it."""
        value = self.input(node, index)
        if value is None:
            return None
        array = self.graph.constant_value(value)
        if array is not None:
            return array
        sources = self._graph_inputs_behind(value)
        raise NonConstantInputError(
            f"{self.where}: {what} (input {index}, {node.input[index]!r}) must be known at "
            f"compile time; it depends on graph input(s) {list(sources)}",
            tuple(sources),
        )

    def _graph_inputs_behind(self, value: Value) -> list[str]:
        found, stack, seen = [], [value.node], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if self.graph.op(n) == "Input":
                found.append(self.graph.node_name(n))
            stack.extend(v.node for v in self.graph.inputs_of(n))
        return sorted(found)

    @staticmethod
    def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                if name in FLAG_ATTRIBUTES and value not in (0, 1):
                    # runtimes disagree on what 2 or -2**40 means (onnxruntime keeps the
                    # low 32 bits); a flag that is neither 0 nor 1 is refused, not guessed
                    raise UnsupportedOpError(
                        f"{node_label(node)}: attribute {name}={value!r} is a flag, "
                        f"0 or 1")
                try:
                    if isinstance(value, bytes):
                        return value.decode()
                    if isinstance(value, onnx.TensorProto):
                        return numpy_helper.to_array(value)
                    if isinstance(value, list) and value and isinstance(value[0], bytes):
                        return [v.decode() for v in value]
                except (UnicodeDecodeError, ValueError, TypeError) as exc:
                    raise ModelLoadError(f"{node_label(node)}: attribute {name} cannot be "
                                         f"read: {exc}") from exc
                return value
        return default

    # -- building ---------------------------------------------------------------------------
    def add(self, op: str, inputs: Sequence[Value], attrs: Mapping[str, Any] | None = None,
            *, name: str | None = None) -> Value:
        """Add a single-output op, folding it to a constant when every input is one."""
        return self.add_multi(op, inputs, attrs, name=name)[0]

    def add_multi(self, op: str, inputs: Sequence[Value],
                  attrs: Mapping[str, Any] | None = None, *, name: str | None = None
                  ) -> tuple[Value, ...]:
        label = name or self._label(op)
        node = self.graph.add_node(op, list(inputs), attrs or {}, name=label)
        outputs = tuple(Value(node, p) for p in range(len(self.graph.output_types(node))))
        arrays = [self.graph.constant_value(v) for v in inputs]
        if inputs and all(a is not None for a in arrays) and self._foldable(node):
            results = OPS[op].evaluate(arrays, self.graph.attrs(node))
            folded = []
            for port, (result, want) in enumerate(zip(results, self.graph.output_types(node))):
                array = np.asarray(result).astype(want.dtype.np_dtype, copy=False)
                folded.append(self.graph.add_constant(array.reshape(want.shape), name=f"{label}:{port}"))
            self.graph.remove_node(node)
            return tuple(folded)
        return outputs

    def add_data_dependent(self, op: str, inputs: Sequence[Value | None],
                           attrs: Mapping[str, Any] | None = None) -> tuple[Value, ...]:
        """A node whose output shapes depend on its input values (NonZero, Unique,
        NonMaxSuppression): folded through its reference when every present input is a
        constant; otherwise DataDependentError, and the node runs on the host between
        compiled segments. Absent optional inputs (None) reach the reference as None."""
        arrays = [None if v is None else self.graph.constant_value(v) for v in inputs]
        missing = [self.node.input[i] if self.node is not None and i < len(self.node.input)
                   else str(i) for i, (v, a) in enumerate(zip(inputs, arrays))
                   if v is not None and a is None]
        if missing:
            raise DataDependentError(
                f"{self.where}: its output shape depends on the values of {missing}",
                node=self.graph.name if self.node is None else (self.node.name or self.node.output[0]))
        opdef = OPS[op]
        results = opdef.evaluate(arrays, opdef.make_attrs(
            attrs or {}, node=(self.node.name or self.node.output[0]) if self.node else ""))
        return tuple(self.constant(np.asarray(r), name=f"{self._label(op)}:{port}")
                     for port, r in enumerate(results))

    def constant(self, array: np.ndarray, name: str | None = None) -> Value:
        return self.graph.add_constant(np.asarray(array), name=name or self._label("const"))

    def _foldable(self, node: int) -> bool:
        # Ops marked not to fold keep constant inputs compressed (quantized weights).
        if not OPS[self.graph.op(node)].folds(self.graph.input_types(node),
                                              self.graph.output_types(node)):
            return False
        return sum(t.size for t in self.graph.output_types(node)) <= FOLD_LIMIT

    def _label(self, op: str) -> str:
        base = (self.node.name or self.node.output[0]) if self.node is not None else op
        return f"{base}/{op}" if self.node is not None and op != self.node.op_type else base


def convert_node(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Convert one node into `ctx.graph`, binding its outputs in `ctx.values`. Shared by the
    graph import and the control-flow converters, which convert subgraph nodes the same way."""
    ctx.node = node
    converter = CONVERTERS.get(op_key(node.op_type, node.domain))
    if converter is None:  # a subgraph's op: check_model reads the top-level graph only
        raise UnsupportedOpError(f"{ctx.where}: ONNX op {op_key(node.op_type, node.domain)} "
                                 f"is not supported by ember")
    try:
        results = converter(ctx, node)
    except (NonConstantInputError, DataDependentError):
        raise
    except EmberError as exc:
        if ctx.where not in str(exc):
            raise type(exc)(f"{ctx.where}: {exc}") from exc
        raise
    for name, value in zip(node.output, results):
        if name and value is not None:
            ctx.values[name] = value


def value_info_type(info: onnx.ValueInfoProto) -> tuple[tuple[int | str | None, ...], DType]:
    """(dims, dtype) of a graph input: ints, or the dim_param name / None when symbolic."""
    tensor = info.type.tensor_type
    if not info.type.HasField("tensor_type"):
        raise UnsupportedOpError(f"graph input {info.name!r} is not a tensor (sequence/map/optional)")
    dtype = DType.from_onnx(tensor.elem_type)
    dims: list[int | str | None] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:  # no size, or a negative one some exporters write for "dynamic"
            dims.append(None)
    return tuple(dims), dtype


def _check_output_dtype(info: onnx.ValueInfoProto, computed: DType) -> None:
    """A graph output declared with one element type and computed as another: a caller
    reading the declaration would misread the result (onnxruntime refuses such models)."""
    declared = info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else 0
    if declared and DType.from_onnx(declared) != computed:
        raise DTypeError(f"graph output {info.name!r} is declared "
                         f"{DType.from_onnx(declared)}, the graph computes {computed}")


def _initializer_array(tensor: onnx.TensorProto) -> np.ndarray:
    """An initializer's value; data that does not fit its dims or dtype: ModelLoadError."""
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # noqa: BLE001 - onnx raises several kinds on malformed data
        raise ModelLoadError(f"initializer {tensor.name!r} (dims {list(tensor.dims)}, "
                             f"data type {tensor.data_type}) cannot be read: {exc}") from exc


def import_graph(
    model: onnx.ModelProto,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    constant_inputs: Mapping[str, np.ndarray] | None = None,
    checked: bool = False,
    arrays: dict[str, np.ndarray] | None = None,
) -> Graph:
    """Convert a (checked, opset-normalized) ModelProto into an ember Graph.

    A model imported again for other input shapes: `checked` skips the model's checks
    (they passed at its first import), and `arrays` keeps its initializers' arrays
    by name, filled at the first import and reused after (read-only, never copied)."""
    opset = default_opset(model)
    onnx_graph = model.graph
    if not checked:
        check_model(model, "the model", CONVERTERS)
    graph = Graph(onnx_graph.name or "model")
    ctx = ImportContext(graph, opset)
    constant_inputs = dict(constant_inputs or {})
    initializers = {t.name for t in onnx_graph.initializer}
    signature = {info.name: value_info_type(info) for info in onnx_graph.input
                 if info.name not in initializers}
    # Inputs frozen as constants fix the dims they share with the others, like given shapes.
    given = {name: np.shape(array) for name, array in constant_inputs.items()
             if name in signature}
    given.update(input_shapes or {})
    shapes = resolve_shapes({name: dims for name, (dims, _) in signature.items()}, given)

    for tensor in onnx_graph.initializer:
        array = arrays.get(tensor.name) if arrays is not None else None
        if array is None:
            array = _initializer_array(tensor)
            if arrays is not None:
                array.flags.writeable = False  # shared by every later import
                arrays[tensor.name] = array
        ctx.values[tensor.name] = graph.add_constant(array, name=tensor.name)
    for name, (_, dtype) in signature.items():
        if name in constant_inputs:
            array = np.asarray(constant_inputs[name], dtype=dtype.np_dtype)
            ctx.values[name] = graph.add_constant(array, name=name)
            continue
        ctx.values[name] = graph.add_input(name, TensorType(shapes[name], dtype))

    for node in onnx_graph.node:
        convert_node(ctx, node)
    ctx.node = None
    outputs = []
    for info in onnx_graph.output:
        if info.name not in ctx.values:
            raise EmberError(f"graph output {info.name!r} is produced by no node")
        _check_output_dtype(info, graph.type_of(ctx.values[info.name]).dtype)
        outputs.append((info.name, ctx.values[info.name]))
    graph.set_outputs(outputs)
    return graph
