"""OpenCL platform/device discovery and target selection.

No OpenCL driver at all (pyopencl missing, or no platform) is not an error: it is the cue to
run through numpy. Contexts and queues are made once per device per process.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from ember.codegen.cache import share_pocl_cache
from ember.codegen.families import DeviceTraits, Family, Target, read_traits
from ember.errors import DeviceError

__all__ = ["DeviceInfo", "devices", "resolve_target", "OpenCLDevice", "NUMPY"]

log = logging.getLogger(__name__)

NUMPY = "cpu"  # the target name of the numpy executor


@dataclass(frozen=True)
class DeviceInfo:
    """One OpenCL device as `ember.devices()` lists it."""

    platform_index: int
    device_index: int
    traits: DeviceTraits
    family: Family

    @property
    def target(self) -> str:
        return f"opencl:{self.platform_index}:{self.device_index}"

    def __str__(self) -> str:
        t = self.traits
        return (
            f"{self.target}  {t.name} ({t.device_type}, {t.vendor}; {t.platform}; "
            f"driver {t.driver_version}) family={self.family.name}"
        )


def _cl():
    try:
        import pyopencl as cl
    except ImportError:  # pragma: no cover - pyopencl is a dependency, but be graceful
        return None
    return cl


def _traits(cl, platform, device) -> DeviceTraits:
    # families.read_traits also reads the vendor attributes family detection needs
    # (NVIDIA compute capability, AMD board name and wavefront width)
    return read_traits(platform, device)


@functools.lru_cache(maxsize=1)
def _discover() -> tuple[tuple[DeviceInfo, object], ...]:
    cl = _cl()
    if cl is None:
        return ()
    share_pocl_cache()  # before PoCL initializes: it reads POCL_CACHE_DIR once
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:  # PLATFORM_NOT_FOUND_KHR: no driver installed
        log.info("no OpenCL platform (%s); ember runs on numpy", exc)
        return ()
    found = []
    for p_index, platform in enumerate(platforms):
        try:
            devs = platform.get_devices()
        except cl.Error:
            continue
        for d_index, device in enumerate(devs):
            traits = _traits(cl, platform, device)
            target = Target.of(traits)
            found.append((DeviceInfo(p_index, d_index, traits, target.family), device))
    return tuple(found)


def devices() -> list[DeviceInfo]:
    """Every OpenCL device on this machine, with its family."""
    return [info for info, _ in _discover()]


class OpenCLDevice:
    """A device with its context and in-order queue (one per device per process)."""

    def __init__(self, info: DeviceInfo, device) -> None:
        cl = _cl()
        self.info = info
        self.device = device
        self.context = cl.Context([device])
        self.queue = cl.CommandQueue(self.context)
        self._profiling_queue = None
        self.target = Target(info.traits, info.family)

    @property
    def profiling_queue(self):
        if self._profiling_queue is None:
            cl = _cl()
            props = cl.command_queue_properties.PROFILING_ENABLE
            self._profiling_queue = cl.CommandQueue(self.context, properties=props)
        return self._profiling_queue


@functools.lru_cache(maxsize=None)
def _open(platform_index: int, device_index: int) -> OpenCLDevice:
    for info, device in _discover():
        if (info.platform_index, info.device_index) == (platform_index, device_index):
            return OpenCLDevice(info, device)
    raise DeviceError(
        f"no OpenCL device {platform_index}:{device_index}; devices: "
        + (", ".join(i.target for i in devices()) or "none")
    )


def resolve_target(target: str | None) -> OpenCLDevice | None:
    """Turn a target string into a device, or None for numpy.

    None: the first OpenCL GPU, else the first OpenCL device, else numpy.
    "cpu" (or "numpy"): numpy. "opencl": like None but an error when no device exists.
    "opencl:P:D": platform P, device D.
    """
    if target in (NUMPY, "numpy"):
        return None
    found = devices()
    if target is None or target == "opencl":
        if not found:
            if target == "opencl":
                raise DeviceError("target 'opencl' asked for, but no OpenCL device exists")
            return None
        gpus = [i for i in found if i.traits.device_type == "GPU"]
        chosen = (gpus or found)[0]
        return _open(chosen.platform_index, chosen.device_index)
    if target.startswith("opencl:"):
        parts = target.split(":")
        try:
            p_index = int(parts[1])
            d_index = int(parts[2]) if len(parts) > 2 else 0
        except (ValueError, IndexError):
            raise DeviceError(f"target {target!r}: expected 'opencl:PLATFORM:DEVICE'") from None
        return _open(p_index, d_index)
    raise DeviceError(f"unknown target {target!r}; use None, 'cpu', 'opencl' or 'opencl:P:D'")
