"""Element types of ember tensors.

`DType` is an enum whose values carry everything later stages ask of a type: numpy dtype,
OpenCL C name, size, the ONNX TensorProto code. The exotic ONNX types (bfloat16, float8,
packed 4-bit and 2-bit ints) come from ml_dtypes, which onnx already depends on; they have no
OpenCL name and so always run on the host. ml_dtypes is imported at the first use of one of
them: loading its extension takes about half a second, which a process that runs a stored
model (`ember.load`) should not pay for types it never meets.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import numpy as np

from ember.errors import DTypeError

__all__ = ["DType", "DTypeInfo"]


_ML = "ml_dtypes."  # a numpy type that ml_dtypes defines


@dataclass(frozen=True)
class DTypeInfo:
    name: str
    numpy_name: str  # a numpy dtype's name, or "ml_dtypes.<type>"
    onnx_code: int  # onnx.TensorProto.DataType value
    cl_name: str | None  # None: no OpenCL type, host only
    is_float: bool
    is_signed: bool
    bits: int

    @property
    def np_dtype(self) -> np.dtype:
        return _numpy_dtype(self.numpy_name)


@functools.cache
def _numpy_dtype(name: str) -> np.dtype:
    if name.startswith(_ML):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name[len(_ML):]))
    return np.dtype(name)


def _info(name, np_dtype, onnx_code, cl_name, is_float, is_signed, bits) -> DTypeInfo:
    numpy_name = np_dtype if isinstance(np_dtype, str) else np.dtype(np_dtype).name
    return DTypeInfo(name, numpy_name, onnx_code, cl_name, is_float, is_signed, bits)


class DType(enum.Enum):
    """A tensor element type. Compare members, never strings."""

    FLOAT32 = _info("float32", np.float32, 1, "float", True, True, 32)
    UINT8 = _info("uint8", np.uint8, 2, "uchar", False, False, 8)
    INT8 = _info("int8", np.int8, 3, "char", False, True, 8)
    UINT16 = _info("uint16", np.uint16, 4, "ushort", False, False, 16)
    INT16 = _info("int16", np.int16, 5, "short", False, True, 16)
    INT32 = _info("int32", np.int32, 6, "int", False, True, 32)
    INT64 = _info("int64", np.int64, 7, "long", False, True, 64)
    STRING = _info("string", np.object_, 8, None, False, False, 0)
    BOOL = _info("bool", np.bool_, 9, "uchar", False, False, 8)
    FLOAT16 = _info("float16", np.float16, 10, "half", True, True, 16)
    FLOAT64 = _info("float64", np.float64, 11, "double", True, True, 64)
    UINT32 = _info("uint32", np.uint32, 12, "uint", False, False, 32)
    UINT64 = _info("uint64", np.uint64, 13, "ulong", False, False, 64)
    BFLOAT16 = _info("bfloat16", "ml_dtypes.bfloat16", 16, None, True, True, 16)
    FLOAT8E4M3FN = _info("float8e4m3fn", "ml_dtypes.float8_e4m3fn", 17, None, True, True, 8)
    FLOAT8E4M3FNUZ = _info("float8e4m3fnuz", "ml_dtypes.float8_e4m3fnuz", 18, None, True, True, 8)
    FLOAT8E5M2 = _info("float8e5m2", "ml_dtypes.float8_e5m2", 19, None, True, True, 8)
    FLOAT8E5M2FNUZ = _info("float8e5m2fnuz", "ml_dtypes.float8_e5m2fnuz", 20, None, True, True, 8)
    UINT4 = _info("uint4", "ml_dtypes.uint4", 21, None, False, False, 4)
    INT4 = _info("int4", "ml_dtypes.int4", 22, None, False, True, 4)
    FLOAT4E2M1 = _info("float4e2m1", "ml_dtypes.float4_e2m1fn", 23, None, True, True, 4)
    UINT2 = _info("uint2", "ml_dtypes.uint2", 25, None, False, False, 2)
    INT2 = _info("int2", "ml_dtypes.int2", 26, None, False, True, 2)

    # -- properties ---------------------------------------------------------------------
    @property
    def np_dtype(self) -> np.dtype:
        return self.value.np_dtype

    @property
    def cl_name(self) -> str | None:
        return self.value.cl_name

    @property
    def is_float(self) -> bool:
        return self.value.is_float

    @property
    def is_signed(self) -> bool:
        return self.value.is_signed

    @property
    def is_integer(self) -> bool:
        return not self.value.is_float and self not in (DType.BOOL, DType.STRING)

    @property
    def host_only(self) -> bool:
        """Values that must stay in host memory: a string tensor is an array of Python
        object pointers, whose bytes copied to a device and back would be references no
        object holds (a crash at the next garbage collection)."""
        return self.np_dtype.hasobject

    @property
    def itemsize(self) -> int:
        """Bytes per element in memory (packed 4-bit types still take a byte in numpy)."""
        return self.np_dtype.itemsize

    @property
    def onnx_code(self) -> int:
        return self.value.onnx_code

    def __repr__(self) -> str:
        return f"DType.{self.name}"

    def __str__(self) -> str:
        return self.value.name

    # -- conversions ----------------------------------------------------------------------
    @staticmethod
    def from_numpy(dtype: np.dtype | type) -> DType:
        dtype = np.dtype(dtype)
        if dtype.kind in "OUS":  # numpy keeps strings as objects or fixed-width text
            return DType.STRING
        found = _BY_NUMPY.get(dtype)
        if found is None and not _BY_NUMPY_ML:  # an ml_dtypes type: ml_dtypes is loaded
            _BY_NUMPY_ML.update((m.np_dtype, m) for m in DType
                                if m.value.numpy_name.startswith(_ML))
        found = found or _BY_NUMPY_ML.get(dtype)
        if found is None:
            raise DTypeError(f"numpy dtype {dtype} has no ember DType")
        return found

    @staticmethod
    def from_onnx(code: int) -> DType:
        found = _BY_ONNX.get(code)
        if found is None:
            raise DTypeError(f"ONNX element type {code} is not supported by ember")
        return found

    @staticmethod
    def from_name(name: str) -> DType:
        for member in DType:
            if member.value.name == name:
                return member
        raise DTypeError(f"unknown dtype name {name!r}")


_BY_NUMPY = {member.np_dtype: member for member in DType
             if member is not DType.STRING and not member.value.numpy_name.startswith(_ML)}
_BY_NUMPY_ML: dict[np.dtype, DType] = {}  # filled at the first ml_dtypes type asked for
_BY_NUMPY[np.dtype(np.bool_)] = DType.BOOL
_BY_ONNX = {member.onnx_code: member for member in DType}
