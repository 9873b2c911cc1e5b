"""Quantized against float, side by side in one run on the default OpenCL device: an int8
ResNet-18 (quantized by ember.quantize, static int8), an int4 weight-only GEMV (1 x 4096 x
4096, the decoder's shape) and int8 GEMMs, each next to ember's float32 of the same model,
numpy's float32 and onnxruntime (float32, and its run of the same QDQ model).

Medians of --repeat calls after --warmup; ratios below 1 mean faster than ember's float32.
The models are built here with onnx.helper and seeded random weights (speed does not depend on
the values); ResNet-18 has its BatchNorms folded into the convolutions, as exporters leave
them after optimization:

    python benchmarks/bench_quant.py [--repeat 10] [--size 224] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing ember

import ember  # noqa: E402

__all__ = ["resnet18", "matmul_model", "main"]

SEED = 0
THREADS = 2  # onnxruntime's intra-op threads: the development machines have 2 cores


# -- models -----------------------------------------------------------------------------------
class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, array: np.ndarray, stem: str) -> str:
        name = self.name(stem)
        self.weights.append(numpy_helper.from_array(array, name))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        w = self.rng.standard_normal((cout, cin, k, k)).astype(np.float32)
        w *= np.sqrt(2.0 / (cin * k * k))
        b = (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        y = self.name("conv")
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const(w, "w"), self.const(b, "b")], [y], name=y,
            kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        if relu:
            r = self.name("relu")
            self.nodes.append(helper.make_node("Relu", [y], [r], name=r))
            return r
        return y

    def add_relu(self, a: str, b: str) -> str:
        s, r = self.name("add"), self.name("relu")
        self.nodes.append(helper.make_node("Add", [a, b], [s], name=s))
        self.nodes.append(helper.make_node("Relu", [s], [r], name=r))
        return r


def resnet18(size: int = 224, classes: int = 1000, seed: int = SEED) -> onnx.ModelProto:
    """ResNet-18 (BatchNorm folded), input 'input' (1, 3, size, size), output 'logits'."""
    b = _Builder(seed)
    x = b.conv("input", 3, 64, 7, 2, relu=True)
    pooled = b.name("pool")
    b.nodes.append(helper.make_node("MaxPool", [x], [pooled], name=pooled, kernel_shape=[3, 3],
                                    strides=[2, 2], pads=[1, 1, 1, 1]))
    x, channels = pooled, 64
    for stage, width in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = b.conv(x, channels, width, 3, stride, relu=True)
            y = b.conv(y, width, width, 3, 1, relu=False)
            shortcut = x if stride == 1 and channels == width else \
                b.conv(x, channels, width, 1, stride, relu=False)
            x, channels = b.add_relu(y, shortcut), width
    gap, flat = b.name("gap"), b.name("flat")
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], [gap], name=gap))
    b.nodes.append(helper.make_node("Flatten", [gap], [flat], name=flat))
    fc_w = (b.rng.standard_normal((classes, 512)) / np.sqrt(512)).astype(np.float32)
    fc_b = np.zeros(classes, np.float32)
    b.nodes.append(helper.make_node("Gemm", [flat, b.const(fc_w, "fc_w"), b.const(fc_b, "fc_b")],
                                    ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        b.nodes, "resnet18",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        b.weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def matmul_model(m: int, k: int, n: int, seed: int = SEED) -> onnx.ModelProto:
    """y = x @ W with a constant W (k, n): the weight of a linear layer."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="linear")], f"matmul_{m}x{k}x{n}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# -- timing -----------------------------------------------------------------------------------
def median_ms(fn: Callable[[], Any], warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _ort_ms(model: onnx.ModelProto, feeds: dict[str, np.ndarray], warmup: int,
            repeat: int) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return median_ms(lambda: session.run(None, feeds), warmup, repeat)


def _ember_ms(model: onnx.ModelProto | ember.QuantizedModel, feeds: dict[str, np.ndarray],
              warmup: int, repeat: int) -> tuple[float, np.ndarray]:
    compiled = ember.compile(model)
    out = compiled(**feeds)
    first = next(iter(out.values()))
    return median_ms(lambda: compiled(**feeds), warmup, repeat), first


def _row(name: str, float_ms: float, quant_ms: float, numpy_ms: float | None,
         ort_float: float | None, ort_quant: float | None, error: float) -> dict[str, Any]:
    return {"case": name, "ember_fp32_ms": float_ms, "ember_quant_ms": quant_ms,
            "ratio": quant_ms / float_ms, "numpy_fp32_ms": numpy_ms,
            "ort_fp32_ms": ort_float, "ort_quant_ms": ort_quant, "rel_error": error}


def _rel(actual: np.ndarray, expected: np.ndarray) -> float:
    expected = np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def bench_resnet(size: int, warmup: int, repeat: int) -> dict[str, Any]:
    model = resnet18(size)
    rng = np.random.default_rng(SEED)
    calibration = [{"input": rng.standard_normal((1, 3, size, size)).astype(np.float32)}
                   for _ in range(4)]
    q = ember.quantize(model, calibration=calibration, scheme="int8")
    feeds = calibration[0]
    float_ms, expected = _ember_ms(model, feeds, warmup, repeat)
    quant_ms, got = _ember_ms(q, feeds, warmup, repeat)
    return _row(f"resnet18 {size}x{size} int8", float_ms, quant_ms, None,
                _ort_ms(model, feeds, warmup, repeat), _ort_ms(q.model, feeds, warmup, repeat),
                _rel(got, expected))


def bench_matmul(m: int, k: int, n: int, scheme: str, warmup: int, repeat: int,
                 **options: Any) -> dict[str, Any]:
    model = matmul_model(m, k, n)
    rng = np.random.default_rng(SEED + 1)
    calibration = [{"x": rng.standard_normal((m, k)).astype(np.float32)} for _ in range(2)]
    q = ember.quantize(model, calibration=calibration, scheme=scheme, **options)
    feeds = calibration[0]
    float_ms, expected = _ember_ms(model, feeds, warmup, repeat)
    quant_ms, got = _ember_ms(q, feeds, warmup, repeat)
    w = numpy_helper.to_array(model.graph.initializer[0])
    numpy_ms = median_ms(lambda: feeds["x"] @ w, warmup, repeat)
    return _row(f"matmul {m}x{k}x{n} {scheme}", float_ms, quant_ms, numpy_ms,
                _ort_ms(model, feeds, warmup, repeat), _ort_ms(q.model, feeds, warmup, repeat),
                _rel(got, expected))


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'case':34} {'ember fp32':>11} {'ember quant':>12} {'ratio':>6} "
              f"{'numpy fp32':>11} {'ort fp32':>9} {'ort quant':>10} {'rel err':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['case']:34} {_fmt(r['ember_fp32_ms']):>11} {_fmt(r['ember_quant_ms']):>12} "
            f"{_fmt(r['ratio']):>6} {_fmt(r['numpy_fp32_ms']):>11} {_fmt(r['ort_fp32_ms']):>9} "
            f"{_fmt(r['ort_quant_ms']):>10} {_fmt(r['rel_error'], '.1e'):>8}")
    return "\n".join(lines) + "\n(times in ms, medians; ratio = ember quant / ember fp32)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per runner")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--size", type=int, default=224, help="ResNet-18 input size")
    parser.add_argument("--cases", default="resnet,gemv,gemm",
                        help="comma-separated: resnet, gemv (int4), gemm (int8)")
    parser.add_argument("--json", type=Path, help="also write the rows here as JSON")
    args = parser.parse_args(argv)
    chosen = {c.strip() for c in args.cases.split(",")}
    devices = ember.devices()
    print(f"device: {devices[0] if devices else 'none (numpy executor)'}; median of "
          f"{args.repeat} after {args.warmup} warm-up", flush=True)
    rows = []
    if "gemv" in chosen:
        rows.append(bench_matmul(1, 4096, 4096, "int4", args.warmup, args.repeat,
                                 block_size=128))
    if "gemm" in chosen:
        for size in (256, 512, 1024):
            rows.append(bench_matmul(size, size, size, "int8", args.warmup,
                                     args.repeat))
    if "resnet" in chosen:
        rows.append(bench_resnet(args.size, args.warmup, args.repeat))
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
