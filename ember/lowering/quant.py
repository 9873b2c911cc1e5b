"""Turn quantized products back into integer kernels.

A QDQ model (onnxruntime's quantizer, ember's own `quantize`) says "int8" by putting
DequantizeLinear in front of a float MatMul or Conv. Run as written, the device would widen
every weight to float32 and lose the 4x. This pass rewrites

    MatMul(DequantizeLinear(a, sa, za), DequantizeLinear(b, sb, zb))
        -> Mul(Cast(MatMulInteger(a, b, za, zb), float32), sa * sb)
    Conv(DequantizeLinear(x, sx, zx), DequantizeLinear(w, sw, zw), bias?)
        -> Add(Mul(Cast(ConvInteger(x, w, zx, zw), float32), sx * sw), bias)
    MatMul(a, BlockDequantize(w, s, z))  (w a constant int4/uint4/int8/uint8 matrix,
                                          blocked along K; transposed too)
        -> BlockQuantMatMul(a, packed w, s, z)

which is exact where it matters: the sum of integer products is computed in int32 without
rounding, and the one float rounding left is that of the scale. Epilogue fusion then folds the
Cast, the Mul, the bias, the activation and the next QuantizeLinear into the integer kernel's
store, so a quantized chain stays in 8 bits between kernels.

The scales must factor out of the sum: one scale for the activation (per tensor), one per
output column or channel for the weight. Anything else (a per-row weight scale, a scale that
varies along K) stays as written: DequantizeLinear and a float product. The rewrite happens
only where the target has a kernel for the integer op (the numpy executor's float BLAS is
faster than its integer matmul).
"""

from __future__ import annotations

import math

import numpy as np

from ember.ir import DType, Graph, Value
from ember.lowering.passes import PassContext, PassResult
from ember.lowering.rules import remove_dead

__all__ = ["FuseQuantizedProducts", "pack_block_weights"]

_INT8_TYPES = frozenset({DType.INT8, DType.UINT8})
_BLOCK_WEIGHT_BITS = {DType.INT4: 4, DType.UINT4: 4, DType.INT8: 8, DType.UINT8: 8}


class FuseQuantizedProducts:
    name = "FuseQuantizedProducts"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.supports is None:
            return PassResult(False)
        counts = {"matmul": 0, "conv": 0, "block": 0}
        for node in graph.topological_order():
            if node not in graph.nx:
                continue
            op = graph.op(node)
            if op == "MatMul" and _rewrite_matmul(graph, ctx, node):
                counts["matmul"] += 1
            elif op == "MatMul" and _rewrite_block_matmul(graph, ctx, node):
                counts["block"] += 1
            elif op == "Conv" and _rewrite_conv(graph, ctx, node):
                counts["conv"] += 1
        return PassResult(sum(counts.values()) > 0, counts)


# -- reading DequantizeLinear -----------------------------------------------------------------
def _dequantized(graph: Graph, value: Value, op: str = "DequantizeLinear"
                 ) -> tuple[Value, Value, Value] | None:
    """(q, scale, zero) when `value` is `op`(q, scale, zero) with an int8/uint8 q."""
    if graph.op(value.node) != op:
        return None
    q, scale, zero = graph.inputs_of(value.node)
    if op == "DequantizeLinear" and graph.dtype_of(q) not in _INT8_TYPES:
        return None
    if graph.dtype_of(scale) is not DType.FLOAT32:
        return None
    return q, scale, zero


def _is_scalar(graph: Graph, value: Value) -> bool:
    return math.prod(graph.type_of(value).shape) == 1


def _along(graph: Graph, value: Value, axis: int, rank: int) -> int | None:
    """The length of `value` if it varies along `axis` of a rank-`rank` tensor only (1 for
    a scalar); None when it varies along another axis."""
    shape = graph.type_of(value).shape
    if math.prod(shape) == 1:
        return 1
    if len(shape) > rank:
        return None
    padded = (1,) * (rank - len(shape)) + tuple(shape)
    if any(d != 1 for i, d in enumerate(padded) if i != axis):
        return None
    return padded[axis]


def _flat(graph: Graph, value: Value, shape: tuple[int, ...]) -> Value:
    """`value` in another shape (same elements): a constant, or a Reshape view."""
    constant = graph.constant_value(value)
    if constant is not None:
        return graph.add_constant(np.reshape(constant, shape))
    if graph.type_of(value).shape == shape:
        return value
    return graph.add("Reshape", value, shape=shape)


def _scale_product(graph: Graph, a_scale: Value, b_scale: Value,
                   shape: tuple[int, ...]) -> Value:
    """a_scale * b_scale in `shape`, folded in float32 when both are constants."""
    a, b = graph.constant_value(a_scale), graph.constant_value(b_scale)
    if a is not None and b is not None:
        product = np.float32(a.reshape(())) * b.astype(np.float32).reshape(shape)
        return graph.add_constant(np.asarray(product, dtype=np.float32))
    return graph.add("Mul", _flat(graph, a_scale, ()), _flat(graph, b_scale, shape))


def _transposed(graph: Graph, value: Value) -> Value:
    """`value` with its last two axes swapped: a transposed constant (MatMulInteger takes
    no transposes), else a Transpose node."""
    constant = graph.constant_value(value)
    if constant is not None:
        return graph.add_constant(np.ascontiguousarray(np.swapaxes(constant, -1, -2)))
    rank = graph.type_of(value).rank
    return graph.add("Transpose", value, perm=(*range(rank - 2), rank - 1, rank - 2))


def _try(graph: Graph, ctx: PassContext, op: str, inputs: list[Value], attrs: dict,
         name: str) -> Value | None:
    node = graph.add_node(op, inputs, attrs, name=name)
    if ctx.supports(graph, node):
        return Value(node, 0)
    graph.remove_node(node)
    return None


def _replace(graph: Graph, old: int, new: Value) -> None:
    graph.replace_all_uses(Value(old, 0), new)
    remove_dead(graph, old)


# -- MatMul -----------------------------------------------------------------------------------
def _rewrite_matmul(graph: Graph, ctx: PassContext, node: int) -> bool:
    attrs = graph.attrs(node)
    if attrs["epilogue"] is not None or attrs["trans_a"]:
        return False
    a_value, b_value = graph.inputs_of(node)
    a_dq, b_dq = _dequantized(graph, a_value), _dequantized(graph, b_value)
    if a_dq is None or b_dq is None:
        return False
    (a, a_scale, a_zero), (b, b_scale, b_zero) = a_dq, b_dq
    a_rank, b_rank = graph.type_of(a).rank, graph.type_of(b).rank
    if a_rank < 2 or b_rank < 2:
        return False
    if not (_is_scalar(graph, a_scale) and _is_scalar(graph, a_zero)):
        return False
    # Gemm(transB=1) imports as MatMul(trans_b): its weight's columns are axis -2.
    n_axis = b_rank - 2 if attrs["trans_b"] else b_rank - 1
    n = graph.type_of(b).shape[n_axis]
    scale_n = _along(graph, b_scale, n_axis, b_rank)
    zero_n = _along(graph, b_zero, n_axis, b_rank)
    if scale_n not in (1, n) or zero_n not in (1, n):
        return False
    if attrs["trans_b"]:
        b = _transposed(graph, b)
    name = graph.node_name(node)
    product = _try(graph, ctx, "MatMulInteger",
                   [a, b, _flat(graph, a_zero, ()),
                    _flat(graph, b_zero, () if zero_n == 1 else (n,))],
                   {}, name)
    if product is None:
        return False
    as_float = graph.add("Cast", product, to=DType.FLOAT32, name=f"{name}/dequantize")
    scale = _scale_product(graph, a_scale, b_scale, () if scale_n == 1 else (n,))
    _replace(graph, node, graph.add("Mul", as_float, scale, name=f"{name}/scale"))
    return True


# -- Conv -------------------------------------------------------------------------------------
def _rewrite_conv(graph: Graph, ctx: PassContext, node: int) -> bool:
    attrs = graph.attrs(node)
    if attrs["epilogue"] is not None:
        return False
    inputs = graph.inputs_of(node)
    x_dq, w_dq = _dequantized(graph, inputs[0]), _dequantized(graph, inputs[1])
    if x_dq is None or w_dq is None:
        return False
    (x, x_scale, x_zero), (w, w_scale, w_zero) = x_dq, w_dq
    if not (_is_scalar(graph, x_scale) and _is_scalar(graph, x_zero)):
        return False
    w_type = graph.type_of(w)
    cout, rank = w_type.shape[0], w_type.rank
    scale_c = _along(graph, w_scale, 0, rank)
    zero_c = _along(graph, w_zero, 0, rank)
    if scale_c not in (1, cout) or zero_c not in (1, cout):
        return False
    name = graph.node_name(node)
    conv_attrs = {key: attrs[key] for key in ("strides", "dilations", "pads", "group")}
    product = _try(graph, ctx, "ConvInteger",
                   [x, w, _flat(graph, x_zero, ()),
                    _flat(graph, w_zero, () if zero_c == 1 else (cout,))],
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
        y = graph.add("Add", y, _flat(graph, inputs[2], channel_shape), name=f"{name}/bias")
    _replace(graph, node, y)
    return True


# -- weight-only blocks -----------------------------------------------------------------------
def pack_block_weights(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int,
                       block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (K, N) integer weight with (ceil(K/bs), N) scales and zeros, blocked along K, in
    BlockQuantMatMul's layout: unsigned values (signed ones shifted by 2^(bits-1), zeros
    too, so q - zero is unchanged), (N, blocks, bs * bits / 8) bytes, low nibble first;
    scales and zeros (N, blocks)."""
    k, n = q.shape
    blocks = -(-k // block_size)
    shift = (1 << (bits - 1)) if np.issubdtype(q.dtype, np.signedinteger) or \
        str(q.dtype) == "int4" else 0
    unsigned = q.astype(np.int32) + shift
    zeros = zero.astype(np.int32) + shift
    padded = np.zeros((blocks * block_size, n), dtype=np.uint8)
    padded[:k] = unsigned.astype(np.uint8)
    per_column = padded.T.reshape(n, blocks, block_size)
    if bits == 4:
        packed = (per_column[..., 0::2] | (per_column[..., 1::2] << 4)).astype(np.uint8)
    else:
        packed = per_column
    return (np.ascontiguousarray(packed),
            np.ascontiguousarray(scale.astype(np.float32).T),
            np.ascontiguousarray(zeros.astype(np.uint8).T))


def _rewrite_block_matmul(graph: Graph, ctx: PassContext, node: int) -> bool:
    """MatMul(a, BlockDequantize(w)) with w (K, N) blocked along K, or with trans_b (Gemm's
    transB: w is (N, K), already BlockQuantMatMul's layout) blocked along its axis 1."""
    attrs = graph.attrs(node)
    if attrs["epilogue"] is not None or attrs["trans_a"]:
        return False
    k_axis = 1 if attrs["trans_b"] else 0
    a_value, b_value = graph.inputs_of(node)
    if graph.dtype_of(a_value) is not DType.FLOAT32 or graph.type_of(a_value).rank < 1:
        return False
    dq = _dequantized(graph, b_value, "BlockDequantize")
    if dq is None:
        return False
    w, scale, zero = dq
    block_attrs = graph.attrs(b_value.node)
    arrays = [graph.constant_value(v) for v in (w, scale, zero)]
    bits = _BLOCK_WEIGHT_BITS.get(graph.dtype_of(w))
    block_size = block_attrs["block_size"]
    if any(x is None for x in arrays) or bits is None or graph.type_of(w).rank != 2 \
            or block_attrs["axis"] != k_axis or block_size < 16 \
            or block_size & (block_size - 1):
        return False
    if k_axis == 1:
        arrays = [a.T for a in arrays]
    k, n = arrays[0].shape
    packed, scales, zeros = pack_block_weights(*arrays, bits=bits, block_size=block_size)
    result = _try(graph, ctx, "BlockQuantMatMul",
                  [a_value, graph.add_constant(packed), graph.add_constant(scales),
                   graph.add_constant(zeros)],
                  {"bits": bits, "block_size": block_size, "k": k, "n": n},
                  graph.node_name(node))
    if result is None:
        return False
    _replace(graph, node, result)
    return True
