"""Compile-time folding of per-channel affine ops into the linear op before them.

Inference BatchNormalization is y * s + t per channel (s = scale / sqrt(var + eps),
t = B - mean * s), and so is a Mul or Add by a per-channel constant. When the producer is a
Conv / ConvTranspose (or, for BatchNormalization, a 2-D MatMul) with constant weights, the
scale goes into the weights and the shift into the bias, removing a whole pass over the
activation at run time. New parameters are computed in float64 and cast to the weight dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ember.ir import Graph, Value
from ember.lowering.passes import PassContext, PassResult

__all__ = ["FoldBatchNorm", "FoldAffineIntoConv"]

CONV_OPS = frozenset({"Conv", "ConvTranspose"})
AFFINE_OPS = frozenset({"Mul", "Add"})


@dataclass(frozen=True)
class _Producer:
    """A linear op whose output channels can absorb a per-channel scale and shift."""

    node: int
    x: Value  # the activation input, kept as is
    weight: np.ndarray
    bias: np.ndarray | None
    channels: int


def _producer(graph: Graph, value: Value, ops: frozenset[str]) -> _Producer | None:
    """The op behind `value` if folding into it is legal: an op of `ops` whose weight (and
    bias) are constants and whose output only feeds the one consumer being folded."""
    node = value.node
    op = graph.op(node)
    if op not in ops or graph.is_output(value) or len(graph.users_of(value)) != 1:
        return None
    if graph.attrs(node).get("epilogue") is not None:
        return None  # its trailing inputs are the epilogue's, and the scale would hit them
    inputs = graph.inputs_of(node)
    weight = graph.constant_value(inputs[1])
    bias = graph.constant_value(inputs[2]) if len(inputs) > 2 else None
    if weight is None or (len(inputs) > 2 and bias is None):
        return None
    out = graph.type_of(value)
    if op == "MatMul":
        # BatchNormalization's channel axis 1 is MatMul's N axis only for a 2-D product.
        if out.rank != 2 or weight.ndim != 2 or graph.type_of(inputs[0]).rank != 2:
            return None
    return _Producer(node, inputs[0], weight, bias, out.shape[1])


def _scaled_weight(graph: Graph, p: _Producer, scale: np.ndarray) -> np.ndarray:
    """The weight with output channel m multiplied by scale[m], in float64."""
    w = p.weight.astype(np.float64)
    op = graph.op(p.node)
    if op == "Conv":  # (M, C/group, *k)
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    if op == "ConvTranspose":  # (C, M/group, *k): channel g * M/group + j is W[group g, :, j]
        group = graph.attrs(p.node)["group"]
        cin, cout_g = w.shape[0], w.shape[1]
        wg = w.reshape((group, cin // group, cout_g) + w.shape[2:])
        s = scale.reshape((group, 1, cout_g) + (1,) * (w.ndim - 2))
        return (wg * s).reshape(w.shape)
    # MatMul: B is (K, N), or (N, K) with trans_b
    return w * (scale[:, None] if graph.attrs(p.node)["trans_b"] else scale[None, :])


def _rewrite(graph: Graph, p: _Producer, consumer: int, scale: np.ndarray,
             shift: np.ndarray) -> bool:
    """Replace producer + consumer by the producer with folded parameters: the output is
    (producer(x) * scale + shift) per channel. False (graph untouched) if non-finite."""
    old_bias = np.zeros(p.channels) if p.bias is None else p.bias.astype(np.float64)
    weight64 = _scaled_weight(graph, p, scale)
    bias64 = old_bias * scale + shift
    if not (np.all(np.isfinite(weight64)) and np.all(np.isfinite(bias64))):
        return False
    dtype = p.weight.dtype
    weight = graph.add_constant(weight64.astype(dtype), name=f"{graph.node_name(p.node)}_w_folded")
    bias = graph.add_constant(bias64.astype(dtype), name=f"{graph.node_name(p.node)}_b_folded")
    op = graph.op(p.node)
    name = graph.node_name(p.node)
    if op == "MatMul":
        product = Value(graph.add_node("MatMul", (p.x, weight), graph.attrs(p.node), name=name))
        result = Value(graph.add_node("Add", (product, bias), name=f"{name}_bias"))
    else:
        result = Value(graph.add_node(op, (p.x, weight, bias), graph.attrs(p.node), name=name))
    old_inputs = graph.inputs_of(p.node) + graph.inputs_of(consumer)
    graph.replace_all_uses(Value(consumer, 0), result)
    graph.remove_node(consumer)
    graph.remove_node(p.node)
    _remove_orphan_constants(graph, old_inputs)
    return True


def _remove_orphan_constants(graph: Graph, values: list[Value]) -> None:
    """Drop the replaced parameters when nothing else reads them (shared ones stay)."""
    for value in dict.fromkeys(values):
        if value.node not in graph.nx or graph.op(value.node) != "Constant":
            continue
        if not graph.users_of(value) and not graph.is_output(value):
            graph.remove_node(value.node)


def _per_channel(const: np.ndarray, out_rank: int, channels: int) -> np.ndarray | None:
    """`const` as a (channels,) float64 vector if it broadcasts against (N, M, *spatial)
    along axis 1 only (scalar, (M,1,1), (1,M,1,1), ...); None otherwise."""
    if const.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - const.ndim) + const.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(const.astype(np.float64).reshape(-1), (channels,)).copy()


class FoldBatchNorm:
    """BatchNormalization after Conv / ConvTranspose / 2-D MatMul with constant weights and
    constant BN parameters becomes the producer alone with scaled weights and a bias."""

    name = "FoldBatchNorm"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded = 0
        for node in graph.topological_order():
            if node not in graph.nx or graph.op(node) != "BatchNormalization":
                continue
            x, *params = graph.inputs_of(node)
            arrays = [graph.constant_value(v) for v in params]
            if any(a is None for a in arrays):
                continue
            p = _producer(graph, x, CONV_OPS | {"MatMul"})
            if p is None:
                continue
            gamma, beta, mean, var = (a.astype(np.float64) for a in arrays)
            eps = float(graph.attrs(node)["epsilon"])
            scale = gamma / np.sqrt(var + eps)
            if _rewrite(graph, p, node, scale, beta - mean * scale):
                folded += 1
        return PassResult(folded > 0, {"folded": folded})


class FoldAffineIntoConv:
    """Mul / Add of a Conv / ConvTranspose output by a per-output-channel constant becomes
    the convolution alone with scaled weights (Mul) or a shifted bias (Add and Mul)."""

    name = "FoldAffineIntoConv"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats = {"Mul": 0, "Add": 0}
        for node in graph.topological_order():
            if node not in graph.nx or graph.op(node) not in AFFINE_OPS:
                continue
            op = graph.op(node)
            for conv_port in (0, 1):  # both ops commute: the constant may be either side
                inputs = graph.inputs_of(node)
                conv_out, other = inputs[conv_port], inputs[1 - conv_port]
                const = graph.constant_value(other)
                if const is None or graph.op(conv_out.node) not in CONV_OPS:
                    continue
                out = graph.type_of(conv_out)
                if graph.output_types(node)[0] != out:  # the constant must not broadcast x
                    continue
                p = _producer(graph, conv_out, CONV_OPS)
                vec = None if p is None else _per_channel(const, out.rank, p.channels)
                if p is None or vec is None:
                    continue
                scale, shift = (vec, np.zeros_like(vec)) if op == "Mul" else (
                    np.ones_like(vec), vec)
                if _rewrite(graph, p, node, scale, shift):
                    stats[op] += 1
                break
        return PassResult(sum(stats.values()) > 0, stats)
