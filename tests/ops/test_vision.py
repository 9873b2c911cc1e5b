"""Vision ops: the numpy references against ONNX's reference implementation on drawn
inputs (GridSample in every mode and padding, AffineGrid, DeformConv, Col2Im, RoiAlign,
MaxUnpool, GroupNormalization), the device kernels (GroupNormalization, GridSample) against
the references, and the converters that rewrite onto other ops (LpPool, CenterCropPad) against
onnxruntime or ONNX's reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.errors import ShapeError
from ember.ir import OPS, DType, TensorType
from tests.harness import TOLERANCE, assert_close, check_op

F32_TOL = TOLERANCE[DType.FLOAT32]
SEEDS = st.integers(0, 2**32 - 1)


def onnx_reference(op_type: str, inputs: list[np.ndarray], **attrs) -> np.ndarray:
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    node = helper.make_node(op_type, names, ["out"], **attrs)
    feeds = {n: a for n, a in zip(names, inputs) if n}
    return ReferenceEvaluator(node).run(None, feeds)[0]


def evaluate(op: str, inputs: list[np.ndarray], **attrs) -> np.ndarray:
    opdef = OPS[op]
    made = opdef.make_attrs(attrs)
    opdef.infer_types([TensorType(a.shape, DType.from_numpy(a.dtype)) for a in inputs], made)
    return opdef.evaluate(inputs, made)[0]


# -- references against ONNX's ----------------------------------------------------------------
@given(SEEDS, st.sampled_from(["linear", "nearest", "cubic"]),
       st.sampled_from(["zeros", "border", "reflection"]), st.integers(0, 1), st.booleans())
def test_grid_sample_matches_onnx_reference(seed, mode, padding, align, volumetric):
    rng = np.random.default_rng(seed)
    volumetric = volumetric and mode != "cubic"
    smallest = 2 if padding == "reflection" and align else 1  # ONNX's divides by size - 1
    spatial = tuple(int(d) for d in rng.integers(smallest, 5, size=3 if volumetric else 2))
    x = rng.uniform(-3, 3, (2, 2, *spatial)).astype(np.float32)
    out = (2, 3, 2)[: len(spatial)]
    grid = rng.uniform(-2.5, 2.5, (2, *out, len(spatial))).astype(np.float32)
    attrs = {"mode": mode, "padding_mode": padding, "align_corners": align}
    got = evaluate("GridSample", [x, grid], **attrs)
    expected = onnx_reference("GridSample", [x, grid], **attrs)
    assert_close(got, expected, tolerance=F32_TOL)


@given(SEEDS, st.booleans(), st.integers(0, 1))
def test_affine_grid_matches_onnx_reference(seed, volumetric, align):
    rng = np.random.default_rng(seed)
    r = 3 if volumetric else 2
    size = [2, 3] + [int(d) for d in rng.integers(1, 5, size=r)]
    theta = rng.uniform(-2, 2, (2, r, r + 1)).astype(np.float32)
    got = evaluate("AffineGrid", [theta], size=size, align_corners=align)
    expected = onnx_reference("AffineGrid", [theta, np.array(size, np.int64)],
                              align_corners=align)
    assert_close(got, expected, tolerance=F32_TOL)


@given(SEEDS, st.integers(1, 2), st.integers(1, 2), st.booleans(), st.booleans())
def test_deform_conv_matches_onnx_reference(seed, group, offset_group, with_mask, strided):
    rng = np.random.default_rng(seed)
    c = 4
    x = rng.uniform(-2, 2, (1, c, 4, 5)).astype(np.float32)
    w = rng.uniform(-1, 1, (2 * group, c // group, 2, 2)).astype(np.float32)
    attrs = {"group": group, "offset_group": offset_group, "pads": [1, 0, 0, 1],
                 "strides": [2, 1] if strided else [1, 1], "dilations": [1, 2] if strided else [1, 1]}
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    oh, ow = (4 + 1 - dh - 1) // sh + 1, (5 + 1 - dw - 1) // sw + 1
    offset = rng.uniform(-1.5, 1.5, (1, offset_group * 8, oh, ow)).astype(np.float32)
    bias = rng.uniform(-1, 1, (2 * group,)).astype(np.float32)
    mask = rng.uniform(0, 1, (1, offset_group * 4, oh, ow)).astype(np.float32) \
        if with_mask else None
    inputs = [x, w, offset, bias] + ([mask] if with_mask else [])
    got = evaluate("DeformConv", inputs, kernel_shape=[2, 2], **attrs)
    expected = onnx_reference("DeformConv", inputs, kernel_shape=[2, 2], **attrs)
    assert_close(got, expected, tolerance=(1e-5, 1e-4))


@given(SEEDS, st.integers(1, 3), st.booleans())
def test_col2im_matches_onnx_reference(seed, rank, padded):
    rng = np.random.default_rng(seed)
    image = [int(d) for d in rng.integers(3, 6, size=rank)]
    block = [int(d) for d in rng.integers(1, 3, size=rank)]
    strides = [int(d) for d in rng.integers(1, 3, size=rank)]
    dilations = [int(d) for d in rng.integers(1, 3, size=rank)]
    pads = [int(d) for d in rng.integers(0, 2, size=2 * rank)] if padded else [0] * 2 * rank
    blocks = [(image[i] + pads[i] + pads[rank + i] - (block[i] - 1) * dilations[i] - 1)
              // strides[i] + 1 for i in range(rank)]
    x = rng.uniform(-3, 3, (2, 2 * int(np.prod(block)), int(np.prod(blocks))))
    x = x.astype(np.float32)
    attrs = {"dilations": dilations, "pads": pads, "strides": strides}
    got = evaluate("Col2Im", [x], image_shape=image, block_shape=block, **attrs)
    expected = onnx_reference("Col2Im", [x, np.array(image), np.array(block)], **attrs)
    assert_close(got, expected, tolerance=F32_TOL)


@given(SEEDS, st.sampled_from(["avg", "max"]), st.sampled_from(["half_pixel",
                                                                  "output_half_pixel"]),
       st.integers(0, 2))
def test_roi_align_matches_onnx_reference(seed, mode, transform, sampling_ratio):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, (2, 2, 6, 7)).astype(np.float32)
    corners = rng.uniform(-2, 9, (3, 2, 2))
    rois = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    rois = rois.astype(np.float32)
    batch = rng.integers(0, 2, 3).astype(np.int64)
    attrs = {"mode": mode, "coordinate_transformation_mode": transform, "output_height": 3,
                 "output_width": 2, "sampling_ratio": sampling_ratio, "spatial_scale": 0.75}
    got = evaluate("RoiAlign", [x, rois, batch], **attrs)
    expected = onnx_reference("RoiAlign", [x, rois, batch], **attrs)
    assert_close(got, expected, tolerance=F32_TOL)


def test_max_unpool_matches_onnx_reference_with_larger_output():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, (1, 2, 2, 3)).astype(np.float32)
    # the flat positions of a 2x2, stride-2 pooling's maxima in the (1, 2, 4, 6) input
    rows, cols = rng.integers(0, 2, (2, 2, 3)), rng.integers(0, 2, (2, 2, 3))
    r, c = np.indices((2, 3))
    indices = (np.arange(2)[:, None, None] * 24 + (2 * r + rows) * 6 + 2 * c + cols)
    indices = indices.reshape(1, 2, 2, 3).astype(np.int64)
    for shape in ([], [1, 2, 5, 7]):
        got = evaluate("MaxUnpool", [x, indices], kernel_shape=[2, 2], strides=[2, 2],
                       output_shape=shape)
        extra = [np.array(shape, np.int64)] if shape else []
        expected = onnx_reference("MaxUnpool", [x, indices] + extra, kernel_shape=[2, 2],
                                  strides=[2, 2])
        assert_close(got, expected)


@given(SEEDS, st.sampled_from([(1, 1), (2, 2), (6, 3), (6, 6)]), st.integers(0, 2))
def test_group_norm_reference_matches_onnx(seed, channels_groups, spatial_rank):
    rng = np.random.default_rng(seed)
    c, groups = channels_groups
    x = rng.uniform(-3, 3, (2, c, *([3] * spatial_rank))).astype(np.float32)
    scale, bias = rng.uniform(-2, 2, (2, c)).astype(np.float32)
    got = evaluate("GroupNormalization", [x, scale, bias], num_groups=groups, epsilon=1e-3)
    # a function op (it needs a typed model), run in float64 (inputs and stash_type): its
    # body's float32 sums round more than the float32 tolerance allows
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"],
                            num_groups=groups, epsilon=1e-3, stash_type=TensorProto.DOUBLE)
    feeds = {"x": x, "scale": scale, "bias": bias}
    wide = {k: v.astype(np.float64) for k, v in feeds.items()}
    model = _single_node_model(node, wide, x.ndim, 21)
    expected = ReferenceEvaluator(model).run(None, wide)[0].astype(np.float32)
    assert_close(got, expected, tolerance=F32_TOL)


def test_shape_errors_name_the_mismatch():
    x = np.zeros((1, 6, 2, 2), np.float32)
    with pytest.raises(ShapeError, match="num_groups 4 must divide"):
        evaluate("GroupNormalization", [x, np.ones(6, np.float32), np.ones(6, np.float32)],
                 num_groups=4)
    with pytest.raises(ShapeError, match="cubic mode samples 2-D"):
        evaluate("GridSample", [np.zeros((1, 1, 2, 2, 2), np.float32),
                                np.zeros((1, 1, 1, 1, 3), np.float32)], mode="cubic")
    with pytest.raises(ShapeError, match="Col2Im input"):
        evaluate("Col2Im", [np.zeros((1, 4, 5), np.float32)], image_shape=[3, 3],
                 block_shape=[2, 2])


# -- device kernels ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape, groups", [((2, 6, 5, 7), 3), ((1, 64, 16, 16), 32),
                                           ((2, 8, 100), 8), ((1, 4, 3, 2, 2), 1)])
def test_group_norm_kernel_matches_reference(opencl_target, shape, groups):
    rng = np.random.default_rng(groups)
    x = rng.standard_normal(shape).astype(np.float32)
    scale, bias = rng.standard_normal((2, shape[1])).astype(np.float32)
    check_op("GroupNormalization", [x, scale, bias], {"num_groups": groups},
             target=opencl_target)  # strict: it runs as a device kernel


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_grid_sample_kernel_matches_reference(opencl_target, mode, padding):
    rng = np.random.default_rng(7)
    shape, out = ((2, 3, 5, 7), (4, 6)) if mode == "cubic" else ((1, 2, 3, 5, 4), (2, 3, 4))
    x = rng.standard_normal(shape).astype(np.float32)
    grid = rng.uniform(-1.8, 1.8, (shape[0], *out, len(out))).astype(np.float32)
    for align in (0, 1):
        check_op("GridSample", [x, grid],
                 {"mode": mode, "padding_mode": padding, "align_corners": align},
                 target=opencl_target)


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_grid_sample_zeros_padding_reads_no_nan_outside(any_target, mode):
    """A tap outside the image reads the padding value 0, not the clamped element: a NaN at
    the border must not reach a sample whose taps all lie outside (onnxruntime gives 0)."""
    x = np.full((1, 2, 3, 4), np.nan, np.float32)
    x[:, :, 1, 1:3] = [[1.5, -2.0], [0.25, 3.0]]
    grid = np.array([[[[-4.0, -4.0], [4.0, 3.5], [-0.25, 0.0]],
                      [[0.0, 5.0], [-5.0, 0.3], [0.1, -0.2]]]], np.float32)
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], mode=mode,
                            padding_mode="zeros", align_corners=0)
    model = _single_node_model(node, {"x": x, "grid": grid}, 4, 20)
    feeds = {"x": x, "grid": grid}
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = ember.compile(model, target=any_target)(**feeds)["y"]
    assert np.isfinite(expected[..., 0, :2]).all()  # the samples outside the image
    np.testing.assert_allclose(got, expected, rtol=F32_TOL[0], atol=F32_TOL[1])


# -- converters against onnxruntime -----------------------------------------------------------
def _single_node_model(node: onnx.NodeProto, inputs: dict[str, np.ndarray], out_rank: int,
                       opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "single",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs.items()],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(
            next(iter(inputs.values())).dtype), [None] * out_rank)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _against(model: onnx.ModelProto, feeds: dict[str, np.ndarray], target: str,
             oracle: str = "onnxruntime") -> None:
    if oracle == "onnxruntime":
        expected = ort.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    else:
        expected = ReferenceEvaluator(model).run(None, feeds)[0]
    got = ember.compile(model, target=target)(**feeds)["y"]
    assert_close(got, expected, tolerance=(1e-4, 1e-5))


@pytest.mark.parametrize("p, attrs", [
    (2, {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1], "ceil_mode": 1}),
    (3, {"kernel_shape": [2, 2], "dilations": [2, 1], "pads": [0, 1, 1, 0]}),
    (3, {"kernel_shape": [3, 2], "strides": [2, 1], "auto_pad": "SAME_LOWER"}),
    (1, {"kernel_shape": [2, 3], "strides": [1, 2]}),
])
def test_lp_pool_converter_matches_onnx(opencl_target, p, attrs):
    """onnxruntime's LpPool ignores ceil_mode (one output column short): ONNX's reference
    is the oracle."""
    x = np.random.default_rng(p).uniform(-2, 2, (1, 3, 7, 8)).astype(np.float32)
    node = helper.make_node("LpPool", ["x"], ["y"], p=p, **attrs)
    _against(_single_node_model(node, {"x": x}, 4, 18), {"x": x}, opencl_target, "reference")


def test_center_crop_pad_converter_matches_onnxruntime(opencl_target):
    x = np.random.default_rng(1).uniform(-2, 2, (5, 8, 3)).astype(np.float32)
    shape = np.array([8, 3], np.int64)
    node = helper.make_node("CenterCropPad", ["x", "shape"], ["y"], axes=[-3, 1])
    graph = helper.make_graph(
        [node], "crop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 3)],
        [onnx.numpy_helper.from_array(shape, "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    _against(model, {"x": x}, opencl_target)
