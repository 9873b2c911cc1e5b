"""One program for every shape of a model: plans rewritten onto generic kernels.

A model with dims it does not fix is planned again for each new input shape (planning is
milliseconds), but building its kernels costs a program build each time (about a second on
PoCL). `GenericPlans` keeps a model's generic kernels (codegen/generic.py): the kernels its
steps get at a shape are compared with the ones they get at a few other values of each
free dim (the samples: planned, never built), and the literals that follow the dim become
kernel arguments. A plan for any later shape then launches those kernels with that
shape's values, from the one program that holds them all; a kernel no generic kernel
answers (its source takes another form at that size) is built for that shape alone, and
the samples are taken again around it, so the next shape of its kind is answered too.

The shared program holds every generic kernel found so far, so it grows as shapes bring
new kernel forms (a prefill, then single-token steps). The skeletons it ended with are
kept by the forms of the first plan's kernels (`DiskStore.load_set`): a later process
loads them all before its first shape, and starts on the program built last time rather
than on a subset no process built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ember.codegen.generic import (
    GenericKernel, GenericKernels, from_json, generalize, kernel_form, to_json,
)
from ember.codegen.types import Kernel
from ember.paths import write_file_atomic
from ember.runtime.types import ExecutionPlan

__all__ = ["SAMPLE_STEPS", "STORE_FORMAT", "DiskStore", "Generalized", "GenericPlans"]

log = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]
Dims = tuple[int | str | None, ...]
# each free dim is sampled at its value plus two of these (the first two that plan): steps
# of 32 keep the value's residue modulo 32, so a kernel whose form depends on it (a vector
# tail, a tile remainder) keeps its form across the samples. Kernels still without a generic
# form (a builder that picks another strategy for small sizes) get a second round of near
# neighbours.
SAMPLE_STEPS = ((32, 64, -32, -64, 96, -96), (1, -1, 2, -2, 3))
_SAMPLES_PER_DIM = 2
STORE_FORMAT = 1  # DiskStore's files; another format is not read
SET_SUFFIX = ".set"  # DiskStore's lists of skeletons (not kernel forms: not .json)
# work-items per group of a padded grid: a wavefront's worth on GPUs; on CPUs, where a
# group runs as one loop on one core, enough to make the group's overhead small
PADDED_GROUP = {"gpu": 64, "cpu": 256}


@dataclass(frozen=True)
class Generalized:
    """A plan on generic kernels, and how much of it they cover."""

    plan: ExecutionPlan
    generic_launches: int
    launches: int
    sampled: bool  # samples were planned for this shape


class GenericPlans:
    """The generic kernels of one model (module docstring). `plan_at(shapes)` plans the
    model for other input shapes (None where it cannot be planned at them)."""

    def __init__(self, signature: Mapping[str, Dims],
                 plan_at: Callable[[Shapes], ExecutionPlan | None], gpu: bool,
                 store: DiskStore | None = None) -> None:
        self._signature = dict(signature)
        self._group = PADDED_GROUP["gpu" if gpu else "cpu"]
        self._plan_at = plan_at
        self._store = store
        self.kernels = GenericKernels(store)
        self._set_key: str | None = None  # by the forms of the first plan's kernels
        self._saved_set: list[str] = []

    def apply(self, plan: ExecutionPlan, shapes: Mapping[str, Sequence[int]]) -> Generalized:
        if self._store is not None and self._set_key is None:
            self._set_key = _forms_key(plan)
            self._saved_set = self._store.load_set(self._set_key)
            self.kernels.load(self._saved_set)
        try:
            return self._apply(plan, shapes)
        finally:
            if self._store is not None and self._set_key is not None:
                skeletons = self.kernels.skeletons()
                if skeletons != self._saved_set:
                    self._store.save_set(self._set_key, skeletons)
                    self._saved_set = skeletons

    def _apply(self, plan: ExecutionPlan, shapes: Mapping[str, Sequence[int]]) -> Generalized:
        rewritten, missing = self._rewrite(plan)
        sampled = False
        if any(not self.kernels.was_tried(k) for k in missing.values()):
            sampled = True
            self._learn(missing, {n: tuple(s) for n, s in shapes.items()})
            rewritten, missing = self._rewrite(plan)
        launches = sum(s.launches for s in plan.steps)
        return Generalized(rewritten, launches - len(missing), launches, sampled)

    def _rewrite(self, plan: ExecutionPlan
                 ) -> tuple[ExecutionPlan, dict[tuple[str, int], Kernel]]:
        """`plan` with each launch a generic kernel answers moved onto it; the launches none
        answers, by (step, launch index)."""
        missing: dict[tuple[str, int], Kernel] = {}
        steps = []
        used = False
        for step in plan.steps:
            if step.lowered is None or not step.lowered.launches:
                steps.append(step)
                continue
            launches = []
            for index, launch in enumerate(step.lowered.launches):
                answer = self.kernels.answer(launch.kernel)
                if answer is None:
                    missing[(step.name, index)] = launch.kernel
                    launches.append(launch)
                    continue
                used = True
                generic, values = answer
                global_size, local_size = launch.global_size, launch.local_size
                if generic.guarded and local_size is None:
                    # a fixed work-group size: a driver that picks one from the grid (PoCL)
                    # would compile the kernel again for every new grid
                    local_size = _padded_group(global_size, self._group)
                    global_size = tuple(-(-g // l) * l for g, l in zip(global_size, local_size))
                launches.append(dataclasses.replace(
                    launch, kernel=generic.kernel, global_size=tuple(global_size),
                    local_size=local_size,
                    scalars=generic.arguments(values, launch.global_size)))
            lowered = dataclasses.replace(step.lowered, launches=tuple(launches))
            steps.append(dataclasses.replace(step, lowered=lowered))
        if not used:
            return plan, missing
        return dataclasses.replace(plan, steps=steps,
                                   shared_kernels=tuple(self.kernels.kernels())), missing

    def _learn(self, missing: Mapping[tuple[str, int], Kernel], shapes: Shapes) -> None:
        left = dict(missing)
        for steps in SAMPLE_STEPS:
            samples = [self._kernels_of(p) for p in self._sample_plans(shapes, steps)]
            for key, kernel in list(left.items()):
                if self.kernels.answer(kernel) is not None:  # another step's, learned now
                    del left[key]
                    continue
                found = [s[key] for s in samples if key in s]
                generic = _generalize_most(kernel, found)
                if generic is not None:
                    self.kernels.add(generic)
                    del left[key]
            if not left:
                break
        for kernel in {k.name: k for k in left.values()}.values():
            self.kernels.give_up(kernel)
        log.debug("%d of %d kernel(s) without a generic form have one now",
                  len(missing) - len(left), len(missing))

    @staticmethod
    def _kernels_of(plan: ExecutionPlan) -> dict[tuple[str, int], Kernel]:
        return {(step.name, index): launch.kernel
                for step in plan.steps if step.lowered is not None
                for index, launch in enumerate(step.lowered.launches)}

    def _sample_plans(self, shapes: Shapes, steps: Sequence[int]) -> list[ExecutionPlan]:
        """Plans at other values of each free dim (`steps` away), one dim at a time."""
        plans = []
        for symbol, value in _free_dims(self._signature, shapes).items():
            found = 0
            for step in steps:
                if found == _SAMPLES_PER_DIM:
                    break
                if value + step < 1:
                    continue
                plan = self._plan_at(_with_dim(self._signature, shapes, symbol, value + step))
                if plan is not None:
                    plans.append(plan)
                    found += 1
        return plans


def _forms_key(plan: ExecutionPlan) -> str:
    """A name for the kernel forms of `plan` (its kernels' skeletons, sizes left out): the
    same model's first shape gives the same name in every process."""
    skeletons = sorted({kernel_form(k).skeleton for k in plan.kernels()})
    return hashlib.sha256("\0".join(skeletons).encode()).hexdigest()[:40]


def _generalize_most(kernel: Kernel, samples: Sequence[Kernel]) -> GenericKernel | None:
    """The generic kernel of `kernel` and as many of `samples` as allow one. A sample that
    moved a dim the kernel cannot take at run time (a query length that sets an array
    bound, say) must not cost the dims it can take (the key length of the same attention
    kernel): when all of them together have no generic form, the samples are added one at
    a time and those that leave none are left out."""
    if not samples:
        return None
    generic = generalize([kernel, *samples])
    if generic is not None:
        return generic
    kept = [kernel]
    for sample in samples:
        if generalize([*kept, sample]) is not None:
            kept.append(sample)
    return generalize(kept) if len(kept) > 1 else None


def _padded_group(global_size: Sequence[int], group: int) -> tuple[int, ...]:
    """The work-group of a padded grid, the same for every size the grid takes (a driver
    compiles a kernel again for each work-group size): `group` work-items along a 1-D grid;
    along the first axis of a grid of more axes (an inner size that rarely varies), up to
    the power of two that covers it."""
    if len(global_size) == 1:
        return (group,)
    first = min(group, 1 << max(0, global_size[0] - 1).bit_length())
    return (first, *(1,) * (len(global_size) - 1))


def _free_dims(signature: Mapping[str, Dims], shapes: Shapes) -> dict[object, int]:
    """Each dim the model does not fix (a name shared by inputs is one dim; an unnamed one
    is its own), with its value in `shapes`."""
    found: dict[object, int] = {}
    for name, dims in signature.items():
        for axis, dim in enumerate(dims):
            if not isinstance(dim, int):
                found.setdefault(dim if isinstance(dim, str) else (name, axis),
                                 shapes[name][axis])
    return found


def _with_dim(signature: Mapping[str, Dims], shapes: Shapes, symbol: object,
              value: int) -> Shapes:
    changed = {}
    for name, dims in signature.items():
        shape = list(shapes[name])
        for axis, dim in enumerate(dims):
            if dim == symbol if isinstance(dim, str) else (name, axis) == symbol:
                shape[axis] = value
        changed[name] = tuple(shape)
    return changed


class DiskStore:
    """GenericStore in a directory (the cache's `generic/` part): one JSON file per
    skeleton, named by its hash, written atomically (two processes writing one skeleton:
    the last write wins, and the loser's kernels are learned again when needed). A file
    that cannot be read is ignored; a stored kernel is remade from its samples
    (codegen/generic.py `from_json`), so nothing in a file can make a wrong kernel."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, skeleton: str) -> Path:
        return self.root / (hashlib.sha256(skeleton.encode()).hexdigest()[:40] + ".json")

    def load(self, skeleton: str) -> tuple[list[GenericKernel], set[str]]:
        try:
            data = json.loads(self._path(skeleton).read_text())
            if data.get("format") != STORE_FORMAT:
                return [], set()
            kernels = [from_json(item) for item in data["kernels"]]
            tried = {str(name) for name in data["tried"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.debug("generic kernels in %s not used: %s", self._path(skeleton), exc)
            return [], set()
        return [k for k in kernels if k is not None], tried

    def load_set(self, key: str) -> list[str]:
        """The skeletons `save_set` kept under `key` (none when there is no readable file):
        skeletons only, so a stale list can at most load kernels that go unused."""
        try:
            data = json.loads((self.root / f"{key}{SET_SUFFIX}").read_text())
            if data.get("format") != STORE_FORMAT:
                return []
            return sorted(str(s) for s in data["skeletons"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []

    def save_set(self, key: str, skeletons: list[str]) -> None:
        data = {"format": STORE_FORMAT, "skeletons": skeletons}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_file_atomic(self.root / f"{key}{SET_SUFFIX}", json.dumps(data).encode(),
                              durable=False)
        except OSError as exc:
            log.debug("could not keep the generic kernels' skeletons in %s: %s", self.root, exc)

    def save(self, skeleton: str, kernels: list[GenericKernel], tried: set[str]) -> None:
        data = {"format": STORE_FORMAT, "kernels": [to_json(k) for k in kernels],
                "tried": sorted(tried)}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_file_atomic(self._path(skeleton), json.dumps(data).encode(), durable=False)
        except OSError as exc:
            log.debug("could not keep generic kernels in %s: %s", self.root, exc)
