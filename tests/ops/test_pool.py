"""MaxPool and AveragePool kernels (codegen/kernels/pool.py) in both forms, run straight on the
OpenCL device against the numpy reference: the "rows" form CPU devices get (explicit vectors
inside the row, one output at a time at its edges) with every row-parameter shape, and the
"item" form GPUs get (one work-item per output), on odd shapes: sizes 1 and primes, windows
larger than the input that only the padding makes fit, dilations, ceil mode, 1-D/2-D/3-D,
int dtypes, half, float64, NaN and inf, indices in both storage orders.

AveragePool sums at most `window` elements of magnitude <= 4 in another order than the
reference: atol = window * eps32 * 4 (tests/ops/test_nn.py's sum_tolerance); MaxPool is exact.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, strategies as st

from ember.codegen.families import Target
from ember.codegen.types import Lowered, NodeSpec
from ember.codegen.kernels.pool import PoolRowParams, build_pool, default_row_params
from ember.ir import OPS, DType, TensorType
from ember.ir.ops.pool import pool_geometry
from ember.runtime.device import resolve_target
from tests.harness import assert_close, check_op
from tests.ops.test_nn import run_lowered, sum_tolerance
from tests.strategies import array_for

pytestmark = pytest.mark.opencl

SIZES = (1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 37)
# row parameters every case may draw: vectors of 2-16 lanes or none, several chunks per row
# (tw = vw), work-groups of several work-items (the global size padded)
ROW_PARAMS = (None, PoolRowParams(8, 8, 1), PoolRowParams(4, 64, 3), PoolRowParams(16, 16, 2),
              PoolRowParams(2, 6, 1), PoolRowParams(0, 5, 4))


@pytest.fixture(scope="module")
def targets(opencl_target) -> dict[str, Target]:
    """The device's own target and the same device described as a GPU (the "item" form)."""
    cpu = resolve_target(opencl_target).target
    gpu = replace(cpu, traits=replace(cpu.traits, device_type="GPU"))
    return {"cpu": cpu, "gpu": gpu}


def _spec(op: str, x: np.ndarray, attrs: dict) -> tuple[NodeSpec, object]:
    made = OPS[op].make_attrs(attrs)
    inputs = (TensorType(x.shape, DType.from_numpy(x.dtype)),)
    return NodeSpec(op, made, inputs, OPS[op].infer_types(inputs, made)), made


def run_cases(cases: list[tuple[str, np.ndarray, dict, Target, PoolRowParams | None]]) -> None:
    """Every case through one program, each output compared with the reference."""
    runs, checks = [], []
    for op, x, attrs, target, params in cases:
        spec, made = _spec(op, x, attrs)
        lowered: Lowered | None = build_pool(spec, target, params)
        assert lowered is not None
        runs.append((lowered, [x], spec.outputs))
        window = math.prod(attrs["kernel_shape"])
        tolerance = sum_tolerance(DType.from_numpy(x.dtype), window, 4.0) \
            if op == "AveragePool" and x.dtype.kind == "f" else None
        checks.append((f"{op} {x.shape} {x.dtype} {attrs} {params}",
                       OPS[op].evaluate([x], made), tolerance))
    for (what, expected, tolerance), actual in zip(checks, run_lowered(runs, "opencl")):
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"{what} output {i}", tolerance)


# -- hypothesis --------------------------------------------------------------------------------
@st.composite
def pool_case(draw, op: str):
    k = draw(st.sampled_from([1, 2, 2, 2, 3]))
    kernel = [draw(st.integers(1, 5 if k < 3 else 3)) for _ in range(k)]
    dilations = [draw(st.sampled_from([1, 1, 2])) for _ in range(k)]
    strides = [draw(st.integers(1, 3)) for _ in range(k)]
    # pads up to the kernel itself: windows of padding only, inputs smaller than the window
    pads = [draw(st.integers(0, kernel[i % k])) for i in range(2 * k)]
    spatial = []
    for i in range(k):
        extent = (kernel[i] - 1) * dilations[i] + 1
        size = draw(st.sampled_from([s for s in SIZES if k < 3 or s <= 8]))
        spatial.append(max(size, extent - pads[i] - pads[k + i]))
    shape = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 3, 4])), *spatial)
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads,
             "dilations": dilations, "ceil_mode": int(draw(st.booleans()))}
    if op == "MaxPool":
        dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16,
                                      DType.INT8, DType.UINT8, DType.INT32, DType.INT64]))
        attrs["indices"] = int(draw(st.integers(0, 3)) == 0)
        attrs["storage_order"] = int(draw(st.booleans()))
    else:
        dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16]))
        attrs["count_include_pad"] = int(draw(st.booleans()))
    x = array_for(draw(st.integers(0, 2**32 - 1)), tuple(shape), dtype,
                  special=dtype.is_float and draw(st.booleans()))
    return x, attrs, draw(st.sampled_from(ROW_PARAMS)), draw(st.sampled_from(["cpu", "gpu"]))


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_forms_match_reference(op, targets):
    @given(case=pool_case(op))
    def check(case):
        x, attrs, params, form = case
        run_cases([(op, x, attrs, targets[form], params if form == "cpu" else None)])

    check()


# -- chosen cases ------------------------------------------------------------------------------
def test_resnet_stem_pool_and_wide_rows(targets):
    """resnet_mini's MaxPool (3x3/2, pads 1, 32x32), a 112-wide row (two chunks), 5x5/1
    (YOLO's SPP), 2x2/2 without pads, AveragePool 3x3/1 with and without counting pads;
    NaN and inf in every input."""
    cpu = targets["cpu"]
    same = {"strides": [1, 1], "pads": [1, 1, 1, 1]}
    cases = [
        ("MaxPool", (1, 16, 32, 32), {"kernel_shape": [3, 3], "strides": [2, 2],
                                      "pads": [1, 1, 1, 1]}),
        ("MaxPool", (1, 3, 20, 112), {"kernel_shape": [3, 3], "strides": [2, 2],
                                      "pads": [1, 1, 1, 1]}),
        ("MaxPool", (1, 4, 20, 20), {"kernel_shape": [5, 5], "strides": [1, 1],
                                     "pads": [2, 2, 2, 2]}),
        ("MaxPool", (2, 5, 28, 27), {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ("AveragePool", (1, 6, 35, 35), {"kernel_shape": [3, 3], **same}),
        ("AveragePool", (1, 6, 35, 35), {"kernel_shape": [3, 3], "count_include_pad": 1, **same}),
    ]
    run_cases([(op, array_for(i, shape, DType.FLOAT32, special=True), attrs, cpu, None)
               for i, (op, shape, attrs) in enumerate(cases)])


def test_nan_propagates_and_ties_keep_the_first_index(targets):
    x = np.array([[[[1.0, np.nan, 3.0, 3.0, 2.0, 7.0, np.nan, 1.0, 0.5, -1.0, 4.0, 4.0,
                     np.inf, -np.inf, 3.0, 3.0, 3.0, 2.0]] * 3]], np.float32)
    cases = []
    for form in ("cpu", "gpu"):
        for indices in (0, 1):
            attrs = {"kernel_shape": [2, 3], "strides": [1, 1], "pads": [0, 1, 1, 1],
                     "indices": indices}
            cases.append(("MaxPool", x, attrs, targets[form], None))
    ties = np.zeros((1, 2, 5, 23), np.int8)
    cases.append(("MaxPool", ties, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "indices": 1,
                                    "storage_order": 1}, targets["cpu"], None))
    run_cases(cases)


def test_windows_larger_than_the_input(targets):
    """Inputs smaller than the window, fitted by the pads: some windows hold a single real
    element, some none (MaxPool: lowest and index -1; AveragePool: NaN or a count of pads)."""
    cases = []
    for form in ("cpu", "gpu"):
        for op, extra in (("MaxPool", {"indices": 1}), ("MaxPool", {}),
                          ("AveragePool", {}), ("AveragePool", {"count_include_pad": 1})):
            attrs = {"kernel_shape": [4, 5], "pads": [3, 4, 3, 4], "dilations": [1, 2],
                     "strides": [2, 3], "ceil_mode": 1, **extra}
            cases.append((op, array_for(3, (1, 2, 1, 2), DType.FLOAT32), attrs, targets[form],
                          None))
    run_cases(cases)


@pytest.mark.parametrize("dtype", [DType.INT8, DType.UINT8, DType.INT32, DType.INT64,
                                   DType.FLOAT16, DType.FLOAT64])
def test_dtypes(dtype, targets):
    if dtype is DType.FLOAT64 and not targets["cpu"].traits.fp64:
        pytest.skip("the device has no cl_khr_fp64")
    x = array_for(11, (2, 3, 9, 41), dtype)
    attrs = {"kernel_shape": [3, 3], "strides": [1, 2], "pads": [1, 1, 1, 1]}
    cases = [("MaxPool", x, attrs, targets["cpu"], None)]
    if dtype.is_float:
        cases.append(("AveragePool", x, attrs, targets["cpu"], None))
    run_cases(cases)


def test_one_and_three_dims(targets):
    cpu = targets["cpu"]
    run_cases([
        ("MaxPool", array_for(1, (2, 3, 101), DType.FLOAT32, special=True),
         {"kernel_shape": [4], "strides": [3], "pads": [2, 1]}, cpu, PoolRowParams(8, 16, 1)),
        ("AveragePool", array_for(2, (1, 2, 300), DType.FLOAT32),
         {"kernel_shape": [11], "pads": [5, 5], "count_include_pad": 1}, cpu, None),
        ("MaxPool", array_for(3, (1, 2, 5, 6, 19), DType.FLOAT32),
         {"kernel_shape": [2, 3, 3], "strides": [1, 2, 2], "pads": [1, 1, 1, 0, 1, 1]}, cpu,
         None),
        ("AveragePool", array_for(4, (1, 2, 5, 6, 19), DType.FLOAT16),
         {"kernel_shape": [3, 2, 3], "dilations": [1, 2, 1]}, cpu, None),
    ])


# -- the builder -------------------------------------------------------------------------------
def test_forms_and_parameters(targets):
    x = np.zeros((1, 16, 32, 32), np.float32)
    spec, _ = _spec("MaxPool", x, {"kernel_shape": [3, 3], "strides": [2, 2],
                                   "pads": [1, 1, 1, 1]})
    (rows,) = build_pool(spec, targets["cpu"]).launches
    (item,) = build_pool(spec, targets["gpu"]).launches
    assert rows.kernel.name.startswith("pool_rows_") and rows.local_size == (1,)
    assert rows.global_size == (16 * 16,)  # one work-item per output row of 16
    assert item.kernel.name.startswith("pool_") and item.global_size == (16 * 16 * 16,)
    params = default_row_params(DType.FLOAT32, 16, targets["cpu"])
    assert params.vw >= 4 and params.tw % params.vw == 0
    (padded,) = build_pool(spec, targets["cpu"], PoolRowParams(8, 8, 3)).launches
    assert padded.global_size == (3 * 171,) and padded.local_size == (3,)  # 512 padded
    with pytest.raises(ValueError, match="multiple of vw"):
        PoolRowParams(8, 12, 1).validate()
    g = pool_geometry(x.shape, spec.attrs)
    assert g.out_shape == (16, 16)


def test_compiled_model_uses_the_rows_form(opencl_target):
    """Through ember.compile on the CPU device (the form the device picks), with indices."""
    if resolve_target(opencl_target).target.traits.device_type != "CPU":
        pytest.skip("the rows form is the CPU route")
    x = array_for(5, (2, 3, 17, 29), DType.FLOAT32, special=True)
    model = check_op("MaxPool", [x], {"kernel_shape": [3, 3], "strides": [2, 2],
                                      "pads": [1, 1, 1, 1], "indices": 1},
                     target=opencl_target)
    assert [k.name[:10] for k in model.plan.kernels()] == ["pool_rows_"]
