"""Converters of ONNX ops that produce constants (shapes are static after import) and of
the two data ops with constant parameters, OneHot and Trilu."""

from __future__ import annotations

import numpy as np
import onnx

from ember.errors import ShapeError, UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import DType, Value

__all__: list[str] = []


def _scalar(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.size != 1:
        raise ShapeError(f"{what} must hold one value, got shape {array.shape}")
    return array.reshape(())


@onnx_op("Constant")
def _constant(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    for a in node.attribute:
        if a.name == "sparse_value":
            raise UnsupportedOpError(f"{ctx.where}: sparse_value constants are not supported")
        if a.name in ("value_string", "value_strings"):
            raise UnsupportedOpError(f"{ctx.where}: string constants are not supported")
    kinds = {
        "value": None,
        "value_float": np.float32,
        "value_floats": np.float32,
        "value_int": np.int64,
        "value_ints": np.int64,
    }
    for name, dtype in kinds.items():
        value = ctx.attr(node, name)
        if value is not None:
            array = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
            return [ctx.constant(array, name=node.output[0])]
    raise UnsupportedOpError(f"{ctx.where}: Constant has no value attribute")


@onnx_op("Shape")
def _shape(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    shape = ctx.type_of(ctx.input(node, 0)).shape
    start = int(ctx.attr(node, "start", 0))
    end = ctx.attr(node, "end")
    dims = shape[start:] if end is None else shape[start:int(end)]  # Python clamps as ONNX
    return [ctx.constant(np.asarray(dims, dtype=np.int64), name=node.output[0])]


@onnx_op("Size")
def _size(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    size = ctx.type_of(ctx.input(node, 0)).size
    return [ctx.constant(np.asarray(size, dtype=np.int64), name=node.output[0])]


@onnx_op("ConstantOfShape")
def _constant_of_shape(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    shape = [int(d) for d in np.asarray(ctx.const_input(node, 0, "shape")).reshape(-1)]
    if any(d < 0 for d in shape):
        raise ShapeError(f"ConstantOfShape shape {shape} has a negative dim")
    value = ctx.attr(node, "value")
    value = np.zeros((1,), np.float32) if value is None else np.asarray(value)
    fill = value.reshape(-1)[0] if value.size else value.dtype.type(0)
    return [ctx.constant(np.full(shape, fill, dtype=value.dtype), name=node.output[0])]


@onnx_op("Range")
def _range(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    start = _scalar(ctx.const_input(node, 0, "start"), "Range start")
    limit = _scalar(ctx.const_input(node, 1, "limit"), "Range limit")
    delta = _scalar(ctx.const_input(node, 2, "delta"), "Range delta")
    if delta.item() == 0:
        raise ShapeError("Range delta is 0")
    # Computed in Python scalars (float64 / int) and cast, as ONNX's definition does.
    values = np.arange(start.item(), limit.item(), delta.item()).astype(start.dtype)
    return [ctx.constant(values, name=node.output[0])]


@onnx_op("EyeLike")
def _eyelike(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    t = ctx.type_of(ctx.input(node, 0))
    if t.rank != 2:
        raise ShapeError(f"EyeLike expects a 2-D input, got shape {t.shape}")
    code = ctx.attr(node, "dtype")
    dtype = t.dtype if code is None else DType.from_onnx(int(code))
    eye = np.eye(t.shape[0], t.shape[1], k=int(ctx.attr(node, "k", 0)), dtype=dtype.np_dtype)
    return [ctx.constant(eye, name=node.output[0])]


@onnx_op("OneHot")
def _onehot(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    depth = _scalar(ctx.const_input(node, 1, "depth"), "OneHot depth")
    values = np.asarray(ctx.const_input(node, 2, "values")).reshape(-1)
    attrs = {"axis": int(ctx.attr(node, "axis", -1)), "depth": int(depth.item()),
             "values": values}
    return [ctx.add("OneHot", [ctx.input(node, 0)], attrs)]


@onnx_op("Trilu")
def _trilu(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    k = ctx.const_input(node, 1, "k")
    attrs = {"upper": int(ctx.attr(node, "upper", 1)),
             "k": 0 if k is None else int(_scalar(k, "Trilu k").item())}
    return [ctx.add("Trilu", [ctx.input(node, 0)], attrs)]
