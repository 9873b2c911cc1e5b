"""The op registry: one `OpDef` per op, with its attribute schema, type inference and numpy
reference. The reference is the ground truth for tests and the host fallback at run time.

Per-op facts that later stages need (elementwise, commutative) are fields here, so passes ask
`OPS["Add"].elementwise` instead of keeping their own lists of names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ember.errors import EmberError, ShapeError, UnsupportedOpError
from ember.ir.attrs import REQUIRED, AttrKind, Attrs, AttrSpec, normalize_attr
from ember.ir.types import TensorType

__all__ = ["OpDef", "OPS", "OpRegistry", "InferFn", "ReferenceFn"]

InferFn = Callable[[Sequence[TensorType], Attrs], tuple[TensorType, ...]]
ReferenceFn = Callable[..., Any]  # reference(*arrays, **attrs) -> array or tuple of arrays


@dataclass(frozen=True)
class OpDef:
    """What an op is: its inputs, attributes, output types and numpy meaning."""

    name: str
    infer: InferFn
    reference: ReferenceFn
    attrs: tuple[AttrSpec, ...] = ()
    num_inputs: tuple[int, int] = (1, 1)  # (min, max); max -1 means variadic
    num_outputs: int = 1
    elementwise: bool = False  # output[i] depends only on inputs at i (after broadcasting)
    commutative: bool = False
    doc: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    # -- attributes -------------------------------------------------------------------------
    def make_attrs(self, given: Mapping[str, Any] | None = None, *, node: str = "") -> Attrs:
        """Validate attributes against the schema; fill defaults; normalize types."""
        given = dict(given or {})
        specs = {spec.name: spec for spec in self.attrs}
        unknown = sorted(set(given) - set(specs))
        where = f"{self.name} node {node!r}" if node else self.name
        if unknown:
            raise UnsupportedOpError(
                f"{where}: unknown attribute(s) {unknown}; known: {sorted(specs)}"
            )
        out: dict[str, Any] = {}
        for name, spec in specs.items():
            value = given.get(name, spec.default)
            if value is REQUIRED:
                raise UnsupportedOpError(f"{where}: required attribute {name!r} is missing")
            try:
                value = normalize_attr(spec.kind, value)
            except (TypeError, ValueError) as exc:
                raise UnsupportedOpError(
                    f"{where}: attribute {name!r} expects {spec.kind.value}: {exc}"
                ) from exc
            if spec.choices is not None and value not in spec.choices:
                raise UnsupportedOpError(
                    f"{where}: attribute {name!r}={value!r} is not one of {spec.choices}"
                )
            out[name] = value
        return Attrs(out)

    # -- typing and evaluation --------------------------------------------------------------
    def check_arity(self, count: int, *, node: str = "") -> None:
        low, high = self.num_inputs
        if count < low or (high >= 0 and count > high):
            expected = f"{low}" if low == high else f"{low}..{'any' if high < 0 else high}"
            raise ShapeError(
                f"{self.name} node {node!r}: expected {expected} inputs, got {count}"
            )

    def infer_types(
        self, inputs: Sequence[TensorType], attrs: Attrs, *, node: str = ""
    ) -> tuple[TensorType, ...]:
        self.check_arity(len(inputs), node=node)
        try:
            outputs = tuple(self.infer(inputs, attrs))
        except EmberError as exc:
            if node and repr(node) not in str(exc):
                raise type(exc)(f"{self.name} node {node!r}: {exc}") from exc
            raise
        if len(outputs) != self.num_outputs and self.num_outputs >= 0:
            raise AssertionError(f"{self.name}.infer returned {len(outputs)} outputs")
        return outputs

    def folds(self, inputs: Sequence[TensorType], outputs: Sequence[TensorType]) -> bool:
        """Whether a node of this op with constant inputs may become a constant. Ops marked
        `extra["fold_constants"] = False` (DequantizeLinear) fold only where the result is
        no larger than their inputs (an int32 bias), never where it would widen compressed
        weights to float. A callable there decides per node (Cast: only the widening of
        a large narrow-integer constant, the int8 weight of a weight-only export, stays)."""
        rule = self.extra.get("fold_constants", True)
        if callable(rule):
            return bool(rule(inputs, outputs))
        if rule:
            return True
        return sum(t.nbytes for t in outputs) <= sum(t.nbytes for t in inputs)

    def evaluate(self, arrays: Sequence[np.ndarray], attrs: Attrs) -> tuple[np.ndarray, ...]:
        """Run the numpy reference; always returns a tuple of arrays."""
        result = self.reference(*arrays, **attrs)
        if isinstance(result, tuple):
            return tuple(np.asarray(r) for r in result)
        return (np.asarray(result),)


class OpRegistry:
    """Name -> OpDef. An unknown name raises UnsupportedOpError listing what is known."""

    def __init__(self) -> None:
        self._ops: dict[str, OpDef] = {}

    def register(self, op: OpDef) -> OpDef:
        if op.name in self._ops:
            raise ValueError(f"op {op.name} registered twice")
        self._ops[op.name] = op
        return op

    def __getitem__(self, name: str) -> OpDef:
        op = self._ops.get(name)
        if op is None:
            raise UnsupportedOpError(f"{name} not registered; known: {', '.join(self.names())}")
        return op

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    def names(self) -> list[str]:
        return sorted(self._ops)

    def __iter__(self):
        return iter(self._ops.values())


OPS = OpRegistry()


def attr(name: str, kind: AttrKind, default: Any = REQUIRED, choices=None) -> AttrSpec:
    """Short form used by the op tables."""
    return AttrSpec(name, kind, default, tuple(choices) if choices is not None else None)
