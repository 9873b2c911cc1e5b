"""Train two small float32 models on real data, whose accuracy quantization is measured on.

A development tool, never an ember dependency: it needs scikit-learn for the two data sets it
ships with (no download) and nothing else beyond numpy and onnx:

    pip install scikit-learn                        # development only
    python examples/train_quant_models.py           # or: --out DIR

It writes into examples/models/:

- digits_cnn.onnx: 1x8x8 digits -> Conv 3x3 -> Relu -> Conv 3x3 -> Relu -> MaxPool 2x2 ->
  Flatten -> Gemm -> Relu -> Gemm -> 10 logits: LeNet's layout, where the dense head holds
  most of the weights (as in VGG), so that mixed precision has real choices to make.
- breast_cancer_mlp.onnx: 30 raw features -> Sub(mean) -> Div(std) -> MatMul+Add -> Relu ->
  MatMul+Add -> Relu -> MatMul+Add -> 2 logits. The standardization stays in the graph so
  that the raw inputs, whose features span five orders of magnitude, reach the model as
  they are and a quantizer sees the real ranges of each tensor.
- digits_data.npz, breast_cancer_data.npz: calib_x (a calibration sample of the training
  split), test_x and test_y (the held-out split), so that tests need no scikit-learn.

Both models are ONNX opset 17 built with onnx.helper: input "input" and output "logits",
with a dynamic batch dimension named "batch", and the held-out accuracy measured here in the
metadata entry "heldout_accuracy". Training is plain numpy with hand-written backprop and
Adam, seeded: a run on the same machine gives the same files.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

__all__ = ["Split", "breast_cancer_mlp", "breast_cancer_split", "digits_cnn", "digits_split",
           "main", "to_onnx", "train"]

SEED = 0
OPSET = 17
MODELS_DIR = Path(__file__).resolve().parent / "models"
Array = np.ndarray


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Split:
    """A seeded, stratified 75/25 split and a calibration sample drawn from the training part
    (calibration must never see the held-out data it is judged on)."""

    train_x: Array
    train_y: Array
    calib_x: Array
    test_x: Array
    test_y: Array


def _split(x: Array, y: Array, calib_size: int) -> Split:
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y)
    calib = np.random.default_rng(SEED).choice(len(train_x), calib_size, replace=False)
    return Split(train_x, train_y.astype(np.int64), train_x[np.sort(calib)], test_x,
                 test_y.astype(np.int64))


def digits_split() -> Split:
    """scikit-learn's 8x8 digits, pixels 0..16 scaled to [0, 1], shaped N x 1 x 8 x 8."""
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    return _split(images, digits.target, calib_size=128)


def breast_cancer_split() -> Split:
    """The Wisconsin breast-cancer features as they come (30 per sample, unscaled)."""
    data = load_breast_cancer()
    return _split(data.data.astype(np.float32), data.target, calib_size=64)


# ---------------------------------------------------------------- layers


@dataclass
class Graph:
    """ONNX nodes and initializers as the layers emit them, with fresh tensor names."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    counter: int = 0

    def name(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}_{self.counter}"

    def const(self, hint: str, value: Array) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str | None = None,
             **attrs: object) -> str:
        output = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [output], **attrs))
        return output


class Layer:
    """forward keeps what backward needs; backward returns the input gradient and fills
    `grads` (same keys as `params`)."""

    params: dict[str, Array]
    grads: dict[str, Array]

    def __init__(self) -> None:
        self.params, self.grads = {}, {}

    def forward(self, x: Array) -> Array:
        raise NotImplementedError

    def backward(self, grad: Array) -> Array:
        raise NotImplementedError

    def emit(self, graph: Graph, x: str) -> str:
        raise NotImplementedError


class Standardize(Layer):
    """(x - mean) / std with the training split's statistics: fixed, not trained."""

    def __init__(self, x: Array) -> None:
        super().__init__()
        self.mean = x.mean(axis=0).astype(np.float32)
        self.std = x.std(axis=0).astype(np.float32)

    def forward(self, x: Array) -> Array:
        return (x - self.mean) / self.std

    def backward(self, grad: Array) -> Array:
        return grad / self.std

    def emit(self, graph: Graph, x: str) -> str:
        centred = graph.node("Sub", [x, graph.const("mean", self.mean)])
        return graph.node("Div", [centred, graph.const("std", self.std)])


class Dense(Layer):
    """y = x @ w + b; exported as MatMul + Add, or as one Gemm (weights stored transposed,
    transB=1, as most exporters write it)."""

    def __init__(self, rng: np.random.Generator, n_in: int, n_out: int, *, gemm: bool) -> None:
        super().__init__()
        self.gemm = gemm
        self.params = {"w": (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
                             ).astype(np.float32),
                       "b": np.zeros(n_out, np.float32)}

    def forward(self, x: Array) -> Array:
        self.x = x
        return x @ self.params["w"] + self.params["b"]

    def backward(self, grad: Array) -> Array:
        self.grads = {"w": self.x.T @ grad, "b": grad.sum(axis=0)}
        return grad @ self.params["w"].T

    def emit(self, graph: Graph, x: str) -> str:
        w, b = self.params["w"], self.params["b"]
        if self.gemm:
            return graph.node("Gemm", [x, graph.const("weight", np.ascontiguousarray(w.T)),
                                       graph.const("bias", b)], transB=1)
        product = graph.node("MatMul", [x, graph.const("weight", w)])
        return graph.node("Add", [product, graph.const("bias", b)])


class Relu(Layer):
    def forward(self, x: Array) -> Array:
        self.positive = x > 0
        return x * self.positive

    def backward(self, grad: Array) -> Array:
        return grad * self.positive

    def emit(self, graph: Graph, x: str) -> str:
        return graph.node("Relu", [x])


class Conv3x3(Layer):
    """A 3x3 convolution, stride 1, padding 1 (same size), computed as one matrix product
    over the nine shifted copies of the padded input."""

    def __init__(self, rng: np.random.Generator, c_in: int, c_out: int) -> None:
        super().__init__()
        fan_in = c_in * 9
        self.params = {"w": (rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2.0 / fan_in)
                             ).astype(np.float32),
                       "b": np.zeros(c_out, np.float32)}

    @staticmethod
    def _columns(x: Array) -> Array:
        """N x C x H x W -> (N*H*W) x (C*9), column order (c, kh, kw) as the weights."""
        n, c, h, w = x.shape
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        taps = np.stack([padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                        axis=2)  # N x C x 9 x H x W
        return taps.transpose(0, 3, 4, 1, 2).reshape(n * h * w, c * 9)

    def forward(self, x: Array) -> Array:
        n, _, h, w = x.shape
        self.shape = x.shape
        self.cols = self._columns(x)
        kernel = self.params["w"].reshape(len(self.params["b"]), -1)
        out = self.cols @ kernel.T + self.params["b"]
        return out.reshape(n, h, w, -1).transpose(0, 3, 1, 2)

    def backward(self, grad: Array) -> Array:
        n, c, h, w = self.shape
        c_out = len(self.params["b"])
        flat = grad.transpose(0, 2, 3, 1).reshape(-1, c_out)
        self.grads = {"w": (flat.T @ self.cols).reshape(self.params["w"].shape),
                      "b": flat.sum(axis=0)}
        dcols = (flat @ self.params["w"].reshape(c_out, -1)).reshape(n, h, w, c, 9)
        dpadded = np.zeros((n, c, h + 2, w + 2), grad.dtype)
        for tap in range(9):
            i, j = divmod(tap, 3)
            dpadded[:, :, i:i + h, j:j + w] += dcols[..., tap].transpose(0, 3, 1, 2)
        return dpadded[:, :, 1:-1, 1:-1]

    def emit(self, graph: Graph, x: str) -> str:
        return graph.node("Conv", [x, graph.const("weight", self.params["w"]),
                                   graph.const("bias", self.params["b"])],
                          kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])


class MaxPool2x2(Layer):
    """2x2 windows, stride 2 (even sizes only); the gradient goes to the first maximum of
    each window, as any one of them is a valid subgradient."""

    def forward(self, x: Array) -> Array:
        n, c, h, w = x.shape
        windows = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
        windows = windows.reshape(n, c, h // 2, w // 2, 4)
        self.shape, self.argmax = x.shape, windows.argmax(axis=-1)
        return windows.max(axis=-1)

    def backward(self, grad: Array) -> Array:
        n, c, h, w = self.shape
        windows = np.zeros((n, c, h // 2, w // 2, 4), grad.dtype)
        np.put_along_axis(windows, self.argmax[..., None], grad[..., None], axis=-1)
        windows = windows.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
        return windows.reshape(self.shape)

    def emit(self, graph: Graph, x: str) -> str:
        return graph.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])


class Flatten(Layer):
    def forward(self, x: Array) -> Array:
        self.shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, grad: Array) -> Array:
        return grad.reshape(self.shape)

    def emit(self, graph: Graph, x: str) -> str:
        return graph.node("Flatten", [x], axis=1)


# ---------------------------------------------------------------- models


@dataclass
class Model:
    name: str
    doc: str
    layers: list[Layer]
    epochs: int
    learning_rate: float

    def forward(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad: Array) -> None:
        for layer in reversed(self.layers):
            grad = layer.backward(grad)


def digits_cnn(split: Split) -> Model:
    rng = np.random.default_rng(SEED)
    return Model("digits_cnn", "Digits CNN (LeNet's layout): Conv 3x3 (8) -> Relu -> Conv 3x3 "
                 "(16) -> Relu -> MaxPool 2x2 -> Flatten -> Gemm (64) -> Relu -> Gemm (10).",
                 [Conv3x3(rng, 1, 8), Relu(), Conv3x3(rng, 8, 16), Relu(), MaxPool2x2(),
                  Flatten(), Dense(rng, 16 * 4 * 4, 64, gemm=True), Relu(),
                  Dense(rng, 64, 10, gemm=True)],
                 epochs=12, learning_rate=2e-3)


def breast_cancer_mlp(split: Split) -> Model:
    rng = np.random.default_rng(SEED)
    return Model("breast_cancer_mlp", "Breast-cancer MLP: Sub/Div standardization -> "
                 "MatMul+Add (32) -> Relu -> MatMul+Add (16) -> Relu -> MatMul+Add (2).",
                 [Standardize(split.train_x), Dense(rng, 30, 32, gemm=False), Relu(),
                  Dense(rng, 32, 16, gemm=False), Relu(), Dense(rng, 16, 2, gemm=False)],
                 epochs=60, learning_rate=1e-3)


# ---------------------------------------------------------------- training


def _softmax_cross_entropy_grad(logits: Array, labels: Array) -> Array:
    """d(mean cross entropy)/d(logits) = (softmax - onehot) / batch."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    probs[np.arange(len(labels)), labels] -= 1.0
    return probs / len(labels)


def train(model: Model, split: Split, *, batch: int = 32, weight_decay: float = 1e-4) -> None:
    """Adam (beta 0.9/0.999) with decoupled weight decay on the weights and a cosine
    learning-rate schedule; batches are shuffled by a seeded generator."""
    rng = np.random.default_rng(SEED)
    trained = [layer for layer in model.layers if layer.params]
    moments = [({k: np.zeros_like(v) for k, v in layer.params.items()},
                {k: np.zeros_like(v) for k, v in layer.params.items()}) for layer in trained]
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
    batches_per_epoch = -(-len(split.train_x) // batch)
    total = model.epochs * batches_per_epoch
    for _ in range(model.epochs):
        order = rng.permutation(len(split.train_x))
        for start in range(0, len(order), batch):
            index = order[start:start + batch]
            logits = model.forward(split.train_x[index])
            model.backward(_softmax_cross_entropy_grad(logits, split.train_y[index]))
            lr = model.learning_rate * 0.5 * (1.0 + np.cos(np.pi * step / total))
            step += 1
            for layer, (m, v) in zip(trained, moments):
                for key, param in layer.params.items():
                    grad = layer.grads[key]
                    m[key] = beta1 * m[key] + (1 - beta1) * grad
                    v[key] = beta2 * v[key] + (1 - beta2) * grad * grad
                    m_hat = m[key] / (1 - beta1 ** step)
                    v_hat = v[key] / (1 - beta2 ** step)
                    update = m_hat / (np.sqrt(v_hat) + eps)
                    if key == "w":
                        update = update + weight_decay * param
                    layer.params[key] = (param - lr * update).astype(np.float32)


def accuracy(logits: Array, labels: Array) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


# ---------------------------------------------------------------- export


def to_onnx(model: Model, sample_shape: tuple[int, ...],
            heldout_accuracy: float) -> onnx.ModelProto:
    """A float32 opset-17 model with input "input" (batch x sample_shape) and output
    "logits" (batch x classes)."""
    graph = Graph()
    x = "input"
    for layer in model.layers:
        x = layer.emit(graph, x)
    assert graph.nodes[-1].output[0] == x
    graph.nodes[-1].output[0] = "logits"
    classes = int(model.layers[-1].params["b"].shape[0])
    proto = helper.make_model(
        helper.make_graph(
            graph.nodes, model.name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *sample_shape])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
            graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="ember examples/train_quant_models.py",
        doc_string=f"{model.doc} Held-out accuracy {heldout_accuracy:.4f}.",
    )
    proto.ir_version = 8  # the IR version opset 17 came with, which older runtimes accept
    helper.set_model_props(proto, {"heldout_accuracy": f"{heldout_accuracy:.6f}"})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _check_in_onnxruntime(path: Path, model: Model, split: Split) -> float:
    """onnxruntime must reproduce the numpy forward pass; returns its held-out accuracy."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = model.forward(split.test_x)
    theirs = session.run(["logits"], {"input": split.test_x})[0]
    error = float(np.linalg.norm(theirs - ours) / np.linalg.norm(ours))
    if error > 1e-5:
        raise SystemExit(f"{path.name}: onnxruntime differs from numpy (relative L2 {error:.2e})")
    return accuracy(theirs, split.test_y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="where to write the files")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    recipes: tuple[tuple[str, Callable[[], Split], Callable[[Split], Model]], ...] = (
        ("digits", digits_split, digits_cnn),
        ("breast_cancer", breast_cancer_split, breast_cancer_mlp),
    )
    for data_name, load, build in recipes:
        split = load()
        model = build(split)
        train(model, split)
        numpy_accuracy = accuracy(model.forward(split.test_x), split.test_y)
        path = args.out / f"{model.name}.onnx"
        onnx.save(to_onnx(model, split.test_x.shape[1:], numpy_accuracy), str(path))
        ort_accuracy = _check_in_onnxruntime(path, model, split)
        data_path = args.out / f"{data_name}_data.npz"
        np.savez_compressed(data_path, calib_x=split.calib_x.astype(np.float32),
                            test_x=split.test_x.astype(np.float32),
                            test_y=split.test_y.astype(np.int64))
        print(f"{model.name}: {len(split.train_x)} train, {len(split.calib_x)} calibration, "
              f"{len(split.test_x)} held out; held-out accuracy numpy {numpy_accuracy:.4f}, "
              f"onnxruntime {ort_accuracy:.4f}; {path.stat().st_size / 1024:.1f} KiB + "
              f"{data_path.stat().st_size / 1024:.1f} KiB data")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
