"""The kernels of Mod, BitShift, BitCast, the float math ops added with them, CumProd and the
abs / log maps of ReduceL1 / ReduceLogSum on Oclgrind: no invalid access, results equal to
the numpy reference (integers bit for bit), on the CPU family (vectorized float forms) and
the GPU family (one element per work-item)."""

from __future__ import annotations

import numpy as np
import pytest

from ember.ir import DType
from tests.harness import check_op
from tests.strategies import array_for

pytestmark = pytest.mark.oclgrind

CASES = [
    ("Mod", lambda: [array_for(1, (5, 7), DType.INT8), array_for(2, (7,), DType.INT8)],
     {"fmod": 0}),
    ("Mod", lambda: [array_for(3, (19,), DType.FLOAT32, low=-9, high=9),
                     array_for(4, (19,), DType.FLOAT32)], {"fmod": 1}),
    ("BitShift", lambda: [array_for(5, (3, 11), DType.INT32),
                          np.arange(-3, 30, dtype=np.int32).reshape(3, 11)],
     {"direction": "RIGHT"}),
    ("BitShift", lambda: [array_for(6, (13,), DType.UINT64),
                          np.arange(0, 78, 6, dtype=np.uint64)], {"direction": "LEFT"}),
    ("BitCast", lambda: [array_for(7, (17,), DType.FLOAT32, special=True)],
     {"to": DType.INT32}),
    ("Atanh", lambda: [array_for(8, (3, 13), DType.FLOAT32, low=-1, high=1)], {}),
    ("Celu", lambda: [array_for(9, (21,), DType.FLOAT32)], {"alpha": 1.5}),
    ("CumProd", lambda: [array_for(10, (3, 6, 8), DType.FLOAT32, low=0.5, high=1.5)],
     {"axis": 1, "exclusive": 1, "reverse": 1}),
    ("CumProd", lambda: [array_for(11, (4, 9), DType.INT64)],
     {"axis": 1, "exclusive": 0, "reverse": 0}),
    ("ReduceL1", lambda: [array_for(12, (5, 33), DType.INT32)], {"axes": (1,), "keepdims": 0}),
    ("ReduceLogSum", lambda: [array_for(13, (6, 40), DType.FLOAT32, low=0.0)],
     {"axes": (1,), "keepdims": 1}),
]


@pytest.mark.parametrize("family", ["cpu", "gpu"])
@pytest.mark.parametrize("op, arrays, attrs", CASES,
                         ids=[f"{op}-{i}" for i, (op, _, _) in enumerate(CASES)])
def test_kernel_is_memory_safe_and_correct(op, arrays, attrs, family):
    model = check_op(op, arrays(), attrs, target=f"oclgrind@{family}")
    assert model.device.info.traits.simulator
