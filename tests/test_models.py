"""Real-architecture models (tests/models/, made by examples/make_test_models.py) through
ember.compile on the OpenCL device and on the numpy executor, against onnxruntime.

The models are scaled-down ResNet, MobileNetV2, BERT and GPT-2 exports with seeded random
weights, so they carry the op mixes real exports produce (Conv+BatchNormalization, depthwise
Conv, Clip as ReLU6, HardSwish, Gemm, LayerNormalization, Softmax, Gather embeddings, the
attention-mask arithmetic, shape arithmetic over dynamic dims). The bound is a relative L2
error of 1e-4 in float32: summation order differs between ember and onnxruntime, so the
outputs cannot agree bit for bit, but a wrong op (layout, axis, broadcast, mask) shows up as
an error of order 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import ember
from tests.harness import relative_l2

MODELS = Path(__file__).resolve().parent / "models"
REL_L2 = 1e-4  # float32 models, outputs of order 1
VOCAB = 1000  # the vocabulary of bert_mini and gpt2_mini
SEQ = 128  # the sequence length of the transformer tests

Feeds = dict[str, np.ndarray]


def image(seed: int, size: int = 64) -> Feeds:
    return {"input": np.random.default_rng(seed).standard_normal((1, 3, size, size),
                                                                 dtype=np.float32)}


def tokens(seed: int, length: int, padded: int = 0, mask: bool = True) -> Feeds:
    """Random token ids; the attention mask is 1 for the real tokens and 0 for the last
    `padded` positions, as a tokenizer pads a shorter sentence to the batch length."""
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(0, VOCAB, (1, length), dtype=np.int64)}
    if mask:
        attention = np.ones((1, length), np.int64)
        if padded:
            attention[:, -padded:] = 0
        feeds["attention_mask"] = attention
    return feeds


def onnxruntime_outputs(path: Path, feeds: Feeds) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def compare(model: ember.CompiledModel, path: Path, feeds: Feeds, what: str) -> None:
    """Every output of `model` within REL_L2 of onnxruntime's, same shape and dtype."""
    expected = onnxruntime_outputs(path, feeds)
    actual = model(**feeds)
    assert sorted(actual) == sorted(expected), f"{what}: output names differ"
    for name, want in expected.items():
        got = actual[name]
        assert got.shape == want.shape, f"{what} {name}: shape {got.shape} != {want.shape}"
        assert got.dtype == want.dtype, f"{what} {name}: dtype {got.dtype} != {want.dtype}"
        assert np.isfinite(want).all(), f"{what} {name}: onnxruntime's output is not finite"
        error = relative_l2(got, want)
        assert error <= REL_L2, f"{what} {name}: relative L2 error {error:.3g} > {REL_L2}"


def assert_on_device(model: ember.CompiledModel, what: str) -> None:
    """On an OpenCL target every float32 op must have a kernel: no step may fall back to
    the host."""
    if model.device is None:
        return
    host = [f"{s.op} {s.name!r}" for s in model.plan.host_steps]
    assert not host, f"{what}: {len(host)} step(s) ran on the host: {', '.join(host[:12])}"


def compile_model(name: str, target: str, feeds: Feeds) -> tuple[ember.CompiledModel, Path]:
    path = MODELS / f"{name}.onnx"
    if not path.is_file():
        pytest.fail(f"{path} is missing; run python "
                    "examples/make_test_models.py")
    shapes = {k: v.shape for k, v in feeds.items()}
    return ember.compile(path, target=target, input_shapes=shapes), path


CNNS: dict[str, Callable[[int], Feeds]] = {
    "resnet_mini": image,
    "mobilenetv2_mini": image,
}


@pytest.mark.parametrize("name", sorted(CNNS))
def test_cnn_matches_onnxruntime(name: str, any_target: str) -> None:
    feeds = CNNS[name](0)
    model, path = compile_model(name, any_target, feeds)
    compare(model, path, feeds, f"{name} on {any_target}")
    # A second image through the same compiled model: buffers are reused correctly.
    compare(model, path, CNNS[name](1), f"{name} on {any_target} (second call)")
    assert_on_device(model, name)


def test_bert_matches_onnxruntime_and_respecializes(any_target: str) -> None:
    feeds = tokens(0, SEQ, padded=SEQ // 4)
    model, path = compile_model("bert_mini", any_target, feeds)
    compare(model, path, feeds, f"bert_mini seq {SEQ} on {any_target}")
    # A shorter sentence: the symbolic sequence dim is specialized again at call time,
    # and the first specialization still answers afterwards.
    short = tokens(1, 37, padded=5)
    compare(model, path, short, f"bert_mini seq 37 on {any_target}")
    compare(model, path, tokens(2, SEQ, padded=3), f"bert_mini seq {SEQ} again on {any_target}")
    assert_on_device(model, "bert_mini")


def test_bert_padding_changes_output(any_target: str) -> None:
    """The mask must reach the attention: masking the tail changes the unmasked tokens'
    states (guards against a mask that is imported but dropped)."""
    full = tokens(3, 24)
    padded = dict(full, attention_mask=tokens(3, 24, padded=8)["attention_mask"])
    model, path = compile_model("bert_mini", any_target, full)
    a = model(**full)["last_hidden_state"][:, :16]
    b = model(**padded)["last_hidden_state"][:, :16]
    assert relative_l2(a, b) > 1e-3
    compare(model, path, padded, f"bert_mini padded on {any_target}")


def test_gpt2_matches_onnxruntime(any_target: str) -> None:
    feeds = tokens(4, SEQ, mask=False)
    model, path = compile_model("gpt2_mini", any_target, feeds)
    compare(model, path, feeds, f"gpt2_mini seq {SEQ} on {any_target}")
    # Causality: changing the last token leaves every earlier position's logits alone.
    changed = {"input_ids": feeds["input_ids"].copy()}
    changed["input_ids"][0, -1] = (changed["input_ids"][0, -1] + 1) % VOCAB
    before = model(**feeds)["logits"]
    after = model(**changed)["logits"]
    np.testing.assert_allclose(after[:, :-1], before[:, :-1], rtol=0, atol=1e-5)
    assert_on_device(model, "gpt2_mini")


@pytest.mark.parametrize("opt_level", [0, 3])
@pytest.mark.parametrize("name, feeds", [
    ("resnet_mini", lambda: image(5)),
    ("mobilenetv2_mini", lambda: image(6)),
    ("bert_mini", lambda: tokens(7, SEQ, padded=SEQ // 4)),
    ("gpt2_mini", lambda: tokens(8, SEQ, mask=False)),
])
def test_models_match_onnxruntime_at_every_level(name: str, feeds: Callable[[], Feeds],
                                                 opt_level: int, opencl_target: str) -> None:
    """The tests above run the default O2; the unoptimized and the most optimized pipelines
    must agree with onnxruntime just as well."""
    data = feeds()
    path = MODELS / f"{name}.onnx"
    model = ember.compile(path, target=opencl_target, opt_level=opt_level,
                          input_shapes={k: v.shape for k, v in data.items()})
    compare(model, path, data, f"{name} at O{opt_level}")
    assert_on_device(model, name)
