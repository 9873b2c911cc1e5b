"""Train the two small digit classifiers that ship with ember and export them to ONNX.

Run with the dev environment (torch and scikit-learn are dev-only tools, never ember
dependencies):

    python examples/train_digits.py   (with torch and scikit-learn installed)

It writes ember/data/digits_mlp.onnx, ember/data/digits_cnn.onnx and ember/data/digits_test.npz
(the held-out images, normalised as in training, their labels, and each model's held-out
accuracy as measured here, which tests and `ember demo` compare against). The run is
deterministic: fixed seeds, one thread, deterministic torch algorithms.
"""

from __future__ import annotations

import argparse
import random
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

__all__ = ["DigitsMLP", "DigitsCNN", "load_split", "train", "export", "main"]

SEED = 0
DATA_DIR = Path(__file__).resolve().parent.parent / "ember" / "data"
OPSET = 17


class DigitsMLP(nn.Module):
    """64 -> 128 -> 64 -> 10 with ReLU: exercises Gemm (MatMul + Add) and Relu."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DigitsCNN(nn.Module):
    """1x8x8 -> Conv+BN+ReLU -> Conv+ReLU -> MaxPool -> Flatten -> Gemm: the conv path."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (no download), pixels 0..16 scaled to [0, 1],
    shaped N x 1 x 8 x 8; a stratified, seeded 75/25 split."""
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, random_state=SEED, stratify=labels
    )
    return x_train, x_test, y_train, y_test


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, flatten: bool,
          epochs: int, seed: int = SEED) -> nn.Module:
    """Plain Adam with a cosine schedule; the shuffling generator is seeded per model."""
    _seed_everything(seed)
    inputs = torch.from_numpy(x.reshape(len(x), -1) if flatten else x)
    targets = torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), 32):
            batch = order[start:start + 32]
            optimizer.zero_grad()
            loss_fn(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, *, flatten: bool) -> float:
    inputs = torch.from_numpy(x.reshape(len(x), -1) if flatten else x)
    return float((model(inputs).argmax(1).numpy() == y).mean())


def export(model: nn.Module, example: torch.Tensor, path: Path, doc: str) -> None:
    """ONNX opset 17, input "input", output "logits", batch dim named "batch". Training
    mode is preserved (the model is in eval mode) so BatchNormalization stays its own node
    instead of being folded into the Conv by the exporter: ember's fusion does that."""
    with warnings.catch_warnings():  # the legacy exporter's deprecation and folding notes
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    proto.doc_string = doc
    proto.producer_name = "ember examples/train_digits.py"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="where to write the files")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    x_train, x_test, y_train, y_test = load_split()
    print(f"digits: {len(x_train)} train, {len(x_test)} held out")
    results: dict[str, float] = {}
    for name, factory, flatten in (("mlp", DigitsMLP, True), ("cnn", DigitsCNN, False)):
        _seed_everything(SEED)
        model = train(factory(), x_train, y_train, flatten=flatten, epochs=args.epochs)
        results[name] = accuracy(model, x_test, y_test, flatten=flatten)
        example = torch.from_numpy(x_test[:2].reshape(2, -1) if flatten else x_test[:2])
        path = args.out / f"digits_{name}.onnx"
        export(model, example, path, f"{factory.__doc__} Held-out accuracy "
               f"{results[name]:.4f} on {len(x_test)} digits.")
        ops = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
        print(f"{name}: held-out accuracy {results[name]:.4f}; "
              f"{path.stat().st_size / 1024:.1f} KiB, ops {', '.join(ops)}")

    np.savez_compressed(
        args.out / "digits_test.npz",
        images=x_test.astype(np.float32),  # N x 1 x 8 x 8; the MLP takes them as N x 64
        labels=y_test.astype(np.int64),
        accuracy_mlp=np.float64(results["mlp"]),
        accuracy_cnn=np.float64(results["cnn"]),
    )
    print(f"wrote {args.out}/digits_mlp.onnx, digits_cnn.onnx, digits_test.npz")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
