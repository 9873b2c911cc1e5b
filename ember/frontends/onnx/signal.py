"""Converters of ONNX's signal ops: DFT (opset 17: axis attribute; opset 20: axis input),
STFT and MelWeightMatrix. Lengths, steps and axes must be compile-time constants; the
MelWeightMatrix, a function of constants only, becomes a constant."""

from __future__ import annotations

import numpy as np
import onnx

from ember.errors import ShapeError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import OPS, DType, Value

__all__: list[str] = []


def _scalar(ctx: ImportContext, node: onnx.NodeProto, index: int, what: str):
    array = ctx.const_input(node, index, what)
    if array is None:
        return None
    array = np.asarray(array)
    if array.size != 1:
        raise ShapeError(f"{ctx.where}: {what} must be a scalar, got shape {array.shape}")
    return array.reshape(()).item()


@onnx_op("DFT")
def _dft(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    length = _scalar(ctx, node, 1, "dft_length")
    if ctx.opset >= 20:
        axis = _scalar(ctx, node, 2, "axis")
        axis = -2 if axis is None else axis
    else:
        axis = ctx.attr(node, "axis", 1)
    attrs = {"axis": int(axis), "dft_length": int(length or 0),
             "inverse": int(ctx.attr(node, "inverse", 0)),
             "onesided": int(ctx.attr(node, "onesided", 0))}
    return [ctx.add("DFT", [ctx.input(node, 0)], attrs)]


@onnx_op("STFT")
def _stft(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    signal, window = ctx.input(node, 0), ctx.input(node, 2)
    step = _scalar(ctx, node, 1, "frame_step")
    length = _scalar(ctx, node, 3, "frame_length")
    if length is None:
        length = ctx.type_of(window).shape[0] if window is not None \
            else ctx.type_of(signal).shape[1]
    attrs = {"frame_step": int(step), "frame_length": int(length),
             "onesided": int(ctx.attr(node, "onesided", 1))}
    inputs = [signal] if window is None else [signal, window]
    return [ctx.add("STFT", inputs, attrs)]


@onnx_op("MelWeightMatrix")
def _mel_weight_matrix(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    names = ("num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz",
             "upper_edge_hertz")
    given = {name: _scalar(ctx, node, i, name) for i, name in enumerate(names)}
    attrs = {name: int(given[name]) for name in names[:3]}
    attrs.update({name: float(given[name]) for name in names[3:]})
    attrs["output_datatype"] = DType.from_onnx(int(ctx.attr(node, "output_datatype", 1)))
    opdef = OPS["MelWeightMatrix"]
    checked = opdef.make_attrs(attrs, node=ctx.where)
    opdef.infer_types([], checked, node=ctx.where)
    return [ctx.constant(opdef.evaluate([], checked)[0])]
