"""Converter of ONNX's Einsum onto ember's existing ops, so that it runs on the device.

The equation is parsed into one label per axis (an ellipsis becomes as many private labels
as the broadcast dims it stands for, right-aligned as numpy does; without "->" the output is
the ellipsis then the labels used once, in alphabetical order). Then, per operand, a label
repeated within it takes the diagonal (Transpose, Reshape, and a Gather of the diagonal's
flat positions), and a label no one else needs is summed (ReduceSum). Operands are combined
left to right, each pair as one batched MatMul: [batch..., kept by A, summed] @ [batch...,
summed, kept by B] (Transpose and Reshape around it). What the output does not name is
summed at the end, and a Transpose puts the output's order.
"""

from __future__ import annotations

import math
import string

import numpy as np
import onnx

from ember.errors import ShapeError, UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import Value

__all__ = ["parse_einsum"]

_LETTERS = set(string.ascii_letters)
_ELLIPSIS_LABELS = "0123456789"  # private labels for the dims an ellipsis stands for


def parse_einsum(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """(labels of each operand, labels of the output), one character per axis."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ShapeError(f"Einsum equation {equation!r} names {len(terms)} operands, "
                         f"{len(ranks)} are given")
    ellipsis_rank = 0
    named: list[tuple[str, str]] = []
    for term, rank in zip(terms, ranks):
        head, dots, tail = term.partition("...")
        letters = head + tail
        if "." in letters or not set(letters) <= _LETTERS:
            raise ShapeError(f"Einsum term {term!r} holds characters other than letters "
                             f"and one ellipsis")
        extra = rank - len(letters)
        if extra < 0 or (extra and not dots):
            raise ShapeError(f"Einsum term {term!r} does not fit an operand of rank {rank}")
        ellipsis_rank = max(ellipsis_rank, extra)
        named.append((head, tail))
    if ellipsis_rank > len(_ELLIPSIS_LABELS):
        raise UnsupportedOpError(f"Einsum ellipsis of {ellipsis_rank} dims")
    dims = _ELLIPSIS_LABELS[:ellipsis_rank]
    operands = []
    for (head, tail), rank in zip(named, ranks):
        extra = rank - len(head) - len(tail)
        operands.append(head + (dims[ellipsis_rank - extra:] if extra else "") + tail)
    if arrow:
        head, dots, tail = rhs.partition("...")
        if not set(head + tail) <= _LETTERS:
            raise ShapeError(f"Einsum output {rhs!r} holds characters other than letters "
                             f"and one ellipsis")
        output = head + (dims if dots else "") + tail
        if len(set(output)) != len(output) or not set(output) <= set("".join(operands)):
            raise ShapeError(f"Einsum output {rhs!r} repeats a label or names one no "
                             f"operand has")
    else:
        counts = {c: "".join(terms).count(c) for c in set("".join(terms)) if c in _LETTERS}
        output = dims + "".join(sorted(c for c, n in counts.items() if n == 1))
    return operands, output


class _Builder:
    """Operands as (value, labels) and the ops that reshape them."""

    def __init__(self, ctx: ImportContext) -> None:
        self.ctx = ctx

    def shape(self, x: Value) -> tuple[int, ...]:
        return self.ctx.type_of(x).shape

    def transpose(self, x: Value, labels: str, order: str) -> Value:
        if labels == order:
            return x
        return self.ctx.add("Transpose", [x], {"perm": tuple(labels.index(c) for c in order)})

    def reshape(self, x: Value, shape: tuple[int, ...]) -> Value:
        if self.shape(x) == tuple(shape):
            return x
        return self.ctx.add("Reshape", [x], {"shape": tuple(shape)})

    def diagonal(self, x: Value, labels: str) -> tuple[Value, str]:
        """Take the diagonal over every label the operand repeats."""
        while len(set(labels)) != len(labels):
            label = next(c for c in labels if labels.count(c) > 1)
            first = labels.index(label)
            second = labels.index(label, first + 1)
            shape = self.shape(x)
            n = shape[first]
            if shape[second] != n:
                raise ShapeError(f"Einsum label {label!r} has sizes {n} and {shape[second]} "
                                 f"in one operand")
            others = [i for i in range(len(labels)) if i not in (first, second)]
            rest = "".join(labels[i] for i in others)
            perm = tuple(others) + (first, second)
            moved = x if perm == tuple(range(len(perm))) else self.ctx.add(
                "Transpose", [x], {"perm": perm})
            flat = self.reshape(moved, tuple(shape[i] for i in others) + (n * n,))
            positions = self.ctx.constant(np.arange(n, dtype=np.int64) * (n + 1))
            x = self.ctx.add("Gather", [flat, positions], {"axis": len(rest)})
            labels = rest + label
        return x, labels

    def sum_out(self, x: Value, labels: str, keep: set[str]) -> tuple[Value, str]:
        axes = tuple(i for i, c in enumerate(labels) if c not in keep)
        if not axes:
            return x, labels
        x = self.ctx.add("ReduceSum", [x], {"axes": axes, "keepdims": 0})
        return x, "".join(c for c in labels if c in keep)

    def contract(self, a: Value, la: str, b: Value, lb: str, keep: set[str]
                 ) -> tuple[Value, str]:
        """A and B as one MatMul, summing the shared labels not in `keep`."""
        sa, sb = self.shape(a), self.shape(b)
        size_a = {c: sa[i] for i, c in enumerate(la)}
        size_b = {c: sb[i] for i, c in enumerate(lb)}
        batch = "".join(c for c in la if c in lb and c in keep)
        summed = "".join(c for c in la if c in lb and c not in keep)
        only_a = "".join(c for c in la if c not in lb)
        only_b = "".join(c for c in lb if c not in la)
        for c in summed:
            if size_a[c] != size_b[c]:
                raise ShapeError(f"Einsum label {c!r} has sizes {size_a[c]} and "
                                 f"{size_b[c]} in the operands it sums over")
        m = math.prod(size_a[c] for c in only_a)
        k = math.prod(size_a[c] for c in summed)
        n = math.prod(size_b[c] for c in only_b)
        a2 = self.reshape(self.transpose(a, la, batch + only_a + summed),
                          tuple(size_a[c] for c in batch) + (m, k))
        b2 = self.reshape(self.transpose(b, lb, batch + summed + only_b),
                          tuple(size_b[c] for c in batch) + (k, n))
        product = self.ctx.add("MatMul", [a2, b2])
        out_batch = self.shape(product)[:len(batch)]
        shape = out_batch + tuple(size_a[c] for c in only_a) + tuple(size_b[c] for c in only_b)
        return self.reshape(product, shape), batch + only_a + only_b


@onnx_op("Einsum")
def _einsum(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    equation = ctx.attr(node, "equation")
    if equation is None:
        raise UnsupportedOpError(f"{ctx.where}: attribute equation is required")
    values = [v for v in ctx.inputs(node) if v is not None]
    if not values:
        raise UnsupportedOpError(f"{ctx.where}: Einsum needs at least one input")
    terms, output = parse_einsum(equation, [ctx.type_of(v).rank for v in values])
    build = _Builder(ctx)
    operands = [build.diagonal(v, t) for v, t in zip(values, terms)]
    # Each operand first sums the labels that neither the output nor another operand has.
    for i, (x, labels) in enumerate(operands):
        others = set(output).union(*(set(t) for j, (_, t) in enumerate(operands) if j != i))
        operands[i] = build.sum_out(x, labels, others)
    x, labels = operands[0]
    for index, (y, ly) in enumerate(operands[1:], start=1):
        later = set(output).union(*(set(t) for _, t in operands[index + 1:]))
        x, labels = build.contract(x, labels, y, ly, later)
    x, labels = build.sum_out(x, labels, set(output))
    x = build.transpose(x, labels, output)
    if x is values[0] and len(values) == 1:
        x = ctx.add("Identity", [x])
    return [x]
