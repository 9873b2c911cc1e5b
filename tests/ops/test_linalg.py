"""MatMul, Conv, ConvTranspose and BatchNormalization kernels against their numpy references
(shapes that break tiles: 1, primes, 17, 33, 65; batch broadcasting; odd convolutions), the
GEMM tunables, and the ONNX converters against onnxruntime.

Accumulation bound. MatMul and the convolutions sum n terms (products, plus the bias) in
the accumulation type (float32 for float32 and float16, double for float64), kernel and
reference in different orders. Each result differs from the exact sum by at most
gamma_n * S with gamma_n = n*u / (1 - n*u) ~ n*u, u the unit roundoff, S the sum of the
terms' magnitudes (Higham, Accuracy and Stability, 3.1). So the two may differ by
2 * n * u * S, and the tests use atol = 2 * n * u * max(S) (S computed exactly, in float64,
by the reference on |inputs|) on top of the dtype's TOLERANCE row (which covers the final
rounding, e.g. to half).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, strategies as st
from onnx import TensorProto, helper

import ember
from ember.codegen import registry as codegen_kernels
from ember.codegen.kernels import matmul as gemm
from ember.codegen.families import DeviceTraits, Target
from ember.errors import ShapeError, UnsupportedOpError
from ember.ir import OPS, DType, Value
from ember.ir.ops.linalg import conv_geometry, matmul_dims
from tests.harness import TOLERANCE, assert_close, check_op
from tests.strategies import array_for, broadcastable_shapes

pytestmark = pytest.mark.opencl

GEMM_DIMS = (1, 2, 3, 5, 7, 13, 17, 33, 65)
UNIT_ROUNDOFF = {DType.FLOAT32: 2.0**-24, DType.FLOAT16: 2.0**-24, DType.FLOAT64: 2.0**-53}
FLOATS = st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT32, DType.FLOAT16])


def sum_tolerance(op: str, arrays: list[np.ndarray], attrs: dict, n_terms: int
                  ) -> tuple[float, float]:
    """(rtol, atol) for an op whose outputs are sums of n_terms terms (see the module doc)."""
    dtype = DType.from_numpy(arrays[0].dtype)
    rtol, atol = TOLERANCE[dtype]
    magnitudes = [np.abs(a.astype(np.float64)) for a in arrays]
    opdef = OPS[op]
    bound = opdef.evaluate(magnitudes, opdef.make_attrs(attrs))[0]
    largest = float(bound.max()) if bound.size else 0.0
    return rtol, atol + 2.0 * n_terms * UNIT_ROUNDOFF[dtype] * largest


# -- MatMul -------------------------------------------------------------------------------------
@st.composite
def matmul_case(draw):
    m, n, k = (draw(st.sampled_from(GEMM_DIMS)) for _ in range(3))
    batch_a, batch_b = draw(broadcastable_shapes(2, max_rank=2, max_dim=3))
    vec_a, vec_b = draw(st.booleans()) and draw(st.booleans()), draw(st.booleans()) and draw(
        st.booleans())
    trans_a = 0 if vec_a else draw(st.sampled_from([0, 1]))
    trans_b = 0 if vec_b else draw(st.sampled_from([0, 1]))
    shape_a = (k,) if vec_a else batch_a + ((k, m) if trans_a else (m, k))
    shape_b = (k,) if vec_b else batch_b + ((n, k) if trans_b else (k, n))
    dtype = draw(FLOATS)
    seed = draw(st.integers(0, 2**32 - 1))
    arrays = [array_for(seed, shape_a, dtype), array_for(seed + 1, shape_b, dtype)]
    return arrays, {"trans_a": trans_a, "trans_b": trans_b}


def test_matmul_kernel_matches_reference(opencl_target):
    @given(case=matmul_case())
    def check(case):
        arrays, attrs = case
        dims = matmul_dims(arrays[0].shape, arrays[1].shape, attrs["trans_a"], attrs["trans_b"])
        tolerance = sum_tolerance("MatMul", arrays, attrs, dims.k)
        check_op("MatMul", arrays, attrs, target=opencl_target, tolerance=tolerance)

    check()


@pytest.mark.parametrize("dtype", [DType.INT32, DType.INT64, DType.FLOAT64])
def test_matmul_other_dtypes(dtype, opencl_target):
    a = array_for(1, (3, 17, 33), dtype)
    b = array_for(2, (33, 5), dtype)
    tolerance = sum_tolerance("MatMul", [a, b], {}, 33) if dtype.is_float else None
    check_op("MatMul", [a, b], target=opencl_target, tolerance=tolerance)


def test_matmul_empty_inner_dim_gives_zeros(opencl_target):
    a, b = np.zeros((3, 0), np.float32), np.zeros((0, 5), np.float32)
    model = check_op("MatMul", [a, b], target=opencl_target)
    assert model.stats.kernel_launches == 1


def test_matmul_shape_errors_name_both_shapes():
    with pytest.raises(ShapeError, match=r"\(2, 3\).*\(4, 5\)"):
        matmul_dims((2, 3), (4, 5))
    with pytest.raises(ShapeError, match="trans_a"):
        matmul_dims((3,), (3, 4), trans_a=1)


# -- GEMM tunables ------------------------------------------------------------------------------
def _gpu_target(max_work_group: int = 256, local_mem: int = 32768) -> Target:
    traits = DeviceTraits("Ellesmere", "Advanced Micro Devices, Inc.", "OpenCL 2.0", "3.0",
                          "AMD APP", "GPU", 36, max_work_group, local_mem, frozenset())
    return Target.of(traits)


def test_default_gemm_params_are_valid_and_stay_valid_when_fitted():
    target = _gpu_target(max_work_group=1024, local_mem=65536)
    for family, params in gemm.DEFAULT_GEMM_PARAMS.items():
        params.validate(target, 4)
        for m, n, k in [(1, 1, 1), (1, 65, 7), (3, 2, 0), (17, 33, 65)]:
            assert not params.fitted(m, n, k).violations(target, 8), (family, m, n, k)


def test_gemm_params_fall_back_on_small_devices():
    tiny = _gpu_target(max_work_group=64, local_mem=4096)
    chosen = gemm.gemm_params(tiny, 512, 512, 512, 4)
    assert chosen.threads <= 64 and chosen.local_bytes(4) <= 4096
    broken = gemm.GemmParams(32, 32, 16, 3, 4).violations(tiny)
    assert any("tile_m % wpt_m" in reason for reason in broken)
    assert any("work-group" in reason for reason in broken)


@pytest.mark.parametrize("params", [gemm.DEFAULT_GEMM_PARAMS["amd-gcn"],
                                    gemm.DEFAULT_GEMM_PARAMS["intel-gpu"],
                                    gemm.GemmParams(8, 8, 8, 1, 1, 0)],
                         ids=["gpu-64x64", "intel-32x32", "fallback-8x8"])
def test_other_tilings_are_correct_on_odd_shapes(params, opencl_target, monkeypatch):
    """The GPU tilings run on the CPU device too: every one must be right on odd shapes."""
    monkeypatch.setitem(gemm.DEFAULT_GEMM_PARAMS, "cpu", params)
    codegen_kernels.lower.cache_clear()
    try:
        a = array_for(3, (2, 65, 17), DType.FLOAT32)
        b = array_for(4, (17, 33), DType.FLOAT32)
        check_op("MatMul", [a, b], {"trans_a": 0}, target=opencl_target,
                 tolerance=sum_tolerance("MatMul", [a, b], {}, 17))
    finally:
        codegen_kernels.lower.cache_clear()


# -- Conv ---------------------------------------------------------------------------------------
@st.composite
def conv_case(draw, transpose: bool = False):
    rank = draw(st.sampled_from([1, 2, 2, 3]))
    group = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = not transpose and draw(st.booleans())
    cig = 1 if depthwise else draw(st.sampled_from([1, 2, 3, 5]))
    cog = draw(st.sampled_from([1, 2] if depthwise else [1, 2, 3, 7]))
    side = (1, 2, 3, 5, 7) if rank == 3 else (1, 2, 3, 5, 7, 13, 17)
    spatial = [draw(st.sampled_from(side)) for _ in range(rank)]
    kernel = tuple(draw(st.sampled_from([1, 2, 3, 5] if rank < 3 else [1, 2, 3]))
                   for _ in range(rank))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilations = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    low = -1 if transpose else 0
    pads = [draw(st.integers(low, 2)) for _ in range(2 * rank)]
    attrs = {"strides": strides, "dilations": dilations, "group": group}
    if transpose:
        out_pad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(strides, dilations))
        attrs["output_padding"] = out_pad
        x_shape = (draw(st.integers(1, 2)), group * cig, *spatial)
        w_shape = (group * cig, cog, *kernel)
        for a in range(rank):  # keep every output axis non-empty
            full = strides[a] * (spatial[a] - 1) + (kernel[a] - 1) * dilations[a] + 1
            while full + out_pad[a] - pads[a] - pads[rank + a] < 1:
                pads[a] -= 1
    else:
        for a in range(rank):  # grow the input until the kernel fits
            extent = (kernel[a] - 1) * dilations[a] + 1
            spatial[a] = max(spatial[a], extent - pads[a] - pads[rank + a])
        x_shape = (draw(st.integers(1, 2)), group * cig, *spatial)
        w_shape = (group * cog, cig, *kernel)
    attrs["pads"] = tuple(pads)
    assume(math.prod(x_shape) <= 6000)
    dtype = draw(FLOATS)
    seed = draw(st.integers(0, 2**32 - 1))
    arrays = [array_for(seed, x_shape, dtype), array_for(seed + 1, w_shape, dtype)]
    if draw(st.booleans()):
        arrays.append(array_for(seed + 2, (group * cog,), dtype))
    return arrays, attrs


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_conv_kernel_matches_reference(op, opencl_target):
    transpose = op == "ConvTranspose"

    @given(case=conv_case(transpose))
    def check(case):
        arrays, attrs = case
        g = conv_geometry(arrays[0].shape, arrays[1].shape, OPS[op].make_attrs(attrs),
                          transpose=transpose)
        n_terms = g.cin_per_group * math.prod(g.kernel) + 1
        tolerance = sum_tolerance(op, arrays, attrs, n_terms)
        check_op(op, arrays, attrs, target=opencl_target, tolerance=tolerance)

    check()


def test_depthwise_conv_uses_its_own_kernel(opencl_target):
    """Not the GEMM (a group's K would be the kernel window alone): the direct kernel, or on
    CPU devices the row-vector one."""
    x = array_for(5, (1, 6, 13, 7), DType.FLOAT32)
    w = array_for(6, (12, 1, 3, 3), DType.FLOAT32)
    attrs = {"group": 6, "pads": (1, 0, 2, 1), "strides": (2, 1)}
    model = check_op("Conv", [x, w], attrs, target=opencl_target,
                     tolerance=sum_tolerance("Conv", [x, w], attrs, 10))
    assert all(k.name.startswith(("conv_direct", "conv_dw")) for k in model.plan.kernels())


def test_conv_shape_errors_name_the_shapes():
    with pytest.raises(ShapeError, match=r"\(1, 4, 5, 5\).*group 3"):
        conv_geometry((1, 4, 5, 5), (6, 2, 3, 3), OPS["Conv"].make_attrs({"group": 3}))
    with pytest.raises(ShapeError, match="empty"):
        conv_geometry((1, 2, 2, 2), (1, 2, 3, 3), OPS["Conv"].make_attrs({}))


# -- BatchNormalization -------------------------------------------------------------------------
@st.composite
def batchnorm_case(draw):
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.sampled_from([1, 2, 3, 5, 7, 13, 17])) for _ in range(rank))
    dtype = draw(FLOATS)
    seed = draw(st.integers(0, 2**32 - 1))
    c = shape[1]
    arrays = [array_for(seed, shape, dtype)]
    arrays += [array_for(seed + i, (c,), dtype) for i in (1, 2, 3)]
    arrays.append(array_for(seed + 4, (c,), dtype, low=0.0, high=4.0))
    return arrays, {"epsilon": draw(st.sampled_from([1e-5, 1e-3, 0.5]))}


def test_batchnorm_kernel_matches_reference(opencl_target):
    @given(case=batchnorm_case())
    def check(case):
        arrays, attrs = case
        check_op("BatchNormalization", arrays, attrs, target=opencl_target)

    check()


# -- ONNX converters against onnxruntime --------------------------------------------------------
def _model(node: onnx.NodeProto, inputs: dict[str, np.ndarray], out_rank: int,
           initializers: dict[str, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    initializers = initializers or {}
    graph = helper.make_graph(
        [node], "linalg",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs.items()],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [None] * out_rank)],
        [onnx.numpy_helper.from_array(a, n) for n, a in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _check_against_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray], target: str,
                       n_terms: int) -> ember.CompiledModel:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, inputs)[0]
    compiled = ember.compile(model, target=target, strict=target != "cpu")
    actual = compiled(**inputs)[model.graph.output[0].name]
    # float32 against ORT: the module's bound with S <= n_terms * 16 (|values| <= 4).
    assert_close(actual, expected, "output", (1e-5, 1e-5 + 2 * n_terms * 2.0**-24 * n_terms * 16))
    return compiled


GEMM_CASES = [  # (transA, transB, alpha, beta, C shape, B constant)
    (0, 0, 1.0, 1.0, None, False),
    (1, 0, 0.5, 1.0, (5,), True),
    (0, 1, 1.0, 2.0, (3, 5), False),
    (1, 1, 0.25, 0.5, (3, 1), True),
    (0, 0, 2.0, 0.0, (1, 5), False),
    (0, 0, 1.0, 1.0, (), True),
]


@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gemm_converter_matches_onnxruntime(case, any_target):
    trans_a, trans_b, alpha, beta, c_shape, b_const = case
    m, n, k = 3, 5, 7
    a = array_for(11, (k, m) if trans_a else (m, k), DType.FLOAT32)
    b = array_for(12, (n, k) if trans_b else (k, n), DType.FLOAT32)
    inputs, inits = {"A": a}, {}
    (inits if b_const else inputs)["B"] = b
    names = ["A", "B"]
    if c_shape is not None:
        inputs["C"] = array_for(13, c_shape, DType.FLOAT32)
        names.append("C")
    node = helper.make_node("Gemm", names, ["Y"], alpha=alpha, beta=beta, transA=trans_a,
                            transB=trans_b)
    compiled = _check_against_ort(_model(node, inputs, 2, inits), inputs, any_target, k + 1)
    graph = compiled.graph
    ops = [graph.op(n) for n in graph.topological_order()]
    assert ops.count("MatMul") == 1 and "Transpose" not in ops
    if b_const:  # alpha is folded into the constant B: nothing scales the product
        matmul = next(n for n in graph.topological_order() if graph.op(n) == "MatMul")
        users = [graph.op(use.node) for use in graph.users_of(Value(matmul, 0))]
        assert "Mul" not in users


CONV_CASES = [  # (x shape, w shape, attributes)
    ((1, 2, 7, 6), (3, 2, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 2, 7, 6), (3, 2, 2, 3), {"auto_pad": "SAME_LOWER", "kernel_shape": [2, 3]}),
    ((2, 4, 9), (4, 2, 3), {"auto_pad": "VALID", "group": 2, "dilations": [2]}),
    ((1, 3, 5, 5), (3, 1, 3, 3), {"group": 3, "pads": [0, 1, 2, 1], "strides": [1, 2]}),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: str(c[2]))
def test_conv_converter_matches_onnxruntime(case, any_target):
    x_shape, w_shape, attrs = case
    inputs = {"X": array_for(21, x_shape, DType.FLOAT32),
              "W": array_for(22, w_shape, DType.FLOAT32),
              "B": array_for(23, (w_shape[0],), DType.FLOAT32)}
    node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], **attrs)
    _check_against_ort(_model(node, inputs, len(x_shape)), inputs, any_target,
                       math.prod(w_shape[1:]) + 1)


CONV_TRANSPOSE_CASES = [  # (x shape, w shape, attributes)
    ((1, 2, 3, 4), (2, 3, 3, 3), {"strides": [3, 2], "output_shape": [10, 8]}),
    ((1, 2, 3, 4), (2, 1, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 3, 4), (2, 1, 2, 3), {"strides": [2, 3], "auto_pad": "SAME_LOWER"}),
    ((1, 4, 5), (4, 2, 3), {"strides": [2], "output_padding": [1], "pads": [1, 0],
                            "group": 2}),
]


@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES, ids=lambda c: str(c[2]))
def test_conv_transpose_converter_matches_onnxruntime(case, any_target):
    x_shape, w_shape, attrs = case
    inputs = {"X": array_for(31, x_shape, DType.FLOAT32),
              "W": array_for(32, w_shape, DType.FLOAT32)}
    node = helper.make_node("ConvTranspose", ["X", "W"], ["Y"], **attrs)
    _check_against_ort(_model(node, inputs, len(x_shape)), inputs, any_target,
                       math.prod(w_shape[2:]) * x_shape[1])


def test_matmul_and_batchnorm_converters_match_onnxruntime(any_target):
    inputs = {"A": array_for(41, (7,), DType.FLOAT32),
              "B": array_for(42, (2, 7, 3), DType.FLOAT32)}
    node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    _check_against_ort(_model(node, inputs, 2), inputs, any_target, 7)
    c = 3
    inputs = {"X": array_for(43, (2, c, 4, 5), DType.FLOAT32),
              "s": array_for(44, (c,), DType.FLOAT32), "b": array_for(45, (c,), DType.FLOAT32),
              "m": array_for(46, (c,), DType.FLOAT32),
              "v": array_for(47, (c,), DType.FLOAT32, low=0.0, high=2.0)}
    node = helper.make_node("BatchNormalization", ["X", "s", "b", "m", "v"], ["Y"],
                            epsilon=1e-3)
    _check_against_ort(_model(node, inputs, 4, opset=15), inputs, any_target, 1)


@pytest.mark.parametrize("x_shape", [(2, 3, 4), (1, 3, 5, 2), (5, 3)])
def test_batchnorm_training_mode_matches_onnxruntime(x_shape, any_target):
    """training_mode=1 normalizes by the batch's statistics and moves the running ones."""
    ort = pytest.importorskip("onnxruntime")
    c = x_shape[1]
    inputs = {"X": array_for(48, x_shape, DType.FLOAT32)}
    inits = {"s": array_for(49, (c,), DType.FLOAT32), "b": array_for(50, (c,), DType.FLOAT32),
             "m": array_for(51, (c,), DType.FLOAT32),
             "v": array_for(52, (c,), DType.FLOAT32, low=0.5, high=2.0)}
    node = helper.make_node("BatchNormalization", ["X", "s", "b", "m", "v"],
                            ["Y", "rm", "rv"], training_mode=1, momentum=0.7, epsilon=1e-3)
    model = _model(node, inputs, len(x_shape), inits, opset=15)
    model.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, [c])
                               for n in ("rm", "rv")])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, inputs)
    actual = ember.compile(model, target=any_target, strict=any_target != "cpu")(**inputs)
    n_terms = math.prod(x_shape) // c
    for name, want in zip(("Y", "rm", "rv"), expected):
        # a mean and a variance over n_terms values, |values| <= 4: the float32 sum bound
        assert_close(actual[name], want, name, (1e-5, 1e-5 + 4 * n_terms * 2.0**-24 * 16))
