"""The trained float32 models in examples/models (made by examples/train_quant_models.py) and
their data, for tests that measure accuracy on real data (quantization among them) without
scikit-learn: a calibration sample of the training split and the held-out split."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

__all__ = ["EXAMPLE_MODELS_DIR", "EXAMPLE_MODEL_NAMES", "ExampleModel", "load_example"]

EXAMPLE_MODELS_DIR = Path(__file__).resolve().parent.parent / "examples" / "models"

# model name -> (its data file's prefix, the held-out accuracy the float model must reach)
_EXAMPLES: dict[str, tuple[str, float]] = {
    "digits_cnn": ("digits", 0.95),
    "breast_cancer_mlp": ("breast_cancer", 0.94),
}
EXAMPLE_MODEL_NAMES = tuple(_EXAMPLES)


@dataclass(frozen=True)
class ExampleModel:
    """One model with its data. Arrays are read-only because loads are shared between tests.
    `accuracy` is the held-out accuracy that training measured (the model's metadata entry
    "heldout_accuracy"); `min_accuracy` is the floor every float run must reach."""

    name: str
    path: Path
    calib_x: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    accuracy: float
    min_accuracy: float

    def accuracy_of(self, logits: np.ndarray) -> float:
        """The fraction of test_x whose largest logit is the label."""
        return float((np.asarray(logits).argmax(axis=1) == self.test_y).mean())


@functools.cache
def load_example(name: str) -> ExampleModel:
    data_prefix, min_accuracy = _EXAMPLES[name]
    path = EXAMPLE_MODELS_DIR / f"{name}.onnx"
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                .metadata_props}
    with np.load(EXAMPLE_MODELS_DIR / f"{data_prefix}_data.npz") as data:
        arrays = {key: data[key] for key in ("calib_x", "test_x", "test_y")}
    for array in arrays.values():
        array.setflags(write=False)
    return ExampleModel(name, path, accuracy=float(metadata["heldout_accuracy"]),
                        min_accuracy=min_accuracy, **arrays)
