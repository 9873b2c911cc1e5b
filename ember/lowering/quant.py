"""Turn quantized products back into integer kernels.

A QDQ model (onnxruntime's quantizer, ember's own `quantize`) says "int8" by putting
DequantizeLinear in front of a float MatMul or Conv. Run as written, the device would widen
every weight to float32 and lose the 4x. This pass rewrites

    MatMul(DequantizeLinear(a, sa, za), DequantizeLinear(b, sb, zb))
        -> Mul(Cast(MatMulInteger(a, b, za, zb), float32), sa * sb)
    Conv(DequantizeLinear(x, sx, zx), DequantizeLinear(w, sw, zw), bias?)
        -> Add(Mul(Cast(ConvInteger(x, w, zx, zw), float32), sx * sw), bias)
    QuantizeLinear(MaxPool(DequantizeLinear(q, s, z)), s, z)  (one positive scale)
        -> MaxPool(q)

which is exact where it matters: the sum of integer products is computed in int32 without
rounding, and the one float rounding left is that of the scale. Epilogue fusion then folds the
Cast, the Mul, the bias, the activation and the next QuantizeLinear into the integer kernel's
store, so a quantized chain stays in 8 bits between kernels.

The scales must factor out of the sum: one scale for the activation (per tensor), one per
output column or channel for the weight. Anything else (a per-row weight scale, a scale that
varies along K) stays as written: DequantizeLinear and a float product. The rewrite happens
only where the target has a kernel for the integer op (the numpy executor's float BLAS is
faster than its integer matmul).

The weight-only rewrites (BlockQuantMatMul, gathers of 8-bit tables) are in weight_only.py;
this pass runs them too.
"""

from __future__ import annotations

import numpy as np

from ember.ir import DType, Graph, Value
from ember.lowering.dequantized import (
    added_if_supported, dequantized, is_scalar, replace_node, reshaped, varies_along,
)
from ember.lowering.passes import PassContext, PassResult
from ember.lowering.rules import remove_dead
from ember.lowering.weight_only import (
    fold_widened_constants, read_widened_weights, rewrite_block_matmul, rewrite_int8_gather,
    rewrite_int8_weight_matmul,
)

__all__ = ["FuseQuantizedProducts"]


class FuseQuantizedProducts:
    name = "FuseQuantizedProducts"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.supports is None:
            folded = fold_widened_constants(graph)
            return PassResult(folded > 0, {"refolded": folded})
        counts = {"matmul": 0, "conv": 0, "block": 0, "int8_weight": 0, "int8_gather": 0,
                  "maxpool": 0}
        widened = read_widened_weights(graph)
        for node in graph.topological_order():
            if node not in graph.nx:
                continue
            op = graph.op(node)
            if op == "MatMul" and _rewrite_matmul(graph, ctx, node):
                counts["matmul"] += 1
            elif op == "MatMul" and rewrite_block_matmul(graph, ctx, node):
                counts["block"] += 1
            elif op == "MatMul" and rewrite_int8_weight_matmul(graph, ctx, node):
                counts["int8_weight"] += 1
            elif op == "Conv" and _rewrite_conv(graph, ctx, node):
                counts["conv"] += 1
            elif op == "MaxPool" and _rewrite_maxpool(graph, ctx, node):
                counts["maxpool"] += 1
            elif op in ("Gather", "GatherND") and rewrite_int8_gather(graph, ctx, node):
                counts["int8_gather"] += 1
        counts["refolded"] = fold_widened_constants(graph, widened)
        return PassResult(sum(counts.values()) > 0, counts)


# -- scales ---------------------------------------------------------------------------------
def _scale_product(graph: Graph, a_scale: Value, b_scale: Value,
                   shape: tuple[int, ...]) -> Value:
    """a_scale * b_scale in `shape`, folded in float32 when both are constants."""
    a, b = graph.constant_value(a_scale), graph.constant_value(b_scale)
    if a is not None and b is not None:
        product = np.float32(a.reshape(())) * b.astype(np.float32).reshape(shape)
        return graph.add_constant(np.asarray(product, dtype=np.float32))
    return graph.add("Mul", reshaped(graph, a_scale, ()), reshaped(graph, b_scale, shape))


def _transposed(graph: Graph, value: Value) -> Value:
    """`value` with its last two axes swapped: a transposed constant (MatMulInteger takes
    no transposes), else a Transpose node."""
    constant = graph.constant_value(value)
    if constant is not None:
        return graph.add_constant(np.ascontiguousarray(np.swapaxes(constant, -1, -2)))
    rank = graph.type_of(value).rank
    return graph.add("Transpose", value, perm=(*range(rank - 2), rank - 1, rank - 2))


# -- MatMul -----------------------------------------------------------------------------------
def _rewrite_matmul(graph: Graph, ctx: PassContext, node: int) -> bool:
    attrs = graph.attrs(node)
    if attrs["epilogue"] is not None or attrs["trans_a"]:
        return False
    a_value, b_value = graph.inputs_of(node)
    a_dq, b_dq = dequantized(graph, a_value), dequantized(graph, b_value)
    if a_dq is None or b_dq is None:
        return False
    (a, a_scale, a_zero), (b, b_scale, b_zero) = a_dq, b_dq
    a_rank, b_rank = graph.type_of(a).rank, graph.type_of(b).rank
    if a_rank < 2 or b_rank < 2:
        return False
    if not (is_scalar(graph, a_scale) and is_scalar(graph, a_zero)):
        return False
    # Gemm(transB=1) imports as MatMul(trans_b): its weight's columns are axis -2.
    n_axis = b_rank - 2 if attrs["trans_b"] else b_rank - 1
    n = graph.type_of(b).shape[n_axis]
    scale_n = varies_along(graph, b_scale, n_axis, b_rank)
    zero_n = varies_along(graph, b_zero, n_axis, b_rank)
    if scale_n not in (1, n) or zero_n not in (1, n):
        return False
    if attrs["trans_b"]:
        b = _transposed(graph, b)
    name = graph.node_name(node)
    product = added_if_supported(graph, ctx, "MatMulInteger",
                   [a, b, reshaped(graph, a_zero, ()),
                    reshaped(graph, b_zero, () if zero_n == 1 else (n,))],
                   {}, name)
    if product is None:
        return False
    as_float = graph.add("Cast", product, to=DType.FLOAT32, name=f"{name}/dequantize")
    scale = _scale_product(graph, a_scale, b_scale, () if scale_n == 1 else (n,))
    replace_node(graph, node, graph.add("Mul", as_float, scale, name=f"{name}/scale"))
    return True


# -- Conv -------------------------------------------------------------------------------------
def _rewrite_conv(graph: Graph, ctx: PassContext, node: int) -> bool:
    attrs = graph.attrs(node)
    if attrs["epilogue"] is not None:
        return False
    inputs = graph.inputs_of(node)
    x_dq, w_dq = dequantized(graph, inputs[0]), dequantized(graph, inputs[1])
    if x_dq is None or w_dq is None:
        return False
    (x, x_scale, x_zero), (w, w_scale, w_zero) = x_dq, w_dq
    if not (is_scalar(graph, x_scale) and is_scalar(graph, x_zero)):
        return False
    w_type = graph.type_of(w)
    cout, rank = w_type.shape[0], w_type.rank
    scale_c = varies_along(graph, w_scale, 0, rank)
    zero_c = varies_along(graph, w_zero, 0, rank)
    if scale_c not in (1, cout) or zero_c not in (1, cout):
        return False
    name = graph.node_name(node)
    conv_attrs = {key: attrs[key] for key in ("strides", "dilations", "pads", "group")}
    product = added_if_supported(graph, ctx, "ConvInteger",
                   [x, w, reshaped(graph, x_zero, ()),
                    reshaped(graph, w_zero, () if zero_c == 1 else (cout,))],
                   conv_attrs, name)
    if product is None:
        return False
    out_rank = graph.type_of(product).rank
    channel_shape = (1, cout) + (1,) * (out_rank - 2)
    as_float = graph.add("Cast", product, to=DType.FLOAT32, name=f"{name}/dequantize")
    scale = _scale_product(graph, x_scale, w_scale,
                           () if scale_c == 1 else channel_shape)
    y = graph.add("Mul", as_float, scale, name=f"{name}/scale")
    if len(inputs) > 2:
        y = graph.add("Add", y, reshaped(graph, inputs[2], channel_shape), name=f"{name}/bias")
    replace_node(graph, node, y)
    return True


# -- MaxPool ----------------------------------------------------------------------------------
def _rewrite_maxpool(graph: Graph, ctx: PassContext, node: int) -> bool:
    """QuantizeLinear(MaxPool(DequantizeLinear(q, s, z)), s, z) -> MaxPool(q), per tensor.
    Exact: for s > 0 dequantizing is increasing, so the max commutes with it (a window with
    no real element gives -inf, which saturates to the type's minimum, the integer pool's
    identity), and quantizing (q - z) * s back with the same s and z gives q: |q - z| <= 255
    and both roundings are relative 2^-24 while s, 255 * s stay normal floats. The float
    MaxPool stays for any other user."""
    if len(graph.output_types(node)) != 1:  # the indices output: not on integers
        return False
    dq = dequantized(graph, graph.inputs_of(node)[0])
    if dq is None:
        return False
    q, scale, zero = dq
    if not (is_scalar(graph, scale) and is_scalar(graph, zero)) \
            or not _positive_normal(graph.constant_value(scale)):
        return False
    result = Value(node, 0)
    pooled: Value | None = None
    for use in graph.users_of(result):
        user = use.node
        if graph.op(user) != "QuantizeLinear" or use.port != 0:
            continue
        _, q_scale, q_zero = graph.inputs_of(user)
        if graph.dtype_of(q_zero) is not graph.dtype_of(q) \
                or graph.type_of(Value(user, 0)).shape != graph.type_of(result).shape \
                or not (_same_scalar(graph, q_scale, scale)
                        and _same_scalar(graph, q_zero, zero)):
            continue
        if pooled is None:
            pooled = added_if_supported(graph, ctx, "MaxPool", [q], dict(graph.attrs(node)),
                          graph.node_name(node))
            if pooled is None:
                return False
        graph.replace_all_uses(Value(user, 0), pooled)
        graph.remove_node(user)
    if pooled is None:
        return False
    remove_dead(graph, node)
    return True


def _positive_normal(scale: np.ndarray | None) -> bool:
    """A constant scale s with s and 255 * s positive normal float32 numbers."""
    if scale is None:
        return False
    s = np.float32(scale.reshape(()))
    return bool(np.finfo(np.float32).tiny <= s and np.isfinite(np.float32(255) * s))


def _same_scalar(graph: Graph, a: Value, b: Value) -> bool:
    """The same value, or constants of one dtype and equal value."""
    if a == b:
        return True
    x, y = graph.constant_value(a), graph.constant_value(b)
    return x is not None and y is not None and x.dtype == y.dtype \
        and x.size == y.size == 1 and x.reshape(()) == y.reshape(())
