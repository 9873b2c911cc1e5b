"""What codegen hands on: a node as codegen sees it (`NodeSpec`), and what a kernel builder
makes of it (`Lowered`: the kernels to launch, their sizes and arguments, scratch buffers,
outputs that are views of inputs, constants stored in another layout).

`NodeSpec` is plain, hashable data: `lower()`'s cache is keyed by it and the tuner sends it
to worker processes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from ember.codegen.params import Lookup
from ember.ir import Attrs, TensorType

__all__ = ["NodeSpec", "Kernel", "Launch", "Lowered", "ArgKind", "IN", "OUT", "TMP"]

T = TypeVar("T")


class ArgKind(str, enum.Enum):
    """What a kernel argument is bound to: the node's input i, its output j, or scratch
    buffer k (`Launch.args` pairs a kind with its index)."""

    IN = "in"
    OUT = "out"
    TMP = "tmp"


IN, OUT, TMP = ArgKind.IN, ArgKind.OUT, ArgKind.TMP
SCALAR_DTYPES = {"int": np.int32, "uint": np.uint32, "long": np.int64, "ulong": np.uint64}


@dataclass(frozen=True)
class NodeSpec:
    op: str
    attrs: Attrs
    inputs: tuple[TensorType, ...]
    outputs: tuple[TensorType, ...]
    # inputs that are compile-time constants the builder may store in another layout
    # (`Lowered.packed`); the plan offers them from opt_level 2 on
    packable: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Kernel:
    name: str
    source: str
    extensions: frozenset[str] = frozenset()  # e.g. {"cl_khr_fp64"}
    # C types of the scalar arguments after the buffers (generic kernels: codegen/generic.py)
    scalar_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Launch:
    kernel: Kernel
    global_size: tuple[int, ...]
    local_size: tuple[int, ...] | None
    args: tuple[tuple[ArgKind, int], ...]  # (IN, i) | (OUT, j) | (TMP, k), in kernel order
    scalars: tuple[int, ...] = ()  # values of kernel.scalar_types, passed after the buffers

    def bind(self, inputs: Sequence[T], outputs: Sequence[T], temps: Sequence[T]) -> list[T]:
        """The kernel's arguments in order, picked from the node's inputs, outputs and
        scratch buffers (buffers, or their sizes): the one place `args` is read."""
        pools = {ArgKind.IN: inputs, ArgKind.OUT: outputs, ArgKind.TMP: temps}
        return [pools[kind][i] for kind, i in self.args]

    def scalar_arguments(self) -> list[np.generic]:
        """The scalar arguments, as the numpy scalars pyopencl passes by value."""
        return [SCALAR_DTYPES[t](v) for t, v in zip(self.kernel.scalar_types, self.scalars)]


@dataclass(frozen=True)
class Lowered:
    launches: tuple[Launch, ...]
    temps: tuple[int, ...] = ()  # bytes of each scratch buffer
    # output j shares the buffer of input i (a view such as Reshape): no launch needed
    aliases: tuple[tuple[int, int], ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)
    # (input i, layout function): the plan uploads layout(constant value) in place of the
    # constant input i, once at compile time (pre-packed weights)
    packed: tuple[tuple[int, Callable[[np.ndarray], np.ndarray]], ...] = field(
        default=(), compare=False)
    # the tunables the builder looked up (kind, key, params, answering level): the tuner
    # reads which kind and key to tune from it
    tuning: Lookup | None = field(default=None, compare=False)

    @property
    def kernels(self) -> tuple[Kernel, ...]:
        return tuple(launch.kernel for launch in self.launches)
