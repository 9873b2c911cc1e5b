"""ONNX's own backend node tests (from the installed onnx package), scoped to ember's ops.

Every node test onnx ships is in scope. `python -m tests.onnx_node_suite [SUBSTRING]` runs
the cases directly and prints each failure with its reason and the pass rate; the pytest
module `test_onnx_node_suite.py` runs the same cases the way onnx's own runner compares.
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

# Cases ember does not pass, each with its reason (the README's table lists them by op).
# Every case onnxruntime passes is passed except the float16 attention case below; the
# others onnxruntime fails too.
_REASONS: dict[str, tuple[str, ...]] = {
    "training-only: optimizer steps of the ai.onnx.preview.training domain update weights; "
    "ember compiles inference": (
        "test_adagrad", "test_adagrad_multiple", "test_adam", "test_adam_multiple",
        "test_momentum", "test_nesterov_momentum", "test_momentum_multiple"),
    "training-only: random dropout; ember compiles deterministic inference": (
        "test_training_dropout_default", "test_training_dropout_default_mask",
        "test_training_dropout", "test_training_dropout_mask"),
    "random sampling (Bernoulli, RandomUniformLike): the expected values come from one "
    "generator's stream; ember compiles deterministic inference": (
        "test_bernoulli", "test_bernoulli_expanded", "test_bernoulli_double",
        "test_bernoulli_double_expanded", "test_bernoulli_seed", "test_bernoulli_seed_expanded"),
    "FLOAT8E8M0 (ONNX type 24) is not an ember dtype: its cast rounds up, which ml_dtypes' "
    "conversion does not do": (
        "test_cast_e8m0_FLOAT_to_FLOAT8E8M0", "test_cast_e8m0_FLOAT16_to_FLOAT8E8M0",
        "test_cast_e8m0_FLOAT8E8M0_to_FLOAT", "test_cast_e8m0_FLOAT8E8M0_to_FLOAT16"),
    "float8/float4 quantization: ember quantizes to and dequantizes from integer types only "
    "(int2..int16, uint2..uint16, int32)": (
        "test_dequantizelinear_e4m3fn", "test_dequantizelinear_e4m3fn_float16",
        "test_dequantizelinear_e4m3fn_zero_point", "test_dequantizelinear_e5m2",
        "test_dequantizelinear_float4e2m1", "test_quantizelinear_e4m3fn",
        "test_quantizelinear_e5m2", "test_quantizelinear_float4e2m1"),
    "ImageDecoder decodes JPEG/PNG/... bytes: an image codec, not a tensor computation; decode "
    "before calling ember": tuple(
        f"test_image_decoder_decode_{kind}" for kind in (
            "jpeg_rgb", "jpeg_grayscale", "jpeg_bgr", "jpeg2k_rgb", "bmp_rgb", "png_rgb",
            "tiff_rgb", "webp_rgb", "pnm_rgb")),
    "ai.onnx.preview.FlexAttention (a preview-domain op with score/prob subgraphs) is not "
    "converted": tuple(
        f"test_flexattention{suffix}" for suffix in (
            "", "_scaled", "_gqa", "_diff_head_sizes", "_score_mod", "_prob_mod", "_fp16",
            "_double", "_causal_mask", "_soft_cap", "_relative_positional")),
    "onnx's runner cannot compare 0-d arrays inside a sequence (it calls len() on them); "
    "ember's values match item by item": ("test_loop16_seq_none",),
    "float16 Softmax is computed in float32 and rounded once; the expected values round each "
    "step in float16, one half-precision step away at 0.5 (relative 1.2e-3 against rtol "
    "1e-3)": ("test_attention_4d_causal_fp16_expanded",),
}
KNOWN_FAILURES: dict[str, str] = {
    name: reason for reason, names in _REASONS.items() for name in names}


@functools.lru_cache(maxsize=1)
def in_scope_cases() -> tuple:
    import warnings

    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = load_model_tests(kind="node")
    return tuple(c for c in cases if c.model is not None)


def run_case(case, device: str = "CPU") -> None:
    """Run one node test case through ember's backend on `device` (an ONNX device string:
    "CPU" is ember's default target); raise AssertionError on mismatch."""
    from ember.onnx_backend import EmberBackend

    rep = EmberBackend.prepare(case.model, device)
    for inputs, expected in case.data_sets:
        expected = [_as_array(r) for r in expected]
        outputs = rep.run([_as_array(a) for a in inputs])
        # The comparison of onnx's own runner, so that this report and the pytest run agree.
        Runner.assert_similar_outputs(expected, list(outputs), rtol=case.rtol, atol=case.atol)


def _as_array(value):
    """A case's value as onnx's runner hands it over: an array, a list for a sequence (its
    items kept apart, ragged ones too), None for an empty optional."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, onnx.SequenceProto):
        return numpy_helper.to_list(value)
    if isinstance(value, onnx.OptionalProto):
        return numpy_helper.to_optional(value)
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_as_array(item) for item in value]
    return np.asarray(value)


def run_case_onnxruntime(case) -> None:
    """The same case through onnxruntime's backend, compared the same way."""
    import onnxruntime
    import onnxruntime.backend as ort_backend

    onnxruntime.set_default_logger_severity(3)  # its warnings about unused initializers
    rep = ort_backend.prepare(case.model, "CPU")
    for inputs, expected in case.data_sets:
        outputs = rep.run([_as_array(a) for a in inputs])
        Runner.assert_similar_outputs([_as_array(r) for r in expected], list(outputs),
                                      rtol=case.rtol, atol=case.atol)


def _failure(run, case, verbose: bool) -> str | None:
    """None when `run(case)` passes, else the first line of why (with the traceback)."""
    try:
        run(case)
    except Exception as exc:  # noqa: BLE001 - a report lists every kind of failure
        text = str(exc).strip()
        message = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
        return message + ("\n" + traceback.format_exc() if verbose else "")
    return None


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.onnx_node_suite")
    parser.add_argument("pattern", nargs="?", default="", help="run cases whose name has it")
    parser.add_argument("-v", action="store_true", help="print each failure's traceback")
    parser.add_argument("--onnxruntime", action="store_true",
                        help="run every case through onnxruntime too and compare the lists")
    args = parser.parse_args(argv)
    cases = [c for c in in_scope_cases() if args.pattern in c.name]
    start = time.perf_counter()
    failed = {c.name: why for c in cases if (why := _failure(run_case, c, args.v))}
    for name, message in failed.items():
        print(f"FAIL {name}: {message}")
    passed = len(cases) - len(failed)
    print(f"{passed}/{len(cases)} node tests pass "
          f"({100.0 * passed / max(len(cases), 1):.1f}%) in {time.perf_counter() - start:.0f}s")
    if args.onnxruntime:
        ort_failed = {c.name for c in cases if _failure(run_case_onnxruntime, c, False)}
        behind = sorted(set(failed) - ort_failed)
        print(f"onnxruntime passes {len(cases) - len(ort_failed)}; ember passes "
              f"{len(ort_failed - set(failed))} that onnxruntime fails and fails "
              f"{len(behind)} that it passes{': ' + ', '.join(behind) if behind else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
