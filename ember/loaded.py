"""`ember.load`: a compiled bundle (runtime/bundle.py) opened and made ready to call.

Loading reads plans and program binaries; it never imports ONNX or the lowering passes
while the bundle fits the machine:

- Same device and driver (fingerprint), same ember: the programs come from the stored
  binaries. A binary the driver refuses: a warning, and the kernels are built from the
  stored plan's sources.
- Another driver or device of the same family, whose limits the stored launches fit: a
  warning naming what differs, and the kernels are built from the stored sources (in
  workers first, as a cold compile builds them).
- Anything else (another family, another target kind, another ember version, plans this
  ember cannot read, a kernel that crashes the new driver): a warning, and the ONNX model
  inside the bundle is compiled for the device at hand (`ember.compile`).

A call with input shapes the bundle does not hold compiles them from the ONNX model too,
with a log line; that is where the compiler is imported.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ember.feeds import bind_feeds, select_outputs
from ember.errors import CompileError, ModelLoadError
from ember.paths import VERSION
from ember.profile import Profile, check_counts, measure
from ember.runtime.bundle import Bundle, DeviceRecord, PlanFormatError, read_bundle, read_model
from ember.runtime.device import NUMPY, OpenCLDevice, devices, resolve_target
from ember.runtime.host import run_on_host
from ember.runtime.opencl import OpenCLExecutor, prebuild, program_from_binary, program_source
from ember.runtime.resources import driver_failures
from ember.runtime.types import ExecutionPlan
from ember.summary import ModelStats, format_summary, model_stats

if TYPE_CHECKING:
    from ember.compiler import CompiledModel

__all__ = ["load", "LoadedModel", "BundleWarning", "BINARIES", "SOURCES", "MODEL"]

log = logging.getLogger(__name__)

# how a loaded model's kernels were made ready (LoadedModel.origin)
BINARIES = "binaries"  # the stored program binaries
SOURCES = "sources"  # built again from the stored plans' kernel sources
MODEL = "model"  # compiled again from the ONNX model inside the bundle
NUMPY_PLANS = "numpy plans"  # a numpy-target bundle: the stored plans run on the host


class BundleWarning(UserWarning):
    """A bundle does not fit this machine as it is: what differs and what was done."""


class _Recompile(Exception):
    """The stored plans cannot be used here: compile the ONNX model instead."""


@dataclass
class _Runner:
    shapes: tuple[tuple[int, ...], ...]
    plan: ExecutionPlan
    executor: OpenCLExecutor | None  # None: the plan runs on the host

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.executor is None:
            return run_on_host(self.plan, feeds)
        return self.executor.run(feeds)


class LoadedModel:
    """A model from a bundle, called as a CompiledModel is: arrays by input name, by
    position or as one dict; it returns a dict of output name -> array. `run(names,
    feeds)` returns a list, as onnxruntime's session does. Calls take turns (one lock), as
    on a CompiledModel: device buffers are reused between calls.

    `origin` says how its kernels were made ready (BINARIES, SOURCES, MODEL or
    NUMPY_PLANS); `shapes` lists the input shapes the bundle holds."""

    def __init__(self, path: Path, bundle: Bundle, device: OpenCLDevice | None,
                 target: str | None, cache: Any) -> None:
        self.path = path
        self.name = bundle.name
        self.device = device
        self.opt_level = bundle.opt_level
        self.input_names = list(bundle.inputs)
        self.output_names = list(bundle.output_names)
        self.tuning = bundle.tuning  # the tuned parameters the stored kernels use
        self.origin = BINARIES
        self._bundle = bundle
        self._signature = dict(bundle.inputs)
        self._target = target
        self._cache = cache
        self._runners: dict[tuple, _Runner] = {}
        self._compiled: CompiledModel | None = None
        self._current: _Runner | None = None
        self._lock = threading.RLock()

    # -- properties ---------------------------------------------------------------------
    @property
    def target(self) -> str:
        return self.device.info.target if self.device is not None else NUMPY

    @property
    def shapes(self) -> list[tuple[tuple[int, ...], ...]]:
        return self._bundle.shapes

    def __repr__(self) -> str:
        where = NUMPY if self.device is None else (f"{self.device.info.target} "
                                                  f"{self.device.info.traits.name}")
        count = len(self._bundle.shapes)
        return (f"<ember.LoadedModel {self.name!r} from {str(self.path)!r} on {where}, "
                f"opt_level {self.opt_level}, {count} shape{'' if count == 1 else 's'} "
                f"stored, kernels from {self.origin}>")

    # -- calling --------------------------------------------------------------------------
    def _bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return bind_feeds(self._signature, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        feeds = self._bind(args, kwargs)
        key = tuple(feeds[name].shape for name in self.input_names)
        with self._lock:
            runner = self._runners.get(key)
            if runner is None:
                model = self._compiled_model(key)
                return model(*(feeds[name] for name in self.input_names))
            self._current = runner
            with driver_failures(f"running the model of {self.path} on {self.target} with "
                                 f"input shapes {key}"):
                return runner.run(feeds)

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, Any]
            ) -> list[np.ndarray]:
        """The outputs named (None: all, in the model's order) as a list in that order, for
        the feeds by input name: onnxruntime's `InferenceSession.run`."""
        return select_outputs(self, self.input_names, self.output_names, output_names, feeds)

    def profile(self, *args: Any, runs: int = 10, warmup: int = 1, **kwargs: Any) -> Profile:
        """Per-step times over `runs` calls after `warmup` unmeasured ones, as
        CompiledModel.profile measures them."""
        check_counts(runs, warmup)
        feeds = self._bind(args, kwargs)
        key = tuple(feeds[name].shape for name in self.input_names)
        with self._lock:
            runner = self._runners.get(key)
            if runner is None:
                return self._compiled_model(key).profile(
                    *(feeds[name] for name in self.input_names), runs=runs, warmup=warmup)
            self._current = runner
            placement = {step.name: step.placement for step in runner.plan.steps}

            def call() -> list[tuple[str, str, float]]:
                if runner.executor is None:
                    timings: list[tuple[str, str, float]] = []
                    run_on_host(runner.plan, feeds, timings)
                    return timings
                return runner.executor.run(feeds, profile=True)[1]

            with driver_failures(f"profiling the model of {self.path} on {self.target} "
                                 f"with input shapes {key}"):
                return measure(call, placement.__getitem__, runs=runs, warmup=warmup,
                               title=f"profile of {self.name!r} from {self.path} on "
                                     f"{self.target}, input shapes {self._shapes_text(key)}")

    def _compiled_model(self, key: tuple | None = None) -> CompiledModel:
        """The bundle's ONNX model compiled for this target (made at the first need)."""
        if self._compiled is None:
            if key is not None:
                log.info("input shapes %s are not in the bundle %s: compiling them from its "
                         "ONNX model", key, self.path)
            self._compiled = _compile_model(self.path, self._bundle, self._target_text(),
                                            self._cache, key)
        return self._compiled

    def _target_text(self) -> str:
        if self._target is not None:
            return self._target
        return self.device.info.target if self.device is not None else NUMPY

    # -- reporting ----------------------------------------------------------------------
    def _shapes_text(self, shapes: Sequence[Sequence[int]]) -> str:
        return ", ".join(f"{name}[{', '.join(map(str, shape))}]"
                         for name, shape in zip(self.input_names, shapes))

    def _plan(self) -> ExecutionPlan | None:
        runner = self._current or next(iter(self._runners.values()), None)
        return runner.plan if runner is not None else None

    @property
    def stats(self) -> ModelStats:
        plan = self._plan()
        if plan is None:
            return self._compiled_model().stats
        return model_stats(plan, on_device=self.device is not None)

    def summary(self) -> str:
        """The steps, placement, kernels and memory of the stored input shapes that ran last
        (the first stored ones before any call)."""
        with self._lock:
            runner = self._current or next(iter(self._runners.values()), None)
            if runner is None:
                return self._compiled_model().summary()
        on_device = self.device is not None
        where = (f"{self.device.info.target} {self.device.info.traits.name} (family "
                 f"{self.device.info.family.name})" if on_device else f"{NUMPY} (numpy executor)")
        shapes = self._shapes_text(runner.shapes)
        return format_summary(runner.plan, model_stats(runner.plan, on_device=on_device),
                              on_device=on_device,
                              title=f"ember model {self.name!r} from {self.path} on {where}, "
                                    f"opt_level {self.opt_level}, input shapes {shapes}; "
                                    f"kernels from {self.origin}")


# -- loading ----------------------------------------------------------------------------------
def _warn(message: str) -> None:
    """A BundleWarning pointing at the line that called ember.load."""
    frame, level = sys._getframe(1), 2  # level 1 is this function, 2 its caller
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, BundleWarning, stacklevel=level)


def _device_for(record: DeviceRecord | None, target: str | None) -> OpenCLDevice | None:
    """The device to run on: the one named, else the device the bundle was made for where
    this machine has it, else the default one (numpy for a numpy-target bundle)."""
    with driver_failures(f"opening the target {target or 'default'!s}"):
        if target is not None:
            return resolve_target(target)
        if record is None:
            return None
        for info in devices():
            if info.traits.fingerprint == record.fingerprint:
                return resolve_target(info.target)
        return resolve_target(None)


def _misfits(plan: ExecutionPlan, device: OpenCLDevice) -> list[str]:
    """Why the plan's launches cannot run on `device` as they are (empty: they can)."""
    traits = device.info.traits
    found = []
    for group in plan.programs():
        for kernel in group:
            lacking = sorted(kernel.extensions - traits.extensions)
            if lacking:
                found.append(f"kernel {kernel.name} needs {', '.join(lacking)}")
    for step in plan.steps:
        for launch in step.lowered.launches if step.lowered is not None else ():
            if launch.local_size and math.prod(launch.local_size) > traits.max_work_group_size:
                found.append(f"{step.op} {step.name!r} launches work-groups of "
                             f"{math.prod(launch.local_size)} (the device takes "
                             f"{traits.max_work_group_size})")
    return found


def _from_binaries(plan: ExecutionPlan, binaries: Sequence[bytes | None],
                   device: OpenCLDevice) -> str | None:
    """Load the plan's programs from their binaries; why not, where they cannot be."""
    groups = plan.programs()
    if len(groups) != len(binaries) or any(b is None for b in binaries):
        return "no program binary"  # the driver handed none out when it was saved
    for group, binary in zip(groups, binaries):
        try:
            program_from_binary(device, program_source(group), binary)
        except CompileError as exc:
            return str(exc)
    return None


def _executor(plan: ExecutionPlan, device: OpenCLDevice, shapes: tuple, path: Path,
              cache: Any) -> OpenCLExecutor:
    with driver_failures(f"building the programs and allocating the buffers of {path} on "
                         f"{device.info.traits.name} for input shapes {shapes}"):
        return OpenCLExecutor(plan, device, cache=cache)


def _prepare(bundle: Bundle, device: OpenCLDevice, path: Path, cache: Any
             ) -> tuple[dict[tuple, _Runner], str]:
    """Executors for the stored plans on `device`, and how their kernels were made ready;
    raises _Recompile where the ONNX model has to be compiled instead."""
    record = bundle.device
    where = f"{device.info.target} {device.info.traits.name}"
    if record is None:
        raise _Recompile(f"bundle {path} was compiled for the numpy target, not for {where}")
    differences = record.differences(device)
    origin = BINARIES
    if differences:
        problems = [p for spec in bundle.specializations for p in _misfits(spec.plan, device)]
        if record.family != device.info.family.name or problems:
            raise _Recompile(f"bundle {path} was compiled for {record}; this device differs: "
                             f"{'; '.join(differences + problems[:3])}")
        _warn(f"bundle {path} was compiled for {record}; this device differs: "
              f"{'; '.join(differences)}. Same family ({record.family}): rebuilding its "
              f"kernels from the stored sources for {where}")
        origin = SOURCES
    runners: dict[tuple, _Runner] = {}
    for spec in bundle.specializations:
        if origin == BINARIES:
            refused = _from_binaries(spec.plan, spec.binaries, device)
            if refused is not None:
                if refused == "no program binary":
                    log.info("bundle %s holds no program binary for input shapes %s: "
                             "building its kernels from the stored sources", path, spec.shapes)
                else:
                    _warn(f"bundle {path}: {refused}; rebuilding its kernels from the stored "
                          f"sources for {where}")
                origin = SOURCES
        if origin == SOURCES:
            crashes = prebuild(spec.plan, device, cache=cache)
            if crashes:
                listed = "; ".join(f"{c.op} {c.name!r}: {c.reason}" for c in crashes)
                raise _Recompile(f"bundle {path}: {len(crashes)} stored kernel(s) crashed the "
                                 f"driver of {device.info.traits.name} ({listed})")
        runners[spec.shapes] = _Runner(spec.shapes, spec.plan,
                                       _executor(spec.plan, device, spec.shapes, path, cache))
    return runners, origin


def _compile_model(path: Path, bundle: Bundle, target: str, cache: Any,
                   shapes: tuple | None) -> CompiledModel:
    """The bundle's ONNX model compiled for `target` (imports the compiler)."""
    from ember.compiler import compile as compile_model

    model = read_model(path)
    input_shapes = dict(zip(bundle.inputs, shapes)) if shapes is not None else None
    return compile_model(model, target=target, opt_level=bundle.opt_level,
                         input_shapes=input_shapes, cache=cache)


def load(path: str | os.PathLike[str], target: str | None = None, *,
         cache: bool | str | os.PathLike[str] | None = True) -> LoadedModel:
    """Open a bundle written by `CompiledModel.save` and make it ready to call.

    target: None runs on the device the bundle was made for where this machine has it,
    else on the default device (numpy for a numpy-target bundle); a target string as for
    `ember.compile` runs there. A bundle that does not fit the device (see the module
    docstring) is rebuilt with a BundleWarning saying what differs and what was done.
    cache: the binary cache used where kernels are built again, as for `ember.compile`.
    A damaged, truncated or changed file raises ModelLoadError naming it."""
    path = Path(path)
    head = read_bundle(path, plans=False)
    device = _device_for(head.device, target)
    model = LoadedModel(path, head, device, target, cache)
    try:
        if head.ember_version != VERSION:
            raise _Recompile(f"bundle {path} was written by ember {head.ember_version}, this "
                             f"is ember {VERSION}")
        try:
            bundle = read_bundle(path)
        except PlanFormatError as exc:
            raise _Recompile(f"bundle {path}: its plans do not fit this ember ({exc})"
                             ) from None
        model._bundle = bundle
        if device is None:
            if bundle.device is not None:
                raise _Recompile(f"bundle {path} was compiled for {bundle.device}, and the "
                                 f"target here is numpy")
            model._runners = {s.shapes: _Runner(s.shapes, s.plan, None)
                              for s in bundle.specializations}
            model.origin = NUMPY_PLANS
        else:
            model._runners, model.origin = _prepare(bundle, device, path, cache)
    except _Recompile as reason:
        if not head.has_model:
            raise ModelLoadError(f"{reason}; the bundle holds no ONNX model to compile again "
                                 f"(it was saved from a graph built in Python)") from None
        where = "numpy" if device is None else f"{device.info.target} {device.info.traits.name}"
        _warn(f"{reason}. Compiling the ONNX model inside it for {where} instead")
        first = head.shapes[0] if head.shapes else None
        model._runners = {}
        model._compiled = _compile_model(path, model._bundle, model._target_text(), cache,
                                         first)
        model.origin = MODEL
    return model
