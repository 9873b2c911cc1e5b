"""The C forms of the integer and bit-level elementwise ops (Mod, BitShift, the Bitwise ops,
BitCast) for `expressions.C_EXPRESSIONS`. They spell out what C leaves undefined and ONNX
defines: x % 0, MIN % -1, shift counts outside the type's width."""

from __future__ import annotations

from collections.abc import Callable

from ember.codegen.csrc import compute_type
from ember.ir import Attrs, DType

__all__ = ["mod_expr", "bitshift_expr", "bitwise_expr", "bitwise_not_expr", "bitcast_expr"]

# (args, attrs, arg dtypes, out dtype) -> C expression in the out compute type
ExprFn = Callable[[list[str], Attrs, list[DType], DType], str]


def mod_expr(a: list[str], attrs: Attrs, dt: list[DType], out: DType) -> str:
    """ONNX Mod: C's remainder for fmod=1, else the floored one (the divisor's sign). An
    integer x % 0 is 0 as in numpy, and so is MIN % -1 (which traps in C)."""
    x, y, t = a[0], a[1], compute_type(out)
    if out.is_float:
        rem = f"fmod({x}, {y})"
        if attrs["fmod"]:
            return rem
        return f"({rem} != 0 && ({rem} < 0) != ({y} < 0) ? {rem} + {y} : {rem})"
    if out.is_signed:
        rem = f"(({y} == 0 || {y} == -1) ? ({t})0 : ({t})({x} % {y}))"
    else:
        rem = f"({y} == 0 ? ({t})0 : ({t})({x} % {y}))"
    if attrs["fmod"] or not out.is_signed:
        return rem
    return f"({t})({rem} != 0 && ({rem} < 0) != ({y} < 0) ? {rem} + {y} : {rem})"


def bitshift_expr(a: list[str], attrs: Attrs, dt: list[DType], out: DType) -> str:
    """Shifts by counts outside [0, bits) give 0 (-1 for a negative value shifted right);
    OpenCL would take the count modulo the width. Signed values shift left as unsigned."""
    x, n, t = a[0], a[1], compute_type(out)
    bits = out.itemsize * 8
    outside = f"{n} >= {bits}" + (f" || {n} < 0" if out.is_signed else "")
    if attrs["direction"] == "LEFT":
        unsigned = "u" + t if out.is_signed else t
        return f"(({outside}) ? ({t})0 : ({t})(({unsigned}){x} << {n}))"
    fill = f"({x} < 0 ? ({t})-1 : ({t})0)" if out.is_signed else f"({t})0"
    return f"(({outside}) ? {fill} : ({t})({x} >> {n}))"


def bitwise_expr(symbol: str) -> ExprFn:
    return lambda a, at, dt, out: f"({compute_type(out)})({a[0]} {symbol} {a[1]})"


def bitwise_not_expr(a: list[str], attrs: Attrs, dt: list[DType], out: DType) -> str:
    return f"({compute_type(out)})(~{a[0]})"


def bitcast_expr(a: list[str], attrs: Attrs, dt: list[DType], out: DType) -> str:
    return f"as_{compute_type(out)}({a[0]})"
