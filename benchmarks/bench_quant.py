"""Quantized against float, side by side in one run on the device ember.compile picks: an
int8 ResNet-18 (quantized by ember.quantize, static int8), an int4 weight-only GEMV (1 x 4096 x
4096, the decoder's shape) and int8 GEMMs, each next to ember's float32 of the same model,
numpy's float32 and onnxruntime (float32, and its run of the same QDQ model).

The machines are shared and noisy, so the runners of a case are timed round-robin: each round
calls every runner once, starting with a different one each round, and a slow phase of the
machine lands on all of them alike. Reported: medians of --repeat rounds after --warmup, with
the spread (10th-90th percentile); the ratio is the median of the per-round ratios (quantized
over float32 in the same round; below 1 is faster). With --device-time, ember's two models are
also profiled round-robin (the sum of their steps' device times, `CompiledModel.profile`).
The models are built here with onnx.helper and seeded random weights (speed does not depend on
the values); ResNet-18 has its BatchNorms folded into the convolutions, as exporters leave
them after optimization:

    python benchmarks/bench_quant.py [--repeat 10] [--size 224] [--device-time] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
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
Runner = Callable[[], float | None]  # a call; returns its own time in seconds, or None


def round_robin(runners: dict[str, Runner], warmup: int, repeat: int) -> dict[str, list[float]]:
    """Seconds per call of each runner over `repeat` rounds; round r starts at runner r (mod
    the count). A runner returning a number (a device time) is measured by it, else by the
    wall clock around the call."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            measured = runners[name]()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed if measured is None else measured)
    return times


def _wall(fn: Callable[[], Any]) -> Runner:
    """`fn` as a runner timed by the wall clock (its result dropped)."""
    def run() -> None:
        fn()
    return run


def _spread(values: list[float]) -> tuple[float, float, float]:
    """(median, 10th percentile, 90th percentile)."""
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return float(p50), float(p10), float(p90)


def _ort_session(model: onnx.ModelProto) -> Any | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    # its threads would otherwise spin after each run, taking the cores from the runner
    # timed next in the round
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _device_seconds(compiled: ember.CompiledModel, feeds: dict[str, np.ndarray]) -> float:
    return compiled.profile(feeds, runs=1, warmup=0).total_ms / 1e3


def _where(compiled: ember.CompiledModel) -> str:
    return str(compiled.device.info) if compiled.device is not None else "numpy executor"


def _rel(actual: np.ndarray, expected: np.ndarray) -> float:
    expected = np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def compare(name: str, model: onnx.ModelProto, quantized: ember.QuantizedModel,
            feeds: dict[str, np.ndarray], warmup: int, repeat: int, device_time: bool,
            numpy_fn: Callable[[], Any] | None = None) -> dict[str, Any]:
    """One case: ember float32 and quantized, onnxruntime float32 and QDQ, numpy (if
    given), timed round-robin."""
    fp32, quant = ember.compile(model), ember.compile(quantized)
    expected = next(iter(fp32(**feeds).values()))
    got = next(iter(quant(**feeds).values()))
    runners: dict[str, Runner] = {"fp32": _wall(lambda: fp32(**feeds)),
                                  "quant": _wall(lambda: quant(**feeds))}
    for key, source in (("ort_fp32", model), ("ort_quant", quantized.model)):
        session = _ort_session(source)
        if session is not None:
            runners[key] = _wall(lambda s=session: s.run(None, feeds))
    if numpy_fn is not None:
        runners["numpy"] = _wall(numpy_fn)
    times = round_robin(runners, warmup, repeat)
    ratios = [q / f for q, f in zip(times["quant"], times["fp32"])]
    ms = {key: _spread([1e3 * t for t in values]) for key, values in times.items()}
    row: dict[str, Any] = {
        "case": name, "device": _where(quant), "float_device": _where(fp32),
        "ember_fp32_ms": ms["fp32"][0], "ember_quant_ms": ms["quant"][0],
        "ratio": _spread(ratios)[0], "ratio_p10_p90": _spread(ratios)[1:],
        "ember_fp32_p10_p90": ms["fp32"][1:], "ember_quant_p10_p90": ms["quant"][1:],
        "numpy_fp32_ms": ms["numpy"][0] if "numpy" in ms else None,
        "ort_fp32_ms": ms["ort_fp32"][0] if "ort_fp32" in ms else None,
        "ort_quant_ms": ms["ort_quant"][0] if "ort_quant" in ms else None,
        "rel_error": _rel(got, expected),
    }
    if device_time and fp32.device is not None and quant.device is not None:
        dev = round_robin({"fp32": lambda: _device_seconds(fp32, feeds),
                           "quant": lambda: _device_seconds(quant, feeds)}, 1, repeat)
        dev_ratios = [q / f for q, f in zip(dev["quant"], dev["fp32"])]
        row.update(device_fp32_ms=1e3 * _spread(dev["fp32"])[0],
                   device_quant_ms=1e3 * _spread(dev["quant"])[0],
                   device_ratio=_spread(dev_ratios)[0],
                   device_ratio_p10_p90=_spread(dev_ratios)[1:])
    return row


def bench_resnet(size: int, warmup: int, repeat: int, device_time: bool = False
                 ) -> dict[str, Any]:
    model = resnet18(size)
    rng = np.random.default_rng(SEED)
    calibration = [{"input": rng.standard_normal((1, 3, size, size)).astype(np.float32)}
                   for _ in range(4)]
    q = ember.quantize(model, calibration=calibration, scheme="int8")
    return compare(f"resnet18 {size}x{size} int8", model, q, calibration[0], warmup, repeat,
                   device_time)


def bench_matmul(m: int, k: int, n: int, scheme: str, warmup: int, repeat: int,
                 device_time: bool = False, **options: Any) -> dict[str, Any]:
    model = matmul_model(m, k, n)
    rng = np.random.default_rng(SEED + 1)
    calibration = [{"x": rng.standard_normal((m, k)).astype(np.float32)} for _ in range(2)]
    q = ember.quantize(model, calibration=calibration, scheme=scheme, **options)
    feeds = calibration[0]
    w = numpy_helper.to_array(model.graph.initializer[0])
    return compare(f"matmul {m}x{k}x{n} {scheme}", model, q, feeds, warmup, repeat,
                   device_time, numpy_fn=lambda: feeds["x"] @ w)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _range(pair: tuple[float, float] | None) -> str:
    return "-" if pair is None else f"{pair[0]:.2f}-{pair[1]:.2f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'case':30} {'ember fp32':>11} {'ember quant':>12} {'ratio':>6} "
              f"{'ratio p10-90':>12} {'numpy fp32':>11} {'ort fp32':>9} {'ort quant':>10} "
              f"{'rel err':>8}")
    lines = [header, "-" * len(header)]
    notes = []
    for r in rows:
        lines.append(
            f"{r['case']:30} {_fmt(r['ember_fp32_ms']):>11} {_fmt(r['ember_quant_ms']):>12} "
            f"{_fmt(r['ratio']):>6} {_range(r['ratio_p10_p90']):>12} "
            f"{_fmt(r['numpy_fp32_ms']):>11} {_fmt(r['ort_fp32_ms']):>9} "
            f"{_fmt(r['ort_quant_ms']):>10} {_fmt(r['rel_error'], '.1e'):>8}")
        if "device_ratio" in r:
            notes.append(f"  {r['case']}: device time fp32 {r['device_fp32_ms']:.2f} ms, "
                         f"quant {r['device_quant_ms']:.2f} ms, ratio "
                         f"{r['device_ratio']:.2f} (p10-90 {_range(r['device_ratio_p10_p90'])})")
    devices = sorted({r["device"] for r in rows} | {r["float_device"] for r in rows})
    text = "\n".join(lines) + ("\n(wall ms, medians of round-robin rounds; ratio = median of "
                               "per-round ember quant / ember fp32)")
    if notes:
        text += "\nember device time (sum of profiled steps, medians):\n" + "\n".join(notes)
    return text + "\nember ran on: " + "; ".join(devices)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--size", type=int, default=224, help="ResNet-18 input size")
    parser.add_argument("--cases", default="resnet,gemv,gemm",
                        help="comma-separated: resnet, gemv (int4), gemm (int8)")
    parser.add_argument("--device-time", action="store_true",
                        help="also profile ember's models: device time per call")
    parser.add_argument("--json", type=Path, help="also write the rows here as JSON")
    args = parser.parse_args(argv)
    chosen = {c.strip() for c in args.cases.split(",")}
    print(f"median of {args.repeat} round-robin rounds after {args.warmup} warm-up",
          flush=True)
    rows = []
    timing = (args.warmup, args.repeat, args.device_time)
    if "gemv" in chosen:
        rows.append(bench_matmul(1, 4096, 4096, "int4", *timing, block_size=128))
    if "gemm" in chosen:
        for size in (256, 512, 1024):
            rows.append(bench_matmul(size, size, size, "int8", *timing))
    if "resnet" in chosen:
        rows.append(bench_resnet(args.size, *timing))
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
