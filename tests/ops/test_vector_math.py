"""The branch-free math helpers (codegen/mathlib.py HELPERS: ember_erf, ember_tanh, ember_exp
and their float2/4/8 forms ember_erf8, ...) at every width, and the vectorized elementwise
kernel that calls them.

Helpers: on dense grids, tiny and huge values, the results stay within 1e-6 relative of the
float64 function (measured worst: erf 3.2e-7, tanh 2.8e-7, exp 7.4e-8), scalars and vectors
alike, with exact +-1 (erf, tanh) and 0/inf (exp) past the ends, signs of zero kept, NaN in
NaN out. Results below float's smallest normal are compared absolutely (devices may flush
them).

Vectorized kernel (CPU devices, float32): the kernel must take the vector path where every
input is read as a whole vector or one element per vector, keep the scalar one where an input
would be gathered lane by lane, and match the reference either way, tails included.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import ember
from ember.codegen.mathlib import HELPER_WIDTHS
from ember.codegen.types import Kernel
from ember.ir import DType
from tests.harness import KernelLauncher, check_op
from tests.strategies import array_for

pytestmark = pytest.mark.opencl

SPECIALS = [0.0, -0.0, 1e-30, -1e-20, 5e-4, 0.4999, 0.5, 3.949, 3.95, 9.09, 9.1, 88.72, 88.73,
            88.8, -87.4, -103.9, -104.5, 1e30, -1e30, np.inf, -np.inf, np.nan]
REFERENCE = {
    "erf": (np.vectorize(math.erf, otypes=[np.float64]), np.linspace(-6, 6, 40001)),
    "tanh": (np.tanh, np.linspace(-12, 12, 40001)),
    "exp": (np.exp, np.linspace(-110, 90, 40001)),
}
SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)


def helper_kernels(name: str) -> list[Kernel]:
    kernels = []
    for width in HELPER_WIDTHS:
        t = "float" if width == 1 else f"float{width}"
        fn = f"ember_{name}{'' if width == 1 else width}"
        source = (f"__kernel void apply_{name}_{width}(__global const {t}* x, __global {t}* y)"
                  f" {{ const int i = get_global_id(0); y[i] = {fn}(x[i]); }}\n")
        kernels.append(Kernel(f"apply_{name}_{width}", source))
    return kernels


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_helper_accuracy_at_every_width(opencl_target, name):
    function, grid = REFERENCE[name]
    tiny = np.geomspace(1e-38, 10, 2000)
    x = np.concatenate([grid, tiny, -tiny, SPECIALS]).astype(np.float32)
    x = np.concatenate([x, np.zeros(-len(x) % 8, np.float32)])
    with np.errstate(over="ignore"):
        exact = function(x.astype(np.float64))
        expected = exact.astype(np.float32)  # what a correctly rounded result would be
    launcher = KernelLauncher(opencl_target)
    kernels = helper_kernels(name)
    program = launcher.build(kernels)
    source = launcher.buffer(x)
    for width, kernel in zip(HELPER_WIDTHS, kernels):
        out = launcher.buffer(x.nbytes)
        launcher.launch(program, kernel.name, ((len(x) // width,), None), source, out)
        got = launcher.read(out, x.shape, np.float32).astype(np.float64)
        normal = np.isfinite(expected) & (np.abs(exact) >= SMALLEST_NORMAL)
        np.testing.assert_allclose(got[normal], exact[normal], rtol=1e-6, atol=0,
                                   err_msg=f"ember_{name} at width {width}")
        rest = ~normal
        same = (got[rest] == expected[rest]) | (np.isnan(got[rest]) & np.isnan(expected[rest]))
        with np.errstate(invalid="ignore"):  # inf - inf where both are inf
            tiny_ok = np.abs(got[rest] - exact[rest]) <= SMALLEST_NORMAL
        bad = ~(same | tiny_ok)
        assert not bad.any(), (f"ember_{name} at width {width}: {x[rest][bad][:5]} -> "
                               f"{got[rest][bad][:5]}, expected {expected[rest][bad][:5]}")
        zeros = x == 0
        if name != "exp":  # odd functions keep the sign of zero
            assert np.array_equal(np.signbit(got[zeros]), np.signbit(x[zeros]))


# -- the vectorized elementwise kernel ---------------------------------------------------------
VECTOR_CASES = [
    # (op, attrs, input shapes, vectorized?)
    ("Gelu", {}, [(5, 24)], True),
    ("Gelu", {"approximate": "tanh"}, [(3, 5, 7)], True),  # 105 elements: a 1-element tail
    ("Sigmoid", {}, [(13,)], True),
    ("Tanh", {}, [(2, 8)], True),
    ("Add", {}, [(4, 16), (16,)], True),  # bias along whole rows of vectors
    ("Mul", {}, [(4, 3, 8), (4, 3, 1)], True),  # one value per vector
    ("Max", {}, [(6, 8), (1,)], True),
    ("Clip", {"min": -1.0, "max": 2.0}, [(37,)], True),
    ("HardSwish", {}, [(2, 12)], True),
    ("Add", {}, [(4, 13), (13,)], False),  # vectors would cross rows: lanes gathered
    ("Sign", {}, [(40,)], False),  # no vector form
    ("Erf", {}, [(7,)], False),  # less than one vector
]


@pytest.mark.parametrize("op, attrs, shapes, vectorized", VECTOR_CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[2][0]))}" for c in VECTOR_CASES])
def test_vectorized_elementwise_kernel(opencl_target, op, attrs, shapes, vectorized):
    arrays = [array_for(7 + i, shape, DType.FLOAT32, special=True)
              for i, shape in enumerate(shapes)]
    model = check_op(op, arrays, attrs, target=opencl_target)
    source = "".join(k.source for s in model.plan.steps if s.lowered is not None
                     for k in s.lowered.kernels)
    on_cpu = next(d for d in ember.devices() if d.target == opencl_target).family.name == "cpu"
    assert ("_vu*)(out0 + i)" in source) == (vectorized and on_cpu)
