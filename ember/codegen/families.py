"""Device families and their traits.

`DeviceTraits` is plain data read from an OpenCL device by the runtime; `Family` is what
codegen and the tuner key on. Templates never query OpenCL: they get traits from here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeviceTraits", "Family", "Target", "detect_family", "FAMILIES"]


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
    name: str  # "nvidia", "amd-gcn", "amd-rdna", "intel-gpu", "cpu", "generic"
    simd_width: int  # warp / wavefront / SIMD lanes
    is_gpu: bool


FAMILIES = {
    "nvidia": Family("nvidia", 32, True),
    "amd-gcn": Family("amd-gcn", 64, True),
    "amd-rdna": Family("amd-rdna", 32, True),
    "intel-gpu": Family("intel-gpu", 16, True),
    "gpu": Family("gpu", 32, True),
    "cpu": Family("cpu", 16, False),
    "generic": Family("generic", 1, False),
}


def detect_family(traits: DeviceTraits) -> Family:
    """The family of a device, from its type and vendor."""
    vendor = traits.vendor.lower()
    if traits.device_type == "CPU":
        return FAMILIES["cpu"]
    if traits.device_type != "GPU":
        return FAMILIES["generic"]
    if "nvidia" in vendor:
        return FAMILIES["nvidia"]
    if "advanced micro devices" in vendor or "amd" in vendor:
        name = traits.name.lower()
        return FAMILIES["amd-rdna"] if name.startswith("gfx1") else FAMILIES["amd-gcn"]
    if "intel" in vendor:
        return FAMILIES["intel-gpu"]
    return FAMILIES["gpu"]


@dataclass(frozen=True)
class Target:
    """A device as codegen sees it: traits plus family."""

    traits: DeviceTraits
    family: Family

    @staticmethod
    def of(traits: DeviceTraits) -> Target:
        return Target(traits, detect_family(traits))
