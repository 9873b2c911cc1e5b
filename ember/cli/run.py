"""`ember run`: compile a model (or open a compiled `.ember` bundle), run it on given or
random inputs, and report what a user of onnxruntime_perf_test or trtexec looks for: each
output's checksum, NaN/Inf counts, the compile time and the latency; optionally the outputs
saved, a per-op profile, and the same feeds through onnxruntime side by side.

Everything the command line asks for is checked before compiling (usage errors, exit 2);
results are saved before anything is printed, so a reader that stops early (`| head`) does
not lose them.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import sys
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import ember
from ember.cli.args import (
    EXIT_OK, AddCommand, UsageError, add_shape_arguments, make_feeds,
    non_negative_int, open_target, parse_pairs, parse_shapes, positive_int,
)
from ember.cli.inputs import InputRole, input_roles
from ember.errors import EmberError
from ember.frontends.onnx import input_signature, load_model
from ember.runtime.bundle import read_model

__all__ = ["add_run_command", "Timings", "timed_runs", "where", "ms", "nonfinite_counts",
           "save_outputs", "BUNDLE_SUFFIX"]

log = logging.getLogger(__name__)

BUNDLE_SUFFIX = ".ember"  # a model compiled and saved by CompiledModel.save
COMPARE_WITH = ("onnxruntime",)


# -- helpers the other commands share --------------------------------------------------------
def where(model: ember.CompiledModel) -> str:
    """The target a model runs on, in words."""
    if model.device is None:
        return "numpy (the numpy executor)"
    info = model.device.info
    return f"{info.target} {info.traits.name} (family {info.family.name})"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


@dataclass(frozen=True)
class Timings:
    """The seconds of every call: the first (kernels build lazily there), the warm-ups,
    then the timed runs."""

    first: float
    runs: tuple[float, ...]
    warmup: int

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def timed_runs(call: Callable[[], Any], warmup: int, repeat: int) -> tuple[Any, Timings]:
    """What the first call returned, and the time of `warmup` untimed then `repeat` timed
    calls (the first call is a warm-up when warmup >= 1, else the first timed run)."""
    seconds, result = [], None
    for index in range(warmup + repeat):
        start = time.perf_counter()
        returned = call()
        seconds.append(time.perf_counter() - start)
        if index == 0:
            result = returned
    return result, Timings(seconds[0], tuple(seconds[warmup:]), warmup)


def nonfinite_counts(array: np.ndarray) -> tuple[int, int]:
    """(NaN count, Inf count) of an array; integers have neither."""
    if not np.issubdtype(array.dtype, np.inexact):
        return 0, 0
    return int(np.isnan(array).sum()), int(np.isinf(array).sum())


def save_outputs(path: str | Path, outputs: Mapping[str, np.ndarray]) -> None:
    """Every output in one .npz, its name the key (np.load(path)[name]). Written as
    np.savez writes it, member by member, so that an output named like one of savez's own
    parameters ('file', 'allow_pickle') is stored too, and the path is kept as given
    (np.savez would append .npz)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as npz:
        for name, array in outputs.items():
            with npz.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _warn(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"ember: warning: {text}", file=sys.stderr)


# -- reading the command line ---------------------------------------------------------------
@dataclass
class _Source:
    """The model as the command line gives it: an ONNX proto, or a compiled bundle."""

    path: str
    proto: Any | None  # onnx.ModelProto; None for a bundle
    bundle: ember.LoadedModel | None
    load_seconds: float = 0.0  # opening the bundle


def _open_source(args: argparse.Namespace) -> _Source:
    path = args.model
    if not path.endswith(BUNDLE_SUFFIX):
        # ModelLoadError (no such file, not ONNX) is a usage error; an op ember lacks is not
        return _Source(path, load_model(path), None)
    if not Path(path).is_file():
        raise UsageError(f"no compiled bundle at {path}")
    for flag, given in (("--opt", args.opt is not None), ("--threads", args.threads),
                        ("--compare", args.compare)):
        if given:
            raise UsageError(f"{flag} needs an ONNX model; {path} is already compiled")
    open_target(args.target)  # a target that does not exist: usage error
    start = time.perf_counter()
    bundle = ember.load(path, target=args.target)
    return _Source(path, None, bundle, time.perf_counter() - start)


def _bundle_inputs(source: _Source, shapes: Mapping[str, tuple[int, ...]],
                   files: Mapping[str, str]) -> tuple[dict, dict[str, InputRole],
                                                      dict[str, tuple[int, ...]]]:
    """A bundle's inputs as input_signature() gives an ONNX model's, their roles (read from
    the ONNX model inside it, where it has one), and the shapes of random inputs: the
    first stored specialization's where the command line gives none."""
    model = source.bundle
    signature = dict(model._signature)  # what load() restored from the bundle's header
    roles: dict[str, InputRole] = {}
    try:
        proto = load_model(read_model(Path(source.path)))
    except EmberError:  # no ONNX model inside: roles by the dtype alone
        proto = None
    if proto is not None:
        roles = input_roles(proto, {n: dtype for n, (_, dtype) in signature.items()})
    stored = list(getattr(model, "shapes", None) or [])
    if stored and not shapes and not files:
        shapes = dict(zip(signature, stored[0]))
    return signature, roles, dict(shapes)


def _check_output_path(path: str | None) -> None:
    if path is None:
        return
    folder = Path(path).parent
    if not folder.is_dir():
        raise UsageError(f"--output {path}: the directory {folder} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"--output {path}: a directory; give a file name (OUT.npz)")


def _check_compare(args: argparse.Namespace) -> None:
    if args.compare and importlib.util.find_spec(args.compare) is None:
        raise UsageError(f"--compare {args.compare}: {args.compare} is not installed "
                         f"(pip install {args.compare})")


# -- onnxruntime side by side ----------------------------------------------------------------
@dataclass(frozen=True)
class _Comparison:
    version: str
    timings: Timings
    outputs: dict[str, np.ndarray]


def _run_onnxruntime(path: str, feeds: Mapping[str, np.ndarray], args: argparse.Namespace
                     ) -> _Comparison:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are not ember's
    if args.threads:
        options.intra_op_num_threads = args.threads
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        listed, timings = timed_runs(lambda: session.run(names, dict(feeds)), args.warmup,
                                     args.repeat)
    except Exception as exc:  # onnxruntime's errors have no common base class
        raise EmberError(f"--compare onnxruntime: onnxruntime could not run {path}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
                         ) from exc
    return _Comparison(ort.__version__, timings, dict(zip(names, listed)))


def _difference(ours: np.ndarray, theirs: np.ndarray) -> str:
    if ours.shape != theirs.shape:
        return f"shape {ours.shape} differs from onnxruntime's {theirs.shape}"
    a, b = ours.astype(np.float64), theirs.astype(np.float64)
    if a.size == 0:
        return "empty, nothing to compare"
    diff = a - b
    max_abs = float(np.abs(diff).max())
    norm = float(np.linalg.norm(b))
    relative = float(np.linalg.norm(diff)) / norm if norm else float(np.linalg.norm(diff))
    return f"max abs error {max_abs:.3g}, relative L2 {relative:.3g}"


# -- the command ----------------------------------------------------------------------------
def _input_origin(name: str, files: Mapping[str, str], roles: Mapping[str, InputRole],
                  seed: int) -> str:
    if name in files:
        return files[name]
    role = roles.get(name)
    return f"random {role.describe()} (seed {seed})" if role else f"random (seed {seed})"


def _cmd_run(args: argparse.Namespace) -> int:
    # everything the command line says is checked before the compile
    _check_output_path(args.output)
    _check_compare(args)
    source = _open_source(args)
    files = parse_pairs(args.input, "--input")
    shapes = parse_shapes(args.shape)
    if source.proto is not None:
        signature = input_signature(source.proto)
        roles = input_roles(source.proto, {n: dtype for n, (_, dtype) in signature.items()})
        open_target(args.target)  # a target that does not exist: usage error
    else:
        signature, roles, shapes = _bundle_inputs(source, shapes, files)
    feeds = make_feeds(signature, files, shapes, args.seed, roles)

    if source.bundle is not None:
        model, compile_seconds = source.bundle, source.load_seconds
    else:
        # results print at the end; -v shows the stages as they go
        log.info("compiling %s for %s (input shapes %s)", args.model, args.target or "the "
                 "default target", ", ".join(f"{n}={a.shape}" for n, a in feeds.items()))
        start = time.perf_counter()
        model = ember.compile(source.proto, target=args.target,
                              opt_level=2 if args.opt is None else args.opt,
                              input_shapes={name: a.shape for name, a in feeds.items()},
                              threads=args.threads)
        compile_seconds = time.perf_counter() - start
    log.info("running %d warm-up and %d timed call(s)", args.warmup, args.repeat)
    outputs, timings = timed_runs(lambda: model(feeds), args.warmup, args.repeat)
    profile = model.profile(feeds, runs=args.repeat, warmup=0) if args.profile else None
    compared = (_run_onnxruntime(args.model, feeds, args) if args.compare else None)
    if args.output:
        save_outputs(args.output, outputs)

    units = ""
    if model.device is not None and model.device.info.traits.device_type == "CPU":
        count = model.device.info.traits.compute_units
        units = f", {count} compute unit{'s' if count != 1 else ''}"
    print(f"model {args.model} on {where(model)}{units}, opt_level {model.opt_level}")
    for name, array in feeds.items():
        print(f"input  {name}: shape {array.shape} {array.dtype}  from "
              f"{_input_origin(name, files, roles, args.seed)}")
    for name, array in outputs.items():
        values = array.astype(np.float64)
        mean = float(values.mean()) if values.size else float("nan")
        print(f"output {name}: shape {array.shape} {array.dtype}  "
              f"sum {float(values.sum()):.6g}  mean {mean:.6g}")
    built = "loaded" if source.bundle is not None else "compile"
    print(f"{built} {compile_seconds:.3f} s; first call {ms(timings.first)}; "
          f"median latency {ms(timings.median)} over {args.repeat} runs "
          f"(min {ms(min(timings.runs))}, after {args.warmup} warm-up)")
    if compared is not None:
        print(f"onnxruntime {compared.version} (CPUExecutionProvider): median latency "
              f"{ms(compared.timings.median)} over {args.repeat} runs; ember/onnxruntime "
              f"{timings.median / compared.timings.median:.2f}x")
        for name, array in outputs.items():
            theirs = compared.outputs.get(name)
            text = ("not an output of onnxruntime's session" if theirs is None
                    else _difference(array, theirs))
            print(f"compare {name}: {text}")
    if profile is not None:
        print(profile.format(by_op=True))
    if args.summary:
        print(model.summary())
    if args.output:
        print(f"wrote {len(outputs)} output(s) to {args.output}")
    for name, array in outputs.items():
        nans, infs = nonfinite_counts(array)
        if nans or infs:
            _warn(args, f"output {name!r} holds {nans} NaN and {infs} Inf of "
                        f"{array.size} values")
    return EXIT_OK


def add_run_command(add: AddCommand) -> None:
    """Register `ember run` through main.py's `add`."""
    run = add("run", _cmd_run, "compile a model (or open a compiled .ember bundle), run it "
              "on given or random inputs, print each output's checksum, the compile time and "
              "the latency")
    run.add_argument("model", help=f"path of an ONNX model, or of a compiled bundle "
                                   f"(*{BUNDLE_SUFFIX}, written by model.save)")
    run.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                     help="an input from a .npy file (repeatable); the others are random, "
                          "made to fit how the model uses them: token ids below the "
                          "embedding's rows, masks of ones, segment ids of zeros, positions "
                          "0, 1, ..., True for bools, small ints, normal floats")
    add_shape_arguments(run, "the shape of a random input; named dims it shares with "
                             "other inputs fix theirs, and a dim no input fixes is an error")
    run.add_argument("--target", default=None,
                     help="numpy (alias cpu), opencl, oclgrind or opencl:P:D (default: the "
                          "first GPU, else the first OpenCL device)")
    run.add_argument("--opt", type=int, default=None, choices=range(4),
                     help="opt level 0..3 (default 2)")
    run.add_argument("--threads", type=positive_int, default=None, metavar="N",
                     help="run on N compute units of an OpenCL CPU device (a sub-device); "
                          "ignored on a GPU; numpy has no thread setting")
    run.add_argument("--repeat", type=positive_int, default=10, metavar="N",
                     help="timed runs (>= 1; default 10)")
    run.add_argument("--warmup", type=non_negative_int, default=1, metavar="N",
                     help="untimed runs first (default 1: the first call builds kernels)")
    run.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    run.add_argument("--output", metavar="OUT.npz",
                     help="save every output in one .npz file, keyed by output name")
    run.add_argument("--profile", action="store_true",
                     help="time each op over --repeat more runs; print a table, slowest "
                          "first, with the totals")
    run.add_argument("--compare", choices=COMPARE_WITH, default=None,
                     help="run the same inputs through onnxruntime (CPUExecutionProvider): "
                          "max abs error and relative L2 per output, and the latency ratio "
                          "(with --threads, onnxruntime gets as many intra-op threads)")
    run.add_argument("--summary", action="store_true", help="print model.summary()")
