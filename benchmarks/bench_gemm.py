"""GEMM and convolution speed on the CPU OpenCL device, side by side in one run: numpy
(its BLAS; im2col + BLAS for the conv); ember.compile of a one-node graph at O2 with default
parameters and, with --tune, at O3 tuned (device time of its steps from OpenCL profiling);
CLBlast's tuned OpenCL GEMM/GEMV through pyclblast on the same device and queue, when it is
installed (a benchmark-only dependency: `apt-get install libclblast-dev && pip install
pyclblast`; the row is left out without it); and the CPU register-tiled GEMM of
ember/codegen/kernels/gemm_cpu.py with B read as it is ("direct"), packed on the host ("packed": a
constant weight) and packed on the device by a kernel before each product
("runtime-packed": a B that is not a constant). Convolutions run as "out^T" (pixels as M,
the gathered image as A, W as B: direct or packed) and, for 1x1 ones, as the plain product
Y = W @ X ("pointwise"). One-row products also run the GEMV of ember/codegen/kernels/gemv_cpu.py
("gemv_cpu": B packed into panels, or read as stored), its default and, with --sweep, its
candidates.

    python benchmarks/bench_gemm.py                       # all cases, default tiling
    python benchmarks/bench_gemm.py --cases gemv --sweep  # every tuner candidate as well
    python benchmarks/bench_gemm.py --params 6,8,2,1,0    # mr,vw,nv,ku,group_m
    python benchmarks/bench_gemm.py --tune 30             # ember tuned (30 s per kernel)

GFLOP/s count 2*M*N*K per product (2 * outputs * Cin * kernel for the conv) over the median
of --repeat timed runs after one warm-up (slow paths stop after about 3 s); "best" uses the
fastest run, "x numpy" is numpy's median time over the path's. The machine is shared: compare
the ratios of one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing ember

import ember  # noqa: E402
from ember.codegen.kernels.gemm_cpu import (  # noqa: E402
    BOperand, CpuGemmParams, conv1x1_problem, conv_problem,
    cpu_gemm_launch, is_pointwise,
    cpu_gemm_params, cpu_pack_launch, matmul_problem, pack_b, pack_conv_weight,
    packed_b_shape, render_cpu_gemm, render_cpu_pack,
)
from ember.codegen.kernels.gemv_cpu import (  # noqa: E402
    DEFAULT_GEMV_PARAMS, GemvParams, gemv_launch, gemv_partial_bytes,
    gemv_reduce_launch, matmul_gemv_problem, pack_gemv_b, render_gemv, render_gemv_reduce,
)
from ember.codegen.types import Kernel  # noqa: E402
from ember.codegen.mathlib import program_header  # noqa: E402
from ember.codegen.params import search_space  # noqa: E402
from ember.tuning.tuner import TuneBudget  # noqa: E402
from ember.frontends.builder import GraphBuilder  # noqa: E402
from ember.ir import DType  # noqa: E402
from ember.ir.attrs import Attrs  # noqa: E402
from ember.ir.ops.linalg import conv_geometry, conv_reference  # noqa: E402
from ember.runtime.device import resolve_target  # noqa: E402
from ember.runtime.opencl import build_program  # noqa: E402

__all__ = ["Case", "CASES", "main"]


@dataclass(frozen=True)
class Case:
    name: str
    m: int = 0
    n: int = 0
    k: int = 0
    conv: tuple[tuple[int, ...], tuple[int, ...], int] | None = None  # x shape, w shape, pad
    trans_b: bool = False  # B stored N x K (ONNX Gemm's transB, attention's Q @ K^T)

    @property
    def flops(self) -> float:
        if self.conv is None:
            return 2.0 * self.m * self.n * self.k
        x, w, pad = self.conv
        g = conv_geometry(x, w, _conv_attrs(pad))
        return 2.0 * math.prod(g.out_shape) * w[1] * math.prod(w[2:])


CASES = (
    Case("square", 1024, 1024, 1024),
    Case("mlp", 128, 3072, 768),
    Case("gemv", 1, 3072, 768),
    Case("square_tb", 1024, 1024, 1024, trans_b=True),
    Case("attn_qk", 128, 128, 64, trans_b=True),
    Case("conv3x3", conv=((1, 64, 56, 56), (64, 64, 3, 3), 1)),
    Case("conv1x1", conv=((1, 256, 28, 28), (128, 256, 1, 1), 0)),
)


def _conv_attrs(pad: int) -> Attrs:
    return Attrs({"strides": (1, 1), "dilations": (1, 1), "pads": (pad,) * 4, "group": 1})


Timing = tuple[float, float]  # (median, best) seconds


def _timed(fn: Callable[[], object], repeat: int, budget: float = 3.0) -> Timing:
    """Median and best seconds of `repeat` calls after one warm-up (stops early past
    `budget` s). A float that `fn` returns is its own seconds (device time); else wall time."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat and (len(times) < 2 or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        own = fn()
        times.append(own if isinstance(own, float) else time.perf_counter() - t0)
    return statistics.median(times), min(times)


class Device:
    def __init__(self, target: str) -> None:
        import pyopencl as cl

        self.cl = cl
        self.target = target
        self.dev = resolve_target(target)

    def buffer(self, array: np.ndarray | int):
        cl = self.cl
        if isinstance(array, int):
            return cl.Buffer(self.dev.context, cl.mem_flags.READ_WRITE, max(array, 4))
        return cl.Buffer(self.dev.context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR,
                         hostbuf=np.ascontiguousarray(array))

    def runner(self, kernels: list[Kernel], launches: list[tuple[str, tuple, list]]
               ) -> Callable[[], None]:
        """Build the kernels as one program; a function running the launches in order."""
        program = build_program(self.dev, program_header(kernels)
                                + "\n".join(k.source for k in kernels))
        bound = []
        for name, sizes, buffers in launches:
            kernel = self.cl.Kernel(program, name)
            kernel.set_args(*buffers)
            bound.append((kernel, sizes))
        queue = self.dev.queue
        keep = [buffers for _, _, buffers in launches]  # kernel args do not hold buffers

        def run() -> None:
            assert keep
            for kernel, (global_size, local_size) in bound:
                self.cl.enqueue_nd_range_kernel(queue, kernel, global_size, local_size)
            queue.finish()

        return run

    def read(self, buffer, shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty(shape, np.float32)
        self.cl.enqueue_copy(self.dev.queue, out, buffer)
        return out


def _matmul_runner(dev: Device, a: np.ndarray, b: np.ndarray, params: CpuGemmParams,
                   mode: str, trans_b: bool = False
                   ) -> tuple[Callable[[], None], Callable[[], np.ndarray]]:
    m, k = a.shape
    n = b.shape[0] if trans_b else b.shape[1]
    problem = matmul_problem(a.shape, b.shape, DType.FLOAT32, 0, int(trans_b), params=params,
                             packed_b=mode != "direct")
    kernels = [Kernel("bench_gemm", render_cpu_gemm(problem, params, "bench_gemm"))]
    c = dev.buffer(m * n * 4)
    launches = []
    if mode == "packed":
        b_buf = dev.buffer(pack_b(b, params, trans=trans_b))
    elif mode == "runtime-packed":
        b_buf = dev.buffer(math.prod(packed_b_shape(k, n, params.nr)) * 4)
        kernels.append(Kernel("bench_pack", render_cpu_pack(
            BOperand("b", "cols" if trans_b else "rows"), k, n, 1, params, "bench_pack", 4)))
        launches.append(("bench_pack", cpu_pack_launch(k, n, 1, params), [dev.buffer(b), b_buf]))
    else:
        b_buf = dev.buffer(b)
    launches.append(("bench_gemm", cpu_gemm_launch(problem, params), [dev.buffer(a), b_buf, c]))
    return dev.runner(kernels, launches), lambda: dev.read(c, (m, n))


def _gemv_runner(dev: Device, a: np.ndarray, b: np.ndarray, params: GemvParams, packed: bool,
                 trans_b: bool = False) -> tuple[Callable[[], None], Callable[[], np.ndarray]]:
    """The GEMV of gemv_cpu.py (params fitted as ember fits them), B packed or as stored."""
    m, k = a.shape
    n = b.shape[0] if trans_b else b.shape[1]
    params = params.fitted(n, k, "packed" if packed else "cols" if trans_b else "rows")
    problem = matmul_gemv_problem(a.shape, b.shape, DType.FLOAT32, 0, int(trans_b),
                                  params=params, packed_b=packed)
    kernels = [Kernel("bench_gemv", render_gemv(problem, params, "bench_gemv"))]
    c = dev.buffer(m * n * 4)
    buffers = [dev.buffer(a), dev.buffer(pack_gemv_b(b, params, trans=trans_b) if packed
                                         else b), c]
    launches = [("bench_gemv", gemv_launch(problem, params), buffers)]
    if params.ksplit > 1:  # partial sums of the K parts, then their sum
        buffers.append(dev.buffer(gemv_partial_bytes(problem, params)))
        kernels.append(Kernel("bench_gemv_sum",
                              render_gemv_reduce(problem, params, "bench_gemv_sum")))
        launches.append(("bench_gemv_sum", gemv_reduce_launch(problem, params), buffers))
    return dev.runner(kernels, launches), lambda: dev.read(c, (m, n))


def _conv_runner(dev: Device, x: np.ndarray, w: np.ndarray, pad: int, params: CpuGemmParams,
                 mode: str) -> tuple[Callable[[], None], Callable[[], np.ndarray]]:
    g = conv_geometry(x.shape, w.shape, _conv_attrs(pad))
    if mode == "pointwise":
        problem = conv1x1_problem(g, DType.FLOAT32)
    else:
        problem = conv_problem(g, DType.FLOAT32, params=params, packed_w=mode == "packed")
    kernels = [Kernel("bench_conv", render_cpu_gemm(problem, params, "bench_conv"))]
    weight = pack_conv_weight(w, g.group, params) if mode == "packed" else w
    y = dev.buffer(math.prod(g.out_shape) * 4)
    run = dev.runner(kernels, [("bench_conv", cpu_gemm_launch(problem, params),
                                [dev.buffer(x), dev.buffer(weight), y])])
    return run, lambda: dev.read(y, g.out_shape)


def _ember_compiled(dev: Device, case: Case, arrays: list[np.ndarray], repeat: int,
                    opt_level: int, tune: bool | TuneBudget = False) -> Timing:
    """Device seconds of ember.compile's kernels for the case (weights as constants): what
    a user gets at `opt_level`, with `tune` measuring the kernel's parameters first (kept in
    the TuningDB, so a second run reuses them)."""
    b = GraphBuilder("bench")
    x = b.input("x", arrays[0].shape)
    if case.conv is None:
        b.output("y", b.op("MatMul", x, b.constant(arrays[1]), trans_b=int(case.trans_b)))
    else:
        pad = case.conv[2]
        b.output("y", b.op("Conv", x, b.constant(arrays[1]), pads=(pad,) * 4))
    model = ember.compile(b.build(), target=dev.target, opt_level=opt_level, tune=tune)

    return _timed(lambda: model.profile(x=arrays[0], runs=1, warmup=0).total_ms / 1e3, repeat)


def _clblast(dev: Device, a: np.ndarray, b: np.ndarray, trans_b: bool, repeat: int
             ) -> tuple[Timing, float] | None:
    """CLBlast's GEMM (GEMV for one row) on ember's device and queue, and its max abs error
    against numpy; None when pyclblast is not installed."""
    try:
        import pyclblast
    except ImportError:
        return None
    import pyopencl.array as cla

    queue = dev.dev.queue
    m, k = a.shape
    n = b.shape[0] if trans_b else b.shape[1]
    a_dev, b_dev = cla.to_device(queue, a), cla.to_device(queue, b)
    c_dev = cla.zeros(queue, (m, n), np.float32)
    if m == 1:  # y = B^T a for B stored K x N (row-major), y = B a for B stored N x K
        rows, cols = (n, k) if trans_b else (k, n)  # B as stored: CLBlast's m x n matrix

        def run() -> None:
            pyclblast.gemv(queue, rows, cols, b_dev, a_dev.reshape(k), c_dev.reshape(n),
                           a_ld=cols, a_transp=not trans_b).wait()
    else:
        def run() -> None:
            pyclblast.gemm(queue, m, n, k, a_dev, b_dev, c_dev, a_ld=k,
                           b_ld=k if trans_b else n, c_ld=n, b_transp=trans_b).wait()
    seconds = _timed(run, repeat)
    expected = a @ (b.T if trans_b else b)
    return seconds, float(np.abs(c_dev.get() - expected).max())


def bench_case(dev: Device, case: Case, params_list: list[CpuGemmParams | None],
               repeat: int, tune: TuneBudget | None = None,
               gemv_list: tuple[GemvParams, ...] = (DEFAULT_GEMV_PARAMS,)
               ) -> list[tuple[str, Timing, float]]:
    """(label, (median, best) seconds, max abs error against numpy) for every path; with
    `tune`, also ember tuned within that budget; for a one-row product, the GEMV with
    each of `gemv_list`."""
    rng = np.random.default_rng(0)
    rows = []
    if case.conv is None:
        arrays = [rng.standard_normal((case.m, case.k), np.float32),
                  rng.standard_normal((case.n, case.k) if case.trans_b else (case.k, case.n),
                                      np.float32)]
        b_logical = arrays[1].T if case.trans_b else arrays[1]
        expected = arrays[0] @ b_logical
        seconds = _timed(lambda: arrays[0] @ b_logical, repeat)
        modes = ("direct", "packed", "runtime-packed")
    else:
        x_shape, w_shape, pad = case.conv
        arrays = [rng.standard_normal(x_shape, np.float32),
                  rng.standard_normal(w_shape, np.float32)]
        kw = {"strides": (1, 1), "dilations": (1, 1), "pads": (pad,) * 4, "group": 1}
        expected = np.ascontiguousarray(conv_reference(*arrays, **kw))
        seconds = _timed(lambda: conv_reference(*arrays, **kw), repeat)
        modes = ("direct", "packed")
        if is_pointwise(conv_geometry(x_shape, w_shape, _conv_attrs(pad))):
            modes += ("pointwise",)
    rows.append(("numpy" + (" (im2col + BLAS)" if case.conv else ""), seconds, 0.0))
    rows.append(("ember.compile O2 default", _ember_compiled(dev, case, arrays, repeat, 2),
                 float("nan")))
    if tune is not None:
        rows.append(("ember.compile O3 tuned",
                     _ember_compiled(dev, case, arrays, repeat, 3, tune), float("nan")))
    clblast = None if case.conv else _clblast(dev, *arrays, case.trans_b, repeat)
    if clblast is not None:
        rows.append(("CLBlast (pyclblast)", *clblast))
    for index, params in enumerate(params_list):
        if params is None:
            params = (cpu_gemm_params(case.m, case.n) if case.conv is None else
                      cpu_gemm_params(math.prod(expected.shape[2:]), expected.shape[1]))
        for mode in modes:
            if mode == "pointwise" and index:
                continue  # its own default tiling: once per case
            if case.conv is None:
                run, result = _matmul_runner(dev, *arrays, params, mode, case.trans_b)
            else:
                run, result = _conv_runner(dev, *arrays, case.conv[2], params, mode)
            seconds = _timed(run, repeat)
            error = float(np.abs(result() - expected).max())
            kind = "" if case.conv is None else "out^T "
            label = (f"gemm_cpu {kind}{mode} mr={params.mr} vw={params.vw} nv={params.nv} "
                     f"ku={params.ku} group_m={params.group_m}")
            if mode == "pointwise":
                label = "gemm_cpu pointwise Y = W @ X (conv1x1_problem, default tiling)"
            rows.append((label, seconds, error))
    for params in gemv_list if case.conv is None and case.m == 1 else ():
        for packed in (True, False):
            run, result = _gemv_runner(dev, *arrays, params, packed, case.trans_b)
            seconds = _timed(run, repeat)
            label = (f"gemv_cpu {'packed' if packed else 'direct'} vw={params.vw} "
                     f"nv={params.nv} ku={params.ku} ppw={params.ppw} ksplit={params.ksplit}")
            rows.append((label, seconds, float(np.abs(result() - expected).max())))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(c.name for c in CASES),
                        help="comma-separated: " + ", ".join(c.name for c in CASES))
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--target", default="opencl")
    parser.add_argument("--sweep", action="store_true", help="also every tuner candidate")
    parser.add_argument("--tune", type=float, metavar="SECONDS", default=None,
                        help="also ember.compile(opt_level=3, tune=...) with this budget per "
                             "kernel (the TuningDB keeps the result: later runs reuse it)")
    parser.add_argument("--json", type=Path, help="also write every row here (charts.py)")
    parser.add_argument("--params", action="append", default=[],
                        help="extra tiling mr,vw,nv,ku,group_m (repeatable)")
    args = parser.parse_args(argv)
    target = args.target
    if target == "opencl":
        found = [d for d in ember.devices() if d.traits.device_type == "CPU"] or ember.devices()
        if not found:
            print("no OpenCL device: nothing to measure")
            return 1
        target = found[0].target
    dev = Device(target)
    print(f"device: {dev.dev.info.traits.name} ({dev.dev.info.traits.platform})")
    params_list: list[CpuGemmParams | None] = [None]
    for text in args.params:
        mr, vw, nv, ku, group_m = (int(v) for v in text.split(","))
        params_list.append(CpuGemmParams(mr, vw, nv, ku, group_m))
    target_of_device = dev.dev.target
    if args.sweep:  # a spread of each kind's search space on this device
        params_list += search_space("gemm_cpu", target_of_device).spread(22)
    gemv_list = tuple(dict.fromkeys((DEFAULT_GEMV_PARAMS, *(
        search_space("gemv_cpu", target_of_device).spread(15) if args.sweep else ()))))
    wanted = set(args.cases.split(","))
    report: dict[str, object] = {"device": dev.dev.info.traits.name, "cases": []}
    for case in CASES:
        if case.name not in wanted:
            continue
        shape = (f"M={case.m} N={case.n} K={case.k}{' trans_b' if case.trans_b else ''}"
                 if case.conv is None else
                 f"x={case.conv[0]} w={case.conv[1]} pad={case.conv[2]}")
        print(f"\n{case.name}: {shape}")
        tune = (None if args.tune is None else
                TuneBudget(model_seconds=args.tune, kernel_seconds=args.tune))
        rows = bench_case(dev, case, params_list, args.repeat, tune, gemv_list)
        base = rows[0][1][0]
        print(f"  {'path':<62} {'GFLOP/s':>8} {'x numpy':>8} {'best':>7} {'max err':>9}")
        for label, (median, best), error in rows:
            print(f"  {label:<62} {case.flops / median / 1e9:8.1f} {base / median:8.2f} "
                  f"{case.flops / best / 1e9:7.1f} {error:9.1e}")
        report["cases"].append({  # type: ignore[union-attr]
            "name": case.name, "shape": shape,
            "rows": [{"path": label, "gflops": case.flops / median / 1e9,
                      "x_numpy": base / median} for label, (median, _), _ in rows]})
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
