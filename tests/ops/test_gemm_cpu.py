"""The CPU GEMM generator (codegen/gemm_cpu.py) run directly on the OpenCL device against
numpy: MatMul problems (1, primes, non-multiples of every tile, broadcast batches,
trans_a/trans_b; B read as rows, as columns, packed on the host and packed by the device),
Conv problems (pixels as M, W as B, packed or not), a custom store with extra kernel
arguments (the epilogue interface), and every tuner candidate on odd shapes.

Accumulation bound. Each result is a sum of K products, accumulated in the compute type in
another order than numpy's; both differ from the exact sum by at most about K*u*S (u the
unit roundoff, S the sum of the products' magnitudes, Higham 3.1), so the tests allow
atol = 2*K*u*max(S) (S in float64 from |A| @ |B|) on top of the dtype's TOLERANCE row.
Integer products must be exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from ember.codegen.kernels.gemm_cpu import (
    BOperand, CpuGemmParams, DEFAULT_CPU_GEMM_PARAMS, conv1x1_problem, conv_problem,
    is_pointwise,
    cpu_gemm_launch, cpu_gemm_params, cpu_pack_launch, matmul_problem, pack_b,
    pack_conv_weight, packed_b_shape, render_cpu_gemm, render_cpu_pack,
)
from ember.codegen.types import Kernel
from ember.codegen.render import kernel_name
from ember.ir import DType
from ember.ir.attrs import Attrs
from ember.ir.ops.linalg import conv_geometry, conv_reference, matmul_dims, matmul_reference
from tests.harness import TOLERANCE, KernelLauncher, assert_close, space_sample
from tests.strategies import array_for, broadcastable_shapes

pytestmark = pytest.mark.opencl

DIMS = (1, 2, 3, 5, 7, 13, 17, 33)
UNIT_ROUNDOFF = {DType.FLOAT32: 2.0**-24, DType.FLOAT16: 2.0**-24, DType.FLOAT64: 2.0**-53}
B_MODES = ("direct", "host_packed", "device_packed")


@pytest.fixture(scope="module")
def launcher(opencl_target) -> KernelLauncher:
    return KernelLauncher(opencl_target)


def _ext(dtype: DType) -> frozenset[str]:
    return frozenset({"cl_khr_fp64"}) if dtype is DType.FLOAT64 else frozenset()


def sum_tolerance(dtype: DType, magnitude: np.ndarray, k: int) -> tuple[float, float]:
    """(rtol, atol) for results that are sums of k products (see the module docstring)."""
    rtol, atol = TOLERANCE[dtype]
    largest = float(magnitude.max()) if magnitude.size else 0.0
    return rtol, atol + 2.0 * k * UNIT_ROUNDOFF[dtype] * largest


def check(actual: np.ndarray, expected: np.ndarray, magnitude: np.ndarray, k: int,
          what: str) -> None:
    dtype = DType.from_numpy(expected.dtype)
    tol = sum_tolerance(dtype, magnitude, k) if dtype.is_float else None
    assert_close(actual, expected, what, tol)


# -- MatMul -------------------------------------------------------------------------------------
class MatMulRun:
    """MatMul through the generator, B direct, packed on the host or packed on the device:
    its kernels (to build, maybe with others, into one program) and how to run them."""

    def __init__(self, a: np.ndarray, b: np.ndarray, trans_a: int, trans_b: int,
                 params: CpuGemmParams, mode: str) -> None:
        self.a, self.b, self.trans_b, self.params, self.mode = a, b, trans_b, params, mode
        self.dtype = DType.from_numpy(a.dtype)
        self.dims = matmul_dims(a.shape, b.shape, trans_a, trans_b)
        self.problem = matmul_problem(a.shape, b.shape, self.dtype, trans_a, trans_b,
                                      params=params, packed_b=mode != "direct")
        name = kernel_name("gemm_cpu_test", self.problem, params)
        self.kernels = [Kernel(name, render_cpu_gemm(self.problem, params, name),
                               _ext(self.dtype))]
        self.b_batches = math.prod(self.dims.b_batch)
        if mode == "device_packed":
            layout = "cols" if trans_b else "rows"
            pack = kernel_name("gemm_cpu_pack_test", b.shape, layout, params, self.dtype)
            self.kernels.append(Kernel(pack, render_cpu_pack(
                BOperand("b", layout, self.dtype.cl_name), self.dims.k, self.dims.n,
                self.b_batches, params, pack, self.dtype.itemsize)))

    def run(self, launcher: KernelLauncher, program) -> np.ndarray:
        dims, params, itemsize = self.dims, self.params, self.dtype.itemsize
        if self.mode == "host_packed":
            packed = pack_b(self.b, params, trans=bool(self.trans_b))
            assert packed.shape == packed_b_shape(dims.k, dims.n, params.nr, self.b.shape[:-2])
            b_buf = launcher.buffer(packed)
        elif self.mode == "device_packed":
            words = math.prod(packed_b_shape(dims.k, dims.n, params.nr, (self.b_batches,)))
            b_buf = launcher.buffer(words * itemsize)
            launcher.launch(program, self.kernels[1].name,
                            cpu_pack_launch(dims.k, dims.n, self.b_batches, params),
                            launcher.buffer(self.b), b_buf)
        else:
            b_buf = launcher.buffer(self.b)
        c_buf = launcher.buffer(math.prod(dims.out_shape) * itemsize)
        launcher.launch(program, self.kernels[0].name, cpu_gemm_launch(self.problem, params),
                        launcher.buffer(self.a), b_buf, c_buf)
        return launcher.read(c_buf, dims.out_shape, self.a.dtype)


def run_matmul(launcher: KernelLauncher, a: np.ndarray, b: np.ndarray, trans_a: int,
               trans_b: int, params: CpuGemmParams, mode: str) -> np.ndarray:
    job = MatMulRun(a, b, trans_a, trans_b, params, mode)
    return job.run(launcher, launcher.build(job.kernels))


def matmul_expected(a: np.ndarray, b: np.ndarray, trans_a: int, trans_b: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """numpy's product and the sum of the products' magnitudes (for the bound)."""
    expected = matmul_reference(a, b, trans_a=trans_a, trans_b=trans_b)
    if not a.dtype.kind == "f":
        return expected, np.zeros(0)
    magnitude = matmul_reference(np.abs(a.astype(np.float64)), np.abs(b.astype(np.float64)),
                                 trans_a=trans_a, trans_b=trans_b)
    return expected, magnitude


@st.composite
def matmul_case(draw):
    m, n, k = (draw(st.sampled_from(DIMS)) for _ in range(3))
    batch_a, batch_b = draw(broadcastable_shapes(2, max_rank=2, max_dim=3))
    trans_a, trans_b = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16, DType.INT32]))
    seed = draw(st.integers(0, 2**31))
    a_shape = (*batch_a, *((k, m) if trans_a else (m, k)))
    b_shape = (*batch_b, *((n, k) if trans_b else (k, n)))
    if not trans_a and not batch_a and draw(st.booleans()):
        a_shape = (k,)  # a 1-D A is one row
    if not trans_b and not batch_b and draw(st.booleans()):
        b_shape = (k,)  # a 1-D B is one column
    a = array_for(seed, a_shape, dtype, low=-3, high=3)
    b = array_for(seed + 1, b_shape, dtype, low=-3, high=3)
    return a, b, trans_a, trans_b, draw(st.sampled_from(B_MODES))


@given(matmul_case())
def test_matmul_matches_numpy(launcher, case):
    a, b, trans_a, trans_b, mode = case
    dims = matmul_dims(a.shape, b.shape, trans_a, trans_b)
    params = cpu_gemm_params(dims.m, dims.n)
    actual = run_matmul(launcher, a, b, trans_a, trans_b, params, mode)
    expected, magnitude = matmul_expected(a, b, trans_a, trans_b)
    check(actual, expected, magnitude, dims.k, f"{a.shape}x{b.shape} {trans_a}{trans_b} {mode}")


def test_matmul_float64(launcher):
    if not launcher.device.info.traits.fp64:
        pytest.skip("the device has no cl_khr_fp64")
    a = array_for(3, (2, 17, 13), DType.FLOAT64)
    b = array_for(4, (13, 33), DType.FLOAT64)
    for mode in B_MODES:
        actual = run_matmul(launcher, a, b, 0, 0, DEFAULT_CPU_GEMM_PARAMS, mode)
        check(actual, *matmul_expected(a, b, 0, 0), 13, f"float64 {mode}")


def test_matmul_empty_sum_is_zero(launcher):
    a, b = np.zeros((5, 0), np.float32), np.zeros((0, 9), np.float32)
    jobs = [MatMulRun(a, b, 0, 0, DEFAULT_CPU_GEMM_PARAMS, mode) for mode in B_MODES]
    program = launcher.build([kernel for job in jobs for kernel in job.kernels])
    for job in jobs:
        np.testing.assert_array_equal(job.run(launcher, program), np.zeros((5, 9), np.float32))


@pytest.mark.parametrize("params", space_sample("gemm_cpu", 22), ids=str)
def test_every_candidate_on_odd_shapes(launcher, params):
    """A tuner picks among the candidates: none may be wrong. Each B layout on a shape with
    full and partial tiles along M and N, a full and a partial band of tiles (group_m), a
    broadcast batch, trans_a, trans_b."""
    m, n, k = params.mr * (max(params.group_m, 1) + 1) + 1, params.nr + 3, 7
    cases = [((2, m, k), (k, n), 0, 0, "direct"), ((1, k, m), (2, n, k), 1, 1, "direct"),
             ((m, k), (2, k, n), 0, 0, "host_packed")]
    jobs, expected = [], []
    for index, (a_shape, b_shape, trans_a, trans_b, mode) in enumerate(cases):
        a = array_for(index, a_shape, DType.FLOAT32)
        b = array_for(index + 7, b_shape, DType.FLOAT32)
        jobs.append(MatMulRun(a, b, trans_a, trans_b, params, mode))
        expected.append(matmul_expected(a, b, trans_a, trans_b))
    program = launcher.build([kernel for job in jobs for kernel in job.kernels])
    for job, (want, magnitude) in zip(jobs, expected):
        check(job.run(launcher, program), want, magnitude, k, f"{params} {job.mode}")


def test_custom_store_with_extra_arguments(launcher):
    """The epilogue interface: a store that reads extra buffers at the output index."""
    m, n, k = 7, 19, 11
    a = array_for(1, (m, k), DType.FLOAT32)
    b = array_for(2, (k, n), DType.FLOAT32)
    scale = array_for(3, (n,), DType.FLOAT32)
    residual = array_for(4, (m, n), DType.FLOAT32)
    params = cpu_gemm_params(m, n)
    problem = matmul_problem(
        a.shape, b.shape, DType.FLOAT32, 0, 0, params=params,
        store="c[c_off] = fmax(value * scale[gn] + residual[c_off], 0.0f);",
        extra_params=("__global const float* restrict scale",
                      "__global const float* restrict residual"))
    name = kernel_name("gemm_cpu_store_test", problem)
    program = launcher.build([Kernel(name, render_cpu_gemm(problem, params, name))])
    c_buf = launcher.buffer(m * n * 4)
    launcher.launch(program, name, cpu_gemm_launch(problem, params), launcher.buffer(a),
                    launcher.buffer(b), c_buf, launcher.buffer(scale), launcher.buffer(residual))
    expected = np.maximum(a @ b * scale + residual, 0)
    magnitude = np.abs(a) @ np.abs(b) * np.abs(scale) + np.abs(residual)
    check(launcher.read(c_buf, (m, n), np.float32), expected, magnitude, k + 1, "epilogue")


# -- Conv ---------------------------------------------------------------------------------------
class ConvRun:
    """Conv through the generator: pixels as M with W packed on the host or read as it is,
    or (mode "pointwise") a 1x1 conv as Y = W @ X."""

    def __init__(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, attrs: Attrs,
                 params: CpuGemmParams, packed: bool | str) -> None:
        self.x, self.w, self.bias, self.params = x, w, bias, params
        self.packed = packed is True
        self.dtype = DType.from_numpy(x.dtype)
        self.g = conv_geometry(x.shape, w.shape, attrs)
        if packed == "pointwise":
            self.problem = conv1x1_problem(self.g, self.dtype, has_bias=bias is not None)
        else:
            self.problem = conv_problem(self.g, self.dtype, params=params, packed_w=self.packed,
                                        has_bias=bias is not None)
        name = kernel_name("gemm_cpu_conv_test", self.problem, params)
        self.kernels = [Kernel(name, render_cpu_gemm(self.problem, params, name))]

    def run(self, launcher: KernelLauncher, program) -> np.ndarray:
        weight = pack_conv_weight(self.w, self.g.group, self.params) if self.packed else self.w
        inputs = [launcher.buffer(self.x), launcher.buffer(weight)]
        if self.bias is not None:
            inputs.append(launcher.buffer(self.bias))
        y_buf = launcher.buffer(math.prod(self.g.out_shape) * self.dtype.itemsize)
        launcher.launch(program, self.kernels[0].name, cpu_gemm_launch(self.problem, self.params),
                        *inputs, y_buf)
        return launcher.read(y_buf, self.g.out_shape, self.x.dtype)


@st.composite
def conv_case(draw):
    rank = draw(st.sampled_from([1, 2, 2, 3]))
    group = draw(st.sampled_from([1, 1, 2]))
    cig, cog = draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 3, 7, 17]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    dilations = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * rank))
    spatial = tuple(draw(st.sampled_from([1, 2, 5, 7, 9] if rank < 3 else [1, 2, 4]))
                    for _ in range(rank))
    for axis in range(rank):  # the output must not be empty
        span = (kernel[axis] - 1) * dilations[axis] + 1
        if spatial[axis] + pads[axis] + pads[rank + axis] < span:
            spatial = spatial[:axis] + (span,) + spatial[axis + 1:]
    batch = draw(st.sampled_from([1, 2]))
    dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16]))
    seed = draw(st.integers(0, 2**31))
    x = array_for(seed, (batch, cig * group, *spatial), dtype)
    w = array_for(seed + 1, (cog * group, cig, *kernel), dtype)
    bias = array_for(seed + 2, (cog * group,), dtype) if draw(st.booleans()) else None
    attrs = Attrs({"strides": strides, "dilations": dilations, "pads": pads, "group": group})
    return x, w, bias, attrs, draw(st.booleans())


def conv_expected(x, w, bias, attrs) -> tuple[np.ndarray, np.ndarray]:
    kw = {name: attrs[name] for name in ("strides", "dilations", "pads", "group")}
    extra = (bias,) if bias is not None else ()
    expected = np.ascontiguousarray(conv_reference(x, w, *extra, **kw))
    mags = [np.abs(v.astype(np.float64)) for v in (x, w, *extra)]
    return expected, conv_reference(*mags, **kw)


@given(conv_case())
def test_conv_matches_numpy(launcher, case):
    x, w, bias, attrs, packed = case
    g = conv_geometry(x.shape, w.shape, attrs)
    params = cpu_gemm_params(math.prod(g.out_spatial), g.cout_per_group)
    jobs = [ConvRun(x, w, bias, attrs, params, packed)]
    if is_pointwise(g):
        pointwise = cpu_gemm_params(g.cout_per_group, math.prod(g.out_spatial))
        jobs.append(ConvRun(x, w, bias, attrs, pointwise, "pointwise"))
    program = launcher.build([kernel for job in jobs for kernel in job.kernels])
    expected, magnitude = conv_expected(x, w, bias, attrs)
    k = g.cin_per_group * math.prod(g.kernel) + 1
    for job in jobs:
        check(job.run(launcher, program), expected, magnitude, k,
              f"conv {x.shape} {w.shape} {dict(attrs)} {packed}")


def test_pointwise_conv_as_plain_product(launcher):
    """1x1 convs without stride or pads, grouped and batched, through conv1x1_problem."""
    attrs = Attrs({"strides": (1, 1), "dilations": (1, 1), "pads": (0, 0, 0, 0), "group": 2})
    x = array_for(8, (2, 10, 5, 7), DType.FLOAT32)
    w = array_for(9, (14, 5, 1, 1), DType.FLOAT32)
    bias = array_for(10, (14,), DType.FLOAT32)
    assert is_pointwise(conv_geometry(x.shape, w.shape, attrs))
    assert not is_pointwise(conv_geometry(x.shape, w.shape, Attrs(
        {**dict(attrs), "strides": (2, 1)})))
    jobs = [ConvRun(x, w, b, attrs, cpu_gemm_params(7, 35), "pointwise") for b in (bias, None)]
    program = launcher.build([kernel for job in jobs for kernel in job.kernels])
    for job in jobs:
        expected, magnitude = conv_expected(x, w, job.bias, attrs)
        check(job.run(launcher, program), expected, magnitude, 6, f"bias={job.bias is not None}")


def test_conv_every_candidate(launcher):
    """A padded, strided, grouped conv with an odd pixel count through every tile shape of
    the candidates (their unroll and tile order are covered by the MatMul sweep)."""
    x = array_for(5, (1, 6, 7, 9), DType.FLOAT32)
    w = array_for(6, (10, 3, 3, 2), DType.FLOAT32)
    bias = array_for(7, (10,), DType.FLOAT32)
    attrs = Attrs({"strides": (1, 2), "dilations": (2, 1), "pads": (2, 1, 1, 0), "group": 2})
    expected, magnitude = conv_expected(x, w, bias, attrs)
    tiles = {(p.mr, p.vw, p.nv): p for p in space_sample("gemm_cpu", 22)}  # one per tile shape
    jobs = [ConvRun(x, w, bias, attrs, p, packed) for p in tiles.values()
            for packed in (False, True)]
    program = launcher.build([kernel for job in jobs for kernel in job.kernels])
    for job in jobs:
        check(job.run(launcher, program), expected, magnitude, 19,
              f"{job.params} packed={job.packed}")


# -- parameters and packing on the host -----------------------------------------------------------
def test_violations_name_each_broken_rule():
    assert not DEFAULT_CPU_GEMM_PARAMS.violations()
    broken = CpuGemmParams(mr=0, vw=3, ku=3).violations()
    assert any("mr >= 1" in r for r in broken) and any("vw in" in r for r in broken)
    assert any("ku in" in r for r in broken)
    assert any("mr * nv <= 32" in r for r in CpuGemmParams(mr=8, nv=8).violations())
    assert any("64" in r for r in CpuGemmParams(vw=16).violations(itemsize=8))
    with pytest.raises(ValueError, match="vw in"):
        CpuGemmParams(vw=3).validate()
    assert all(not p.violations() for p in space_sample("gemm_cpu", 22))


def test_fitted_shrinks_tiles_to_the_problem():
    assert cpu_gemm_params(1, 3072).mr == 1
    small = DEFAULT_CPU_GEMM_PARAMS.fitted(2, 3)
    assert (small.mr, small.nr) == (2, 4)
    assert DEFAULT_CPU_GEMM_PARAMS.fitted(1000, 1000) == DEFAULT_CPU_GEMM_PARAMS


def test_pack_b_layout():
    params = CpuGemmParams(mr=2, vw=4, nv=1)
    b = np.arange(2 * 3 * 6, dtype=np.float32).reshape(2, 3, 6)
    packed = pack_b(b, params)
    assert packed.shape == (2, 2, 3, 4)
    np.testing.assert_array_equal(packed[1, 1, 2], [b[1, 2, 4], b[1, 2, 5], 0, 0])
    np.testing.assert_array_equal(pack_b(np.swapaxes(b, 1, 2), params, trans=True), packed)
