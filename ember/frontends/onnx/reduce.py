"""Converters of ONNX's reductions, ArgMax/ArgMin, CumSum/CumProd and TopK.

Compile-time parameters become attributes: reduce axes come from the `axes` attribute (older
opsets: before 13 for ReduceSum, before 18 for the others) or from the constant input 1 (newer
ones); CumSum's axis and TopK's k from constant inputs. ONNX's "no axes" means every axis,
unless `noop_with_empty_axes` is set, when it means none; the IR always names its axes.
"""

from __future__ import annotations

import numpy as np
import onnx

from ember.errors import ShapeError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import DType, Value
from ember.ir.ops.common import normalize_axes, normalize_axis
from ember.ir.ops.reduce import REDUCE_KINDS

__all__: list[str] = []


def _scalar_int(ctx: ImportContext, array: np.ndarray, what: str) -> int:
    flat = np.asarray(array).reshape(-1)
    if flat.size != 1:
        raise ShapeError(f"{ctx.where}: {what} must hold one integer, got shape "
                         f"{np.asarray(array).shape}")
    return int(flat[0])


def _reduce_axes(ctx: ImportContext, node: onnx.NodeProto, rank: int) -> tuple[int, ...]:
    """The sorted, normalized axes a Reduce* node names (all of them when none are given)."""
    axes_attr = ctx.attr(node, "axes")
    if axes_attr is not None:
        axes = [int(a) for a in axes_attr]
    else:
        given = ctx.const_input(node, 1, "axes")
        axes = [] if given is None else [int(a) for a in np.asarray(given).reshape(-1)]
    if not axes and not ctx.attr(node, "noop_with_empty_axes", 0):
        axes = list(range(rank))
    return tuple(sorted(normalize_axes(axes, rank, what=f"{ctx.where} axes")))


@onnx_op(*REDUCE_KINDS)
def _reduce(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    axes = _reduce_axes(ctx, node, ctx.type_of(x).rank)
    keepdims = 1 if ctx.attr(node, "keepdims", 1) else 0
    return [ctx.add(node.op_type, [x], {"axes": axes, "keepdims": keepdims})]


@onnx_op("ReduceLogSumExp")
def _reduce_log_sum_exp(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """log(sum(exp(x - m))) + m with m the max over the axes (0 where it is infinite, so
    that all -inf gives -inf and +inf gives +inf, not NaN): no overflow for large x."""
    x = ctx.input(node, 0)
    x_type = ctx.type_of(x)
    axes = _reduce_axes(ctx, node, x_type.rank)
    keepdims = 1 if ctx.attr(node, "keepdims", 1) else 0
    work = x if x_type.dtype.is_float else ctx.add("Cast", [x], {"to": DType.FLOAT64})
    dtype = ctx.type_of(work).dtype
    peak = ctx.add("ReduceMax", [work], {"axes": axes, "keepdims": 1})
    zero = ctx.constant(np.zeros((), dtype.np_dtype))
    peak = ctx.add("Where", [ctx.add("IsInf", [peak]), zero, peak])
    shifted = ctx.add("Exp", [ctx.add("Sub", [work, peak])])
    total = ctx.add("ReduceSum", [shifted], {"axes": axes, "keepdims": keepdims})
    if not keepdims:
        peak = ctx.add("Reshape", [peak], {"shape": ctx.type_of(total).shape})
    result = ctx.add("Add", [ctx.add("Log", [total]), peak])
    if not x_type.dtype.is_float:
        result = ctx.add("Cast", [result], {"to": x_type.dtype})
    return [result]


@onnx_op("ArgMax", "ArgMin")
def _arg(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    axis = normalize_axis(int(ctx.attr(node, "axis", 0)), ctx.type_of(x).rank,
                          what=f"{ctx.where} axis")
    attrs = {
        "axis": axis,
        "keepdims": 1 if ctx.attr(node, "keepdims", 1) else 0,
        "select_last_index": 1 if ctx.attr(node, "select_last_index", 0) else 0,
    }
    return [ctx.add(node.op_type, [x], attrs)]


@onnx_op("CumSum", "CumProd")
def _cumulative(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    axis = _scalar_int(ctx, ctx.const_input(node, 1, "axis"), "axis")
    axis = normalize_axis(axis, ctx.type_of(x).rank, what=f"{ctx.where} axis")
    attrs = {
        "axis": axis,
        "exclusive": 1 if ctx.attr(node, "exclusive", 0) else 0,
        "reverse": 1 if ctx.attr(node, "reverse", 0) else 0,
    }
    return [ctx.add(node.op_type, [x], attrs)]


@onnx_op("TopK")
def _topk(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    k_attr = ctx.attr(node, "k")  # opset 1 (the loader lifts models to 13, but be exact)
    if k_attr is not None and len(node.input) < 2:
        k = int(k_attr)
    else:
        k = _scalar_int(ctx, ctx.const_input(node, 1, "k"), "k")
    axis = normalize_axis(int(ctx.attr(node, "axis", -1)), ctx.type_of(x).rank,
                          what=f"{ctx.where} axis")
    attrs = {
        "k": k,
        "axis": axis,
        "largest": 1 if ctx.attr(node, "largest", 1) else 0,
        "sorted": 1 if ctx.attr(node, "sorted", 1) else 0,
    }
    values, indices = ctx.add_multi("TopK", [x], attrs)
    return [values, indices]
