"""The kernels of a quantized ResNet that its fusion adds, on Oclgrind, within bounds and
bit-exact against the numpy reference: an integer convolution whose store is a residual
block's tail (the epilogue dequantizes a uint8 shortcut of the output's shape, an extra
input read per output element next to the per-channel scale and bias, adds it, applies Relu
and requantizes to uint8), with every family's strategy; and the uint8 MaxPool of the stem
in the CPU "rows" form (16-lane vectors, stride 2), which PoCL runs."""

from __future__ import annotations

import numpy as np
import pytest

from ember.codegen.kernels.pool import PoolRowParams, build_pool
from ember.codegen.types import NodeSpec
from ember.ir import OPS, DType, TensorType
from ember.ir.ops.fused import ExprNode, FusedExpr
from ember.runtime.device import resolve_target
from tests.harness import assert_close, check_op
from tests.oclgrind.conftest import FAMILY_NAMES
from tests.ops.test_nn import run_lowered
from tests.strategies import array_for

pytestmark = pytest.mark.oclgrind

I8, U8, F32 = DType.INT8, DType.UINT8, DType.FLOAT32


def node(op: str, args: tuple[int, ...], dtype: DType, **attrs) -> ExprNode:
    return ExprNode(op, args, OPS[op].make_attrs(attrs), dtype)


def residual_tail(out_shape: tuple[int, ...]) -> tuple[FusedExpr, list[np.ndarray]]:
    """Cast, Mul(scale), Add(bias), Add(DequantizeLinear(shortcut)), Relu, QuantizeLinear;
    the shortcut a uint8 tensor of `out_shape`."""
    channels = (1, out_shape[1], 1, 1)
    expr = FusedExpr(8, (node("Cast", (0,), F32, to=F32), node("Mul", (8, 1), F32),
                         node("Add", (9, 2), F32), node("DequantizeLinear", (3, 4, 5), F32),
                         node("Add", (10, 11), F32), node("Relu", (12,), F32),
                         node("QuantizeLinear", (13, 6, 7), U8)), (14,))
    return expr, [array_for(1, channels, F32, low=1e-5, high=1e-4),
                  array_for(2, channels, F32), array_for(3, out_shape, U8),
                  np.array(0.04, np.float32), np.array(120, np.uint8),
                  np.array(0.4, np.float32), np.array(3, np.uint8)]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_convolution_with_a_quantized_residual_tail(family):
    # 12 output channels: past one vector of the CPU family's stores, with a tail
    expr, extras = residual_tail((1, 12, 5, 7))
    check_op("ConvInteger", [array_for(4, (1, 6, 5, 7), U8), array_for(5, (12, 6, 3, 3), I8),
                             np.array(2, np.uint8), array_for(6, (12,), I8), *extras],
             {"pads": (1, 1, 1, 1), "epilogue": expr}, target=f"oclgrind@{family}")


@pytest.mark.parametrize("params", [PoolRowParams(16, 16, 1), PoolRowParams(16, 64, 2)])
def test_uint8_maxpool_rows_form(params):
    x = array_for(7, (1, 2, 12, 45), U8)
    attrs = OPS["MaxPool"].make_attrs({"kernel_shape": (3, 3), "strides": (2, 2),
                                        "pads": (1, 1, 1, 1)})
    inputs = (TensorType(x.shape, U8),)
    outputs = OPS["MaxPool"].infer_types(inputs, attrs)
    lowered = build_pool(NodeSpec("MaxPool", attrs, inputs, outputs),
                         resolve_target("oclgrind@cpu").target, params)
    assert lowered is not None and lowered.launches[0].kernel.name.startswith("pool_rows_")
    (actual,) = run_lowered([(lowered, [x], outputs)], "oclgrind@cpu")[0]
    assert_close(actual, OPS["MaxPool"].evaluate([x], attrs)[0], "MaxPool uint8 rows")
