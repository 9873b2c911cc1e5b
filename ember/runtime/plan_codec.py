"""An ExecutionPlan as JSON and numpy arrays, for bundles (runtime/bundle.py).

Nothing is pickled, and only the classes named in `_CLASSES` (and the enums in `_ENUMS`)
are ever made from stored data. Values are written with tags:

    tuple -> JSON array          list -> {"$list": [...]}      Mapping -> {"$map": [[k, v]]}
    frozenset -> {"$set": [...]}  Attrs -> {"$attrs": {...}}   enum -> {"$enum": cls, "name"}
    ndarray -> {"$array": member, "dtype": name} (strings: {"$strings": [...], "shape"})
    numpy scalar -> {"$scalar": dtype, "value"}                Kernel -> {"$kernel": index}
    dataclass -> {"$dc": cls, "fields": {...}}

Dataclasses are written field by field as `dataclasses.fields` lists them, so a field added
to Launch, Step or Slot is carried without a change here. Two fields are not stored:
`Lowered.packed` (layout functions; the plan's constants already hold the packed arrays)
and `Lowered.tuning` (the tuner's bookkeeping; bundles list the parameters used apart).
Reading checks the stored fields against the class as this ember defines it: a field the
class lacks, or a required field that was not stored, is a PlanFormatError. Kernels are
kept once per plan in a table (a source used by many launches is stored once).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ember.codegen.types import ArgKind, Kernel, Launch, Lowered
from ember.errors import EmberError, ModelLoadError
from ember.ir import Attrs, DType, TensorType
from ember.ir.ops.fused import ExprNode, FusedExpr
from ember.runtime.types import ExecutionPlan, MemoryPlan, Slot, Step

__all__ = ["PlanFormatError", "encode_plan", "decode_plan"]

_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (
    ExecutionPlan, Slot, Step, MemoryPlan, TensorType, Kernel, Launch, Lowered, ExprNode,
    FusedExpr)}
_ENUMS: dict[str, type[enum.Enum]] = {cls.__name__: cls for cls in (DType, ArgKind)}
_NOT_STORED: dict[type, frozenset[str]] = {Lowered: frozenset({"packed", "tuning"})}
# numpy's own dtypes by name; ml_dtypes' ones (whose module takes half a second to load)
# are added at the first name not found here
_DTYPES_BY_NAME = {member.value.numpy_name: member.np_dtype for member in DType
                   if not member.value.numpy_name.startswith("ml_dtypes.")
                   and member is not DType.STRING}

ReadArray = Callable[[str], np.ndarray]


class PlanFormatError(ModelLoadError):
    """Stored plan data that this ember cannot read back (written by another version)."""


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


class _Encoder:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.arrays: dict[str, np.ndarray] = {}
        self.kernels: list[Any] = []
        self._kernel_index: dict[Kernel, int] = {}
        self._array_names: dict[int, str] = {}

    def array(self, array: np.ndarray) -> dict[str, Any]:
        if array.dtype.kind in "OUS":  # strings: JSON, since .npy would pickle objects
            return {"$strings": [str(v) for v in array.reshape(-1).tolist()],
                    "shape": list(array.shape), "object": array.dtype.kind == "O"}
        name = self._array_names.get(id(array))
        if name is None:
            name = f"{self.prefix}{len(self.arrays)}.npy"
            self._array_names[id(array)] = name
            stored = np.ascontiguousarray(array)
            if stored.dtype.isbuiltin != 1:  # ml_dtypes' types: their bytes, viewed back
                stored = stored.view(f"u{stored.dtype.itemsize}")
            self.arrays[name] = stored
        return {"$array": name, "dtype": array.dtype.name}

    def kernel(self, kernel: Kernel) -> dict[str, int]:
        index = self._kernel_index.get(kernel)
        if index is None:
            index = len(self.kernels)
            self.kernels.append(self.dataclass(kernel))
            self._kernel_index[kernel] = index
        return {"$kernel": index}

    def dataclass(self, value: Any) -> dict[str, Any]:
        cls = type(value)
        if _CLASSES.get(cls.__name__) is not cls:
            raise EmberError(f"a bundle cannot hold a {cls.__module__}.{cls.__name__}")
        skipped = _NOT_STORED.get(cls, frozenset())
        return {"$dc": cls.__name__, "fields": {
            f.name: self.value(getattr(value, f.name))
            for f in dataclasses.fields(value) if f.init and f.name not in skipped}}

    def value(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            if isinstance(value, enum.Enum):  # ArgKind is a str enum
                return self.enum(value)
            return value
        if isinstance(value, enum.Enum):
            return self.enum(value)
        if isinstance(value, np.ndarray):
            return self.array(value)
        if isinstance(value, np.generic):
            if value.dtype.isbuiltin != 1 or value.dtype.hasobject:
                return {"$scalar": value.dtype.name, "array": self.array(np.asarray(value))}
            return {"$scalar": value.dtype.name, "value": value.item()}
        if isinstance(value, tuple):
            return [self.value(v) for v in value]
        if isinstance(value, list):
            return {"$list": [self.value(v) for v in value]}
        if isinstance(value, (frozenset, set)):
            return {"$set": sorted((self.value(v) for v in value), key=_sort_key)}
        if isinstance(value, Attrs):
            return {"$attrs": {k: self.value(v) for k, v in value.items()}}
        if isinstance(value, Mapping):
            return {"$map": [[self.value(k), self.value(v)] for k, v in value.items()]}
        if isinstance(value, Kernel):
            return self.kernel(value)
        if dataclasses.is_dataclass(value):
            return self.dataclass(value)
        raise EmberError(f"a bundle cannot hold a value of type {type(value).__name__}: "
                         f"{value!r:.80}")

    def enum(self, value: enum.Enum) -> dict[str, str]:
        cls = type(value)
        if _ENUMS.get(cls.__name__) is not cls:
            raise EmberError(f"a bundle cannot hold a {cls.__module__}.{cls.__name__}")
        return {"$enum": cls.__name__, "name": value.name}


def encode_plan(plan: ExecutionPlan, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The plan as JSON-ready data, and the arrays it refers to by member name (each name
    starts with `prefix`)."""
    encoder = _Encoder(prefix)
    body = encoder.dataclass(plan)
    return {"kernels": encoder.kernels, "plan": body}, encoder.arrays


class _Decoder:
    def __init__(self, read_array: ReadArray, kernels: list[Any]) -> None:
        self._read_array = read_array
        self._raw_kernels = kernels
        self._kernels: dict[int, Kernel] = {}
        self._arrays: dict[str, np.ndarray] = {}

    def value(self, data: Any) -> Any:
        if data is None or isinstance(data, (bool, int, float, str)):
            return data
        if isinstance(data, list):
            return tuple(self.value(v) for v in data)
        if not isinstance(data, dict) or len(data) == 0:
            raise PlanFormatError(f"unexpected stored value {data!r:.80}")
        if "$dc" in data:
            return self.dataclass(data)
        if "$kernel" in data:
            return self.kernel(data["$kernel"])
        if "$attrs" in data:
            return Attrs({k: self.value(v) for k, v in data["$attrs"].items()})
        if "$list" in data:
            return [self.value(v) for v in data["$list"]]
        if "$map" in data:
            return {self.value(k): self.value(v) for k, v in data["$map"]}
        if "$set" in data:
            return frozenset(self.value(v) for v in data["$set"])
        if "$enum" in data:
            cls = _ENUMS.get(data["$enum"])
            if cls is None or data["name"] not in cls.__members__:
                raise PlanFormatError(f"unknown enum value {data['$enum']}.{data['name']}")
            return cls[data["name"]]
        if "$array" in data:
            return self.array(data)
        if "$strings" in data:
            strings = np.array(data["$strings"], dtype=object if data["object"] else str)
            return strings.reshape(data["shape"])
        if "$scalar" in data:
            if "array" in data:
                return self.array(data["array"])[()]
            return _dtype(data["$scalar"]).type(data["value"])
        raise PlanFormatError(f"unknown stored tag in {sorted(data)}")

    def array(self, data: Mapping[str, Any]) -> np.ndarray:
        member = data["$array"]
        if member in self._arrays:
            return self._arrays[member]
        array = self._read_array(member)
        want = _dtype(data["dtype"])
        if array.dtype != want:
            if array.dtype.itemsize != want.itemsize:
                raise PlanFormatError(f"array {member} holds {array.dtype}, "
                                      f"not {want}")
            array = array.view(want)
        array.flags.writeable = False  # as ir attributes and plan constants are
        self._arrays[member] = array
        return array

    def kernel(self, index: int) -> Kernel:
        kernel = self._kernels.get(index)
        if kernel is None:
            if not 0 <= index < len(self._raw_kernels):
                raise PlanFormatError(f"kernel {index} is not in the plan's kernel table")
            kernel = self.dataclass(self._raw_kernels[index])
            self._kernels[index] = kernel
        return kernel

    def dataclass(self, data: Mapping[str, Any]) -> Any:
        cls = _CLASSES.get(data["$dc"])
        if cls is None:
            raise PlanFormatError(f"unknown stored class {data['$dc']!r}")
        stored = data["fields"]
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(stored) - set(fields))
        if unknown:
            raise PlanFormatError(f"{cls.__name__} has no field(s) {unknown} in this ember")
        missing = [name for name, f in fields.items() if name not in stored
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise PlanFormatError(f"{cls.__name__} field(s) {missing} were not stored")
        try:
            return cls(**{name: self.value(v) for name, v in stored.items()})
        except (TypeError, ValueError) as exc:
            raise PlanFormatError(f"stored {cls.__name__} does not fit this ember: "
                                  f"{exc}") from None


def _dtype(name: str) -> np.dtype:
    found = _DTYPES_BY_NAME.get(name)
    if found is None:
        found = {m.np_dtype.name: m.np_dtype for m in DType if m is not DType.STRING}.get(name)
    if found is None:
        raise PlanFormatError(f"unknown array dtype {name!r}")
    return found


def decode_plan(data: Mapping[str, Any], read_array: ReadArray) -> ExecutionPlan:
    """The plan `encode_plan` wrote; `read_array(member)` reads one of its arrays."""
    try:
        plan = _Decoder(read_array, list(data["kernels"])).value(data["plan"])
    except (KeyError, AttributeError, TypeError) as exc:
        raise PlanFormatError(f"malformed stored plan ({type(exc).__name__}: {exc})") from None
    if not isinstance(plan, ExecutionPlan):
        raise PlanFormatError(f"the stored plan is a {type(plan).__name__}")
    return plan
