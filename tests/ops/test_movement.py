"""The data-movement family's OpenCL kernels against their numpy references, and its ONNX
converters against onnxruntime.

Kernels: shapes with 1s, primes and empty axes; every dtype size (bool/int8, float16,
float32/int32, int64), negative and out-of-range slice bounds and INT64 sentinels, negative
pads (crops) and every pad mode, negative indices, uneven and empty split pieces, every
Resize mode and coordinate transform. Movement ops only copy, so results must be exact;
Resize interpolates in float64 like the reference and is compared under TOLERANCE (its
integer outputs are only tested where the arithmetic is exact, since a rounding tie can go
either way when two correct sums differ in their last bit).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import pytest
from hypothesis import given, strategies as st
from onnx import TensorProto, helper

import ember
from ember.codegen.families import Target
from ember.errors import NonConstantInputError, UnsupportedOpError
from ember.frontends.builder import GraphBuilder
from ember.ir import OPS, DType
from ember.runtime.device import resolve_target
from ember.runtime.opencl import OpenCLExecutor
from ember.runtime.plan import DEVICE, build_plan
from tests.harness import TOLERANCE, assert_close, check_op, run_op
from tests.strategies import array_for, shapes

pytestmark = pytest.mark.opencl

# One dtype per element size, plus float32 twice as often (it must always work).
DTYPES = st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16, DType.INT64,
                          DType.INT32, DType.BOOL, DType.INT8])
I64_MAX, I64_MIN = 2**63 - 1, -(2**63)


def _array(seed: int, shape, dtype: DType) -> np.ndarray:
    return array_for(seed, tuple(shape), dtype)


@st.composite
def _tensor(draw, min_rank: int = 0, max_rank: int = 4, max_size: int = 2048):
    """An array of a drawn shape and dtype; one time in eight an axis is empty."""
    shape = list(draw(shapes(min_rank, max_rank, max_size=max_size)))
    if shape and draw(st.integers(0, 7)) == 0:
        shape[draw(st.integers(0, len(shape) - 1))] = 0
    return _array(draw(st.integers(0, 2**32 - 1)), shape, draw(DTYPES))


# -- views and strided copies ----------------------------------------------------------------
def test_reshape_is_a_view(opencl_target):
    x = _array(1, (3, 4, 5), DType.FLOAT32)
    model = check_op("Reshape", [x], {"shape": (5, 12)}, target=opencl_target)
    assert model.stats.kernel_launches == 0 and not model.plan.host_steps


@given(x=_tensor(), data=st.data())
def test_transpose(opencl_target, x, data):
    perm = tuple(data.draw(st.permutations(range(x.ndim))))
    check_op("Transpose", [x], {"perm": perm}, target=opencl_target)


@given(x=_tensor(min_rank=1), data=st.data())
def test_slice(opencl_target, x, data):
    bound = st.one_of(st.integers(-40, 40), st.sampled_from([I64_MAX, I64_MIN]))
    axes = data.draw(st.lists(st.integers(-x.ndim, x.ndim - 1), min_size=1, max_size=x.ndim,
                              unique_by=lambda a: a % x.ndim))
    n = len(axes)
    starts = data.draw(st.lists(bound, min_size=n, max_size=n))
    ends = data.draw(st.lists(bound, min_size=n, max_size=n))
    steps = data.draw(st.lists(st.sampled_from([1, 1, 2, 3, -1, -2]), min_size=n, max_size=n))
    attrs = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
    check_op("Slice", [x], attrs, target=opencl_target)


@given(data=st.data())
def test_expand_broadcasts_both_ways(opencl_target, data):
    full = data.draw(shapes(0, 4, max_size=1024))
    in_shape = tuple(d if data.draw(st.booleans()) else 1 for d in full)
    to = tuple(1 if (d != 1 and data.draw(st.booleans())) else d for d in full)
    drop = data.draw(st.integers(0, len(in_shape)))
    x = _array(data.draw(st.integers(0, 99)), in_shape[drop:], data.draw(DTYPES))
    check_op("Expand", [x], {"shape": to}, target=opencl_target)


@given(x=_tensor(max_size=300), data=st.data())
def test_tile(opencl_target, x, data):
    repeats = data.draw(st.lists(st.sampled_from([1, 1, 2, 3, 0]), min_size=x.ndim,
                                 max_size=x.ndim))
    check_op("Tile", [x], {"repeats": repeats}, target=opencl_target)


@pytest.mark.parametrize("shape, perm", [((5, 7, 3, 40), (2, 0, 3, 1)),
                                         ((3, 4, 5, 6, 7), (4, 2, 0, 3, 1)),
                                         ((2, 130), (1, 0)), ((70, 1, 3), (2, 1, 0))])
def test_transpose_launch_shapes(shape, perm, opencl_target):
    """Rows of several axes, a dimension 0 of several axes, and single-axis cases."""
    for dtype in (DType.FLOAT32, DType.INT8):
        x = _array(len(shape), shape, dtype)
        check_op("Transpose", [x], {"perm": perm}, target=opencl_target)


@pytest.mark.parametrize("op", ["DepthToSpace", "SpaceToDepth"])
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("b", [1, 2, 3])
def test_depth_space(op, mode, b, opencl_target):
    shape = (2, 3 * b * b, 5, 2) if op == "DepthToSpace" else (2, 3, 5 * b, 2 * b)
    for dtype in (DType.FLOAT32, DType.FLOAT16):
        x = _array(b, shape, dtype)
        check_op(op, [x], {"blocksize": b, "mode": mode}, target=opencl_target)


# -- Concat and Split ------------------------------------------------------------------------
@given(data=st.data())
def test_concat(opencl_target, data):
    base = list(data.draw(shapes(1, 4, max_size=512)))
    axis = data.draw(st.integers(-len(base), len(base) - 1))
    dtype = data.draw(DTYPES)
    arrays = []
    for k in range(data.draw(st.integers(1, 5))):
        shape = list(base)
        shape[axis] = data.draw(st.sampled_from([0, 1, 2, 3, 5]))
        arrays.append(_array(k, shape, dtype))
    check_op("Concat", arrays, {"axis": axis}, target=opencl_target)


@given(x=_tensor(min_rank=1), data=st.data())
def test_split(opencl_target, x, data):
    axis = data.draw(st.integers(0, x.ndim - 1))
    dim = x.shape[axis]
    cuts = sorted(data.draw(st.lists(st.integers(0, dim), max_size=4)))
    splits = [b - a for a, b in zip([0] + cuts, cuts + [dim])]  # empty pieces included
    check_op("Split", [x], {"axis": axis, "splits": splits}, target=opencl_target)


# -- Pad -------------------------------------------------------------------------------------
@given(x=_tensor(min_rank=1, max_size=512), mode=st.sampled_from(["constant", "reflect", "edge",
                                                                  "wrap"]), data=st.data())
def test_pad(opencl_target, x, mode, data):
    pads = []
    for k in range(2 * x.ndim):
        dim = x.shape[k % x.ndim]
        pads.append(data.draw(st.integers(-min(dim, 2), 5)))
    for k in range(x.ndim):
        if mode != "constant" and x.shape[k] == 0:
            pads[k] = pads[x.ndim + k] = 0  # nothing to reflect, repeat or wrap
        while x.shape[k] and x.shape[k] + min(pads[k], 0) + min(pads[x.ndim + k], 0) < 1:
            end = x.ndim + k if pads[x.ndim + k] < 0 else k
            pads[end] += 1  # crop less: keep an element where the mode reads the input
    value = data.draw(st.sampled_from([0.0, 1.5, -7.0]))
    check_op("Pad", [x], {"pads": pads, "mode": mode, "value": value}, target=opencl_target)


def test_pad_empty_input_with_constant(opencl_target):
    x = np.zeros((0, 3), np.float32)
    check_op("Pad", [x], {"pads": (2, 0, 1, 1), "value": 3.0}, target=opencl_target)


# -- Gather, GatherElements, OneHot, Trilu ---------------------------------------------------
@given(x=_tensor(min_rank=1, max_size=1024), data=st.data())
def test_gather(opencl_target, x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    dim = x.shape[axis]
    if dim == 0:
        return
    idx_shape = data.draw(shapes(0, 2, max_dim=5))
    itype = data.draw(st.sampled_from([np.int32, np.int64]))
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    indices = rng.integers(-dim, dim, size=idx_shape).astype(itype)
    check_op("Gather", [x, indices], {"axis": axis}, target=opencl_target)


@given(x=_tensor(min_rank=1, max_size=1024), data=st.data())
def test_gather_elements(opencl_target, x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    shape = [data.draw(st.integers(0, d)) if k != axis % x.ndim else data.draw(
        st.integers(0, 6)) for k, d in enumerate(x.shape)]
    dim = x.shape[axis]
    if dim == 0:
        shape[axis % x.ndim] = 0
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    itype = data.draw(st.sampled_from([np.int32, np.int64]))
    indices = rng.integers(-dim, max(dim, 1), size=shape).astype(itype)
    check_op("GatherElements", [x, indices], {"axis": axis}, target=opencl_target)


@given(data=st.data())
def test_onehot(opencl_target, data):
    shape = data.draw(shapes(0, 3, max_dim=7))
    depth = data.draw(st.sampled_from([1, 3, 10]))
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    idx_dtype = data.draw(st.sampled_from([np.int64, np.int32, np.float32, np.int8]))
    indices = rng.integers(-depth - 2, depth + 2, size=shape).astype(idx_dtype)
    out_dtype = data.draw(st.sampled_from([np.float32, np.int64, np.float16, np.bool_]))
    values = np.array([0, 3], dtype=np.float64).astype(out_dtype)
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    check_op("OneHot", [indices], {"axis": axis, "depth": depth, "values": values},
             target=opencl_target)


@given(x=_tensor(min_rank=2, max_size=1024), upper=st.booleans(), k=st.integers(-6, 6))
def test_trilu(opencl_target, x, upper, k):
    check_op("Trilu", [x], {"upper": int(upper), "k": k}, target=opencl_target)


# -- Resize ----------------------------------------------------------------------------------
COORDS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
          "asymmetric", "tf_crop_and_resize"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


@st.composite
def resize_case(draw, float_only: bool = True):
    shape = tuple(draw(st.sampled_from([1, 2, 3, 5, 8])) for _ in range(draw(st.integers(1, 4))))
    mode = draw(st.sampled_from(["nearest", "linear", "cubic"]))
    scales, sizes = [], []
    for d in shape:
        if draw(st.booleans()):
            scale = draw(st.sampled_from([0.5, 0.6, 1.0, 1.5, 2.0, 3.0, 0.34]))
            scales.append(float(np.float32(scale)))
            sizes.append(int(math.floor(scales[-1] * d)))
        else:
            size = draw(st.sampled_from([1, 2, 3, 4, 7, 9]))
            scales.append(size / d)
            sizes.append(size)
    coord = draw(st.sampled_from(COORDS))
    roi = None
    if coord == "tf_crop_and_resize":
        starts = [draw(st.sampled_from([0.0, 0.1, -0.2, 0.4])) for _ in shape]
        roi = tuple(starts + [s + draw(st.sampled_from([0.5, 0.8, 1.0, 1.3])) for s in starts])
    attrs = {"sizes": sizes, "scales": scales, "mode": mode, "roi": roi,
             "coordinate_transformation_mode": coord,
             "nearest_mode": draw(st.sampled_from(NEAREST)),
             "extrapolation_value": draw(st.sampled_from([0.0, -1.5])),
             "antialias": int(mode != "nearest" and draw(st.booleans())),
             "exclude_outside": int(draw(st.booleans())),
             "cubic_coeff_a": draw(st.sampled_from([-0.75, -0.5]))}
    dtype = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT32, DType.FLOAT16] if float_only
                                 else [DType.UINT8, DType.INT32, DType.INT64, DType.FLOAT32]))
    return _array(draw(st.integers(0, 99)), shape, dtype), attrs


@given(case=resize_case())
def test_resize(opencl_target, case):
    x, attrs = case
    check_op("Resize", [x], attrs, target=opencl_target)


@given(case=resize_case(float_only=False))
def test_resize_nearest_copies_any_dtype(opencl_target, case):
    x, attrs = case
    check_op("Resize", [x], dict(attrs, mode="nearest", antialias=0), target=opencl_target)


def test_resize_integer_linear_exact(opencl_target):
    """Scale 2 half_pixel weights are 1/4 and 3/4: exact sums, so rounding is exact too."""
    x = (np.arange(2 * 3 * 4 * 5) * 7 % 251).astype(np.uint8).reshape(2, 3, 4, 5)
    attrs = {"sizes": (2, 3, 8, 10), "scales": (1.0, 1.0, 2.0, 2.0), "mode": "linear"}
    check_op("Resize", [x], attrs, target=opencl_target)
    check_op("Resize", [x.astype(np.int32) - 100], attrs, target=opencl_target)


@pytest.mark.parametrize("mode, coord, dtype", [
    ("nearest", "asymmetric", DType.FLOAT32), ("linear", "half_pixel", DType.FLOAT32),
    ("cubic", "align_corners", DType.FLOAT32),
    ("linear", "half_pixel", DType.UINT8),  # scale 2: weights 1/4, 3/4 are exact in float
])
def test_resize_without_fp64_computes_in_float(mode, coord, dtype, opencl_target):
    """Devices without fp64 get the float variant of the kernel; run it here through a plan
    built for a target whose traits lack cl_khr_fp64."""
    device = resolve_target(opencl_target)
    traits = dataclasses.replace(device.info.traits,
                                 extensions=device.info.traits.extensions - {"cl_khr_fp64"})
    target = Target(traits, device.info.family)
    x = _array(3, (2, 3, 5, 4), dtype)
    scale = 2.0 if dtype is DType.UINT8 else 3.0
    attrs = {"sizes": (2, 3, 10, int(4 * scale)), "scales": (1.0, 1.0, 2.0, scale),
             "mode": mode, "coordinate_transformation_mode": coord}
    b = GraphBuilder("resize_float")
    b.output("y", b.op("Resize", b.input("x", x.shape, dtype), **attrs))
    graph = b.build()
    for node in graph.nodes():
        if graph.op(node) == "Resize":
            graph.set_meta(node, "placement", DEVICE)
    plan = build_plan(graph, target)
    assert not plan.host_steps
    assert "double" not in plan.kernels()[0].source.split("*/", 1)[1]
    actual = OpenCLExecutor(plan, device).run({"x": x})["y"]
    opdef = OPS["Resize"]
    (expected,) = opdef.evaluate([x], opdef.make_attrs(attrs))
    assert_close(actual, expected, f"float Resize {mode} {dtype}", TOLERANCE[DType.FLOAT32])


def test_empty_outputs_launch_nothing(opencl_target):
    x = _array(2, (4, 0, 3), DType.FLOAT32)
    for op, attrs in [("Transpose", {"perm": (2, 1, 0)}), ("Tile", {"repeats": (2, 1, 1)}),
                      ("Slice", {"starts": (1,), "ends": (1,), "axes": (0,)})]:
        outputs, model = run_op(op, [x], attrs, target=opencl_target)
        assert outputs[0].size == 0 and model.stats.kernel_launches == 0, op


# -- ONNX converters against onnxruntime -----------------------------------------------------
_F, _I64 = TensorProto.FLOAT, TensorProto.INT64
_OUT_TYPES = {"m": TensorProto.BOOL, "n": _I64, "r": _I64, "k": _I64, "shape": _I64}


def _i64(name: str, values) -> onnx.TensorProto:
    values = list(values)
    return helper.make_tensor(name, _I64, [len(values)], values)


def _scalar(name: str, dtype: int, value) -> onnx.TensorProto:
    return helper.make_tensor(name, dtype, [], [value])


def _model(nodes, feeds: dict[str, np.ndarray], opset: int, inits=(), outputs=("y",)):
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                            a.shape) for n, a in feeds.items()]
    # Output shapes come from onnx's shape inference (or a given ValueInfoProto).
    outs = [n if isinstance(n, onnx.ValueInfoProto) else
            helper.make_tensor_value_info(n, _OUT_TYPES.get(n, _F), None) for n in outputs]
    graph = helper.make_graph(list(nodes), "movement", inputs, outs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)  # output shapes


_X = array_for(7, (2, 3, 4, 6), DType.FLOAT32)
_N = helper.make_node
# (case id, opset, nodes, initializers, outputs); every case reads the graph input x = _X.
CONVERTER_CASES = [
    ("reshape", 14, [_N("Reshape", ["x", "s"], ["y"])], [_i64("s", [0, -1, 6])], ["y"]),
    ("reshape_allowzero", 14, [_N("Reshape", ["x", "s"], ["y"], allowzero=1)],
     [_i64("s", [6, 24])], ["y"]),
    ("flatten", 13, [_N("Flatten", ["x"], ["y"], axis=-1)], [], ["y"]),
    ("squeeze_unsqueeze_11", 11, [_N("Unsqueeze", ["x"], ["u"], axes=[0, -1]),
                                  _N("Squeeze", ["u"], ["y"], axes=[0])], [], ["y"]),
    ("squeeze_unsqueeze_13", 13, [_N("Unsqueeze", ["x", "a"], ["u"]),
                                  _N("Squeeze", ["u"], ["y"])], [_i64("a", [-1, 1])], ["y"]),
    ("transpose_default", 13, [_N("Transpose", ["x"], ["y"])], [], ["y"]),
    ("concat", 13, [_N("Concat", ["x", "x"], ["y"], axis=-2)], [], ["y"]),
    ("split_13", 13, [_N("Split", ["x", "s"], ["y", "z"], axis=2)], [_i64("s", [1, 3])],
     ["y", "z"]),
    ("split_18_uneven", 18, [_N("Split", ["x"], ["y", "z", "w"], axis=-1, num_outputs=3)], [],
     ["y", "z", "w"]),
    ("slice", 13, [_N("Slice", ["x", "b", "e", "a", "s"], ["y"])],
     [_i64("b", [-1, 1, 2**63 - 1]), _i64("e", [-(2**63), 100, 0]), _i64("a", [3, 2, 1]),
      _i64("s", [-2, 2, -1])], ["y"]),
    ("gather_elements", 13, [_N("Gather", ["x", "i"], ["g"], axis=-2),
                             _N("GatherElements", ["x", "j"], ["y"], axis=1)],
     [_i64("i", [-1, 0, 2]), helper.make_tensor("j", _I64, [1, 2, 1, 1], [-1, 1])],
     ["g", "y"]),
    ("expand_tile", 13, [_N("Expand", ["x", "s"], ["y"]), _N("Tile", ["x", "r"], ["z"])],
     [_i64("s", [3, 1, 1, 1, 1]), _i64("r", [1, 2, 1, 3])], ["y", "z"]),
    ("pad_13", 13, [_N("Pad", ["x", "p", "v"], ["y"])],
     [_i64("p", [0, 1, -1, 2, 1, 0, 0, 1]), _scalar("v", _F, 2.5)], ["y"]),
    ("pad_18_axes_reflect", 18, [_N("Pad", ["x", "p", "", "a"], ["y"], mode="reflect")],
     [_i64("p", [2, 1, 3, 0]), _i64("a", [-1, 2])], ["y"]),
    ("pad_19_wrap_edge", 19, [_N("Pad", ["x", "p"], ["y"], mode="wrap"),
                              _N("Pad", ["x", "p"], ["z"], mode="edge")],
     [_i64("p", [0, 0, 2, 3, 0, 1, 1, 4])], ["y", "z"]),
    ("depth_space", 13, [_N("SpaceToDepth", ["x"], ["s"], blocksize=2),
                         _N("DepthToSpace", ["s"], ["y"], blocksize=2, mode="CRD")], [],
     ["s", "y"]),
    ("resize_linear_13", 13, [_N("Resize", ["x", "", "sc"], ["y"], mode="linear")],
     [helper.make_tensor("sc", _F, [4], [1, 1, 1.5, 0.6])], ["y"]),
    ("resize_nearest_18_axes", 18, [_N("Resize", ["x", "", "", "sz"], ["y"], axes=[3, 2],
                                       keep_aspect_ratio_policy="not_larger",
                                       coordinate_transformation_mode="asymmetric")],
     [_i64("sz", [9, 7])], ["y"]),
    ("resize_cubic_19", 19, [_N("Resize", ["x", "", "sc"], ["y"], mode="cubic",
                                coordinate_transformation_mode="half_pixel_symmetric")],
     [helper.make_tensor("sc", _F, [4], [1, 1, 2, 1.5])], ["y"]),
    ("dropout_identity", 13, [_N("Dropout", ["x"], ["d", "m"]), _N("Identity", ["d"], ["y"])],
     [], ["y", "m"]),
    ("trilu", 14, [_N("Trilu", ["x", "k"], ["y"], upper=0)], [_scalar("k", _I64, 1)], ["y"]),
    ("shape_constants", 15,
     [_N("Shape", ["x"], ["shape"], start=1, end=-1),
      _N("ConstantOfShape", ["shape"], ["c"],
                                                     value=helper.make_tensor("", _F, [1], [2])),
      _N("Size", ["x"], ["n"]), _N("Range", ["z", "n", "t"], ["r"]),
      _N("Constant", [], ["k"], value_ints=[1, 2])], [_scalar("z", _I64, 3),
                                                      _scalar("t", _I64, 7)],
     ["shape", "c", "n", "r", "k"]),
]


@pytest.mark.parametrize("case", CONVERTER_CASES, ids=[c[0] for c in CONVERTER_CASES])
def test_converters_match_onnxruntime(case, any_target):
    import onnxruntime as ort

    _, opset, nodes, inits, outputs = case
    model = _model(nodes, {"x": _X}, opset, inits, outputs)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(outputs, {"x": _X})
    compiled = ember.compile(model, target=any_target, strict=any_target != "cpu")
    result = compiled(x=_X)
    for name, want in zip(outputs, expected):
        assert_close(result[name], want, f"{case[0]} output {name}")


def test_onehot_and_eyelike_match_onnxruntime(any_target):
    import onnxruntime as ort

    indices = np.array([[0, -1, 7], [2, 3, -4]], np.int64)
    m = array_for(1, (3, 5), DType.FLOAT32)
    nodes = [_N("OneHot", ["i", "d", "v"], ["y"], axis=1), _N("EyeLike", ["m"], ["e"], k=1)]
    inits = [_scalar("d", _F, 4.0), helper.make_tensor("v", _F, [2], [-1.0, 5.0])]
    model = _model(nodes, {"i": indices, "m": m}, 13, inits, ["y", "e"])
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(["y", "e"], {"i": indices, "m": m})
    result = ember.compile(model, target=any_target)(i=indices, m=m)
    assert_close(result["y"], expected[0], "OneHot")
    assert_close(result["e"], expected[1], "EyeLike")


def test_compile_time_inputs_must_be_constant():
    shape = np.array([6, 20], np.int64)
    unknown = [helper.make_tensor_value_info("y", _F, ["a", "b"])]
    model = _model([_N("Reshape", ["x", "s"], ["y"])], {"x": _X, "s": shape}, 13,
                   outputs=unknown)
    with pytest.raises(NonConstantInputError, match="shape"):
        ember.compile(model, target="cpu")
    limit = np.array(5, np.int64)
    model = _model([_N("Range", ["z", "l", "z"], ["y"])], {"l": limit}, 13,
                   [_scalar("z", _I64, 1)], [helper.make_tensor_value_info("y", _I64, ["n"])])
    with pytest.raises(NonConstantInputError, match="limit"):
        ember.compile(model, target="cpu")


def test_training_dropout_is_refused():
    model = _model([_N("Dropout", ["x", "r", "t"], ["y"])], {"x": _X}, 13,
                   [_scalar("r", _F, 0.5), _scalar("t", TensorProto.BOOL, True)])
    with pytest.raises(UnsupportedOpError, match="training-mode Dropout"):
        ember.compile(model, target="cpu")
