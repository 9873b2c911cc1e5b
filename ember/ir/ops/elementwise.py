"""Elementwise ops with numpy (multidirectional) broadcasting.

Each op is one row: name, arity, attributes, the numpy function and the output dtype rule.
Variadic ONNX ops (Sum, Mean, Max, Min) are binary here; the frontend chains them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ember.errors import DTypeError
from ember.ir.attrs import AttrKind, Attrs, AttrSpec
from ember.ir.dtypes import DType
from ember.ir.ops.common import FLOAT_TYPES, as_dtype, broadcast_shapes
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["ELEMENTWISE_OPS", "erf"]

_erf_scalar = np.vectorize(math.erf, otypes=[np.float64])


def erf(x: np.ndarray) -> np.ndarray:
    """The error function in float64 (numpy has none); exact to double rounding."""
    x = np.asarray(x)
    if x.size == 0:
        return x.astype(np.float64)
    return _erf_scalar(x.astype(np.float64))


# -- output dtype rules ---------------------------------------------------------------------
def _same(inputs: Sequence[TensorType]) -> DType:
    dtypes = {t.dtype for t in inputs}
    if len(dtypes) != 1:
        raise DTypeError(f"inputs must share one dtype, got {[str(t.dtype) for t in inputs]}")
    return inputs[0].dtype


def _first(inputs: Sequence[TensorType]) -> DType:
    return inputs[0].dtype


def _boolean(inputs: Sequence[TensorType]) -> DType:
    _same(inputs)
    return DType.BOOL


def _is_checks(inputs: Sequence[TensorType]) -> DType:
    return DType.BOOL


def _where(inputs: Sequence[TensorType]) -> DType:
    if inputs[0].dtype is not DType.BOOL:
        raise DTypeError(f"Where condition must be bool, got {inputs[0].dtype}")
    return _same(inputs[1:])


def _float_only(rule: Callable[[Sequence[TensorType]], DType]):
    def checked(inputs: Sequence[TensorType]) -> DType:
        dtype = rule(inputs)
        if dtype not in FLOAT_TYPES:
            raise DTypeError(f"expects a float tensor, got {dtype}")
        return dtype

    return checked


def _integer_only(inputs: Sequence[TensorType]) -> DType:
    dtype = _same(inputs)
    if not dtype.is_integer:
        raise DTypeError(f"expects integer tensors, got {dtype}")
    return dtype


def _bool_only(inputs: Sequence[TensorType]) -> DType:
    for t in inputs:
        if t.dtype is not DType.BOOL:
            raise DTypeError(f"expects bool tensors, got {t.dtype}")
    return DType.BOOL


def _make_infer(rule: Callable[[Sequence[TensorType]], DType]):
    def infer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
        if "to" in attrs:  # Cast
            return (TensorType(inputs[0].shape, attrs["to"]),)
        shape = broadcast_shapes(*(t.shape for t in inputs))
        return (TensorType(shape, rule(inputs)),)

    return infer


# -- numpy functions --------------------------------------------------------------------------
def _div(a, b):
    if np.issubdtype(a.dtype, np.integer):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.trunc(a.astype(np.float64) / b).astype(a.dtype)
    return np.divide(a, b)


def _pow(a, b):
    if np.issubdtype(a.dtype, np.integer):
        return np.power(a.astype(np.float64), b).astype(a.dtype)
    return np.power(a, b.astype(a.dtype))


def _clip(x, *, min=None, max=None):  # noqa: A002  (ONNX's names)
    if min is not None:
        x = np.maximum(x, np.asarray(min).astype(x.dtype))
    if max is not None:
        x = np.minimum(x, np.asarray(max).astype(x.dtype))
    return x


def _gelu(x, *, approximate="none"):
    xf = x.astype(np.float64)
    if approximate == "tanh":
        y = 0.5 * xf * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (xf + 0.044715 * xf**3)))
    else:
        y = 0.5 * xf * (1.0 + erf(xf / math.sqrt(2.0)))
    return y


def _mish(x):
    xf = x.astype(np.float64)
    return xf * np.tanh(np.logaddexp(0.0, xf))


def _sigmoid(x):
    xf = x.astype(np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-xf))


def _isinf(x, *, detect_negative=1, detect_positive=1):
    out = np.zeros(x.shape, dtype=bool)
    if detect_negative:
        out |= np.isneginf(x)
    if detect_positive:
        out |= np.isposinf(x)
    return out


_FLOAT8 = {DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ}


def _cast(x, *, to: DType, saturate: int = 1):
    if to in _FLOAT8 and saturate:
        # ONNX saturates out-of-range values (inf included) to the largest finite float8.
        import ml_dtypes  # loaded when first needed (ir/dtypes.py)

        info = ml_dtypes.finfo(to.np_dtype)
        return np.clip(x.astype(np.float32), float(info.min), float(info.max)).astype(to.np_dtype)
    if to.is_integer and x.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            return x.astype(to.np_dtype)
    return x.astype(to.np_dtype)


def _mod(a, b, *, fmod=0):
    """C's remainder (fmod=1: the dividend's sign) or the floored one (the divisor's sign);
    integer x % 0 is 0, as in numpy."""
    return np.fmod(a, b) if fmod else np.mod(a, b)


def _bitshift(a, b, *, direction):
    """Shifts by b outside [0, bits) give 0 (a negative value shifted right: -1); signed
    values shift left as their unsigned bits."""
    a, b = np.broadcast_arrays(a, b)
    bits = a.dtype.itemsize * 8
    inside = (b >= 0) & (b < bits)
    count = np.where(inside, b, 0).astype(np.uint64 if a.dtype.itemsize == 8 else np.uint32)
    unsigned = a.view(np.dtype(f"u{a.dtype.itemsize}"))
    if direction == "LEFT":
        shifted = np.left_shift(unsigned, count.astype(unsigned.dtype)).view(a.dtype)
        return np.where(inside, shifted, a.dtype.type(0))
    shifted = np.right_shift(a, count.astype(a.dtype))
    outside = np.where(a < 0, a.dtype.type(-1), a.dtype.type(0)) if a.dtype.kind == "i" else 0
    return np.where(inside, shifted, outside)


def _shrink(x, *, bias, lambd):
    xf = x.astype(np.float64)
    return np.where(xf < -lambd, xf + bias, np.where(xf > lambd, xf - bias, 0.0))


def _unary_float(fn):
    def run(x, **attrs):
        with np.errstate(all="ignore"):
            return fn(x.astype(np.float64), **attrs)

    return run


_SELU_ALPHA = 1.67326319217681884765625
_SELU_GAMMA = 1.05070102214508056640625

_F = AttrKind.FLOAT

# name: (arity, numpy function, dtype rule, attributes, commutative)
ELEMENTWISE_OPS: dict[str, tuple] = {
    # arithmetic
    "Add": (2, np.add, _same, (), True),
    "Sub": (2, np.subtract, _same, (), False),
    "Mul": (2, np.multiply, _same, (), True),
    "Div": (2, _div, _same, (), False),
    "Pow": (2, _pow, _first, (), False),
    "Max": (2, np.maximum, _same, (), True),
    "Min": (2, np.minimum, _same, (), True),
    "PRelu": (2, lambda x, s: np.where(x < 0, x * s, x), _same, (), False),
    "Neg": (1, np.negative, _same, (), False),
    "Abs": (1, np.abs, _same, (), False),
    "Sign": (1, np.sign, _same, (), False),
    "Relu": (1, lambda x: np.maximum(x, x.dtype.type(0)), _same, (), False),
    "Clip": (1, _clip, _same, (attr("min", _F, None), attr("max", _F, None)), False),
    # float math
    "Sqrt": (1, _unary_float(np.sqrt), _float_only(_same), (), False),
    "Reciprocal": (1, _unary_float(np.reciprocal), _float_only(_same), (), False),
    "Exp": (1, _unary_float(np.exp), _float_only(_same), (), False),
    "Log": (1, _unary_float(np.log), _float_only(_same), (), False),
    "Floor": (1, np.floor, _float_only(_same), (), False),
    "Ceil": (1, np.ceil, _float_only(_same), (), False),
    "Round": (1, np.round, _float_only(_same), (), False),
    "Erf": (1, _unary_float(erf), _float_only(_same), (), False),
    "Tanh": (1, _unary_float(np.tanh), _float_only(_same), (), False),
    "Sin": (1, _unary_float(np.sin), _float_only(_same), (), False),
    "Cos": (1, _unary_float(np.cos), _float_only(_same), (), False),
    "Sigmoid": (1, _sigmoid, _float_only(_same), (), False),
    "Softplus": (1, _unary_float(lambda x: np.logaddexp(0.0, x)), _float_only(_same), (), False),
    "Mish": (1, _unary_float(_mish), _float_only(_same), (), False),
    "Gelu": (
        1,
        _unary_float(_gelu),
        _float_only(_same),
        (attr("approximate", AttrKind.STRING, "none", ("none", "tanh")),),
        False,
    ),
    "LeakyRelu": (
        1,
        _unary_float(lambda x, alpha: np.where(x < 0, alpha * x, x)),
        _float_only(_same),
        (attr("alpha", _F, 0.01),),
        False,
    ),
    "Elu": (
        1,
        _unary_float(lambda x, alpha: np.where(x < 0, alpha * (np.exp(x) - 1.0), x)),
        _float_only(_same),
        (attr("alpha", _F, 1.0),),
        False,
    ),
    "Selu": (
        1,
        _unary_float(
            lambda x, alpha, gamma: gamma * np.where(x <= 0, alpha * (np.exp(x) - 1.0), x)
        ),
        _float_only(_same),
        (attr("alpha", _F, _SELU_ALPHA), attr("gamma", _F, _SELU_GAMMA)),
        False,
    ),
    "HardSigmoid": (
        1,
        _unary_float(lambda x, alpha, beta: np.clip(alpha * x + beta, 0.0, 1.0)),
        _float_only(_same),
        (attr("alpha", _F, 0.2), attr("beta", _F, 0.5)),
        False,
    ),
    "HardSwish": (
        1,
        _unary_float(lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)),
        _float_only(_same),
        (),
        False,
    ),
    # x * sigmoid(alpha * x): SiLU at alpha = 1 (ONNX opset 24), and what FuseSilu produces
    "Swish": (
        1,
        _unary_float(lambda x, alpha: x * _sigmoid(alpha * x)),
        _float_only(_same),
        (attr("alpha", _F, 1.0),),
        False,
    ),
    "Mod": (2, _mod, _same, (attr("fmod", AttrKind.INT, 0, (0, 1)),), False),
    "Acos": (1, _unary_float(np.arccos), _float_only(_same), (), False),
    "Asin": (1, _unary_float(np.arcsin), _float_only(_same), (), False),
    "Atan": (1, _unary_float(np.arctan), _float_only(_same), (), False),
    "Acosh": (1, _unary_float(np.arccosh), _float_only(_same), (), False),
    "Asinh": (1, _unary_float(np.arcsinh), _float_only(_same), (), False),
    "Atanh": (1, _unary_float(np.arctanh), _float_only(_same), (), False),
    "Tan": (1, _unary_float(np.tan), _float_only(_same), (), False),
    "Cosh": (1, _unary_float(np.cosh), _float_only(_same), (), False),
    "Sinh": (1, _unary_float(np.sinh), _float_only(_same), (), False),
    "Softsign": (1, _unary_float(lambda x: x / (1.0 + np.abs(x))), _float_only(_same), (), False),
    "Celu": (
        1,
        _unary_float(lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(x / alpha))),
        _float_only(_same),
        (attr("alpha", _F, 1.0),),
        False,
    ),
    "ThresholdedRelu": (
        1,
        _unary_float(lambda x, alpha: np.where(x > alpha, x, 0.0)),
        _float_only(_same),
        (attr("alpha", _F, 1.0),),
        False,
    ),
    "Shrink": (1, _shrink, _same, (attr("bias", _F, 0.0), attr("lambd", _F, 0.5)), False),
    # integer bit operations
    "BitShift": (
        2,
        _bitshift,
        _integer_only,
        (attr("direction", AttrKind.STRING, choices=("LEFT", "RIGHT")),),
        False,
    ),
    "BitwiseAnd": (2, np.bitwise_and, _integer_only, (), True),
    "BitwiseOr": (2, np.bitwise_or, _integer_only, (), True),
    "BitwiseXor": (2, np.bitwise_xor, _integer_only, (), True),
    "BitwiseNot": (1, np.invert, _integer_only, (), False),
    # comparisons and logic
    "Equal": (2, np.equal, _boolean, (), True),
    "Less": (2, np.less, _boolean, (), False),
    "LessOrEqual": (2, np.less_equal, _boolean, (), False),
    "Greater": (2, np.greater, _boolean, (), False),
    "GreaterOrEqual": (2, np.greater_equal, _boolean, (), False),
    "Not": (1, np.logical_not, _bool_only, (), False),
    "And": (2, np.logical_and, _bool_only, (), True),
    "Or": (2, np.logical_or, _bool_only, (), True),
    "Xor": (2, np.logical_xor, _bool_only, (), True),
    "IsNaN": (1, np.isnan, _is_checks, (), False),
    "IsInf": (
        1,
        _isinf,
        _is_checks,
        (attr("detect_negative", AttrKind.INT, 1), attr("detect_positive", AttrKind.INT, 1)),
        False,
    ),
    "Where": (3, lambda c, x, y: np.where(c, x, y), _where, (), False),
    "Cast": (
        1, _cast, _first, (attr("to", AttrKind.DTYPE), attr("saturate", AttrKind.INT, 1)), False
    ),
}


# A Cast that widens a narrow-integer constant (an int8 weight of a weight-only export,
# Cast -> Mul(scale) -> MatMul) folds only while the result is small: the integers are the
# compressed form, and lowering reads them as DequantizeLinear (and folds what it leaves).
CAST_FOLD_BYTES = 16 * 1024


def _cast_folds(inputs: Sequence[TensorType], outputs: Sequence[TensorType]) -> bool:
    (source,), (result,) = inputs, outputs
    narrow_integer = source.dtype.is_integer and source.dtype.itemsize <= 2
    return not narrow_integer or result.nbytes <= max(source.nbytes, CAST_FOLD_BYTES)


_EXTRA = {"Cast": {"fold_constants": _cast_folds}}


def _register(name: str, arity: int, fn, rule, attrs: tuple[AttrSpec, ...], commutative: bool):
    infer = _make_infer(rule)

    def reference(*arrays, **kwargs):
        out_type = infer([TensorType(a.shape, DType.from_numpy(a.dtype)) for a in arrays],
                         Attrs(kwargs))[0]
        with np.errstate(all="ignore"):
            result = fn(*arrays, **kwargs)
        return as_dtype(np.broadcast_to(result, out_type.shape), out_type.dtype)

    OPS.register(
        OpDef(
            name,
            infer,
            reference,
            attrs=attrs,
            num_inputs=(arity, arity),
            elementwise=True,
            commutative=commutative,
            extra=_EXTRA.get(name, {}),
        )
    )


for _name, (_arity, _fn, _rule, _attrs, _comm) in ELEMENTWISE_OPS.items():
    _register(_name, _arity, _fn, _rule, _attrs, _comm)


# -- BitCast: the same bits read as another type of the same width --------------------------
def _infer_bitcast(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    (x,), to = inputs, attrs["to"]
    if DType.STRING in (x.dtype, to) or x.dtype.itemsize != to.itemsize:
        raise DTypeError(f"BitCast needs types of one bit width, got {x.dtype} -> {to}")
    return (TensorType(x.shape, to),)


def _reference_bitcast(x: np.ndarray, *, to: DType) -> np.ndarray:
    return np.ascontiguousarray(x).view(to.np_dtype)


OPS.register(
    OpDef(
        "BitCast",
        _infer_bitcast,
        _reference_bitcast,
        attrs=(attr("to", AttrKind.DTYPE),),
        elementwise=True,
        doc="Reinterprets each element's bits as `to`, a type of the same width.",
    )
)
