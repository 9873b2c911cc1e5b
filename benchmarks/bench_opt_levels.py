"""What each optimization level buys, per model: kernel launches per inference, peak device
memory against the naive one-buffer-per-tensor plan, and median latency at O0, O1, O2 and
O3 on the default OpenCL device, beside onnxruntime (CPU provider, 2 threads).

The runners are timed round-robin (one call of each, repeated), so that a noisy neighbour
on the machine slows them all alike; the table shows medians and ratios: latency against O0
and against onnxruntime; peak device memory (all of it, then activations alone, without the
weights) against the naive plan, one buffer per tensor of the unoptimized (O0) graph:

    python benchmarks/bench_opt_levels.py [--models resnet,bert] [--repeat 20] [--json out.json]
    python benchmarks/bench_opt_levels.py --tune 120   # O3 tuned first (kept in the TuningDB)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ember  # noqa: E402
from ember.tuning.tuner import TuneBudget  # noqa: E402
from benchmarks.bench_models import THREADS, Case, environment, select  # noqa: E402

__all__ = ["LevelResult", "ModelResult", "run_model", "main"]

DEFAULT_MODELS = ["resnet_mini", "mobilenetv2_mini", "bert_mini", "gpt2_mini"]


@dataclass
class LevelResult:
    opt_level: int
    kernel_launches: int
    peak_device_bytes: int
    naive_device_bytes: int
    peak_activation_bytes: int  # without the weights (constants)
    naive_activation_bytes: int
    median_ms: float = 0.0


@dataclass
class ModelResult:
    name: str
    ort_ms: float = 0.0
    levels: list[LevelResult] = field(default_factory=list)


def _round_robin(runners: list[Callable[[], Any]], warmup: int, repeat: int) -> list[float]:
    """Median ms of each runner, timed one call each in turn."""
    for run in runners:
        for _ in range(warmup):
            run()
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(repeat):
        for i, run in enumerate(runners):
            start = time.perf_counter()
            run()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def run_model(case: Case, levels: list[int], warmup: int, repeat: int,
              tune: TuneBudget | None = None) -> ModelResult:
    feeds = case.feeds()
    shapes = {k: v.shape for k, v in feeds.items()}
    model: bytes | str = case.prepare(case.path) if case.prepare else str(case.path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    result = ModelResult(case.name)
    runners: list[Callable[[], Any]] = [lambda: session.run(names, feeds)]
    for level in levels:
        compiled = ember.compile(model, opt_level=level, input_shapes=shapes,
                                 tune=tune if level >= 3 and tune is not None else False)
        compiled(**feeds)  # the first call finishes PoCL's kernel builds
        stats = compiled.stats
        result.levels.append(LevelResult(level, stats.kernel_launches, stats.peak_device_bytes,
                                         stats.naive_device_bytes, stats.peak_activation_bytes,
                                         stats.naive_activation_bytes))
        runners.append(lambda compiled=compiled: compiled(**feeds))
    medians = _round_robin(runners, warmup, repeat)
    result.ort_ms = medians[0]
    for level, ms in zip(result.levels, medians[1:]):
        level.median_ms = ms
    return result


def format_table(results: list[ModelResult]) -> str:
    header = ("model", "level", "launches", "vs O0", "peak MiB", "vs naive", "activations",
              "vs naive", "median ms", "vs O0", "vs ort")
    rows = [header]
    for r in results:
        base = r.levels[0]
        rows.append((r.name, "ort", "-", "-", "-", "-", "-", "-", f"{r.ort_ms:.3f}", "-",
                     "1.00x"))
        for lv in r.levels:
            rows.append((
                "", f"O{lv.opt_level}", str(lv.kernel_launches),
                f"{lv.kernel_launches / max(base.kernel_launches, 1):.0%}",
                f"{lv.peak_device_bytes / 2**20:.2f}",
                f"{lv.peak_device_bytes / max(base.naive_device_bytes, 1):.0%}",
                f"{lv.peak_activation_bytes / 2**20:.2f}",
                f"{lv.peak_activation_bytes / max(base.naive_activation_bytes, 1):.0%}",
                f"{lv.median_ms:.3f}", f"{lv.median_ms / base.median_ms:.2f}x",
                f"{lv.median_ms / r.ort_ms:.2f}x"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names or substrings "
                        f"(default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--levels", default="0,1,2,3", help="opt levels to compare")
    parser.add_argument("--repeat", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per runner")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--tune", type=float, metavar="SECONDS",
                        help="tune O3's kernels first, up to SECONDS per model (what the "
                             "TuningDB already holds is not measured again)")
    args = parser.parse_args(argv)
    tune = None if args.tune is None else TuneBudget(model_seconds=args.tune,
                                                     kernel_seconds=min(args.tune, 20.0))
    env = environment()
    if env["device"] is None:
        raise SystemExit("no OpenCL device: the optimization levels are compared on one")
    levels = [int(v) for v in args.levels.split(",")]
    patterns = args.models.split(",") if args.models else DEFAULT_MODELS
    print(f"device: {env['device']}; onnxruntime {env['onnxruntime']} with {THREADS} threads; "
          f"median of {args.repeat} round-robin rounds after {args.warmup} warm-up calls")
    results = []
    for case in select(patterns):
        print(f"running {case.name} ...", file=sys.stderr, flush=True)
        results.append(run_model(case, levels, args.warmup, args.repeat, tune))
    print(format_table(results))
    if args.json:
        payload = {"environment": env, "repeat": args.repeat,
                   "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
