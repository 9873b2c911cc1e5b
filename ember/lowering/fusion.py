"""Operator fusion: elementwise regions into one kernel, and elementwise consumers of a
MatMul / Conv into that op's epilogue. Plus the transpose folding MatMul makes free.

`FuseElementwise` grows regions over the graph in topological order. A node joins the region
of one of its producers (or of a sibling reading the same input) when both are elementwise,
have the same output shape (inputs may broadcast into the region, values inside it never do)
and no path leaves the region and comes back to it, counting the regions already formed as
single nodes (that would make a fused node depend on itself). Each region of two or more
nodes becomes one `FusedElementwise` node, with one output per value used outside it.
Then a kernel never writes a quantized tensor and its dequantized copy, nor a dequantized
copy alone: the consumers of `DequantizeLinear(q)`, when all are elementwise kernels of its
shape, each dequantize the 8-bit q themselves (one copy of the DequantizeLinear fused into
each). A kernel boundary then carries 1 byte per element instead of 5 (or 4), and a region
that ends in QuantizeLinear keeps one output, so it can become a product's epilogue (a
residual block's Add + Relu + QuantizeLinear after its second convolution, reading the
shortcut as uint8).

`FuseEpilogues` then absorbs into a MatMul / Conv the elementwise node (plain or fused) that
is the only user of its result and keeps its shape: bias, activation, residual Add, scaling
all run in the product's kernel, before its store. It repeats until nothing more fits. It
sees through views: when the product's only user is a Reshape (Flatten, Squeeze and
Unsqueeze import as Reshape), or a chain of them, whose only user is such a node, it computes
unary(reshape(x)) as reshape(unary(x)), the reshape staying a free view after the fused
kernel. The node's other inputs must then have the same values at the product's
coordinates: scalars, tensors of the view's shape (read through a reshape of their own,
also a view), or broadcasts over trailing axes that the reshape leaves alone (a bias).

Both passes fuse only what the target can run as one kernel (`ctx.supports`): without a
device nothing is fused, since the numpy executor gains nothing from it.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from ember.ir import OPS, DType, Graph, Value
from ember.ir.ops.fused import ExprNode, FusedExpr, epilogue_inputs
from ember.lowering.passes import PassContext, PassResult, try_node

__all__ = ["FuseElementwise", "FuseEpilogues", "FoldTransposeIntoMatMul", "EPILOGUE_OPS"]

EPILOGUE_OPS = frozenset({"MatMul", "Conv", "MatMulInteger", "ConvInteger", "BlockQuantMatMul"})
# Integer products: their kernels store whatever dtype the epilogue ends in (an int32 sum
# becomes float, then int8 again through QuantizeLinear), so the epilogue may change it.
RETYPING_EPILOGUE_OPS = frozenset({"MatMulInteger", "ConvInteger"})
_EIGHT_BIT = frozenset({DType.INT8, DType.UINT8})


def _is_elementwise(graph: Graph, node: int) -> bool:
    op = graph.op(node)
    return OPS[op].elementwise and graph.output_types(node)[0].size > 0


def _as_expr(graph: Graph, node: int) -> FusedExpr:
    """A node's computation as an expression over its inputs (in port order)."""
    if graph.op(node) == "FusedElementwise":
        return graph.attrs(node)["expr"]
    return FusedExpr.single(graph.op(node), graph.attrs(node), len(graph.inputs_of(node)),
                            graph.output_types(node)[0].dtype)


# -- elementwise regions ----------------------------------------------------------------------
class FuseElementwise:
    name = "FuseElementwise"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.supports is None:
            return PassResult(False)
        regions = self._regions(graph, ctx)
        fused = nodes = 0
        for members in regions:
            if len(members) > 1 and _fuse_region(graph, ctx, members):
                fused += 1
                nodes += len(members)
        moved = _dequantize_in_consumers(graph, ctx)
        return PassResult(fused + moved > 0,
                          {"regions": fused, "nodes": nodes, "dequantize_moved": moved})

    @staticmethod
    def _regions(graph: Graph, ctx: PassContext) -> list[list[int]]:
        # `contracted` is the graph with every region so far merged into one node (its
        # first member); a node joins a region only if merging keeps it acyclic.
        contracted = nx.DiGraph(graph.nx)
        region_of: dict[int, int] = {}  # node -> its region's first member
        members: dict[int, list[int]] = {}
        for node in graph.topological_order():
            if not _is_elementwise(graph, node) or not ctx.supports(graph, node):
                continue
            shape = graph.output_types(node)[0].shape
            inputs = graph.inputs_of(node)
            # A producer's region first (a chain), else a sibling's (nodes reading the same
            # input: one kernel reads it once and writes both results).
            candidates = [value.node for value in inputs]
            candidates += [use.node for value in inputs for use in graph.users_of(value)]
            chosen = node
            for other in candidates:
                head = region_of.get(other)
                if head is None or graph.output_types(other)[0].shape != shape:
                    continue
                if _merge_keeps_acyclic(contracted, head, node):
                    nx.contracted_nodes(contracted, head, node, self_loops=False, copy=False)
                    chosen = head
                    break
            region_of[node] = chosen
            members.setdefault(chosen, []).append(node)
        return list(members.values())


def _fuse_region(graph: Graph, ctx: PassContext, members: list[int]) -> bool:
    """Replace `members` (in topological order) by one FusedElementwise node."""
    inside = set(members)
    inputs: list[Value] = []
    index: dict[Value, int] = {}
    for node in members:
        for value in graph.inputs_of(node):
            if value.node not in inside and value not in index:
                index[value] = len(inputs)
                inputs.append(value)
    exprs: list[ExprNode] = []
    for node in members:
        sub = _as_expr(graph, node)
        args = [index[v] for v in graph.inputs_of(node)]
        base = len(inputs) + len(exprs)
        for k, e in enumerate(sub.nodes):
            exprs.append(ExprNode(e.op, tuple(args[a] if a < sub.n_inputs
                                              else base + a - sub.n_inputs for a in e.args),
                                  e.attrs, e.dtype))
        for port, value_index in enumerate(sub.outputs):
            index[Value(node, port)] = (args[value_index] if value_index < sub.n_inputs
                                        else base + value_index - sub.n_inputs)
    escaping = [
        Value(node, port) for node in members
        for port in range(len(graph.output_types(node)))
        if graph.is_output(Value(node, port))
        or any(use.node not in inside for use in graph.users_of(Value(node, port)))
    ]
    expr = FusedExpr(len(inputs), tuple(exprs), tuple(index[v] for v in escaping))
    name = graph.node_name(members[-1])
    name = name if name.endswith("/fused") else name + "/fused"
    fused = try_node(graph, ctx, "FusedElementwise", inputs, {"expr": expr}, name)
    if fused is None:
        return False
    for port, value in enumerate(escaping):
        graph.replace_all_uses(value, Value(fused, port))
    for node in reversed(members):
        graph.remove_node(node)
    return True


def _merge_keeps_acyclic(graph: nx.DiGraph, a: int, b: int) -> bool:
    """Merging nodes a and b of a DAG makes a cycle exactly when a longer path than a
    direct edge joins them, in either direction."""
    for source, target in ((a, b), (b, a)):
        for step in graph.successors(source):
            if step != target and nx.has_path(graph, step, target):
                return False
    return True


# -- dequantization moved into the consumers ---------------------------------------------------
def _dequantize_in_consumers(graph: Graph, ctx: PassContext) -> int:
    """Move each `DequantizeLinear(q)` that a kernel writes (a region's output beside q, or
    a node of its own) into its consumers; the number of values moved. Sweeps until nothing
    changes: moving one rebuilds its consumers, which may then have one to move."""
    moved_total = 0
    while True:
        moved = 0
        for node in graph.topological_order():
            if node not in graph.nx:
                continue
            if graph.op(node) == "DequantizeLinear":
                q, scale, zero = graph.inputs_of(node)
                if _move_dequantize(graph, ctx, Value(node, 0), q, scale, zero):
                    moved += 1
                    if not graph.users_of(Value(node, 0)):
                        graph.remove_node(node)
            elif graph.op(node) == "FusedElementwise":
                for port, parts in _dequantized_outputs(graph, node):
                    if _move_dequantize(graph, ctx, Value(node, port), *parts):
                        moved += 1
                        _drop_unused_outputs(graph, ctx, node)
                        break  # the node may be rebuilt: the next sweep looks at it again
        moved_total += moved
        if not moved:
            return moved_total


def _dequantized_outputs(graph: Graph, node: int) -> list[tuple[int, tuple[Value, Value, Value]]]:
    """(port, (q, scale, zero)) for each output of a FusedElementwise that is
    DequantizeLinear(q) of another of its outputs or of one of its inputs q, by a scale and
    zero point that are inputs."""
    expr: FusedExpr = graph.attrs(node)["expr"]
    inputs = graph.inputs_of(node)
    port_of = {index: port for port, index in enumerate(expr.outputs)}
    found = []
    for port, index in enumerate(expr.outputs):
        if index < expr.n_inputs:
            continue
        e = expr.nodes[index - expr.n_inputs]
        if e.op != "DequantizeLinear":
            continue
        q_index, scale_index, zero_index = e.args
        if scale_index >= expr.n_inputs or zero_index >= expr.n_inputs:
            continue
        if q_index < expr.n_inputs:
            q = inputs[q_index]
        elif q_index in port_of:
            q = Value(node, port_of[q_index])
        else:
            continue
        found.append((port, (q, inputs[scale_index], inputs[zero_index])))
    return found


def _move_dequantize(graph: Graph, ctx: PassContext, value: Value, q: Value, scale: Value,
                     zero: Value) -> bool:
    """Make the consumers of `value` (= DequantizeLinear(q, scale, zero)) compute it
    themselves, fused into them. Only when all of them are elementwise kernels of its shape
    (a product, a pooling or a graph output needs the float tensor written); true when
    one or more did (all but those the target has no kernel for)."""
    if graph.is_output(value) or graph.dtype_of(q) not in _EIGHT_BIT:
        return False
    shape = graph.type_of(value).shape
    users = sorted({use.node for use in graph.users_of(value)})
    if not users or any(not _is_elementwise(graph, user) or not ctx.supports(graph, user)
                        or graph.output_types(user)[0].shape != shape for user in users):
        return False
    moved = False
    for user in users:
        ports = [use.port for use in graph.users_of(value) if use.node == user]
        copy = graph.add("DequantizeLinear", q, scale, zero,
                         name=graph.node_name(user) + "/dequantize")
        for port in ports:
            graph.set_input(user, port, copy)
        if _fuse_region(graph, ctx, [copy.node, user]):
            moved = True
        else:
            for port in ports:
                graph.set_input(user, port, value)
            graph.remove_node(copy.node)
    return moved


def _drop_unused_outputs(graph: Graph, ctx: PassContext, node: int) -> None:
    """Rebuild a FusedElementwise without the outputs nobody reads."""
    expr: FusedExpr = graph.attrs(node)["expr"]
    kept = [port for port in range(len(expr.outputs))
            if graph.is_output(Value(node, port)) or graph.users_of(Value(node, port))]
    if len(kept) == len(expr.outputs):
        return
    if not kept:
        graph.remove_node(node)
        return
    smaller = _without_dead_nodes(
        FusedExpr(expr.n_inputs, expr.nodes, tuple(expr.outputs[p] for p in kept)))
    new = try_node(graph, ctx, "FusedElementwise", graph.inputs_of(node),
                    {"expr": smaller}, graph.node_name(node))
    if new is None:
        return
    for new_port, port in enumerate(kept):
        graph.replace_all_uses(Value(node, port), Value(new, new_port))
    graph.remove_node(node)


def _without_dead_nodes(expr: FusedExpr) -> FusedExpr:
    """`expr` without the nodes no output depends on (values renumbered)."""
    n = expr.n_inputs
    live = set(expr.outputs)
    for k in range(len(expr.nodes) - 1, -1, -1):
        if n + k in live:
            live.update(expr.nodes[k].args)
    kept = [k for k in range(len(expr.nodes)) if n + k in live]
    renumber = {i: i for i in range(n)} | {n + k: n + j for j, k in enumerate(kept)}
    nodes = tuple(ExprNode(expr.nodes[k].op, tuple(renumber[a] for a in expr.nodes[k].args),
                           expr.nodes[k].attrs, expr.nodes[k].dtype) for k in kept)
    return FusedExpr(n, nodes, tuple(renumber[i] for i in expr.outputs))


# -- epilogues --------------------------------------------------------------------------------
class FuseEpilogues:
    name = "FuseEpilogues"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.supports is None:
            return PassResult(False)
        absorbed = 0
        for node in graph.topological_order():
            if node not in graph.nx or graph.op(node) not in EPILOGUE_OPS:
                continue
            while True:
                grown = self._absorb(graph, ctx, node)
                if grown is None:
                    break
                node = grown
                absorbed += 1
        return PassResult(absorbed > 0, {"absorbed": absorbed})

    @staticmethod
    def _absorb(graph: Graph, ctx: PassContext, node: int) -> int | None:
        """Fold the only user of `node`'s result (maybe behind a view) into its epilogue;
        the new node, or None."""
        result = Value(node, 0)
        user = _only_user(graph, result)
        views: list[int] = []  # a chain of views between the product and the user
        while user is not None and graph.op(user) == "Reshape":
            views.append(user)
            user = _only_user(graph, Value(user, 0))
        if user is None or not _is_elementwise(graph, user) \
                or len(graph.output_types(user)) != 1:
            return None
        seen = Value(views[-1], 0) if views else result  # what the user reads
        out = graph.output_types(user)[0]
        if out.shape != graph.type_of(seen).shape:
            return None  # the kernel stores the product's shape
        if out.dtype != graph.dtype_of(result) and graph.op(node) not in RETYPING_EPILOGUE_OPS:
            return None  # and, but for integer products, its dtype
        attrs = graph.attrs(node)
        current: FusedExpr | None = attrs["epilogue"]
        inputs = graph.inputs_of(node)
        n_base = len(inputs) - epilogue_inputs(current)
        extras = list(inputs[n_base:])
        if current is None:
            current = FusedExpr(1, (), (0,))
        user_expr = _as_expr(graph, user)
        user_args: list[int] = []
        at_product: dict[Value, Value] = {}  # behind views: inputs as read at the product
        for value in graph.inputs_of(user):
            if value == seen:
                user_args.append(-1)  # the product (after the current epilogue)
                continue
            if views:
                if value not in at_product:
                    at = _at_product(graph, value, out.shape, graph.type_of(result).shape)
                    if at is None:
                        _remove_new_views(graph, at_product)
                        return None
                    at_product[value] = at
                value = at_product[value]
            if value not in extras:
                extras.append(value)
            user_args.append(extras.index(value) + 1)
        n_in = 1 + len(extras)

        def moved(i: int) -> int:  # a value of the current epilogue, renumbered
            return i if i < current.n_inputs else n_in + i - current.n_inputs

        nodes = [ExprNode(e.op, tuple(moved(a) for a in e.args), e.attrs, e.dtype)
                 for e in current.nodes]
        product = moved(current.outputs[0])
        args = [product if a == -1 else a for a in user_args]
        base = n_in + len(nodes)
        for e in user_expr.nodes:
            nodes.append(ExprNode(e.op, tuple(args[a] if a < user_expr.n_inputs
                                              else base + a - user_expr.n_inputs
                                              for a in e.args), e.attrs, e.dtype))
        out_index = user_expr.outputs[0]
        final = args[out_index] if out_index < user_expr.n_inputs else \
            base + out_index - user_expr.n_inputs
        epilogue = FusedExpr(n_in, tuple(nodes), (final,))
        new = try_node(graph, ctx, graph.op(node), [*inputs[:n_base], *extras],
                        dict(attrs.replace(epilogue=epilogue)), graph.node_name(user))
        if new is None:
            _remove_new_views(graph, at_product)
            return None
        fused = Value(new, 0)
        if views:  # one view of the chain's shape, now after the fused product
            fused = graph.add("Reshape", fused, shape=out.shape,
                              name=graph.node_name(views[-1]))
        graph.replace_all_uses(Value(user, 0), fused)
        graph.remove_node(user)
        for view in reversed(views):
            graph.remove_node(view)
        graph.remove_node(node)
        return new


def _only_user(graph: Graph, value: Value) -> int | None:
    """The one node reading `value` (not a graph output), else None."""
    users = {use.node for use in graph.users_of(value)}
    if graph.is_output(value) or len(users) != 1:
        return None
    return users.pop()


def _remove_new_views(graph: Graph, moved: dict[Value, Value]) -> None:
    """Undo the nodes `_at_product` added (fusion did not happen)."""
    for value, at in moved.items():
        if at != value:
            graph.remove_node(at.node)


def _at_product(graph: Graph, value: Value, view_shape: tuple[int, ...],
                product_shape: tuple[int, ...]) -> Value | None:
    """`value`, an input broadcast to `view_shape` (a reshape of the product), as an input
    that gives each product element the same value when broadcast to `product_shape`; a new
    Reshape (a view) where its shape must change; None when no such input exists."""
    shape = graph.type_of(value).shape
    if math.prod(shape) == 1:  # a scalar: any element, at rank 0 when ranks would grow
        return value if len(shape) <= len(product_shape) else _reshaped(graph, value, ())
    if shape == view_shape:
        return _reshaped(graph, value, product_shape)
    trailing = shape[next(i for i, d in enumerate(shape) if d != 1):]
    rank = len(trailing)
    # the reshape keeps the last `rank` axes iff the view and the product end alike
    if rank > len(product_shape) or view_shape[-rank:] != product_shape[-rank:]:
        return None
    return value if shape == trailing else _reshaped(graph, value, trailing)


def _reshaped(graph: Graph, value: Value, shape: tuple[int, ...]) -> Value:
    """`value` in another shape: a new constant for a constant, else a Reshape (a view)."""
    constant = graph.constant_value(value)
    if constant is not None:
        return graph.add_constant(np.reshape(constant, shape))
    return graph.add("Reshape", value, shape=shape)


# -- transposes -------------------------------------------------------------------------------
class FoldTransposeIntoMatMul:
    """A Transpose that swaps the last two axes of a MatMul operand becomes the operand's
    trans_a / trans_b flag: the GEMM reads the untransposed tensor."""

    name = "FoldTransposeIntoMatMul"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded = 0
        for node in graph.topological_order():
            if graph.op(node) != "MatMul":
                continue
            inputs = graph.inputs_of(node)
            attrs = graph.attrs(node)
            for port, flag in ((0, "trans_a"), (1, "trans_b")):
                value = inputs[port]
                if graph.op(value.node) != "Transpose":
                    continue
                perm = graph.attrs(value.node)["perm"]
                rank = len(perm)
                if rank < 2 or tuple(perm) != (*range(rank - 2), rank - 1, rank - 2):
                    continue
                source = graph.inputs_of(value.node)[0]
                new = graph.add_node("MatMul", [*(source if i == port else v
                                                  for i, v in enumerate(inputs))],
                                     dict(attrs.replace(**{flag: 1 - attrs[flag]})),
                                     name=graph.node_name(node))
                graph.replace_all_uses(Value(node, 0), Value(new, 0))
                graph.remove_node(node)
                node, inputs, attrs = new, graph.inputs_of(new), graph.attrs(new)
                folded += 1
        return PassResult(folded > 0, {"folded": folded})
