"""Calibrated post-training quantization, above the stages beside compile(): calibration
(observers run on the float model through ember), the QDQ ONNX writer, the per-layer plan,
and the tools that find the layer that hurts. `ember.quantize` is `api.quantize`.

The submodules are imported when first used, so that importing `ember.quantization.mixed`
(pure search) does not pay for onnx and the compiler."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["quantize", "QuantizedModel", "QuantPlan", "LayerPlan", "build_qdq", "QdqOptions",
           "calibrate", "CalibrationStats", "compare_tensors"]

_LAZY = {"quantize": "api", "QuantizedModel": "api", "QuantPlan": "plan", "LayerPlan": "plan",
         "build_qdq": "qdq", "QdqOptions": "qdq", "calibrate": "calibration",
         "CalibrationStats": "calibration", "compare_tensors": "debug"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ember.quantization' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ember.quantization.{module}"), name)
    globals()[name] = value
    return value
