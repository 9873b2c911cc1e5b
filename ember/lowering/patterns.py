"""Recognize what exporters decompose and turn it back into one op: LayerNorm, RMSNorm, GELU
(erf and tanh forms) and SiLU / Swish.

PyTorch before opset 17, TF converters and hand-written HF modules write these as chains of
elementwise and reduce ops: one kernel and one pass over memory each, where one row kernel
(or one elementwise op) does. Each pass finds its chain, checks every condition under which
the single op computes the same thing, and replaces the chain's last node by that op;
anything else is left alone. The conditions common to all patterns:

- every intermediate value is used only inside the pattern and is no graph output (one that
  escapes must be computed anyway: then nothing is rewritten);
- constants are scalars (one element); a product of n of them matches its value within
  RTOL relative, or n * eps of their dtype where that is larger (float16, bfloat16: they
  cannot hold the value closer);
- values keep x's shape (no constant broadcasts x to a larger shape).

The passes run after the algebraic rules (rules.py), so both the raw and the rewritten forms
match: Pow(x, 2) or Mul(x, x), Div(x, c) or Mul(x, 1/c). A product is read as the multiset of
its factors, so any association and operand order matches ((x*0.5)*y, 0.5*(y*x), x*y/2, ...).
A pass skips where the target (`ctx.supports`) runs the chain's last op but not the new one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from ember.errors import EmberError
from ember.ir import DType, Graph, Value
from ember.lowering.passes import PassContext, PassResult
from ember.lowering.rules import remove_dead

__all__ = ["FuseLayerNorm", "FuseRMSNorm", "FuseGelu", "FuseSilu", "PATTERN_PASSES", "RTOL"]

RTOL = 1e-6  # relative tolerance of a matched constant (see the module docstring)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715
_MAX_FACTORS = 8  # a product with more factors is no pattern of this module


# -- reading the graph ---------------------------------------------------------------------
def _args(g: Graph, value: Value, op: str) -> list[Value] | None:
    """The inputs of the node behind `value` if it runs `op` (single-output ops only)."""
    if g.op(value.node) != op or len(g.output_types(value.node)) != 1:
        return None
    return g.inputs_of(value.node)


def _pairs(g: Graph, value: Value, op: str) -> list[tuple[Value, Value]]:
    """(a, b) and (b, a) for a commutative binary `op` node behind `value`."""
    args = _args(g, value, op)
    return [] if args is None else [(args[0], args[1]), (args[1], args[0])]


def _scalar(g: Graph, value: Value) -> tuple[float, float] | None:
    """(value, eps of its dtype) of a one-element float constant."""
    array = g.constant_value(value)
    if array is None or array.size != 1 or not DType.from_numpy(array.dtype).is_float:
        return None
    return float(array.reshape(-1)[0]), float(ml_dtypes.finfo(array.dtype).eps)


def _is_const(g: Graph, value: Value, target: float) -> bool:
    c = _scalar(g, value)
    return c is not None and abs(c[0] - target) <= max(RTOL, c[1]) * abs(target)


def _single_use(g: Graph, value: Value) -> bool:
    return len(g.users_of(value)) == 1 and not g.is_output(value)


@dataclass
class _Product:
    """A product read as its factors: non-constant `leaves` (repeats kept) times `scale`."""

    leaves: list[Value] = field(default_factory=list)
    scale: float = 1.0
    tol: float = RTOL

    def scale_is(self, target: float) -> bool:
        return abs(self.scale - target) <= self.tol * abs(target)

    def is_(self, leaves: Sequence[Value], scale: float) -> bool:
        return sorted(self.leaves) == sorted(leaves) and self.scale_is(scale)


def _factors(g: Graph, value: Value, interior: list[Value], *, root: bool = False
             ) -> _Product | None:
    """`value` as a product. Mul nodes, Div by a scalar constant and Pow(v, 2 or 3) are
    opened (and listed in `interior`) when used once, or always for the pattern's root."""
    out, stack, n_consts, eps = _Product(), [(value, root)], 0, 0.0
    while stack:
        v, force = stack.pop()
        opened = _open(g, v) if force or _single_use(g, v) else None
        if opened is None:
            c = _scalar(g, v)
            if c is None:
                out.leaves.append(v)
            else:
                out.scale *= c[0]
                n_consts, eps = n_consts + 1, max(eps, c[1])
            continue
        interior.append(v)
        factors, inverse = opened
        stack.extend((f, False) for f in factors)
        if inverse is not None:
            out.scale /= inverse[0]
            n_consts, eps = n_consts + 1, max(eps, inverse[1])
        if len(out.leaves) + len(stack) > _MAX_FACTORS:
            return None
    out.tol = max(RTOL, n_consts * eps)
    return out


def _open(g: Graph, v: Value) -> tuple[list[Value], tuple[float, float] | None] | None:
    """The factors of one node (and the constant it divides by), or None for a leaf."""
    op = g.op(v.node)
    if op == "Mul":
        return g.inputs_of(v.node), None
    if op == "Div":
        a, c = g.inputs_of(v.node)
        divisor = _scalar(g, c)
        return ([a], divisor) if divisor is not None and divisor[0] != 0 else None
    if op == "Pow":
        a, c = g.inputs_of(v.node)
        power = g.constant_value(c)  # float or int exponents: exporters write both
        if power is not None and power.size == 1 and float(power.reshape(-1)[0]) in (2, 3):
            return [a] * int(power.reshape(-1)[0]), None
    return None


def _one_plus(g: Graph, value: Value, fn: str, interior: list[Value]) -> Value | None:
    """z when value = 1 + fn(z) (either operand order)."""
    for one, f in _pairs(g, value, "Add"):
        args = _args(g, f, fn) if _is_const(g, one, 1.0) else None
        if args is not None:
            interior += [value, f]
            return args[0]
    return None


def _closed(g: Graph, root: Value, interior: Sequence[Value]) -> bool:
    """Every intermediate is read only by the pattern's nodes and is no graph output."""
    nodes = {v.node for v in interior} | {root.node}
    for v in interior:
        if v == root:
            continue
        if g.is_output(v) or any(u.node not in nodes for u in g.users_of(v)):
            return False
    return True


# -- rewriting -------------------------------------------------------------------------------
def _replace(g: Graph, ctx: PassContext, root: Value, op: str, inputs: Sequence[Value],
             attrs: dict[str, Any], created: Sequence[int] = ()) -> bool:
    """Put one `op` node in place of `root` and drop the chain; False (graph as before) when
    the op cannot take these inputs or cannot run where the chain could."""
    new_nodes = list(created)
    try:
        node = g.add_node(op, inputs, attrs, name=g.node_name(root.node))
        new_nodes.append(node)
        ok = g.output_types(node)[0] == g.type_of(root)
    except EmberError:
        ok = False
    if ok and ctx.supports is not None:
        ok = ctx.supports(g, node) or not ctx.supports(g, root.node)
    if not ok:
        for n in reversed(new_nodes):
            g.remove_node(n)
        return False
    g.replace_all_uses(root, Value(node, 0))
    remove_dead(g, root.node)
    return True


def _candidates(g: Graph, ops: frozenset[str]) -> list[Value]:
    return [Value(n, 0) for n in g.topological_order() if g.op(n) in ops]


# -- GELU and SiLU ---------------------------------------------------------------------------
def _same_type(g: Graph, x: Value, root: Value, interior: Sequence[Value]) -> bool:
    t = g.type_of(x)
    return t.dtype.is_float and all(g.type_of(v) == t for v in (root, *interior))


def _erf_arg(g: Graph, z: Value, x: Value, interior: list[Value]) -> bool:
    """z = x / sqrt(2) (as Div or as Mul by 1/sqrt(2))."""
    p = _factors(g, z, interior)
    return p is not None and p.is_([x], 1.0 / math.sqrt(2.0))


def _tanh_arg(g: Graph, u: Value, x: Value, interior: list[Value]) -> bool:
    """u = sqrt(2/pi) * (x + 0.044715 * x^3), or sqrt(2/pi) * x * (1 + 0.044715 * x^2)."""
    p = _factors(g, u, interior)
    if p is None or not p.scale_is(_SQRT_2_OVER_PI):
        return False
    if len(p.leaves) == 1:  # c * (x + k * x^3)
        for a, cube in _pairs(g, p.leaves[0], "Add"):
            inner: list[Value] = [p.leaves[0]]
            q = _factors(g, cube, inner) if a == x else None
            if q is not None and q.is_([x, x, x], _GELU_CUBIC):
                interior += inner
                return True
        return False
    if len(p.leaves) == 2 and x in p.leaves:  # c * x * (1 + k * x^2)
        rest = p.leaves[1 - p.leaves.index(x)]
        for one, square in _pairs(g, rest, "Add"):
            inner = [rest]
            q = _factors(g, square, inner) if _is_const(g, one, 1.0) else None
            if q is not None and q.is_([x, x], _GELU_CUBIC):
                interior += inner
                return True
    return False


def _gelu(g: Graph, root: Value) -> tuple[Value, str] | None:
    """(x, approximate) when root = 0.5 * x * (1 + erf(x / sqrt 2)) or its tanh form."""
    interior: list[Value] = []
    p = _factors(g, root, interior, root=True)
    if g.op(root.node) != "Mul" or p is None or len(p.leaves) != 2 or not p.scale_is(0.5):
        return None
    for i in (0, 1):
        x, bracket = p.leaves[i], p.leaves[1 - i]
        for fn, approximate, arg_ok in (("Erf", "none", _erf_arg), ("Tanh", "tanh", _tanh_arg)):
            inner = list(interior)
            z = _one_plus(g, bracket, fn, inner)
            if z is None or not arg_ok(g, z, x, inner):
                continue
            if _same_type(g, x, root, inner) and _closed(g, root, inner):
                return x, approximate
    return None


def _silu(g: Graph, root: Value) -> tuple[Value, float] | None:
    """(x, alpha) when root = x * sigmoid(alpha * x) (alpha a scalar constant, or 1)."""
    interior: list[Value] = []
    p = _factors(g, root, interior, root=True)
    if g.op(root.node) != "Mul" or p is None or len(p.leaves) != 2 or not p.scale_is(1.0):
        return None
    for i in (0, 1):
        x, s = p.leaves[i], p.leaves[1 - i]
        args = _args(g, s, "Sigmoid")
        if args is None:
            continue
        inner = interior + [s]
        z = _factors(g, args[0], inner)
        if z is None or z.leaves != [x] or not math.isfinite(z.scale):
            continue
        # alpha is taken as written (the product of the constants): nothing to compare
        if _same_type(g, x, root, inner) and _closed(g, root, inner):
            return x, z.scale
    return None


class FuseGelu:
    """0.5*x*(1+erf(x/sqrt2)) -> Gelu; 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715x^3))) -> Gelu tanh."""

    name = "FuseGelu"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats = {"none": 0, "tanh": 0}
        for root in _candidates(graph, frozenset({"Mul"})):
            if root.node not in graph.nx:
                continue
            found = _gelu(graph, root)
            if found is not None and _replace(graph, ctx, root, "Gelu", [found[0]],
                                              {"approximate": found[1]}):
                stats[found[1]] += 1
        return PassResult(sum(stats.values()) > 0, stats)


class FuseSilu:
    """x*sigmoid(x) -> Swish (SiLU), and x*sigmoid(beta*x) -> Swish(alpha=beta)."""

    name = "FuseSilu"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        fused = 0
        for root in _candidates(graph, frozenset({"Mul"})):
            if root.node not in graph.nx:
                continue
            found = _silu(graph, root)
            if found is not None and _replace(graph, ctx, root, "Swish", [found[0]],
                                              {"alpha": found[1]}):
                fused += 1
        return PassResult(fused > 0, {"fused": fused})


# -- LayerNorm and RMSNorm ---------------------------------------------------------------------
@dataclass
class _Norm:
    """A matched normalization: op(x, scale[, bias]) over the last `k` axes."""

    x: Value
    k: int
    eps: float
    out: Value
    stash: DType
    scale: Value | None = None
    bias: Value | None = None
    interior: list[Value] = field(default_factory=list)


def _trailing_mean(g: Graph, value: Value) -> tuple[Value, int] | None:
    """(input, k) when value = ReduceMean(input) over its last k >= 1 axes, keepdims=1."""
    args = _args(g, value, "ReduceMean")
    if args is None or not g.attrs(value.node)["keepdims"]:
        return None
    rank = g.type_of(args[0]).rank
    axes = sorted(a % rank for a in g.attrs(value.node)["axes"]) if rank else []
    k = len(axes)
    if k == 0 or axes != list(range(rank - k, rank)):
        return None
    return args[0], k


def _sqrt_of(g: Graph, value: Value, power: float, interior: list[Value]) -> Value | None:
    """v when value = v ** power: for 0.5 Sqrt(v) or Pow(v, 0.5); for -0.5 Pow(v, -0.5),
    Reciprocal(s) or 1 / s with s a square root of v."""
    args = _args(g, value, "Pow")
    if args is not None and _is_const(g, args[1], power):
        interior.append(value)
        return args[0]
    if power == 0.5:
        args = _args(g, value, "Sqrt")
        if args is not None:
            interior.append(value)
        return None if args is None else args[0]
    recip, div = _args(g, value, "Reciprocal"), _args(g, value, "Div")
    if recip is not None:
        s = recip[0]
    elif div is not None and _is_const(g, div[0], 1.0):
        s = div[1]
    else:
        return None
    inner = [value]
    v = _sqrt_of(g, s, 0.5, inner)
    if v is not None:
        interior += inner
    return v


def _norm_core(g: Graph, n: Value, centered: bool) -> _Norm | None:
    """n = d / sqrt(mean(d*d) + eps), d = x - mean(x) when centered else x."""
    forms: list[tuple[Value, Value, float]] = []
    div = _args(g, n, "Div")
    if div is not None:
        forms.append((div[0], div[1], 0.5))
    forms += [(a, b, -0.5) for a, b in _pairs(g, n, "Mul")]
    for d, s, power in forms:
        interior = [n]
        ve = _sqrt_of(g, s, power, interior)
        if ve is None:
            continue
        for var, eps_v in _pairs(g, ve, "Add"):
            eps = _scalar(g, eps_v)
            mean_sq = _trailing_mean(g, var)
            if eps is None or not math.isfinite(eps[0]) or mean_sq is None:
                continue
            sq, k = mean_sq
            inner = interior + [ve, var]
            p = _factors(g, sq, inner)
            if p is None or p.leaves != [d, d] or p.scale != 1.0 or g.type_of(ve) != g.type_of(var):
                continue
            x = d
            if centered:
                sub = _args(g, d, "Sub")
                mean = None if sub is None else _trailing_mean(g, sub[1])
                if mean is None or mean != (sub[0], k):
                    continue
                x, inner = sub[0], inner + [d, sub[1]]
            if g.type_of(n) != g.type_of(x) or not g.dtype_of(x).is_float:
                continue
            stash = DType.FLOAT64 if g.dtype_of(x) is DType.FLOAT64 else DType.FLOAT32
            return _Norm(x, k, eps[0], n, stash, interior=inner)
    return None


def _cast_back(g: Graph, m: _Norm) -> None:
    """x = Cast(x0) to a wider float and the result is cast back to x0's type: the op reads
    x0 and computes in the wider type (stash_type), as ONNX's definition does."""
    args = _args(g, m.x, "Cast")
    users = g.users_of(m.out)
    if args is None or len(users) != 1 or g.is_output(m.out):
        return
    x0, cast = args[0], Value(users[0].node, 0)
    t0, t = g.dtype_of(x0), g.dtype_of(m.x)
    if not (t0.is_float and t.is_float and t0.value.bits < t.value.bits):
        return
    if g.op(cast.node) != "Cast" or g.dtype_of(cast) is not t0:
        return
    m.interior.append(m.out)
    m.x, m.out, m.stash = x0, cast, t


def _affine(g: Graph, m: _Norm, op: str) -> Value | None:
    """v when the result's only use is out op v (either order), v broadcasting over the
    normalized axes only, with the result's dtype, not computed inside the pattern."""
    users = g.users_of(m.out)
    if len(users) != 1 or g.is_output(m.out):
        return None
    nxt = Value(users[0].node, 0)
    taken = {v.node for v in m.interior} | {m.out.node}
    rank = g.type_of(m.x).rank
    for a, v in _pairs(g, nxt, op):
        t = g.type_of(v)
        outer = t.shape[: max(t.rank - m.k, 0)]
        if a != m.out or v.node in taken or g.type_of(nxt) != g.type_of(m.out):
            continue
        if t.rank > rank or any(dim != 1 for dim in outer):
            continue
        m.interior.append(m.out)
        m.out = nxt
        return v
    return None


def _row_param(g: Graph, value: Value | None, m: _Norm, created: list[int]) -> Value:
    """Scale or bias as the op takes it: at most k dims (leading 1s dropped), ones if absent."""
    if value is None:
        ones = g.add_constant(np.ones((1,), g.dtype_of(m.out).np_dtype))
        created.append(ones.node)
        return ones
    t = g.type_of(value)
    if t.rank <= m.k:
        return value
    shape = t.shape[t.rank - m.k:]
    array = g.constant_value(value)
    if array is not None:
        new = g.add_constant(array.reshape(shape))
    else:
        new = g.add("Reshape", value, shape=shape)
    created.append(new.node)
    return new


class _FuseNorm:
    op = ""
    centered = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        fused = 0
        for n in _candidates(graph, frozenset({"Div", "Mul"})):
            if n.node not in graph.nx:
                continue
            m = _norm_core(graph, n, self.centered)
            if m is None or not _closed(graph, m.out, m.interior):
                continue
            _cast_back(graph, m)
            m.scale = _affine(graph, m, "Mul")
            if self.centered:
                m.bias = _affine(graph, m, "Add")
            if self._rewrite(graph, ctx, m):
                fused += 1
        return PassResult(fused > 0, {"fused": fused})

    def _rewrite(self, g: Graph, ctx: PassContext, m: _Norm) -> bool:
        created: list[int] = []
        inputs = [m.x, _row_param(g, m.scale, m, created)]
        attrs: dict[str, Any] = {"axis": -m.k, "epsilon": m.eps, "stash_type": m.stash}
        if self.centered:
            attrs["stats"] = 0
            if m.bias is not None:
                inputs.append(_row_param(g, m.bias, m, created))
        return _replace(g, ctx, m.out, self.op, inputs, attrs, created)


class FuseLayerNorm(_FuseNorm):
    """(x-mean)/sqrt(mean((x-mean)^2)+eps)[*gamma][+beta] over trailing axes -> LayerNorm."""

    name = "FuseLayerNorm"
    op = "LayerNormalization"
    centered = True


class FuseRMSNorm(_FuseNorm):
    """x/sqrt(mean(x^2)+eps)[*weight] over trailing axes (Casts around it too) -> RMSNorm."""

    name = "FuseRMSNorm"
    op = "RMSNormalization"
    centered = False


# In application order: LayerNorm before RMSNorm, whose pattern is LayerNorm's inner part.
PATTERN_PASSES = (FuseLayerNorm(), FuseRMSNorm(), FuseGelu(), FuseSilu())
