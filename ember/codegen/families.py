"""Device families: traits, detection, and where each kernel's tunables come from.

`DeviceTraits` is plain data read from an OpenCL device (`read_traits`); `Family` is what
codegen and the tuner key on: NVIDIA by compute capability, AMD GCN (Polaris gfx803, Vega
gfx9) and RDNA (gfx10/gfx11/gfx12) by gfx name, Intel GPUs, other GPUs (Apple, ARM Mali,
Qualcomm Adreno) by vendor, CPU devices (PoCL) by device type, and a generic fallback.
Templates never query OpenCL: they get traits from here.

Where each kernel's tunables come from (defaults per level, search spaces, lookups) is
codegen/params.py; tuned tables travel inside the hashable `Target`, so the lru-cached
`lower(spec, target)` never serves a kernel built with other parameters.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "DeviceTraits", "Family", "Target", "detect_family", "FAMILIES", "read_traits",
    "TuningTable", "vendor_of", "VectorUnit", "vector_unit", "llvm_cpu",
]

log = logging.getLogger(__name__)



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
    max_alloc_bytes: int = 0  # CL_DEVICE_MAX_MEM_ALLOC_SIZE (0: not known, not checked)
    global_mem_bytes: int = 0  # CL_DEVICE_GLOBAL_MEM_SIZE (0: not known, not checked)

    @property
    def fp16(self) -> bool:
        return "cl_khr_fp16" in self.extensions

    @property
    def fp64(self) -> bool:
        return "cl_khr_fp64" in self.extensions

    @property
    def simulator(self) -> bool:
        """A device simulator (Oclgrind): correct and checked, but far too slow to be used
        unless asked for by name."""
        return "oclgrind" in f"{self.platform} {self.name}".lower()

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
    # Kernels as register tiles of explicit floatN vectors, no local memory (what a CPU's
    # SIMD units want; PoCL runs a work-group as loops), instead of local-memory tiles.
    register_tiles: bool = False


FAMILIES = {
    "nvidia": Family("nvidia", 32, True, "nvidia"),
    "amd-gcn": Family("amd-gcn", 64, True, "amd"),
    "amd-rdna": Family("amd-rdna", 32, True, "amd"),
    "intel-gpu": Family("intel-gpu", 16, True, "intel"),
    "gpu": Family("gpu", 32, True),
    "cpu": Family("cpu", 16, False, register_tiles=True),
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


@dataclass(frozen=True)
class VectorUnit:
    """A CPU's float vector registers as the compiled kernels see them."""

    lanes: int  # float32 lanes of one register
    registers: int  # architectural vector registers


# LLVM CPU names (PoCL compiles for one; its device version says which, after "HSTR:")
# whose kernels get 512-bit registers; other x86-64 CPUs named here have AVX2 or AVX
# (256 bits, 16 registers); anything else x86-64 is taken as SSE (128 bits, 16 registers).
_X86_AVX512 = ("skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake",
               "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids",
               "graniterapids", "diamondrapids", "znver4", "znver5", "knl", "knm",
               "x86-64-v4")
_X86_AVX = ("sandybridge", "ivybridge", "haswell", "broadwell", "skylake", "alderlake",
            "raptorlake", "meteorlake", "arrowlake", "lunarlake", "gracemont", "sierraforest",
            "grandridge", "znver1", "znver2", "znver3", "bdver", "btver2", "x86-64-v3")


def llvm_cpu(traits: DeviceTraits) -> str:
    """The LLVM CPU a PoCL device compiles for ("" where the driver does not say), from
    its version string, e.g. "OpenCL 3.0 PoCL HSTR: pthread-x86_64-unknown-linux-gnu-znver3"."""
    found = re.search(r"HSTR:\s*\S*?-(?:linux(?:-gnu\w*|-musl\w*|-android\w*)?|darwin[\w.]*"
                      r"|windows(?:-\w+)?|freebsd[\w.]*)-([\w.-]+)",
                      f"{traits.version} {traits.platform}")
    return found.group(1).lower() if found else ""


def vector_unit(traits: DeviceTraits) -> VectorUnit | None:
    """The vector registers a CPU device's kernels use: from the LLVM CPU the driver
    compiles for where it says (the preferred vector width of PoCL is 16 floats even
    where the code it emits is AVX2), else from the preferred width; None where nothing
    is reported."""
    cpu = llvm_cpu(traits)
    text = f"{traits.version} {traits.name}".lower()
    if cpu and ("x86_64" in text or "x86-64" in cpu or cpu.startswith(("znver", "bdver"))
                or any(cpu.startswith(n) for n in _X86_AVX512 + _X86_AVX)):
        if any(cpu.startswith(n) for n in _X86_AVX512):
            return VectorUnit(16, 32)
        if any(cpu.startswith(n) for n in _X86_AVX):
            return VectorUnit(8, 16)
        return VectorUnit(4, 16)
    if cpu and ("aarch64" in text or "arm64" in text):
        return VectorUnit(4, 32)
    lanes = traits.preferred_vector_width
    if lanes < 4:
        return None
    return VectorUnit(lanes, 32 if lanes >= 16 or "arm" in text else 16)


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
        max_alloc_bytes=int(query("max_mem_alloc_size", 0)),
        global_mem_bytes=int(query("global_mem_size", 0)),
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
