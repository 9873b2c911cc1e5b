"""The quantization part of `ember demo`: the shipped digits MLP quantized by ember.quantize
in each scheme, calibrated on a sample of its training images (ember/data/digits_calib.npz),
then compiled for the demo's device and run on the held-out images: accuracy, weight bytes
and latency per precision, next to float32."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

import ember

__all__ = ["QuantRow", "quantized_demo", "print_quantized"]

MODEL = "digits_mlp"
CALIBRATION_BATCH = 32
# scheme -> ember.quantize options; mixed: at most 5 bits per weight on average
SCHEMES: dict[str, dict] = {
    "fp16": {},
    "int8": {},
    "int4": {"block_size": 32},
    "mixed": {"avg_bits": 5.0, "block_size": 32, "measure_speed": False},
}


@dataclass(frozen=True)
class QuantRow:
    scheme: str
    accuracy: float
    weight_bytes: int
    median_seconds: float
    precisions: str  # per layer, e.g. "int4 int4 int8"


def _latency(model: ember.CompiledModel, feeds: dict[str, np.ndarray], repeat: int) -> float:
    model(**feeds)  # kernels build at the first call
    times = []
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        model(**feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quantized_demo(images: np.ndarray, labels: np.ndarray, target: str | None,
                   repeat: int) -> list[QuantRow]:
    data = resources.files("ember") / "data"
    model_bytes = (data / f"{MODEL}.onnx").read_bytes()
    with resources.as_file(data / "digits_calib.npz") as path, np.load(path) as calib:
        calib_x = calib["images"].reshape(len(calib["images"]), -1)
    batches = [{"input": calib_x[i:i + CALIBRATION_BATCH]}
               for i in range(0, len(calib_x), CALIBRATION_BATCH)]
    feeds = {"input": images.reshape(len(images), -1)}
    rows = []
    float_model = ember.compile(model_bytes, target=target)
    float_bytes = None
    for scheme, options in {"fp32": None, **SCHEMES}.items():
        if options is None:
            compiled, plan = float_model, None
        else:
            q = ember.quantize(model_bytes, calibration=batches, scheme=scheme, **options)
            compiled, plan = ember.compile(q, target=target), q.plan
            float_bytes = plan.weight_bytes[0]
        logits = compiled(**feeds)["logits"]
        rows.append(QuantRow(
            scheme=scheme,
            accuracy=float((logits.argmax(axis=1) == labels).mean()),
            weight_bytes=plan.weight_bytes[1] if plan is not None else -1,
            median_seconds=_latency(compiled, feeds, repeat),
            precisions=" ".join(row.precision for row in plan) if plan is not None else "",
        ))
    return [r if r.weight_bytes >= 0 else QuantRow(r.scheme, r.accuracy, float_bytes or 0,
                                                   r.median_seconds, "fp32 everywhere")
            for r in rows]


def print_quantized(rows: Sequence[QuantRow], repeat: int) -> None:
    print(f"\n{MODEL} quantized by ember.quantize (calibrated on 128 training images)")
    print(f"  {'scheme':7} {'accuracy':>8} {'weights':>10} {'latency':>11}  layers")
    base = rows[0]
    for r in rows:
        drop = (base.accuracy - r.accuracy) * 100
        print(f"  {r.scheme:7} {r.accuracy:8.4f} {r.weight_bytes / 1024:7.1f} KiB "
              f"{r.median_seconds * 1e3:8.3f} ms  {r.precisions}"
              + (f"  ({-drop:+.2f} points)" if r is not base and drop else ""))
    print(f"  (latency: median of {repeat}; weights: bytes of the MatMul/Gemm weights, "
          f"scales included)")
