"""The C helper functions kernels may call (erf, tanh, exp, a correctly rounded quotient; in
widths 1-8), and the header a program holding some kernels needs (extension pragmas, the
helpers they call)."""

from __future__ import annotations

from ember.codegen.types import Kernel

__all__ = ["HELPERS", "HELPER_WIDTHS", "QUOTIENT_CORRECTION", "program_header"]

# Functions kernels may call, defined once per program that uses them (by name). Each comes
# in float, float2, float4 and float8 forms named with the width (ember_erf, ..., ember_erf8;
# OpenCL C has no overloading), for the scalar and the vectorized elementwise and epilogue
# code (no float16: clang warns that passing one by value changes the ABI without AVX-512).
# They are branch-free and use operators only: this PoCL calls even fabs, fmin, copysign,
# rint and select out of line (~0.35 ns a call, more than a whole rational approximation),
# while ternaries compile to inline selects on vectors, and PoCL vectorizes a kernel across
# work-items only when its control flow is uniform.
# ember_erf: x * P(x^2) / Q(x^2) (degrees 6 and 4 in x^2), +-1 from |x| >= 3.95 (where erf
#   rounds to +-1 in float); PoCL's erf is an out-of-line call ~10x slower.
# ember_tanh: x * P(x^2) / Q(x^2) (degrees 4 and 4), +-1 from |x| >= 9.1; ~5x faster.
#   The coefficients minimize the largest relative error on [0, 4] (erf) and [0, 9.1] (tanh)
#   in float64 (Lawson's iteratively reweighted least squares on Chebyshev nodes): 6.6e-8 and
#   2.3e-8 there. Measured in float32 on the device against float64 on dense grids (200001
#   points, tiny values): worst relative error 3.2e-7 (erf) and 2.8e-7 (tanh), below the old
#   branchy erf's 5.9e-7; odd, so signs are exact; NaN in, NaN out.
# ember_exp: 2^n * exp(r), n = round(x / ln 2) by the 1.5 * 2^23 trick, r by Cody-Waite
#   (ln 2 in two parts), exp(r) as its Taylor polynomial to degree 7 (|r| <= ln2/2: < 5e-9),
#   2^n built from exponent bits in two halves so that results near FLT_MAX and the
#   denormals come out right; overflows to inf past 88.72, 0 below -103.97. Worst relative
#   error 7.4e-8 against float64; ~1.4x faster than PoCL's exp on float8, 5x on scalars.
_ERF = """
inline {T} ember_erf{S}({T} x) {
    const {T} z = x * x;
    const {T} p = x * (1.1283790942624834f + z * (0.20713900224411935f
        + z * (0.05152682670549202f + z * (0.003991099167559872f
        + z * (0.00014729466432007146f + z * (-1.9422662459779583e-06f
        + z * 1.9109413135209863e-08f))))));
    const {T} q = 1.0f + z * (0.5169034116988819f + z * (0.11797652645836434f
        + z * (0.014959250956265545f + z * 0.0010212230634909255f)));
    const {U} u = as_{U}(x);
    const {T} one = as_{T}((u & 0x80000000u) | 0x3f800000u);
    return as_{T}(u & 0x7fffffffu) >= 3.95f ? one : p / q;
}
"""
_TANH = """
inline {T} ember_tanh{S}({T} x) {
    const {T} z = x * x;
    const {T} p = x * (0.9999999774033641f + z * (0.133744831170167f
        + z * (0.00348781798368677f + z * (2.0481208524488186e-05f
        + z * 1.3177394120322816e-08f))));
    const {T} q = 1.0f + z * (0.46707796996484596f + z * (0.0258474213285576f
        + z * (0.00032729274421187715f + z * 7.704026388569152e-07f)));
    const {U} u = as_{U}(x);
    const {T} one = as_{T}((u & 0x80000000u) | 0x3f800000u);
    return as_{T}(u & 0x7fffffffu) >= 9.1f ? one : p / q;
}
"""
_EXP = """
inline {T} ember_exp{S}({T} x) {
    /* clamp (NaN passes), and a NaN-free copy for the integer path (no poison in it) */
    const {T} c = x < -104.0f ? -104.0f : (x > 88.73f ? 88.73f : x);
    const {T} t = (c == c ? c : 0.0f) * 1.4426950408889634f + 12582912.0f;
    const {T} n = t - 12582912.0f;
    const {T} r = (c - n * 0.693359375f) + n * 2.1219444005469057e-4f;
    const {T} p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666666666666666f
        + r * (0.041666666666666664f + r * (0.008333333333333333f
        + r * (0.001388888888888889f + r * 0.0001984126984126984f))))));
    const {I} k = as_{I}(t) - 0x4b400000;
    const {I} h = k >> 1;
    return p * as_{T}(as_{U}(h + 127) << 23) * as_{T}(as_{U}(k - h + 127) << 23);
}
"""
# ember_quotient: x / s in float, correctly rounded on any device (QuantizeLinear divides, and
#   OpenCL lets float `/` be off by 2.5 ulp). Where the device has doubles (the OpenCL C
#   compiler then defines the macro cl_khr_fp64), float(double(x) / double(s)): OpenCL
#   requires double division and double -> float conversion to be correctly rounded, and
#   rounding twice is innocuous for a quotient when the wide format has >= 2p + 2 bits
#   (53 >= 2 * 24 + 2; Figueroa, "When is double rounding innocuous?", 1995). float8 converts
#   in two halves: LLVM 14's x86 backend cannot select an 8-lane double -> float conversion
#   (the build aborts). Without doubles: the first quotient corrected by its exact fma
#   residual (QUOTIENT_CORRECTION). Measured in a kernel (float8, PoCL on znver3): the double
#   form 2x faster than the correction; scalar, 6x (PoCL calls scalar fma out of line).
QUOTIENT_CORRECTION = """
inline {T} ember_quotient{S}({T} x, {T} s) {
    const {T} q0 = x / s;
    const {T} q1 = q0 + fma(-q0, s, x) / s;
    const {T} r1 = fma(-q1, s, x);
    const {I} up = (r1 > 0.0f) == (s > 0.0f);
    const {T} q2 = as_{T}(as_{I}(q1) + ((q1 >= 0.0f) == up ? ({I})1 : ({I})-1));
    const {T} r2 = fma(-q2, s, x);
    const {T} best = as_{T}(as_{U}(r2) & 0x7fffffffu) < as_{T}(as_{U}(r1) & 0x7fffffffu)
        ? q2 : q1;
    return q1 == q1 ? best : q0;
}
"""
_QUOTIENT_DOUBLE = {
    1: "return (float)((double)x / (double)s);",
    2: "return convert_float2(convert_double2(x) / convert_double2(s));",
    4: "return convert_float4(convert_double4(x) / convert_double4(s));",
    8: ("return (float8)(convert_float4(convert_double4(x.lo) / convert_double4(s.lo)),\n"
        "                    convert_float4(convert_double4(x.hi) / convert_double4(s.hi)));"),
}
# ember_quantize: QuantizeLinear's saturate(rint(x / s) + z) in float (NaN -> z, +-inf
#   saturate), for a type of range [lo, hi]: the correctly rounded quotient, rint as
#   (q + 1.5 * 2^23) - 1.5 * 2^23 (round half to even for |q| < 2^22; a larger |q| stays
#   large and saturates, inf stays inf), clamps as ternaries (PoCL calls rint, fmin and fmax
#   out of line). The result is a whole number in [lo, hi]: converting it is exact.
_QUANTIZE = """
inline {T} ember_quantize{S}({T} x, {T} s, {T} z, float lo, float hi) {
    const {T} q = ember_quotient{S}(x, s);
    const {T} v = (q == q ? (q + 12582912.0f) - 12582912.0f : ({T})0.0f) + z;
    return v < lo ? ({T})lo : (v > hi ? ({T})hi : v);
}
"""
HELPER_WIDTHS = (1, 2, 4, 8)


def _widths(name: str, body: str) -> dict[str, str]:
    """`body` once per width of HELPER_WIDTHS, as `name` + the width ("" for 1): {S} is that
    suffix, {T}, {U}, {I} the float, uint and int types of the width."""
    out = {}
    for width in HELPER_WIDTHS:
        suffix = "" if width == 1 else str(width)
        out[name + suffix] = (body.replace("{S}", suffix).replace("{T}", "float" + suffix)
                              .replace("{U}", "uint" + suffix).replace("{I}", "int" + suffix))
    return out


def _quotient_helpers() -> dict[str, str]:
    """ember_quotient at every width: the double form under #ifdef cl_khr_fp64, else the
    fma correction."""
    out = {}
    for name, correction in _widths("ember_quotient", QUOTIENT_CORRECTION).items():
        width = int(name[len("ember_quotient"):] or 1)
        t = "float" if width == 1 else f"float{width}"
        out[name] = ("\n#ifdef cl_khr_fp64\n#pragma OPENCL EXTENSION cl_khr_fp64 : enable\n"
                     f"inline {t} {name}({t} x, {t} s) {{\n    {_QUOTIENT_DOUBLE[width]}\n}}\n"
                     f"#else{correction}#endif\n")
    return out


HELPERS: dict[str, str] = {
    **_widths("ember_erf", _ERF),
    **_widths("ember_tanh", _TANH),
    **_widths("ember_exp", _EXP),
    **_quotient_helpers(),
    **_widths("ember_quantize", _QUANTIZE),  # after ember_quotient, which it calls
}


def program_header(kernels: tuple[Kernel, ...] | list[Kernel]) -> str:
    """Pragmas and helper functions needed once at the top of a program holding these
    kernels."""
    extensions = sorted(set().union(*(k.extensions for k in kernels))) if kernels else []
    header = "".join(f"#pragma OPENCL EXTENSION {ext} : enable\n" for ext in extensions)
    used = {name for name in HELPERS if any(name + "(" in k.source for k in kernels)}
    while True:  # and the helpers those call
        more = {name for name in HELPERS
                if any(name + "(" in HELPERS[user] for user in used)} - used
        if not more:
            break
        used |= more
    for name, source in HELPERS.items():  # in HELPERS' order: a callee before its callers
        if name in used:
            header += source
    return header
