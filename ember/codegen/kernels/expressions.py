"""How each elementwise op computes one element (or one vector of elements) in OpenCL C:
the tables the elementwise kernels and the MatMul/Conv epilogues render from.

`C_EXPRESSIONS` gives, per op, the scalar C expression in the output's compute type;
`VECTOR_EXPRESSIONS` the float-vector form where one exists (CPU devices run 8 lanes per
work-item), `VECTOR_INTEGER_EXPRESSIONS` those whose result is an integer type
(QuantizeLinear). `vector_dag` decides whether a whole DAG has vector forms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ember.codegen.csrc import c_literal, compute_type
from ember.codegen.kernels.bit_expressions import (
    bitcast_expr, bitshift_expr, bitwise_expr, bitwise_not_expr, mod_expr,
)
from ember.ir import Attrs, DType
from ember.ir.ops.fused import ExprNode

__all__ = ["C_EXPRESSIONS", "VECTOR_EXPRESSIONS", "VECTOR_INTEGER_EXPRESSIONS",
           "VECTOR_INTEGERS", "expression_supported", "vector_dag", "vector_type",
           "float_vector", "stored_vector"]


# -- per-op C expressions -------------------------------------------------------------------
# Each entry: (args, attrs, arg dtypes, out dtype) -> C expression in the out compute type.
ExprFn = Callable[[list[str], Attrs, list[DType], DType], str]


def _binary(symbol: str) -> ExprFn:
    return lambda a, at, dt, out: f"({a[0]} {symbol} {a[1]})"


def _compare(symbol: str) -> ExprFn:
    return lambda a, at, dt, out: f"(uchar)({a[0]} {symbol} {a[1]})"


def _float_fn(expr: str) -> ExprFn:
    """A float-only function written with {x} (the argument) and {T} (the compute type)."""
    return lambda a, at, dt, out: "(" + expr.format(x=a[0], T=compute_type(out)) + ")"




def _cast(a: list[str], attrs: Attrs, dt: list[DType], out: DType) -> str:
    source = dt[0]
    if out is DType.BOOL:
        return f"(uchar)({a[0]} != 0)"
    target = compute_type(out)
    if source.is_float and not out.is_float:
        # NaN -> 0 and saturation differ between devices; numpy's cast is C's truncation.
        return f"({target})({a[0]})"
    return f"({target})({a[0]})"


def _clip(a: list[str], attrs: Attrs, dt: list[DType], out: DType) -> str:
    x = a[0]
    if attrs["min"] is not None:
        lo = c_literal(attrs["min"], out)
        x = f"({x} < {lo} ? {lo} : {x})"
    if attrs["max"] is not None:
        hi = c_literal(attrs["max"], out)
        x = f"({x} > {hi} ? {hi} : {x})"
    return x


def _abs(a, at, dt, out):
    if out.is_float:
        return f"fabs({a[0]})"
    if not out.is_signed:
        return a[0]
    return f"({compute_type(out)})abs({a[0]})"


def _sign(a, at, dt, out):
    t = compute_type(out)
    core = f"({t})(({a[0]} > 0) - ({a[0]} < 0))"
    return f"(isnan({a[0]}) ? {a[0]} : {core})" if out.is_float else core


def _max_min(greater: bool) -> ExprFn:
    def expr(a, at, dt, out):
        cmp = ">" if greater else "<"
        nan = f" || isnan({a[0]})" if out.is_float else ""
        return f"(({a[0]} {cmp} {a[1]}{nan}) ? {a[0]} : {a[1]})"

    return expr


def _with_alpha(template: str, *names: str) -> ExprFn:
    def expr(a, attrs, dt, out):
        values = {name: c_literal(attrs[name], out) for name in names}
        return "(" + template.format(x=a[0], T=compute_type(out), exp=_fn("exp", out),
                                     **values) + ")"

    return expr


def _fn(name: str, dtype: DType) -> str:
    """The builtin `name` for double, else its branch-free float helper ember_<name>
    (kernels.HELPERS: exp, erf, tanh), which PoCL runs inline and several times faster."""
    return name if dtype is DType.FLOAT64 else "ember_" + name


def _gelu_text(x: str, approximate: str, lit: Callable[[float], str],
               fn: Callable[[str], str]) -> str:
    """GELU of `x` as C; `lit` writes a constant, `fn` names exp/erf/tanh."""
    if approximate == "tanh":
        inner = f"{lit(0.7978845608028654)} * ({x} + {lit(0.044715)} * {x} * {x} * {x})"
        return f"({lit(0.5)} * {x} * ({lit(1.0)} + {fn('tanh')}({inner})))"
    return f"({lit(0.5)} * {x} * ({lit(1.0)} + {fn('erf')}({x} * {lit(0.7071067811865476)})))"


def _gelu(a, attrs, dt, out):
    return _gelu_text(a[0], attrs["approximate"], lambda v: c_literal(v, out),
                      lambda name: _fn(name, out))


def _exp_fn(expr: str) -> ExprFn:
    """A float function written with {x}, {T} and {exp} (the exp to call)."""
    return lambda a, at, dt, out: "(" + expr.format(x=a[0], T=compute_type(out),
                                                    exp=_fn("exp", out)) + ")"


def _isinf(a, attrs, dt, out):
    x = a[0]
    neg, pos = attrs["detect_negative"], attrs["detect_positive"]
    if neg and pos:
        return f"(uchar)isinf({x})"
    if pos:
        return f"(uchar)(isinf({x}) && {x} > 0)"
    if neg:
        return f"(uchar)(isinf({x}) && {x} < 0)"
    return "(uchar)0"


def _shrink(a, attrs, dt, out):
    x, lit = a[0], (lambda v: c_literal(v, out))
    return (f"({x} < -{lit(attrs['lambd'])} ? {x} + {lit(attrs['bias'])} : ({x} > "
            f"{lit(attrs['lambd'])} ? {x} - {lit(attrs['bias'])} : ({compute_type(out)})0))")


# -- quantization ------------------------------------------------------------------------------
# Saturation bounds of the integer types QuantizeLinear writes.
_QUANT_RANGES = {DType.INT8: (-128, 127), DType.UINT8: (0, 255), DType.INT16: (-32768, 32767),
                 DType.UINT16: (0, 65535)}


def _quantize(a: list[str], attrs: Attrs, dt: list[DType], out: DType) -> str:
    """saturate(rint(x / scale) + zero), NaN -> zero: mathlib's ember_quantize (the
    correctly rounded quotient, rint by the 1.5 * 2^23 trick, clamps as ternaries), whose
    result is a whole number in the type's range, so the conversion is exact."""
    low, high = _QUANT_RANGES[out]
    return (f"(({compute_type(out)})ember_quantize({a[0]}, (float){a[1]}, (float){a[2]}, "
            f"{low}.0f, {high}.0f))")


def _dequantize(a: list[str], attrs: Attrs, dt: list[DType], out: DType) -> str:
    """((float)x - (float)zero) * scale, in float (half scales are computed in float)."""
    return f"(((float){a[0]} - (float){a[2]}) * (float){a[1]})"


C_EXPRESSIONS: dict[str, ExprFn] = {
    "Add": _binary("+"),
    "Sub": _binary("-"),
    "Mul": _binary("*"),
    "Div": _binary("/"),
    "Pow": lambda a, at, dt, out: f"pow({a[0]}, ({compute_type(out)}){a[1]})",
    "Max": _max_min(True),
    "Min": _max_min(False),
    "PRelu": lambda a, at, dt, out: f"({a[0]} < 0 ? {a[0]} * {a[1]} : {a[0]})",
    "Neg": lambda a, at, dt, out: f"(-{a[0]})",
    "Abs": _abs,
    "Sign": _sign,
    "Relu": lambda a, at, dt, out: f"({a[0]} < 0 ? ({compute_type(out)})0 : {a[0]})",
    "Clip": _clip,
    "Sqrt": _float_fn("sqrt({x})"),
    "Reciprocal": _float_fn("(({T})1 / {x})"),
    "Exp": _exp_fn("{exp}({x})"),
    "Log": _float_fn("log({x})"),
    "Floor": _float_fn("floor({x})"),
    "Ceil": _float_fn("ceil({x})"),
    "Round": _float_fn("rint({x})"),
    "Erf": lambda a, at, dt, out: f"{_fn('erf', out)}({a[0]})",
    "Tanh": lambda a, at, dt, out: f"{_fn('tanh', out)}({a[0]})",
    "Sin": _float_fn("sin({x})"),
    "Cos": _float_fn("cos({x})"),
    "Sigmoid": _exp_fn("(({T})1 / (({T})1 + {exp}(-{x})))"),
    "Softplus": _float_fn("(fmax({x}, ({T})0) + log1p(exp(-fabs({x}))))"),
    "Mish": _float_fn("({x} * tanh(fmax({x}, ({T})0) + log1p(exp(-fabs({x})))))"),
    "Gelu": _gelu,
    "LeakyRelu": _with_alpha("({x} < 0 ? {alpha} * {x} : {x})", "alpha"),
    "Elu": _with_alpha("({x} < 0 ? {alpha} * ({exp}({x}) - ({T})1) : {x})", "alpha"),
    "Selu": _with_alpha("({x} <= 0 ? {gamma} * {alpha} * ({exp}({x}) - ({T})1) : {gamma} * {x})",
                        "alpha", "gamma"),
    # clamps as ternaries: NaN stays NaN as in np.clip, and PoCL calls fmin/fmax out of line
    "HardSigmoid": _with_alpha("({alpha} * {x} + {beta} < ({T})0 ? ({T})0 : ({alpha} * {x} + "
                               "{beta} > ({T})1 ? ({T})1 : {alpha} * {x} + {beta}))",
                               "alpha", "beta"),
    "HardSwish": _float_fn("({x} * ({x} / ({T})6 + ({T})0.5 < ({T})0 ? ({T})0 : ({x} / ({T})6 "
                           "+ ({T})0.5 > ({T})1 ? ({T})1 : {x} / ({T})6 + ({T})0.5)))"),
    "Swish": _with_alpha("({x} / (({T})1 + {exp}(-({alpha} * {x}))))", "alpha"),
    "Mod": mod_expr,
    "Acos": _float_fn("acos({x})"),
    "Asin": _float_fn("asin({x})"),
    "Atan": _float_fn("atan({x})"),
    "Acosh": _float_fn("acosh({x})"),
    "Asinh": _float_fn("asinh({x})"),
    "Atanh": _float_fn("atanh({x})"),
    "Tan": _float_fn("tan({x})"),
    "Cosh": _float_fn("cosh({x})"),
    "Sinh": _float_fn("sinh({x})"),
    "Softsign": _float_fn("({x} / (({T})1 + fabs({x})))"),
    "Celu": _with_alpha("({x} > 0 ? {x} : {alpha} * expm1({x} / {alpha}))", "alpha"),
    "ThresholdedRelu": _with_alpha("({x} > {alpha} ? {x} : ({T})0)", "alpha"),
    "Shrink": _shrink,
    "BitShift": bitshift_expr,
    "BitwiseAnd": bitwise_expr("&"),
    "BitwiseOr": bitwise_expr("|"),
    "BitwiseXor": bitwise_expr("^"),
    "BitwiseNot": bitwise_not_expr,
    "BitCast": bitcast_expr,
    "Equal": _compare("=="),
    "Less": _compare("<"),
    "LessOrEqual": _compare("<="),
    "Greater": _compare(">"),
    "GreaterOrEqual": _compare(">="),
    "Not": lambda a, at, dt, out: f"(uchar)(!{a[0]})",
    "And": lambda a, at, dt, out: f"(uchar)({a[0]} && {a[1]})",
    "Or": lambda a, at, dt, out: f"(uchar)({a[0]} || {a[1]})",
    "Xor": lambda a, at, dt, out: f"(uchar)(({a[0]} != 0) != ({a[1]} != 0))",
    "IsNaN": lambda a, at, dt, out: f"(uchar)isnan({a[0]})",
    "IsInf": _isinf,
    "Where": lambda a, at, dt, out: f"({a[0]} ? {a[1]} : {a[2]})",
    "Cast": _cast,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
}

# -- vector forms -----------------------------------------------------------------------------
# The same ops on float32 values held in floatN vectors (N = 1: plain float), for the
# vectorized elementwise kernel and the CPU GEMM's vector epilogue: (args, attrs, vector type)
# -> C. Operators and ternaries where they do the job, since PoCL calls builtins (fabs, fmax,
# select, ...) out of line; a comparison of vectors gives an int vector of -1/0 that ?: takes
# as a per-lane select, so both arms are written in the vector type. NaN handling matches the
# scalar forms (a comparison with NaN is false). An op missing here keeps the scalar path.
VectorFn = Callable[[list[str], Attrs, str], str]


def _v(value: float) -> str:
    return c_literal(value, DType.FLOAT32)


def _vec_clip(a: list[str], attrs: Attrs, vt: str) -> str:
    x = a[0]
    if attrs["min"] is not None:
        x = f"({x} < {_v(attrs['min'])} ? ({vt}){_v(attrs['min'])} : {x})"
    if attrs["max"] is not None:
        x = f"({x} > {_v(attrs['max'])} ? ({vt}){_v(attrs['max'])} : {x})"
    return x


def _vec_max_min(symbol: str) -> VectorFn:
    return lambda a, at, vt: f"(({a[0]} {symbol} {a[1]} || {a[0]} != {a[0]}) ? {a[0]} : {a[1]})"


def _vec_hard_sigmoid(a: list[str], attrs: Attrs, vt: str) -> str:
    y = f"({_v(attrs['alpha'])} * {a[0]} + {_v(attrs['beta'])})"
    return f"({y} < 0.0f ? ({vt})0.0f : ({y} > 1.0f ? ({vt})1.0f : {y}))"


def _vec_hard_swish(a: list[str], attrs: Attrs, vt: str) -> str:
    y = f"({a[0]} / 6.0f + 0.5f)"
    return f"({a[0]} * ({y} < 0.0f ? ({vt})0.0f : ({y} > 1.0f ? ({vt})1.0f : {y})))"


def _vec_abs(a: list[str], attrs: Attrs, vt: str) -> str:
    bits = vt.replace("float", "uint")
    return f"as_{vt}(as_{bits}({a[0]}) & 0x7fffffffu)"


def _helper(name: str, vt: str) -> str:
    """The kernels.HELPERS function `name` (erf, tanh, exp) for vector type `vt`."""
    return f"ember_{name}{vt[len('float'):]}"


def _vec_elu(a: list[str], attrs: Attrs, vt: str) -> str:
    x, alpha = a[0], _v(attrs["alpha"])
    return f"({x} < 0.0f ? {alpha} * ({_helper('exp', vt)}({x}) - 1.0f) : {x})"


def _vec_selu(a: list[str], attrs: Attrs, vt: str) -> str:
    x, alpha, gamma = a[0], _v(attrs["alpha"]), _v(attrs["gamma"])
    return (f"({x} <= 0.0f ? {gamma} * {alpha} * ({_helper('exp', vt)}({x}) - 1.0f) "
            f": {gamma} * {x})")


def _vec_fn(name: str) -> VectorFn:
    """A builtin, or (name "ember_*") the helper of the vector's width."""
    if name.startswith("ember_"):
        return lambda a, at, vt: f"{_helper(name[len('ember_'):], vt)}({a[0]})"
    return lambda a, at, vt: f"{name}({a[0]})"


VECTOR_EXPRESSIONS: dict[str, VectorFn] = {
    "Add": lambda a, at, vt: f"({a[0]} + {a[1]})",
    "Sub": lambda a, at, vt: f"({a[0]} - {a[1]})",
    "Mul": lambda a, at, vt: f"({a[0]} * {a[1]})",
    "Div": lambda a, at, vt: f"({a[0]} / {a[1]})",
    "Pow": lambda a, at, vt: f"pow({a[0]}, {a[1]})",
    "Max": _vec_max_min(">"),
    "Min": _vec_max_min("<"),
    "PRelu": lambda a, at, vt: f"({a[0]} < 0.0f ? {a[0]} * {a[1]} : {a[0]})",
    "Neg": lambda a, at, vt: f"(-{a[0]})",
    "Abs": _vec_abs,
    "Relu": lambda a, at, vt: f"({a[0]} < 0.0f ? ({vt})0.0f : {a[0]})",
    "Clip": _vec_clip,
    "LeakyRelu": lambda a, at, vt: f"({a[0]} < 0.0f ? {_v(at['alpha'])} * {a[0]} : {a[0]})",
    "Elu": _vec_elu,
    "Selu": _vec_selu,
    "HardSigmoid": _vec_hard_sigmoid,
    "HardSwish": _vec_hard_swish,
    "Sqrt": _vec_fn("sqrt"),
    "Reciprocal": lambda a, at, vt: f"(1.0f / {a[0]})",
    "Exp": _vec_fn("ember_exp"),
    "Log": _vec_fn("log"),
    "Floor": _vec_fn("floor"),
    "Ceil": _vec_fn("ceil"),
    "Round": _vec_fn("rint"),
    "Sin": _vec_fn("sin"),
    "Cos": _vec_fn("cos"),
    "Erf": _vec_fn("ember_erf"),
    "Acos": _vec_fn("acos"),
    "Asin": _vec_fn("asin"),
    "Atan": _vec_fn("atan"),
    "Acosh": _vec_fn("acosh"),
    "Asinh": _vec_fn("asinh"),
    "Atanh": _vec_fn("atanh"),
    "Tan": _vec_fn("tan"),
    "Cosh": _vec_fn("cosh"),
    "Sinh": _vec_fn("sinh"),
    "Softsign": lambda a, at, vt: f"({a[0]} / (1.0f + {_vec_abs(a, at, vt)}))",
    "ThresholdedRelu": lambda a, at, vt: (f"({a[0]} > {_v(at['alpha'])} ? {a[0]} : "
                                          f"({vt})0.0f)"),
    "Tanh": _vec_fn("ember_tanh"),
    "Sigmoid": lambda a, at, vt: f"(1.0f / (1.0f + {_helper('exp', vt)}(-{a[0]})))",
    "Swish": lambda a, at, vt: (f"({a[0]} / (1.0f + {_helper('exp', vt)}"
                                f"(-({_v(at['alpha'])} * {a[0]}))))"),
    "Gelu": lambda a, at, vt: _gelu_text(a[0], at["approximate"], _v,
                                         lambda f: _helper(f, vt)),
    # integer values are held as floats of their values (vector_dag): a Cast to float32 is
    # the value itself, DequantizeLinear the scalar form's float arithmetic
    "Cast": lambda a, at, vt: a[0],
    "DequantizeLinear": lambda a, at, vt: f"(({a[0]} - {a[2]}) * {a[1]})",
}


def _vec_quantize(a: list[str], attrs: Attrs, vt: str, out: DType) -> str:
    low, high = _QUANT_RANGES[out]
    return f"{_helper('quantize', vt)}({a[0]}, {a[1]}, {a[2]}, {low}.0f, {high}.0f)"


# Vector forms of ops with an integer result (held as floats of whole numbers in the type's
# range): the same arguments, and the result dtype.
VECTOR_INTEGER_EXPRESSIONS: dict[str, Callable[[list[str], Attrs, str, DType], str]] = {
    "QuantizeLinear": _vec_quantize,
}


def vector_type(width: int) -> str:
    """The float vector type of `width` lanes (1: float)."""
    return "float" if width == 1 else f"float{width}"


# Integer dtypes a vector DAG holds as floats: every value of the 8- and 16-bit types is exact
# in float; int32 values are rounded as the scalar (float) conversion rounds them, so they may
# only flow into ops whose scalar form converts them to float first (_FLOAT_USES).
VECTOR_INTEGERS = frozenset({DType.INT8, DType.UINT8, DType.INT16, DType.UINT16, DType.INT32})
# (op, argument) pairs whose scalar form reads an integer argument as (float)arg.
_FLOAT_USES = frozenset({("Cast", 0), ("DequantizeLinear", 0), ("DequantizeLinear", 2),
                         ("QuantizeLinear", 2)})


def vector_dag(nodes: Sequence[ExprNode], n_inputs: int, input_dtypes: Sequence[DType],
               width: int, prefix: str) -> list[str] | None:
    """Statements `const floatW <prefix><n_inputs + k> = ...;` computing the DAG on vectors
    of `width` lanes from `<prefix>0..` (the inputs, already float vectors), or None when an
    op has no vector form (the caller keeps its scalar path). Integer values (inputs of
    VECTOR_INTEGERS, QuantizeLinear results) are held as float vectors of their values: the
    caller converts integer inputs at the load (vector_convert) and integer outputs at the
    store; they may only be used where the scalar form converts them to float too."""
    dtypes = list(input_dtypes)
    if any(d is not DType.FLOAT32 and d not in VECTOR_INTEGERS for d in dtypes):
        return None
    vt = vector_type(width)
    lines = []
    for k, node in enumerate(nodes):
        if any(dtypes[i] is not DType.FLOAT32 and (node.op, position) not in _FLOAT_USES
               for position, i in enumerate(node.args)):
            return None
        args = [f"{prefix}{i}" for i in node.args]
        if node.dtype is DType.FLOAT32 and node.op in VECTOR_EXPRESSIONS:
            text = VECTOR_EXPRESSIONS[node.op](args, node.attrs, vt)
        elif node.op in VECTOR_INTEGER_EXPRESSIONS and node.dtype in _QUANT_RANGES:
            text = VECTOR_INTEGER_EXPRESSIONS[node.op](args, node.attrs, vt, node.dtype)
        else:
            return None
        dtypes.append(node.dtype)
        lines.append(f"const {vt} {prefix}{n_inputs + k} = {text};")
    return lines


def float_vector(value: str, dtype: DType, width: int) -> str:
    """`value`, a vector of `width` lanes of `dtype`, as the float vector vector_dag holds."""
    return value if dtype is DType.FLOAT32 else f"convert_float{width}({value})"


def stored_vector(value: str, dtype: DType, width: int) -> str:
    """A float vector of vector_dag as the `dtype` vector to store (integer values are whole
    numbers in the type's range: the conversion is exact)."""
    return value if dtype is DType.FLOAT32 else f"convert_{dtype.cl_name}{width}({value})"


# Ops whose C form is only right for float operands.
_FLOAT_ONLY = {"Pow", "IsNaN", "IsInf"}


def expression_supported(node: ExprNode, arg_dtypes: Sequence[DType]) -> bool:
    if node.op not in C_EXPRESSIONS:
        return False
    if node.op in _FLOAT_ONLY and not all(d.is_float for d in arg_dtypes[:1]):
        return False
    if node.op == "Pow" and not arg_dtypes[1].is_float and not arg_dtypes[1].is_integer:
        return False
    if node.op == "Shrink" and not node.dtype.is_float:
        return False  # float thresholds on integers: the reference's float arithmetic
    if node.op == "BitCast" and DType.FLOAT16 in (node.dtype, arg_dtypes[0]):
        return False  # half is computed in float: its bits are not at hand
    return node.op != "QuantizeLinear" or node.dtype in _QUANT_RANGES
