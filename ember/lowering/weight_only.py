"""Weight-only quantized products: the weights stay 8 or 4 bits on the device.

    MatMul(a, BlockDequantize(w, s, z))  (w a constant int4/uint4/int8/uint8 matrix,
                                          blocked along K; transposed too)
        -> BlockQuantMatMul(a, packed w, s, z)
    MatMul(a, DequantizeLinear(w, s, z))  (w a constant int8/uint8 matrix, per-column or
                                          per-tensor scale: a weight-only model)
        -> BlockQuantMatMul(a, packed w, s, z, bits=8)
    Gather(DequantizeLinear(table, s, z), ids)  (GatherND too)
        -> DequantizeLinear(Gather(table, ids), s of those rows, z of those rows)

Weight-only int8 exports spell DequantizeLinear out, Cast(w int8) -> (Sub zero) -> Mul
scale, and the Cast of a large integer constant is not folded: `read_widened_weights` reads
that chain as the DequantizeLinear it is, and `fold_widened_constants` folds back to a float
constant whatever no kernel consumed. FuseQuantizedProducts (quant.py) runs these rewrites.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

from ember.ir import OPS, DType, Graph, Value
from ember.lowering.dequantized import (
    INT8_TYPES, added_if_supported, dequantized, replace_node, varies_along,
)
from ember.lowering.passes import PassContext, PassResult
from ember.lowering.rules import remove_dead

__all__ = ["FoldWidenedConstants", "fold_widened_constants", "pack_block_weights",
           "read_widened_weights", "rewrite_block_matmul", "rewrite_int8_weight_matmul",
           "rewrite_int8_gather"]

_BLOCK_WEIGHT_BITS = {DType.INT4: 4, DType.UINT4: 4, DType.INT8: 8, DType.UINT8: 8}


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


def rewrite_block_matmul(graph: Graph, ctx: PassContext, node: int) -> bool:
    """MatMul(a, BlockDequantize(w)) with w (K, N) blocked along K, or with trans_b (Gemm's
    transB: w is (N, K), already BlockQuantMatMul's layout) blocked along its axis 1."""
    attrs = graph.attrs(node)
    if attrs["epilogue"] is not None or attrs["trans_a"]:
        return False
    k_axis = 1 if attrs["trans_b"] else 0
    a_value, b_value = graph.inputs_of(node)
    if graph.dtype_of(a_value) is not DType.FLOAT32 or graph.type_of(a_value).rank < 1:
        return False
    dq = dequantized(graph, b_value, "BlockDequantize")
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
    result = added_if_supported(graph, ctx, "BlockQuantMatMul",
                  [a_value, graph.add_constant(packed), graph.add_constant(scales),
                   graph.add_constant(zeros)],
                  {"bits": bits, "block_size": block_size, "k": k, "n": n},
                  graph.node_name(node))
    if result is None:
        return False
    replace_node(graph, node, result)
    return True


# -- weights widened in the graph (weight-only int8 exports) ----------------------------------
def _scalar_or_axis(graph: Graph, value: Value, rank: int) -> int | None:
    """The one axis along which a constant varies (-1 for a scalar), None if it varies along
    more than one or has more axes than `rank`."""
    shape = graph.type_of(value).shape
    if len(shape) > rank:
        return None
    varying = [i for i, d in enumerate((1,) * (rank - len(shape)) + tuple(shape)) if d != 1]
    return varying[0] if len(varying) == 1 else (-1 if not varying else None)


def _widened(graph: Graph, mul: int) -> tuple[Value, np.ndarray, np.ndarray] | None:
    """(q, scale, zero) when `mul` is Mul(Cast(q), scale) or Mul(Sub(Cast(q), zero), scale)
    in float32 with q an int8/uint8 constant, scale and zero constants that do not grow q
    and vary along one axis of it at most (the same one), zero integers of q's range: the
    DequantizeLinear the weight-only export spells out. The zero comes back in q's dtype."""
    if graph.op(mul) != "Mul" or graph.output_types(mul)[0].dtype is not DType.FLOAT32:
        return None
    out = graph.output_types(mul)[0]
    for centered, scale in (graph.inputs_of(mul), reversed(graph.inputs_of(mul))):
        scale_array = graph.constant_value(scale)
        if scale_array is None or graph.dtype_of(scale) is not DType.FLOAT32:
            continue
        zero, cast = None, centered
        if graph.op(centered.node) == "Sub":
            cast, zero = graph.inputs_of(centered.node)
        if graph.op(cast.node) != "Cast":
            continue
        (q,) = graph.inputs_of(cast.node)
        q_type = graph.type_of(q)
        if q_type.dtype not in INT8_TYPES or graph.constant_value(q) is None \
                or graph.dtype_of(cast) is not DType.FLOAT32 or out.shape != q_type.shape:
            continue
        axes = {_scalar_or_axis(graph, v, q_type.rank) for v in (scale, zero) if v is not None}
        if None in axes or len(axes - {-1}) > 1:
            continue
        zero_array = np.zeros((), np.float32) if zero is None else graph.constant_value(zero)
        if zero_array is None or zero_array.dtype != np.float32:
            continue
        info = np.iinfo(q_type.dtype.np_dtype)
        if not (np.all(np.rint(zero_array) == zero_array) and zero_array.min() >= info.min
                and zero_array.max() <= info.max):
            continue
        return q, scale_array, zero_array.astype(q_type.dtype.np_dtype)
    return None


def read_widened_weights(graph: Graph) -> set[int]:
    """Replace every widened weight by the DequantizeLinear it computes (bit for bit: the
    Cast and the Sub of an integer are exact, the Mul rounds once in both); the new nodes,
    which the product rewrites then consume."""
    created: set[int] = set()
    for node in graph.topological_order():
        if node not in graph.nx:
            continue
        found = _widened(graph, node)
        if found is None:
            continue
        q, scale, zero = found
        dq = graph.add("DequantizeLinear", q, graph.add_constant(scale),
                       graph.add_constant(zero), name=f"{graph.node_name(node)}/dequantize")
        created.add(dq.node)
        replace_node(graph, node, dq)
    return created


def fold_widened_constants(graph: Graph, dequantized: Iterable[int] = ()) -> int:
    """Fold the Casts of constants that constant folding kept (large widened integers) and
    the `dequantized` nodes still here, then whatever only they kept from folding: a
    widened weight that no quantized kernel consumed runs as the float constant it was
    before, not as a Cast and a Mul on every run. Returns the count of nodes folded."""
    forced = {n for n in dequantized if n in graph.nx}
    forced |= {n for n in graph.topological_order() if graph.op(n) == "Cast"
               and graph.constant_value(graph.inputs_of(n)[0]) is not None}
    queue = deque(sorted(forced))
    folded = 0
    while queue:
        node = queue.popleft()
        if node not in graph.nx or graph.op(node) in ("Input", "Constant"):
            continue
        op, inputs = OPS[graph.op(node)], graph.inputs_of(node)
        arrays = [graph.constant_value(v) for v in inputs]
        if not inputs or any(a is None for a in arrays):
            continue
        if node not in forced and graph.op(node) != "Cast" and \
                not op.folds(graph.input_types(node), graph.output_types(node)):
            continue
        results = op.evaluate(arrays, graph.attrs(node))
        for port, (result, want) in enumerate(zip(results, graph.output_types(node))):
            array = np.asarray(result).astype(want.dtype.np_dtype, copy=False)
            const = graph.add_constant(array.reshape(want.shape),
                                       name=f"{graph.node_name(node)}_folded:{port}")
            queue.extend(use.node for use in graph.users_of(Value(node, port)))
            graph.replace_all_uses(Value(node, port), const)
        graph.remove_node(node)
        folded += 1
    return folded


class FoldWidenedConstants:
    """What FuseQuantizedProducts leaves for the levels without it (and for the numpy
    executor): every kept widening Cast of a constant folded, as the importer did."""

    name = "FoldWidenedConstants"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded = fold_widened_constants(graph)
        return PassResult(folded > 0, {"folded": folded})


def _block_size_for(k: int) -> int:
    """The block size (one scale for all blocks) that pads K least; the largest on ties, so
    the kernel reads fewer scales. 64 at most: on the CPU kernel 8-bit blocks of 64 ran as
    fast as or faster than 128 (1 x 384 x 1536 and 1 x 4096 x 4096)."""
    return min((16, 32, 64), key=lambda bs: (-(-k // bs) * bs, -bs))


def rewrite_int8_weight_matmul(graph: Graph, ctx: PassContext, node: int) -> bool:
    """MatMul(a float32, DequantizeLinear(w int8/uint8 constant (K, N), per-column or
    per-tensor scale and zero)) -> BlockQuantMatMul(bits=8): the weight stays 8-bit on the
    device, each column's scale repeated in every block. Gemm's trans_b: w is (N, K)."""
    attrs = graph.attrs(node)
    if attrs["epilogue"] is not None or attrs["trans_a"]:
        return False
    a_value, b_value = graph.inputs_of(node)
    if graph.dtype_of(a_value) is not DType.FLOAT32 or graph.type_of(a_value).rank < 1 \
            or graph.constant_value(a_value) is not None:  # all constant: it folds
        return False
    dq = dequantized(graph, b_value)
    if dq is None or graph.type_of(dq[0]).rank != 2:
        return False
    arrays = [graph.constant_value(v) for v in dq]
    if any(x is None for x in arrays):
        return False
    n_axis = 0 if attrs["trans_b"] else 1
    n = graph.type_of(dq[0]).shape[n_axis]
    if any(varies_along(graph, v, n_axis, 2) not in (1, n) for v in dq[1:]):
        return False
    q = arrays[0].T if attrs["trans_b"] else arrays[0]
    k = q.shape[0]
    block_size = _block_size_for(k)
    blocks = -(-k // block_size)
    # one value per column (or one for all), the same in every block
    per_block = [np.broadcast_to(x.reshape(-1) if x.size > 1 else x.reshape(()), (blocks, n))
                 for x in arrays[1:]]
    packed, scales, zeros = pack_block_weights(q, *per_block, bits=8, block_size=block_size)
    result = added_if_supported(graph, ctx, "BlockQuantMatMul",
                  [a_value, graph.add_constant(packed), graph.add_constant(scales),
                   graph.add_constant(zeros)],
                  {"bits": 8, "block_size": block_size, "k": k, "n": n},
                  graph.node_name(node))
    if result is None:
        return False
    replace_node(graph, node, result)
    return True


def _gathered_parameter(graph: Graph, param: np.ndarray, rank: int, node: int
                        ) -> Value | None:
    """A scale or zero of the gathered table, for the gathered rows: reshaped where it is
    the same for every index, else gathered with the same indices (None where that would
    need a broadcast copy larger than the parameter)."""
    op, (data, indices) = graph.op(node), graph.inputs_of(node)
    full = param.reshape((1,) * (rank - param.ndim) + param.shape)
    index_rank = graph.type_of(indices).rank
    if op == "Gather":
        axis = graph.attrs(node)["axis"] % rank
        if full.shape[axis] == 1:
            shape = full.shape[:axis] + (1,) * index_rank + full.shape[axis + 1:]
            return graph.add_constant(full.reshape(shape))
        return graph.add("Gather", graph.add_constant(full), indices, axis=axis)
    depth = graph.attrs(node)["batch_dims"] + graph.type_of(indices).shape[-1]
    if all(d == 1 for d in full.shape[:depth]):
        return graph.add_constant(full.reshape(full.shape[depth:]))
    data_shape = graph.type_of(data).shape
    spread = np.broadcast_to(full, data_shape[:depth] + full.shape[depth:])
    if spread.size > param.size:
        return None
    return graph.add("GatherND", graph.add_constant(np.ascontiguousarray(spread)), indices,
                     batch_dims=graph.attrs(node)["batch_dims"])


def rewrite_int8_gather(graph: Graph, ctx: PassContext, node: int) -> bool:
    """Gather / GatherND of a dequantized table (an int8 embedding) -> DequantizeLinear of
    the gathered int8 rows: the table stays 8-bit and only the rows read are widened."""
    data, indices = graph.inputs_of(node)
    dq = dequantized(graph, data)
    if dq is None or graph.constant_value(indices) is not None:  # constant rows: they fold
        return False
    q, scale, zero = dq
    params = [graph.constant_value(v) for v in (scale, zero)]
    if any(p is None for p in params):
        return False
    rank = graph.type_of(q).rank
    before = set(graph.nodes())
    attrs = graph.attrs(node)
    rows = added_if_supported(graph, ctx, graph.op(node), [q, indices], dict(attrs), graph.node_name(node))
    gathered = [_gathered_parameter(graph, p, rank, node) for p in params]
    result = None
    if rows is not None and None not in gathered and all(
            graph.op(v.node) == "Constant" or ctx.supports(graph, v.node) for v in gathered):
        result = added_if_supported(graph, ctx, "DequantizeLinear", [rows, *gathered], {},
                      f"{graph.node_name(node)}/dequantize")
    if result is None or graph.type_of(result) != graph.output_types(node)[0]:
        for added in set(graph.nodes()) - before:
            if added in graph.nx and not any(graph.users_of(Value(added, 0))):
                remove_dead(graph, added)
        return False
    replace_node(graph, node, result)
    return True
