"""The CPU GEMV (codegen/gemv_cpu.py) against numpy on the PoCL device.

Through ember: MatMul nodes that route to it (one row of A, 1-D A, a batch of single rows
against one B, a few rows of B as it is; trans_a, trans_b; float32 and float16) with B a
graph input (`check_op`, O0: B read as rows or columns) and a constant (O2: B packed at
compile time), with and without fused epilogues (bias + Relu, a residual Add); Convs with
one output pixel that sees its whole input. Directly: every candidate of
a spread of the gemv_cpu search space in every layout on odd shapes (1, primes, non-multiples of each panel,
unroll and K part; broadcast batches; several rows; K split into partial sums).

Accumulation bound. Each result is a sum of K products accumulated in float (lanes added in
another order than numpy's, and K parts added at the end); kernel and reference both differ
from the exact sum by at most about K*u*S (u the unit roundoff, S the sum of the products'
magnitudes, Higham 3.1), so the tests allow atol = 2*(K+1)*u*max(S) (S in float64 from
|A| @ |B|, plus the epilogue's extra term) on top of the dtype's TOLERANCE row.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import ember
from ember.codegen.kernels.gemm_cpu import BOperand
from ember.codegen.kernels.gemv_cpu import (
    DEFAULT_GEMV_PARAMS, MAX_ROWS, GemvParams, GemvProblem, AOperand, conv_gemv_ok,
    gemv_applies, gemv_launch, gemv_partial_bytes, gemv_reduce_launch,
    gemv_rows, matmul_gemv_problem, pack_gemv_b, render_gemv, render_gemv_reduce,
)
from ember.codegen.types import Kernel, NodeSpec
from ember.codegen.render import kernel_name
from ember.frontends.builder import GraphBuilder
from ember.ir import OPS, DType, TensorType
from ember.ir.ops.fused import ExprNode, FusedExpr
from ember.ir.ops.linalg import conv_geometry, conv_reference, matmul_dims, matmul_reference
from tests.harness import TOLERANCE, KernelLauncher, assert_close, check_op, space_sample
from tests.strategies import array_for

pytestmark = pytest.mark.opencl

DIMS = (1, 2, 3, 5, 7, 13, 17, 31, 67)
U = 2.0**-24  # unit roundoff of the float accumulation (float32 and float16 alike)
F32, F16 = DType.FLOAT32, DType.FLOAT16


def sum_tolerance(dtype: DType, magnitude: np.ndarray, k: int) -> tuple[float, float]:
    """(rtol, atol) for sums of k products of the given magnitudes (module docstring)."""
    rtol, atol = TOLERANCE[dtype]
    largest = float(magnitude.max()) if magnitude.size else 0.0
    return rtol, atol + 2.0 * (k + 1) * U * largest


def epilogue(kind: str | None, dtype: DType) -> FusedExpr | None:
    """bias + Relu (a Linear layer), or + residual (value 0 is the product)."""
    if kind is None:
        return None
    add = ExprNode("Add", (0, 1), OPS["Add"].make_attrs({}), dtype)
    if kind == "residual":
        return FusedExpr(2, (add,), (2,))
    relu = ExprNode("Relu", (2,), OPS["Relu"].make_attrs({}), dtype)
    return FusedExpr(2, (add, relu), (3,))


def matmul_spec(arrays: list[np.ndarray], attrs: dict, packed: bool) -> NodeSpec:
    types = [TensorType(a.shape, DType.from_numpy(a.dtype)) for a in arrays]
    made = OPS["MatMul"].make_attrs(attrs)
    return NodeSpec("MatMul", made, tuple(types), OPS["MatMul"].infer(types, made),
                    frozenset({1}) if packed else frozenset())


def expected_and_tolerance(arrays: list[np.ndarray], attrs: dict
                           ) -> tuple[np.ndarray, tuple[float, float]]:
    """The reference result and its bound. With an epilogue, float16 gets one more half
    rounding (2^-11 * max(S)): the reference rounds the product to half before adding,
    the kernel adds in float and rounds once."""
    a, b = arrays[:2]
    dims = matmul_dims(a.shape, b.shape, attrs.get("trans_a", 0), attrs.get("trans_b", 0))
    opdef = OPS["MatMul"]
    expected = opdef.evaluate(arrays, opdef.make_attrs(attrs))[0]
    mags = [np.abs(x.astype(np.float64)) for x in arrays]
    magnitude = matmul_reference(*mags[:2], trans_a=attrs.get("trans_a", 0),
                                 trans_b=attrs.get("trans_b", 0))
    if len(mags) > 2:
        magnitude = magnitude + mags[2]
    dtype = DType.from_numpy(a.dtype)
    rtol, atol = sum_tolerance(dtype, magnitude, dims.k)
    if dtype is F16 and len(arrays) > 2 and magnitude.size:
        atol += 2.0**-11 * float(magnitude.max())
    return expected, (rtol, atol)


def run_constant_b(arrays: list[np.ndarray], attrs: dict, target: str) -> ember.CompiledModel:
    """MatMul(x, constant B[, extra]) at O2 (B packed at compile time), checked against the
    reference; the model, to look at its plan."""
    g = GraphBuilder("gemv_constant_b")
    x = g.input("x", arrays[0].shape, DType.from_numpy(arrays[0].dtype))
    extras = [g.input("e", arrays[2].shape, DType.from_numpy(arrays[2].dtype))] \
        if len(arrays) > 2 else []
    g.output("y", g.op("MatMul", x, g.constant(arrays[1]), *extras, **attrs))
    model = ember.compile(g.build(), target=target, opt_level=2, strict=True)
    feeds = {"x": arrays[0], **({"e": arrays[2]} if extras else {})}
    expected, tolerance = expected_and_tolerance(arrays, attrs)
    assert_close(model(**feeds)["y"], expected, "MatMul, constant B", tolerance)
    return model


@st.composite
def gemv_case(draw):
    """MatMul operands that route to the GEMV, and the node's attributes."""
    n, k = draw(st.sampled_from(DIMS)), draw(st.sampled_from(DIMS))
    dtype = draw(st.sampled_from([F32, F32, F16]))
    trans_b = draw(st.integers(0, 1))
    form = draw(st.sampled_from(["row", "row", "vector", "batch_rows", "batched", "few_rows"]))
    m, trans_a = 1, 0
    batch_a: tuple[int, ...] = ()
    batch_b: tuple[int, ...] = ()
    if form == "batch_rows":  # single rows against one B: folded into rows
        batch_a = draw(st.sampled_from([(2,), (3,), (2, 2)]))
    elif form == "batched":  # one row per batch, each its own B
        batch_a = batch_b = (draw(st.sampled_from([2, 3])),)
    elif form == "few_rows":
        m = draw(st.integers(2, MAX_ROWS))
    if form != "vector" and draw(st.booleans()):
        trans_a = 1
    seed = draw(st.integers(0, 2**31))
    a_shape = (k,) if form == "vector" else (*batch_a, *((k, m) if trans_a else (m, k)))
    b_shape = (*batch_b, *((n, k) if trans_b else (k, n)))
    arrays = [array_for(seed, a_shape, dtype, low=-3, high=3),
              array_for(seed + 1, b_shape, dtype, low=-3, high=3)]
    kind = draw(st.sampled_from([None, None, "bias_relu", "residual"]))
    attrs = {"trans_a": trans_a, "trans_b": trans_b}
    if kind is not None:
        out_shape = matmul_dims(a_shape, b_shape, trans_a, trans_b).out_shape
        extra = (out_shape[-1],) if kind == "bias_relu" and out_shape else out_shape
        arrays.append(array_for(seed + 2, extra, dtype, low=-3, high=3))
        attrs["epilogue"] = epilogue(kind, dtype)
    return arrays, attrs, form


@given(gemv_case())
def test_matmul_through_ember(opencl_target, case):
    """B a graph input (O0, check_op) and a constant (O2, packed); each runs the GEMV."""
    arrays, attrs, form = case
    few_rows = form == "few_rows"
    for packed in (False, True):
        spec = matmul_spec(arrays, attrs, packed)
        assert gemv_applies(spec) is not (few_rows and packed)  # the GEMM's there
        if packed:
            model = run_constant_b(arrays, attrs, opencl_target)
        else:
            model = check_op("MatMul", arrays, attrs, target=opencl_target,
                             tolerance=expected_and_tolerance(arrays, attrs)[1])
        (step,) = [s for s in model.plan.steps if s.op == "MatMul"]
        want = "matmul_cpu" if few_rows and packed else "matmul_gemv"
        assert step.lowered.kernels[0].name.startswith(want), step.lowered.kernels[0].name
        assert bool(step.lowered.packed) is packed


def test_gemv_routing_and_row_folding():
    a, b = np.zeros((4, 1, 9), np.float32), np.zeros((9, 5), np.float32)
    assert gemv_rows(a.shape, b.shape, 0, 0) == ((4, 9), 0)
    assert gemv_rows((4, 9, 1), b.shape, 1, 0) == ((4, 9), 0)  # a row stored as a column
    assert gemv_rows((4, 1, 9), (4, 9, 5), 0, 0) == ((4, 1, 9), 0)  # each its own B
    assert gemv_applies(matmul_spec([a, b], {}, packed=True))  # 4 folded rows, B packed
    nine_rows = np.zeros((9, 1, 9), np.float32)
    assert not gemv_applies(matmul_spec([nine_rows, b], {}, packed=False))
    assert not gemv_applies(matmul_spec([np.zeros((5, 9), np.float32), b], {}, False))


# -- convolutions with one output pixel -------------------------------------------------------
CONVS = [  # x shape, w shape, group, strides, pads: each a conv_gemv_ok geometry
    ((2, 8, 1, 1), (5, 8, 1, 1), 1, (1, 1), (0, 0, 0, 0)),  # squeeze-excitation 1x1 on 1x1
    ((2, 10, 1, 1), (34, 5, 1, 1), 2, (1, 1), (0, 0, 0, 0)),
    ((1, 5, 5, 7), (10, 5, 5, 7), 1, (2, 3), (0, 0, 1, 2)),  # a classifier conv: whole map
    ((2, 4, 3), (6, 2, 3), 2, (1,), (0, 0)),
    ((1, 3, 2, 2, 2), (7, 3, 2, 2, 2), 1, (1, 1, 1), (0, 0, 0, 0, 0, 0)),
]


@pytest.mark.parametrize("case", range(len(CONVS)))
def test_single_pixel_conv(case, opencl_target):
    x_shape, w_shape, group, strides, pads = CONVS[case]
    rank = len(x_shape) - 2
    kw = {"strides": strides, "dilations": (1,) * rank, "pads": pads, "group": group}
    assert conv_gemv_ok(conv_geometry(x_shape, w_shape, OPS["Conv"].make_attrs(kw)))
    x = array_for(case, x_shape, F32)
    w = array_for(case + 1, w_shape, F32)
    bias = array_for(case + 2, (w_shape[0],), F32)
    mags = [np.abs(v.astype(np.float64)) for v in (x, w, bias)]
    expected = conv_reference(x, w, bias, **kw)
    tolerance = sum_tolerance(F32, conv_reference(*mags, **kw), math.prod(w_shape[1:]))
    model = check_op("Conv", [x, w, bias], kw, target=opencl_target, tolerance=tolerance)
    assert model.plan.steps[-1].lowered.kernels[0].name.startswith("conv_gemv")
    g = GraphBuilder("conv_gemv")  # W constant and packed, Relu fused as the epilogue
    xi = g.input("x", x_shape)
    g.output("y", g.op("Relu", g.op("Conv", xi, g.constant(w), g.constant(bias), **kw)))
    model = ember.compile(g.build(), target=opencl_target, strict=True)
    assert_close(model(x=x)["y"], np.maximum(expected, 0), "Conv + Relu, W packed", tolerance)
    (step,) = [s for s in model.plan.steps if s.op == "Conv"]
    assert step.lowered.kernels[0].name.startswith("conv_gemv") and step.lowered.packed


# -- the generator, every candidate ----------------------------------------------------------
class GemvRun:
    """One problem through the generator with B "rows", "cols" or "packed" (on the host)."""

    def __init__(self, a: np.ndarray, b: np.ndarray, trans_a: int, trans_b: int,
                 params: GemvParams, layout: str) -> None:
        self.a, self.b, self.trans_b, self.layout = a, b, trans_b, layout
        dims = matmul_dims(a.shape, b.shape, trans_a, trans_b)
        self.out_shape = dims.out_shape
        self.params = params.fitted(dims.n, dims.k, "packed" if layout == "packed" else
                                    "cols" if trans_b else "rows")
        self.problem = matmul_gemv_problem(a.shape, b.shape, DType.from_numpy(a.dtype),
                                           trans_a, trans_b, params=self.params,
                                           packed_b=layout == "packed")
        assert self.problem.b.layout == layout
        name = kernel_name("gemv_cpu_test", self.problem, self.params)
        self.kernels = [Kernel(name, render_gemv(self.problem, self.params, name))]
        if self.params.ksplit > 1:
            self.kernels.append(Kernel(name + "_sum", render_gemv_reduce(
                self.problem, self.params, name + "_sum")))
        self.expected = matmul_reference(a, b, trans_a=trans_a, trans_b=trans_b)
        self.magnitude = matmul_reference(np.abs(a.astype(np.float64)),
                                          np.abs(b.astype(np.float64)),
                                          trans_a=trans_a, trans_b=trans_b)

    def run(self, launcher: KernelLauncher, program) -> np.ndarray:
        b = pack_gemv_b(self.b, self.params, trans=bool(self.trans_b)) \
            if self.layout == "packed" else self.b
        c = launcher.buffer(max(1, math.prod(self.out_shape)) * self.a.dtype.itemsize)
        buffers = [launcher.buffer(self.a), launcher.buffer(b), c]
        if self.params.ksplit > 1:
            buffers.append(launcher.buffer(gemv_partial_bytes(self.problem, self.params)))
        launcher.launch(program, self.kernels[0].name,
                        gemv_launch(self.problem, self.params), *buffers)
        if self.params.ksplit > 1:
            launcher.launch(program, self.kernels[1].name,
                            gemv_reduce_launch(self.problem, self.params), *buffers)
        return launcher.read(c, self.out_shape, self.a.dtype)

    def check(self, launcher: KernelLauncher, program, what: str) -> None:
        tolerance = sum_tolerance(DType.from_numpy(self.a.dtype), self.magnitude,
                                  self.problem.k)
        assert_close(self.run(launcher, program), self.expected,
                     f"{what} {self.layout} {self.a.shape}x{self.b.shape}", tolerance)


@pytest.fixture(scope="module")
def launcher(opencl_target) -> KernelLauncher:
    return KernelLauncher(opencl_target)


def odd_jobs(params: GemvParams) -> list[GemvRun]:
    """Shapes around every tile of `params`: N past a panel and past a work-item's panels,
    K past the unroll, a vector and a K part, K and N of 1; one row and two (A transposed:
    strided along K; MAX_ROWS rows run in test_matmul_through_ember), batches of A and of
    B broadcast."""
    n = params.nr * params.ppw + 3
    k = max(2 * params.ku * params.vw, 32 * params.ksplit) + 5
    shapes = [  # a shape, b shape (K x N), trans_a, layouts
        ((1, k), (k, n), 0, ("rows", "cols", "packed")),
        ((1, k), (2, k, 1), 0, ("rows", "cols")),
        ((3, 1, 1), (1, 2 * n + 1), 1, ("cols", "packed")),
        ((2, k, 2), (k, n), 1, ("rows", "cols", "packed")),
    ]
    jobs = []
    for index, (a_shape, b_shape, trans_a, layouts) in enumerate(shapes):
        a = array_for(index, a_shape, F32)
        b = array_for(index + 10, b_shape, F32)
        for layout in layouts:
            trans_b = int(layout == "cols")
            b_stored = np.ascontiguousarray(np.swapaxes(b, -1, -2)) if trans_b else b
            jobs.append(GemvRun(a, b_stored, trans_a, trans_b, params, layout))
    return jobs


@pytest.mark.parametrize("params", space_sample("gemv_cpu", 15), ids=str)
def test_every_candidate_on_odd_shapes(launcher, params):
    jobs = odd_jobs(params)
    program = launcher.build([kernel for job in jobs for kernel in job.kernels])
    for job in jobs:
        job.check(launcher, program, str(params))


def test_half_double_and_empty_k(launcher):
    jobs = []
    for layout in ("rows", "cols", "packed"):
        trans_b = int(layout == "cols")
        for dtype in (F16, DType.FLOAT64):
            if dtype is DType.FLOAT64 and not launcher.device.info.traits.fp64:
                continue
            a = array_for(1, (2, 1, 37), dtype)
            b = array_for(2, (2, 19, 37) if trans_b else (2, 37, 19), dtype)
            params = DEFAULT_GEMV_PARAMS if dtype is F16 else GemvParams(8, 2, 2, 1, 2)
            jobs.append(GemvRun(a, b, 0, trans_b, params, layout))
        empty_b = np.zeros((9, 0) if trans_b else (0, 9), np.float32)
        for params in (DEFAULT_GEMV_PARAMS, GemvParams(4, 1, 1, 1, 4)):
            jobs.append(GemvRun(np.zeros((1, 0), np.float32), empty_b, 0, trans_b, params,
                                layout))
    program = launcher.build([kernel for job in jobs for kernel in job.kernels])
    for job in jobs:
        job.check(launcher, program, str(job.a.dtype))


def test_custom_store_and_offsets(launcher):
    """The problem interface: A at an offset with a row stride, a store with extra
    arguments (the epilogue's way in), B "cols" at an offset."""
    k, n = 21, 11
    a = array_for(3, (40, 2 * k), F32)  # A = rows 5 and 6 of a wider array, first K columns
    b = array_for(4, (n + 1, k), F32)  # B^T = rows 1.. of b
    scale = array_for(5, (n,), F32)
    params = GemvParams(4, 2, 1)
    problem = GemvProblem(
        m=2, n=n, k=k, batches=1,
        params=("__global const float* restrict a", "__global const float* restrict b",
                "__global float* restrict c", "__global const float* restrict scale"),
        a=AOperand("a", "float", f"5 * {2 * k}", 2 * k), b=BOperand("b", "cols", "float",
                                                                      f"{k}", k),
        store=f"c[gm * {n} + gn] = fmax(value * scale[gn], 0.0f);")
    name = kernel_name("gemv_cpu_store_test", problem)
    program = launcher.build([Kernel(name, render_gemv(problem, params, name))])
    c = launcher.buffer(2 * n * 4)
    launcher.launch(program, name, gemv_launch(problem, params), launcher.buffer(a),
                    launcher.buffer(b), c, launcher.buffer(scale))
    expected = np.maximum(a[5:7, :k] @ b[1:].T * scale, 0)
    magnitude = np.abs(a[5:7, :k]) @ np.abs(b[1:]).T * np.abs(scale)
    assert_close(launcher.read(c, (2, n), np.float32), expected, "custom store",
                 sum_tolerance(F32, magnitude, k))


# -- parameters -------------------------------------------------------------------------------
def test_violations_name_each_broken_rule():
    assert not DEFAULT_GEMV_PARAMS.violations()
    assert all(not p.violations() for p in space_sample("gemv_cpu", 15))
    broken = GemvParams(vw=3, nv=0, ku=3, ppw=0, ksplit=0).violations()
    for rule in ("vw in", "nv <= 16", "ku in", "ppw >= 1", "ksplit >= 1"):
        assert any(rule in reason for reason in broken), rule
    assert any("512-bit" in r for r in GemvParams(vw=16).violations(itemsize=8))
    with pytest.raises(ValueError, match="vw in"):
        GemvParams(vw=5).validate()


def test_fitted_shrinks_to_the_problem():
    params = GemvParams(vw=16, nv=4, ku=2, ppw=8, ksplit=8)
    assert params.fitted(3072, 768, "packed") == GemvParams(16, 4, 2, 8, 8)
    assert params.fitted(5, 768, "rows") == GemvParams(8, 1, 2, 1, 8)  # one panel of 8
    assert params.fitted(5, 768, "cols") == GemvParams(16, 4, 2, 1, 8)  # lanes along K
    assert params.fitted(3, 9, "cols") == GemvParams(8, 3, 2, 1, 1)
    assert params.fitted(100, 100, "packed").ksplit == 4  # parts of at least 32
    assert params.fitted(1, 0, "rows").ksplit == 1
