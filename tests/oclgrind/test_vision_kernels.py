"""The GridSample and GroupNormalization kernels on Oclgrind: every GridSample mode and
padding (taps far outside the image included, where zeros padding must not read and the
other paddings clamp or reflect), 2-D and 3-D, and GroupNormalization's per-channel scale
across a group's planes, checked against the numpy references without an invalid access."""

from __future__ import annotations

import pytest

from ember.ir import DType
from tests.harness import check_op
from tests.strategies import array_for

pytestmark = pytest.mark.oclgrind

F32 = DType.FLOAT32

GRID_CASES = [
    ("linear", "zeros", 0, (1, 2, 4, 5)), ("linear", "border", 1, (1, 2, 4, 5)),
    ("linear", "reflection", 0, (1, 1, 3, 4, 5)), ("nearest", "reflection", 1, (1, 2, 4, 5)),
    ("nearest", "zeros", 0, (1, 1, 3, 4, 5)), ("cubic", "zeros", 1, (1, 2, 4, 5)),
    ("cubic", "reflection", 0, (2, 1, 3, 4)), ("cubic", "border", 0, (1, 1, 1, 6)),
]


@pytest.mark.parametrize("mode, padding, align, shape", GRID_CASES,
                         ids=[f"{m}-{p}-{a}-{len(s)}d" for m, p, a, s in GRID_CASES])
def test_grid_sample_kernel(oclgrind_log, mode, padding, align, shape):
    r = len(shape) - 2
    x = array_for(1, shape, F32, low=-3, high=3)
    # points well outside [-1, 1] too: a reflected coordinate folds back several times
    grid = array_for(2, (shape[0], 3, 2, r)[: r + 1] + (r,), F32, low=-3.5, high=3.5)
    check_op("GridSample", [x, grid],
             {"mode": mode, "padding_mode": padding, "align_corners": align},
             target="oclgrind@cpu")


def test_group_norm_kernel(oclgrind_log):
    x = array_for(3, (2, 6, 3, 5), F32, low=-3, high=3)
    scale, bias = array_for(4, (6,), F32), array_for(5, (6,), F32)
    check_op("GroupNormalization", [x, scale, bias], {"num_groups": 3, "epsilon": 1e-3},
             target="oclgrind@gpu")
