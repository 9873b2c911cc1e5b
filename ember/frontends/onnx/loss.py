"""Converters of ONNX's losses.

SoftmaxCrossEntropyLoss is LogSoftmax over the class axis (a device kernel) followed by
NegativeLogLikelihoodLoss, whose input the log-probabilities are; its optional second
output is that LogSoftmax.
"""

from __future__ import annotations

import onnx

from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import Value

__all__: list[str] = []


def _loss_attrs(ctx: ImportContext, node: onnx.NodeProto) -> dict:
    ignore = ctx.attr(node, "ignore_index")
    return {"reduction": ctx.attr(node, "reduction", "mean"),
            "ignore_index": None if ignore is None else int(ignore)}


def _present(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    return [v for v in ctx.inputs(node)[:3] if v is not None]


@onnx_op("NegativeLogLikelihoodLoss")
def _nll(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    return [ctx.add("NegativeLogLikelihoodLoss", _present(ctx, node), _loss_attrs(ctx, node))]


@onnx_op("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    scores, *rest = _present(ctx, node)
    log_prob = ctx.add("LogSoftmax", [scores], {"axis": 1, "flatten": 0})
    loss = ctx.add("NegativeLogLikelihoodLoss", [log_prob, *rest], _loss_attrs(ctx, node))
    return [loss, log_prob]
