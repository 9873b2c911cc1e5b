"""Typed, frozen op attributes, checked against the op's schema when a node is built.

Downstream code never sees loose dicts or raw ONNX strings: ints are `int`, lists are
tuples, tensors are read-only numpy arrays, dtypes are `DType` members.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember.ir.dtypes import DType

__all__ = ["AttrKind", "AttrSpec", "Attrs", "REQUIRED", "normalize_attr"]


class AttrKind(enum.Enum):
    INT = "int"
    FLOAT = "float"
    STRING = "string"
    INTS = "ints"
    FLOATS = "floats"
    TENSOR = "tensor"
    DTYPE = "dtype"
    ANY = "any"  # an opaque, hashable value (a fused expression); only ember builds these


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class AttrSpec:
    name: str
    kind: AttrKind
    default: Any = REQUIRED
    choices: tuple[Any, ...] | None = None


def normalize_attr(kind: AttrKind, value: Any) -> Any:
    """Bring a value to the canonical Python type of its kind; raise TypeError/ValueError."""
    if value is None:
        return None
    if kind is AttrKind.INT:
        if isinstance(value, (bool, np.bool_)):
            return int(value)
        if isinstance(value, (int, np.integer)):
            return int(value)
        raise TypeError(f"expected an int, got {type(value).__name__}")
    if kind is AttrKind.FLOAT:
        return float(value)
    if kind is AttrKind.STRING:
        if isinstance(value, bytes):
            value = value.decode()
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        return value
    if kind is AttrKind.INTS:
        return tuple(int(v) for v in np.asarray(value).reshape(-1).tolist())
    if kind is AttrKind.FLOATS:
        return tuple(float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1).tolist())
    if kind is AttrKind.TENSOR:
        array = np.array(value, copy=True) if not isinstance(value, np.ndarray) else value
        if array.flags.writeable:
            array = array.copy()
            array.flags.writeable = False
        return array
    if kind is AttrKind.DTYPE:
        if isinstance(value, DType):
            return value
        return DType.from_numpy(value)
    return value


def _hashable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        # an object array's bytes are pointers: hash what they point to (strings)
        data = (repr(value.tolist()).encode() if value.dtype.hasobject
                else np.ascontiguousarray(value).tobytes())
        digest = hashlib.sha1(data).hexdigest()
        return ("ndarray", str(value.dtype), value.shape, digest)
    return value


class Attrs(Mapping[str, Any]):
    """An immutable, hashable mapping of attribute name to normalized value."""

    __slots__ = ("_items", "_hash", "_key")

    def __init__(self, items: Mapping[str, Any] | None = None):
        self._items: dict[str, Any] = dict(sorted((items or {}).items()))
        self._hash: int | None = None
        self._key: tuple | None = None

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def key(self) -> tuple:
        """A hashable key that treats equal arrays as equal (for CSE and kernel caches).
        Computed once: hashing a large constant's bytes is not free."""
        if self._key is None:
            self._key = tuple((k, _hashable(v)) for k, v in self._items.items())
        return self._key

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self.key())
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attrs) and self.key() == other.key()

    def replace(self, **changes: Any) -> Attrs:
        merged = dict(self._items)
        merged.update(changes)
        return Attrs(merged)

    def __repr__(self) -> str:
        parts = []
        for k, v in self._items.items():
            if isinstance(v, np.ndarray):
                v = f"<{v.dtype}{list(v.shape)}>"
            parts.append(f"{k}={v}")
        return "{" + ", ".join(parts) + "}"
