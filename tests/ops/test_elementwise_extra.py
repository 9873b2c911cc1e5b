"""The inverse and hyperbolic trigonometric ops, Celu / Shrink / Softsign / ThresholdedRelu,
Mod, the integer bit ops and BitCast as device kernels against their numpy references.

Each hypothesis example compiles one graph holding every op of a group (one program build
instead of one per op), with inputs drawn in each op's domain plus NaN, infinities and 0.
Integer results must be bit-exact, including the type's minimum, negative operands, a zero
divisor and shift counts outside the type's width."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.errors import DTypeError
from ember.frontends.builder import GraphBuilder
from ember.ir import OPS, DType
from tests.harness import assert_close
from tests.strategies import array_for, broadcastable_shapes

pytestmark = pytest.mark.opencl

# op: (attrs, low, high) of its input
UNARY_FLOAT = {
    "Acos": ({}, -1.0, 1.0),
    "Asin": ({}, -1.0, 1.0),
    "Atan": ({}, -6.0, 6.0),
    "Acosh": ({}, 1.0, 8.0),
    "Asinh": ({}, -6.0, 6.0),
    "Atanh": ({}, -1.0, 1.0),
    "Tan": ({}, -1.5, 1.5),
    "Cosh": ({}, -6.0, 6.0),
    "Sinh": ({}, -6.0, 6.0),
    "Softsign": ({}, -6.0, 6.0),
    "Celu": ({"alpha": 0.7}, -4.0, 4.0),
    "ThresholdedRelu": ({"alpha": 0.5}, -2.0, 2.0),
    "Shrink": ({"bias": 0.25, "lambd": 0.75}, -2.0, 2.0),
}
INTEGER_TYPES = (DType.INT8, DType.UINT8, DType.INT16, DType.UINT16, DType.INT32,
                 DType.UINT32, DType.INT64, DType.UINT64)


def _run_ops(ops: list[tuple[str, list[str], dict]], feeds: dict[str, np.ndarray],
             target: str) -> None:
    """Compile one graph computing every (op, input names, attrs) strictly as device
    kernels, run it, and compare each output with the op's reference."""
    b = GraphBuilder("ops")
    values = {name: b.input(name, a.shape, DType.from_numpy(a.dtype))
              for name, a in feeds.items()}
    for k, (op, names, attrs) in enumerate(ops):
        b.output(f"out{k}", b.op(op, *(values[n] for n in names), **attrs))
    model = ember.compile(b.build(), target=target, opt_level=0, strict=True)
    got = model(**feeds)
    for k, (op, names, attrs) in enumerate(ops):
        opdef = OPS[op]
        expected = opdef.evaluate([feeds[n] for n in names], opdef.make_attrs(attrs))[0]
        assert_close(got[f"out{k}"], expected, f"{op} {attrs}")


@settings(max_examples=3)
@given(shape=st.sampled_from([(37,), (3, 16), (2, 1, 5), ()]),
       dtype=st.sampled_from([DType.FLOAT32, DType.FLOAT16]), seed=st.integers(0, 2**31),
       special=st.booleans())
def test_float_unary_ops_match_reference(opencl_target, shape, dtype, seed, special):
    feeds, ops = {}, []
    for i, (op, (attrs, low, high)) in enumerate(UNARY_FLOAT.items()):
        feeds[f"x{i}"] = array_for(seed + i, shape, dtype, low=low, high=high, special=special)
        ops.append((op, [f"x{i}"], attrs))
    _run_ops(ops, feeds, opencl_target)


@settings(max_examples=3)
@given(shapes=broadcastable_shapes(2, max_rank=3, max_dim=9),
       dtype=st.sampled_from([DType.FLOAT32, DType.FLOAT16, DType.FLOAT64]),
       seed=st.integers(0, 2**31))
def test_float_mod_matches_reference(opencl_target, shapes, dtype, seed):
    """fmod=1 keeps the dividend's sign, fmod=0 the divisor's; x % 0 is NaN, x % inf
    keeps x (or gives inf with the other sign under fmod=0)."""
    a = array_for(seed, shapes[0], dtype, low=-9.0, high=9.0, special=True)
    b = array_for(seed + 1, shapes[1], dtype, low=-3.0, high=3.0, special=True)
    feeds = {"a": a, "b": b}
    _run_ops([("Mod", ["a", "b"], {"fmod": 1}), ("Mod", ["a", "b"], {"fmod": 0})], feeds,
             opencl_target)


def _integers(seed: int, shape: tuple[int, ...], dtype: DType) -> np.ndarray:
    """Values over the whole type, with its extremes, -1, 0 and 1 mixed in."""
    info = np.iinfo(dtype.np_dtype)
    rng = np.random.default_rng(seed)
    values = rng.integers(info.min, info.max, size=shape, dtype=dtype.np_dtype,
                          endpoint=True)
    edges = np.array([info.min, info.max, 0, 1, -1 if info.min < 0 else 2, 7],
                     dtype=dtype.np_dtype)
    mask = rng.random(shape) < 0.4
    values[mask] = rng.choice(edges, size=int(mask.sum()))
    return values


@settings(max_examples=4)
@given(shapes=broadcastable_shapes(2, max_rank=3, max_dim=9),
       dtype=st.sampled_from(INTEGER_TYPES), seed=st.integers(0, 2**31))
def test_integer_ops_are_bit_exact(opencl_target, shapes, dtype, seed):
    a, b = _integers(seed, shapes[0], dtype), _integers(seed + 1, shapes[1], dtype)
    bits = dtype.itemsize * 8
    rng = np.random.default_rng(seed + 2)
    counts = rng.integers(-3 if dtype.is_signed else 0, bits + 4, size=shapes[1])
    feeds = {"a": a, "b": b, "n": counts.astype(dtype.np_dtype)}
    ops = [("Mod", ["a", "b"], {"fmod": 0}), ("Mod", ["a", "b"], {"fmod": 1}),
           ("BitShift", ["a", "n"], {"direction": "LEFT"}),
           ("BitShift", ["a", "n"], {"direction": "RIGHT"}),
           ("BitwiseAnd", ["a", "b"], {}), ("BitwiseOr", ["a", "b"], {}),
           ("BitwiseXor", ["a", "b"], {}), ("BitwiseNot", ["a"], {})]
    _run_ops(ops, feeds, opencl_target)


def test_integer_mod_and_shift_edge_values(opencl_target):
    """The cases C leaves undefined or where the two remainders differ, spelled out."""
    a = np.array([-7, 7, -7, 7, -128, -128, 5, 0, -1], np.int8)
    b = np.array([2, -2, -2, 2, -1, 0, 0, 3, 8], np.int8)
    model = ember.compile(_mod_graph(), target=opencl_target, opt_level=0, strict=True)
    got = model(a=a, b=b)
    np.testing.assert_array_equal(got["floored"], [1, -1, -1, 1, 0, 0, 0, 0, 7])
    np.testing.assert_array_equal(got["truncated"], [-1, 1, -1, 1, 0, 0, 0, 0, -1])
    np.testing.assert_array_equal(got["left"], [-28, 0, 0, 28, 0, -128, 5, 0, 0])
    np.testing.assert_array_equal(got["right"], [-2, 0, -1, 1, -1, -128, 5, 0, -1])


def _mod_graph():
    b = GraphBuilder("mod")
    x, y = b.input("a", (9,), DType.INT8), b.input("b", (9,), DType.INT8)
    b.output("floored", b.op("Mod", x, y, fmod=0))
    b.output("truncated", b.op("Mod", x, y, fmod=1))
    b.output("left", b.op("BitShift", x, y, direction="LEFT"))
    b.output("right", b.op("BitShift", x, y, direction="RIGHT"))
    return b.build()


@pytest.mark.parametrize("source, to", [
    (DType.FLOAT32, DType.INT32), (DType.INT32, DType.FLOAT32), (DType.FLOAT64, DType.INT64),
    (DType.INT8, DType.UINT8), (DType.UINT16, DType.INT16), (DType.BOOL, DType.UINT8),
])
def test_bitcast_keeps_the_bits(opencl_target, source, to):
    x = array_for(5, (3, 7), source, special=source.is_float)
    b = GraphBuilder("bitcast")
    b.output("y", b.op("BitCast", b.input("x", x.shape, source), to=to))
    got = ember.compile(b.build(), target=opencl_target, opt_level=0, strict=True)(x=x)["y"]
    assert got.dtype == to.np_dtype
    assert got.tobytes() == x.tobytes()


def test_bitcast_between_widths_is_refused():
    b = GraphBuilder("bitcast")
    with pytest.raises(DTypeError, match="bit width"):
        b.op("BitCast", b.input("x", (2,), DType.FLOAT32), to=DType.INT64)
