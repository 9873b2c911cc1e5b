"""Every elementwise op's OpenCL kernel against its numpy reference: broadcasting shapes with
1s and primes, negative values, NaN and infinities, float32 and float16, ints and bools."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from ember.ir import OPS, DType
from ember.ir.ops.elementwise import ELEMENTWISE_OPS
from tests.harness import check_op
from tests.strategies import array_for, broadcastable_shapes

pytestmark = pytest.mark.opencl

# Attribute values to draw from, per op (defaults are always in the mix).
ATTRS = {
    "Clip": st.sampled_from([{"min": -1.0, "max": 2.5}, {"min": 0.0}, {"max": 0.5}, {}]),
    "LeakyRelu": st.sampled_from([{}, {"alpha": 0.2}]),
    "Elu": st.sampled_from([{}, {"alpha": 0.5}]),
    "Selu": st.sampled_from([{}, {"alpha": 2.0, "gamma": 3.0}]),
    "HardSigmoid": st.sampled_from([{}, {"alpha": 0.1, "beta": 0.6}]),
    "Gelu": st.sampled_from([{}, {"approximate": "tanh"}]),
    "IsInf": st.sampled_from([{}, {"detect_negative": 0}, {"detect_positive": 0}]),
    "Cast": st.sampled_from([{"to": d} for d in (DType.FLOAT32, DType.INT32, DType.INT64,
                                                  DType.BOOL, DType.FLOAT16, DType.UINT8)]),
}
BOOL_OPS = {"Not", "And", "Or", "Xor"}
FLOAT_ONLY = {name for name in ELEMENTWISE_OPS
              if name not in {"Add", "Sub", "Mul", "Div", "Max", "Min", "Neg", "Abs", "Sign",
                              "Relu", "Clip", "PRelu", "Equal", "Less", "LessOrEqual",
                              "Greater", "GreaterOrEqual", "Where", "Cast", "Pow"} | BOOL_OPS}
# Inputs where NaN/inf make sense to draw (the rest would only test numpy's warnings).
SPECIAL_OK = {"Add", "Mul", "Max", "Min", "Relu", "Abs", "Neg", "IsNaN", "IsInf", "Sign",
              "Floor", "Ceil", "Round", "Sigmoid", "Tanh", "Clip", "Equal", "Less", "Greater"}


@st.composite
def elementwise_case(draw, op: str):
    arity = OPS[op].num_inputs[0]
    shapes = draw(broadcastable_shapes(arity))
    if op in BOOL_OPS:
        dtype = DType.BOOL
    elif op in FLOAT_ONLY or op == "Pow":
        dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16]))
    else:
        dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16,
                                      DType.INT32, DType.INT64]))
    special = op in SPECIAL_OK and dtype.is_float and draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    arrays = []
    for i, shape in enumerate(shapes):
        low, high = -4.0, 4.0
        if op in ("Log", "Sqrt") or (op == "Pow" and i == 0):
            low = 0.01  # keep the domain real; NaN behaviour is covered by SPECIAL_OK ops
        if op == "Pow" and i == 1:
            low, high = -2.0, 2.0
        if op == "Div" and i == 1 and not dtype.is_float:
            low = 1.0  # integer division by zero is undefined
        arrays.append(array_for(seed + i, shape, dtype, low=low, high=high, special=special))
    if op == "Where":
        arrays[0] = arrays[0] > 0
    attrs = draw(ATTRS[op]) if op in ATTRS else {}
    return arrays, attrs


# Ops whose domains and edge values (integer widths, shift counts, divisors) want cases of
# their own: tests/ops/test_elementwise_extra.py.
TESTED_APART = {"Mod", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot",
                "Acos", "Asin", "Atan", "Acosh", "Asinh", "Atanh", "Tan", "Cosh", "Sinh",
                "Softsign", "Celu", "ThresholdedRelu", "Shrink"}


@pytest.mark.parametrize("op", sorted(set(ELEMENTWISE_OPS) - TESTED_APART))
def test_elementwise_kernel_matches_reference(op, opencl_target):
    @given(case=elementwise_case(op))
    def check(case):
        arrays, attrs = case
        check_op(op, arrays, attrs, target=opencl_target)

    check()


def test_empty_tensor_runs_without_launch(opencl_target):
    x = np.zeros((0, 3), np.float32)
    model = check_op("Relu", [x], target=opencl_target)
    assert model.stats.kernel_launches == 0


def test_scalar_inputs_broadcast(opencl_target):
    check_op("Add", [np.float32(2.5), np.arange(6, dtype=np.float32).reshape(2, 3)],
             target=opencl_target)


def test_erf_kernel_is_within_a_few_ulp_everywhere(opencl_target):
    """The kernels' erf is a rational approximation (codegen/mathlib.py HELPERS): on a dense
    grid, tiny values and the special values, it stays within 1e-6 relative of math.erf
    (measured worst 3.2e-7) and keeps signs, +-1 at infinity and NaN."""
    import math

    from tests.harness import run_op

    grid = np.concatenate([np.linspace(-6, 6, 20001), [1e-30, -1e-20, 0.0, -0.0, 0.4999, 0.5,
                                                       5e-4, 9.0, np.inf, -np.inf, np.nan]])
    x = grid.astype(np.float32)
    (got,), _ = run_op("Erf", [x], target=opencl_target)
    expected = np.array([math.erf(float(v)) for v in x])
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-6, atol=0)
    assert np.isnan(got[-1]) and got[-3] == 1 and got[-2] == -1
