"""The `ember` command: the parser, the global flags, the dispatch and exit codes, and info,
show and demo.

Each subcommand is one `_cmd_*` function registered in `build_parser`; `ember run`,
`ember compile`, `ember cache`, `ember tune` and `ember quantize` register theirs from their
modules through the same `add`. Arguments that several commands share (shapes, input files,
the target, exit codes) are parsed in args.py. -v and -q are taken before or after the
subcommand. Errors that ember raises on purpose (EmberError) become one line on stderr,
never a traceback: exit code 2 for a usage error (args.UsageError, an unreadable model
file), 1 for an error while compiling or running.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

import ember
from ember.cli.args import (
    EXIT_BROKEN_PIPE, EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE,
    Command, UsageError, add_shape_arguments, open_target, parse_shapes,
    positive_int, resolve_input_shapes,
)
from ember.cli.cache import add_cache_commands
from ember.cli.compile import add_compile_command
from ember.cli.tune import add_tune_command, print_tuning
from ember.cli.demo_quant import MODEL as QUANT_MODEL
from ember.cli.demo_quant import print_quantized, quantized_demo
from ember.cli.quantize import add_quantize_command
from ember.cli.run import add_run_command, ms, timed_runs, where
from ember.errors import EmberError, ModelLoadError
from ember.frontends.onnx import input_signature, load_model
from ember.ir import to_dot, to_text
from ember.runtime.device import resolve_target

__all__ = ["main", "build_parser", "DemoResult", "print_demo", "DEMO_MIN_ACCURACY"]

DEMO_MIN_ACCURACY = 0.8
# ember and the numpy reference sum in different orders: logits may differ by float32
# rounding, scaled by their magnitude; anything larger is a real disagreement.
DEMO_RTOL = 1e-3
DEMO_MIN_AGREEMENT = 0.99


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
    opencl_cpu = any(i.traits.device_type == "CPU" for i in found)
    print("numpy: the numpy executor (alias: cpu)"
          + (", not the OpenCL CPU device above" if opencl_cpu else ""))
    default = resolve_target(None)
    if default is None:
        print("default target: numpy (the numpy executor; no OpenCL device)")
    else:
        print(f"default target: {default.info.target} ({default.info.traits.name})")
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
    outputs, timings = timed_runs(lambda: model(input=x), 1, repeat)
    reference = ember.compile(model_bytes, target="cpu", input_shapes=shapes)(input=x)
    logits, expected = outputs["logits"], reference["logits"]
    predictions = logits.argmax(axis=1)
    return DemoResult(
        name=name,
        where=where(model),
        accuracy=float((predictions == labels).mean()),
        trained_accuracy=trained,
        max_abs_diff=float(np.abs(logits.astype(np.float64) - expected).max()),
        tolerance=DEMO_RTOL * max(1.0, float(np.abs(expected).max())),
        agreement=float((predictions == expected.argmax(axis=1)).mean()),
        compile_seconds=compile_seconds,
        first_call_seconds=timings.first,
        median_seconds=timings.median,
        host_steps=model.stats.host_steps if model.device is not None else 0,
    )


def print_demo(results: Sequence[DemoResult], count: int, repeat: int) -> None:
    print(f"ember {ember.__version__} demo: {count} held-out 8x8 digits in one batch")
    for r in results:
        print(f"\ndigits_{r.name} on {r.where}")
        print(f"  accuracy        {r.accuracy:.4f}  (training reported {r.trained_accuracy:.4f})")
        print(f"  vs numpy        max |diff| {r.max_abs_diff:.3g} (allowed {r.tolerance:.3g}), "
              f"identical predictions {r.agreement:.4f}")
        print(f"  latency         {ms(r.median_seconds)} median of {repeat}")
        print(f"  compile         {r.compile_seconds:.3f} s, "
              f"first call {ms(r.first_call_seconds)}")
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
    open_target(args.target)  # a target that does not exist: a usage error
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
def _add_global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    """-v and -q. The top parser holds their defaults; every subcommand's parser takes them
    too, defaulting to SUPPRESS so that a flag given before the subcommand is kept."""
    parser.add_argument("-v", "--verbose", action="count",
                        default=default if default is argparse.SUPPRESS else 0,
                        help="log what ember does (-vv: debug), and print errors in full")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="print only errors on stderr: no logs, warnings or progress")


_GLOBAL_FLAGS = argparse.ArgumentParser(add_help=False)
_add_global_flags(_GLOBAL_FLAGS, argparse.SUPPRESS)


class _CommandParser(argparse.ArgumentParser):
    """The parser of a subcommand (and of its own subcommands, as `ember cache info`): it
    takes the global flags, so that `-v` works after the subcommand as well as before."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["parents"] = [*kwargs.get("parents", ()), _GLOBAL_FLAGS]  # type: ignore[misc]
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember", description="ember: compile ONNX models to OpenCL kernels and run them.",
        epilog="exit codes: 0 done, 1 an error while compiling or running (or a failed "
               "check), 2 a usage error, 130 interrupted, 141 stdout closed by its reader")
    parser.add_argument("--version", action="version", version=f"ember {ember.__version__}")
    _add_global_flags(parser, False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_CommandParser)

    def add(name: str, func: Command, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(func=func)
        return sub

    add("info", _cmd_info, "ember's version, the OpenCL devices and the default target")

    add_run_command(add)
    add_compile_command(add)

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
    demo.add_argument("--repeat", type=positive_int, default=20,
                      help="timed runs for the latency")

    add_cache_commands(add)
    add_tune_command(add)
    add_quantize_command(add)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = (logging.DEBUG if verbose > 1 else logging.INFO if verbose
             else logging.ERROR if quiet else logging.WARNING)
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("ember").setLevel(level)


def _error_text(exc: EmberError, verbose: int) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = text.splitlines()
    if not verbose and len(lines) > 1:
        text = f"{lines[0]} (run with -v for details)"
    return text


def _exit_code(exc: EmberError) -> int:
    """Usage errors (the command line as written cannot be done: a bad flag value, a model
    or input file that cannot be read or does not fit) are 2; an error while compiling or
    running is 1."""
    return EXIT_USAGE if isinstance(exc, (UsageError, ModelLoadError)) else EXIT_ERROR


def _stdout_closed() -> int:
    """The reader of stdout is gone (`ember cache info | head -2`): what is left to print
    has nowhere to go. stdout is pointed at devnull so that the interpreter's last flush
    raises nothing, and the exit code is a shell's for a process killed by SIGPIPE, as
    for any Unix tool whose reader stopped early."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose and args.quiet:
        build_parser().error("-v and -q contradict each other; give one")
    _configure_logging(args.verbose, args.quiet)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is seen while it can be handled
        return code
    except EmberError as exc:
        print(f"ember: error: {_error_text(exc, args.verbose)}", file=sys.stderr)
        return _exit_code(exc)
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        print("ember: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
