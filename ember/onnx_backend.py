"""An `onnx.backend.base.Backend` over ember, so that ONNX's own backend tests run through it.

ONNX's node tests feed some compile-time values (a Reshape's shape, a Slice's starts) as
graph inputs. ember needs those at compile time; the representation compiles at the first
`run`, when the values are known, freezing exactly the inputs the importer asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep, namedtupledict

from ember.compiler import CompiledModel, compile
from ember.errors import NonConstantInputError
from ember.frontends.onnx import import_onnx, input_signature, load_model

__all__ = ["EmberBackend", "EmberRep", "prepare", "run_model", "supports_device"]


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value)


class EmberRep(BackendRep):
    def __init__(self, model: onnx.ModelProto, target: str | None) -> None:
        self.model = load_model(model)
        self.target = target
        self.input_names = list(input_signature(self.model))
        self.output_names = [o.name for o in self.model.graph.output]
        self._compiled: dict[tuple, tuple[CompiledModel, frozenset[str]]] = {}

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
            feeds = {name: _as_array(inputs[name]) for name in self.input_names}
        else:
            if isinstance(inputs, (np.ndarray, onnx.TensorProto)):
                inputs = [inputs]
            feeds = {name: _as_array(a) for name, a in zip(self.input_names, inputs)}
        compiled, frozen = self._compile_for(feeds)
        outputs = compiled(**{n: a for n, a in feeds.items() if n not in frozen})
        return namedtupledict("Outputs", self.output_names)(
            *[outputs[name] for name in self.output_names]
        )


class EmberBackend(Backend):
    """Runs on ember's default device; ONNX's "CPU" device string maps to it."""

    target: str | None = None

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> EmberRep:
        super().prepare(model, device, **kwargs)
        return EmberRep(model, cls.target)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Sequence[np.ndarray], device: str = "CPU",
                 outputs_info: Any = None, **kwargs: Any) -> tuple[Any, ...]:
        raise NotImplementedError("ember runs whole models; wrap the node in a model")

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


prepare = EmberBackend.prepare
run_model = EmberBackend.run_model
supports_device = EmberBackend.supports_device
