"""The GatherND kernel against the numpy reference (itself checked against ONNX's in
test_scatter.py): drawn shapes with batch_dims 0 and 1, negative indices, int32 and int64
indices, elements of 1, 2, 4 and 8 bytes, rows short (1-D launch) and long (2-D launch).
Moving elements is exact, so results are compared bit for bit."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ember.ir import OPS
from tests.harness import run_op

DTYPES = [np.float32, np.int8, np.float16, np.int64]


def _reference(data: np.ndarray, indices: np.ndarray, batch_dims: int) -> np.ndarray:
    op = OPS["GatherND"]
    return op.evaluate([data, indices], op.make_attrs({"batch_dims": batch_dims}))[0]


@given(data=st.data())
def test_gather_nd_kernel_matches_reference(opencl_target, data):
    rank = data.draw(st.integers(1, 4), label="rank")
    batch_dims = data.draw(st.integers(0, min(1, rank - 1)), label="batch_dims")
    shape = list(data.draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    if data.draw(st.booleans(), label="long rows"):
        shape[-1] = data.draw(st.integers(16, 40))
    depth = data.draw(st.integers(1, rank - batch_dims), label="depth")
    lead = data.draw(st.lists(st.integers(1, 4), max_size=2), label="index axes")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    dims = shape[batch_dims:batch_dims + depth]
    columns = [rng.integers(-d, d, size=(*shape[:batch_dims], *lead)) for d in dims]
    itype = data.draw(st.sampled_from([np.int32, np.int64]), label="index dtype")
    indices = np.stack(columns, axis=-1).astype(itype)
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    values = (rng.standard_normal(shape) * 50).astype(dtype)
    (got,), model = run_op("GatherND", [values, indices], {"batch_dims": batch_dims},
                           target=opencl_target)
    assert model.stats.device_steps == 1
    expected = _reference(values, indices, batch_dims)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got.reshape(-1).view(np.uint8),
                                  expected.reshape(-1).view(np.uint8))


def test_gather_nd_kernel_on_an_empty_index_list(opencl_target):
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    (got,), _ = run_op("GatherND", [values, np.zeros((0, 1), np.int64)], {},
                       target=opencl_target)
    assert got.shape == (0, 4)
