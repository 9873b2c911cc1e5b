"""Simplification passes: each rewrites what it should (before/expected), leaves near misses
alone (changed is False), keeps the verifier happy and preserves the numpy semantics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import ember
from ember.errors import EmberError, PassError
from ember.frontends.builder import GraphBuilder
from ember.ir import Graph, verify
from ember.lowering import PassContext, PassManager, build_pipeline
from ember.lowering.simplify import (
    EliminateCommonSubexpressions,
    EliminateDeadCode,
    FoldConstants,
    RemoveIdentities,
)
from ember.runtime.numpy import evaluate_graph
from tests.harness import assert_close
from tests.strategies import array_for, broadcastable_shapes

CTX = PassContext(opt_level=1)


def ops_of(graph: Graph) -> list[str]:
    return [graph.op(n) for n in graph.topological_order() if graph.op(n) not in ("Input", "Constant")]


def run_pass(p, graph: Graph):
    before = {name: np.linspace(-2, 2, graph.type_of(v).size, dtype=np.float32).reshape(
        graph.type_of(v).shape) for name, v in graph.input_values().items()}
    expected = evaluate_graph(graph, before)
    result = p.run(graph, CTX)
    verify(graph)
    got = evaluate_graph(graph, before)
    for name in expected:
        assert_close(got[name], expected[name], name)
    return result


def test_fold_constants_folds_constant_subgraph():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    c = b.Exp(b.constant(np.ones(3, np.float32)))
    b.output("y", b.Add(x, c))
    g = b.build()
    result = run_pass(FoldConstants(), g)
    assert result.changed and result.stats["folded"] == 1
    assert ops_of(g) == ["Add"]


def test_fold_constants_leaves_input_dependent_nodes():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    b.output("y", b.Exp(x))
    g = b.build()
    assert run_pass(FoldConstants(), g).changed is False


def test_fold_constants_respects_size_limit():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    c = b.Exp(b.constant(np.ones(3, np.float32)))
    b.output("y", b.Add(x, c))
    g = b.build()
    assert run_pass(FoldConstants(size_limit=2), g).changed is False


def test_dead_code_is_removed_but_inputs_stay():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    unused = b.input("unused", (4,))
    b.Neg(unused)
    b.output("y", b.Relu(x))
    g = b.build()
    result = run_pass(EliminateDeadCode(), g)
    assert result.changed and ops_of(g) == ["Relu"]
    assert g.input_names() == ["x", "unused"]


def test_dead_code_negative():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    b.output("y", b.Relu(x))
    assert run_pass(EliminateDeadCode(), b.build()).changed is False


def test_cse_merges_identical_nodes():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    b.output("y", b.Add(b.Exp(x), b.Exp(x)))
    g = b.build()
    result = run_pass(EliminateCommonSubexpressions(), g)
    assert result.stats["merged"] == 1 and ops_of(g) == ["Exp", "Add"]


def test_cse_keeps_nodes_with_different_attributes():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    b.output("y", b.Add(b.LeakyRelu(x, alpha=0.1), b.LeakyRelu(x, alpha=0.2)))
    assert run_pass(EliminateCommonSubexpressions(), b.build()).changed is False


def test_cse_merges_equal_constants():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    one = b.constant(np.ones(3, np.float32))
    other = b.constant(np.ones(3, np.float32))
    b.output("y", b.Add(b.Mul(x, one), b.Mul(x, other)))
    g = b.build()
    result = run_pass(EliminateCommonSubexpressions(), g)
    assert result.stats["merged"] == 2  # the constant, then the Mul that now repeats


def test_identity_removal_keeps_outputs():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    b.output("y", b.Identity(b.Relu(x)))
    g = b.build()
    result = run_pass(RemoveIdentities(), g)
    assert result.changed and ops_of(g) == ["Relu"]


def test_identity_removal_negative():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    b.output("y", b.Relu(x))
    assert run_pass(RemoveIdentities(), b.build()).changed is False


def test_pass_manager_records_and_wraps_failures():
    class Broken:
        name = "Broken"

        def run(self, graph, ctx):
            raise EmberError("boom")

    b = GraphBuilder()
    x = b.input("x", (2,))
    b.output("y", b.Relu(x))
    manager = PassManager([FoldConstants(), Broken()], verify=True)
    with pytest.raises(PassError, match="Broken failed after FoldConstants: boom"):
        manager.run(b.build(), CTX)


def test_bad_opt_level_is_an_error():
    with pytest.raises(EmberError, match="opt_level"):
        build_pipeline(7)


UNARY = ["Relu", "Neg", "Exp", "Tanh", "Sigmoid", "Identity", "Abs"]
BINARY = ["Add", "Sub", "Mul", "Max", "Min"]


@st.composite
def random_elementwise_graph(draw):
    """Random DAGs of unary/binary elementwise ops over broadcast inputs and constants, with
    repeated subexpressions, identities and dead branches."""
    shapes = draw(broadcastable_shapes(3, min_rank=1, max_rank=3, max_dim=7))
    b = GraphBuilder("random")
    values = [b.input(f"x{i}", s) for i, s in enumerate(shapes[:2])]
    values.append(b.constant(array_for(draw(st.integers(0, 99)), shapes[2], ember.ir.DType.FLOAT32)))
    for _ in range(draw(st.integers(1, 10))):
        if draw(st.booleans()):
            op = draw(st.sampled_from(UNARY))
            values.append(b.op(op, draw(st.sampled_from(values))))
        else:
            op = draw(st.sampled_from(BINARY))
            values.append(b.op(op, draw(st.sampled_from(values)), draw(st.sampled_from(values))))
    outputs = draw(st.lists(st.sampled_from(values[3:] or values), min_size=1, max_size=3, unique=True))
    for i, v in enumerate(outputs):
        b.output(f"y{i}", v)
    feeds = {f"x{i}": array_for(draw(st.integers(0, 99)), s, ember.ir.DType.FLOAT32)
             for i, s in enumerate(shapes[:2])}
    return b.build(), feeds


@pytest.mark.parametrize("opt_level", [1, 2, 3])
@given(case=random_elementwise_graph())
def test_pipelines_preserve_semantics_on_random_graphs(opt_level, case):
    graph, feeds = case
    expected = evaluate_graph(graph, feeds)
    lowered = graph.copy()
    PassManager(build_pipeline(opt_level), verify=True).run(lowered, CTX)
    got = evaluate_graph(lowered, feeds)
    for name in expected:
        assert_close(got[name], expected[name], name)
