"""Errors raised by ember. Every error names what is wrong: the op, the node, the input,
the expected and the actual value."""

from __future__ import annotations

__all__ = [
    "EmberError",
    "UnsupportedOpError",
    "ShapeError",
    "DTypeError",
    "InputError",
    "ModelLoadError",
    "NonConstantInputError",
    "DataDependentError",
    "VerifyError",
    "PassError",
    "CompileError",
    "DeviceError",
    "ResourceError",
]


class EmberError(Exception):
    """Base class of every error ember raises on purpose."""


class UnsupportedOpError(EmberError):
    """An op (or an op variant, or an attribute value) that ember does not implement."""


class ShapeError(EmberError):
    """Shapes that do not fit together (inference, broadcasting, a wrong input shape)."""


class DTypeError(EmberError):
    """A dtype that an op or an input does not accept."""


class InputError(EmberError):
    """A call with wrong inputs: unknown or missing names, wrong count."""


class ModelLoadError(EmberError):
    """A model file or proto that cannot be read (malformed, truncated, missing data)."""


class NonConstantInputError(UnsupportedOpError):
    """An op needs the *value* of an input at compile time (a shape, axes, pads) but the
    input is a graph input. `names` lists those graph inputs so that a caller that knows
    their values (the ONNX backend) can compile again with them frozen."""

    def __init__(self, message: str, names: tuple[str, ...]):
        super().__init__(message)
        self.names = names


class DataDependentError(UnsupportedOpError):
    """A node's output shape depends on the *values* of inputs that are not known at
    compile time (NonZero, Unique, NonMaxSuppression, an If whose condition is computed).
    The importer stops there: what comes before is compiled, the node runs on the host
    once its inputs are computed, and what comes after is specialized on the shapes it
    produced (see "Data-dependent shapes" in docs/ARCHITECTURE.md)."""

    def __init__(self, message: str, node: str = ""):
        super().__init__(message)
        self.node = node


class VerifyError(EmberError):
    """The IR is inconsistent: a type, a port or an edge disagrees with the op's definition."""


class PassError(EmberError):
    """A lowering pass failed; the message names the pass and the passes run before it."""


class CompileError(EmberError):
    """An OpenCL program failed to build. Carries the build log and where the source is."""

    def __init__(self, message: str, build_log: str = "", source_path: str | None = None):
        super().__init__(message)
        self.build_log = build_log
        self.source_path = source_path

    def __str__(self) -> str:
        text = super().__str__()
        if self.source_path:
            text += f"\nsource: {self.source_path}"
        if self.build_log:
            text += f"\nbuild log:\n{self.build_log}"
        return text


class DeviceError(EmberError):
    """No such device, or the device failed while running."""


class ResourceError(DeviceError):
    """A tensor or buffer larger than the device (or, on the numpy target, the host) can
    hold: found before allocating where the sizes are known, or reported by the driver."""
