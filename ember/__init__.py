"""ember: a graph compiler for neural networks that generates OpenCL kernels.

    import ember
    model = ember.compile("model.onnx")       # default device, opt_level=2
    outputs = model(input=array)              # dict: output name -> np.ndarray
"""

from __future__ import annotations

from ember.compiler import CompiledModel, ModelStats, compile
from ember.errors import (
    CompileError,
    DeviceError,
    DTypeError,
    EmberError,
    InputError,
    ModelLoadError,
    ShapeError,
    UnsupportedOpError,
)
from ember.runtime.device import DeviceInfo, devices

__version__ = "0.1.0"

__all__ = [
    "compile", "CompiledModel", "ModelStats", "devices", "DeviceInfo", "EmberError",
    "UnsupportedOpError", "ShapeError", "DTypeError", "InputError", "ModelLoadError",
    "CompileError", "DeviceError", "__version__",
]
