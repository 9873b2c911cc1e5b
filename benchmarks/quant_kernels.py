"""Quantized kernels against ember's float32 kernels of the same shapes, side by side in one
run on one device (default: the first non-simulator OpenCL device, PoCL on the development
machines): one-node graphs compiled at O2 (constant weights packed), device time of all
their steps from OpenCL profiling, medians of --repeat calls taken in turns.

    python benchmarks/quant_kernels.py                 # all cases
    python benchmarks/quant_kernels.py --cases gemv conv --repeat 30

Cases: "gemv" an int4 (and an int8) BlockQuantMatMul (blocks of 32) against a float32 MatMul
with one row of A (goal: <= 0.5x); "prefill" the same int4 product with 4..128 rows of A (goal: <= 1x), and the small int4 layers of
tests/quantization's models; "conv" ConvInteger (uint8 x, int8 w) on ResNet-18's 3x3 layer shapes
against float32 Conv, with an int32 result and with a requantizing epilogue (goal: < 1x);
"gemm" MatMulInteger (int8) against float32 MatMul at 256..1024 (throughput ratio). The
machine is shared: compare the ratios of one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ember
from ember.frontends.builder import GraphBuilder
from ember.ir import OPS, DType
from ember.ir.ops.fused import ExprNode, FusedExpr

F32 = DType.FLOAT32
RNG = np.random.default_rng(0)


def _graph(op: str, inputs: dict[str, np.ndarray], constants: list[np.ndarray],
           attrs: dict) -> tuple[object, dict[str, np.ndarray]]:
    b = GraphBuilder(f"bench_{op}")
    values = [b.input(name, a.shape, DType.from_numpy(a.dtype)) for name, a in inputs.items()]
    values += [b.constant(c) for c in constants]
    b.output("y", b.op(op, *values, **attrs))
    return b.build(), inputs


def _device_seconds(model, feeds) -> float:
    return model.profile(feeds, runs=1, warmup=0).total_ms / 1e3


def compare(label: str, float_case, quant_case, target: str, repeat: int,
            work: float | None = None) -> None:
    """Median device times of both graphs, measured in turns, and their ratio."""
    models = []
    for graph, feeds in (float_case, quant_case):
        model = ember.compile(graph, target=target, opt_level=2)
        model(**feeds)  # build and warm up
        models.append((model, feeds))
    times: list[list[float]] = [[], []]
    for _ in range(repeat):
        for i, (model, feeds) in enumerate(models):
            times[i].append(_device_seconds(model, feeds))
    f, q = (statistics.median(t) for t in times)
    rate = "" if work is None else (f"  float {work / f / 1e9:6.1f}  int "
                                    f"{work / q / 1e9:6.1f} G(FL)OP/s")
    print(f"{label:44s} float32 {f * 1e3:8.3f} ms  quant {q * 1e3:8.3f} ms  "
          f"ratio {q / f:5.2f}{rate}", flush=True)


def _block_quant_case(rows: int, n: int, k: int, bits: int, bs: int):
    """(float32 MatMul, BlockQuantMatMul) graphs of one product shape."""
    a = RNG.standard_normal((rows, k)).astype(np.float32)
    w = RNG.standard_normal((k, n)).astype(np.float32)
    q = RNG.integers(0, 256, (n, k // bs, bs * bits // 8)).astype(np.uint8)
    scales = RNG.uniform(0.01, 0.1, (n, k // bs)).astype(np.float32)
    zeros = np.full((n, k // bs), 2 ** (bits - 1), np.uint8)
    return (_graph("MatMul", {"a": a}, [w], {}),
            _graph("BlockQuantMatMul", {"a": a}, [q, scales, zeros],
                   {"bits": bits, "block_size": bs, "k": k, "n": n}))


def gemv_cases(target: str, repeat: int) -> None:
    for n, k, bits in ((4096, 4096, 4), (4096, 11008, 4), (11008, 4096, 4), (4096, 4096, 8)):
        compare(f"GEMV 1x{k}x{n} int{bits} (block 32)", *_block_quant_case(1, n, k, bits, 32),
                target, repeat)


def prefill_cases(target: str, repeat: int) -> None:
    for rows in (4, 16, 64, 128):
        compare(f"GEMM {rows}x4096x4096 int4 (block 32)",
                *_block_quant_case(rows, 4096, 4096, 4, 32), target, repeat,
                2.0 * rows * 4096 * 4096)
    for rows, k, n in ((4, 64, 128), (4, 128, 64), (32, 32, 32)):
        compare_small(f"GEMM {rows}x{k}x{n} int4 (block 32)",
                      *_block_quant_case(rows, n, k, 4, 32), target, repeat)


def compare_small(label: str, float_case, quant_case, target: str, repeat: int) -> None:
    """`compare` for products of a few microseconds (the int4 layers of tests/quantization's
    models, batch 4), where a launch takes about 1 or about 10 us depending on whether the
    device's threads were still awake, and taking turns puts the second graph in the slow
    mode more often (even for two copies of one graph): each graph runs 20 * `repeat` times
    in a row, and the fastest and the median runs are compared."""
    stats = []
    for graph, feeds in (float_case, quant_case):
        model = ember.compile(graph, target=target, opt_level=2)
        model(**feeds)
        times = sorted(_device_seconds(model, feeds) for _ in range(20 * repeat))
        stats.append((times[0], statistics.median(times)))
    (f_min, f_med), (q_min, q_med) = stats
    print(f"{label:44s} float32 {f_min * 1e6:6.1f} us (median {f_med * 1e6:5.1f})  quant "
          f"{q_min * 1e6:6.1f} us (median {q_med * 1e6:5.1f})  ratio {q_min / f_min:5.2f} "
          f"(medians {q_med / f_med:5.2f})", flush=True)


def _requantize(channels: int) -> tuple[FusedExpr, list[np.ndarray]]:
    """int32 -> float * per-channel scale + bias -> Relu -> QuantizeLinear(uint8): the
    store of a quantized conv layer."""
    def node(op, args, dtype, **attrs):
        return ExprNode(op, args, OPS[op].make_attrs(attrs), dtype)

    expr = FusedExpr(5, (node("Cast", (0,), F32, to=F32), node("Mul", (5, 1), F32),
                         node("Add", (6, 2), F32), node("Relu", (7,), F32),
                         node("QuantizeLinear", (8, 3, 4), DType.UINT8)), (9,))
    extras = [RNG.uniform(1e-4, 1e-3, (1, channels, 1, 1)).astype(np.float32),
              RNG.uniform(-1, 1, (1, channels, 1, 1)).astype(np.float32),
              np.array(0.05, np.float32), np.array(3, np.uint8)]
    return expr, extras


def conv_cases(target: str, repeat: int) -> None:
    for c, hw, stride in ((64, 56, 1), (128, 28, 1), (256, 14, 1), (512, 7, 1), (64, 56, 2)):
        x = RNG.standard_normal((1, c, hw, hw)).astype(np.float32)
        cout = c * stride
        w = RNG.standard_normal((cout, c, 3, 3)).astype(np.float32)
        xq = RNG.integers(0, 256, x.shape).astype(np.uint8)
        wq = RNG.integers(-127, 128, w.shape).astype(np.int8)
        attrs = {"pads": (1, 1, 1, 1), "strides": (stride, stride)}
        zeros = [np.array(128, np.uint8), np.array(0, np.int8)]
        out = hw // stride
        work = 2 * cout * out * out * c * 9
        float_case = _graph("Conv", {"x": x}, [w], attrs)
        compare(f"Conv 1x{c}x{hw}x{hw} 3x3 s{stride} -> {cout} int32", float_case,
                _graph("ConvInteger", {"x": xq}, [wq, *zeros], attrs), target, repeat, work)
        expr, extras = _requantize(cout)
        compare(f"Conv 1x{c}x{hw}x{hw} 3x3 s{stride} -> {cout} requant", float_case,
                _graph("ConvInteger", {"x": xq}, [wq, *zeros, *extras],
                       {**attrs, "epilogue": expr}), target, repeat, work)


def gemm_cases(target: str, repeat: int) -> None:
    for size in (256, 512, 1024):
        a = RNG.standard_normal((size, size)).astype(np.float32)
        b = RNG.standard_normal((size, size)).astype(np.float32)
        aq = RNG.integers(-128, 128, a.shape).astype(np.int8)
        bq = RNG.integers(-128, 128, b.shape).astype(np.int8)
        zeros = [np.array(0, np.int8), np.array(0, np.int8)]
        compare(f"GEMM {size}^3 int8", _graph("MatMul", {"a": a}, [b], {}),
                _graph("MatMulInteger", {"a": aq}, [bq, *zeros], {}), target, repeat,
                2.0 * size ** 3)


CASES: dict[str, Callable[[str, int], None]] = {
    "gemv": gemv_cases, "prefill": prefill_cases, "conv": conv_cases, "gemm": gemm_cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--target", default=None, help="ember target (default: first device)")
    args = parser.parse_args()
    target = args.target
    if target is None:
        devices = [d for d in ember.devices() if not d.traits.simulator]
        if not devices:
            sys.exit("no OpenCL device")
        target = devices[0].target_name if hasattr(devices[0], "target_name") else None
    print(f"device: {target or 'default'}; ratio = quantized time / float32 time (median of "
          f"{args.repeat})")
    for case in args.cases:
        CASES[case](target, args.repeat)


if __name__ == "__main__":
    main()
