"""PNG charts for the README from the benchmarks' JSON output:

    python benchmarks/bench_gemm.py --json gemm.json
    python benchmarks/bench_opt_levels.py --json levels.json
    python benchmarks/charts.py --gemm gemm.json --levels levels.json --out docs/

draws `gemm.png` (GFLOP/s per kernel path and problem, numpy beside them) and
`opt_levels.png` (latency per optimization level as a ratio to onnxruntime, per model).
matplotlib is a benchmark dependency only (`pip install ".[bench]"`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["gemm_chart", "levels_chart", "main"]

# bench_gemm.py path labels -> the legend's names (the first match wins)
GEMM_PATHS = (("numpy", "numpy (BLAS)"), ("CLBlast", "CLBlast (pyclblast)"),
              ("O2 default", "ember.compile O2, default parameters"),
              ("O3 tuned", "ember.compile O3, tuned"),
              ("packed", "ember CPU kernel, packed weights"),
              ("direct", "ember CPU kernel, B as stored"),
              ("pointwise", "ember CPU kernel, 1x1 as W @ X"))


def _bars(ax: Any, groups: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)


def gemm_chart(report: dict[str, Any], out: Path) -> Path:
    import matplotlib.pyplot as plt

    groups = [case["shape"] if len(case["shape"]) < 28 else case["name"]
              for case in report["cases"]]
    series: dict[str, list[float]] = {name: [] for _, name in GEMM_PATHS}
    for case in report["cases"]:
        best: dict[str, float] = {}
        for row in case["rows"]:
            for key, name in GEMM_PATHS:
                if key in row["path"]:
                    best[name] = max(best.get(name, 0.0), row["gflops"])
                    break
        for name in series:
            series[name].append(best.get(name, 0.0))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    _bars(ax, groups, {k: v for k, v in series.items() if any(v)}, "GFLOP/s (median)")
    ax.set_title(f"float32 GEMM and conv on {report['device']}")
    fig.tight_layout()
    path = out / "gemm.png"
    fig.savefig(path, dpi=110)
    return path


def levels_chart(report: dict[str, Any], out: Path) -> Path:
    import matplotlib.pyplot as plt

    models = [r["name"] for r in report["results"]]
    levels = [lv["opt_level"] for lv in report["results"][0]["levels"]]
    series = {f"O{level}": [next(lv["median_ms"] for lv in r["levels"]
                                 if lv["opt_level"] == level) / r["ort_ms"]
                            for r in report["results"]] for level in levels}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _bars(ax, models, series, "median latency / onnxruntime's")
    ax.axhline(1.0, color="black", linewidth=0.8)
    device = str(report['environment']['device']).split(' (')[0]
    ax.set_title(f"ember per optimization level, {device}")
    fig.tight_layout()
    path = out / "opt_levels.png"
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemm", type=Path, help="bench_gemm.py --json output")
    parser.add_argument("--levels", type=Path, help="bench_opt_levels.py --json output")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.gemm:
        print(f"wrote {gemm_chart(json.loads(args.gemm.read_text()), args.out)}")
    if args.levels:
        print(f"wrote {levels_chart(json.loads(args.levels.read_text()), args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
