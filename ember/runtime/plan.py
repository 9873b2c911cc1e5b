"""The ExecutionPlan: the ordered steps of a lowered graph and its tensor table.

Every tensor gets a slot (its type, and what it is: graph input, constant, intermediate).
A step runs one node: on the device through the launches codegen gave it, or on the host
through the numpy reference. A view (Reshape) is a slot that aliases another slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ember.codegen.families import Target
from ember.codegen.kernels import Kernel, Lowered, NodeSpec, lower
from ember.ir import Attrs, Graph, TensorType, Value

__all__ = ["Slot", "Step", "ExecutionPlan", "build_plan", "node_spec", "DEVICE", "HOST"]

DEVICE, HOST = "device", "host"


@dataclass(frozen=True)
class Slot:
    index: int
    type: TensorType
    kind: str  # "input" | "constant" | "value"
    name: str
    alias_of: int | None = None  # this slot is a view of another slot's buffer


@dataclass(frozen=True)
class Step:
    name: str
    op: str
    attrs: Attrs
    placement: str  # DEVICE | HOST
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    lowered: Lowered | None = None  # the device launches (placement DEVICE)

    @property
    def launches(self) -> int:
        return len(self.lowered.launches) if self.lowered is not None else 0


@dataclass
class ExecutionPlan:
    slots: list[Slot]
    steps: list[Step]
    inputs: dict[str, int]  # graph input name -> slot
    outputs: list[tuple[str, int]]  # graph output name -> slot
    constants: dict[int, np.ndarray] = field(default_factory=dict)

    def kernels(self) -> list[Kernel]:
        """Every distinct kernel of the plan, in first-use order (one program holds them)."""
        seen: dict[str, Kernel] = {}
        for step in self.steps:
            if step.lowered is not None:
                for kernel in step.lowered.kernels:
                    seen.setdefault(kernel.name, kernel)
        return list(seen.values())

    def root(self, slot: int) -> int:
        """The slot that owns the buffer behind `slot` (following view aliases)."""
        while self.slots[slot].alias_of is not None:
            slot = self.slots[slot].alias_of
        return slot

    @property
    def kernel_launches(self) -> int:
        return sum(step.launches for step in self.steps)

    @property
    def host_steps(self) -> list[Step]:
        return [s for s in self.steps if s.placement == HOST]


def node_spec(graph: Graph, node: int) -> NodeSpec:
    return NodeSpec(
        graph.op(node),
        graph.attrs(node),
        tuple(graph.input_types(node)),
        tuple(graph.output_types(node)),
    )


def build_plan(graph: Graph, target: Target | None) -> ExecutionPlan:
    """Walk the lowered graph in topological order and give every tensor a slot."""
    slots: list[Slot] = []
    slot_of: dict[Value, int] = {}
    steps: list[Step] = []
    constants: dict[int, np.ndarray] = {}
    inputs: dict[str, int] = {}

    def new_slot(value: Value, kind: str, alias_of: int | None = None) -> int:
        index = len(slots)
        name = graph.node_name(value.node)
        if len(graph.output_types(value.node)) > 1:
            name = f"{name}.{value.port}"
        slots.append(Slot(index, graph.type_of(value), kind, name, alias_of))
        slot_of[value] = index
        return index

    for node in graph.topological_order():
        op = graph.op(node)
        if op == "Input":
            inputs[graph.node_name(node)] = new_slot(Value(node, 0), "input")
            continue
        if op == "Constant":
            index = new_slot(Value(node, 0), "constant")
            constants[index] = np.ascontiguousarray(graph.attrs(node)["value"])
            continue
        placement = graph.meta(node, "placement", HOST)
        lowered = None
        if placement == DEVICE and target is not None:
            lowered = lower(node_spec(graph, node), target)
        if lowered is None:
            placement = HOST
        in_slots = tuple(slot_of[v] for v in graph.inputs_of(node))
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
    return ExecutionPlan(slots, steps, inputs, outputs, constants)
