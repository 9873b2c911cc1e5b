"""`ember tune`: tune the MatMul / Conv kernels of models on a device and keep the results in
the TuningDB (tuning/db.py); registered by main.build_parser. `ember info` prints each
device's tuning state through `print_tuning`, so that the TuningDB is read in one module."""

from __future__ import annotations

import argparse
import re

import ember
from ember.cli.args import EXIT_OK, AddCommand, add_shape_arguments, parse_shapes
from ember.codegen.families import Target
from ember.codegen.params import param_kinds, params_for
from ember.errors import DeviceError, InputError
from ember.frontends.onnx import input_signature, load_model
from ember.runtime.device import resolve_target
from ember.tuning.db import TuningDB
from ember.tuning.tuner import TuneBudget, TuneResult

__all__ = ["add_tune_command", "parse_seconds", "tunables_line", "print_tuning",
           "format_result"]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_seconds(text: str) -> float:
    """'60s', '90', '1.5m', '2h' -> seconds (argparse type)."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", text.lower())
    if not found or float(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration like 60s, 2m or 90")
    return float(found.group(1)) * _UNITS[found.group(2) or ""]


def tunables_line(target: Target) -> str:
    """Where each kernel kind's parameters come from on a device (for `ember info`)."""
    return ", ".join(f"{kind} from {spec.shape_rule or params_for(kind, None, target).source}"
                     for kind, spec in param_kinds().items())


def print_tuning(info: ember.DeviceInfo) -> None:
    """Where the kernels' tunables come from on a device, and its TuningDB (`ember info`)."""
    family, target = info.family, Target(info.traits, info.family)
    if family.arch or family.generation:
        print(f"    arch {family.arch or '?'} {family.generation}".rstrip())
    print(f"    tunables: {tunables_line(target)}")
    db = TuningDB(target)
    print(f"    tuned kernels: {len(db)} in {db.path}")


def format_result(r: TuneResult) -> str:
    if r.skipped:
        return f"  {r.kind:9} {r.key}: already tuned (in the TuningDB)"
    best, default = r.best, r.default_trial
    if best is None:
        return (f"  {r.kind:9} {r.key}: every candidate was rejected "
                f"({r.rejected[0].error if r.rejected else 'none measured'})")

    def rate(seconds: float | None) -> str:
        value = r.gflops(seconds)
        return f"{value:.2f} {r.unit}" if value is not None else "rejected"

    base = default.seconds if default is not None else None
    speedup = f" ({r.speedup:.2f}x)" if r.speedup is not None else ""
    return (f"  {r.kind:9} {r.key}\n"
            f"            default {rate(base)} ({r.default.source}) -> tuned "
            f"{rate(best.seconds)}{speedup} with {best.params}\n"
            f"            {len(r.trials)} candidate(s), {len(r.rejected)} rejected, "
            f"{'whole space' if r.exhausted else 'sampled'}, {r.elapsed:.1f} s")


def _cmd_tune(args: argparse.Namespace) -> int:
    device = resolve_target(args.target)
    if device is None:
        raise DeviceError("ember tune needs an OpenCL device (pip install "
                          "pocl-binary-distribution gives a CPU one); none was found")
    if not args.model and not (args.import_file or args.export):
        raise InputError("give at least one MODEL (or --import / --export)")
    db = TuningDB(device.target)
    if args.import_file:
        taken = db.import_(args.import_file)
        print(f"imported {taken} entr{'y' if taken == 1 else 'ies'} from {args.import_file}")
    shapes = parse_shapes(args.shape)
    protos = [(path, load_model(path)) for path in args.model]
    names = {name for _, proto in protos for name in input_signature(proto)}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise InputError(f"--shape names unknown input(s) {unknown}; the models' "
                         f"inputs are {sorted(names)}")
    budget = TuneBudget(model_seconds=args.budget,
                        kernel_seconds=min(args.kernel_budget, args.budget))
    info = device.info
    for path, proto in protos:
        mine = {n: s for n, s in shapes.items() if n in input_signature(proto)}
        print(f"tuning {path} on {info.target} {info.traits.name} (family "
              f"{info.family.name}), budget {args.budget:g} s")
        model = ember.compile(proto, target=args.target, opt_level=args.opt,
                              input_shapes=mine or None, tune=budget)
        if not model.tune_results:
            print("  no tunable kernels (MatMul / Conv on the device)")
        for result in model.tune_results:
            print(format_result(result))
    db.reload()
    if args.export:
        count = db.export(args.export)
        print(f"exported {count} entr{'y' if count == 1 else 'ies'} to {args.export}")
    print(f"TuningDB: {db.path} ({len(db)} entr{'y' if len(db) == 1 else 'ies'})")
    return EXIT_OK


def add_tune_command(add: AddCommand) -> None:
    """Register `ember tune` through main.py's `add`."""
    tune = add("tune", _cmd_tune, "tune the MatMul / Conv kernels of models on a device "
               "(measured, checked against the reference) and keep the fastest parameters in "
               "the TuningDB; later compiles with tune=True or opt_level 3 use them")
    tune.add_argument("model", nargs="*", help="paths of ONNX models")
    tune.add_argument("--budget", type=parse_seconds, default=60.0, metavar="60s",
                      help="time for each model (default 60s)")
    tune.add_argument("--kernel-budget", type=parse_seconds, default=20.0, metavar="20s",
                      help="time for each kernel (default 20s)")
    add_shape_arguments(tune, "an input's shape (needed for dims the model does not fix)")
    tune.add_argument("--target", default=None, help="opencl or opencl:P:D (default: the "
                      "first GPU, else the first device)")
    tune.add_argument("--opt", type=int, default=2, choices=range(4),
                      help="opt level the models are compiled at (fusion changes kernels)")
    tune.add_argument("--import", dest="import_file", metavar="FILE",
                      help="first merge a TuningDB file exported on the same kind of device")
    tune.add_argument("--export", metavar="FILE", help="write this device's TuningDB to FILE")
