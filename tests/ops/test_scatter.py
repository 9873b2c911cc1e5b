"""GatherND, ScatterND and ScatterElements: numpy references against ONNX's reference
implementation (exact: they only move and combine elements in index order), with negative
and repeated indices and every reduction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from onnx import helper
from onnx.reference import ReferenceEvaluator

from ember.errors import ShapeError
from ember.ir import OPS

REDUCTIONS = ["none", "add", "mul", "max", "min"]


def onnx_reference(op_type: str, inputs: list[np.ndarray], **attrs) -> np.ndarray:
    names = [f"in{i}" for i in range(len(inputs))]
    node = helper.make_node(op_type, names, ["out"], **attrs)
    return ReferenceEvaluator(node).run(None, dict(zip(names, inputs)))[0]


def evaluate(op: str, inputs: list[np.ndarray], **attrs) -> np.ndarray:
    return OPS[op].evaluate(inputs, OPS[op].make_attrs(attrs))[0]


def _data(rng, shape, integer: bool) -> np.ndarray:
    if integer:
        return rng.integers(-5, 6, size=shape).astype(np.int32)
    return rng.uniform(-3, 3, size=shape).astype(np.float32)


def _indices(rng, dims, lead) -> np.ndarray:
    """Indices into axes of sizes `dims`, negative half the time, shape lead + (len(dims),)."""
    columns = [rng.integers(-d, d, size=lead) for d in dims]
    return np.stack(columns, axis=-1).astype(np.int64)


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(0, 2), st.booleans())
def test_gather_nd_matches_onnx_reference(seed, rank, batch_dims, integer):
    rng = np.random.default_rng(seed)
    batch_dims = min(batch_dims, rank - 1)
    shape = tuple(int(d) for d in rng.integers(1, 5, size=rank))
    k = int(rng.integers(1, rank - batch_dims + 1))
    lead = shape[:batch_dims] + tuple(int(d) for d in rng.integers(1, 4, size=rng.integers(
        0, 3)))
    indices = _indices(rng, shape[batch_dims:batch_dims + k], lead)
    data = _data(rng, shape, integer)
    got = evaluate("GatherND", [data, indices], batch_dims=batch_dims)
    expected = onnx_reference("GatherND", [data, indices], batch_dims=batch_dims)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.sampled_from(REDUCTIONS),
       st.booleans())
def test_scatter_nd_matches_onnx_reference(seed, rank, reduction, integer):
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in rng.integers(1, 5, size=rank))
    k = int(rng.integers(1, rank + 1))
    lead = tuple(int(d) for d in rng.integers(1, 4, size=rng.integers(1, 3)))
    indices = _indices(rng, shape[:k], lead)
    if reduction == "none":  # ONNX leaves repeated indices undefined without a reduction
        wrapped = np.where(indices < 0, indices + np.array(shape[:k]), indices).reshape(-1, k)
        _, first = np.unique(wrapped, axis=0, return_index=True)
        indices = indices.reshape(-1, k)[np.sort(first)]
    data = _data(rng, shape, integer)
    updates = _data(rng, indices.shape[:-1] + shape[k:], integer)
    got = evaluate("ScatterND", [data, indices, updates], reduction=reduction)
    expected = onnx_reference("ScatterND", [data, indices, updates], reduction=reduction)
    np.testing.assert_array_equal(got, expected)


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.sampled_from(REDUCTIONS),
       st.booleans())
def test_scatter_elements_matches_onnx_reference(seed, rank, reduction, integer):
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in rng.integers(1, 5, size=rank))
    axis = int(rng.integers(-rank, rank))
    index_shape = tuple(int(rng.integers(1, d + 1)) for d in shape)
    indices = rng.integers(-shape[axis], shape[axis], size=index_shape).astype(np.int64)
    if reduction == "none":  # distinct targets along the axis: a permutation's prefix
        a = axis % rank
        full = list(index_shape)
        full[a] = shape[a]
        order = np.argsort(rng.random(full), axis=a)
        indices = np.take(order, np.arange(index_shape[a]), axis=a)
        indices = np.where(rng.random(indices.shape) < 0.5, indices - shape[a], indices)
        indices = indices.astype(np.int64)
    data = _data(rng, shape, integer)
    updates = _data(rng, indices.shape, integer)
    got = evaluate("ScatterElements", [data, indices, updates], axis=axis, reduction=reduction)
    expected = onnx_reference("ScatterElements", [data, indices, updates], axis=axis,
                              reduction=reduction)
    np.testing.assert_array_equal(got, expected)


def test_out_of_range_index_names_the_op():
    data = np.zeros((3, 4), np.float32)
    with pytest.raises(ShapeError, match="GatherND index 3 is out of range"):
        evaluate("GatherND", [data, np.array([[3, 0]], np.int64)])
    with pytest.raises(ShapeError, match="ScatterElements index -5"):
        evaluate("ScatterElements", [data, np.array([[-5]]), np.ones((1, 1), np.float32)],
                 axis=1)
