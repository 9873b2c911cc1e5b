"""Recognize exported scaled dot-product attention and replace it by one `Attention` node.

Exporters (PyTorch for BERT and GPT-2, ...) write attention as

    Q = Transpose(Reshape(q), (0, 2, 1, 3))        head split (K: perm (0, 2, 3, 1), or
    K = Transpose(Reshape(k), ...)                  (0, 2, 1, 3) then (0, 1, 3, 2), or
    V = Transpose(Reshape(v), (0, 2, 1, 3))         MatMul trans_b)
    S = MatMul(Q, K^T) [* c | / c] [+ mask]          scale may also sit on Q or K
    P = Softmax(S, axis=-1)                          [Where(IsNaN(P), 0, P)]
    O = MatMul(P, V)
    out = Transpose(O, (0, 2, 1, 3))                head merge (a Reshape view follows)

`FuseAttention` anchors on each Softmax and walks up and down from it. Everything it
absorbs must feed only the pattern (one user, no graph output), so that removing it loses
nothing: the Transposes feeding Q, K and V (into q_perm / k_perm / v_perm), MatMul's
transpose flags, scalar constant scales (Mul, or Div by a nonzero constant) on the scores,
Q or K, the mask Add, the Softmax (over the last axis only), the second MatMul and the
Transpose after it (into out_perm). A transpose of the last two axes may also be written
with the batch axes regrouped around it, Reshape(Transpose(Reshape(x))) where the Reshapes
only merge / split the axes before the last two and the Transpose fixes those (PyTorch's
SDPA export transposes K so, over [B * H, S, D]): it is read as the one 4-D Transpose.
PyTorch's SDPA export also scales Q and K by sqrt(scale) each, builds the mask as
Where(keep, 0, -big) (an ordinary additive input here) and guards the probabilities with
Where(IsNaN(P), 0, P); a Softmax row is NaN as a whole or not at all (a NaN or +inf score,
or every score -inf), so the guard zeroes exactly the rows the op's `zero_masked_rows=2`
zeroes. The mask is any input of the Add with the scores' dtype
that does not enlarge the scores' shape and does not depend on Q, K or the scores (a Where
with a boolean condition instead of the Add is left unfused). A Transpose that has another
user stays and the node reads its output. Ops with a fused epilogue are left alone. The
scales are multiplied into one `scale` (a Div by c becomes * 1/c, and a scale on Q or K is
applied to the scores): results differ from the unfused graph by float rounding only.
With a device (`ctx.supports`), a node the target has no kernel for is not made. The pass
removes what it replaced itself, so it can run just before placement. Run it after
simplification (which turns Div by 2**k into Mul and composes transposes) and before the
elementwise / epilogue fusion passes, which would otherwise absorb the scale and mask into
the first MatMul.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from ember.errors import EmberError
from ember.ir import Graph, Value
from ember.ir.ops.movement import transpose_perm
from ember.ir.ops.nn import softmax_rows
from ember.lowering.passes import PassContext, PassResult
from ember.lowering.rules import remove_dead

__all__ = ["FuseAttention"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _View:
    """A logical operand read as transpose(source, perm) and scaled by `scale`, after
    folding `transposes` Transpose and `scales` Mul/Div nodes into it."""

    source: Value
    perm: tuple[int, ...]
    scale: float = 1.0
    transposes: int = 0
    scales: int = 0
    reshapes: int = 0


@dataclass(frozen=True)
class _Match:
    q: _View
    k: _View
    v: _View
    mask: Value | None
    scale: float  # of the scores (Q's and K's scales are in their views)
    scales: int  # scale nodes on the scores
    out_perm: tuple[int, ...]
    result: Value  # the value the Attention node replaces
    nan_guard: bool = False  # Where(IsNaN(P), 0, P) between Softmax and P @ V

    def stats(self) -> Counter[str]:
        views = (self.q, self.k, self.v)
        return Counter({
            "fused": 1,
            "Transpose": sum(v.transposes for v in views) + (self.out_perm != ()),
            "Reshape": sum(v.reshapes for v in views),
            "scale": sum(v.scales for v in views) + self.scales,
            "mask": int(self.mask is not None),
            "nan_guard": int(self.nan_guard),
        })


# -- small predicates -----------------------------------------------------------------------
def _only_use(graph: Graph, value: Value) -> bool:
    """`value` feeds exactly one input and is no graph output: its producer can go."""
    return len(graph.users_of(value)) == 1 and not graph.is_output(value)


def _plain(graph: Graph, value: Value, op: str) -> bool:
    """`value` is output 0 of a single-output `op` node without a fused epilogue."""
    node = value.node
    return (graph.op(node) == op and value.port == 0 and len(graph.output_types(node)) == 1
            and graph.attrs(node).get("epilogue") is None)


def _scalar(graph: Graph, value: Value) -> float | None:
    """The value of a one-element float constant, else None."""
    array = graph.constant_value(value)
    if array is None or array.size != 1 or array.dtype.kind != "f":
        return None
    return float(np.asarray(array, np.float64).reshape(-1)[0])


def _peel_scale(graph: Graph, value: Value) -> tuple[Value, float] | None:
    """value = x * c, c * x or x / c with c a scalar constant that does not broadcast x:
    (x, factor). Div by zero is left alone."""
    for op in ("Mul", "Div"):
        if not _plain(graph, value, op):
            continue
        a, b = graph.inputs_of(value.node)
        pairs = ((a, b), (b, a)) if op == "Mul" else ((a, b),)
        for x, c in pairs:
            factor = _scalar(graph, c)
            if factor is None or graph.type_of(x) != graph.type_of(value):
                continue
            if op == "Div":
                if factor == 0.0:
                    return None
                factor = 1.0 / factor
            return x, factor
    return None


def _swap_last(rank: int) -> tuple[int, ...]:
    return tuple(range(rank - 2)) + (rank - 1, rank - 2)


def _regrouped_transpose(graph: Graph, value: Value) -> tuple[Value, tuple[int, ...]] | None:
    """value = Reshape(Transpose(Reshape(x))), the Reshapes regrouping only the axes before
    the last two (x's batch axes come back unchanged) and the Transpose fixing the regrouped
    axes, its two inner values used once: (x, perm) with value == transpose(x, perm)."""
    if not _plain(graph, value, "Reshape") or len(graph.inputs_of(value.node)) != 1:
        return None
    (swapped,) = graph.inputs_of(value.node)
    if not (_plain(graph, swapped, "Transpose") and _only_use(graph, swapped)):
        return None
    (grouped,) = graph.inputs_of(swapped.node)
    if not (_plain(graph, grouped, "Reshape") and _only_use(graph, grouped)
            and len(graph.inputs_of(grouped.node)) == 1):
        return None
    (x,) = graph.inputs_of(grouped.node)
    xs, gs = graph.type_of(x).shape, graph.type_of(grouped).shape
    ss, out = graph.type_of(swapped).shape, graph.type_of(value).shape
    n, r = len(gs), len(xs)
    if n < 2 or r < 2 or len(out) != r:
        return None
    inner = transpose_perm(graph.attrs(swapped.node)["perm"], n)
    if inner[:n - 2] != tuple(range(n - 2)):
        return None  # the Transpose moves a batch axis
    if (xs[-2:] != gs[-2:] or out[:-2] != xs[:-2] or out[-2:] != ss[-2:]
            or math.prod(xs[:-2]) != math.prod(gs[:-2])):
        return None  # a Reshape that splits or merges the last two axes
    tail = (r - 2, r - 1) if inner[n - 2:] == (n - 2, n - 1) else (r - 1, r - 2)
    return x, tuple(range(r - 2)) + tail


def _view(graph: Graph, value: Value, perm: tuple[int, ...], scales: bool) -> _View:
    """Walk up from an operand read as transpose(value, perm), folding Transposes (also
    one written with regrouped batch axes) and, when `scales`, scalar Mul/Div whose output
    only this operand reads."""
    scale, transposes, n_scales, reshapes = 1.0, 0, 0, 0
    while _only_use(graph, value):
        if _plain(graph, value, "Transpose"):
            (source,) = graph.inputs_of(value.node)
            inner = transpose_perm(graph.attrs(value.node)["perm"], len(perm))
            perm = tuple(inner[i] for i in perm)  # logical i = value axis perm[i]
            value = source
            transposes += 1
            continue
        regrouped = _regrouped_transpose(graph, value)
        if regrouped is not None:
            value, inner = regrouped
            perm = tuple(inner[i] for i in perm)
            transposes += 1
            reshapes += 2
            continue
        peeled = _peel_scale(graph, value) if scales else None
        if peeled is None:
            break
        value, factor = peeled
        scale *= factor
        n_scales += 1
    return _View(value, perm, scale, transposes, n_scales, reshapes)


def _depends_on(graph: Graph, value: Value, values: set[Value], nodes: set[int]) -> bool:
    """Does `value` (transitively) read any of `values` or come from any of `nodes`?"""
    seen: set[int] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        if current in values or current.node in nodes:
            return True
        if current.node in seen:
            continue
        seen.add(current.node)
        stack.extend(graph.inputs_of(current.node))
    return False


# -- matching -------------------------------------------------------------------------------
def _scores(graph: Graph, value: Value) -> tuple[int, float, list[int]] | None:
    """value = MatMul(a, b) with optional scalar scales after it, each used only once:
    (matmul node, scale, scale nodes)."""
    scale, nodes = 1.0, []
    while True:
        if not _only_use(graph, value):
            return None
        if _plain(graph, value, "MatMul"):
            return value.node, scale, nodes
        peeled = _peel_scale(graph, value)
        if peeled is None:
            return None
        nodes.append(value.node)
        value, factor = peeled
        scale *= factor


def _split_mask(graph: Graph, x: Value) -> Iterator[tuple[Value, Value | None]]:
    """The ways to read the Softmax input as scores (+ mask)."""
    yield x, None
    if _plain(graph, x, "Add") and _only_use(graph, x):
        a, b = graph.inputs_of(x.node)
        yield a, b
        if a != b:
            yield b, a


def _nan_guard(graph: Graph, probs: Value) -> Value | None:
    """The output of Where(IsNaN(probs), 0, probs) when that is all that reads probs (the
    IsNaN feeding only the Where, the zero a scalar constant), else None."""
    users = graph.users_of(probs)
    if graph.is_output(probs) or len(users) != 2:
        return None
    where = next((u.node for u in users if u.port == 2), None)
    if where is None or not _plain(graph, Value(where, 0), "Where"):
        return None
    test, zero, kept = graph.inputs_of(where)
    if (kept != probs or not _plain(graph, test, "IsNaN") or not _only_use(graph, test)
            or graph.inputs_of(test.node) != [probs]):
        return None
    zeros = graph.constant_value(zero)
    if zeros is None or zeros.size != 1 or zeros.reshape(-1)[0] != 0:
        return None
    guarded = Value(where, 0)
    return guarded if graph.type_of(guarded) == graph.type_of(probs) else None


def _match(graph: Graph, softmax: int) -> _Match | None:
    x = graph.inputs_of(softmax)[0]
    x_type = graph.type_of(x)
    if x_type.rank < 2 or not x_type.dtype.is_float:
        return None
    _, n, inner = softmax_rows(x_type.shape, graph.attrs(softmax)["axis"],
                                   graph.attrs(softmax)["flatten"])
    if inner != 1 or n != x_type.shape[-1]:
        return None  # not over the last axis
    probs = Value(softmax, 0)
    guard = _nan_guard(graph, probs)
    if guard is not None:
        probs = guard
    users = graph.users_of(probs)
    if not _only_use(graph, probs) or users[0].port != 0:
        return None
    second = users[0].node
    if not _plain(graph, Value(second, 0), "MatMul") or len(graph.inputs_of(second)) != 2:
        return None
    if graph.attrs(second)["trans_a"]:
        return None
    for scores, mask in _split_mask(graph, x):
        found = _scores(graph, scores)
        if found is None:
            continue
        first, scale, scale_nodes = found
        if len(graph.inputs_of(first)) != 2:
            continue
        if mask is not None:
            if graph.dtype_of(mask) != x_type.dtype or graph.type_of(scores) != x_type:
                continue  # a mask of another dtype, or one that enlarges the scores
            a, b = graph.inputs_of(first)
            if _depends_on(graph, mask, {a, b}, {first, *scale_nodes}):
                continue  # a bias computed from Q, K or the scores is not a mask
        match = _complete(graph, first, second, scale, len(scale_nodes), mask)
        if match is not None:
            return replace(match, nan_guard=guard is not None)
    return None


def _complete(graph: Graph, first: int, second: int, scale: float, scales: int,
              mask: Value | None) -> _Match | None:
    """Q, K and V views from the two MatMuls, and the output transpose; None for 1-D
    operands."""
    a, b = graph.inputs_of(first)
    v = graph.inputs_of(second)[1]
    ranks = [graph.type_of(t).rank for t in (a, b, v)]
    if min(ranks) < 2:
        return None  # 1-D MatMul operands are promoted, not attention
    ra, rb, rv = ranks
    at, bt = graph.attrs(first)["trans_a"], graph.attrs(first)["trans_b"]
    q_perm = _swap_last(ra) if at else tuple(range(ra))
    k_perm = tuple(range(rb)) if bt else _swap_last(rb)  # K = B^T unless trans_b
    v_perm = _swap_last(rv) if graph.attrs(second)["trans_b"] else tuple(range(rv))
    # An operand read twice (Q = K, V = K, ...) has two users: nothing above it is folded.
    q = _view(graph, a, q_perm, scales=True)
    k = _view(graph, b, k_perm, scales=True)
    v_view = _view(graph, v, v_perm, scales=False)  # a scale on V would scale the output
    result = Value(second, 0)
    out_perm: tuple[int, ...] = ()
    if _only_use(graph, result):
        user = graph.users_of(result)[0].node
        if _plain(graph, Value(user, 0), "Transpose"):
            out_perm = transpose_perm(graph.attrs(user)["perm"], graph.type_of(result).rank)
            result = Value(user, 0)
    return _Match(q, k, v_view, mask, scale, scales, out_perm, result)


# -- rewriting ------------------------------------------------------------------------------
def _perm_attr(perm: tuple[int, ...]) -> tuple[int, ...]:
    return () if perm == tuple(range(len(perm))) else perm


def _node_name(graph: Graph, softmax: int) -> str:
    name = graph.node_name(softmax)
    head, sep, _ = name.rpartition("/")
    return f"{head}/Attention" if sep else f"{name}_attention"


def _rewrite(graph: Graph, ctx: PassContext, softmax: int, m: _Match) -> bool:
    inputs = [m.q.source, m.k.source, m.v.source] + ([m.mask] if m.mask is not None else [])
    attrs = {
        "scale": m.scale * m.q.scale * m.k.scale,
        "q_perm": _perm_attr(m.q.perm), "k_perm": _perm_attr(m.k.perm),
        "v_perm": _perm_attr(m.v.perm), "out_perm": _perm_attr(m.out_perm),
    }
    if m.nan_guard:
        attrs["zero_masked_rows"] = 2  # the rows the guard zeroes: see the module docstring
    try:
        node = graph.add_node("Attention", inputs, attrs, name=_node_name(graph, softmax))
    except EmberError as exc:  # shapes numpy's matmul accepts but Attention does not
        log.debug("attention at %s not fused: %s", graph.node_name(softmax), exc)
        return False
    if graph.output_types(node)[0] != graph.type_of(m.result) or (
            ctx.supports is not None and not ctx.supports(graph, node)):
        graph.remove_node(node)
        return False
    graph.replace_all_uses(m.result, Value(node, 0))
    remove_dead(graph, m.result.node)
    return True


class FuseAttention:
    """Replace each matched attention subgraph by one Attention node. Stats: `fused`, and
    the absorbed nodes by kind (`Transpose`, `Reshape`, `scale`, `mask`, `nan_guard`)."""

    name = "FuseAttention"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats: Counter[str] = Counter()
        for node in graph.topological_order():
            if node not in graph.nx or graph.op(node) != "Softmax":
                continue
            m = _match(graph, node)
            if m is not None and _rewrite(graph, ctx, node, m):
                stats += m.stats()
        return PassResult(stats["fused"] > 0, dict(stats))
