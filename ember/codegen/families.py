"""Device families: traits, detection, and where each kernel's tunables come from.

`DeviceTraits` is plain data read from an OpenCL device (`read_traits`); `Family` is what
codegen and the tuner key on: NVIDIA by compute capability, AMD GCN (Polaris gfx803, Vega
gfx9) and RDNA (gfx10/gfx11/gfx12) by gfx name, Intel GPUs, other GPUs (Apple, ARM Mali,
Qualcomm Adreno) by vendor, CPU devices (PoCL) by device type, and a generic fallback.
Templates never query OpenCL: they get traits from here.

Tunables. Each kernel kind ("gemm": the local-memory tiled GEMM; "gemm_cpu" / "gemv_cpu":
the register-tiled CPU GEMM for M > 1 / M = 1) has a `ParamKind` in `param_kinds()`:
defaults per level, a search space (values per axis) and named rules. `params_for(kind,
key, target)` answers from the first level that has a legal set:
device (tuned on this very device: the target's TuningTable, filled from the TuningDB) ->
arch (chip architecture, e.g. gfx803, sm_86) -> family -> vendor -> generic, and says which
level answered (`Lookup`). Tuned tables travel inside the hashable `Target`, so the
lru-cached `lower(spec, target)` never serves a kernel built with other parameters.
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
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "DeviceTraits", "Family", "Target", "detect_family", "FAMILIES", "read_traits",
    "TuningTable", "Lookup", "LEVELS", "ParamKind", "Rule", "SearchSpace", "param_kinds",
    "params_for", "search_space", "tuning_key", "tunable_spec", "vendor_of", "TUNABLE_OPS",
]

log = logging.getLogger(__name__)

# Where a parameter set can come from, most specific first.
LEVELS = ("device", "arch", "family", "vendor", "generic")


@dataclass(frozen=True)
class DeviceTraits:
    """What the runtime read from an OpenCL device (no pyopencl objects: hashable data)."""

    name: str
    vendor: str
    version: str
    driver_version: str
    platform: str
    device_type: str  # "GPU", "CPU", "ACCELERATOR"
    compute_units: int
    max_work_group_size: int
    local_mem_bytes: int
    extensions: frozenset[str]
    simd_width: int = 0  # warp / wavefront width the driver reports (0: not reported)
    preferred_vector_width: int = 1  # CL_DEVICE_PREFERRED_VECTOR_WIDTH_FLOAT
    local_mem_real: bool = True  # CL_DEVICE_LOCAL_MEM_TYPE is LOCAL (not global memory)
    compute_capability: tuple[int, int] | None = None  # cl_nv_device_attribute_query
    board_name: str = ""  # cl_amd_device_attribute_query (e.g. "Radeon RX 580 Series")

    @property
    def fp16(self) -> bool:
        return "cl_khr_fp16" in self.extensions

    @property
    def fp64(self) -> bool:
        return "cl_khr_fp64" in self.extensions

    @property
    def fingerprint(self) -> str:
        return f"{self.platform}|{self.vendor}|{self.name}|{self.version}|{self.driver_version}"


@dataclass(frozen=True)
class Family:
    name: str  # "nvidia", "amd-gcn", "amd-rdna", "intel-gpu", "gpu", "cpu", "generic"
    simd_width: int  # warp / wavefront / SIMD lanes
    is_gpu: bool
    vendor: str = "generic"  # "nvidia", "amd", "intel", "apple", "arm", "qualcomm", ...
    arch: str = ""  # "sm_86", "gfx803", "gfx1030", "xe-hpg": the arch level of lookups
    generation: str = ""  # for people: "Ampere", "Polaris", "RDNA2", ...


FAMILIES = {
    "nvidia": Family("nvidia", 32, True, "nvidia"),
    "amd-gcn": Family("amd-gcn", 64, True, "amd"),
    "amd-rdna": Family("amd-rdna", 32, True, "amd"),
    "intel-gpu": Family("intel-gpu", 16, True, "intel"),
    "gpu": Family("gpu", 32, True),
    "cpu": Family("cpu", 16, False),
    "generic": Family("generic", 1, False),
}

# NVIDIA compute capability (major, minor) -> generation; a major alone covers its minors.
_NV_GENERATIONS = {(2,): "Fermi", (3,): "Kepler", (5,): "Maxwell", (6,): "Pascal",
                   (7, 0): "Volta", (7, 2): "Volta", (7, 5): "Turing", (8, 9): "Ada",
                   (8,): "Ampere", (9,): "Hopper", (10,): "Blackwell", (12,): "Blackwell"}
# AMD gfx prefixes -> (family, generation); the longest matching prefix wins.
_AMD_GFX = {"gfx6": ("amd-gcn", "GCN1"), "gfx7": ("amd-gcn", "GCN2"),
            "gfx80": ("amd-gcn", "GCN3"), "gfx803": ("amd-gcn", "Polaris"),
            "gfx9": ("amd-gcn", "Vega"), "gfx908": ("amd-gcn", "CDNA1"),
            "gfx90a": ("amd-gcn", "CDNA2"), "gfx94": ("amd-gcn", "CDNA3"),
            "gfx101": ("amd-rdna", "RDNA1"), "gfx103": ("amd-rdna", "RDNA2"),
            "gfx11": ("amd-rdna", "RDNA3"), "gfx12": ("amd-rdna", "RDNA4")}
# Code names older drivers (AMD APP, Mesa) report instead of a gfx name.
_AMD_CODENAMES = {"ellesmere": "gfx803", "baffin": "gfx803", "lexa": "gfx803",
                  "polaris": "gfx803", "fiji": "gfx803", "tonga": "gfx802",
                  "hawaii": "gfx701", "tahiti": "gfx600", "vega10": "gfx900",
                  "vega20": "gfx906", "navi10": "gfx1010", "navi14": "gfx1012",
                  "navi21": "gfx1030", "navi22": "gfx1031", "navi23": "gfx1032",
                  "navi31": "gfx1100", "navi32": "gfx1101", "navi33": "gfx1102"}
# Generic GPU vendors: (name fragment, vendor, SIMD width from the vendor's documentation:
# Apple SIMD-groups of 32, Mali Valhall warps of 16, Adreno waves of 64).
_GPU_VENDORS = (("apple", "apple", 32), ("arm", "arm", 16), ("mali", "arm", 16),
                ("qualcomm", "qualcomm", 64), ("adreno", "qualcomm", 64),
                ("imagination", "imagination", 32))


def vendor_of(traits: DeviceTraits) -> str:
    """The vendor as a short lower-case name ("amd" also for AuthenticAMD CPUs)."""
    text = f"{traits.vendor} {traits.name}".lower()
    for fragment, vendor in (("nvidia", "nvidia"), ("advanced micro devices", "amd"),
                             ("authenticamd", "amd"), ("amd", "amd"), ("intel", "intel")):
        if fragment in text:
            return vendor
    for fragment, vendor, _ in _GPU_VENDORS:
        if re.search(rf"\b{fragment}\b", text):
            return vendor
    return "generic"


def _amd_arch(traits: DeviceTraits) -> str:
    text = f"{traits.name} {traits.board_name}".lower()
    found = re.search(r"gfx[0-9a-f]{3,4}", text)
    if found:
        return found.group(0)
    for codename, gfx in _AMD_CODENAMES.items():
        if codename in text:
            return gfx
    return ""


def _longest_prefix(table: Mapping[str, Any], text: str) -> Any:
    matches = [k for k in table if text.startswith(k)]
    return table[max(matches, key=len)] if matches else None


def detect_family(traits: DeviceTraits) -> Family:
    """The family of a device, from its type, vendor, compute capability or gfx name."""
    vendor = vendor_of(traits)
    if traits.device_type == "CPU":
        lanes = traits.preferred_vector_width
        return replace(FAMILIES["cpu"], vendor=vendor, simd_width=lanes if lanes > 1 else 16)
    if traits.device_type != "GPU":
        return FAMILIES["generic"]
    if vendor == "nvidia" or traits.compute_capability is not None:
        cc = traits.compute_capability
        if cc is None:
            return FAMILIES["nvidia"]
        generation = _NV_GENERATIONS.get(cc) or _NV_GENERATIONS.get(cc[:1], "")
        return replace(FAMILIES["nvidia"], arch=f"sm_{cc[0]}{cc[1]}", generation=generation)
    if vendor == "amd":
        arch = _amd_arch(traits)
        family, generation = _longest_prefix(_AMD_GFX, arch) or (
            "amd-rdna" if arch.startswith("gfx1") else "amd-gcn", "")
        return replace(FAMILIES[family], arch=arch, generation=generation)
    if vendor == "intel":
        name = traits.name.lower()
        arch = ("xe-hpg" if "arc" in name else "xe-lp" if "xe" in name
                else "gen9" if any(s in name for s in ("uhd", "hd graphics", "iris")) else "")
        return replace(FAMILIES["intel-gpu"], arch=arch)
    for _, known, simd in _GPU_VENDORS:
        if vendor == known:
            return replace(FAMILIES["gpu"], vendor=vendor, simd_width=simd)
    return FAMILIES["gpu"]


def read_traits(platform: Any, device: Any) -> DeviceTraits:
    """DeviceTraits of a pyopencl device; vendor attributes are read only where the device
    lists their extension (cl_nv_device_attribute_query, cl_amd_device_attribute_query)."""
    import pyopencl as cl

    extensions = frozenset(device.extensions.split())

    def query(attribute: str, default: Any) -> Any:
        try:
            return getattr(device, attribute)
        except Exception as exc:  # noqa: BLE001 - drivers differ; a missing value is no error
            log.debug("device %s: no %s (%s)", device.name, attribute, exc)
            return default

    cc, simd, board = None, 0, ""
    if "cl_nv_device_attribute_query" in extensions:
        major = query("compute_capability_major_nv", None)
        minor = query("compute_capability_minor_nv", 0)
        cc = (int(major), int(minor)) if major is not None else None
        simd = int(query("warp_size_nv", 0))
    if "cl_amd_device_attribute_query" in extensions:
        board = str(query("board_name_amd", "")).strip()
        simd = int(query("wavefront_width_amd", 0))
    device_type = next((name for name in ("GPU", "CPU", "ACCELERATOR")
                        if device.type & getattr(cl.device_type, name)), "OTHER")
    return DeviceTraits(
        name=device.name.strip(), vendor=device.vendor.strip(), version=device.version.strip(),
        driver_version=device.driver_version.strip(), platform=platform.name.strip(),
        device_type=device_type, compute_units=int(device.max_compute_units),
        max_work_group_size=int(device.max_work_group_size),
        local_mem_bytes=int(device.local_mem_size), extensions=extensions, simd_width=simd,
        preferred_vector_width=int(query("preferred_vector_width_float", 1)),
        local_mem_real=query("local_mem_type", cl.device_local_mem_type.LOCAL)
        == cl.device_local_mem_type.LOCAL,
        compute_capability=cc, board_name=board,
    )


@dataclass(frozen=True)
class TuningTable:
    """Tuned parameters (kind, key) -> params for one device: hashable, so that a Target
    carrying it keys `lower()`'s cache correctly."""

    entries: tuple[tuple[str, str, Any], ...] = ()
    _index: dict = field(default_factory=dict, init=False, compare=False, hash=False,
                         repr=False)

    def __post_init__(self) -> None:
        self._index.update({(kind, key): params for kind, key, params in self.entries})

    @staticmethod
    def of(mapping: Mapping[tuple[str, str], Any]) -> TuningTable:
        return TuningTable(tuple(sorted(((k, key, p) for (k, key), p in mapping.items()),
                                        key=lambda e: (e[0], e[1]))))

    def get(self, kind: str, key: str | None) -> Any | None:
        return self._index.get((kind, key)) if key is not None else None

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class Target:
    """A device as codegen sees it: traits, family, and the parameters tuned for it."""

    traits: DeviceTraits
    family: Family
    tuning: TuningTable = TuningTable()

    @staticmethod
    def of(traits: DeviceTraits) -> Target:
        return Target(traits, detect_family(traits))

    def with_tuning(self, tuning: TuningTable) -> Target:
        return replace(self, tuning=tuning)

    @property
    def simd_width(self) -> int:
        """The width the driver reports, else the family's."""
        return self.traits.simd_width or self.family.simd_width

    @property
    def identity(self) -> dict[str, str]:
        """What tuned parameters are valid for: vendor, device, driver and family."""
        t = self.traits
        return {"vendor": t.vendor, "device": t.name, "driver": t.driver_version,
                "platform": t.platform, "family": self.family.name, "arch": self.family.arch}


# -- tunables -------------------------------------------------------------------------------
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


def _gemm_rules() -> tuple[Rule, ...]:
    return (Rule("local_m * local_n % simd_width == 0: whole warps / wavefronts per group",
                 lambda p, t: not t.family.is_gpu or p.threads % t.simd_width == 0),)


def _vector_registers(target: Target) -> int:
    """x86 has 16 vector registers (32 with AVX-512, whose floats are 16 wide); AArch64 32."""
    lanes = target.traits.preferred_vector_width
    return 32 if lanes >= 16 or target.family.vendor == "arm" else 16


def _cpu_rules() -> tuple[Rule, ...]:
    def fits(p: Any, t: Target) -> bool:
        lanes = t.traits.preferred_vector_width
        if lanes < 4:  # not reported: nothing to check against
            return True
        return p.mr * p.nv * math.ceil(p.vw / lanes) <= _vector_registers(t) - 2

    return (Rule("mr * nv * ceil(vw / lanes) <= vector registers - 2: accumulators must not "
                 "spill (two registers stay for a B vector and a broadcast)", fits),)


@functools.cache
def param_kinds() -> Mapping[str, ParamKind]:
    """The registry of tunable kernel kinds."""
    # Imported here: these kernel modules import Target from this one.
    from ember.codegen.gemm_cpu import (
        DEFAULT_CPU_GEMM_PARAMS, GEMV_CPU_GEMM_PARAMS, CpuGemmParams,
    )
    from ember.codegen.matmul import DEFAULT_GEMM_PARAMS, GemmParams

    family_gemm = {k: v for k, v in DEFAULT_GEMM_PARAMS.items() if k not in ("gpu", "generic")}
    gemm = ParamKind(
        "gemm", GemmParams,
        defaults={
            # From the vendors' documentation, not measured (no such GPU here; the tuner
            # replaces them per device): Ampere/Ada/Hopper SMs hold 64K registers with up
            # to 255 per thread, and RDNA3 (Navi 31/32) SIMDs 1.5x the VGPRs of RDNA2, so an
            # 8x4 register block per work-item (32 accumulators) stays resident.
            "arch": {**dict.fromkeys(("sm_80", "sm_86", "sm_87", "sm_89", "sm_90"),
                                     GemmParams(128, 64, 16, 8, 4, 1)),
                     **dict.fromkeys(("gfx1100", "gfx1101"), GemmParams(128, 64, 16, 8, 4, 1))},
            "family": family_gemm,
            # Apple: 32 KiB threadgroup memory, SIMD-groups of 32. Mali: local memory is
            # ordinary global memory, so small tiles and work in registers. Adreno: 32 KiB
            # of real local memory, waves of 64.
            "vendor": {"nvidia": DEFAULT_GEMM_PARAMS["nvidia"],
                       "amd": DEFAULT_GEMM_PARAMS["amd-gcn"],
                       "intel": DEFAULT_GEMM_PARAMS["intel-gpu"],
                       "apple": GemmParams(64, 64, 16, 4, 4, 0),
                       "arm": GemmParams(32, 32, 8, 4, 4, 0),
                       "qualcomm": GemmParams(32, 32, 16, 2, 2, 0)},
            "generic": {"gpu": DEFAULT_GEMM_PARAMS["gpu"], "other": DEFAULT_GEMM_PARAMS["generic"]},
        },
        axes=(("tile_m", (16, 32, 64, 128)), ("tile_n", (16, 32, 64, 128)),
              ("tile_k", (8, 16, 32)), ("wpt_m", (1, 2, 4, 8)), ("wpt_n", (1, 2, 4, 8)),
              ("lmem_pad", (0, 1))),
        own=lambda p, t, itemsize: p.violations(t, itemsize),
        rules=_gemm_rules(),
    )
    cpu_own: Callable[[Any, Target, int], list[str]] = lambda p, t, itemsize: p.violations(itemsize)
    small = CpuGemmParams(mr=4, vw=4, nv=2, ku=1, group_m=0)  # fits 16 SSE registers
    gemm_cpu = ParamKind(
        "gemm_cpu", CpuGemmParams,
        defaults={"family": {"cpu": DEFAULT_CPU_GEMM_PARAMS},
                  "generic": {"gpu": small, "other": small}},
        axes=(("mr", (1, 2, 3, 4, 6, 8)), ("vw", (4, 8, 16)), ("nv", (1, 2, 3, 4)),
              ("ku", (1, 2, 4)), ("group_m", (0, 1, 4, 16))),
        own=cpu_own, rules=_cpu_rules(),
    )
    gemv_cpu = ParamKind(
        "gemv_cpu", CpuGemmParams,
        defaults={"family": {"cpu": GEMV_CPU_GEMM_PARAMS},
                  "generic": {"gpu": replace(small, mr=1), "other": replace(small, mr=1)}},
        axes=(("mr", (1,)), ("vw", (4, 8, 16)), ("nv", (1, 2, 4, 8)), ("ku", (1, 2, 4, 8)),
              ("group_m", (0,))),
        own=cpu_own, rules=_cpu_rules(),
    )
    return {k.name: k for k in (gemm, gemm_cpu, gemv_cpu)}


def params_for(kind: str, key: str | None, target: Target, itemsize: int = 4) -> Lookup:
    """The parameters of kernel `kind` for problem `key` on `target`, and from which level:
    the target's tuned table first (if its entry is legal here), then the defaults."""
    spec = param_kinds()[kind]
    tuned = target.tuning.get(kind, key)
    if tuned is not None:
        broken = spec.violations(tuned, target, itemsize)
        if not broken:
            lookup = Lookup(kind, key, tuned, "device", "TuningDB")
            log.debug("%s for %s", lookup, key)
            return lookup
        log.warning("tuned %s params %s for %r break %s; using defaults", kind, tuned, key,
                    "; ".join(broken))
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
TUNABLE_OPS = ("MatMul", "Conv", "ConvTranspose")


def tunable_spec(spec: Any) -> Any | None:
    """The plain problem a MatMul / Conv spec tunes as: its epilogue (and the epilogue's
    inputs) removed, since an epilogue only changes the store. None for other ops."""
    from ember.ir.ops.fused import epilogue_inputs

    if spec.op not in TUNABLE_OPS:
        return None
    epilogue = spec.attrs.get("epilogue")
    if epilogue is None:
        return spec
    base = len(spec.inputs) - epilogue_inputs(epilogue)
    out = spec.outputs[0]
    product = type(out)(out.shape, spec.inputs[0].dtype)
    return replace(spec, attrs=spec.attrs.replace(epilogue=None), inputs=spec.inputs[:base],
                   outputs=(product,), packable=frozenset(i for i in spec.packable if i < base))


def tuning_key(spec: Any) -> str | None:
    """A readable, stable key of a spec's tuning problem (None: not a tunable op), e.g.
    'MatMul float32[128,768] float32[768,3072] trans_a=0 trans_b=0 packed=1'."""
    plain = tunable_spec(spec)
    if plain is None:
        return None
    attrs = " ".join(f"{k}={_attr_text(v)}" for k, v in plain.attrs.items()
                     if k != "epilogue")
    packed = ",".join(str(i) for i in sorted(plain.packable)) or "-"
    return " ".join([plain.op, *(str(t) for t in plain.inputs), attrs, f"packed={packed}"])


def _attr_text(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(str(v) for v in value) + ")"
    return str(value)

