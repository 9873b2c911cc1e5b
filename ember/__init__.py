"""ember: a graph compiler for neural networks that generates OpenCL kernels.

    import ember
    model = ember.compile("model.onnx")       # default device, opt_level=2
    outputs = model(input=array)              # dict: output name -> np.ndarray
    logits, = model.run(["logits"], {"input": array})   # onnxruntime's habit: a list

The public names are loaded at their first use (PEP 562), so that a process that needs one
stage only (a build or tuning worker runs kernels, it never reads ONNX) does not pay for
importing onnx and the compiler.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ember.errors import (
    CompileError,
    DeviceError,
    DTypeError,
    EmberError,
    InputError,
    ModelLoadError,
    ResourceError,
    ShapeError,
    UnsupportedOpError,
)

if TYPE_CHECKING:
    from ember.compiler import CompiledModel, compile
    from ember.loaded import LoadedModel, load
    from ember.summary import ModelStats
    from ember.profile import Profile
    from ember.runtime.device import DeviceInfo, devices
    from ember.quantization.api import QuantizedModel, quantize

from ember.paths import VERSION as __version__

__all__ = [
    "compile", "CompiledModel", "ModelStats", "Profile", "devices", "DeviceInfo", "quantize",
    "QuantizedModel", "load", "LoadedModel", "EmberError",
    "UnsupportedOpError", "ShapeError", "DTypeError", "InputError", "ModelLoadError",
    "CompileError", "DeviceError", "ResourceError", "__version__",
]

_LAZY = {"compile": "ember.compiler", "CompiledModel": "ember.compiler",
         "ModelStats": "ember.summary", "Profile": "ember.profile",
         "devices": "ember.runtime.device", "DeviceInfo": "ember.runtime.device",
         "quantize": "ember.quantization.api", "QuantizedModel": "ember.quantization.api",
         "load": "ember.loaded", "LoadedModel": "ember.loaded"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ember' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
