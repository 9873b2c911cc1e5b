"""Every kernel builder on Oclgrind: each registered op's kernel once or a few times on
small odd shapes (partial vectors and tiles, broadcasts, strides, padding), compiled at
opt_level 0 in strict mode (so it really runs as a device kernel) for the families whose
strategies differ (target "oclgrind@FAMILY"), checked against the numpy reference, and
without one invalid access.

Builders that choose by family (GEMM, convolutions, attention, row kernels, reductions)
run for every family; the others choose by CPU or GPU at most and run for "gpu" and "cpu".
The conv_rows strategy's kernels (CPU family, few input channels) are checked in
test_search_spaces.py: Oclgrind cannot load most of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from ember.ir import DType
from tests.harness import check_op
from tests.oclgrind.conftest import FAMILY_NAMES
from tests.strategies import array_for

pytestmark = pytest.mark.oclgrind

F32, I32, I64, BOOL = DType.FLOAT32, DType.INT32, DType.INT64, DType.BOOL
I8, U8 = DType.INT8, DType.UINT8
CPU_AND_GPU = ("gpu", "cpu")


def f32(seed: int, *shape: int, low: float = -4.0, high: float = 4.0) -> np.ndarray:
    return array_for(seed, shape, F32, low=low, high=high)


def indices(seed: int, shape: tuple[int, ...], bound: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, bound, size=shape).astype(np.int64)


def tuples(seed: int, lead: tuple[int, ...], dims: tuple[int, ...]) -> np.ndarray:
    """GatherND indices of shape lead + (len(dims),), negative half the time."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(-d, d, size=lead) for d in dims], axis=-1).astype(np.int64)


@dataclass(frozen=True)
class Case:
    op: str
    arrays: Callable[[], list[np.ndarray]]
    attrs: dict[str, Any] = field(default_factory=dict)
    families: tuple[str, ...] = CPU_AND_GPU
    name: str = ""


CASES = [
    # elementwise (vectorized on the CPU family)
    Case("Add", lambda: [f32(1, 3, 37), f32(2, 37)]),
    Case("Div", lambda: [f32(3, 5, 1, 7), f32(4, 3, 7, low=0.5)]),
    Case("Pow", lambda: [f32(5, 41, low=0.1), f32(6, 41, low=-2, high=2)]),
    Case("Log", lambda: [f32(7, 3, 37, low=0.01)]),
    Case("Erf", lambda: [f32(8, 3, 37)]),
    Case("Tanh", lambda: [f32(9, 3, 37)]),
    Case("Gelu", lambda: [f32(10, 3, 37)]),
    Case("Clip", lambda: [f32(11, 3, 37)], {"min": -1.0, "max": 2.0}),
    Case("Where", lambda: [array_for(12, (3, 37), BOOL), f32(13, 3, 37), f32(14, 37)]),
    Case("Cast", lambda: [f32(15, 3, 37)], {"to": I32}),
    Case("Less", lambda: [f32(16, 3, 37), f32(17, 3, 1)]),
    Case("Xor", lambda: [array_for(18, (3, 37), BOOL), array_for(19, (37,), BOOL)]),
    # linear algebra
    Case("MatMul", lambda: [f32(20, 17, 31), f32(21, 31, 19)], families=FAMILY_NAMES),
    Case("MatMul", lambda: [f32(22, 2, 5, 7), f32(23, 2, 7, 11)], families=FAMILY_NAMES,
         name="batched"),
    Case("MatMul", lambda: [f32(24, 1, 33), f32(25, 33, 19)], families=FAMILY_NAMES,
         name="gemv"),
    Case("MatMul", lambda: [array_for(26, (5, 13), I32), array_for(27, (13, 11), I32)],
         families=FAMILY_NAMES, name="int32"),
    Case("Conv", lambda: [f32(28, 1, 6, 11, 13), f32(29, 5, 6, 3, 3)],
         {"strides": (2, 2), "pads": (1, 1, 1, 1)}, FAMILY_NAMES),
    Case("Conv", lambda: [f32(30, 1, 5, 13, 19), f32(31, 5, 1, 3, 3)],
         {"group": 5, "strides": (2, 2), "pads": (1, 1, 1, 1)}, FAMILY_NAMES, "depthwise"),
    Case("ConvTranspose", lambda: [f32(32, 1, 3, 5, 7), f32(33, 3, 4, 3, 3)],
         {"strides": (2, 2), "pads": (1, 1, 1, 1)}, FAMILY_NAMES),
    Case("BatchNormalization", lambda: [f32(34, 1, 3, 5, 7), f32(35, 3), f32(36, 3),
                                        f32(37, 3), f32(38, 3, low=0.5)]),
    Case("Attention", lambda: [f32(39, 2, 13, 16), f32(40, 2, 19, 16), f32(41, 2, 19, 24),
                               f32(42, 1, 13, 19)], {"scale": 0.25}, FAMILY_NAMES),
    # ONNX Attention's form: K/V heads shared by 2 query heads, softcap, a row with no key
    Case("Attention", lambda: [f32(121, 2, 2, 3, 8), f32(122, 2, 1, 7, 8), f32(123, 2, 1, 7, 6),
                               np.concatenate([np.full((1, 7), -np.inf, np.float32),
                                               f32(124, 2, 7)])],
         {"scale": 0.3, "softcap": 2.0, "zero_masked_rows": 1}, name="onnx"),
    # PyTorch SDPA's NaN guard absorbed: a row with no key and a row made NaN by +inf
    Case("Attention", lambda: [f32(128, 1, 3, 8), f32(129, 1, 7, 8), f32(130, 1, 7, 6),
                               np.stack([np.full(7, -np.inf, np.float32),
                                         np.r_[np.float32(np.inf), f32(131, 6)],
                                         f32(132, 7)])],
         {"scale": 0.3, "zero_masked_rows": 2}, name="nan_guard"),
    Case("RotaryEmbedding", lambda: [f32(125, 2, 3, 5, 10), f32(126, 1, 5, 4), f32(127, 1, 5, 4)],
         {"interleaved": 1, "rotary_dim": 8, "seq_axis": 2}),
    # row kernels
    Case("Softmax", lambda: [f32(43, 3, 37)], {"axis": -1}, FAMILY_NAMES),
    Case("LogSoftmax", lambda: [f32(44, 5, 3, 7)], {"axis": 1}, FAMILY_NAMES),
    Case("LogSoftmax", lambda: [f32(45, 5, 37)], {"axis": -1}, FAMILY_NAMES),
    Case("LayerNormalization", lambda: [f32(45, 5, 33), f32(46, 33), f32(47, 33)],
         {"axis": -1}, FAMILY_NAMES),
    Case("InstanceNormalization", lambda: [f32(48, 2, 3, 17), f32(49, 3), f32(50, 3)],
         families=FAMILY_NAMES),
    Case("RMSNormalization", lambda: [f32(51, 5, 33), f32(52, 33)], families=FAMILY_NAMES),
    Case("LRN", lambda: [f32(53, 1, 5, 3, 7)], {"size": 3}),
    # pooling and reductions
    Case("MaxPool", lambda: [f32(54, 1, 2, 9, 11)],
         {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}),
    Case("AveragePool", lambda: [f32(55, 1, 2, 9, 11)],
         {"kernel_shape": (3, 2), "strides": (2, 1), "pads": (1, 0, 1, 1)}),
    Case("GlobalAveragePool", lambda: [f32(56, 1, 3, 5, 7)]),
    Case("GlobalMaxPool", lambda: [f32(57, 1, 3, 5, 7)]),
    Case("ReduceSum", lambda: [f32(58, 3, 37, 5)], {"axes": (1,)}, FAMILY_NAMES),
    Case("ReduceMax", lambda: [f32(59, 3, 7, 5)], {"axes": (0, 2), "keepdims": 0},
         FAMILY_NAMES),
    Case("ReduceMean", lambda: [f32(60, 2, 4099)], {"axes": (1,)}, FAMILY_NAMES, "long"),
    Case("ArgMax", lambda: [f32(61, 5, 19)], {"axis": 1}),
    Case("CumSum", lambda: [f32(62, 4, 19, 3)], {"axis": 1, "exclusive": 1, "reverse": 1}),
    Case("TopK", lambda: [f32(63, 5, 19)], {"k": 4}),
    # data movement
    Case("Transpose", lambda: [f32(64, 2, 3, 5)], {"perm": (2, 0, 1)}),
    Case("Reshape", lambda: [f32(65, 3, 10)], {"shape": (5, 6)}),
    Case("Slice", lambda: [f32(66, 5, 7)], {"starts": (1, 0), "ends": (4, 7), "steps": (1, 2)}),
    Case("Expand", lambda: [f32(67, 3, 1)], {"shape": (2, 3, 5)}),
    Case("Tile", lambda: [f32(68, 2, 3)], {"repeats": (2, 3)}),
    Case("DepthToSpace", lambda: [f32(69, 1, 8, 3, 5)], {"blocksize": 2}),
    Case("SpaceToDepth", lambda: [f32(70, 1, 2, 6, 10)], {"blocksize": 2}),
    Case("Concat", lambda: [f32(71, 2, 3), f32(72, 2, 5)], {"axis": 1}),
    Case("Split", lambda: [f32(73, 7, 3)], {"axis": 0, "splits": (3, 4)}),
    Case("Pad", lambda: [f32(74, 3, 5)], {"pads": (1, 2, 0, 1), "mode": "reflect"}),
    Case("Gather", lambda: [f32(75, 5, 7), indices(76, (3, 2), 7)], {"axis": 1}),
    Case("GatherElements", lambda: [f32(77, 5, 7), indices(78, (5, 3), 7)], {"axis": 1}),
    # batch_dims 1, negative indices; rows of 17 (2-D launch) and of 1 element
    Case("GatherND", lambda: [f32(101, 2, 5, 3, 17), tuples(102, (2, 4), (5, 3))],
         {"batch_dims": 1}),
    Case("GatherND", lambda: [f32(103, 5, 7), tuples(104, (3,), (5, 7))], name="scalars"),
    Case("OneHot", lambda: [indices(79, (5,), 7)],
         {"depth": 7, "values": np.array([0.0, 1.0], np.float32)}),
    Case("Trilu", lambda: [f32(80, 5, 7)], {"upper": 0, "k": 1}),
    Case("Resize", lambda: [f32(81, 1, 1, 5, 6)],
         {"sizes": (1, 1, 7, 9), "scales": (1.0, 1.0, 1.4, 1.5), "mode": "linear"}),
    Case("Identity", lambda: [f32(82, 3, 5)]),
    # quantized (the kernels and their epilogues: tests/oclgrind/test_quant_kernels.py)
    Case("MatMulInteger", lambda: [array_for(83, (5, 13), I8), array_for(84, (13, 11), U8),
                                   array_for(85, (), I8), array_for(86, (11,), U8)],
         families=FAMILY_NAMES),
    Case("ConvInteger", lambda: [array_for(87, (1, 6, 11, 13), U8),
                                 array_for(88, (5, 6, 3, 3), I8), array_for(89, (), U8),
                                 array_for(90, (5,), I8)],
         {"strides": (2, 2), "pads": (1, 1, 1, 1)}, FAMILY_NAMES),
    Case("BlockQuantMatMul", lambda: [f32(91, 2, 37), array_for(92, (13, 3, 8), U8, high=10),
                                      f32(93, 13, 3, low=0.01, high=0.1),
                                      array_for(94, (13, 3), U8, low=0, high=0.6)],
         {"bits": 4, "block_size": 16, "k": 37, "n": 13}),
    # prefill rows: the CPU family's panel GEMM (qgemm_cpu), the GPU's row loop
    Case("BlockQuantMatMul", lambda: [f32(105, 9, 37), array_for(106, (13, 3, 8), U8),
                                      f32(107, 13, 3, low=0.01, high=0.1),
                                      array_for(108, (13, 3), U8, low=0, high=0.6)],
         {"bits": 4, "block_size": 16, "k": 37, "n": 13}, name="prefill"),
    Case("QuantizeLinear", lambda: [f32(95, 3, 37, low=-50, high=50), f32(96, 37, low=0.1),
                                    array_for(97, (37,), U8)]),
    Case("DequantizeLinear", lambda: [array_for(98, (3, 37), I8), f32(99, 37, low=0.1),
                                      array_for(100, (), I8)]),
    # more modes and paddings in tests/oclgrind/test_vision_kernels.py
    Case("GridSample", lambda: [f32(101, 2, 3, 5, 7), f32(102, 2, 4, 6, 2, low=-1.3, high=1.3)],
         {"mode": "linear", "padding_mode": "zeros"}),
    # every cell, direction and phase in tests/oclgrind/test_recurrent.py
    Case("LSTMRecurrence", lambda: [f32(103, 3, 2, 8 * 5, low=-1, high=1),
                                    f32(104, 2, 20, 5, low=-0.5, high=0.5),
                                    np.array([3, 1], np.int32), f32(109, 2, 2, 5),
                                    f32(110, 2, 2, 5), f32(111, 2, 15)],
         {"direction": "bidirectional"}),
]

PARAMS = [pytest.param(case, family, id=f"{case.op}{'-' + case.name if case.name else ''}-{family}")
          for case in CASES for family in case.families]


@pytest.mark.parametrize("case, family", PARAMS)
def test_kernel_is_memory_safe_and_correct(case: Case, family: str):
    model = check_op(case.op, case.arrays(), case.attrs, target=f"oclgrind@{family}")
    assert model.device.info.traits.simulator and model.device.target.family.name == family


def test_every_kernel_builder_is_covered():
    from ember.codegen.registry import KERNEL_BUILDERS

    builders = {KERNEL_BUILDERS[case.op] for case in CASES}
    missing = {op for op, builder in KERNEL_BUILDERS.items() if builder not in builders}
    assert missing <= {"FusedElementwise"}, sorted(missing)
