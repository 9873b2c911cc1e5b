"""Converters of small math ops: Hardmax, LpNormalization and MeanVarianceNormalization as
chains of ops that have device kernels, Det, and the window functions (whose length is an
input value: folded when it is a constant, data-dependent otherwise)."""

from __future__ import annotations

import numpy as np
import onnx

from ember.errors import UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import DType, Value
from ember.ir.ops.common import normalize_axes, normalize_axis
from ember.ir.ops.math_extra import WINDOWS

__all__: list[str] = []


@onnx_op("Hardmax")
def _hardmax(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """1 at the first maximum along `axis` (the first NaN, as ArgMax), 0 elsewhere."""
    x = ctx.input(node, 0)
    x_type = ctx.type_of(x)
    axis = normalize_axis(int(ctx.attr(node, "axis", -1)), x_type.rank,
                          what=f"{ctx.where} axis")
    if x_type.shape[axis] == 0:
        return [ctx.add("Identity", [x])]
    index = ctx.add("ArgMax", [x], {"axis": axis, "keepdims": 0, "select_last_index": 0})
    values = np.asarray([0, 1], dtype=x_type.dtype.np_dtype)
    return [ctx.add("OneHot", [index], {"axis": axis, "depth": x_type.shape[axis],
                                        "values": values})]


@onnx_op("LpNormalization")
def _lp_normalization(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """x / ||x||_p along `axis`; 0 where the norm is 0 (ONNX's reference)."""
    x = ctx.input(node, 0)
    x_type = ctx.type_of(x)
    p = int(ctx.attr(node, "p", 2))
    if p not in (1, 2):
        raise UnsupportedOpError(f"{ctx.where}: p={p}; LpNormalization defines p 1 and 2")
    axis = normalize_axis(int(ctx.attr(node, "axis", -1)), x_type.rank,
                          what=f"{ctx.where} axis")
    norm = ctx.add("ReduceL1" if p == 1 else "ReduceL2", [x], {"axes": (axis,), "keepdims": 1})
    zero = ctx.constant(np.zeros((), x_type.dtype.np_dtype))
    return [ctx.add("Where", [ctx.add("Equal", [norm, zero]), zero, ctx.add("Div", [x, norm])])]


@onnx_op("MeanVarianceNormalization")
def _mean_variance_normalization(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """(x - mean) / (std + 1e-9) over `axes` (ONNX's function; the variance as the mean of
    squared deviations, which cannot come out negative)."""
    x = ctx.input(node, 0)
    x_type = ctx.type_of(x)
    axes = normalize_axes([int(a) for a in ctx.attr(node, "axes", [0, 2, 3])], x_type.rank,
                          what=f"{ctx.where} axes")
    reduce = {"axes": tuple(sorted(axes)), "keepdims": 1}
    centred = ctx.add("Sub", [x, ctx.add("ReduceMean", [x], reduce)])
    variance = ctx.add("ReduceMean", [ctx.add("Mul", [centred, centred])], reduce)
    epsilon = ctx.constant(np.asarray(1e-9, x_type.dtype.np_dtype))
    return [ctx.add("Div", [centred, ctx.add("Add", [ctx.add("Sqrt", [variance]), epsilon])])]


@onnx_op("Det")
def _det(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    return [ctx.add("Det", [ctx.input(node, 0)])]


@onnx_op(*WINDOWS)
def _window(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    attrs = {"output_datatype": DType.from_onnx(ctx.attr(node, "output_datatype", 1)),
             "periodic": 1 if ctx.attr(node, "periodic", 1) else 0}
    return list(ctx.add_data_dependent(node.op_type, [ctx.input(node, 0)], attrs))
