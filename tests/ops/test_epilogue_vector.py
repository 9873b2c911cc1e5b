"""Fused epilogues of the CPU GEMM (MatMul, Conv, pointwise Conv) on the OpenCL device: bias,
an activation (GELU in both forms, Tanh, Sigmoid, Erf, Relu) and a residual, fused at O3 into
one kernel, against the numpy references run op by op.

Shapes mix 1s, primes and multiples of the register tile, so that tiles wholly inside the
result (stored as float8 vectors: `EpilogueCode.vector_store`) and edge tiles (stored element
by element) both occur; biases hold NaN and +-inf in columns that fall in both. Where the
problem has a whole tile, the kernel must contain the vector store.

Bound. The product is a sum of K terms accumulated in another order than numpy's: within
2*K*u*S of it (u = 2**-24, S = max |A| @ |B|; see test_gemm_cpu.py). Every activation here has
a slope of at most 1.13 (GELU's largest; erf's 2/sqrt(pi) = 1.128), so the epilogue's result
may differ by 1.13 times that, on top of float32's TOLERANCE row for the activation itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, strategies as st

import ember
from ember.codegen.kernels.conv_rows import SMALL_CIN
from ember.codegen.kernels.epilogue import lane_step
from ember.frontends.builder import GraphBuilder
from ember.ir import DType, Graph
from tests.harness import TOLERANCE, assert_close
from tests.strategies import array_for

pytestmark = pytest.mark.opencl

SLOPE = 1.13
U = {DType.FLOAT32: 2.0**-24, DType.FLOAT16: 2.0**-11}
ACTIVATIONS: dict[str, Callable] = {
    "none": lambda b, h: h,
    "gelu": lambda b, h: b.Gelu(h),
    "gelu_tanh": lambda b, h: b.Gelu(h, approximate="tanh"),
    "tanh": lambda b, h: b.Tanh(h),
    "sigmoid": lambda b, h: b.Sigmoid(h),
    "erf": lambda b, h: b.Erf(h),
    "relu": lambda b, h: b.Relu(h),
}


def special_bias(n: int, dtype: DType, seed: int) -> np.ndarray:
    """A bias with NaN, inf and -inf in the first column, the tenth (inside a second vector
    of a whole tile) and the last (an edge tile when N is not a multiple of the tile)."""
    bias = array_for(seed, (n,), dtype)
    for col, value in zip((0, 9, n - 1), (np.nan, np.inf, -np.inf)):
        if col < n:
            bias[col] = value
    return bias


def run_case(graph: Graph, feeds: dict[str, np.ndarray], magnitude: float, k: int,
             target: str) -> ember.CompiledModel:
    """O3 on the device against O0 through numpy; one fused product step."""
    expected = ember.compile(graph, target="cpu", opt_level=0)(**feeds)["y"]
    model = ember.compile(graph, target=target, opt_level=3, strict=True)
    got = model(**feeds)["y"]
    dtype = DType.from_numpy(expected.dtype)
    rtol, atol = TOLERANCE[dtype]
    assert_close(got, expected, "epilogue",
                 (rtol, atol + SLOPE * 2.0 * k * U[dtype] * magnitude))
    steps = [s.op for s in model.plan.steps if s.op != "Reshape"]
    assert steps in (["MatMul"], ["Conv"]), steps
    return model


def sources(model: ember.CompiledModel) -> str:
    return "".join(k.source for s in model.plan.steps if s.lowered is not None
                   for k in s.lowered.kernels)


# -- MatMul -------------------------------------------------------------------------------------
@st.composite
def matmul_case(draw):
    return dict(
        m=draw(st.sampled_from((1, 5, 6, 7, 13))),
        n=draw(st.sampled_from((1, 8, 13, 16, 17, 40))),
        k=draw(st.sampled_from((1, 3, 16))),
        batch=draw(st.sampled_from(((), (2,)))),
        act=draw(st.sampled_from(sorted(ACTIVATIONS))),
        bias=draw(st.booleans()),
        residual=draw(st.booleans()),
        constant_b=draw(st.booleans()),
        dtype=draw(st.sampled_from((DType.FLOAT32, DType.FLOAT32, DType.FLOAT32,
                                    DType.FLOAT16))),
        seed=draw(st.integers(0, 2**16)),
    )


@given(case=matmul_case())
def test_matmul_epilogues(opencl_target, case):
    m, n, k, dtype, seed = case["m"], case["n"], case["k"], case["dtype"], case["seed"]
    a = array_for(seed, (*case["batch"], m, k), dtype)
    w = array_for(seed + 1, (k, n), dtype)
    bias = special_bias(n, dtype, seed + 2) if case["bias"] else None
    inputs = {"x": a.shape} if case["constant_b"] else {"x": a.shape, "w": w.shape}
    feeds = {"x": a} if case["constant_b"] else {"x": a, "w": w}

    def product(b, x, *rest):
        return b.MatMul(x, b.constant(w) if case["constant_b"] else rest[0])

    b = GraphBuilder("epilogue")
    values = [b.input(name, shape, dtype) for name, shape in inputs.items()]
    h = product(b, *values)
    if bias is not None:
        h = b.Add(h, b.constant(bias))
    h = ACTIVATIONS[case["act"]](b, h)
    if case["residual"]:
        r = array_for(seed + 3, (*case["batch"], m, n), dtype)
        h = b.Add(h, b.input("r", r.shape, dtype))
        feeds["r"] = r
    b.output("y", h)
    magnitude = float((np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64))).max())
    model = run_case(b.build(), feeds, magnitude, k, opencl_target)
    source = sources(model)
    # a whole tile exists: vectors (a few rows take the GEMV kernel, gemv_cpu.py, instead)
    if dtype is DType.FLOAT32 and n in (8, 16, 17, 40) and "gemm_cpu:" in source:
        assert "EP_VSTORE(c + ep_o" in source


# -- Conv ---------------------------------------------------------------------------------------
@st.composite
def conv_case(draw):
    return dict(
        batch=draw(st.sampled_from((1, 2))),
        cin=draw(st.sampled_from((SMALL_CIN + 1, SMALL_CIN + 4))),  # fewer: conv_rows.py
        cout=draw(st.sampled_from((3, 8, 17, 24))),
        spatial=draw(st.sampled_from(((5, 7), (4, 4), (1, 9)))),
        kernel=draw(st.sampled_from((1, 3))),
        act=draw(st.sampled_from(sorted(ACTIVATIONS))),
        bias=draw(st.booleans()),
        residual=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@given(case=conv_case())
def test_conv_epilogues(opencl_target, case):
    f32 = DType.FLOAT32
    seed, kernel, cout = case["seed"], case["kernel"], case["cout"]
    x = array_for(seed, (case["batch"], case["cin"], *case["spatial"]), f32)
    w = array_for(seed + 1, (cout, case["cin"], kernel, kernel), f32)
    bias = special_bias(cout, f32, seed + 2) if case["bias"] else None
    pads = (kernel // 2,) * 4
    b = GraphBuilder("epilogue")
    h = b.Conv(b.input("x", x.shape, f32), b.constant(w),
               *([b.constant(bias)] if bias is not None else []), pads=pads)
    h = ACTIVATIONS[case["act"]](b, h)
    feeds = {"x": x}
    if case["residual"]:
        r = array_for(seed + 3, (case["batch"], cout, *case["spatial"]), f32)
        h = b.Add(h, b.input("r", r.shape, f32))
        feeds["r"] = r
    b.output("y", h)
    k = case["cin"] * kernel * kernel
    magnitude = float(np.abs(x).max() * np.abs(w).max() * k)
    model = run_case(b.build(), feeds, magnitude, k, opencl_target)
    source = sources(model)
    pixels = case["spatial"][0] * case["spatial"][1]
    assert "gemm_cpu:" in source
    if kernel == 1 and pixels >= 8:  # pointwise: lanes are pixels, stored contiguous
        assert "EP_VSTORE(y + ep_o" in source
    if kernel == 3 and cout >= 8:  # lanes are channels: the output stored lane by lane
        assert f"y[ep_o + {pixels}] = " in source


# -- lane steps ---------------------------------------------------------------------------------
@pytest.mark.parametrize("in_shape, out_shape, lane_axes, step", [
    ((16,), (5, 16), (1,), 1),  # MatMul bias along the lanes
    ((5, 1), (5, 16), (1,), 0),  # per row: one value for every lane
    ((1,), (5, 16), (1,), 0),
    ((2, 5, 16), (2, 5, 16), (2,), 1),
    ((1, 8, 1, 1), (2, 8, 4, 6), (1,), 1),  # conv bias along the channel lanes
    ((2, 8, 4, 6), (2, 8, 4, 6), (1,), 24),  # conv residual: strided lanes
    ((2, 8, 4, 6), (2, 8, 4, 6), (2, 3), 1),  # pointwise conv residual: pixels
    ((1, 8, 1, 1), (2, 8, 4, 6), (2, 3), 0),
    ((1, 1, 4, 6), (2, 8, 4, 6), (2, 3), 1),
    ((1, 1, 1, 6), (2, 8, 4, 6), (2, 3), None),  # broadcast along H but not W: no one step
    ((1, 1, 4, 1), (2, 8, 4, 6), (2, 3), None),
    ((1, 1, 1, 6), (2, 8, 1, 6), (2, 3), 1),  # H of size 1 never moves
])
def test_lane_step(in_shape, out_shape, lane_axes, step):
    assert lane_step(in_shape, out_shape, lane_axes) == step
