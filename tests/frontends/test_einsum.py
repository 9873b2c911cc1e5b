"""ONNX's Einsum through ember (lowered to Transpose / Reshape / Gather / ReduceSum /
MatMul on the device) against numpy's einsum: drawn equations of one to three operands
with shared, summed and repeated (diagonal) labels, ellipses, and implicit outputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import helper

import ember
from ember.errors import ShapeError
from ember.frontends.onnx.einsum import parse_einsum
from ember.ir import DType
from tests.harness import TOLERANCE, assert_close

pytestmark = pytest.mark.opencl

SIZES = {"a": 2, "b": 3, "c": 4, "d": 5}
ELLIPSIS_DIMS = (2, 3)


def _model(equation: str, arrays: list[np.ndarray], out_shape: tuple[int, ...]):
    names = [f"x{i}" for i in range(len(arrays))]
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                            a.shape) for n, a in zip(names, arrays)]
    out = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(arrays[0].dtype),
                                        out_shape)
    node = helper.make_node("Einsum", names, ["y"], equation=equation)
    model = helper.make_model(helper.make_graph([node], "einsum", inputs, [out]),
                              opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 10
    return model


@st.composite
def equations(draw):
    count = draw(st.integers(1, 3))
    ellipsis = draw(st.booleans())
    terms, shapes = [], []
    for _ in range(count):
        labels = draw(st.lists(st.sampled_from("abcd"), max_size=3))
        term = "".join(labels)
        shape = [SIZES[c] for c in labels]
        if ellipsis and draw(st.booleans()):
            dims = ELLIPSIS_DIMS[len(ELLIPSIS_DIMS) - draw(st.integers(0, 2)):]
            term, shape = "..." + term, list(dims) + shape
        terms.append(term)
        shapes.append(tuple(shape))
    used = sorted(set("".join(terms)) - {"."})
    equation = ",".join(terms)
    if draw(st.booleans()):
        out = "".join(draw(st.permutations(used))[:draw(st.integers(0, len(used)))])
        if "..." in equation:
            out = "..." + out
        equation += "->" + out
    return equation, shapes


@settings(max_examples=8)
@given(case=equations(), seed=st.integers(0, 2**16))
def test_einsum_matches_numpy(case, seed, opencl_target):
    equation, shapes = case
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1, 1, s).astype(np.float32) for s in shapes]
    expected = np.einsum(equation, *arrays)
    model = _model(equation, arrays, expected.shape)
    got = ember.compile(model, target=opencl_target)(**{f"x{i}": a for i, a in
                                                       enumerate(arrays)})["y"]
    assert_close(got, expected.astype(np.float32), equation, TOLERANCE[DType.FLOAT32])


@pytest.mark.parametrize("equation, arrays", [
    ("ii->i", [np.arange(9, dtype=np.int64).reshape(3, 3)]),  # integer diagonal: exact
    ("bij,bjk->bik", [np.ones((2, 3, 4), np.float64), np.ones((2, 4, 5), np.float64)]),
    ("...ii->...i", [np.arange(45, dtype=np.float32).reshape(5, 3, 3)]),
    ("->", [np.array(2.5, np.float32)]),
])
def test_einsum_fixed_cases(equation, arrays, opencl_target):
    expected = np.einsum(equation, *arrays)
    got = ember.compile(_model(equation, arrays, expected.shape), target=opencl_target)(
        **{f"x{i}": a for i, a in enumerate(arrays)})["y"]
    assert_close(got, expected, equation)


def test_parse_einsum_expands_the_ellipsis_and_the_implicit_output():
    assert parse_einsum("...ij,jk", [4, 2]) == (["01ij", "jk"], "01ik")
    assert parse_einsum("b i j , b j k -> b i k", [3, 3]) == (["bij", "bjk"], "bik")
    with pytest.raises(ShapeError, match="rank 1"):
        parse_einsum("ij->i", [1])
    with pytest.raises(ShapeError, match="names 2 operands"):
        parse_einsum("i,j", [1])
