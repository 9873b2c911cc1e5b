"""The pattern passes (FuseLayerNorm, FuseRMSNorm, FuseGelu, FuseSilu) after the O2 pipeline's
simplification: every accepted variant of a decomposed op becomes that one op (operand
orders, Pow vs Mul, Div vs Mul by the inverse, with and without gamma/beta, Casts around an
RMSNorm) and computes what the chain did, on numpy and on the OpenCL device; every near miss
is left alone; and the GELUs of the real BERT and GPT-2 exports become Gelu nodes with the
models still matching onnxruntime.

Rows are short here (16 elements, values below 4), so the float32 rounding differences
between the chain and the fused kernel, a few eps32 of values below 16, stay inside
TOLERANCE. float16 graphs round to half after each op of the chain and the fused op rounds
once: their bound is TOLERANCE[float16] widened to 3 half-roundings (3 * 2**-11) of the
largest value in the chain.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest

import ember
from ember.frontends.builder import GraphBuilder
from ember.frontends.onnx import import_onnx
from ember.ir import DType, Graph, Value
from ember.lowering import FixedPoint, PassContext, PassManager, build_pipeline
from ember.lowering.patterns import (
    PATTERN_PASSES, FuseGelu, FuseLayerNorm, FuseRMSNorm, FuseSilu,
)
from ember.runtime.numpy import evaluate_graph
from tests.harness import TOLERANCE, assert_close
from tests.strategies import array_for
from tests.test_models import MODELS, compare, tokens

F32, F16 = DType.FLOAT32, DType.FLOAT16
CTX = PassContext(opt_level=2)
PATTERN_OPS = {"LayerNormalization", "RMSNormalization", "Gelu", "Swish"}


# -- running the passes -------------------------------------------------------------------------
def _flat_names(pipeline) -> set[str]:
    names = set()
    for item in pipeline:
        names |= _flat_names(item.passes) if isinstance(item, FixedPoint) else {item.name}
    return names


def pattern_pipeline() -> list:
    """The O2 pipeline with PATTERN_PASSES after its last simplify group (before fusion), or
    as it is once the lead has wired them in."""
    pipeline = build_pipeline(2)
    if _flat_names(pipeline) & {p.name for p in PATTERN_PASSES}:
        return pipeline
    last = max(i for i, p in enumerate(pipeline)
               if isinstance(p, FixedPoint) and p.name == "simplify")
    return [*pipeline[:last + 1], *PATTERN_PASSES, *pipeline[last + 1:]]


def lower(graph: Graph, ctx: PassContext = CTX) -> tuple[Graph, dict[str, bool]]:
    """A copy of `graph` through the pattern pipeline (verified after every pass), and
    which pattern passes changed it."""
    lowered = graph.copy()
    records = PassManager(pattern_pipeline(), verify=True).run(lowered, ctx)
    changed = {p.name: False for p in PATTERN_PASSES}
    for r in records:
        if r.name in changed:
            changed[r.name] |= r.changed
    return lowered, changed


def ops_of(graph: Graph) -> list[str]:
    return sorted(graph.op(n) for n in graph.nodes() if graph.op(n) not in ("Input", "Constant"))


def feeds_for(graph: Graph) -> dict[str, np.ndarray]:
    return {name: array_for(7 + i, graph.type_of(v).shape, graph.type_of(v).dtype)
            for i, (name, v) in enumerate(graph.input_values().items())}


def tolerance(expected: np.ndarray, magnitude: float) -> tuple[float, float]:
    """TOLERANCE of the dtype; for float16, atol widened to 3 * 2**-11 * magnitude."""
    rtol, atol = TOLERANCE[DType.from_numpy(expected.dtype)]
    if expected.dtype == np.float16:
        atol = max(atol, 3 * 2.0**-11 * magnitude)
    return rtol, atol


def graph_of(inputs: dict[str, tuple[tuple[int, ...], DType]], body: Callable) -> Graph:
    b = GraphBuilder("pattern")
    values = [b.input(name, shape, dtype) for name, (shape, dtype) in inputs.items()]
    result = body(b, *values)
    for i, value in enumerate((result,) if isinstance(result, Value) else result):
        b.output(f"y{i}", value)
    return b.build()


def k(b: GraphBuilder, value: float, dtype: DType = F32) -> Value:
    return b.constant(np.asarray(value, dtype.np_dtype))


def param(seed: int, shape: tuple[int, ...], dtype: DType = F32, low: float = 0.5,
          high: float = 1.5) -> np.ndarray:
    return array_for(seed, shape, dtype, low=low, high=high)


# -- the chains exporters write ---------------------------------------------------------------
def inv_sqrt_div(b, d, ve):
    return b.Div(d, b.Sqrt(ve))


INV_FORMS: dict[str, Callable] = {
    "div_sqrt": inv_sqrt_div,
    "mul_reciprocal": lambda b, d, ve: b.Mul(b.Reciprocal(b.Sqrt(ve)), d),
    "mul_one_over": lambda b, d, ve: b.Mul(d, b.Div(k(b, 1.0, b.graph.dtype_of(ve)),
                                                    b.Sqrt(ve))),
    "div_pow_half": lambda b, d, ve: b.Div(d, b.Pow(ve, k(b, 0.5, b.graph.dtype_of(ve)))),
    "mul_pow_neg_half": lambda b, d, ve: b.Mul(b.Pow(ve, k(b, -0.5, b.graph.dtype_of(ve))), d),
}


def square(b, d, form: str):
    return b.Pow(d, k(b, 2.0, b.graph.dtype_of(d))) if form == "pow" else b.Mul(d, d)


def layer_norm(b, x, *, axes=(-1,), sq="pow", inv="div_sqrt", eps_first=False, gamma=None,
               beta=None, swap=False, eps: float | Value = 1e-5):
    mean = b.ReduceMean(x, axes=axes, keepdims=1)
    d = b.Sub(x, mean)
    var = b.ReduceMean(square(b, d, sq), axes=axes, keepdims=1)
    e = eps if isinstance(eps, Value) else k(b, eps, b.graph.dtype_of(x))
    n = INV_FORMS[inv](b, d, b.Add(e, var) if eps_first else b.Add(var, e))
    if gamma is not None:
        n = b.Mul(gamma, n) if swap else b.Mul(n, gamma)
    if beta is not None:
        n = b.Add(beta, n) if swap else b.Add(n, beta)
    return n


def rms_norm(b, x, *, axes=(-1,), sq="pow", inv="mul_reciprocal", weight=None, eps=1e-6):
    ms = b.ReduceMean(square(b, x, sq), axes=axes, keepdims=1)
    n = INV_FORMS[inv](b, x, b.Add(ms, k(b, eps, b.graph.dtype_of(x))))
    return n if weight is None else b.Mul(b.constant(weight), n)


def gelu_erf(b, x, *, half=0.5, root2=np.sqrt(2.0), order="bert", arg="div"):
    z = b.Div(x, k(b, root2)) if arg == "div" else b.Mul(k(b, 1.0 / root2), x)
    bracket = b.Add(b.Erf(z), k(b, 1.0)) if order != "one_first" else b.Add(k(b, 1.0), b.Erf(z))
    if order == "bert":  # (x * (1 + erf)) * 0.5
        return b.Mul(b.Mul(x, bracket), k(b, half))
    if order == "half_first":  # (0.5 * x) * (1 + erf)
        return b.Mul(b.Mul(k(b, half), x), bracket)
    if order == "div_two":  # (x * (1 + erf)) / 2, before the rules make it * 0.5
        return b.Div(b.Mul(bracket, x), k(b, 1.0 / half))
    return b.Mul(x, b.Mul(bracket, k(b, half)))  # x * ((1 + erf) * 0.5)


def gelu_tanh(b, x, *, cubic=0.044715, cube="pow", form="gpt2"):
    c = k(b, np.sqrt(2.0 / np.pi))
    if form == "fast":  # x * c * (1 + 0.044715 * x * x)
        u = b.Mul(b.Mul(x, c), b.Add(k(b, 1.0), b.Mul(k(b, cubic), b.Mul(x, x))))
    else:
        x3 = b.Pow(x, k(b, 3.0)) if cube == "pow" else b.Mul(b.Mul(x, x), x)
        inner = b.Add(x, b.Mul(x3, k(b, cubic))) if form == "gpt2" else b.Mul(x3, k(b, cubic))
        u = b.Mul(inner, c)
    return b.Mul(b.Mul(x, k(b, 0.5)), b.Add(b.Tanh(u), k(b, 1.0)))


X3 = {"x": ((2, 3, 16), F32)}
X2 = {"x": ((4, 33), F32)}
GAMMA, BETA = param(1, (16,)), param(2, (16,), low=-0.5, high=0.5)

# name -> (graph, the ops after lowering)
POSITIVE: dict[str, tuple[Callable[[], Graph], list[str]]] = {
    "ln_pow_div_gamma_beta": (lambda: graph_of(X3, lambda b, x: layer_norm(
        b, x, gamma=b.constant(GAMMA), beta=b.constant(BETA))), ["LayerNormalization"]),
    "ln_mul_reciprocal_swapped": (lambda: graph_of(X3, lambda b, x: layer_norm(
        b, x, sq="mul", inv="mul_reciprocal", eps_first=True, swap=True,
        gamma=b.constant(GAMMA), beta=b.constant(BETA))), ["LayerNormalization"]),
    "ln_one_over_sqrt": (lambda: graph_of(X3, lambda b, x: layer_norm(
        b, x, inv="mul_one_over", gamma=b.constant(GAMMA))), ["LayerNormalization"]),
    "ln_pow_half": (lambda: graph_of(X3, lambda b, x: layer_norm(b, x, inv="div_pow_half")),
                    ["LayerNormalization"]),
    "ln_pow_neg_half_beta_only": (lambda: graph_of(X3, lambda b, x: layer_norm(
        b, x, inv="mul_pow_neg_half", beta=b.constant(BETA))), ["LayerNormalization"]),
    "ln_two_axes_no_affine": (lambda: graph_of(X3, lambda b, x: layer_norm(b, x, axes=(1, 2))),
                              ["LayerNormalization"]),
    "ln_gamma_input_beta_rank3": (lambda: graph_of(
        {"x": ((2, 3, 16), F32), "g": ((1, 1, 16), F32)},
        lambda b, x, g: layer_norm(b, x, gamma=g, beta=b.constant(BETA.reshape(1, 16)))),
        ["LayerNormalization", "Reshape"]),
    "ln_fp16_casts": (lambda: graph_of({"x": ((2, 3, 16), F16)}, lambda b, x: b.Add(b.Mul(
        b.Cast(layer_norm(b, b.Cast(x, to=F32)), to=F16), b.constant(GAMMA.astype(np.float16))),
        b.constant(BETA.astype(np.float16)))), ["LayerNormalization"]),
    "ln_gamma_over_rows_stays": (lambda: graph_of(X3, lambda b, x: b.Mul(
        layer_norm(b, x), b.constant(param(3, (2, 1, 16))))), ["LayerNormalization", "Mul"]),
    "rms_t5": (lambda: graph_of(X3, lambda b, x: rms_norm(b, x, weight=GAMMA)),
               ["RMSNormalization"]),
    "rms_mul_div_no_weight": (lambda: graph_of(X3, lambda b, x: rms_norm(
        b, x, sq="mul", inv="div_sqrt")), ["RMSNormalization"]),
    "rms_two_axes": (lambda: graph_of(X3, lambda b, x: rms_norm(
        b, x, axes=(-2, -1), inv="mul_one_over", weight=param(4, (3, 16)))),
        ["RMSNormalization"]),
    "rms_llama_fp16_casts": (lambda: graph_of({"x": ((2, 3, 16), F16)}, lambda b, x: b.Mul(
        b.constant(GAMMA.astype(np.float16)),
        b.Cast(rms_norm(b, b.Cast(x, to=F32), inv="mul_one_over"), to=F16))),
        ["RMSNormalization"]),
    "rms_cast_in_only": (lambda: graph_of({"x": ((2, 3, 16), F16)}, lambda b, x: rms_norm(
        b, b.Cast(x, to=F32), weight=GAMMA)), ["Cast", "RMSNormalization"]),
    "gelu_bert": (lambda: graph_of(X2, lambda b, x: gelu_erf(b, x)), ["Gelu"]),
    "gelu_half_first_mul_inverse": (lambda: graph_of(X2, lambda b, x: gelu_erf(
        b, x, order="half_first", arg="mul")), ["Gelu"]),
    "gelu_one_first_inner_half": (lambda: graph_of(X2, lambda b, x: gelu_erf(
        b, x, order="one_first")), ["Gelu"]),
    "gelu_div_two": (lambda: graph_of(X2, lambda b, x: gelu_erf(b, x, order="div_two")),
                     ["Gelu"]),
    "gelu_tanh_gpt2": (lambda: graph_of(X2, lambda b, x: gelu_tanh(b, x)), ["Gelu"]),
    "gelu_tanh_cube_mul": (lambda: graph_of(X2, lambda b, x: gelu_tanh(b, x, cube="mul")),
                           ["Gelu"]),
    "gelu_tanh_fast": (lambda: graph_of(X2, lambda b, x: gelu_tanh(b, x, form="fast")),
                       ["Gelu"]),
    "silu": (lambda: graph_of(X2, lambda b, x: b.Mul(x, b.Sigmoid(x))), ["Swish"]),
    "silu_swapped": (lambda: graph_of(X2, lambda b, x: b.Mul(b.Sigmoid(x), x)), ["Swish"]),
    "swish_beta": (lambda: graph_of(X2, lambda b, x: b.Mul(
        x, b.Sigmoid(b.Mul(k(b, 1.702), x)))), ["Swish"]),
    "swish_beta_swapped": (lambda: graph_of(X2, lambda b, x: b.Mul(
        b.Sigmoid(b.Mul(x, k(b, -0.25))), x)), ["Swish"]),
    "silu_times_two": (lambda: graph_of(X2, lambda b, x: b.Mul(b.Mul(x, b.Sigmoid(x)),
                                                               k(b, 2.0))), ["Mul", "Swish"]),
}


def _magnitude(graph: Graph, feeds: dict[str, np.ndarray]) -> float:
    """The largest value a float16 chain holds: its output's, plus its beta's (the value
    before the last Add)."""
    return float(max(np.abs(v.astype(np.float64)).max() for v in
                     evaluate_graph(graph, feeds).values())) + float(np.abs(BETA).max())


@pytest.mark.parametrize("case", sorted(POSITIVE))
def test_pattern_becomes_one_op_on_numpy(case):
    make, want_ops = POSITIVE[case]
    graph = make()
    lowered, _ = lower(graph)
    assert ops_of(lowered) == sorted(want_ops), case
    assert sum(lowered.op(n) in PATTERN_OPS for n in lowered.nodes()) == 1
    feeds = feeds_for(graph)
    expected = evaluate_graph(graph, feeds)
    got = evaluate_graph(lowered, feeds)
    for name, want in expected.items():
        assert_close(got[name], want, f"{case} {name}", tolerance(want, _magnitude(graph, feeds)))


@pytest.mark.parametrize("case", sorted(POSITIVE))
def test_pattern_runs_on_the_device(case, opencl_target):
    """The fused op runs as a kernel (strict) and equals the unfused chain's result."""
    graph = POSITIVE[case][0]()
    lowered, _ = lower(graph)
    feeds = feeds_for(graph)
    expected = evaluate_graph(graph, feeds)
    got = ember.compile(lowered, target=opencl_target, opt_level=0, strict=True)(**feeds)
    for name, want in expected.items():
        assert_close(got[name], want, f"{case} {name}", tolerance(want, _magnitude(graph, feeds)))


# -- near misses ------------------------------------------------------------------------------
def _gelu_with_erf_output(b, x):
    e = b.Erf(b.Div(x, k(b, np.sqrt(2.0))))
    return b.Mul(b.Mul(x, b.Add(e, k(b, 1.0))), k(b, 0.5)), e


def _ln_mean_used_twice(b, x):
    mean = b.ReduceMean(x, axes=(-1,), keepdims=1)
    d = b.Sub(x, mean)
    var = b.ReduceMean(b.Mul(d, d), axes=(-1,), keepdims=1)
    return b.Div(d, b.Sqrt(b.Add(var, k(b, 1e-5)))), b.Neg(mean)


def _ln_var_of_x(b, x):  # the variance of x instead of x - mean
    d = b.Sub(x, b.ReduceMean(x, axes=(-1,), keepdims=1))
    var = b.ReduceMean(b.Mul(x, x), axes=(-1,), keepdims=1)
    return b.Div(d, b.Sqrt(b.Add(var, k(b, 1e-5))))


def _ln_std_plus_eps(b, x):  # (x - mean) / (std + eps)
    d = b.Sub(x, b.ReduceMean(x, axes=(-1,), keepdims=1))
    var = b.ReduceMean(b.Mul(d, d), axes=(-1,), keepdims=1)
    return b.Div(d, b.Add(b.Sqrt(var), k(b, 1e-5)))


def _ln_other_mean(b, x, y):
    d = b.Sub(x, b.ReduceMean(y, axes=(-1,), keepdims=1))
    var = b.ReduceMean(b.Mul(d, d), axes=(-1,), keepdims=1)
    return b.Div(d, b.Sqrt(b.Add(var, k(b, 1e-5))))


def _rms_eps_input(b, x, eps):
    ms = b.ReduceMean(b.Mul(x, x), axes=(-1,), keepdims=1)
    return b.Div(x, b.Sqrt(b.Add(ms, eps)))


def _rms_other_x(b, x, y):
    ms = b.ReduceMean(b.Mul(x, x), axes=(-1,), keepdims=1)
    return b.Mul(y, b.Reciprocal(b.Sqrt(b.Add(ms, k(b, 1e-6)))))


def _rms_mean_square_used_twice(b, x):
    ms = b.ReduceMean(b.Mul(x, x), axes=(-1,), keepdims=1)
    return b.Div(x, b.Sqrt(b.Add(ms, k(b, 1e-6)))), ms


def _silu_sigmoid_used_twice(b, x):
    s = b.Sigmoid(x)
    return b.Mul(x, s), b.Neg(s)


XY = {"x": ((2, 3, 16), F32), "y": ((2, 3, 16), F32)}

# name -> (graph, the pass that must leave it alone, the op it must not produce)
NEGATIVE: dict[str, tuple[Callable[[], Graph], object, str]] = {
    "ln_reduces_axis_0": (lambda: graph_of({"x": ((16, 4), F32)}, lambda b, x: layer_norm(
        b, x, axes=(0,))), FuseLayerNorm, "LayerNormalization"),
    "ln_reduces_a_middle_axis": (lambda: graph_of(X3, lambda b, x: layer_norm(
        b, x, axes=(1,))), FuseLayerNorm, "LayerNormalization"),
    "ln_mean_has_a_second_user": (lambda: graph_of(X3, _ln_mean_used_twice), FuseLayerNorm,
                                  "LayerNormalization"),
    "ln_eps_not_constant": (lambda: graph_of({"x": ((2, 3, 16), F32), "e": ((), F32)},
                                             lambda b, x, e: layer_norm(b, x, eps=e)),
                            FuseLayerNorm, "LayerNormalization"),
    "ln_variance_of_x": (lambda: graph_of(X3, _ln_var_of_x), FuseLayerNorm,
                         "LayerNormalization"),
    "ln_std_plus_eps": (lambda: graph_of(X3, _ln_std_plus_eps), FuseLayerNorm,
                        "LayerNormalization"),
    "ln_mean_of_another_tensor": (lambda: graph_of(XY, _ln_other_mean), FuseLayerNorm,
                                  "LayerNormalization"),
    "rms_reduces_axis_0": (lambda: graph_of({"x": ((16, 4), F32)}, lambda b, x: rms_norm(
        b, x, axes=(0,))), FuseRMSNorm, "RMSNormalization"),
    "rms_eps_not_constant": (lambda: graph_of({"x": ((2, 3, 16), F32), "e": ((), F32)},
                                              _rms_eps_input), FuseRMSNorm, "RMSNormalization"),
    "rms_scales_another_tensor": (lambda: graph_of(XY, _rms_other_x), FuseRMSNorm,
                                  "RMSNormalization"),
    "rms_mean_square_has_a_second_user": (lambda: graph_of(X3, _rms_mean_square_used_twice),
                                          FuseRMSNorm, "RMSNormalization"),
    "gelu_0.6_for_0.5": (lambda: graph_of(X2, lambda b, x: gelu_erf(b, x, half=0.6)), FuseGelu,
                         "Gelu"),
    "gelu_1.5_for_sqrt2": (lambda: graph_of(X2, lambda b, x: gelu_erf(b, x, root2=1.5)),
                           FuseGelu, "Gelu"),
    "gelu_erf_of_another_tensor": (lambda: graph_of(
        {"x": ((4, 33), F32), "y": ((4, 33), F32)}, lambda b, x, y: b.Mul(b.Mul(x, b.Add(
            b.Erf(b.Div(y, k(b, np.sqrt(2.0)))), k(b, 1.0))), k(b, 0.5))), FuseGelu, "Gelu"),
    "gelu_erf_is_an_output": (lambda: graph_of(X2, _gelu_with_erf_output), FuseGelu, "Gelu"),
    "gelu_tanh_0.05_for_0.044715": (lambda: graph_of(X2, lambda b, x: gelu_tanh(
        b, x, cubic=0.05)), FuseGelu, "Gelu"),
    "gelu_tanh_without_the_x_term": (lambda: graph_of(X2, lambda b, x: gelu_tanh(
        b, x, form="cube_only")), FuseGelu, "Gelu"),
    "silu_sigmoid_of_another_tensor": (lambda: graph_of(
        {"x": ((4, 33), F32), "y": ((4, 33), F32)}, lambda b, x, y: b.Mul(x, b.Sigmoid(y))),
        FuseSilu, "Swish"),
    "silu_sigmoid_has_a_second_user": (lambda: graph_of(X2, _silu_sigmoid_used_twice),
                                       FuseSilu, "Swish"),
    "silu_of_two_x_times_sigmoid_x": (lambda: graph_of(X2, lambda b, x: b.Mul(
        b.Mul(x, k(b, 2.0)), b.Sigmoid(x))), FuseSilu, "Swish"),
    "swish_beta_per_column": (lambda: graph_of(X2, lambda b, x: b.Mul(x, b.Sigmoid(b.Mul(
        x, b.constant(param(5, (33,))))))), FuseSilu, "Swish"),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_near_miss_is_left_alone(case):
    make, pass_type, op = NEGATIVE[case]
    graph = make()
    lowered, changed = lower(graph)
    assert changed[pass_type.name] is False, f"{case}: {pass_type.name} rewrote it"
    assert op not in ops_of(lowered), case
    feeds = feeds_for(graph)
    expected = evaluate_graph(graph, feeds)
    for name, got in evaluate_graph(lowered, feeds).items():
        assert_close(got, expected[name], f"{case} {name}")


def test_inner_part_of_a_rejected_layer_norm_is_still_an_rms_norm():
    """When the mean escapes, what is left, (x - mean) / sqrt(mean((x - mean)^2) + eps), is an
    RMSNorm of x - mean: FuseRMSNorm takes it and the mean stays computed once."""
    lowered, changed = lower(graph_of(X3, _ln_mean_used_twice))
    assert changed == {"FuseLayerNorm": False, "FuseRMSNorm": True, "FuseGelu": False,
                       "FuseSilu": False}
    assert ops_of(lowered) == ["Neg", "RMSNormalization", "ReduceMean", "Sub"]


def test_fused_op_without_a_kernel_is_not_introduced():
    """A target that can run the chain but not the fused op keeps the chain."""
    refuse = PassContext(opt_level=2, supports=lambda g, n: g.op(n) != "RMSNormalization")
    graph = POSITIVE["rms_t5"][0]()
    before = ops_of(graph)
    assert FuseRMSNorm().run(graph, refuse).changed is False
    assert ops_of(graph) == before
    assert FuseRMSNorm().run(graph, CTX).changed is True
    assert ops_of(graph) == ["RMSNormalization"]


def test_pattern_passes_are_exported_in_order():
    assert [p.name for p in PATTERN_PASSES] == ["FuseLayerNorm", "FuseRMSNorm", "FuseGelu",
                                                "FuseSilu"]
    for p in PATTERN_PASSES:
        assert type(p).__doc__ and "\n" not in type(p).__doc__.strip()


# -- real exports -------------------------------------------------------------------------------
@pytest.mark.parametrize("name, approximate", [("bert_mini", "none"), ("gpt2_mini", "tanh")])
def test_model_gelus_become_gelu_nodes(name, approximate, any_target):
    feeds = tokens(5, 32, padded=4 if name == "bert_mini" else 0, mask=name == "bert_mini")
    path = MODELS / f"{name}.onnx"
    graph = import_onnx(path, input_shapes={k: v.shape for k, v in feeds.items()})
    lowered, _ = lower(graph)
    gelus = [n for n in lowered.nodes() if lowered.op(n) == "Gelu"]
    assert len(gelus) == 2, f"{name}: {len(gelus)} Gelu nodes"
    assert all(lowered.attrs(n)["approximate"] == approximate for n in gelus)
    left = {"Erf", "Pow"} if approximate == "none" else {"Tanh", "Pow"}
    assert not left & set(ops_of(lowered)), f"{name}: {sorted(left & set(ops_of(lowered)))}"
    model = ember.compile(lowered, target=any_target, opt_level=0)
    compare(model, path, feeds, f"{name} with fused GELU on {any_target}")


def _torch_style_model() -> onnx.ModelProto:
    """What torch.onnx.export writes at opset 14 for LayerNorm -> Linear -> GELU -> LLaMA's
    RMSNorm (rsqrt as Sqrt + Reciprocal) -> SiLU, written out with onnx.helper."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)

    def const(name: str, value) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    inits = [const("w", rng.uniform(-0.3, 0.3, (16, 16))), const("g", GAMMA),
             const("b", BETA), const("eps", 1e-5), const("two", 2.0), const("half", 0.5),
             const("one", 1.0), const("root2", 1.4142135381698608), const("reps", 1e-6),
             const("rw", param(6, (16,)))]
    n = helper.make_node
    nodes = [
        n("ReduceMean", ["x"], ["m"], axes=[-1]), n("Sub", ["x", "m"], ["d"]),
        n("Pow", ["d", "two"], ["d2"]), n("ReduceMean", ["d2"], ["v"], axes=[-1]),
        n("Add", ["v", "eps"], ["ve"]), n("Sqrt", ["ve"], ["s"]), n("Div", ["d", "s"], ["nn"]),
        n("Mul", ["nn", "g"], ["ng"]), n("Add", ["ng", "b"], ["ln"]),
        n("MatMul", ["ln", "w"], ["h"]), n("Div", ["h", "root2"], ["hz"]), n("Erf", ["hz"], ["e"]),
        n("Add", ["e", "one"], ["e1"]), n("Mul", ["h", "e1"], ["he"]),
        n("Mul", ["he", "half"], ["gl"]),
        n("Cast", ["gl"], ["gf"], to=TensorProto.FLOAT), n("Pow", ["gf", "two"], ["q"]),
        n("ReduceMean", ["q"], ["ms"], axes=[-1]), n("Add", ["ms", "reps"], ["mse"]),
        n("Sqrt", ["mse"], ["rs"]), n("Reciprocal", ["rs"], ["inv"]),
        n("Mul", ["gl", "inv"], ["r"]), n("Mul", ["rw", "r"], ["rms"]),
        n("Sigmoid", ["rms"], ["sg"]), n("Mul", ["rms", "sg"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "torch_style", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 16])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def test_torch_style_export_fuses_and_matches_onnxruntime(any_target):
    import onnxruntime as ort

    model = _torch_style_model()
    lowered, changed = lower(import_onnx(model))
    assert all(changed.values()), changed
    assert ops_of(lowered) == ["Gelu", "LayerNormalization", "MatMul", "RMSNormalization",
                               "Swish"]
    x = array_for(11, (2, 5, 16), F32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"x": x})
    got = ember.compile(lowered, target=any_target, opt_level=0)(x=x)["y"]
    assert_close(got, want, "y")
