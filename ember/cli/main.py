"""The `ember` command: the parser, the dispatch, and info, run, show and demo.

Each subcommand is one `_cmd_*` function registered in `build_parser`; `ember cache` and
`ember tune` register theirs from cache.py and tune.py through the same `add`. Arguments
that several commands share (shapes, input files, exit codes) are parsed in args.py. Errors
that ember raises on purpose (EmberError) become one line on stderr and exit code 2, never
a traceback.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

import ember
from ember.cli.args import (
    EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, Command, add_shape_arguments,
    make_feeds, parse_pairs, parse_shapes, resolve_input_shapes,
)
from ember.cli.cache import add_cache_commands
from ember.cli.tune import add_tune_command, print_tuning
from ember.cli.demo_quant import MODEL as QUANT_MODEL
from ember.cli.demo_quant import print_quantized, quantized_demo
from ember.cli.quantize import add_quantize_command
from ember.errors import EmberError
from ember.frontends.onnx import input_signature, load_model
from ember.ir import to_dot, to_text
from ember.runtime.device import resolve_target

__all__ = ["main", "build_parser", "DemoResult", "print_demo", "DEMO_MIN_ACCURACY"]

DEMO_MIN_ACCURACY = 0.8
# ember and the numpy reference sum in different orders: logits may differ by float32
# rounding, scaled by their magnitude; anything larger is a real disagreement.
DEMO_RTOL = 1e-3
DEMO_MIN_AGREEMENT = 0.99


# -- helpers --------------------------------------------------------------------------------
def _where(model: ember.CompiledModel) -> str:
    if model.device is None:
        return "cpu (numpy executor)"
    info = model.device.info
    return f"{info.target} {info.traits.name} (family {info.family.name})"


def _timed_runs(model: ember.CompiledModel, feeds: dict[str, np.ndarray], repeat: int
                ) -> tuple[dict[str, np.ndarray], float, float]:
    """Outputs of the first call, its time (kernels build lazily there), and the median
    latency of `repeat` further calls."""
    start = time.perf_counter()
    outputs = model(**feeds)
    first = time.perf_counter() - start
    times = []
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        model(**feeds)
        times.append(time.perf_counter() - start)
    return outputs, first, statistics.median(times)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


# -- ember info -----------------------------------------------------------------------------
def _cmd_info(args: argparse.Namespace) -> int:
    print(f"ember {ember.__version__} (numpy {np.__version__})")
    found = ember.devices()
    if not found:
        print("OpenCL devices: none (no OpenCL driver or platform found)")
    for info in found:
        t, family = info.traits, info.family
        print(f"{info.target}  {t.name}  [{t.device_type}, {t.vendor}]")
        print(f"    platform {t.platform}; {t.version}; driver {t.driver_version}")
        print(f"    family {family.name} (SIMD width {family.simd_width}, "
              f"{'GPU' if family.is_gpu else 'not a GPU'})")
        print(f"    compute units {t.compute_units}, max work-group {t.max_work_group_size}, "
              f"local memory {t.local_mem_bytes // 1024} KiB, "
              f"fp16 {'yes' if t.fp16 else 'no'}, fp64 {'yes' if t.fp64 else 'no'}")
        if t.simulator:
            print("    a simulator: never the default, used only when named "
                  f"(--target oclgrind or {info.target})")
        print_tuning(info)
    default = resolve_target(None)
    if default is None:
        print("default target: cpu (numpy executor; no OpenCL device)")
    else:
        print(f"default target: {default.info.target} ({default.info.traits.name})")
    return EXIT_OK


# -- ember run ------------------------------------------------------------------------------
def _cmd_run(args: argparse.Namespace) -> int:
    proto = load_model(args.model)
    files = parse_pairs(args.input, "--input")
    feeds = make_feeds(input_signature(proto), files, parse_shapes(args.shape), args.seed)

    start = time.perf_counter()
    model = ember.compile(proto, target=args.target, opt_level=args.opt,
                          input_shapes={name: a.shape for name, a in feeds.items()})
    compile_seconds = time.perf_counter() - start
    outputs, first, median = _timed_runs(model, feeds, args.repeat)

    print(f"model {args.model} on {_where(model)}, opt_level {args.opt}")
    for name, array in feeds.items():
        origin = files.get(name, f"random (seed {args.seed})")
        print(f"input  {name}: shape {array.shape} {array.dtype}  from {origin}")
    for name, array in outputs.items():
        values = array.astype(np.float64)
        mean = float(values.mean()) if values.size else float("nan")
        print(f"output {name}: shape {array.shape} {array.dtype}  "
              f"sum {float(values.sum()):.6g}  mean {mean:.6g}")
    print(f"compile {compile_seconds:.3f} s; first call {_ms(first)}; "
          f"median latency {_ms(median)} over {args.repeat} runs")
    if args.summary:
        print(model.summary())
    return EXIT_OK


# -- ember demo -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoResult:
    """One digits model run by the demo, next to the numpy reference."""

    name: str
    where: str
    accuracy: float
    trained_accuracy: float
    max_abs_diff: float
    tolerance: float
    agreement: float  # fraction of predictions equal to the reference's
    compile_seconds: float
    first_call_seconds: float  # PoCL builds kernels at their first launch
    median_seconds: float
    host_steps: int

    @property
    def ok(self) -> bool:
        return (self.accuracy >= DEMO_MIN_ACCURACY and self.max_abs_diff <= self.tolerance
                and self.agreement >= DEMO_MIN_AGREEMENT)


def _demo_model(name: str, images: np.ndarray, labels: np.ndarray, trained: float,
                target: str | None, repeat: int) -> DemoResult:
    data = resources.files("ember") / "data"
    model_bytes = (data / f"digits_{name}.onnx").read_bytes()
    x = images.reshape(len(images), -1) if name == "mlp" else images
    shapes = {"input": x.shape}
    start = time.perf_counter()
    model = ember.compile(model_bytes, target=target, input_shapes=shapes)
    compile_seconds = time.perf_counter() - start
    outputs, first, median = _timed_runs(model, {"input": x}, repeat)
    reference = ember.compile(model_bytes, target="cpu", input_shapes=shapes)(input=x)
    logits, expected = outputs["logits"], reference["logits"]
    predictions = logits.argmax(axis=1)
    return DemoResult(
        name=name,
        where=_where(model),
        accuracy=float((predictions == labels).mean()),
        trained_accuracy=trained,
        max_abs_diff=float(np.abs(logits.astype(np.float64) - expected).max()),
        tolerance=DEMO_RTOL * max(1.0, float(np.abs(expected).max())),
        agreement=float((predictions == expected.argmax(axis=1)).mean()),
        compile_seconds=compile_seconds,
        first_call_seconds=first,
        median_seconds=median,
        host_steps=model.stats.host_steps if model.device is not None else 0,
    )


def print_demo(results: Sequence[DemoResult], count: int, repeat: int) -> None:
    print(f"ember {ember.__version__} demo: {count} held-out 8x8 digits in one batch")
    for r in results:
        print(f"\ndigits_{r.name} on {r.where}")
        print(f"  accuracy        {r.accuracy:.4f}  (training reported {r.trained_accuracy:.4f})")
        print(f"  vs numpy        max |diff| {r.max_abs_diff:.3g} (allowed {r.tolerance:.3g}), "
              f"identical predictions {r.agreement:.4f}")
        print(f"  latency         {_ms(r.median_seconds)} median of {repeat}")
        print(f"  compile         {r.compile_seconds:.3f} s, "
              f"first call {_ms(r.first_call_seconds)}")
        if r.host_steps:
            print(f"  note            {r.host_steps} step(s) ran on the host (no kernel)")
        if not r.ok:
            problems = []
            if r.accuracy < DEMO_MIN_ACCURACY:
                problems.append(f"accuracy {r.accuracy:.4f} < {DEMO_MIN_ACCURACY}")
            if r.max_abs_diff > r.tolerance or r.agreement < DEMO_MIN_AGREEMENT:
                problems.append("ember disagrees with the numpy reference")
            print(f"  FAILED          {'; '.join(problems)}")


def _cmd_demo(args: argparse.Namespace) -> int:
    with resources.as_file(resources.files("ember") / "data" / "digits_test.npz") as path:
        with np.load(path) as data:
            images, labels = data["images"], data["labels"]
            trained = {n: float(data[f"accuracy_{n}"]) for n in ("mlp", "cnn")}
    results = [_demo_model(name, images, labels, trained[name], args.target, args.repeat)
               for name in ("mlp", "cnn")]
    print_demo(results, len(labels), args.repeat)
    quantized = quantized_demo(images, labels, args.target, args.repeat)
    print_quantized(quantized, args.repeat)
    failed = [r.name for r in results if not r.ok]
    failed += [f"{QUANT_MODEL} {r.scheme}" for r in quantized
               if r.accuracy < DEMO_MIN_ACCURACY]
    if failed:
        print(f"ember demo: FAILED for {', '.join(failed)}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return EXIT_OK


# -- ember show -----------------------------------------------------------------------------
def _cmd_show(args: argparse.Namespace) -> int:
    given = parse_shapes(args.shape)
    proto = load_model(args.model)
    shapes = resolve_input_shapes(input_signature(proto), given)
    model = ember.compile(proto, target=args.target, opt_level=args.opt,
                          input_shapes=shapes, record_ir=args.passes)
    if args.passes:
        for record in model.pass_records:
            print(f"== {record.name}: {record.seconds * 1e3:.2f} ms, changed={record.changed}, "
                  f"{dict(record.stats)}, {record.nodes_after} nodes")
            if record.changed and record.text_after:
                print(record.text_after)
    print(to_text(model.graph))
    if args.dot:
        Path(args.dot).write_text(to_dot(model.graph))
        print(f"wrote {args.dot}")
    return EXIT_OK


# -- the parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember", description="ember: compile ONNX models to OpenCL kernels and run them.")
    parser.add_argument("--version", action="version", version=f"ember {ember.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what ember does, and print errors in full")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(func=func)
        return sub

    add("info", _cmd_info, "ember's version, the OpenCL devices and the default target")

    run = add("run", _cmd_run, "compile a model, run it on given or random inputs, "
              "print each output's checksum, the compile time and the latency")
    run.add_argument("model", help="path of an ONNX model")
    run.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                     help="an input from a .npy file (repeatable); others are random")
    add_shape_arguments(run, "the shape of a random input; named dims it shares with "
                             "other inputs fix theirs, and a dim no input fixes is an error")
    run.add_argument("--target", default=None,
                     help="cpu, opencl or opencl:P:D (default: first GPU, else first device)")
    run.add_argument("--opt", type=int, default=2, choices=range(4), help="opt level 0..3")
    run.add_argument("--repeat", type=int, default=10, help="timed runs after the first")
    run.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    run.add_argument("--summary", action="store_true", help="print model.summary()")

    show = add("show", _cmd_show, "print the IR after lowering (and after each pass), and "
               "write a Graphviz file of the final graph")
    show.add_argument("model", help="path of an ONNX model")
    show.add_argument("--opt", type=int, default=2, choices=range(4), help="opt level 0..3")
    show.add_argument("--target", default=None, help="as for run")
    add_shape_arguments(show, "an input's shape (needed for dims the model does not fix)")
    show.add_argument("--passes", action="store_true",
                      help="per-pass timing, what changed, and the IR after each changing pass")
    show.add_argument("--dot", metavar="OUT.dot", help="write the final graph for Graphviz")

    demo = add("demo", _cmd_demo, "run the shipped digits models on the default device and "
               "check them against the held-out labels and the numpy reference; then the "
               "MLP quantized in each scheme: accuracy, weight size and latency")
    demo.add_argument("--target", default=None, help="as for run (default: the default device)")
    demo.add_argument("--repeat", type=int, default=20, help="timed runs for the latency")

    add_cache_commands(add)
    add_tune_command(add)
    add_quantize_command(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except EmberError as exc:
        text = str(exc).strip() or type(exc).__name__
        lines = text.splitlines()
        if not args.verbose and len(lines) > 1:
            text = f"{lines[0]} (run with -v for details)"
        print(f"ember: error: {text}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ember: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
