"""The CPU depthwise convolution (codegen/conv_depthwise.py) run directly on the OpenCL device
against Conv's numpy reference: image sizes of 1, primes, non-multiples of the vector width
and wide rows; kernels 1/3/5/7 (square or not); strides 1-3; dilations 1-2; asymmetric pads
(some wider than the kernel's reach, so that outputs read only padding); channel multipliers;
batches; bias; float16 stored as half; fused epilogues (Clip then a residual Add, full or per
channel; HardSwish; a Cast that changes the output dtype); NaN and inf next to the padding;
every tuner candidate.

Tolerance. Each result is a sum of K = KH*KW products plus the bias, accumulated in the
compute type in another order than numpy's; both are within about K*u*S of the exact sum (u
the unit roundoff of the compute type, S the sum of the terms' magnitudes, Higham 3.1), so
the tests allow atol = 2*(K+1)*u*max(S) (S in float64: the same conv on |X|, |W|, |B|) on
top of the output dtype's TOLERANCE row. float16 is computed in float (u = 2^-24) and
rounded to half once; the reference also rounds the product to half before a float16
epilogue, one more half rounding (2^-11 * max(S)) the tests add when there is an epilogue.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, strategies as st

from ember.codegen.kernels.conv import _common
from ember.codegen.kernels.conv_depthwise import (
    DEFAULT_DEPTHWISE_PARAMS, DepthwiseParams, depthwise_cpu_lowered,
    plan_row,
)
from ember.codegen.families import Target
from ember.codegen.types import IN, Lowered, NodeSpec
from ember.codegen.registry import KERNEL_BUILDERS, lower
from ember.ir import OPS, DType, TensorType
from ember.ir.ops.fused import ExprNode, FusedExpr
from ember.ir.ops.linalg import ConvGeometry, conv_geometry
from tests.harness import TOLERANCE, KernelLauncher, assert_close, real_devices, relative_l2, space_sample
from tests.strategies import array_for

pytestmark = pytest.mark.opencl

SIZES = (1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 67)
UNIT_ROUNDOFF = {DType.FLOAT32: 2.0**-24, DType.FLOAT16: 2.0**-24, DType.FLOAT64: 2.0**-53}
EPILOGUES = (None, "clip_add", "clip_add_channel", "hardswish")


# -- one case: a Conv node, its arrays, its kernel --------------------------------------------
def epilogue_expr(kind: str | None, dtype: DType) -> FusedExpr | None:
    """Clip(0, 6) then + residual (MobileNet's block), HardSwish, or a Cast to float16, as
    fusion builds them."""
    if kind is None:
        return None
    if kind == "hardswish":
        return FusedExpr.single("HardSwish", OPS["HardSwish"].make_attrs({}), 1, dtype)
    if kind == "cast_half":  # the output dtype is the epilogue's
        cast = OPS["Cast"].make_attrs({"to": DType.FLOAT16})
        return FusedExpr.single("Cast", cast, 1, DType.FLOAT16)
    clip = ExprNode("Clip", (0,), OPS["Clip"].make_attrs({"min": 0.0, "max": 6.0}), dtype)
    add = ExprNode("Add", (2, 1), OPS["Add"].make_attrs({}), dtype)
    return FusedExpr(2, (clip, add), (3,))


class ConvCase:
    """A Conv for a CPU conv strategy (`strategy`: depthwise here, conv_rows.py's in
    test_conv_rows.py): its spec, input arrays, reference result and error bound."""

    def __init__(self, seed: int, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                 attrs: dict, dtype: DType, bias: bool, epilogue: str | None, group: int,
                 strategy: Callable[..., Lowered | None], special: bool = False) -> None:
        cout = w_shape[0]
        expr = epilogue_expr(epilogue, dtype)
        self.attrs = OPS["Conv"].make_attrs({**attrs, "group": group, "epilogue": expr})
        self.g: ConvGeometry = conv_geometry(x_shape, w_shape, self.attrs)
        self.arrays = [array_for(seed, x_shape, dtype, special=special),
                       array_for(seed + 1, w_shape, dtype, low=-1, high=1)]
        if bias:
            self.arrays.append(array_for(seed + 2, (cout,), dtype))
        if epilogue in ("clip_add", "clip_add_channel"):
            shape = self.g.out_shape if epilogue == "clip_add" else (1, cout, 1, 1)
            self.arrays.append(array_for(seed + 3, shape, dtype))
        inputs = tuple(TensorType(a.shape, dtype) for a in self.arrays)
        outputs = OPS["Conv"].infer_types(inputs, self.attrs)
        self.spec = NodeSpec("Conv", self.attrs, inputs, outputs)
        self.strategy = strategy
        self.dtype, self.has_epilogue, self.n_base = dtype, expr is not None, 2 + bias
        self.what = (f"x{x_shape} w{w_shape} {dict(attrs)} group={group} {dtype.name} "
                     f"bias={bias} epilogue={epilogue}")

    def lower(self, params: object | None = None) -> Lowered:
        lowered = self.strategy(self.spec, self.g, _common(self.spec, self.g), params)
        assert lowered is not None, self.what
        return lowered

    def expected(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # inf - inf in the NaN/inf cases
            return OPS["Conv"].evaluate(self.arrays, self.attrs)[0]

    def tolerance(self) -> tuple[float, float]:
        """(rtol, atol): the module docstring's bound."""
        rtol, atol = TOLERANCE[self.spec.outputs[0].dtype]
        kw = {name: self.attrs[name] for name in ("strides", "dilations", "pads", "group")}
        base = [np.abs(np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0))
                for a in self.arrays[:self.n_base]]
        magnitude = OPS["Conv"].reference(*base, **kw)
        largest = float(magnitude.max()) if magnitude.size else 0.0
        k = self.g.cin_per_group * math.prod(self.g.kernel) + 1
        atol += 2.0 * k * UNIT_ROUNDOFF[self.dtype] * largest
        if self.dtype is DType.FLOAT16 and self.has_epilogue:
            atol += 2.0**-11 * largest
        return rtol, atol


class Case(ConvCase):
    """A depthwise Conv (a channel multiplier of output channels per input channel)."""

    def __init__(self, seed: int, x_shape: tuple[int, ...], multiplier: int,
                 kernel: tuple[int, int], attrs: dict, dtype: DType, bias: bool,
                 epilogue: str | None, special: bool = False) -> None:
        channels = x_shape[1]
        super().__init__(seed, x_shape, (channels * multiplier, 1, *kernel), attrs, dtype,
                         bias, epilogue, channels, depthwise_cpu_lowered, special)


# -- running kernels ---------------------------------------------------------------------------
class Runner(KernelLauncher):
    """Runs a Lowered of one launch on a case's arrays."""

    def run(self, program, lowered: Lowered, case: Case) -> np.ndarray:
        (launch,) = lowered.launches
        dtype = case.spec.outputs[0].dtype.np_dtype
        y = self.buffer(math.prod(case.g.out_shape) * np.dtype(dtype).itemsize)
        buffers = [self.buffer(case.arrays[i]) if kind == IN else y for kind, i in launch.args]
        self.launch(program, launch.kernel.name, (launch.global_size, launch.local_size),
                    *buffers)
        return self.read(y, case.g.out_shape, dtype)


@pytest.fixture(scope="module")
def runner(opencl_target) -> Runner:
    return Runner(opencl_target)


def check(runner: Runner, cases: Sequence[Case], params: DepthwiseParams | None = None) -> None:
    """Every case through one program, each compared with the reference."""
    lowered = [case.lower(params) for case in cases]
    program = runner.build([k for low in lowered for k in low.kernels])
    for case, low in zip(cases, lowered):
        assert_close(runner.run(program, low, case), case.expected(),
                     f"{case.what} {params or DEFAULT_DEPTHWISE_PARAMS}", case.tolerance())


# -- hypothesis over shapes and attributes ------------------------------------------------------
@st.composite
def depthwise_case(draw) -> Case:
    kernel = (draw(st.sampled_from((1, 3, 3, 5, 7))), draw(st.sampled_from((1, 3, 3, 5, 7))))
    if draw(st.booleans()):
        kernel = (kernel[0], kernel[0])
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    spatial = [draw(st.sampled_from(SIZES)) for _ in range(2)]
    for axis in range(2):  # the output must not be empty
        span = (kernel[axis] - 1) * dilations[axis] + 1
        spatial[axis] = max(spatial[axis], span - pads[axis] - pads[2 + axis])
    x_shape = (draw(st.sampled_from((1, 2))), draw(st.sampled_from((1, 2, 3, 5))), *spatial)
    dtype = draw(st.sampled_from((DType.FLOAT32, DType.FLOAT32, DType.FLOAT16)))
    return Case(draw(st.integers(0, 2**31)), x_shape, draw(st.sampled_from((1, 1, 2))), kernel,
                {"strides": strides, "dilations": dilations, "pads": pads}, dtype,
                draw(st.booleans()), draw(st.sampled_from(EPILOGUES)))


@given(depthwise_case())
def test_depthwise_matches_reference(runner, case):
    check(runner, [case])


# -- chosen cases ------------------------------------------------------------------------------
PAD1 = {"pads": (1, 1, 1, 1)}
MOBILENET = [  # mobilenetv2_mini's depthwise convs, with their fused epilogues
    ((1, 16, 32, 32), {"strides": (1, 1), **PAD1}, "clip_add"),
    ((1, 64, 32, 32), {"strides": (2, 2), **PAD1}, "clip_add_channel"),
    ((1, 96, 16, 16), {"strides": (1, 1), **PAD1}, None),
    ((1, 96, 16, 16), {"strides": (2, 2), **PAD1}, "hardswish"),
    ((1, 128, 8, 8), {"strides": (1, 1), **PAD1}, None),
    ((1, 128, 8, 8), {"strides": (2, 2), **PAD1}, "clip_add"),
]


def test_mobilenet_shapes(runner):
    check(runner, [Case(i, x, 1, (3, 3), attrs, DType.FLOAT32, True, epilogue)
                   for i, (x, attrs, epilogue) in enumerate(MOBILENET)])


def test_wide_rows_and_channel_multipliers(runner):
    """Rows of several interior chunks (one runtime loop), stride 1 and 2, 2 and 3 output
    channels per input channel, batches, a tall kernel (its ky loop runs at run time)."""
    check(runner, [
        Case(1, (2, 3, 5, 131), 2, (3, 3), {"strides": (1, 1), **PAD1}, DType.FLOAT32, True,
             "clip_add"),
        Case(2, (1, 2, 9, 200), 3, (3, 3), {"strides": (2, 2), "pads": (0, 0, 1, 1)},
             DType.FLOAT32, False, None),
        Case(3, (2, 2, 23, 97), 1, (7, 7), {"strides": (1, 1), "pads": (3, 3, 3, 3)},
             DType.FLOAT16, True, "clip_add_channel"),
        Case(4, (1, 4, 11, 70), 1, (5, 5), {"strides": (1, 2), "dilations": (2, 2),
                                            "pads": (4, 1, 0, 3)}, DType.FLOAT32, True, None),
        Case(6, (1, 3, 6, 21), 2, (3, 3), {"strides": (2, 1), **PAD1}, DType.FLOAT32, True,
             "cast_half"),
    ])


@pytest.mark.parametrize("params", [DEFAULT_DEPTHWISE_PARAMS, DepthwiseParams(8, 1, 0)],
                         ids=str)
def test_outputs_that_read_only_padding(runner, params):
    """Pads wider than the kernel's reach: whole vectors and chunks read nothing (the bias
    alone); with one vector per chunk, such chunks share a loop with the row's partial last
    chunk, whose column count is then computed at run time."""
    check(runner, [
        Case(10, (1, 2, 3, 2), 1, (1, 1), {"pads": (2, 0, 1, 79)}, DType.FLOAT32, True, None),
        Case(11, (2, 3, 4, 5), 1, (3, 3), {"strides": (2, 3), "pads": (3, 3, 3, 30)},
             DType.FLOAT32, True, "clip_add"),
    ], params)


def test_nan_and_inf_stay_out_of_the_padding(runner):
    """Padding lanes are cleared by a bit mask, never by multiplying with 0 (0 * inf is NaN):
    NaN and inf in X must reach exactly the outputs whose windows hold them."""
    check(runner, [Case(seed, (1, 3, 9, 19), 1, (3, 3),
                        {"strides": (s, s), "pads": (1, 2, 2, 1)}, DType.FLOAT32, True, None,
                        special=True) for seed, s in ((7, 1), (8, 2))])


def test_float64(runner):
    if not runner.device.info.traits.fp64:
        pytest.skip("the device has no cl_khr_fp64")
    check(runner, [Case(5, (2, 3, 7, 29), 2, (3, 5), {"strides": (s, s), "pads": (1, 2, 1, 2)},
                        DType.FLOAT64, True, "clip_add") for s in (1, 2)])


@pytest.mark.parametrize("params", space_sample("depthwise", 14), ids=str)
def test_every_candidate(runner, params):
    """A tuner picks among the candidates: none may be wrong (strides 1 and 2, padding on
    both sides, partial chunks, a multiplier, split rows)."""
    check(runner, [Case(9, (2, 3, 13, 37), 2, (3, 3), {"strides": (s, s), "pads": (1, 0, 2, 1)},
                        DType.FLOAT32, True, "clip_add") for s in (1, 2)], params)


# -- the plan and what the builder declines ----------------------------------------------------
def _geometry(x, w, **attrs) -> ConvGeometry:
    return conv_geometry(x, w, OPS["Conv"].make_attrs(attrs))


def test_interior_chunks_share_one_loop():
    """A wide padded row: the edge chunks are peeled, the interior is one segment, and its
    taps are plain vector loads (no swizzle, no zeros)."""
    g = _geometry((1, 4, 8, 200), (4, 1, 3, 3), group=4, pads=(1, 1, 1, 1))
    segments = plan_row(g, 8, 4)
    assert [(s.first, s.last) for s in segments] == [(0, 1), (1, 6), (6, 7)]
    interior = segments[1].taps
    assert all(tap.length == 8 and tap.lanes == tuple(range(8))
               for vector in interior for tap in vector)
    left = segments[0].taps[0][0]  # first vector, kx = 0: lane 0 reads the padding
    assert left.lanes[0] is None and left.lanes[1:] == tuple(range(7))


def test_declines_what_it_does_not_do():
    def lowered(x, w, dtype=DType.FLOAT32, **attrs):
        a = OPS["Conv"].make_attrs(attrs)
        inputs = (TensorType(x, dtype), TensorType(w, dtype))
        spec = NodeSpec("Conv", a, inputs, OPS["Conv"].infer_types(inputs, a))
        g = conv_geometry(x, w, a)
        return depthwise_cpu_lowered(spec, g, _common(spec, g))

    assert lowered((1, 4, 9), (4, 1, 3), group=4) is None  # 1-D
    assert lowered((1, 4, 5, 5, 5), (4, 1, 3, 3, 3), group=4) is None  # 3-D
    assert lowered((1, 4, 9, 9), (4, 2, 3, 3), group=2) is None  # two input channels a group
    assert lowered((1, 4, 9, 9), (4, 1, 3, 3), group=4) is not None
    with pytest.raises(ValueError, match="vw in"):
        DepthwiseParams(vw=3).validate()
    assert all(not p.violations() for p in space_sample("depthwise", 14))


# -- through a compiled plan -------------------------------------------------------------------
@pytest.fixture
def routed(monkeypatch) -> Iterator[None]:
    """Conv lowered as build_conv is to route it on CPU devices: 2-D depthwise convs through
    depthwise_cpu_lowered, the others as before (lower's cache cleared around it)."""
    stock = KERNEL_BUILDERS["Conv"]

    def build(spec: NodeSpec, target: Target) -> Lowered | None:
        g = conv_geometry(spec.inputs[0].shape, spec.inputs[1].shape, spec.attrs)
        if target.family.name == "cpu" and spec.outputs[0].size:
            values = _common(spec, g)
            lowered = depthwise_cpu_lowered(spec, g, values) if values is not None else None
            if lowered is not None:
                return lowered
        return stock(spec, target)

    monkeypatch.setitem(KERNEL_BUILDERS, "Conv", build)
    lower.cache_clear()
    yield
    lower.cache_clear()


def test_mobilenet_model_through_the_plan(routed, opencl_target):
    """mobilenetv2_mini at O2 (Clip, HardSwish and residual epilogues fused into the
    depthwise convs, bias inputs, packed weights elsewhere) against onnxruntime, with the
    test_models bound: a relative L2 error of 1e-4."""
    import ember

    if real_devices()[0].family.name != "cpu":
        pytest.skip("the depthwise CPU kernel is routed on CPU devices only")
    path = Path(__file__).resolve().parents[1] / "models" / "mobilenetv2_mini.onnx"
    model = ember.compile(path, target=opencl_target, input_shapes={"input": (1, 3, 64, 64)})
    kernels = [s.lowered.launches[0].kernel.name for s in model.plan.steps
               if s.op == "Conv" and s.attrs["group"] > 1]
    assert len(kernels) == 6 and all(k.startswith("conv_dw_cpu") for k in kernels), kernels
    feeds = {"input": np.random.default_rng(3).standard_normal((1, 3, 64, 64), np.float32)}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, feeds)
    (actual,) = model(**feeds).values()
    assert actual.shape == expected.shape
    assert relative_l2(actual, expected) < 1e-4
