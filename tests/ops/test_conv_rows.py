"""The CPU direct convolution for few input channels per group (codegen/conv_rows.py) run
directly on the OpenCL device against Conv's numpy reference: image sizes of 1, primes,
non-multiples of the vector width and wide rows; kernels 1 to 7 (square or not); strides 1-3;
dilations 1-2; asymmetric pads (some wider than the kernel's reach); 1 to 4 input channels
per group and up to 16 on wide rows, output channel counts that the channel block does not
divide, groups; batches; bias; float16 stored as half, float64; fused epilogues
(conv_depthwise's: Clip then a residual Add, full or per channel; HardSwish; a Cast to half);
NaN and inf next to the padding; every tuner candidate; the routing of build_conv (the stem
of resnet_mini) and its choice of 4-pixel GEMM tiles for small convs.

Tolerance. Each result sums K = CIG*KH*KW products plus the bias in the compute type, in
another order than numpy's: both are within about K*u*S of the exact sum (u the unit
roundoff, S the sum of the terms' magnitudes, Higham 3.1), so the tests allow
atol = 2*(K+1)*u*max(S) (S in float64: the same conv on |X|, |W|, |B|) on top of the output
dtype's TOLERANCE row, plus one half rounding (2^-11 * max(S)) for a float16 epilogue, which
the reference applies to the product first.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, strategies as st

from ember.codegen.kernels.conv import _common, build_conv
from ember.codegen.kernels.conv_rows import (
    DEFAULT_CONV_ROWS_PARAMS, MEDIUM_CIN, MEDIUM_MIN_WIDTH, SMALL_CIN, ConvRowsParams,
    conv_rows_lowered,
)
from ember.codegen.types import NodeSpec
from ember.ir import OPS, DType, TensorType
from ember.ir.ops.linalg import ConvGeometry, conv_geometry
from ember.runtime.device import resolve_target
from tests.harness import assert_close, space_sample
from tests.ops.test_conv_depthwise import EPILOGUES, ConvCase, Runner

pytestmark = pytest.mark.opencl

SIZES = (1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 67)


class Case(ConvCase):
    """A Conv with few input channels per group (`cout` output channels)."""

    def __init__(self, seed: int, x_shape: tuple[int, ...], cout: int, kernel: tuple[int, int],
                 attrs: dict, dtype: DType, bias: bool, epilogue: str | None,
                 group: int = 1, special: bool = False) -> None:
        super().__init__(seed, x_shape, (cout, x_shape[1] // group, *kernel), attrs, dtype,
                         bias, epilogue, group, conv_rows_lowered, special)


@pytest.fixture(scope="module")
def runner(opencl_target) -> Runner:
    return Runner(opencl_target)


def check(runner: Runner, cases: Sequence[Case], params: ConvRowsParams | None = None) -> None:
    """Every case through one program, each compared with the reference."""
    lowered = [case.lower(params) for case in cases]
    program = runner.build([k for low in lowered for k in low.kernels])
    for case, low in zip(cases, lowered):
        assert_close(runner.run(program, low, case), case.expected(),
                     f"{case.what} {params or DEFAULT_CONV_ROWS_PARAMS}", case.tolerance())


# -- hypothesis over shapes and attributes ------------------------------------------------------
@st.composite
def rows_case(draw) -> Case:
    kernel = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    if draw(st.booleans()):
        kernel = (kernel[0], kernel[0])
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 4)) for _ in range(4))
    if kernel == (1, 1) and strides == (1, 1) and not any(pads):
        pads = (0, 1, 0, 0)  # pointwise convs take conv1x1_problem's product instead
    spatial = [draw(st.sampled_from(SIZES)) for _ in range(2)]
    for axis in range(2):  # the output must not be empty
        span = (kernel[axis] - 1) * dilations[axis] + 1
        spatial[axis] = max(spatial[axis], span - pads[axis] - pads[2 + axis])
    group = draw(st.sampled_from((1, 1, 2)))
    cig = draw(st.sampled_from((1, 2, 3, 4, 4, 7, MEDIUM_CIN)))
    if cig > SMALL_CIN:  # rows of MEDIUM_MIN_WIDTH outputs at least
        span = (kernel[1] - 1) * dilations[1] + 1
        need = (MEDIUM_MIN_WIDTH - 1) * strides[1] + span - pads[1] - pads[3]
        spatial[1] = max(spatial[1], need)
    cout = group * draw(st.sampled_from((1, 3, 4, 5, 8, 16)))
    x_shape = (draw(st.sampled_from((1, 2))), group * cig, *spatial)
    dtype = draw(st.sampled_from((DType.FLOAT32, DType.FLOAT32, DType.FLOAT16)))
    return Case(draw(st.integers(0, 2**31)), x_shape, cout, kernel,
                {"strides": strides, "dilations": dilations, "pads": pads}, dtype,
                draw(st.booleans()), draw(st.sampled_from(EPILOGUES)), group)


@given(rows_case())
def test_conv_rows_matches_reference(runner, case):
    check(runner, [case])


# -- chosen cases ------------------------------------------------------------------------------
def test_stems(runner):
    """RGB stems: resnet_mini's 7x7/2 (pads 3, bias, a ReLU-like epilogue), a 3x3/2 one, a
    wide image (an interior segment of several chunks), a batch of two."""
    check(runner, [
        Case(1, (1, 3, 64, 64), 16, (7, 7), {"strides": (2, 2), "pads": (3, 3, 3, 3)},
             DType.FLOAT32, True, "clip_add_channel"),
        Case(2, (2, 3, 33, 35), 16, (3, 3), {"strides": (2, 2), "pads": (1, 1, 1, 1)},
             DType.FLOAT32, True, "hardswish"),
        Case(3, (1, 3, 9, 230), 8, (3, 3), {"strides": (1, 1), "pads": (1, 1, 1, 1)},
             DType.FLOAT32, False, "clip_add"),
        Case(4, (1, 1, 7, 40), 6, (5, 3), {"strides": (1, 2), "pads": (2, 1, 2, 1)},
             DType.FLOAT16, True, "cast_half"),
    ])


def test_outputs_that_read_only_padding(runner):
    """Pads wider than the kernel's reach: whole vectors read nothing (the bias alone)."""
    check(runner, [
        Case(10, (1, 2, 3, 2), 4, (1, 1), {"pads": (2, 0, 1, 79)}, DType.FLOAT32, True, None),
        Case(11, (2, 4, 4, 5), 6, (3, 3), {"strides": (2, 3), "pads": (3, 3, 3, 30)},
             DType.FLOAT32, True, "clip_add", group=2),
    ])


def test_nan_and_inf_stay_out_of_the_padding(runner):
    """Padding lanes are cleared by a bit mask, never multiplied by 0 (0 * inf is NaN)."""
    check(runner, [Case(seed, (1, 3, 9, 19), 4, (3, 3),
                        {"strides": (s, s), "pads": (1, 2, 2, 1)}, DType.FLOAT32, True, None,
                        special=True) for seed, s in ((7, 1), (8, 2))])


def test_float64(runner):
    if not runner.device.info.traits.fp64:
        pytest.skip("the device has no cl_khr_fp64")
    check(runner, [Case(5, (2, 3, 7, 29), 4, (3, 5), {"strides": (s, s), "pads": (1, 2, 1, 2)},
                        DType.FLOAT64, True, "clip_add") for s in (1, 2)])


@pytest.mark.parametrize("params", space_sample("conv_rows", 14), ids=str)
def test_every_candidate(runner, params):
    """A tuner picks among the candidates: none may be wrong (strides 1 and 2, padding on
    both sides, partial chunks, channel counts the block does not divide, split rows)."""
    check(runner, [Case(9, (2, 3, 13, 37), 6, (3, 3), {"strides": (s, s), "pads": (1, 0, 2, 1)},
                        DType.FLOAT32, True, "clip_add") for s in (1, 2)], params)


# -- what the builder declines, and where build_conv sends convs -------------------------------
def _spec(x, w, dtype=DType.FLOAT32, **attrs) -> tuple[NodeSpec, ConvGeometry]:
    a = OPS["Conv"].make_attrs(attrs)
    inputs = (TensorType(x, dtype), TensorType(w, dtype))
    return NodeSpec("Conv", a, inputs, OPS["Conv"].infer_types(inputs, a)), conv_geometry(x, w, a)


def test_declines_what_it_does_not_do():
    def lowered(x, w, **attrs):
        spec, g = _spec(x, w, **attrs)
        return conv_rows_lowered(spec, g, _common(spec, g))

    assert lowered((1, 3, 9), (4, 3, 3)) is None  # 1-D
    assert lowered((1, 3, 5, 5, 5), (4, 3, 3, 3, 3)) is None  # 3-D
    assert lowered((1, 3, 9, 9), (4, 3, 1, 1)) is None  # pointwise: conv1x1_problem
    assert lowered((1, 8, 9, 17), (4, 8, 3, 3)) is None  # 8 channels, rows of 15
    assert lowered((1, 32, 9, 40), (4, 32, 3, 3)) is None  # too many input channels
    assert lowered((1, 8, 9, 18), (4, 8, 3, 3)) is not None  # 8 channels, rows of 16
    assert lowered((1, 3, 9, 3), (4, 3, 3, 3)) is not None  # 3 channels, any row
    with pytest.raises(ValueError, match="accumulators"):
        ConvRowsParams(nv=4, ocb=8).validate()
    assert all(not p.violations() for p in space_sample("conv_rows", 14))


def test_build_conv_routes_small_cin_convs_on_cpu(opencl_target):
    target = resolve_target(opencl_target).target
    if target.family.name != "cpu":
        pytest.skip("the direct kernel is the CPU route; this device is a GPU")
    specs = [  # resnet_mini's stem, its first block conv, a 4x4 one, a depthwise one
        _spec((1, 3, 64, 64), (16, 3, 7, 7), strides=(2, 2), pads=(3, 3, 3, 3))[0],
        _spec((1, 16, 16, 16), (16, 16, 3, 3), pads=(1, 1, 1, 1))[0],
        _spec((1, 64, 4, 4), (64, 64, 3, 3), pads=(1, 1, 1, 1))[0],
        _spec((1, 16, 16, 16), (16, 1, 3, 3), pads=(1, 1, 1, 1), group=16)[0],
    ]
    names = [build_conv(spec, target).launches[0].kernel.name.rsplit("_", 1)[0]
             for spec in specs]
    assert names == ["conv_rows", "conv_rows", "conv_cpu", "conv_dw_cpu"]


def test_small_conv_gemms_take_four_row_tiles(opencl_target, runner):
    """Below 64 work-items the untuned conv GEMM takes tiles of 4 pixels (more work-items
    for the cores); large images keep the default 6. The result stays the reference's."""
    target = resolve_target(opencl_target).target
    if target.family.name != "cpu":
        pytest.skip("the register-tiled GEMM is the CPU route; this device is a GPU")
    small = Case(21, (1, 64, 4, 4), 64, (3, 3), {"pads": (1, 1, 1, 1)}, DType.FLOAT32, True,
                 None)
    large, _ = _spec((1, 32, 28, 28), (32, 32, 3, 3), pads=(1, 1, 1, 1))
    lowered = build_conv(small.spec, target)
    assert "#define MR 4" in lowered.launches[0].kernel.source
    assert "#define MR 6" in build_conv(large, target).launches[0].kernel.source
    (launch,) = lowered.launches
    assert launch.global_size[0] == 4 * 4  # 16 pixels in tiles of 4, 64 channels in 16
    program = runner.build(lowered.kernels)
    assert_close(runner.run(program, lowered, small), small.expected(), small.what,
                 small.tolerance())
