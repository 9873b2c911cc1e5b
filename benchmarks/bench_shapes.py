"""What a new input shape costs: a model with free dims (the BERT and GPT-2 test models'
batch and sequence), called with one sequence length after another, as a sentence-embedding
service or a decoder sees them.

For each model, in one process and one run:

    generic   ember.compile(model) (generic kernels, the default): the first call builds;
              every later new length is planned and runs on the same program
    static    ember.compile(model, generic_kernels=False): every new length builds its own
              kernels, as before generic kernels
    ort       onnxruntime (CPU provider, 2 threads): its session runs any shape

and the steady latency at the last length (median of --repeat calls) for each, as ratios to
onnxruntime. The cost of a new length is its first call (planning, any build, the run). The
lengths are drawn once from a seeded generator, distinct, so every one is new.

    python benchmarks/bench_shapes.py [--models bert_mini,gpt2_mini] [--lengths 12]
        [--repeat 20] [--json out.json] [--warm-cache]

Caches start empty (a new EMBER_CACHE_DIR, which also holds PoCL's kernel cache) unless
--warm-cache is given, so every build the table counts really happens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if "--warm-cache" not in sys.argv:  # every build really happens: an empty ember and PoCL cache
    os.environ["EMBER_CACHE_DIR"] = tempfile.mkdtemp(prefix="ember-bench-shapes-")

import ember

MODELS = ROOT / "tests" / "models"
VOCAB = 1000  # the test models' vocabulary
MAX_LENGTH = 128  # their position tables


def tokens(model_inputs: list[str], length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(0, VOCAB, (1, length)).astype(np.int64)}
    if "attention_mask" in model_inputs:
        feeds["attention_mask"] = np.ones((1, length), np.int64)
    return feeds


def first_calls(run, inputs: list[str], lengths: list[int]) -> list[float]:
    times = []
    for length in lengths:
        feeds = tokens(inputs, length, length)
        start = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - start)
    return times


def steady(run, feeds: dict[str, np.ndarray], repeat: int) -> float:
    run(feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, count: int, repeat: int, seed: int) -> dict:
    path = MODELS / f"{name}.onnx"
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.choice(np.arange(2, MAX_LENGTH + 1), count + 1,
                                          replace=False)]
    runners = {}
    generic = ember.compile(path)
    runners["generic"] = lambda feeds: generic(**feeds)
    static = ember.compile(path, generic_kernels=False)
    runners["static"] = lambda feeds: static(**feeds)
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        runners["ort"] = lambda feeds: session.run(None, feeds)
    except ImportError:
        print("onnxruntime is not installed: no ort column", file=sys.stderr)
    inputs = generic.input_names
    result: dict = {"model": name, "first_length": lengths[0], "lengths": lengths[1:]}
    for label, run in runners.items():
        first = first_calls(run, inputs, lengths[:1])[0]
        later = first_calls(run, inputs, lengths[1:])
        latency = steady(run, tokens(inputs, lengths[-1], 0), repeat)
        result[label] = {"first_s": first, "new_length_s": later,
                         "new_length_median_s": statistics.median(later),
                         "latency_s": latency}
    return result


def report(results: list[dict]) -> None:
    print(f"{'model':<10} {'runner':<8} {'first call':>11} {'new length':>11} "
          f"{'(max)':>9} {'latency':>9} {'vs ort':>7}")
    for r in results:
        ort = r.get("ort", {}).get("latency_s")
        for label in ("generic", "static", "ort"):
            if label not in r:
                continue
            row = r[label]
            ratio = f"{row['latency_s'] / ort:.2f}" if ort else "-"
            print(f"{r['model']:<10} {label:<8} {row['first_s'] * 1e3:>8.0f} ms "
                  f"{row['new_length_median_s'] * 1e3:>8.1f} ms "
                  f"{max(row['new_length_s']) * 1e3:>6.0f} ms "
                  f"{row['latency_s'] * 1e3:>6.2f} ms {ratio:>7}")
        print(f"{'':<10} lengths: first {r['first_length']}, then {r['lengths']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bert_mini,gpt2_mini")
    parser.add_argument("--lengths", type=int, default=12, help="new lengths after the first")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--warm-cache", action="store_true",
                        help="use the user's ember cache (default: an empty one)")
    args = parser.parse_args()
    results = [bench(name, args.lengths, args.repeat, args.seed)
               for name in args.models.split(",")]
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
