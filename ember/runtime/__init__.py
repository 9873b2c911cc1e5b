"""Runtime: device discovery, execution plans, and the OpenCL and numpy executors.

The names below load at first use (PEP 562): a build worker imports `runtime.warm` alone,
without the compiler stages behind the device and plan modules."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ember.runtime.device import DeviceInfo, OpenCLDevice, devices, resolve_target
    from ember.runtime.plan import ExecutionPlan, build_plan

__all__ = ["DeviceInfo", "OpenCLDevice", "devices", "resolve_target", "ExecutionPlan", "build_plan"]

_LAZY = {"DeviceInfo": "ember.runtime.device", "OpenCLDevice": "ember.runtime.device",
         "devices": "ember.runtime.device", "resolve_target": "ember.runtime.device",
         "ExecutionPlan": "ember.runtime.plan", "build_plan": "ember.runtime.plan"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ember.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
