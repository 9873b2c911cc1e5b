"""What each input of an ONNX model is, read from how the graph uses it, so that random inputs
are ones the model can run on.

Normal floats and small integers suit a convolution, but token ids past the end of an
embedding table index out of range, a random attention mask hides random tokens, and random
segment ids pick rows that may not exist. So before compiling, each input is followed through
the ops that pass its values on (Cast, Reshape, Unsqueeze, Expand, ...) to the op that reads
them: the indices of a Gather on a constant table, the condition of a Where, the mask
arithmetic `(1 - mask) * -10000`. Names count first: `*mask*`, `token_type*` or `segment*`,
`position*` say what the input is even where the graph hides it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ember.errors import InputError
from ember.ir import DType

__all__ = ["InputRole", "input_roles", "random_input"]

# op -> the input ports whose values reach the op's output unchanged (None: every port)
_CARRIERS: dict[str, tuple[int, ...] | None] = {
    "Cast": (0,), "CastLike": (0,), "Identity": (0,), "Reshape": (0,), "Unsqueeze": (0,),
    "Squeeze": (0,), "Flatten": (0,), "Expand": (0,), "Transpose": (0,), "Slice": (0,),
    "Tile": (0,), "Gather": (0,), "Concat": None,
    # boolean forms of a mask: the values change, what the input is does not
    "And": None, "Or": None, "Not": None, "Equal": None,
}
LARGE_NEGATIVE = -1e3  # a mask's "hidden" bias: -10000, -1e9, finfo.min are all below it
SMALL_INT_HIGH = 8  # other integers: [0, 8), safe as an index into most small dims


@dataclass(frozen=True)
class InputRole:
    """What random values an input gets. kind: "ids" (integers in [0, high)), "mask"
    (ones), "zeros", "positions" (0, 1, 2, ... along the last axis, below `high` if set),
    "bool" (True), "int" (small non-negative), "float" (standard normal)."""

    kind: str
    high: int | None = None
    reason: str = ""

    def describe(self) -> str:
        """How `ember run` says where a random input came from."""
        what = {
            "ids": f"ids in [0, {self.high})", "mask": "ones", "zeros": "zeros",
            "positions": "positions 0, 1, ...", "bool": "True",
            "int": f"ints in [0, {SMALL_INT_HIGH})", "float": "normal",
        }[self.kind]
        return f"{what}: {self.reason}" if self.reason else what


# -- reading the graph ----------------------------------------------------------------------
class _Uses:
    """The graph's consumers and constants, read once."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for port, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, port))
        self._initializers = {t.name: t for t in graph.initializer}
        self._constant_nodes = {n.output[0]: n for n in graph.node
                                if n.op_type == "Constant" and n.output}

    def constant(self, name: str) -> np.ndarray | None:
        if name in self._initializers:
            return numpy_helper.to_array(self._initializers[name])
        node = self._constant_nodes.get(name)
        if node is None:
            return None
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
            if attr.name in ("value_float", "value_int"):
                return np.array(onnx.helper.get_attribute_value(attr))
            if attr.name in ("value_floats", "value_ints"):
                return np.array(list(onnx.helper.get_attribute_value(attr)))
        return None

    def constant_shape(self, name: str) -> tuple[int, ...] | None:
        if name in self._initializers:
            return tuple(self._initializers[name].dims)
        value = self.constant(name)
        return None if value is None else value.shape

    def reached(self, start: str) -> Iterator[tuple[onnx.NodeProto, int]]:
        """Every (node, port) that reads `start`'s values, directly or through carriers."""
        seen, queue = {start}, deque([start])
        while queue:
            for node, port in self.consumers.get(queue.popleft(), ()):
                yield node, port
                carried = _CARRIERS.get(node.op_type, ())
                if carried is None or port in carried:
                    for out in node.output:
                        if out and out not in seen:
                            seen.add(out)
                            queue.append(out)


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _gathered_rows(uses: _Uses, name: str) -> tuple[int, str] | None:
    """The fewest rows of the constant tables `name` indexes (Gather indices), and where."""
    found: list[tuple[int, str]] = []
    for node, port in uses.reached(name):
        if node.op_type != "Gather" or port != 1:
            continue
        shape = uses.constant_shape(node.input[0])
        if shape:
            found.append((shape[_axis(node) % len(shape)], node.input[0]))
    return min(found) if found else None


def _is_large_negative_scale(uses: _Uses, node: onnx.NodeProto, port: int) -> bool:
    other = uses.constant(node.input[1 - port]) if len(node.input) == 2 else None
    return (other is not None and other.size > 0 and np.issubdtype(other.dtype, np.floating)
            and float(other.max()) <= LARGE_NEGATIVE)


def _mask_use(uses: _Uses, name: str) -> str | None:
    """How the graph uses `name` as a mask, in words, or None: the condition of a Where, or
    `1 - x` scaled by a large negative number (the additive attention mask)."""
    for node, port in uses.reached(name):
        if node.op_type == "Where" and port == 0:
            return "the condition of a Where"
        if node.op_type != "Sub" or port != 1:
            continue
        one = uses.constant(node.input[0])
        if one is None or one.size == 0 or not np.all(one == 1):
            continue
        for later, later_port in uses.reached(node.output[0]):
            if later.op_type == "Mul" and _is_large_negative_scale(uses, later, later_port):
                return "(1 - mask) * a large negative bias"
    return None


def _role_by_name(name: str) -> InputRole | None:
    lowered = name.lower()
    if "mask" in lowered:
        return InputRole("mask", reason="named a mask")
    if "token_type" in lowered or "segment" in lowered:
        return InputRole("zeros", reason="segment ids")
    if "position" in lowered:
        return InputRole("positions", reason="position ids")
    return None


def input_roles(model: onnx.ModelProto, dtypes: Mapping[str, DType]) -> dict[str, InputRole]:
    """Each input of `dtypes` (name -> dtype, the model's inputs) with its role."""
    uses = _Uses(model.graph)
    roles: dict[str, InputRole] = {}
    for name, dtype in dtypes.items():
        role = _role_by_name(name)
        rows = _gathered_rows(uses, name) if dtype.is_integer else None
        if role is not None:
            if role.kind == "positions" and rows is not None:
                role = InputRole("positions", rows[0], role.reason)
        elif rows is not None:
            role = InputRole("ids", rows[0], f"indices of {rows[1]!r}")
        elif (why := _mask_use(uses, name)) is not None:
            role = InputRole("mask", reason=why)
        elif dtype is DType.BOOL:
            role = InputRole("bool")
        elif dtype.is_integer:
            role = InputRole("int")
        else:
            role = InputRole("float")
        roles[name] = role
    return roles


# -- making the values ----------------------------------------------------------------------
def random_input(rng: np.random.Generator, shape: Sequence[int], dtype: DType,
                 role: InputRole | None = None) -> np.ndarray:
    """An array of `shape` and `dtype` as `role` says (None: by the dtype alone)."""
    shape = tuple(shape)
    kind = role.kind if role is not None else (
        "bool" if dtype is DType.BOOL else "int" if dtype.is_integer else "float")
    np_dtype = dtype.np_dtype
    if kind == "ids":
        return rng.integers(0, max(role.high or 1, 1), size=shape).astype(np_dtype)
    if kind in ("mask", "bool"):
        return np.ones(shape, dtype=np_dtype)
    if kind == "zeros":
        return np.zeros(shape, dtype=np_dtype)
    if kind == "positions":
        steps = np.arange(shape[-1]) if shape else np.zeros(())
        if role.high:
            steps = steps % role.high
        return np.broadcast_to(steps, shape).astype(np_dtype)
    if kind == "int":
        return rng.integers(0, SMALL_INT_HIGH, size=shape).astype(np_dtype)
    if dtype.is_float:
        return rng.standard_normal(shape).astype(np_dtype)
    raise InputError(f"cannot make random inputs of dtype {dtype}; give it with --input")
