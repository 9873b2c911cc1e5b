"""Where each kernel's tunables come from.

Each kernel kind ("gemm": the local-memory tiled GEMM; "gemm_cpu": the register-tiled CPU
GEMM; "gemv_cpu": the CPU GEMV of gemv_cpu.py, for M = 1; "rows": softmax and the norms,
work-items per row; "attention": the fused attention kernel; "depthwise" and "conv_rows":
the CPU convolutions of conv_depthwise.py and conv_rows.py) has a `ParamKind` in
`param_kinds()`: defaults per level, a search space (values per axis) and named rules.
`params_for(kind, key, target)` answers from the first level that has a legal set: device
(tuned on this very device: the target's TuningTable, filled from the TuningDB) -> arch
(chip architecture, e.g. gfx803, sm_86) -> family -> vendor -> generic, and says which
level answered (`Lookup`). A problem the TuningDB has no entry for takes the entry of its
size bucket when the table has one (`bucket_key`): a new input shape of a tuned model is
not tuned again and still gets tuned parameters.
`tuning_key` names a kernel's problem for the TuningDB.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from ember.codegen.families import Target, vector_unit

__all__ = [
    "Checked", "Lookup", "LEVELS", "ParamKind", "Rule", "SearchSpace", "param_kinds", "params_for",
    "register_kind", "gemm_rules", "cpu_gemm_rules", "gemv_rules", "accumulators_fit",
    "search_space", "tuning_key", "bucket_key", "size_bucket", "key_tensors", "key_sizes",
    "tunable_spec", "TUNABLE_OPS", "ROW_OPS", "BUCKET_SOURCE",
]

log = logging.getLogger(__name__)

# Where a parameter set can come from, most specific first.
LEVELS = ("device", "arch", "family", "vendor", "generic")


# -- tunables -------------------------------------------------------------------------------
class Checked:
    """Base of every kernel's tunables dataclass: its `violations(...)` names each constraint
    a set breaks; `validate(...)` (same arguments) raises them, for builders given a set."""

    def validate(self, *args: Any) -> None:
        broken = self.violations(*args)  # type: ignore[attr-defined]
        if broken:
            raise ValueError(f"{self} breaks: " + "; ".join(broken))


@dataclass(frozen=True)
class Rule:
    """A named constraint a kind adds to its params' own (`violations()`)."""

    reason: str
    holds: Callable[[Any, Target], bool]


@dataclass(frozen=True)
class SearchSpace:
    """The legal parameter sets of one kind on one target, and why the others are not."""

    kind: str
    axes: tuple[tuple[str, tuple[int, ...]], ...]
    legal: tuple[Any, ...]
    rejected: Mapping[str, int]  # reason -> how many sets of the full product it rejected

    def __len__(self) -> int:
        return len(self.legal)

    def sample(self, count: int, rng: random.Random) -> list[Any]:
        return rng.sample(list(self.legal), min(count, len(self.legal)))

    def spread(self, count: int) -> list[Any]:
        """`count` legal sets evenly spaced over the space, and one more for each axis value
        they miss: a deterministic sample that still holds every value of every axis (for
        tests, and for spaces too large to run whole)."""
        legal = list(self.legal)
        if len(legal) <= count:
            return legal
        picked = [legal[i * len(legal) // count] for i in range(count)]
        for name, values in self.axes:
            for value in values:
                if not any(getattr(p, name) == value for p in picked):
                    extra = next((p for p in legal if getattr(p, name) == value), None)
                    if extra is not None:
                        picked.append(extra)
        return picked

    def neighbours(self, params: Any) -> list[Any]:
        """Legal sets one step away along one axis (for local refinement)."""
        legal = set(self.legal)
        found = []
        for name, values in self.axes:
            current = getattr(params, name)
            if current not in values:
                continue
            i = values.index(current)
            for j in (i - 1, i + 1):
                if 0 <= j < len(values):
                    other = replace(params, **{name: values[j]})
                    if other in legal:
                        found.append(other)
        return found


@dataclass(frozen=True)
class ParamKind:
    """One kernel kind's tunables: params type, defaults per level, search axes, rules."""

    name: str
    params_type: type
    # level -> {arch / family / vendor name -> params}; "generic" -> {"gpu" | "other": ...}
    defaults: Mapping[str, Mapping[str, Any]]
    axes: tuple[tuple[str, tuple[int, ...]], ...]
    own: Callable[[Any, Target, int], list[str]]  # the params type's violations()
    rules: tuple[Rule, ...] = ()
    shape_rule: str | None = None  # untuned, builders apply this rule, not `defaults`

    def violations(self, params: Any, target: Target, itemsize: int = 4) -> list[str]:
        if not isinstance(params, self.params_type):
            return [f"{self.name} takes {self.params_type.__name__}, "
                    f"not {type(params).__name__}"]
        return self.own(params, target, itemsize) + [
            r.reason for r in self.rules if not r.holds(params, target)]

    def default(self, target: Target, itemsize: int = 4) -> tuple[Any, str, str]:
        """(params, level, source): the most specific legal default for `target`."""
        family = target.family
        names = {"arch": family.arch, "family": family.name, "vendor": family.vendor,
                 "generic": "gpu" if family.is_gpu else "other"}
        tried = []
        for level in LEVELS[1:]:
            params = self.defaults.get(level, {}).get(names[level])
            if params is None:
                continue
            broken = self.violations(params, target, itemsize)
            if not broken:
                return params, level, f"{level} {names[level]}"
            tried.append(f"{level} {names[level]}: {'; '.join(broken)}")
        log.warning("no %s default fits %s (%s); using the generic one", self.name,
                    target.traits.name, " | ".join(tried))
        return self.defaults["generic"][names["generic"]], "generic", "generic (unfit)"


@dataclass(frozen=True)
class Lookup:
    """The parameters a builder got, and the level that answered."""

    kind: str
    key: str | None
    params: Any
    level: str  # one of LEVELS
    source: str  # e.g. "TuningDB", "arch gfx803", "family cpu"

    def __str__(self) -> str:
        return f"{self.kind}: {self.params} from {self.source}"


def gemm_rules() -> tuple[Rule, ...]:
    return (Rule("local_m * local_n % simd_width == 0: whole warps / wavefronts per group",
                 lambda p, t: not t.family.is_gpu or p.threads % t.simd_width == 0),)


def _vector_room(target: Target) -> tuple[int, int] | None:
    """(float lanes per register, registers left for accumulators: two stay for an input
    vector and a broadcast) of a CPU device, from `families.vector_unit`; None: unknown."""
    unit = vector_unit(target.traits)
    return None if unit is None else (unit.lanes, unit.registers - 2)


def accumulators_fit(what: str, vectors: Callable[[Any], int]) -> Rule:
    """A conv kernel's `what` accumulator vectors (of vw lanes) fit the vector registers,
    two left for an input vector and a broadcast weight."""
    def fits(p: Any, t: Target) -> bool:
        room = _vector_room(t)
        return room is None or vectors(p) * math.ceil(p.vw / room[0]) <= room[1]

    return Rule(f"{what} * ceil(vw / lanes) <= vector registers - 2: accumulators must not "
                "spill", fits)


def cpu_gemm_rules() -> tuple[Rule, ...]:
    def fits(p: Any, t: Target) -> bool:
        room = _vector_room(t)
        return room is None or p.mr * p.nv * math.ceil(p.vw / room[0]) <= room[1]

    return (Rule("mr * nv * ceil(vw / lanes) <= vector registers - 2: accumulators must not "
                 "spill (two registers stay for a B vector and a broadcast)", fits),)


def gemv_rules() -> tuple[Rule, ...]:
    def fits(p: Any, t: Target) -> bool:
        room = _vector_room(t)
        return room is None or p.nv * math.ceil(p.vw / room[0]) <= room[1]

    return (Rule("nv * ceil(vw / lanes) <= vector registers - 2: a row's accumulators must not "
                 "spill (two registers stay for a B vector and a broadcast)", fits),)


_KINDS: dict[str, ParamKind] = {}


def register_kind(kind: ParamKind) -> ParamKind:
    """Make a tunable kind known (to params_for, the tuner, the TuningDB). Each kernel
    module registers its kinds beside its Params class, when codegen imports it."""
    known = _KINDS.get(kind.name)
    if known is not None and known.params_type is not kind.params_type:
        raise ValueError(f"tunable kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    search_space.cache_clear()
    return kind


def param_kinds() -> Mapping[str, ParamKind]:
    """The registry of tunable kernel kinds (every kernel module of codegen registers its
    own; importing anything of ember.codegen imports them all)."""
    return MappingProxyType(_KINDS)


def params_for(kind: str, key: str | None, target: Target, itemsize: int = 4) -> Lookup:
    """The parameters of kernel `kind` for problem `key` on `target`, and from which level:
    the target's tuned table first (if its entry is legal here), then the defaults."""
    spec = param_kinds()[kind]
    for name, source in ((key, "TuningDB"), (_bucket_or_none(key), BUCKET_SOURCE)):
        tuned = target.tuning.get(kind, name)
        if tuned is None:
            continue
        broken = spec.violations(tuned, target, itemsize)
        if not broken:
            lookup = Lookup(kind, key, tuned, "device", source)
            log.debug("%s for %s", lookup, key)
            return lookup
        log.warning("tuned %s params %s for %r break %s; using defaults", kind, tuned, name,
                    "; ".join(broken))
        break
    params, level, source = spec.default(target, itemsize)
    lookup = Lookup(kind, key, params, level, source)
    log.debug("%s for %s", lookup, key)
    return lookup


@functools.lru_cache(maxsize=64)
def search_space(kind: str, target: Target, itemsize: int = 4) -> SearchSpace:
    """Every legal set of the kind's axes on `target` (the tuner's space), with the count of
    sets each named rule rejected."""
    spec = param_kinds()[kind]
    names = [name for name, _ in spec.axes]
    legal, rejected = [], Counter()
    for values in itertools.product(*(v for _, v in spec.axes)):
        params = spec.params_type(**dict(zip(names, values)))
        broken = spec.violations(params, target, itemsize)
        rejected.update(broken)
        if not broken:
            legal.append(params)
    return SearchSpace(kind, spec.axes, tuple(legal), dict(rejected))


# -- tuning keys ------------------------------------------------------------------------------
ROW_OPS = ("Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization",
           "RMSNormalization")
TUNABLE_OPS = ("MatMul", "Conv", "ConvTranspose", "Attention", *ROW_OPS, "MatMulInteger",
               "ConvInteger", "BlockQuantMatMul")


def tunable_spec(spec: Any) -> Any | None:
    """The problem a tunable spec tunes as: the spec itself, a MatMul / Conv with its fused
    epilogue and the epilogue's inputs, since the store's cost depends on the tiling (vector
    stores where the tile's lanes are contiguous in the output, one lane at a time where not).
    None for other ops."""
    return spec if spec.op in TUNABLE_OPS else None


def tuning_key(spec: Any) -> str | None:
    """A readable, stable key of a spec's tuning problem (None: not a tunable op), e.g.
    'MatMul float32[128,768] float32[768,3072] trans_a=0 trans_b=0 packed=1'; a fused
    epilogue is named by its label (epilogue=Add+Relu) after its inputs."""
    plain = tunable_spec(spec)
    if plain is None:
        return None
    attrs = " ".join(f"{k}={v.label if k == 'epilogue' else _attr_text(v)}"
                     for k, v in plain.attrs.items() if k != "epilogue" or v is not None)
    packed = ",".join(str(i) for i in sorted(plain.packable)) or "-"
    return " ".join([plain.op, *(str(t) for t in plain.inputs), attrs, f"packed={packed}"])


# A tensor type in a tuning key: dtype, then its dims in brackets ('float32[11,19]').
_TENSOR_IN_KEY = re.compile(r"\b(\w+)\[([0-9,]*)\]")
BUCKET_SOURCE = "TuningDB, size bucket"  # Lookup.source of an answer from a bucket's entry


def size_bucket(size: int) -> str:
    """The sizes that tune alike: those with the same next power of two ('9-16' holds 9 to
    16); 0, 1 and 2 are buckets of their own."""
    if size <= 2:
        return str(size)
    high = 1 << (size - 1).bit_length()
    return f"{high // 2 + 1}-{high}"


def bucket_key(key: str) -> str:
    """The size bucket of a tuning key: every dim of every tensor replaced by its
    `size_bucket`, the dtypes, attributes and packing kept, e.g. 'MatMul float32[9-16,17-32]
    float32[17-32,17-32] trans_a=0 trans_b=0 packed=1' for [11,19] x [19,29] and [13,19] x
    [19,31]. Problems of one bucket differ only in sizes that round up to the same power of
    two, so one's tuned parameters suit the other (they are legal for any size: builders fit
    them to the problem). A bucket key is never another problem's tuning key (dims above 2
    become ranges), so the two kinds of key share a TuningTable without colliding."""
    def bucketed(found: re.Match[str]) -> str:
        dims = ",".join(size_bucket(int(d)) for d in found[2].split(",") if d)
        return f"{found[1]}[{dims}]"

    return _TENSOR_IN_KEY.sub(bucketed, key)


def key_tensors(key: str) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of a tuning key, in order, as (dtype name, shape)."""
    return [(found[1], tuple(int(d) for d in found[2].split(",") if d))
            for found in _TENSOR_IN_KEY.finditer(key)]


def key_sizes(key: str) -> tuple[int, ...]:
    """Every dim of every tensor of a tuning key, in order (to compare problems' sizes)."""
    return tuple(d for _, shape in key_tensors(key) for d in shape)


def _bucket_or_none(key: str | None) -> str | None:
    return bucket_key(key) if key is not None else None


def _attr_text(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(str(v) for v in value) + ")"
    return str(value)

