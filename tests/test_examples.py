"""The digits models shipped in ember/data (made by examples/train_digits.py): they load, the
held-out set is what the demo expects, and ember reproduces onnxruntime and the accuracy
that training reported."""

from __future__ import annotations

from importlib import resources

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import ember
from tests.harness import relative_l2

DATA = resources.files("ember") / "data"
MODELS = ("mlp", "cnn")


@pytest.fixture(scope="module")
def heldout() -> dict[str, np.ndarray]:
    with resources.as_file(DATA / "digits_test.npz") as path, np.load(path) as data:
        return {key: data[key] for key in data.files}


def _model_input(name: str, images: np.ndarray) -> np.ndarray:
    """The MLP takes flattened N x 64 images; the CNN takes N x 1 x 8 x 8."""
    return images.reshape(len(images), -1) if name == "mlp" else images


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_loads(name: str) -> None:
    blob = (DATA / f"digits_{name}.onnx").read_bytes()
    assert len(blob) < 1 << 20
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert graph_input.name == "input" and graph_output.name == "logits"
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph_output.type.tensor_type.shape.dim[0].dim_param == "batch"
    ops = {node.op_type for node in model.graph.node}
    expected = {"Gemm", "Relu"} if name == "mlp" else {
        "Conv", "BatchNormalization", "Relu", "MaxPool", "Flatten", "Gemm"}
    assert ops == expected


def test_heldout_set_shapes(heldout: dict[str, np.ndarray]) -> None:
    images, labels = heldout["images"], heldout["labels"]
    assert images.dtype == np.float32 and labels.dtype == np.int64
    assert images.ndim == 4 and images.shape[1:] == (1, 8, 8)
    assert labels.shape == (len(images),) and len(images) >= 300
    assert 0.0 <= images.min() and images.max() <= 1.0  # pixels 0..16 scaled by 1/16
    assert set(np.unique(labels)) == set(range(10))
    for name in MODELS:
        assert 0.9 <= float(heldout[f"accuracy_{name}"]) <= 1.0


@pytest.mark.parametrize("name", MODELS)
def test_model_accuracy_and_onnxruntime(name: str, any_target: str,
                                        heldout: dict[str, np.ndarray]) -> None:
    blob = (DATA / f"digits_{name}.onnx").read_bytes()
    x = _model_input(name, heldout["images"])
    model = ember.compile(blob, target=any_target, input_shapes={"input": x.shape})
    logits = model(input=x)["logits"]
    expected = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": x})[0]
    assert logits.shape == (len(x), 10) and logits.dtype == np.float32
    assert relative_l2(logits, expected) <= 1e-4
    accuracy = float((logits.argmax(axis=1) == heldout["labels"]).mean())
    assert accuracy >= float(heldout[f"accuracy_{name}"]) - 0.01
