"""Algebraic simplification as rules as data.

A `Rule` pairs a pattern over typed op handles (`op.Mul(X, C)`) with a rewrite function
`(graph, match) -> Value | None`; `None` means "matched, but does not apply" (the constant is
not exactly 1, the broadcast would change the shape, ...). `doc` is the rule's one-line name:
the test id, the stats key and the trace label. `ApplyRules` is the one engine: it tries
the rules on every node, replaces the node's output by what the rewrite returns, and drops
what became dead. Every rewrite keeps the output's exact type, so graph outputs keep their
names and types (replace_all_uses moves them).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ember.ir import OPS, Graph, Value
from ember.ir.ops.movement import transpose_perm
from ember.lowering.passes import PassContext, PassResult

__all__ = ["Pat", "Match", "Rule", "RULES", "ApplyRules", "op", "X", "C", "exact_reciprocal",
           "remove_dead"]

log = logging.getLogger(__name__)


# -- patterns ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pat:
    """Matches a value: any value (`op` None), a value from a Constant node (`const`), or
    output 0 of a node running `op` whose inputs match `inputs` (either order when the op is
    commutative). `name` binds the matched value; a name bound twice must match one value."""

    op: str | None = None
    inputs: tuple[Pat, ...] = ()
    name: str | None = None
    const: bool = False


class _OpHandle:
    """`op.Mul(X, C, name="m")` builds a Pat; the op name was checked against OPS."""

    def __init__(self, name: str) -> None:
        OPS[name]  # raises UnsupportedOpError for a typo, at import time
        self.name = name

    def __call__(self, *inputs: Pat, name: str | None = None) -> Pat:
        return Pat(self.name, tuple(inputs), name)


class _Ops:
    def __getattr__(self, name: str) -> _OpHandle:
        if not name[:1].isupper():
            raise AttributeError(name)
        return _OpHandle(name)


op = _Ops()
X = Pat(name="x")
C = Pat(name="c", const=True)


@dataclass(frozen=True)
class Match:
    """What a pattern bound: `root` is the rewritten value, `m["x"]` a named one."""

    root: Value
    binds: Mapping[str, Value]

    def __getitem__(self, name: str) -> Value:
        return self.binds[name]


def _match(g: Graph, value: Value, pat: Pat, binds: dict[str, Value]) -> Iterator[dict[str, Value]]:
    if pat.name is not None and pat.name in binds and binds[pat.name] != value:
        return
    if pat.const and g.constant_value(value) is None:
        return
    bound = binds if pat.name is None else {**binds, pat.name: value}
    if pat.op is None:
        yield bound
        return
    if g.op(value.node) != pat.op or value.port != 0 or len(g.output_types(value.node)) != 1:
        return
    inputs = g.inputs_of(value.node)
    if len(inputs) != len(pat.inputs):
        return
    orders = [inputs]
    if OPS[pat.op].commutative and len(inputs) == 2 and inputs[0] != inputs[1]:
        orders.append(inputs[::-1])
    for order in orders:
        yield from _match_all(g, order, pat.inputs, bound)


def _match_all(g: Graph, values: Sequence[Value], pats: Sequence[Pat],
               binds: dict[str, Value]) -> Iterator[dict[str, Value]]:
    if not pats:
        yield binds
        return
    for first in _match(g, values[0], pats[0], binds):
        yield from _match_all(g, values[1:], pats[1:], first)


Rewrite = Callable[[Graph, Match], "Value | None"]


@dataclass(frozen=True)
class Rule:
    pattern: Pat
    rewrite: Rewrite
    doc: str

    def __post_init__(self) -> None:
        if self.pattern.op is None:
            raise ValueError(f"rule {self.doc!r}: the pattern's root must name an op")


# -- rewrite functions (None: the rule does not apply) -------------------------------------
def _same_type(g: Graph, a: Value, b: Value) -> bool:
    return g.type_of(a) == g.type_of(b)


def drop_unit(g: Graph, m: Match, unit: float) -> Value | None:
    """x op c -> x when c is exactly `unit` everywhere and the broadcast leaves x's shape and
    dtype alone. For floats x+0 and x-(-0) differ from x only in the sign of a zero result."""
    c = g.constant_value(m["c"])
    if not _same_type(g, m.root, m["x"]) or not np.all(c == unit):
        return None
    return m["x"]


def bypass(g: Graph, m: Match) -> Value | None:
    """The root computes x unchanged (same shape, same dtype): read x instead."""
    return m["x"] if _same_type(g, m.root, m["x"]) else None


def compose_transposes(g: Graph, m: Match) -> Value | None:
    """T(T(x, p1), p2) reads x's axis p1[p2[i]] at axis i: one Transpose, none if identity."""
    x = m["x"]
    rank = g.type_of(x).rank
    inner = transpose_perm(g.attrs(m["inner"].node)["perm"], rank)
    outer = transpose_perm(g.attrs(m.root.node)["perm"], rank)
    perm = tuple(inner[i] for i in outer)
    if perm == tuple(range(rank)):
        return x
    return g.add("Transpose", x, perm=perm)


def identity_transpose(g: Graph, m: Match) -> Value | None:
    rank = g.type_of(m["x"]).rank
    perm = transpose_perm(g.attrs(m.root.node)["perm"], rank)
    return m["x"] if perm == tuple(range(rank)) else None


def merge_reshapes(g: Graph, m: Match) -> Value | None:
    """Reshape keeps the row-major element order, so only the last shape matters."""
    shape = g.type_of(m.root).shape
    if g.type_of(m["x"]).shape == shape:
        return m["x"]
    return g.add("Reshape", m["x"], shape=shape)


def _float_input_const(g: Graph, m: Match) -> np.ndarray | None:
    """The constant operand when x is a float and the op leaves x's type unchanged."""
    if not g.dtype_of(m["x"]).is_float or not _same_type(g, m.root, m["x"]):
        return None
    return g.constant_value(m["c"])


def square_to_mul(g: Graph, m: Match) -> Value | None:
    """Pow(x, 2) -> x*x (floats only: integer Pow goes through float64 and back)."""
    c = _float_input_const(g, m)
    if c is None or not np.all(c == 2):
        return None
    return g.add("Mul", m["x"], m["x"])


def exact_reciprocal(c: np.ndarray) -> np.ndarray | None:
    """1/c in c's dtype when that is exact for every element (each c = +-2**k and 2**-k
    representable), else None. Only then is x/c == x*(1/c) bit for bit: both are the one
    rounding of the same real number. For other c, 1/c is itself rounded, and x*(1/c) can be
    one ulp off x/c (x/3 vs x*0.33333334)."""
    wide = np.asarray(c, np.float64)
    if wide.size == 0 or not np.all(np.isfinite(wide)):
        return None
    mantissa, _ = np.frexp(wide)
    if not np.all(np.abs(mantissa) == 0.5):  # zero has mantissa 0: excluded too
        return None
    recip = 1.0 / wide  # exact in float64: a power of two well inside its range
    with np.errstate(over="ignore", under="ignore"):
        narrow = recip.astype(c.dtype)
    if not np.array_equal(narrow.astype(np.float64), recip):  # overflow or underflow
        return None
    return narrow


def div_to_mul(g: Graph, m: Match) -> Value | None:
    if not g.dtype_of(m["x"]).is_float:
        return None
    recip = exact_reciprocal(g.constant_value(m["c"]))
    if recip is None:
        return None
    return g.add("Mul", m["x"], g.add_constant(recip))


def gather_all_in_order(g: Graph, m: Match) -> Value | None:
    """Gather of every index of the axis, in order, only reshapes that axis into the
    indices' shape (row-major order is unchanged): a view instead of a kernel."""
    indices = g.constant_value(m["c"])
    x = g.type_of(m["x"])
    axis = g.attrs(m.root.node)["axis"] % max(x.rank, 1)
    if g.dtype_of(m.root) != x.dtype or not np.array_equal(
            indices.reshape(-1), np.arange(x.shape[axis])):
        return None
    return g.add("Reshape", m["x"], shape=g.type_of(m.root).shape)


# -- the table ------------------------------------------------------------------------------
RULES: tuple[Rule, ...] = (
    Rule(op.Mul(X, C), functools.partial(drop_unit, unit=1), doc="x*1 -> x"),
    Rule(op.Add(X, C), functools.partial(drop_unit, unit=0), doc="x+0 -> x"),
    Rule(op.Sub(X, C), functools.partial(drop_unit, unit=0), doc="x-0 -> x"),
    Rule(op.Div(X, C), functools.partial(drop_unit, unit=1), doc="x/1 -> x"),
    Rule(op.Neg(op.Neg(X)), lambda g, m: m["x"], doc="-(-x) -> x"),
    Rule(op.Transpose(X), identity_transpose, doc="transpose(x, identity) -> x"),
    Rule(op.Transpose(op.Transpose(X, name="inner")), compose_transposes,
         doc="transpose(transpose(x)) -> transpose(x)"),
    Rule(op.Reshape(X), bypass, doc="reshape(x, x.shape) -> x"),
    Rule(op.Reshape(op.Reshape(X)), merge_reshapes, doc="reshape(reshape(x)) -> reshape(x)"),
    Rule(op.Cast(X), bypass, doc="cast(x, x.dtype) -> x"),
    Rule(op.Expand(X), bypass, doc="expand(x, x.shape) -> x"),
    Rule(op.Pow(X, C), square_to_mul, doc="x**2 -> x*x"),
    # No x**0.5 -> sqrt(x): pow(-inf, 0.5) is +inf but sqrt(-inf) is NaN.
    Rule(op.Div(X, C), div_to_mul, doc="x/2**k -> x*2**-k"),
    Rule(op.Gather(X, C), gather_all_in_order, doc="gather(x, arange) -> reshape(x)"),
)


# -- the engine -----------------------------------------------------------------------------
class ApplyRules:
    """Rewrite every node with the first rule (in table order) that applies, sweeping until
    nothing changes or `max_sweeps` ran; nodes left dead are removed (graph inputs stay).
    Stats count rewrites per rule doc."""

    name = "ApplyRules"

    def __init__(self, rules: Sequence[Rule] = RULES, max_sweeps: int = 8) -> None:
        self.rules = tuple(rules)
        self.max_sweeps = max_sweeps
        self._by_op: dict[str, list[Rule]] = {}
        for rule in self.rules:
            self._by_op.setdefault(rule.pattern.op, []).append(rule)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats: Counter[str] = Counter()
        for _ in range(self.max_sweeps):
            if not self._sweep(graph, stats):
                break
        return PassResult(bool(stats), dict(stats))

    def _sweep(self, graph: Graph, stats: Counter[str]) -> bool:
        removed: set[int] = set()
        changed = False
        for node in graph.topological_order():
            if node in removed or graph.op(node) not in self._by_op:
                continue
            rewritten = self._rewrite(graph, node)
            if rewritten is None:
                continue
            rule, new = rewritten
            graph.replace_all_uses(Value(node, 0), new)
            removed |= remove_dead(graph, node)
            stats[rule.doc] += 1
            changed = True
            log.debug("rule %r rewrote %s", rule.doc, node)
        return changed

    def _rewrite(self, graph: Graph, node: int) -> tuple[Rule, Value] | None:
        root = Value(node, 0)
        for rule in self._by_op[graph.op(node)]:
            for binds in _match(graph, root, rule.pattern, {}):
                new = rule.rewrite(graph, Match(root, binds))
                if new is not None:
                    return rule, new
        return None


def remove_dead(graph: Graph, node: int) -> set[int]:
    """Remove `node` and then whatever fed only it; graph inputs and outputs stay."""
    removed: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in removed or graph.op(n) == "Input":
            continue
        values = [Value(n, p) for p in range(len(graph.output_types(n)))]
        if any(graph.users_of(v) or graph.is_output(v) for v in values):
            continue
        stack.extend(v.node for v in graph.inputs_of(n))
        graph.remove_node(n)
        removed.add(n)
    return removed
