"""The quantized kernels against their numpy references on the first real OpenCL device.

QuantizeLinear / DequantizeLinear as elementwise kernels, bit-exact, on values that include
exact .5 ties, NaN, +-inf and values far out of range; the correctly rounded quotient also
when the device's first quotient is a few ulp off (as OpenCL allows). MatMulInteger and
ConvInteger bit-exact on odd shapes (size 1, odd K, batch broadcasting, per-row and
per-column zero points, groups, strides, dilations, asymmetric pads), with B read from a
graph input (O0: packed by a kernel) and from a constant (O2: packed at compile time), and
with an epilogue that changes the dtype (int32 -> float -> scale, bias, Relu ->
QuantizeLinear -> uint8). BlockQuantMatMul (4 and 8 bits, float32 and float16 A) within the
float32 accumulation bound 2 * (K + 1) * u * max(|a| @ |w|^T) (Higham 3.1), over the dtype's
TOLERANCE row, on every path of its K loop, and exact where every weight is its zero point;
from one row to past the prefill threshold (the row loop, then the panel GEMM on CPUs: its
bands, partial tiles, chunks of K and vector stores with an epilogue).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ember
from ember.codegen.mathlib import HELPER_WIDTHS, HELPERS, QUOTIENT_CORRECTION
from ember.codegen.kernels.qgemm_cpu import DEFAULT_QGEMM_CPU_PARAMS, PREFILL_MIN_ROWS
from ember.codegen.types import Kernel
from ember.frontends.builder import GraphBuilder
from ember.ir import OPS, DType
from ember.ir.ops.fused import ExprNode, FusedExpr
from ember.ir.ops.quant import unpack_block_weights, expand_blocks
from tests.harness import TOLERANCE, KernelLauncher, assert_close, check_op, real_devices

DEVICES = real_devices()
pytestmark = pytest.mark.skipif(not DEVICES, reason="no OpenCL device (the kernels need one)")
TARGET = DEVICES[0].target if DEVICES else ""
F32 = DType.FLOAT32
QUANT = (np.int8, np.uint8, np.int16, np.uint16)
FEW = settings(max_examples=6, deadline=None)


def ints(rng: np.random.Generator, dtype, shape) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


# -- QuantizeLinear / DequantizeLinear --------------------------------------------------------
def tie_values(rng: np.random.Generator, scale: np.float32, count: int) -> np.ndarray:
    """x with x / scale exactly k + 0.5 (scale a power of two), random values, and the
    special ones."""
    k = rng.integers(-300, 300, count).astype(np.float32)
    ties = (k + np.float32(0.5)) * scale
    rand = rng.uniform(-400, 400, count).astype(np.float32) * scale
    special = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0], np.float32)
    return np.concatenate([ties, rand, special]).astype(np.float32)


@FEW
@given(seed=st.integers(0, 2**16), zt=st.sampled_from(QUANT), exp=st.integers(-6, 3),
       channels=st.sampled_from([1, 3, 7]))
def test_quantize_is_bit_exact(seed, zt, exp, channels):
    rng = np.random.default_rng(seed)
    scale = np.float32(2.0 ** exp)
    x = tie_values(rng, scale, 40)
    check_op("QuantizeLinear", [x, np.array(scale), ints(rng, zt, ())], target=TARGET)
    # per-channel scale (not a power of two) and zero point broadcast along the last axis
    xs = x[:, None] * rng.uniform(0.5, 2, (1, channels)).astype(np.float32)
    scales = rng.uniform(0.01, 3, (channels,)).astype(np.float32)
    check_op("QuantizeLinear", [xs, scales, ints(rng, zt, (channels,))], target=TARGET)


@FEW
@given(seed=st.integers(0, 2**16), zt=st.sampled_from(QUANT + (np.int32,)),
       shape=st.sampled_from([(1,), (3, 7), (2, 1, 5)]))
def test_dequantize_is_exact(seed, zt, shape):
    rng = np.random.default_rng(seed)
    x = ints(rng, zt, shape)
    scale = rng.uniform(0.001, 2, shape[-1:]).astype(np.float32)
    check_op("DequantizeLinear", [x, scale, ints(rng, zt, ())], target=TARGET)
    check_op("DequantizeLinear", [x, scale.astype(np.float16), ints(rng, zt, ())],
             target=TARGET)


def quotient_cases(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """x, s with finite, normal quotients: random magnitudes and signs, exact .5 ties,
    quotients one part in 2^24 off a tie (where a quotient off by an ulp rounds to the other
    integer), and a length that is a multiple of 8."""
    x = (rng.uniform(-1e4, 1e4, count) * 2.0 ** rng.integers(-20, 20, count)).astype(np.float32)
    s = (rng.uniform(1e-3, 10, count) * rng.choice([-1, 1], count)).astype(np.float32)
    k = rng.integers(-300, 300, 64).astype(np.float32)
    x[:64] = (k + np.float32(0.5)) * np.float32(0.25)  # exact ties
    s[:64] = np.float32(0.25)
    scale = rng.uniform(0.01, 1, 64).astype(np.float32)
    x[64:128] = ((k + np.float32(0.5)) * scale).astype(np.float32)  # near ties
    s[64:128] = scale
    return x, s


def run_quotient(name: str, helpers: str, width: int, x: np.ndarray, s: np.ndarray
                 ) -> np.ndarray:
    """`name`(x, s) of floatN (N = width) computed on the device, `helpers` defining it."""
    t = "float" if width == 1 else f"float{width}"
    source = (helpers + f"__kernel void quotient_{width}(__global const {t}* x, "
              f"__global const {t}* s, __global {t}* y) {{ const int i = get_global_id(0); "
              f"y[i] = {name}(x[i], s[i]); }}")
    launcher = KernelLauncher(TARGET)
    program = launcher.build([Kernel(f"quotient_{width}", source)])
    out = launcher.buffer(x.nbytes)
    launcher.launch(program, f"quotient_{width}", ((x.size // width,), None),
                    launcher.buffer(x), launcher.buffer(s), out)
    return launcher.read(out, x.shape, np.float32)


def correction_helper(width: int, ulps: int) -> tuple[str, str]:
    """The fma correction (mathlib's branch for devices without doubles) alone, named
    corrected_quotientN, from a first quotient `ulps` ulp off the device's x / s where that
    is finite (OpenCL's division is exact on infinities and NaN)."""
    suffix = "" if width == 1 else str(width)
    t, i = "float" + suffix, "int" + suffix
    text = (QUOTIENT_CORRECTION.replace("{S}", suffix).replace("{T}", t)
            .replace("{U}", "uint" + suffix).replace("{I}", i))
    first = f"const {t} q0 = x / s;"
    assert first in text
    u = "uint" + suffix
    text = text.replace(first, f"const {t} q_ = x / s; const {t} q0 = (as_{u}(q_) & "
                        f"0x7f800000u) == 0x7f800000u ? q_ : as_{t}(as_{i}(q_) + ({i})({ulps}));")
    return "corrected_quotient" + suffix, text.replace("ember_quotient", "corrected_quotient")


@pytest.mark.parametrize("ulps", [-3, -2, -1, 0, 1, 2, 3])
def test_quotient_correction_from_a_quotient_ulps_off(ulps):
    """The #else branch of ember_quotient (no doubles) gives IEEE x / s from a first
    quotient up to 3 ulp away (OpenCL allows 2.5), at every width."""
    rng = np.random.default_rng(ulps + 10)
    x, s = quotient_cases(rng, 2048)
    for width in HELPER_WIDTHS:
        name, helpers = correction_helper(width, ulps)
        np.testing.assert_array_equal(run_quotient(name, helpers, width, x, s), x / s,
                                      err_msg=f"width {width}")


def test_quotient_helper_is_correctly_rounded_at_every_width():
    """ember_quotient as the device compiles it (the double form where the device has
    doubles) is IEEE x / s bit for bit, also for subnormal, zero, huge, infinite and NaN
    quotients."""
    rng = np.random.default_rng(3)
    x, s = quotient_cases(rng, 1024)
    tiny = np.float32(2.0 ** -140) * rng.uniform(0.5, 2, 64).astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e38, -3e38, 1e-38, 7.0, 1.0,
                        0.0, np.inf, 1e30, 2.0 ** -149, -1.0, 3.0], np.float32)
    divisor = np.array([1.0, 3.0, 2.0, -0.5, 1.0, 1e-3, 1e-2, 1e10, 0.0, -0.0, 0.0, np.inf,
                        np.nan, 0.5, np.inf, -1e-45], np.float32)
    x = np.concatenate([x, tiny, tiny, special])
    s = np.concatenate([s, rng.uniform(1, 4, 64).astype(np.float32),
                        np.float32(2.0 ** 100) * np.ones(64, np.float32), divisor])
    with np.errstate(all="ignore"):
        expected = x / s
    for width in HELPER_WIDTHS:
        name = "ember_quotient" + ("" if width == 1 else str(width))
        got = run_quotient(name, "", width, x, s)
        np.testing.assert_array_equal(got.view(np.uint32)[~np.isnan(expected)],
                                      expected.view(np.uint32)[~np.isnan(expected)],
                                      err_msg=f"width {width}")
        assert np.isnan(got[np.isnan(expected)]).all()


def test_quantize_through_the_correction_branch():
    """QuantizeLinear's helper on top of the correction branch (rendered alone, a first
    quotient 2 ulp off): bit-exact on ties, near ties, saturation, NaN and inf."""
    rng = np.random.default_rng(4)
    x, s = quotient_cases(rng, 512)
    x[:8] = [np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0, 127.5]
    s = np.abs(s)
    name, helpers = correction_helper(8, 2)
    quantize = (HELPERS["ember_quantize8"].replace("ember_quotient8", name)
                .replace("ember_quantize8", "corrected_quantize8"))
    zero = np.full(x.shape, 3, np.float32)
    source = (helpers + quantize + "__kernel void quantize(__global const float8* x, "
              "__global const float8* s, __global const float8* z, __global uchar8* y) { "
              "const int i = get_global_id(0); "
              "y[i] = convert_uchar8(corrected_quantize8(x[i], s[i], z[i], 0.0f, 255.0f)); }")
    launcher = KernelLauncher(TARGET)
    program = launcher.build([Kernel("quantize", source)])
    out = launcher.buffer(x.size)
    launcher.launch(program, "quantize", ((x.size // 8,), None), launcher.buffer(x),
                    launcher.buffer(s), launcher.buffer(zero), out)
    expected = OPS["QuantizeLinear"].evaluate(
        [x, s, np.array(3, np.uint8)], OPS["QuantizeLinear"].make_attrs({}))[0]
    np.testing.assert_array_equal(launcher.read(out, x.shape, np.uint8), expected)


def kernel_source(model) -> str:
    return "".join(k.source for s in model.plan.steps if s.lowered is not None
                   for k in s.lowered.kernels)


def on_cpu() -> bool:
    return next(d for d in ember.devices() if d.target == TARGET).family.name == "cpu"


@pytest.mark.parametrize("zt", [np.uint8, np.int8, np.int16])
def test_quantized_elementwise_region_is_vectorized_and_exact(zt):
    """A fused region of quantized values (DequantizeLinear of two integer tensors, Add,
    Relu, QuantizeLinear; an int32 DequantizeLinear added beside) runs on float vectors
    with integer loads and stores on CPU devices, tail included, bit-exact."""
    rng = np.random.default_rng(8)
    shape = (3, 45)
    a, b = ints(rng, zt, shape), ints(rng, zt, shape)
    a.flat[:4] = np.iinfo(zt).max  # saturates
    big = rng.integers(-2**30, 2**30, shape).astype(np.int32)  # not exact in float
    out_dtype = DType.from_numpy(np.dtype(zt))
    expr = FusedExpr(9, (node("DequantizeLinear", (0, 1, 2), F32),
                         node("DequantizeLinear", (3, 1, 2), F32),
                         node("Add", (9, 10), F32), node("Relu", (11,), F32),
                         node("QuantizeLinear", (12, 4, 5), out_dtype),
                         node("DequantizeLinear", (6, 7, 8), F32),
                         node("Add", (14, 11), F32)), (13, 15))
    arrays = [a, np.array(0.0625, np.float32), ints(rng, zt, ()), b,
              np.array(0.37, np.float32), ints(rng, zt, ()), big,
              np.array(1e-6, np.float32), np.array(-3, np.int32)]
    model = check_op("FusedElementwise", arrays, {"expr": expr}, target=TARGET)
    assert ("ember_quantize8(" in kernel_source(model)) == on_cpu()


# -- MatMulInteger / ConvInteger --------------------------------------------------------------
def node(op: str, args: tuple[int, ...], dtype: DType, **attrs) -> ExprNode:
    return ExprNode(op, args, OPS[op].make_attrs(attrs), dtype)


def requantize(rng: np.random.Generator, channel_shape: tuple[int, ...]
               ) -> tuple[FusedExpr, list[np.ndarray]]:
    """int32 -> float * scale + bias -> Relu -> QuantizeLinear(uint8)."""
    expr = FusedExpr(5, (node("Cast", (0,), F32, to=F32), node("Mul", (5, 1), F32),
                         node("Add", (6, 2), F32), node("Relu", (7,), F32),
                         node("QuantizeLinear", (8, 3, 4), DType.UINT8)), (9,))
    extras = [rng.uniform(1e-3, 1e-2, channel_shape).astype(np.float32),
              rng.uniform(-5, 5, channel_shape).astype(np.float32),
              np.array(0.37, np.float32), np.array(7, np.uint8)]
    return expr, extras


def with_constants(op: str, inputs: list[np.ndarray], constants: list[np.ndarray],
                   attrs: dict) -> None:
    """The op compiled at O2 with `constants` as graph constants (packed at compile time)."""
    b = GraphBuilder(f"const_{op}")
    values = [b.input(f"in{i}", a.shape, DType.from_numpy(a.dtype)) for i, a in enumerate(inputs)]
    values[1:1] = [b.constant(c) for c in constants[:1]]
    values += [b.constant(c) for c in constants[1:]]
    b.output("y", b.op(op, *values, **attrs))
    model = ember.compile(b.build(), target=TARGET, opt_level=2, strict=True)
    arrays = [inputs[0], *constants[:1], *inputs[1:], *constants[1:]]
    expected = OPS[op].evaluate(arrays, OPS[op].make_attrs(attrs))[0]
    assert_close(model(**{f"in{i}": a for i, a in enumerate(inputs)})["y"], expected, op)


TYPES = [(np.int8, np.int8), (np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.uint8)]
MATMUL_SHAPES = [((17, 31), (31, 19)), ((2, 5, 7), (7, 11)), ((1, 1), (2, 1, 1)),
                 ((33,), (3, 33, 9)), ((3, 1, 4, 13), (2, 13, 26)), ((6, 0), (0, 5))]


@FEW
@given(seed=st.integers(0, 2**16), types=st.sampled_from(TYPES),
       shapes=st.sampled_from(MATMUL_SHAPES), per_row=st.booleans(), per_col=st.booleans())
def test_matmul_integer_is_bit_exact(seed, types, shapes, per_row, per_col):
    rng = np.random.default_rng(seed)
    (at, bt), (a_shape, b_shape) = types, shapes
    a, b = ints(rng, at, a_shape), ints(rng, bt, b_shape)
    m, n = (a_shape[-2] if len(a_shape) > 1 else 1), (b_shape[-1] if len(b_shape) > 1 else 1)
    az = ints(rng, at, (m, 1) if per_row and len(a_shape) > 1 else ())
    bz = ints(rng, bt, (n,) if per_col and len(b_shape) > 1 else ())
    check_op("MatMulInteger", [a, b, az, bz], target=TARGET)
    with_constants("MatMulInteger", [a, az], [b, bz], {})


def test_matmul_integer_epilogue_changes_the_dtype():
    rng = np.random.default_rng(5)
    a, b = ints(rng, np.int8, (3, 17, 31)), ints(rng, np.uint8, (31, 19))
    expr, extras = requantize(rng, (19,))
    arrays = [a, b, ints(rng, np.int8, ()), ints(rng, np.uint8, (19,)), *extras]
    check_op("MatMulInteger", arrays, {"epilogue": expr}, target=TARGET)
    with_constants("MatMulInteger", [a, arrays[2]], [b, arrays[3], *extras], {"epilogue": expr})


CONVS = [  # x shape, w shape, attrs
    ((1, 6, 11, 13), (5, 6, 3, 3), {"strides": (2, 2), "pads": (1, 1, 1, 1)}),
    ((2, 6, 7, 9), (4, 3, 3, 2), {"group": 2, "pads": (0, 1, 2, 1), "dilations": (1, 2)}),
    ((1, 5, 9), (7, 5, 1), {}),
    ((1, 1, 5, 5), (3, 1, 5, 5), {"pads": (2, 2, 2, 2)}),
    ((1, 9, 4, 4), (9, 1, 3, 3), {"group": 9, "pads": (1, 1, 1, 1)}),
    # 8 input channels per group and more: taps gathered in the GEMM (fewer: im2col rows)
    ((1, 10, 7, 6), (12, 10, 3, 3), {"strides": (2, 1), "pads": (1, 0, 1, 2)}),
    ((2, 18, 5, 5), (6, 9, 3, 3), {"group": 2, "pads": (2, 2, 2, 2), "dilations": (2, 2)}),
]


@FEW
@given(seed=st.integers(0, 2**16), types=st.sampled_from(TYPES),
       case=st.sampled_from(CONVS), per_channel=st.booleans())
def test_conv_integer_is_bit_exact(seed, types, case, per_channel):
    rng = np.random.default_rng(seed)
    (xt, wt), (x_shape, w_shape, attrs) = types, case
    x, w = ints(rng, xt, x_shape), ints(rng, wt, w_shape)
    xz, wz = ints(rng, xt, ()), ints(rng, wt, (w_shape[0],) if per_channel else ())
    check_op("ConvInteger", [x, w, xz, wz], attrs, target=TARGET)
    with_constants("ConvInteger", [x, xz], [w, wz], attrs)


@pytest.mark.parametrize("cin", [6, 9])  # im2col rows, taps gathered in the GEMM
@pytest.mark.parametrize("out_type", [DType.UINT8, DType.INT8, F32])
def test_integer_product_vector_stores(out_type, cin):
    """Channel counts past one vector (vector stores of 8 channels, then the tail channel by
    channel), per-channel weight zero points read per lane, int8/uint8 and float32 results
    (a Cast and a Mul only): conv lanes are scattered by the pixel count, MatMul lanes are
    contiguous."""
    rng = np.random.default_rng(7)
    expr, extras = requantize(rng, (1, 20, 1, 1))
    if out_type is F32:
        expr = FusedExpr(2, (node("Cast", (0,), F32, to=F32), node("Mul", (2, 1), F32)), (3,))
        extras = extras[:1]
    elif out_type is DType.INT8:
        nodes = expr.nodes[:-1] + (node("QuantizeLinear", (8, 3, 4), DType.INT8),)
        expr, extras = FusedExpr(5, nodes, (9,)), extras[:3] + [np.array(-5, np.int8)]
    x, w = ints(rng, np.uint8, (1, cin, 9, 7)), ints(rng, np.int8, (20, cin, 3, 3))
    attrs = {"pads": (1, 1, 1, 1), "epilogue": expr}
    check_op("ConvInteger", [x, w, ints(rng, np.uint8, ()), ints(rng, np.int8, (20,)),
                             *extras], attrs, target=TARGET)
    flat = [e.reshape(-1) if e.size == 20 else e for e in extras]
    a, b = ints(rng, np.int8, (2, 7, 13)), ints(rng, np.uint8, (13, 20))
    check_op("MatMulInteger", [a, b, ints(rng, np.int8, ()), ints(rng, np.uint8, (20,)),
                               *flat], {"epilogue": expr}, target=TARGET)


def test_conv_integer_epilogue_changes_the_dtype():
    rng = np.random.default_rng(6)
    x, w = ints(rng, np.uint8, (1, 6, 11, 13)), ints(rng, np.int8, (5, 6, 3, 3))
    expr, extras = requantize(rng, (1, 5, 1, 1))
    attrs = {"strides": (2, 2), "pads": (1, 1, 1, 1), "epilogue": expr}
    arrays = [x, w, ints(rng, np.uint8, ()), ints(rng, np.int8, ()), *extras]
    check_op("ConvInteger", arrays, attrs, target=TARGET)
    with_constants("ConvInteger", [x, arrays[2]], [w, arrays[3], *extras], attrs)


# -- BlockQuantMatMul -------------------------------------------------------------------------
def block_quant_case(rng, a_shape, n, k, bits, bs, dtype=np.float32):
    nb = -(-k // bs)
    w = rng.integers(0, 256, (n, nb, bs * bits // 8)).astype(np.uint8)
    a = rng.uniform(-1, 1, a_shape + (k,)).astype(dtype)
    scales = rng.uniform(0.01, 0.1, (n, nb)).astype(dtype)
    zeros = rng.integers(0, 2 ** bits, (n, nb)).astype(np.uint8)
    return [a, w, scales, zeros], {"bits": bits, "block_size": bs, "k": k, "n": n}


def accumulation_tolerance(arrays, attrs) -> tuple[float, float]:
    """The output dtype's TOLERANCE row plus the float32 accumulation bound
    2 * (K + 1) * u * max(|a| @ |w_float|^T): the kernel's and the reference's sums each
    stay within (K + 1) * u * (|a| @ |w_float|^T) of the exact product (the kernel subtracts
    the zero point exactly before multiplying)."""
    a, w, scales, zeros = arrays
    bits, bs, k = attrs["bits"], attrs["block_size"], attrs["k"]
    q = unpack_block_weights(w, bits, k).astype(np.float64)
    w_float = (q - expand_blocks(zeros, 1, bs, k)) * expand_blocks(scales, 1, bs, k)
    bound = np.abs(a.astype(np.float64)) @ np.abs(w_float).T
    rtol, atol = TOLERANCE[DType.from_numpy(a.dtype)]
    return rtol, atol + 2 * (k + 1) * 2.0 ** -24 * float(bound.max(initial=0))


@FEW
@given(seed=st.integers(0, 2**16), bits=st.sampled_from([4, 8]),
       case=st.sampled_from([((1,), 13, 37, 16), ((), 5, 64, 32), ((2, 3), 7, 100, 32),
                             ((5,), 1, 16, 16), ((1,), 9, 3, 64), ((1,), 33, 160, 128)]))
def test_block_quant_matmul_matches_the_reference(seed, bits, case):
    rng = np.random.default_rng(seed)
    a_shape, n, k, bs = case
    arrays, attrs = block_quant_case(rng, a_shape, n, k, bits, bs)
    check_op("BlockQuantMatMul", arrays, attrs, target=TARGET,
             tolerance=accumulation_tolerance(arrays, attrs))


# Each runs the kernel's three K paths where it has them: groups of 8 blocks (scales and
# zero points read as vectors), single steps after them, values one at a time (a partial
# group of blocks, K % block_size); blocks smaller than, equal to and larger than a chunk.
LAYOUT_CASES = [  # a shape, N, K, bits, block size
    ((1,), 6, 13 * 16 + 5, 4, 16),     # 3 steps of 4 blocks: 2 in the group, 1 after, tail
    ((1,), 5, 9 * 32 + 7, 4, 32),      # 4 steps of 2 blocks, tail of a whole block + 7
    ((3,), 4, 17 * 64, 4, 64),         # a group, then one step
    ((1,), 3, 8 * 256 + 100, 4, 256),  # steps of 4 chunks, a partial last block
    ((1,), 7, 11 * 16 + 7, 8, 16),     # int8: 5 steps of 2 blocks, tail
    ((2, 2), 9, 9 * 32 + 1, 8, 32),    # int8: 9 steps of 1 block
]


@pytest.mark.parametrize("case", LAYOUT_CASES)
def test_block_quant_matmul_paths_of_k(case):
    a_shape, n, k, bits, bs = case
    rng = np.random.default_rng(k)
    arrays, attrs = block_quant_case(rng, a_shape, n, k, bits, bs)
    check_op("BlockQuantMatMul", arrays, attrs, target=TARGET,
             tolerance=accumulation_tolerance(arrays, attrs))


@pytest.mark.parametrize("case", [((1,), 11, 9 * 32 + 7, 4, 32), ((4,), 6, 300, 8, 16)])
def test_block_quant_matmul_float16(case):
    """float16 A and scales: read as halves, summed in float32, the result stored as half."""
    a_shape, n, k, bits, bs = case
    rng = np.random.default_rng(n)
    arrays, attrs = block_quant_case(rng, a_shape, n, k, bits, bs, np.float16)
    check_op("BlockQuantMatMul", arrays, attrs, target=TARGET,
             tolerance=accumulation_tolerance(arrays, attrs))


def test_block_quant_matmul_zero_weights_are_exact():
    """Every weight at its zero point: the exact zeros of the reference (the zero point is
    subtracted per value, not folded into a sum of A)."""
    rng = np.random.default_rng(3)
    arrays, attrs = block_quant_case(rng, (2,), 5, 8 * 64 + 3, 4, 32)
    zeros = np.full_like(arrays[3], 11)
    arrays = [arrays[0], np.full_like(arrays[1], 0xBB), arrays[2], zeros]
    check_op("BlockQuantMatMul", arrays, attrs, target=TARGET, tolerance=(0.0, 0.0))


# Prefill: from PREFILL_MIN_ROWS rows on, devices that run register-tiled kernels take the
# panel GEMM of qgemm_cpu (the other devices keep the row loop of qgemv_cpu).
def register_tiles() -> bool:
    return next(d for d in ember.devices() if d.target == TARGET).family.register_tiles


def product_kernels(model) -> list[str]:
    return [k.name for s in model.plan.steps if s.op == "BlockQuantMatMul"
            for k in s.lowered.kernels]


def assert_path(model, rows: int) -> None:
    """The kernels that ran are the ones `prefill_applies` picks for this many rows."""
    panel = register_tiles() and rows >= PREFILL_MIN_ROWS
    names = product_kernels(model)
    assert names and all(name.startswith("qgemm_cpu") == panel for name in names), names


@FEW
@given(seed=st.integers(0, 2**16),
       rows=st.integers(1, 3 * PREFILL_MIN_ROWS),
       batch=st.sampled_from([(), (2,)]),
       case=st.sampled_from([  # N, K, bits, block size
           (7, 37, 4, 16),       # N within one vector, K a partial block group
           (17, 100, 4, 32),     # a vector and one column, K % block size = 4
           (40, 600, 4, 64),     # K over three chunks of the panel, the last partial
           (9, 3, 8, 64),        # K shorter than one block
           (16, 13 * 16 + 5, 8, 16),
           (5, 300, 4, 256)]),   # a block longer than a chunk of 256 values
       dtype=st.sampled_from([np.float32, np.float16]))
def test_block_quant_matmul_rows_across_the_prefill_threshold(seed, rows, batch, case, dtype):
    """One row to three times the threshold (and a batch of them), float32 and float16 A:
    the reference within the accumulation bound, on the path the rule picks."""
    rng = np.random.default_rng(seed)
    n, k, bits, bs = case
    arrays, attrs = block_quant_case(rng, batch + (rows,), n, k, bits, bs, dtype)
    model = check_op("BlockQuantMatMul", arrays, attrs, target=TARGET,
                     tolerance=accumulation_tolerance(arrays, attrs))
    assert_path(model, rows * (2 if batch else 1))


def test_block_quant_matmul_prefill_bands_and_epilogue():
    """Rows over several bands and a partial last tile; an epilogue (bias Add, Relu) run on
    vectors of 8 columns inside C and one column at a time past them."""
    rng = np.random.default_rng(11)
    rows, n, k = 2 * DEFAULT_QGEMM_CPU_PARAMS.tb * DEFAULT_QGEMM_CPU_PARAMS.mr + 5, 21, 160
    arrays, attrs = block_quant_case(rng, (rows,), n, k, 4, 32)
    expr = FusedExpr(2, (node("Add", (0, 1), F32), node("Relu", (2,), F32)), (3,))
    arrays.append(rng.uniform(-1, 1, (n,)).astype(np.float32))
    rtol, atol = accumulation_tolerance(arrays[:4], attrs)
    model = check_op("BlockQuantMatMul", arrays, {**attrs, "epilogue": expr}, target=TARGET,
                     tolerance=(rtol, atol))
    assert_path(model, rows)


def test_block_quant_matmul_prefill_zero_weights_are_exact():
    """Every weight at its zero point, many rows: the panel holds exact zeros."""
    rng = np.random.default_rng(5)
    arrays, attrs = block_quant_case(rng, (3 * PREFILL_MIN_ROWS,), 19, 4 * 64 + 3, 4, 32)
    arrays = [arrays[0], np.full_like(arrays[1], 0x77), arrays[2], np.full_like(arrays[3], 7)]
    model = check_op("BlockQuantMatMul", arrays, attrs, target=TARGET, tolerance=(0.0, 0.0))
    assert_path(model, 3 * PREFILL_MIN_ROWS)
