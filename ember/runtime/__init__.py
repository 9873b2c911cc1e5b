"""Runtime: device discovery, execution plans, and the OpenCL and numpy executors."""

from ember.runtime.device import DeviceInfo, OpenCLDevice, devices, resolve_target
from ember.runtime.plan import ExecutionPlan, build_plan

__all__ = ["DeviceInfo", "OpenCLDevice", "devices", "resolve_target", "ExecutionPlan", "build_plan"]
