"""ONNX's own backend node tests (from the installed onnx package), scoped to ember's ops.

A node test is in scope when every op of its graph is one ember converts (the list below,
plus Constant). `python -m tests.onnx_node_suite [SUBSTRING]` runs the in-scope cases
directly and prints each failure with its reason and the pass rate; the pytest module
`test_onnx_node_suite.py` runs the same cases through onnx's BackendTest runner.
"""

from __future__ import annotations

import functools
import sys
import time
import traceback

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test.runner import Runner

ISSUE_OPS = frozenset("""
Add Sub Mul Div Pow Sqrt Reciprocal Exp Log Neg Abs Floor Ceil Round Sign Erf Tanh Sigmoid
Relu LeakyRelu Elu Selu PRelu Clip HardSigmoid HardSwish Softplus Gelu Mish Sin Cos Where
Equal Less LessOrEqual Greater GreaterOrEqual Not And Or Xor Max Min Mean Sum Cast IsNaN IsInf
MatMul Gemm Conv ConvTranspose BatchNormalization
MaxPool AveragePool GlobalAveragePool GlobalMaxPool
Softmax LogSoftmax LayerNormalization InstanceNormalization LRN ReduceMean ReduceSum ReduceMax
ReduceMin ReduceProd ReduceL2 ReduceSumSquare ArgMax ArgMin CumSum TopK
Reshape Flatten Transpose Squeeze Unsqueeze Concat Split Slice Gather GatherElements Expand
Tile Pad Resize DepthToSpace SpaceToDepth Identity Dropout Shape Size ConstantOfShape Range
OneHot Trilu EyeLike Constant RMSNormalization Swish
QuantizeLinear DequantizeLinear DynamicQuantizeLinear MatMulInteger ConvInteger QLinearMatMul
QLinearConv GatherND ScatterND ScatterElements
""".split())

# Cases in scope that ember does not pass, each with its reason (the README lists them).
_TRAINING = "training mode (batch statistics, random dropout): ember compiles inference only"
_E8M0 = ("FLOAT8E8M0 (ONNX type 24) is not an ember dtype: its cast rounds up, which "
         "ml_dtypes' conversion does not do")
_NOT_TENSOR = "sequence and optional values are not tensors; ember's IR holds tensors only"
_FLOAT8 = ("float8/float4 quantization: ember quantizes to and dequantizes from integer types "
           "only (int2..int16, uint2..uint16, int32)")
KNOWN_FAILURES: dict[str, str] = {
    "test_batchnorm_example_training_mode": _TRAINING,
    "test_batchnorm_epsilon_training_mode": _TRAINING,
    "test_training_dropout_default": _TRAINING,
    "test_training_dropout_default_mask": _TRAINING,
    "test_training_dropout": _TRAINING,
    "test_training_dropout_mask": _TRAINING,
    "test_cast_e8m0_FLOAT_to_FLOAT8E8M0": _E8M0,
    "test_cast_e8m0_FLOAT16_to_FLOAT8E8M0": _E8M0,
    "test_cast_e8m0_FLOAT8E8M0_to_FLOAT": _E8M0,
    "test_cast_e8m0_FLOAT8E8M0_to_FLOAT16": _E8M0,
    "test_identity_sequence": _NOT_TENSOR,
    "test_identity_opt": _NOT_TENSOR,
    "test_dequantizelinear_e4m3fn": _FLOAT8,
    "test_dequantizelinear_e4m3fn_float16": _FLOAT8,
    "test_dequantizelinear_e4m3fn_zero_point": _FLOAT8,
    "test_dequantizelinear_e5m2": _FLOAT8,
    "test_dequantizelinear_float4e2m1": _FLOAT8,
    "test_quantizelinear_e4m3fn": _FLOAT8,
    "test_quantizelinear_e5m2": _FLOAT8,
    "test_quantizelinear_float4e2m1": _FLOAT8,
}


def _graph_ops(graph) -> set[str]:
    ops = set()
    for node in graph.node:
        ops.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}")
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                ops |= _graph_ops(attr.g)
    return ops


@functools.lru_cache(maxsize=1)
def in_scope_cases() -> tuple:
    import warnings

    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = load_model_tests(kind="node")
    return tuple(c for c in cases if c.model is not None and _graph_ops(c.model.graph) <= ISSUE_OPS)


def run_case(case) -> None:
    """Run one node test case through ember's backend; raise AssertionError on mismatch."""
    from ember.onnx_backend import EmberBackend

    rep = EmberBackend.prepare(case.model, "CPU")
    for inputs, expected in case.data_sets:
        expected = [_as_array(r) for r in expected]
        outputs = rep.run([_as_array(a) for a in inputs])
        # The comparison of onnx's own runner, so that this report and the pytest run agree.
        Runner.assert_similar_outputs(expected, list(outputs), rtol=case.rtol, atol=case.atol)


def _as_array(value):
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def main(argv: list[str]) -> int:
    pattern = argv[0] if argv else ""
    cases = [c for c in in_scope_cases() if pattern in c.name]
    failed = []
    start = time.perf_counter()
    for case in cases:
        try:
            run_case(case)
        except Exception as exc:  # noqa: BLE001 - a report lists every kind of failure
            message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            if "-v" in argv:
                message += "\n" + traceback.format_exc()
            failed.append((case.name, message[:300]))
    for name, message in failed:
        print(f"FAIL {name}: {message}")
    passed = len(cases) - len(failed)
    print(f"{passed}/{len(cases)} in-scope node tests pass "
          f"({100.0 * passed / max(len(cases), 1):.1f}%) in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
