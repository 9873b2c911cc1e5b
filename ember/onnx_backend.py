"""An `onnx.backend.base.Backend` over ember, so that ONNX's own backend tests run through it.

ONNX's node tests feed some compile-time values (a Reshape's shape, a Slice's starts) as
graph inputs. ember needs those at compile time; the representation compiles at the first
`run`, when the values are known, freezing exactly the inputs the importer asks for.

Device strings, as ONNX spells them: "CPU" is ember's default target (ONNX's test runner
asks for "CPU" only); "GPU" or "GPU:N" an OpenCL GPU; "OPENCL" or "OPENCL:P:D" an OpenCL
device; "NUMPY" the numpy executor. `supports_device` is True exactly for the strings that
`prepare` accepts on this machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.backend.base import Backend, BackendRep, namedtupledict

from ember.compiler import CompiledModel, compile, segment_compiler
from ember.errors import (
    DataDependentError,
    DeviceError,
    InputError,
    NonConstantInputError,
)
from ember.frontends.onnx import import_onnx, load_model
from ember.frontends.onnx.checks import MAX_OPSET
from ember.runtime.device import NUMPY, devices, resolve_target
from ember.staged import StagedModel

__all__ = ["EmberBackend", "EmberRep", "prepare", "run_model", "run_node", "supports_device"]

DEVICES_TEXT = "'CPU' (ember's default target), 'GPU[:N]', 'OPENCL[:P:D]' or 'NUMPY'"


def _target_for(device: str, default: str | None) -> str | None:
    """The ember target an ONNX device string names (`default` for "CPU"), checked to exist
    here: DeviceError otherwise."""
    kind, _, index = str(device).partition(":")
    kind = kind.upper()
    if kind == "CPU" and not index:
        target = default
    elif kind == "NUMPY" and not index:
        target = NUMPY
    elif kind == "OPENCL":
        target = f"opencl:{index}" if index else "opencl"
    elif kind == "GPU":
        gpus = [i for i in devices() if i.traits.device_type == "GPU" and not i.traits.simulator]
        try:
            target = gpus[int(index or 0)].target
        except (ValueError, IndexError):
            raise DeviceError(f"device {device!r}: this machine has {len(gpus)} OpenCL GPU(s)"
                              " (simulators are used only when named)") from None
    else:
        raise DeviceError(f"device {device!r} is not one ember runs on; use {DEVICES_TEXT}")
    resolve_target(target)  # DeviceError when the named device does not exist
    return target


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value)


def _as_value(value: Any, declared: onnx.TypeProto | None) -> Any:
    """An input as the staged runtime holds it: an array, a list for a sequence, None for
    an empty optional. A sequence input given as one array (its items stacked, as
    `np.asarray` makes of a list) is split back into its items."""
    kind = declared.WhichOneof("value") if declared is not None else "tensor_type"
    if kind == "optional_type":
        if isinstance(value, np.ndarray) and value.dtype == object and value.shape == () \
                and value.item() is None:
            value = None  # np.asarray(None)
        return None if value is None else _as_value(value, declared.optional_type.elem_type)
    if kind == "sequence_type":
        if isinstance(value, onnx.SequenceProto):
            value = numpy_helper.to_list(value)
        return [_as_value(v, declared.sequence_type.elem_type) for v in value]
    return _as_array(value)


def _host_typed(model: onnx.ModelProto) -> bool:
    """Whether an input or output of the model is a sequence or an optional."""
    return any(info.type.WhichOneof("value") != "tensor_type"
               for info in list(model.graph.input) + list(model.graph.output))


class EmberRep(BackendRep):
    def __init__(self, model: onnx.ModelProto, target: str | None) -> None:
        self.model = load_model(model)
        self.target = target
        initializers = {t.name for t in self.model.graph.initializer}
        self._declared = {i.name: i.type for i in self.model.graph.input
                          if i.name not in initializers}
        self.input_names = list(self._declared)
        self.output_names = [o.name for o in self.model.graph.output]
        self._compiled: dict[tuple, tuple[CompiledModel, frozenset[str]]] = {}
        # models with sequences, optionals or data-dependent shapes run staged
        self._staged: StagedModel | None = None
        if _host_typed(self.model):
            self._staged = self._staging()

    def _staging(self) -> StagedModel:
        return StagedModel(self.model, segment_compiler(self.target), freeze_inputs=True)

    def _compile_for(self, feeds: dict[str, np.ndarray]) -> tuple[CompiledModel, frozenset[str]]:
        key = tuple((n, a.shape, str(a.dtype)) for n, a in feeds.items())
        cached = self._compiled.get(key)
        if cached is not None and not cached[1]:
            return cached
        frozen: set[str] = set()
        while True:
            try:
                shapes = {n: a.shape for n, a in feeds.items() if n not in frozen}
                graph = import_onnx(self.model, input_shapes=shapes,
                                    constant_inputs={n: feeds[n] for n in frozen})
                break
            except NonConstantInputError as exc:
                new = set(exc.names) - frozen
                if not new:
                    raise
                frozen |= new
        compiled = compile(graph, target=self.target)
        self._compiled[key] = (compiled, frozenset(frozen))
        return compiled, frozenset(frozen)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        if isinstance(inputs, dict):
            feeds = {name: _as_value(inputs[name], self._declared[name])
                     for name in self.input_names}
        else:
            if isinstance(inputs, (np.ndarray, onnx.TensorProto)):
                inputs = [inputs]
            feeds = {name: _as_value(a, self._declared[name])
                     for name, a in zip(self.input_names, inputs)}
        outputs = None
        if self._staged is None:
            try:
                compiled, frozen = self._compile_for(feeds)
                outputs = compiled(**{n: a for n, a in feeds.items() if n not in frozen})
            except DataDependentError:
                self._staged = self._staging()
        if self._staged is not None:
            outputs = self._staged(feeds)
        return namedtupledict("Outputs", self.output_names)(
            *[outputs[name] for name in self.output_names]
        )


class EmberBackend(Backend):
    """ember as an ONNX backend; `target` is what the "CPU" device string runs on (None:
    ember's default target)."""

    target: str | None = None

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> EmberRep:
        super().prepare(model, device, **kwargs)
        return EmberRep(model, _target_for(device, cls.target))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[Any, Sequence[int]]] | None = None,
                 **kwargs: Any) -> tuple[Any, ...]:
        """Run one node on `inputs` (arrays for its named inputs, in order, or a dict by
        name): it is wrapped in a model whose input types are the arrays' and whose output
        types are `outputs_info`'s (dtype, shape) pairs, else ONNX's shape inference's.
        kwargs: opset_version (default: the newest ember accepts)."""
        super().run_node(node, inputs, device=device, outputs_info=outputs_info, **kwargs)
        feeds = _node_feeds(node, inputs)
        model = _node_model(node, feeds, outputs_info, kwargs.get("opset_version"))
        return cls.prepare(model, device).run(feeds)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            _target_for(device, cls.target)
        except DeviceError:
            return False
        return True


def _node_feeds(node: onnx.NodeProto, inputs: Any) -> dict[str, np.ndarray]:
    names = list(dict.fromkeys(n for n in node.input if n))  # "" is an omitted optional input
    if isinstance(inputs, Mapping):
        unknown = sorted(set(inputs) - set(names))
        missing = [n for n in names if n not in inputs]
        if unknown or missing:
            raise InputError(f"node {node.op_type} {node.name!r} takes inputs {names}; "
                             f"unknown {unknown}, missing {missing}")
        return {n: _as_array(inputs[n]) for n in names}
    if isinstance(inputs, (np.ndarray, onnx.TensorProto)):
        inputs = [inputs]
    values = list(inputs)
    given = [n for n in node.input if n]
    if len(values) != len(given):
        raise InputError(f"node {node.op_type} {node.name!r} has {len(given)} named input(s) "
                         f"{given}, got {len(values)} array(s)")
    feeds: dict[str, np.ndarray] = {}
    for name, value in zip(given, values):
        feeds.setdefault(name, _as_array(value))  # a name given twice is one graph input
    return feeds


def _node_model(node: onnx.NodeProto, feeds: Mapping[str, np.ndarray],
                outputs_info: Sequence[tuple[Any, Sequence[int]]] | None,
                opset: int | None) -> onnx.ModelProto:
    """A one-node model over `feeds`, every output typed (declared or inferred)."""
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                  a.shape) for n, a in feeds.items()]
    outputs = [n for n in node.output if n]
    imports = [helper.make_opsetid("", opset or MAX_OPSET)]
    if node.domain not in ("", "ai.onnx"):
        imports.append(helper.make_opsetid(node.domain, 1))

    def model(graph_outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        graph = helper.make_graph([node], node.name or node.op_type, graph_inputs,
                                  graph_outputs)
        return helper.make_model(graph, opset_imports=imports)

    if outputs_info is not None:
        if len(outputs_info) != len(outputs):
            raise InputError(f"outputs_info has {len(outputs_info)} entries; node "
                             f"{node.op_type} {node.name!r} has outputs {outputs}")
        return model([helper.make_tensor_value_info(
            n, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape))
            for n, (dtype, shape) in zip(outputs, outputs_info)])
    inferred = onnx.shape_inference.infer_shapes(
        model([helper.make_empty_tensor_value_info(n) for n in outputs]))
    found = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)
             if v.type.tensor_type.elem_type}
    untyped = [n for n in outputs if n not in found]
    if untyped:
        raise InputError(f"ONNX shape inference gives no type for output(s) {untyped} of "
                         f"{node.op_type} {node.name!r}; pass outputs_info=[(dtype, shape)]")
    return model([found[n] for n in outputs])


prepare = EmberBackend.prepare
run_model = EmberBackend.run_model
run_node = EmberBackend.run_node
supports_device = EmberBackend.supports_device
