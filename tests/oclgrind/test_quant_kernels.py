"""The quantized kernels' tunable kinds on Oclgrind: every candidate of a spread of each
space ("igemm_cpu" on a MatMulInteger and strided, padded, grouped ConvIntegers, with few
input channels (im2col rows) and more, with packed and unpacked B; "qgemv" and "qgemm" on
int4 and int8 BlockQuantMatMul with a partial last block; "qgemm_cpu", the prefill panel
GEMM) computes the numpy reference
through the tuner's own path, without one invalid access; the integer products with a
dtype-changing epilogue on every family; the CPU family's vector stores of integer products
and a quantized elementwise region. The kernels' plain cases are in test_kernels.py."""

from __future__ import annotations

import numpy as np
import pytest

from ember.codegen.kernels.qgemm_cpu import PREFILL_MIN_ROWS
from ember.codegen.params import search_space
from ember.codegen.types import NodeSpec
from ember.ir import OPS, DType, TensorType
from ember.ir.ops.fused import ExprNode, FusedExpr
from ember.runtime.device import resolve_target
from ember.tuning.tuner import TuneBudget, Tuner
from tests.harness import check_op
from tests.oclgrind.conftest import FAMILY_NAMES
from tests.ops.test_quant_kernels import accumulation_tolerance
from tests.strategies import array_for

pytestmark = pytest.mark.oclgrind

QUICK = TuneBudget(repeats=1, warmup=0, rotate_bytes=0)
I8, U8, F32 = DType.INT8, DType.UINT8, DType.FLOAT32


def spec(op: str, inputs: list[tuple[tuple[int, ...], DType]], attrs: dict,
         packed: bool) -> NodeSpec:
    types = tuple(TensorType(shape, dtype) for shape, dtype in inputs)
    made = OPS[op].make_attrs(attrs)
    (out,) = OPS[op].infer(list(types), made)
    return NodeSpec(op, made, types, (out,), frozenset({1}) if packed else frozenset())


SPACES = {
    "igemm_cpu-matmul": ("igemm_cpu", spec(
        "MatMulInteger", [((2, 17, 31), U8), ((31, 19), I8), ((17, 1), U8), ((19,), I8)], {},
        True), 24),
    "igemm_cpu-conv": ("igemm_cpu", spec(
        "ConvInteger", [((1, 6, 11, 13), U8), ((10, 3, 3, 3), I8), ((), U8), ((10,), I8)],
        {"strides": (2, 2), "pads": (1, 0, 2, 1), "group": 2}, False), 12),
    "igemm_cpu-conv-wide": ("igemm_cpu", spec(  # 8 channels per group: taps in the GEMM
        "ConvInteger", [((1, 16, 6, 7), U8), ((10, 8, 3, 3), I8), ((), U8), ((10,), I8)],
        {"strides": (2, 1), "pads": (1, 0, 2, 1), "group": 2}, False), 8),
    # K = 197 in blocks of 16 (13 blocks): a group of 8 blocks, one step of 4 after it, the
    # last block and its 5 values one at a time; K = 167 (11 blocks of 16, int8) the same
    "qgemv-int4": ("qgemv", spec(
        "BlockQuantMatMul", [((1, 197), F32), ((13, 13, 8), U8), ((13, 13), F32),
                             ((13, 13), U8)],
        {"bits": 4, "block_size": 16, "k": 197, "n": 13}, True), 14),
    "qgemm-int8": ("qgemm", spec(  # rows below PREFILL_MIN_ROWS: the row loop everywhere
        "BlockQuantMatMul", [((3, 167), F32), ((13, 11, 16), U8), ((13, 11), F32),
                             ((13, 11), U8)],
        {"bits": 8, "block_size": 16, "k": 167, "n": 13}, True), 16),
    # the panel GEMM: 21 rows (bands, partial tiles), N = 19 (a vector and a partial one),
    # K = 300 in blocks of 32 (chunks of 64..512 values, the last partial, a padded block)
    "qgemm_cpu-int4": ("qgemm_cpu", spec(
        "BlockQuantMatMul", [((21, 300), F32), ((19, 10, 16), U8), ((19, 10), F32),
                             ((19, 10), U8)],
        {"bits": 4, "block_size": 32, "k": 300, "n": 19}, True), 12),
}


@pytest.mark.parametrize("case", list(SPACES))
def test_every_candidate_is_memory_safe_and_correct(case):
    kind, node_spec, count = SPACES[case]
    device = resolve_target("oclgrind@cpu")
    space = search_space(kind, device.target)
    assert len(space) > 0, space.rejected
    picked = space.spread(count)
    for name, values in space.axes:  # every legal value of every axis runs
        assert {getattr(p, name) for p in space.legal} <= {getattr(p, name) for p in picked}
    result = Tuner(device, None, QUICK, progress=False).tune(node_spec, candidates=picked)
    assert result is not None and result.kind == kind
    assert {t.params for t in result.trials} >= set(picked)
    assert not result.rejected, [(t.params, t.error) for t in result.rejected]


def requantize(channel_shape: tuple[int, ...]) -> tuple[FusedExpr, list[np.ndarray]]:
    def node(op, args, dtype, **attrs):
        return ExprNode(op, args, OPS[op].make_attrs(attrs), dtype)

    expr = FusedExpr(5, (node("Cast", (0,), F32, to=F32), node("Mul", (5, 1), F32),
                         node("Add", (6, 2), F32), node("Relu", (7,), F32),
                         node("QuantizeLinear", (8, 3, 4), I8)), (9,))
    return expr, [array_for(1, channel_shape, F32, low=0.001, high=0.01),
                  array_for(2, channel_shape, F32), np.array(0.3, np.float32),
                  np.array(-3, np.int8)]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_integer_products_with_a_requantizing_epilogue(family):
    expr, extras = requantize((1, 5, 1, 1))
    check_op("ConvInteger", [array_for(3, (1, 6, 7, 9), U8), array_for(4, (5, 6, 3, 3), I8),
                             array_for(5, (), U8), array_for(6, (5,), I8), *extras],
             {"pads": (1, 1, 1, 1), "epilogue": expr}, target=f"oclgrind@{family}")
    expr, extras = requantize((11,))
    check_op("MatMulInteger", [array_for(7, (2, 5, 13), I8), array_for(8, (13, 11), I8),
                               array_for(9, (5, 1), I8), array_for(10, (), I8), *extras],
             {"epilogue": expr}, target=f"oclgrind@{family}")


def test_vector_stores_and_quantized_regions_on_the_cpu_family():
    """The CPU family's vector stores of integer products (channels past one vector, a tail,
    per-channel weight zero points) and a quantized elementwise region on float vectors with
    integer loads and stores, within bounds and bit-exact."""
    expr, extras = requantize((1, 12, 1, 1))
    for cin in (4, 10):  # im2col rows; taps gathered in the GEMM
        check_op("ConvInteger", [array_for(11, (1, cin, 5, 3), U8),
                                 array_for(12, (12, cin, 3, 3), I8), array_for(13, (), U8),
                                 array_for(14, (12,), I8), *extras],
                 {"pads": (1, 1, 1, 1), "epilogue": expr}, target="oclgrind@cpu")
    expr, extras = requantize((20,))
    check_op("MatMulInteger", [array_for(15, (3, 9), U8), array_for(16, (9, 20), I8),
                               array_for(17, (), U8), array_for(18, (20,), I8), *extras],
             {"epilogue": expr}, target="oclgrind@cpu")

    def node(op, args, dtype, **attrs):
        return ExprNode(op, args, OPS[op].make_attrs(attrs), dtype)

    region = FusedExpr(6, (node("DequantizeLinear", (0, 1, 2), F32),
                           node("DequantizeLinear", (3, 1, 2), F32),
                           node("Add", (6, 7), F32), node("Relu", (8,), F32),
                           node("QuantizeLinear", (9, 4, 5), U8)), (10,))
    check_op("FusedElementwise", [array_for(19, (2, 21), U8), np.array(0.05, np.float32),
                                  np.array(128, np.uint8), array_for(20, (2, 21), U8),
                                  np.array(0.1, np.float32), np.array(3, np.uint8)],
             {"expr": region}, target="oclgrind@cpu")


@pytest.mark.parametrize("bits", [4, 8])
def test_block_quant_matmul_float16(bits):
    k, n, bs = 13 * 16 + 5, 5, 16
    nb = -(-k // bs)
    f16 = DType.FLOAT16
    arrays = [array_for(11, (2, k), f16), array_for(12, (n, nb, bs * bits // 8), U8),
              array_for(13, (n, nb), f16, low=0.01, high=0.1), array_for(14, (n, nb), U8)]
    attrs = {"bits": bits, "block_size": bs, "k": k, "n": n}
    check_op("BlockQuantMatMul", arrays, attrs, target="oclgrind@cpu",
             tolerance=accumulation_tolerance(arrays, attrs))


@pytest.mark.parametrize("bits", [4, 8])
def test_block_quant_matmul_prefill_on_the_cpu_family(bits):
    """The panel GEMM (rows past PREFILL_MIN_ROWS on the CPU family): float16 A and scales,
    K over two chunks with a partial block; float32 with an epilogue (bias Add, Relu) on
    vectors of columns and on the columns past them."""
    k, n, bs = 9 * 32 + 7, 21, 32
    nb = -(-k // bs)
    f16 = DType.FLOAT16
    arrays = [array_for(21, (PREFILL_MIN_ROWS + 3, k), f16),
              array_for(22, (n, nb, bs * bits // 8), U8),
              array_for(23, (n, nb), f16, low=0.01, high=0.1), array_for(24, (n, nb), U8)]
    attrs = {"bits": bits, "block_size": bs, "k": k, "n": n}
    check_op("BlockQuantMatMul", arrays, attrs, target="oclgrind@cpu",
             tolerance=accumulation_tolerance(arrays, attrs))

    def node(op, args, dtype, **attrs):
        return ExprNode(op, args, OPS[op].make_attrs(attrs), dtype)

    arrays = [array_for(25, (2, PREFILL_MIN_ROWS, k), F32), arrays[1],
              array_for(26, (n, nb), F32, low=0.01, high=0.1), arrays[3]]
    tolerance = accumulation_tolerance(arrays, attrs)
    expr = FusedExpr(2, (node("Add", (0, 1), F32), node("Relu", (2,), F32)), (3,))
    check_op("BlockQuantMatMul", [*arrays, array_for(27, (n,), F32)],
             {**attrs, "epilogue": expr}, target="oclgrind@cpu", tolerance=tolerance)
