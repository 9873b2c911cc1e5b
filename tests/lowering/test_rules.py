"""ApplyRules: every rule rewrites its positive case (before/expected op lists), leaves its
near miss alone (changed is False), keeps the verifier happy, the output names, and the
numpy semantics."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ember.frontends.builder import GraphBuilder
from ember.ir import DType, Graph, verify
from ember.lowering import FixedPoint, PassContext, PassManager
from ember.lowering.rules import RULES, ApplyRules, Rule, exact_reciprocal, op, X
from ember.lowering.simplify import EliminateDeadCode
from ember.runtime.numpy import evaluate_graph
from tests.harness import assert_close

CTX = PassContext(opt_level=1)
F32 = np.float32


def ops_of(graph: Graph) -> list[str]:
    return [graph.op(n) for n in graph.topological_order()
            if graph.op(n) not in ("Input", "Constant")]


def random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, value in graph.input_values().items():
        t = graph.type_of(value)
        if t.dtype.is_float:
            arrays[name] = rng.standard_normal(t.shape).astype(t.dtype.np_dtype)
        else:
            arrays[name] = rng.integers(-50, 50, t.shape).astype(t.dtype.np_dtype)
    return arrays


def run_rules(graph: Graph, exact: bool = False):
    """Run ApplyRules; check verify, output names and semantics (bit-exact if `exact`)."""
    inputs = random_inputs(graph)
    expected = evaluate_graph(graph, inputs)
    names = [name for name, _ in graph.outputs]
    result = ApplyRules().run(graph, CTX)
    verify(graph)
    assert [name for name, _ in graph.outputs] == names
    got = evaluate_graph(graph, inputs)
    for name in names:
        if exact:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        else:
            assert_close(got[name], expected[name], name)
    return result


def graph_of(inputs: dict[str, tuple], body: Callable) -> Graph:
    b = GraphBuilder()
    values = [b.input(name, shape, dtype) for name, (shape, dtype) in inputs.items()]
    b.output("y", body(b, *values))
    return b.build()


def x_(shape: tuple[int, ...], dtype: DType = DType.FLOAT32) -> dict[str, tuple]:
    return {"x": (shape, dtype)}


# doc -> (positive graph, ops expected after it, near-miss graph)
CASES: dict[str, tuple[Callable[[], Graph], list[str], Callable[[], Graph]]] = {
    "x*1 -> x": (
        lambda: graph_of(x_((3,)), lambda b, x: b.Mul(b.constant(np.ones(3, F32)), x)),
        [],
        # (1,) * ones((3,)) broadcasts x to (3,): the Mul is not removable
        lambda: graph_of(x_((1,)), lambda b, x: b.Mul(x, b.constant(np.ones(3, F32)))),
    ),
    "x+0 -> x": (
        lambda: graph_of(x_((2, 3)), lambda b, x: b.Relu(b.Add(x, b.constant(np.zeros(3, F32))))),
        ["Relu"],
        lambda: graph_of(x_((2, 3)), lambda b, x: b.Add(x, b.constant(F32([0, 0, 1e-30])))),
    ),
    "x-0 -> x": (
        lambda: graph_of(x_((2, 3)), lambda b, x: b.Sub(x, b.constant(F32(0)))),
        [],
        lambda: graph_of(x_((2, 3)), lambda b, x: b.Sub(b.constant(F32(0)), x)),
    ),
    "x/1 -> x": (
        lambda: graph_of(x_((2, 3), DType.INT32),
                         lambda b, x: b.Div(x, b.constant(np.ones((2, 3), np.int32)))),
        [],
        lambda: graph_of(x_((2, 3)), lambda b, x: b.Div(b.constant(F32(1)), x)),
    ),
    "-(-x) -> x": (
        lambda: graph_of(x_((4,)), lambda b, x: b.Neg(b.Neg(x))),
        [],
        lambda: graph_of(x_((4,)), lambda b, x: b.Neg(b.Abs(b.Neg(x)))),
    ),
    "transpose(x, identity) -> x": (
        lambda: graph_of(x_((2, 3, 4)), lambda b, x: b.Exp(b.Transpose(x, perm=(0, 1, 2)))),
        ["Exp"],
        lambda: graph_of(x_((2, 3, 4)), lambda b, x: b.Transpose(x, perm=(0, 2, 1))),
    ),
    "transpose(transpose(x)) -> transpose(x)": (
        lambda: graph_of(x_((2, 3, 4)), lambda b, x: b.Transpose(
            b.Transpose(x, perm=(1, 0, 2)), perm=(0, 2, 1))),
        ["Transpose"],
        lambda: graph_of(x_((2, 3, 4)), lambda b, x: b.Transpose(
            b.Neg(b.Transpose(x, perm=(1, 0, 2))), perm=(0, 2, 1))),
    ),
    "reshape(x, x.shape) -> x": (
        lambda: graph_of(x_((2, 6)), lambda b, x: b.Reshape(x, shape=(2, 6))),
        [],
        lambda: graph_of(x_((2, 6)), lambda b, x: b.Reshape(x, shape=(6, 2))),
    ),
    "reshape(reshape(x)) -> reshape(x)": (
        lambda: graph_of(x_((2, 6)), lambda b, x: b.Reshape(
            b.Reshape(x, shape=(3, 4)), shape=(4, 3))),
        ["Reshape"],
        lambda: graph_of(x_((2, 6)), lambda b, x: b.Reshape(
            b.Neg(b.Reshape(x, shape=(3, 4))), shape=(4, 3))),
    ),
    "cast(x, x.dtype) -> x": (
        lambda: graph_of(x_((5,)), lambda b, x: b.Cast(x, to=DType.FLOAT32)),
        [],
        lambda: graph_of(x_((5,)), lambda b, x: b.Cast(x, to=DType.FLOAT16)),
    ),
    "expand(x, x.shape) -> x": (
        lambda: graph_of(x_((2, 3)), lambda b, x: b.Expand(x, shape=(1, 3))),
        [],
        lambda: graph_of(x_((1, 3)), lambda b, x: b.Expand(x, shape=(2, 3))),
    ),
    "x**2 -> x*x": (
        lambda: graph_of(x_((2, 3)), lambda b, x: b.Pow(x, b.constant(F32(2)))),
        ["Mul"],
        lambda: graph_of(x_((2, 3)), lambda b, x: b.Pow(x, b.constant(F32([2, 2, 3])))),
    ),
    "x/2**k -> x*2**-k": (
        lambda: graph_of(x_((2, 3)), lambda b, x: b.Div(x, b.constant(F32([2, 0.25, -1024])))),
        ["Mul"],
        lambda: graph_of(x_((2, 3)), lambda b, x: b.Div(x, b.constant(F32([2, 3, 4])))),
    ),
    "gather(x, arange) -> reshape(x)": (
        lambda: graph_of(x_((2, 3, 4)), lambda b, x: b.Gather(
            x, b.constant(np.arange(3).reshape(1, 3, 1)), axis=1)),
        ["Reshape"],
        # every index, but not in order: a real gather
        lambda: graph_of(x_((2, 3, 4)), lambda b, x: b.Gather(
            x, b.constant(np.array([0, 2, 1])), axis=1)),
    ),
}


def test_every_rule_has_cases_and_a_unique_doc():
    docs = [rule.doc for rule in RULES]
    assert len(set(docs)) == len(docs)
    assert set(CASES) == set(docs)


@pytest.mark.parametrize("doc", list(CASES))
def test_rule_rewrites(doc: str):
    make, expected_ops, _ = CASES[doc]
    graph = make()
    result = run_rules(graph, exact=True)
    assert result.changed is True
    assert result.stats.get(doc, 0) >= 1, result.stats
    assert ops_of(graph) == expected_ops


@pytest.mark.parametrize("doc", list(CASES))
def test_rule_leaves_near_miss(doc: str):
    _, _, make = CASES[doc]
    graph = make()
    before = ops_of(graph)
    result = run_rules(graph)
    assert result.changed is False, result.stats
    assert result.stats == {}
    assert ops_of(graph) == before


def test_transposes_composing_to_identity_vanish():
    graph = graph_of(x_((2, 3, 4)), lambda b, x: b.Transpose(
        b.Transpose(x, perm=(1, 2, 0)), perm=(2, 0, 1)))
    assert run_rules(graph).changed
    assert ops_of(graph) == []


def test_composed_transpose_has_composed_perm():
    graph = graph_of(x_((2, 3, 4)), lambda b, x: b.Transpose(
        b.Transpose(x, perm=(1, 2, 0)), perm=(1, 0, 2)))
    run_rules(graph, exact=True)
    (node,) = [n for n in graph.nodes() if graph.op(n) == "Transpose"]
    assert tuple(graph.attrs(node)["perm"]) == (2, 1, 0)


def test_reshape_chain_back_to_input_shape_vanishes():
    graph = graph_of(x_((2, 6)), lambda b, x: b.Reshape(b.Reshape(x, shape=(12,)), shape=(2, 6)))
    assert run_rules(graph).changed
    assert ops_of(graph) == []


def test_chains_collapse_and_stats_count_each_rewrite():
    graph = graph_of(x_((4,)), lambda b, x: b.Neg(b.Neg(b.Neg(b.Neg(
        b.Mul(x, b.constant(np.ones(4, F32))))))))
    result = run_rules(graph)
    assert ops_of(graph) == []
    assert result.stats == {"-(-x) -> x": 2, "x*1 -> x": 1}
    assert len(graph) == 1  # dead constants and Negs were removed too


def test_shared_inner_node_stays_for_its_other_users():
    b = GraphBuilder()
    x = b.input("x", (3,))
    inner = b.Neg(x)
    b.output("y", b.Neg(inner))
    b.output("z", inner)
    graph = b.build()
    run_rules(graph)
    assert ops_of(graph) == ["Neg"]
    assert graph.outputs[0][1] == graph.input_values()["x"]


def test_integer_pow_is_not_rewritten():
    graph = graph_of(x_((3,), DType.INT32), lambda b, x: b.Pow(x, b.constant(np.int32(2))))
    assert run_rules(graph).changed is False


@pytest.mark.parametrize("c, exact", [
    (F32(0.5), True), (F32(-8), True), (F32(2.0 ** -126), True),
    (F32(3), False), (F32(0), False), (F32(np.inf), False), (F32(0.1), False),
    (np.float16(2.0 ** -24), False),  # 1/c = 2**24 overflows float16
    (np.float16(2.0 ** 15), True),  # 1/c = 2**-15 is a float16 subnormal, still exact
])
def test_exact_reciprocal_only_for_representable_powers_of_two(c, exact):
    recip = exact_reciprocal(np.asarray(c))
    assert (recip is not None) is exact
    if exact:
        assert recip.dtype == np.asarray(c).dtype
        assert float(recip) * float(c) == 1.0


def test_division_by_power_of_two_is_bit_exact_on_extremes():
    values = F32([1e-45, -3e-39, 3.4e38, -0.0, np.inf, np.nan, 1.0000001])
    graph = graph_of(x_((7,)), lambda b, x: b.Div(x, b.constant(F32(0.25))))
    assert ApplyRules().run(graph, CTX).changed
    assert ops_of(graph) == ["Mul"]
    got = evaluate_graph(graph, {"x": values})["y"]
    with np.errstate(over="ignore"):
        want = values / F32(0.25)
    np.testing.assert_array_equal(got, want)


def test_custom_rule_table_and_pass_manager_fixed_point():
    only_neg = ApplyRules(rules=(Rule(op.Neg(op.Neg(X)), lambda g, m: m["x"], doc="nn"),))
    graph = graph_of(x_((3,)), lambda b, x: b.Neg(b.Neg(b.Mul(x, b.constant(np.ones(3, F32))))))
    manager = PassManager([FixedPoint("rules", (only_neg, EliminateDeadCode()))], verify=True)
    records = manager.run(graph, CTX)
    assert records[0].stats == {"nn": 1}
    assert ops_of(graph) == ["Mul"]  # x*1 is not in this table
