"""The digits models shipped in ember/data (made by examples/train_digits.py): they load, the
held-out set is what the demo expects, and ember reproduces onnxruntime and the accuracy
that training reported. The same for the trained models in examples/models (made by
examples/train_quant_models.py), which quantization accuracy is measured on."""

from __future__ import annotations

from importlib import resources

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import ember
from tests.example_models import EXAMPLE_MODEL_NAMES, load_example
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


@pytest.mark.parametrize("name", EXAMPLE_MODEL_NAMES)
def test_trained_example_model_and_data(name: str) -> None:
    example = load_example(name)
    assert example.path.stat().st_size < 200 * 1024
    model = onnx.load(str(example.path))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert graph_input.name == "input" and graph_output.name == "logits"
    for value in (graph_input, graph_output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    sample_shape = tuple(d.dim_value for d in graph_input.type.tensor_type.shape.dim[1:])
    classes = graph_output.type.tensor_type.shape.dim[1].dim_value
    for x in (example.calib_x, example.test_x):
        assert x.dtype == np.float32 and x.shape[1:] == sample_shape and len(x) >= 50
    assert example.test_y.dtype == np.int64 and example.test_y.shape == (len(example.test_x),)
    assert set(np.unique(example.test_y)) == set(range(classes))
    assert example.min_accuracy <= example.accuracy <= 1.0


@pytest.mark.parametrize("name", EXAMPLE_MODEL_NAMES)
def test_trained_example_model_accuracy(name: str, any_target: str) -> None:
    """Compiled as users do (a path, the batch dim left to the first call)."""
    example = load_example(name)
    model = ember.compile(example.path, target=any_target)
    logits = model(input=example.test_x)["logits"]
    expected = ort.InferenceSession(str(example.path), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": example.test_x})[0]
    assert logits.shape == expected.shape and logits.dtype == np.float32
    assert relative_l2(logits, expected) <= 1e-4
    accuracy = example.accuracy_of(logits)
    assert accuracy >= example.min_accuracy
    assert accuracy >= example.accuracy - 0.01
