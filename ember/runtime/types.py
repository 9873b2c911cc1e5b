"""The data of a compiled model's run: the ExecutionPlan (steps, the tensor table, constants)
and its MemoryPlan (which device buffer every tensor uses).

Plain data at the bottom of the runtime: `plan.py` builds an ExecutionPlan, `memory.py`
plans its buffers, the executors run it; none of them imports another to read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ember.codegen.types import Kernel, Lowered
from ember.ir import HOST, Attrs, TensorType

__all__ = ["Slot", "Step", "ExecutionPlan", "MemoryPlan", "INPUT", "CONSTANT", "SHARED"]

INPUT, CONSTANT, SHARED = "input", "constant", "shared"  # kinds of device buffer


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
    # device buffers per slot (runtime/memory.py), planned for `steps` in this order:
    # build_memory_plan again after changing the steps
    memory: MemoryPlan | None = None
    # the model's generic kernels (codegen/generic.py): one program shared by all its
    # shapes, built apart from the kernels of this shape alone
    shared_kernels: tuple[Kernel, ...] = ()

    def kernels(self) -> list[Kernel]:
        """Every distinct kernel of the plan, in first-use order (one program holds them)."""
        seen: dict[str, Kernel] = {}
        for step in self.steps:
            if step.lowered is not None:
                for kernel in step.lowered.kernels:
                    seen.setdefault(kernel.name, kernel)
        return list(seen.values())

    def programs(self) -> list[list[Kernel]]:
        """The kernels of each program to build: the shared program (all of it, used here
        or not, so that its source is the same for every shape), then this plan's own."""
        shared = {k.name for k in self.shared_kernels}
        own = [k for k in self.kernels() if k.name not in shared]
        return [group for group in (list(self.shared_kernels), own) if group]

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


@dataclass(frozen=True)
class MemoryPlan:
    """The device buffers of a plan and which one every slot and scratch buffer uses.

    `buffers[b]` is the size in bytes of buffer b and `kinds[b]` what it holds (INPUT and
    CONSTANT buffers hold exactly one root; SHARED ones hold intermediates and scratch).
    `buffer_of[slot]` is the buffer of every slot (a view maps to its root's buffer);
    `temps[i][k]` the buffer of scratch buffer k of step i. `lifetimes[root]` is the
    (first, last) step of every intermediate root (last == len(steps) for graph outputs)
    and `in_place` lists (step, input root, output slot) for outputs written over an input.
    """

    buffers: tuple[int, ...]
    kinds: tuple[str, ...]
    buffer_of: Mapping[int, int]
    temps: tuple[tuple[int, ...], ...]
    lifetimes: Mapping[int, tuple[int, int]] = field(repr=False)
    in_place: tuple[tuple[int, int, int], ...]
    naive_bytes: int
    naive_activation_bytes: int
    shared: bool  # False: one buffer per tensor (plan_memory=False)

    @property
    def planned_bytes(self) -> int:
        """Bytes of all device buffers allocated: inputs, constants, shared and scratch."""
        return sum(self.buffers)

    @property
    def planned_activation_bytes(self) -> int:
        """planned_bytes without the constants (weights)."""
        return sum(n for n, kind in zip(self.buffers, self.kinds) if kind != CONSTANT)
