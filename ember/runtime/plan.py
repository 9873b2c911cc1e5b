"""Building the ExecutionPlan (its data: runtime/types.py): the ordered steps of a lowered
graph and its tensor table.

Every tensor gets a slot (its type, and what it is: graph input, constant, intermediate).
A step runs one node: on the device through the launches codegen gave it, or on the host
through the numpy reference. A view (Reshape) is a slot that aliases another slot. The
memory plan (runtime/memory.py) says which device buffer every slot and scratch buffer uses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ember.codegen.families import Target
from ember.codegen.types import Lowered, NodeSpec
from ember.codegen.registry import lower
from ember.ir import DEVICE, HOST, Graph, TensorType, Value
from ember.runtime.memory import build_memory_plan
from ember.runtime.types import ExecutionPlan, Slot, Step

__all__ = ["Slot", "Step", "ExecutionPlan", "PackedConstants", "build_plan", "node_spec",
           "DEVICE", "HOST"]



def node_spec(graph: Graph, node: int, *, pack_constants: bool = False) -> NodeSpec:
    """What codegen sees of a node; with `pack_constants`, which of its inputs are constants
    that the kernel may have re-laid out at compile time."""
    inputs = graph.inputs_of(node)
    packable = frozenset(
        i for i, v in enumerate(inputs) if graph.op(v.node) == "Constant"
    ) if pack_constants else frozenset()
    return NodeSpec(
        graph.op(node),
        graph.attrs(node),
        tuple(graph.type_of(v) for v in inputs),
        tuple(graph.output_types(node)),
        packable,
    )


Packs = dict[tuple[int, int], Callable[[np.ndarray], np.ndarray]]  # (node, port) -> layout


def _lower_device_nodes(graph: Graph, order: list[int], target: Target | None,
                        pack_constants: bool) -> tuple[dict[int, Lowered | None], Packs]:
    """The launches of every node placed on the device, and the constant inputs their
    kernels want in a layout of their own."""
    lowered_of: dict[int, Lowered | None] = {}
    packs: Packs = {}
    if target is None:
        return lowered_of, packs
    for node in order:
        if graph.op(node) in ("Input", "Constant"):
            continue
        if graph.meta(node, "placement", HOST) == DEVICE:
            lowered = lower(node_spec(graph, node, pack_constants=pack_constants), target)
            lowered_of[node] = lowered
            for port, layout in (lowered.packed if lowered is not None else ()):
                packs[(node, port)] = layout
    return lowered_of, packs


class PackedConstants:
    """Packed copies of a model's shared constants, made once: a constant array that is
    read-only (the importer shares initializers between the plans of every input shape)
    packed by the same layout gives the same read-only array to every plan, so the
    executors can share its device buffer too."""

    def __init__(self) -> None:
        self._packed: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._made: set[int] = set()  # ids of the packed arrays (held in _packed)

    def holds(self, array: np.ndarray) -> bool:
        """Whether `array` is a packed array made here (and so shared between plans)."""
        return id(array) in self._made

    def pack(self, layout: Callable[[np.ndarray], np.ndarray], array: np.ndarray
             ) -> np.ndarray:
        key = _layout_key(layout)
        if array.flags.writeable or key is None:
            return np.ascontiguousarray(layout(array))
        found = self._packed.get((id(array), key))
        if found is None or found[0] is not array:
            packed = np.ascontiguousarray(layout(array))
            packed.flags.writeable = False
            found = self._packed[(id(array), key)] = (array, packed)
            self._made.add(id(packed))
        return found[1]


def _layout_key(layout: Callable[[np.ndarray], np.ndarray]) -> tuple | None:
    """What makes two layouts the same, for the partials kernel builders give; None when
    it cannot be told (then nothing is shared)."""
    if not isinstance(layout, functools.partial):
        return None
    key = (layout.func, layout.args, tuple(sorted(layout.keywords.items())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def build_plan(graph: Graph, target: Target | None, *, plan_memory: bool = True,
               pack_constants: bool = False, packed: PackedConstants | None = None
               ) -> ExecutionPlan:
    """Walk the lowered graph in topological order and give every tensor a slot, then plan
    the device buffers (plan_memory=False: one buffer per tensor, for debugging).

    With `pack_constants` (opt_level >= 2), kernels may ask for a constant input in their
    own layout (`Lowered.packed`, e.g. GEMM weights in vector panels): the plan holds the
    re-laid-out array as a constant of its own, and drops the original when nothing else
    reads it. `packed` keeps those arrays between the plans of one model (PackedConstants)."""
    slots: list[Slot] = []
    slot_of: dict[Value, int] = {}
    steps: list[Step] = []
    constants: dict[int, np.ndarray] = {}
    inputs: dict[str, int] = {}
    order = graph.topological_order()
    lowered_of, packs = _lower_device_nodes(graph, order, target, pack_constants)

    def new_slot(value: Value, kind: str, alias_of: int | None = None,
                 type_: TensorType | None = None, suffix: str = "") -> int:
        index = len(slots)
        name = graph.node_name(value.node)
        if len(graph.output_types(value.node)) > 1:
            name = f"{name}.{value.port}"
        slots.append(Slot(index, type_ or graph.type_of(value), kind, name + suffix, alias_of))
        if not suffix:
            slot_of[value] = index
        return index

    def only_packed(value: Value) -> bool:
        uses = graph.users_of(value)
        return bool(uses) and not graph.is_output(value) and all(
            (u.node, u.port) in packs for u in uses)

    for node in order:
        op = graph.op(node)
        if op == "Input":
            inputs[graph.node_name(node)] = new_slot(Value(node, 0), "input")
            continue
        if op == "Constant":
            if not only_packed(Value(node, 0)):
                index = new_slot(Value(node, 0), "constant")
                constants[index] = np.ascontiguousarray(graph.attrs(node)["value"])
            continue
        lowered = lowered_of.get(node)
        placement = DEVICE if lowered is not None else HOST
        in_values = graph.inputs_of(node)
        in_list = []
        for port, v in enumerate(in_values):
            if (node, port) in packs:
                source = graph.constant_value(v)
                array = (packed.pack(packs[(node, port)], source) if packed is not None
                         else np.ascontiguousarray(packs[(node, port)](source)))
                index = new_slot(v, "constant", type_=TensorType(
                    array.shape, graph.dtype_of(v)), suffix=f".packed_for_{node}")
                constants[index] = array
                in_list.append(index)
            else:
                in_list.append(slot_of[v])
        in_slots = tuple(in_list)
        aliases = dict(lowered.aliases) if lowered is not None else {}
        out_slots = tuple(
            new_slot(
                Value(node, port),
                "value",
                alias_of=in_slots[aliases[port]] if port in aliases else None,
            )
            for port in range(len(graph.output_types(node)))
        )
        steps.append(
            Step(graph.node_name(node), op, graph.attrs(node), placement, in_slots, out_slots,
                 lowered)
        )
    outputs = [(name, slot_of[value]) for name, value in graph.outputs]
    plan = ExecutionPlan(slots, steps, inputs, outputs, constants)
    plan.memory = build_memory_plan(plan, share=plan_memory)
    return plan
