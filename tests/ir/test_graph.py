"""The Graph keeps ports, types and outputs consistent, and refuses unsafe mutations."""

from __future__ import annotations

import numpy as np
import pytest

from ember.errors import EmberError, ShapeError, UnsupportedOpError, VerifyError
from ember.frontends.builder import GraphBuilder
from ember.ir import DType, Graph, TensorType, Value, to_dot, to_text, verify


def small_graph():
    b = GraphBuilder("small")
    x = b.input("x", (2, 3))
    c = b.constant(np.ones(3, np.float32))
    y = b.Add(x, c)
    z = b.Relu(y)
    b.output("z", z)
    return b.build(), x, c, y, z


def test_types_are_inferred_with_broadcasting():
    g, x, c, y, z = small_graph()
    assert g.type_of(y) == TensorType((2, 3), DType.FLOAT32)
    assert g.inputs_of(y.node) == [x, c]
    assert [u.node for u in g.users_of(y)] == [z.node]


def test_broadcast_mismatch_names_both_shapes():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    y = b.input("y", (4,))
    with pytest.raises(ShapeError, match=r"\(2, 3\) and \(4,\)"):
        b.Add(x, y)


def test_unknown_op_lists_known_ops():
    g = Graph()
    with pytest.raises(UnsupportedOpError, match="Foo not registered; known: .*Add"):
        g.add_node("Foo")


def test_unknown_attribute_is_rejected():
    b = GraphBuilder()
    x = b.input("x", (2,))
    with pytest.raises(UnsupportedOpError, match="unknown attribute"):
        b.Relu(x, alpha=1.0)


def test_remove_node_refuses_while_used():
    g, x, c, y, z = small_graph()
    with pytest.raises(EmberError, match="still used"):
        g.remove_node(y.node)


def test_replace_all_uses_moves_consumers_and_outputs():
    g, x, c, y, z = small_graph()
    w = g.add("Sigmoid", y)
    g.replace_all_uses(z, w)
    assert g.outputs == [("z", w)]
    g.remove_node(z.node)
    verify(g)


def test_replace_all_uses_refuses_to_drop_an_output_unless_told():
    g, x, c, y, z = small_graph()
    w = g.add("Sigmoid", y)
    with pytest.raises(EmberError, match="drop graph output"):
        g.replace_all_uses(z, w, outputs=False)


def test_replace_all_uses_checks_types():
    g, x, c, y, z = small_graph()
    with pytest.raises(EmberError, match="differs"):
        g.replace_all_uses(y, c)


def test_same_value_on_two_ports():
    b = GraphBuilder()
    x = b.input("x", (3,))
    y = b.Mul(x, x)
    b.output("y", y)
    g = b.build()
    assert g.inputs_of(y.node) == [x, x]


def test_verifier_catches_a_stale_type():
    g, x, c, y, z = small_graph()
    g.nx.nodes[z.node]["outputs"] = (TensorType((3, 2), DType.FLOAT32),)
    with pytest.raises(VerifyError, match=r"output 0 has type float32\[3,2\], inference says float32\[2,3\]"):
        verify(g)


def test_copy_is_independent():
    g, x, c, y, z = small_graph()
    h = g.copy()
    h.set_meta(z.node, "placement", "host")
    assert g.meta(z.node, "placement") is None
    new = h.add("Neg", z)
    assert new.node not in g.nx


def test_text_and_dot_name_every_node():
    g, x, c, y, z = small_graph()
    text = to_text(g)
    assert "Add(%x, %" in text and "return z=" in text
    dot = to_dot(g)
    assert dot.startswith('digraph "small"') and "Relu" in dot and "->" in dot


def test_attrs_are_frozen_and_normalized():
    b = GraphBuilder()
    x = b.input("x", (2,))
    y = b.Clip(x, min=np.float32(0), max=6)
    attrs = b.graph.attrs(y.node)
    assert attrs["min"] == 0.0 and isinstance(attrs["max"], float)
    with pytest.raises(TypeError):
        attrs["min"] = 1.0  # type: ignore[index]
    assert hash(attrs) == hash(b.graph.attrs(y.node))


def test_value_refers_to_existing_node():
    g, *_ = small_graph()
    with pytest.raises(EmberError, match="not in graph"):
        g.type_of(Value(999, 0))
