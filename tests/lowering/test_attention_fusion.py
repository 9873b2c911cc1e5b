"""FuseAttention: exported attention (BERT and GPT-2 style, hand-built in ONNX and with the
builder, and the shipped bert_mini / gpt2_mini) becomes one Attention node whose outputs
match the unfused graph and onnxruntime; near misses are left alone.

The pass is not in a pipeline of its own here: `lowered(...)` builds the O2 pipeline by
hand with FuseAttention after the last simplify group (or without it), runs it with the
target's `supports`, and compiles the lowered graph at O0 (placement only), so the test
says what the pass does wherever the pipelines place it. Fused and unfused outputs agree
within float32 rounding (rtol 1e-5, atol 1e-5 on values of order 1: they sum in different
orders), and the models within the relative L2 bound of tests/test_models.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.codegen.registry import lower
from ember.frontends.builder import GraphBuilder
from ember.frontends.onnx import import_onnx
from ember.ir import DType, Graph, Value, verify
from ember.lowering import FixedPoint, PassContext, PassManager, PassRecord, build_pipeline
from ember.lowering.attention import FuseAttention
from ember.runtime.device import resolve_target
from ember.runtime.numpy import evaluate_graph
from ember.runtime.plan import node_spec
from tests.harness import assert_close, relative_l2
from tests.strategies import array_for
from tests.test_models import REL_L2, onnxruntime_outputs, tokens

MODELS = Path(__file__).resolve().parent.parent / "models"
F32 = (1e-5, 1e-5)


# -- helpers ------------------------------------------------------------------------------------
def pipeline(fuse: bool) -> list:
    """The O2 pipeline with FuseAttention right after the last simplify group, or without
    (wherever the pipelines table itself places it)."""
    items = []
    for p in build_pipeline(2):
        if isinstance(p, FixedPoint):
            p = FixedPoint(p.name, [q for q in p.passes if not isinstance(q, FuseAttention)],
                           p.max_iterations)
        if not isinstance(p, FuseAttention):
            items.append(p)
    if fuse:
        last = max(i for i, p in enumerate(items)
                   if isinstance(p, FixedPoint) and p.name == "simplify")
        items.insert(last + 1, FuseAttention())
    return items


def context(target: str) -> PassContext:
    """What compile() hands the passes: the target's `supports`, None without a device."""
    device = resolve_target(target)
    if device is None:
        return PassContext(opt_level=2, family="numpy")
    tgt = device.target

    def supports(graph: Graph, node: int) -> bool:
        return lower(node_spec(graph, node), tgt) is not None

    return PassContext(opt_level=2, family=tgt.family.name, supports=supports)


def lowered(model: onnx.ModelProto | Path | Graph, target: str, fuse: bool,
            shapes: dict | None = None) -> tuple[ember.CompiledModel, Graph, list[PassRecord]]:
    graph = model.copy() if isinstance(model, Graph) else import_onnx(
        model if isinstance(model, onnx.ModelProto) else str(model), input_shapes=shapes)
    records = PassManager(pipeline(fuse), verify=True).run(graph, context(target))
    return ember.compile(graph, target=target, opt_level=0), graph, records


def count(graph: Graph) -> Counter[str]:
    return Counter(graph.op(n) for n in graph.nodes())


def fusion_stats(records: list[PassRecord]) -> dict[str, int]:
    (record,) = [r for r in records if r.name == "FuseAttention"]
    return dict(record.stats)


def compare_fused(model, feeds: dict[str, np.ndarray], target: str, attentions: int,
                  shapes: dict | None = None) -> dict[str, int]:
    """Fused and unfused compile of `model` agree; returns the pass's stats."""
    fused, fused_graph, records = lowered(model, target, True, shapes)
    plain, plain_graph, _ = lowered(model, target, False, shapes)
    assert count(fused_graph)["Attention"] == attentions
    assert count(plain_graph)["Attention"] == 0
    want, got = plain(**feeds), fused(**feeds)
    for name in want:
        assert_close(got[name], want[name], f"{name} fused vs unfused on {target}", F32)
    return fusion_stats(records)


# -- hand-built ONNX models ---------------------------------------------------------------------
def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def bert_style(batch: int = 2, seq: int = 7, heads: int = 3, head: int = 6) -> onnx.ModelProto:
    """PyTorch's BertSelfAttention: K split by perm (0, 2, 3, 1), scale Div by sqrt(d) (not
    a power of two, so it stays a Div), mask (1 - m) * -10000 from an int64 input."""
    hidden = heads * head
    rng = np.random.default_rng(0)
    inits = [_const(f"W{c}", rng.uniform(-0.5, 0.5, (hidden, hidden)).astype(np.float32))
             for c in "qkv"]
    inits += [_const("split", np.array([batch, seq, heads, head], np.int64)),
              _const("merge", np.array([batch, seq, hidden], np.int64)),
              _const("sqrt_d", np.array(np.sqrt(head), np.float32)),
              _const("one", np.array(1.0, np.float32)),
              _const("big", np.array(-10000.0, np.float32)),
              _const("axes", np.array([1, 2], np.int64))]
    n = helper.make_node
    nodes = []
    for c, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [n("MatMul", ["x", f"W{c}"], [f"{c}0"]),
                  n("Reshape", [f"{c}0", "split"], [f"{c}1"]),
                  n("Transpose", [f"{c}1"], [f"{c}2"], perm=perm)]
    nodes += [
        n("MatMul", ["q2", "k2"], ["s0"]), n("Div", ["s0", "sqrt_d"], ["s1"]),
        n("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT), n("Sub", ["one", "mf"], ["mi"]),
        n("Mul", ["mi", "big"], ["mb"]), n("Unsqueeze", ["mb", "axes"], ["m4"]),
        n("Add", ["s1", "m4"], ["s2"]), n("Softmax", ["s2"], ["p"], axis=-1),
        n("MatMul", ["p", "v2"], ["o0"]), n("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["o1", "merge"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "bert_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, hidden]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, [batch, seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                             ir_version=8)


def gpt2_style(seq: int = 9, heads: int = 2, head: int = 5) -> onnx.ModelProto:
    """GPT-2: one fused qkv projection with a bias, Split, K transposed after the head split
    by (0, 1, 3, 2), the scale on Q, and a causal mask made from Trilu and Where."""
    hidden = heads * head
    rng = np.random.default_rng(1)
    inits = [_const("Wqkv", rng.uniform(-0.5, 0.5, (hidden, 3 * hidden)).astype(np.float32)),
             _const("bqkv", rng.uniform(-0.1, 0.1, (3 * hidden,)).astype(np.float32)),
             _const("split", np.array([1, seq, heads, head], np.int64)),
             _const("merge", np.array([1, seq, hidden], np.int64)),
             _const("sizes", np.array([hidden] * 3, np.int64)),
             _const("scale", np.array(1 / np.sqrt(head), np.float32)),
             _const("ones", np.ones((1, 1, seq, seq), np.float32)),
             _const("zero", np.array(0.0, np.float32)),
             _const("lowest", np.array(np.finfo(np.float32).min, np.float32))]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "Wqkv"], ["qkv0"]), n("Add", ["qkv0", "bqkv"], ["qkv"]),
             n("Split", ["qkv", "sizes"], ["q0", "k0", "v0"], axis=2)]
    for c in "qkv":
        nodes += [n("Reshape", [f"{c}0", "split"], [f"{c}1"]),
                  n("Transpose", [f"{c}1"], [f"{c}2"], perm=[0, 2, 1, 3])]
    nodes += [
        n("Mul", ["q2", "scale"], ["qs"]), n("Transpose", ["k2"], ["kt"], perm=[0, 1, 3, 2]),
        n("MatMul", ["qs", "kt"], ["s0"]),
        n("Trilu", ["ones"], ["tri"], upper=0),
        n("Cast", ["tri"], ["causal"], to=TensorProto.BOOL),
        n("Where", ["causal", "zero", "lowest"], ["m"]),
        n("Add", ["s0", "m"], ["s1"]), n("Softmax", ["s1"], ["p"], axis=-1),
        n("MatMul", ["p", "v2"], ["o0"]), n("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["o1", "merge"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "gpt2_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)],
                             ir_version=8)


def ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def check_against_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                      target: str) -> None:
    compiled, _, _ = lowered(model, target, True)
    got = compiled(**feeds)
    for name, want in ort_outputs(model, feeds).items():
        assert_close(got[name], want, f"{name} vs onnxruntime", F32)


def test_bert_style_attention_is_fused(any_target):
    model = bert_style()
    mask = np.ones((2, 7), np.int64)
    mask[1, 4:] = 0
    feeds = {"x": array_for(3, (2, 7, 18), DType.FLOAT32, low=-1, high=1), "mask": mask}
    stats = compare_fused(model, feeds, any_target, attentions=1)
    assert stats == {"fused": 1, "Transpose": 4, "scale": 1, "mask": 1}
    check_against_ort(model, feeds, any_target)


def test_gpt2_style_attention_is_fused(any_target):
    model = gpt2_style()
    feeds = {"x": array_for(4, (1, 9, 10), DType.FLOAT32, low=-1, high=1)}
    stats = compare_fused(model, feeds, any_target, attentions=1)
    # Q, K, V head splits (K's two transposes were composed by simplify), the merge; the
    # scale sat on Q; the causal mask was folded into a constant.
    assert stats == {"fused": 1, "Transpose": 4, "scale": 1, "mask": 1}
    check_against_ort(model, feeds, any_target)


def sdpa_export_style(batch: int = 2, seq: int = 6, heads: int = 2,
                      head: int = 4) -> onnx.ModelProto:
    """PyTorch's SDPA export: Q and K each scaled by sqrt(1/sqrt(d)), K transposed over
    [B * H, S, D] between two Reshapes, the mask Where(keep, 0, -FLT_MAX) from an int64
    input, and the probabilities guarded by Where(IsNaN(P), 0, P)."""
    hidden = heads * head
    rng = np.random.default_rng(2)
    inits = [_const(f"W{c}", rng.uniform(-0.5, 0.5, (hidden, hidden)).astype(np.float32))
             for c in "qkv"]
    inits += [_const("split", np.array([batch, seq, heads, head], np.int64)),
              _const("flat", np.array([batch * heads, seq, head], np.int64)),
              _const("unflat", np.array([batch, heads, head, seq], np.int64)),
              _const("merge", np.array([batch, seq, hidden], np.int64)),
              _const("root", np.array(head ** -0.25, np.float32)),
              _const("zero", np.array(0.0, np.float32)),
              _const("lowest", np.array(np.finfo(np.float32).min, np.float32)),
              _const("axes", np.array([1, 2], np.int64))]
    n = helper.make_node
    nodes = []
    for c in "qkv":
        nodes += [n("MatMul", ["x", f"W{c}"], [f"{c}0"]),
                  n("Reshape", [f"{c}0", "split"], [f"{c}1"]),
                  n("Transpose", [f"{c}1"], [f"{c}2"], perm=[0, 2, 1, 3])]
    nodes += [
        n("Mul", ["q2", "root"], ["qs"]),
        n("Reshape", ["k2", "flat"], ["k3"]), n("Transpose", ["k3"], ["k4"], perm=[0, 2, 1]),
        n("Reshape", ["k4", "unflat"], ["k5"]), n("Mul", ["k5", "root"], ["ks"]),
        n("Cast", ["mask"], ["keep0"], to=TensorProto.BOOL),
        n("Unsqueeze", ["keep0", "axes"], ["keep"]),
        n("Where", ["keep", "zero", "lowest"], ["m"]),
        n("MatMul", ["qs", "ks"], ["s0"]), n("Add", ["s0", "m"], ["s1"]),
        n("Softmax", ["s1"], ["p0"], axis=-1), n("IsNaN", ["p0"], ["bad"]),
        n("Where", ["bad", "zero", "p0"], ["p"]),
        n("MatMul", ["p", "v2"], ["o0"]), n("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["o1", "merge"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "sdpa_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, hidden]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, [batch, seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=8)


def test_sdpa_export_style_attention_is_fused(any_target):
    model = sdpa_export_style()
    mask = np.ones((2, 6), np.int64)
    mask[0, 4:] = 0
    mask[1] = 0  # every key masked: -FLT_MAX everywhere, a uniform softmax row
    feeds = {"x": array_for(6, (2, 6, 8), DType.FLOAT32, low=-1, high=1), "mask": mask}
    stats = compare_fused(model, feeds, any_target, attentions=1)
    # Q, V head splits, K's head split and its regrouped transpose, the merge; the two
    # Reshapes around K's transpose; sqrt(scale) on Q and on K.
    assert stats == {"fused": 1, "Transpose": 5, "Reshape": 2, "scale": 2, "mask": 1,
                     "nan_guard": 1}
    check_against_ort(model, feeds, any_target)


# -- builder graphs: variants and near misses ---------------------------------------------------
B, H, SQ, SK, D, DV = 2, 3, 5, 7, 4, 6


def attention_graph(*, q_scale: float | None = None, k_scale: float | None = None,
                    scale: np.ndarray | float | None = 0.5, mask: bool = True,
                    trans_b: bool = False, v_trans: bool = False, axis: int = -1,
                    merge: bool = True, extra: Callable | None = None) -> Graph:
    """Attention over [B, S, H, D] inputs with head split transposes; `extra(b, values)`
    may add users to the named intermediates (the near misses)."""
    b = GraphBuilder("attention")
    x = {c: b.input(c, (B, s, H, d)) for c, s, d in (("q", SQ, D), ("k", SK, D), ("v", SK, DV))}
    split = (0, 2, 1, 3)
    vals: dict[str, Value] = {"q": b.Transpose(x["q"], perm=split)}
    if q_scale is not None:
        vals["q"] = b.Mul(vals["q"], b.constant(np.float32(q_scale)))
    vals["k"] = b.Transpose(x["k"], perm=split if trans_b else (0, 2, 3, 1))
    if k_scale is not None:
        vals["k"] = b.Mul(b.constant(np.float32(k_scale)), vals["k"])
    vals["v"] = b.Transpose(x["v"], perm=(0, 2, 3, 1) if v_trans else split)
    vals["scores"] = b.MatMul(vals["q"], vals["k"], trans_b=int(trans_b))
    s = vals["scores"]
    if scale is not None:
        s = vals["scaled"] = b.Mul(s, b.constant(np.asarray(scale, np.float32)))
    if mask:
        vals["mask"] = b.input("m", (1, 1, SQ, SK))
        s = vals["masked"] = b.Add(vals["mask"], s)
    vals["probs"] = b.Softmax(s, axis=axis)
    vals["out"] = b.MatMul(vals["probs"], vals["v"], trans_b=int(v_trans))
    if merge:
        vals["out"] = b.Transpose(vals["out"], perm=split)
    b.output("y", vals["out"])
    if extra is not None:
        extra(b, vals)
    return b.build()


def feeds_for(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    return {name: array_for(seed + i, graph.type_of(v).shape, graph.type_of(v).dtype, low=-2,
                            high=2) for i, (name, v) in enumerate(graph.input_values().items())}


def run_fusion(graph: Graph, ctx: PassContext = PassContext(opt_level=2, family="numpy")):
    """Run FuseAttention alone; verify; the numpy outputs before and after agree."""
    feeds = feeds_for(graph)
    expected = evaluate_graph(graph, feeds)
    result = FuseAttention().run(graph, ctx)
    verify(graph)
    got = evaluate_graph(graph, feeds)
    for name in expected:
        assert_close(got[name], expected[name], name, F32)
    return result


@pytest.mark.parametrize("variant, stats", [
    ({}, {"Transpose": 4, "scale": 1, "mask": 1}),
    ({"q_scale": 0.7, "k_scale": 1.5, "scale": None}, {"Transpose": 4, "scale": 2, "mask": 1}),
    ({"trans_b": True, "mask": False}, {"Transpose": 4, "scale": 1}),
    ({"v_trans": True, "merge": False, "scale": None}, {"Transpose": 3, "mask": 1}),
    ({"scale": np.full((1, 1, 1, 1), 0.25, np.float32)}, {"Transpose": 4, "scale": 1,
                                                         "mask": 1}),
])
def test_variants_are_fused_into_one_node(variant, stats):
    g = attention_graph(**variant)
    result = run_fusion(g)
    assert result.changed and result.stats == {"fused": 1, **stats}
    assert set(count(g)) == {"Attention", "Input"}  # the scale constants went too
    (node,) = [n for n in g.nodes() if g.op(n) == "Attention"]
    assert g.outputs[0] == ("y", Value(node, 0))


def test_fused_attrs_absorb_the_transposes_and_scales():
    g = attention_graph(q_scale=0.5, k_scale=3.0, scale=0.25)
    run_fusion(g)
    (node,) = [n for n in g.nodes() if g.op(n) == "Attention"]
    attrs = g.attrs(node)
    assert attrs["q_perm"] == attrs["k_perm"] == attrs["v_perm"] == attrs["out_perm"] == (
        0, 2, 1, 3)
    assert attrs["scale"] == pytest.approx(0.375)
    assert [g.node_name(v.node) for v in g.inputs_of(node)] == ["q", "k", "v", "m"]


def test_unbatched_attention_without_transposes():
    b = GraphBuilder()
    q, k, v = b.input("q", (5, 3)), b.input("k", (4, 3)), b.input("v", (4, 2))
    b.output("y", b.MatMul(b.Softmax(b.MatMul(q, k, trans_b=1), axis=1), v))
    g = b.build()
    assert run_fusion(g).stats == {"fused": 1}
    (node,) = [n for n in g.nodes() if g.op(n) == "Attention"]
    assert g.attrs(node)["k_perm"] == () and g.attrs(node)["scale"] == 1.0


def test_a_transpose_with_a_second_user_stays():
    """The Q transpose also feeds a graph output: the rewrite reads it instead of folding
    it (q_perm stays empty), and the transpose keeps running."""
    g = attention_graph(extra=lambda b, vals: b.output("q_heads", vals["q"]))
    result = run_fusion(g)
    assert result.stats == {"fused": 1, "Transpose": 3, "scale": 1, "mask": 1}
    (node,) = [n for n in g.nodes() if g.op(n) == "Attention"]
    assert g.attrs(node)["q_perm"] == () and count(g)["Transpose"] == 1


NEAR_MISSES: dict[str, Callable[[], Graph]] = {
    "softmax over axis 2": lambda: attention_graph(axis=2),
    "softmax over axis 1 of [B, H, Sq, Sk]": lambda: attention_graph(axis=1),
    "scores used twice": lambda: attention_graph(
        extra=lambda b, vals: b.output("scores", vals["scores"])),
    "scaled scores used twice": lambda: attention_graph(
        extra=lambda b, vals: b.output("s2", b.Neg(vals["scaled"]))),
    "probabilities used twice": lambda: attention_graph(
        extra=lambda b, vals: b.output("p", vals["probs"])),
    "non-scalar scale": lambda: attention_graph(
        scale=np.linspace(0.1, 0.7, SK).astype(np.float32)),
}


def _graph_with(build: Callable[[GraphBuilder], Value]) -> Graph:
    b = GraphBuilder()
    b.output("y", build(b))
    return b.build()


def _scores_then(b: GraphBuilder, *, scale=None, mask_of=None, after=None, pv_swap=False,
                 scale_op: str = "Mul"):
    q, k, v = b.input("q", (SQ, D)), b.input("k", (SK, D)), b.input("v", (SK, DV))
    s = b.MatMul(q, k, trans_b=1)
    if mask_of is not None:
        s = b.Add(s, mask_of(b, q))
    if scale is not None:
        s = b.op(scale_op, s, scale(b))
    p = b.Softmax(s, axis=-1)
    if after is not None:
        return after(b, p, v)
    return b.MatMul(b.Transpose(v, perm=(1, 0)), p, trans_b=1) if pv_swap else b.MatMul(p, v)


NEAR_MISSES.update({
    "mask computed from Q": lambda: _graph_with(lambda b: _scores_then(
        b, mask_of=lambda b, q: b.MatMul(q, b.constant(array_for(1, (D, SK), DType.FLOAT32))))),
    "scale applied after the mask": lambda: _graph_with(lambda b: _scores_then(
        b, mask_of=lambda b, q: b.input("m", (SQ, SK)),
        scale=lambda b: b.constant(np.float32(0.5)))),
    "scale from a graph input": lambda: _graph_with(lambda b: _scores_then(
        b, scale=lambda b: b.input("c", ()))),
    "division by zero": lambda: _graph_with(lambda b: _scores_then(
        b, scale=lambda b: b.constant(np.float32(0)), scale_op="Div")),
    "probabilities are the B operand": lambda: _graph_with(lambda b: _scores_then(
        b, pv_swap=True)),
    "1-D value vector": lambda: _graph_with(lambda b: _scores_then(
        b, after=lambda b, p, v: b.MatMul(p, b.input("w", (SK,))))),
    "boolean mask through Where": lambda: _where_masked(),
})


def _where_masked() -> Graph:
    """Softmax(Where(causal, scores, -inf)): a select, not an additive mask."""
    b = GraphBuilder()
    q, k, v = b.input("q", (SQ, D)), b.input("k", (SK, D)), b.input("v", (SK, DV))
    causal = b.constant(np.tril(np.ones((SQ, SK), bool)))
    s = b.Where(causal, b.MatMul(q, k, trans_b=1), b.constant(np.float32(-np.inf)))
    b.output("y", b.MatMul(b.Softmax(s, axis=-1), v))
    return b.build()


def _guarded(fill: float = 0.0, kept_first: bool = False, q_scale=0.5, k_scale=0.5,
             mask_op: str = "Add", k_chain: tuple[int, ...] | None = None,
             k_flat: tuple[int, ...] = (B * H, SK, D)) -> Graph:
    """Softmax(q_scale * Q @ (k_scale * K)^T (+|*) m) guarded as Where(IsNaN(P), fill, P)
    (or Where(IsNaN(P), P, fill)) over [B, H, S, D] inputs; `k_chain` reads K through
    Reshape(k_flat) -> Transpose(0, 2, 1) -> Reshape(k_chain)."""
    b = GraphBuilder()
    q, v = b.input("q", (B, H, SQ, D)), b.input("v", (B, H, SK, DV))
    k = b.input("k", (B, H, SK, D))
    if k_chain is None:
        kt = b.Transpose(k, perm=(0, 1, 3, 2))
    else:
        kt = b.Reshape(b.Transpose(b.Reshape(k, shape=k_flat), perm=(0, 2, 1)),
                       shape=k_chain)
    qs = b.Mul(q, b.constant(np.asarray(q_scale, np.float32)))
    ks = b.Mul(kt, b.constant(np.asarray(k_scale, np.float32)))
    s = b.op(mask_op, b.MatMul(qs, ks), b.input("m", (1, 1, SQ, SK)))
    p = b.Softmax(s, axis=-1)
    fill_value = b.constant(np.float32(fill))
    guarded = b.Where(b.IsNaN(p), *((p, fill_value) if kept_first else (fill_value, p)))
    b.output("y", b.MatMul(guarded, v))
    return b.build()


def nan_feeds(graph: Graph) -> dict[str, np.ndarray]:
    """Row 1 of the scores NaN (through Q), row 2 all -inf and row 3 holding +inf (through
    the mask): the three ways a Softmax row becomes NaN."""
    feeds = feeds_for(graph, 7)
    feeds["q"][0, 1, 1, 2] = np.nan
    feeds["m"][0, 0, 2, :] = -np.inf
    feeds["m"][0, 0, 3, 4] = np.inf
    return feeds


def test_nan_guard_becomes_zeroed_rows():
    g = _guarded(k_chain=(B, H, D, SK))
    feeds = nan_feeds(g)
    expected = evaluate_graph(g, feeds)["y"]
    assert np.isnan(expected).sum() == 0 and not expected[:, :, 2:4].any()
    result = FuseAttention().run(g, PassContext(opt_level=2, family="numpy"))
    assert result.stats == {"fused": 1, "Transpose": 1, "Reshape": 2, "scale": 2, "mask": 1,
                            "nan_guard": 1}
    (node,) = [n for n in g.nodes() if g.op(n) == "Attention"]
    assert g.attrs(node)["zero_masked_rows"] == 2 and count(g)["IsNaN"] == 0
    assert_close(evaluate_graph(g, feeds)["y"], expected, "y", F32)


def test_nan_guard_fused_matches_unfused_on_targets(any_target):
    g = _guarded(k_chain=(B, H, D, SK))
    compare_fused(g, nan_feeds(g), any_target, attentions=1)


def test_k_chain_that_moves_batch_axes_is_not_absorbed():
    """The first Reshape merges the key axis into the batch ([B, H * SK, D]): the chain is
    no transpose of K, and the node reads its result."""
    g = _guarded(k_chain=(B, H, D, SK), k_flat=(B, H * SK, D))
    before = count(g)
    result = run_fusion(g)
    assert "Reshape" not in result.stats
    assert count(g)["Reshape"] == before["Reshape"]


NEAR_MISSES.update({
    "guard filling NaN rows with 1": lambda: _guarded(fill=1.0),
    "guard keeping the NaN branch": lambda: _guarded(kept_first=True),
    "multiplicative mask": lambda: _guarded(mask_op="Mul"),
})


@pytest.mark.parametrize("scales", [
    {"q_scale": np.linspace(0.5, 1, D)},
    {"k_scale": np.linspace(0.5, 1, H).reshape(1, H, 1, 1)},
])
def test_a_scale_that_is_no_scalar_stays_in_the_graph(scales):
    """A per-channel (or per-head) factor is no factor of the scores: its Mul keeps running
    and only the other side's scalar goes into `scale`."""
    g = _guarded(**scales)
    result = run_fusion(g)
    assert result.stats["fused"] == 1 and result.stats["scale"] == 1
    assert count(g)["Mul"] == 1
    (node,) = [n for n in g.nodes() if g.op(n) == "Attention"]
    assert g.attrs(node)["scale"] == pytest.approx(0.5)


@pytest.mark.parametrize("name", sorted(NEAR_MISSES))
def test_near_misses_are_left_alone(name):
    g = NEAR_MISSES[name]()
    before = count(g)
    result = run_fusion(g)
    assert result.changed is False and count(g) == before, name


def test_division_scale_and_a_scale_on_k_are_absorbed():
    b = GraphBuilder()
    q, k, v = b.input("q", (SQ, D)), b.input("k", (SK, D)), b.input("v", (SK, DV))
    kt = b.Transpose(b.Mul(k, b.constant(np.float32(2.0))), perm=(1, 0))
    s = b.Div(b.MatMul(q, kt), b.constant(np.float32(3.0)))
    b.output("y", b.MatMul(b.Softmax(s, axis=-1), v))
    g = b.build()
    assert run_fusion(g).stats == {"fused": 1, "Transpose": 1, "scale": 2}
    (node,) = [n for n in g.nodes() if g.op(n) == "Attention"]
    assert g.attrs(node)["scale"] == pytest.approx(2.0 / 3.0)


def test_a_second_run_changes_nothing():
    g = attention_graph(q_scale=2.0)
    assert run_fusion(g).changed
    assert run_fusion(g).changed is False and count(g)["Attention"] == 1


def test_no_kernel_on_the_target_means_no_rewrite():
    g = attention_graph()
    ctx = PassContext(opt_level=2, family="cpu", supports=lambda graph, node: False)
    assert run_fusion(g, ctx).changed is False and count(g)["Attention"] == 0


def test_builder_graph_fused_matches_unfused_on_targets(any_target):
    g = attention_graph(q_scale=0.5)
    compare_fused(g, feeds_for(g, 5), any_target, attentions=1)


# -- the shipped models -------------------------------------------------------------------------
@pytest.mark.parametrize("name, feeds", [
    ("bert_mini", tokens(0, 128, padded=32)),
    ("gpt2_mini", tokens(4, 128, mask=False)),
])
def test_models_get_two_attention_nodes_and_match_onnxruntime(name, feeds, any_target):
    path = MODELS / f"{name}.onnx"
    shapes = {k: v.shape for k, v in feeds.items()}
    fused, graph, records = lowered(path, any_target, True, shapes)
    assert count(graph)["Attention"] == 2  # one per layer
    assert fusion_stats(records)["Transpose"] == 8  # head split and merge of both layers
    expected = onnxruntime_outputs(path, feeds)
    got = fused(**feeds)
    for out, want in expected.items():
        error = relative_l2(got[out], want)
        assert error <= REL_L2, f"{name} {out}: relative L2 error {error:.3g} > {REL_L2}"
    if fused.device is not None:
        assert not fused.plan.host_steps
        plain, _, _ = lowered(path, any_target, False, shapes)
        # Each layer's two head-split... merge Transposes, two MatMuls and the Softmax (at
        # least; scale and mask may already be fused into the first MatMul) become one.
        assert plain.stats.kernel_launches - fused.stats.kernel_launches >= 2 * 6
