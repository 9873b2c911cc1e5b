"""Memory planning: which device buffer every tensor of an ExecutionPlan lives in.

Without a plan every tensor gets its own buffer, so device memory grows with the depth of
the model although only a few tensors are alive at any step. The planner works on the
plan's steps in their final order (an in-order queue runs them one after the other):

- Liveness. A buffer root (a slot that is no view) is alive from the step that writes it to
  the last step that reads it or any of its views, both ends included: a step reads its
  inputs while it writes its outputs, so a tensor that dies at step i and one born at step i
  overlap. Graph outputs (and roots of views that are outputs) live to the end of the run.
  Graph inputs and constants get buffers of their own and are never shared: inputs are
  written at the start of every run, constants are uploaded once.
- In-place. A step of an elementwise op (`OPS[op].elementwise`) with one output may write
  into the buffer of an input that dies at that step, when that input has exactly the
  output's shape and byte size, every input of the step on that buffer does too (so the
  kernel reads each element at the index it writes; a broadcast read would see values
  already overwritten), and the root is an intermediate that is no graph output and is not
  read later through any view. Steps with several outputs never work in place: the
  elementwise kernel's pointers are `restrict`, and only with one output does every load
  feed the single store it precedes.
- Sharing. Intermediates joined by in-place reuse form one group; groups and the scratch
  buffers of steps (`Lowered.temps`, alive only during their step) are packed into shared
  buffers, each tensor at offset 0 of its buffer. Two greedy packings run and the one with
  fewer bytes wins: Greedy-by-Size (largest first, each into the smallest buffer whose
  tenants are all dead while it lives, else a new one: a buffer's size is fixed by its
  first tenant and the big activations that make the peak choose first) and best-fit over
  the steps in order (the smallest free buffer that fits, else the largest free one grown,
  else a new one), which wins when a few tensors of one size interleave with bigger ones.
  Neither is optimal (the problem is NP-hard) and neither dominates on real models; both
  are O(n^2) in tensors, nothing next to compiling the kernels.

Counting (`MemoryPlan`): `planned_bytes` is the bytes of every device buffer the executor
allocates (inputs + constants + shared buffers, scratch included); `naive_bytes` counts the
same categories one buffer per tensor and per scratch buffer (the behaviour without a plan).
The `*_activation_bytes` figures leave the constants (weights) out: they are the same in
both plans and hide what planning saves. Empty tensors count 0 bytes (a 1-byte buffer is
still allocated for them, as OpenCL refuses empty buffers).

Turning sharing off for debugging: `ember.compile(..., plan_memory=False)` (or
`build_plan(..., plan_memory=False)`) gives every tensor and scratch buffer its own buffer;
results must not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ember.ir import OPS
from ember.runtime.types import CONSTANT, INPUT, SHARED, ExecutionPlan, MemoryPlan, Step

__all__ = [
    "MemoryPlan", "build_memory_plan", "lifetimes", "in_place_candidates",
    "verify_memory_plan", "INPUT", "CONSTANT", "SHARED",
]



# -- liveness ---------------------------------------------------------------------------------
def lifetimes(plan: ExecutionPlan) -> dict[int, tuple[int, int]]:
    """(first, last) step of every intermediate root: the step writing it, and the last
    step reading it or any view of it; len(plan.steps) for graph outputs."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, step in enumerate(plan.steps):
        for slot in step.inputs:
            root = plan.root(slot)
            last[root] = max(last.get(root, i), i)
        for slot in step.outputs:
            if plan.slots[slot].alias_of is None:
                first[slot] = i
                last[slot] = max(last.get(slot, i), i)
    end = len(plan.steps)
    for _, slot in plan.outputs:
        last[plan.root(slot)] = end
    return {root: (start, last[root]) for root, start in first.items()}


def _is_intermediate(plan: ExecutionPlan, root: int) -> bool:
    slot = plan.slots[root]
    return slot.kind == "value" and slot.alias_of is None


def in_place_candidates(plan: ExecutionPlan, index: int, step: Step,
                        life: Mapping[int, tuple[int, int]]) -> list[int]:
    """Roots of the inputs that step `index` may overwrite with its (single) output."""
    if len(step.outputs) != 1 or step.op not in OPS or not OPS[step.op].elementwise:
        return []
    out = plan.slots[step.outputs[0]]
    if out.alias_of is not None:
        return []
    found = []
    for slot in step.inputs:
        root = plan.root(slot)
        if root in found or not _is_intermediate(plan, root) or life[root][1] != index:
            continue  # an input, a constant, a graph output, or read again later
        readers = [plan.slots[s] for s in step.inputs if plan.root(s) == root]
        if all(r.type.shape == out.type.shape and r.type.nbytes == out.type.nbytes
               for r in readers):
            found.append(root)
    return found


# -- assignment -------------------------------------------------------------------------------
@dataclass
class _Item:
    """A group of tensors (or one scratch buffer) that lives in one buffer."""

    size: int
    first: int
    last: int
    roots: list[int]
    temp: tuple[int, int] | None = None  # (step, k) of a scratch buffer


def _overlaps(a: _Item, b: _Item) -> bool:
    return a.first <= b.last and b.first <= a.last


Packing = tuple[list[int], list[int]]  # (size of each buffer, buffer of each item)


def _by_size(items: list[_Item]) -> Packing:
    """Greedy-by-Size: largest first, each into the smallest buffer free for its lifetime."""
    sizes: list[int] = []
    tenants: list[list[_Item]] = []
    where = [0] * len(items)
    for i in sorted(range(len(items)), key=lambda i: (-items[i].size, items[i].first)):
        item, best = items[i], None
        for b, living in enumerate(tenants):
            if (best is None or sizes[b] < sizes[best]) and not any(
                    _overlaps(item, other) for other in living):
                best = b
        if best is None:
            best = len(sizes)
            sizes.append(item.size)
            tenants.append([])
        tenants[best].append(item)
        where[i] = best
    return sizes, where


def _in_step_order(items: list[_Item]) -> Packing:
    """The same over the steps in order: the smallest free buffer that fits, else the largest
    free one grown to fit, else a new one."""
    sizes: list[int] = []
    tenants: list[list[_Item]] = []
    where = [0] * len(items)
    for i in sorted(range(len(items)), key=lambda i: (items[i].first, -items[i].size)):
        item = items[i]
        free = [b for b, living in enumerate(tenants)
                if not any(_overlaps(item, other) for other in living)]
        fits = [b for b in free if sizes[b] >= item.size]
        if fits:
            best = min(fits, key=lambda b: sizes[b])
        elif free:
            best = max(free, key=lambda b: sizes[b])
            sizes[best] = item.size
        else:
            best = len(sizes)
            sizes.append(item.size)
            tenants.append([])
        tenants[best].append(item)
        where[i] = best
    return sizes, where


def build_memory_plan(plan: ExecutionPlan, *, share: bool = True) -> MemoryPlan:
    """Plan the device buffers of `plan` (see the module docstring); share=False gives the
    one-buffer-per-tensor plan."""
    life = lifetimes(plan)
    buffers: list[int] = []
    kinds: list[str] = []
    buffer_of: dict[int, int] = {}
    naive = naive_weights = 0
    for slot in plan.slots:  # inputs and constants: one buffer each, never shared
        if slot.alias_of is None:
            nbytes = slot.type.nbytes
            if slot.kind == CONSTANT and slot.index in plan.constants:
                nbytes = max(nbytes, plan.constants[slot.index].nbytes)  # uploaded as is
            naive += nbytes
            if slot.kind in (INPUT, CONSTANT):
                buffer_of[slot.index] = len(buffers)
                buffers.append(nbytes)
                kinds.append(slot.kind)
                if slot.kind == CONSTANT:
                    naive_weights += nbytes

    # Items: intermediates (merged into groups by in-place reuse) and scratch buffers.
    item_of: dict[int, _Item] = {}
    items: list[_Item] = []
    in_place: list[tuple[int, int, int]] = []
    for i, step in enumerate(plan.steps):
        candidates = in_place_candidates(plan, i, step, life) if share else []
        for slot in step.outputs:
            if plan.slots[slot].alias_of is not None:
                continue
            start, end = life[slot]
            nbytes = plan.slots[slot].type.nbytes
            if candidates:
                item = item_of[candidates[0]]
                item.size, item.last = max(item.size, nbytes), max(item.last, end)
                item.roots.append(slot)
                in_place.append((i, candidates[0], slot))
            else:
                item = _Item(nbytes, start, end, [slot])
                items.append(item)
            item_of[slot] = item
        for k, nbytes in enumerate(step.lowered.temps if step.lowered is not None else ()):
            naive += nbytes
            items.append(_Item(nbytes, i, i, [], (i, k)))

    if share:
        packings = [_by_size(items), _in_step_order(items)]
        sizes, where = min(packings, key=lambda packing: sum(packing[0]))
    else:
        sizes, where = [item.size for item in items], list(range(len(items)))
    first_shared = len(buffers)
    buffers.extend(sizes)
    kinds.extend([SHARED] * len(sizes))
    temps: list[list[int]] = [[] for _ in plan.steps]
    for item, b in zip(items, where):  # in step order, then k order
        for root in item.roots:
            buffer_of[root] = first_shared + b
        if item.temp is not None:
            temps[item.temp[0]].append(first_shared + b)

    for slot in plan.slots:
        if slot.alias_of is not None:
            buffer_of[slot.index] = buffer_of[plan.root(slot.index)]
    memory = MemoryPlan(
        tuple(buffers), tuple(kinds), buffer_of, tuple(tuple(t) for t in temps), life,
        tuple(in_place), naive, naive - naive_weights, share,
    )
    verify_memory_plan(plan, memory)
    return memory


# -- checking ---------------------------------------------------------------------------------
def verify_memory_plan(plan: ExecutionPlan, memory: MemoryPlan) -> None:
    """Internal invariants, checked on every plan (a wrong share corrupts results silently):
    every tensor fits its buffer, inputs and constants own theirs, and two tensors in one
    buffer are never alive at the same step unless the later one is written in place over
    the earlier one as it dies."""
    life = memory.lifetimes
    place = {(inp, out) for _, inp, out in memory.in_place}
    held: dict[int, list[tuple[int, int, str, int | None]]] = {}
    for slot in plan.slots:
        b = memory.buffer_of[slot.index]
        if slot.type.nbytes > memory.buffers[b]:
            raise AssertionError(f"slot {slot.name!r} ({slot.type.nbytes} bytes) does not "
                                 f"fit buffer {b} ({memory.buffers[b]} bytes)")
        if slot.alias_of is not None:
            continue
        if slot.kind in (INPUT, CONSTANT):
            start, end = -1, len(plan.steps)
        else:
            start, end = life[slot.index]
        held.setdefault(b, []).append((start, end, slot.name, slot.index))
    for i, step in enumerate(plan.steps):
        sizes = step.lowered.temps if step.lowered is not None else ()
        if len(memory.temps[i]) != len(sizes):
            raise AssertionError(f"step {step.name!r}: {len(sizes)} scratch buffers, "
                                 f"{len(memory.temps[i])} planned")
        for k, (b, nbytes) in enumerate(zip(memory.temps[i], sizes)):
            if nbytes > memory.buffers[b]:
                raise AssertionError(f"scratch {k} of step {step.name!r} does not fit")
            held.setdefault(b, []).append((i, i, f"{step.name}.tmp{k}", None))
    for b, living in held.items():
        if memory.kinds[b] != SHARED and len(living) != 1:
            raise AssertionError(f"{memory.kinds[b]} buffer {b} is shared: {living}")
        living.sort(key=lambda entry: (entry[0], entry[1]))
        for x, (s1, e1, n1, r1) in enumerate(living):
            for s2, e2, n2, r2 in living[x + 1:]:
                if s2 > e1:
                    break
                if not (s2 == e1 and (r1, r2) in place):
                    raise AssertionError(f"{n1!r} (steps {s1}..{e1}) and {n2!r} (steps "
                                         f"{s2}..{e2}) are alive together in buffer {b}")
