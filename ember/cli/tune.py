"""`ember tune`: tune the kernels of models on a device and keep the results in the
TuningDB (tuning/db.py); registered by main.build_parser. `ember info` prints each device's
tuning state through `print_tuning`, so that the TuningDB is read in one module.

A model is compiled twice, with the default parameters and with tune= (the tuner's
progress bar on stderr meanwhile, unless -q), and both are timed in turns, so that the
closing table (stdout, always) sets each kernel's tuned time beside its default one and the
model's tuned latency beside its default one, measured in the same run.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

import ember
from ember.cli.args import (
    EXIT_OK, AddCommand, UsageError, add_shape_arguments, as_usage, make_feeds, open_target,
    parse_shapes, positive_int, resolve_input_shapes,
)
from ember.cli.inputs import input_roles
from ember.codegen.families import Target
from ember.codegen.params import TUNABLE_OPS, param_kinds, params_for
from ember.errors import DeviceError
from ember.frontends.onnx import input_signature, load_model
from ember.tuning.db import TuningDB
from ember.tuning.tuner import TuneBudget, TuneResult, shapes_text

__all__ = ["add_tune_command", "parse_seconds", "tunables_line", "print_tuning",
           "KernelRow", "kernel_row", "format_table", "tuned_line"]

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


# -- the closing table ------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelRow:
    """One tunable kernel of a model, as the closing table shows it."""

    op: str
    steps: tuple[str, ...]  # the plan's steps that run it
    shapes: str
    default_seconds: float | None  # device time with the default parameters
    tuned_seconds: float | None  # device time with the tuned ones
    note: str = ""

    @property
    def speedup(self) -> float | None:
        if not self.default_seconds or not self.tuned_seconds:
            return None
        return self.default_seconds / self.tuned_seconds


def _number(entry: dict[str, Any] | None, name: str) -> float | None:
    value = (entry or {}).get(name)
    return float(value) if isinstance(value, (int, float)) else None


def kernel_row(result: TuneResult, steps: tuple[str, ...]) -> KernelRow:
    """What one kernel's tuning found, in the table's words."""
    op = result.spec.op if result.spec is not None else result.key.split(" ", 1)[0]
    shapes = shapes_text(result.key)
    if result.skipped:
        stored = result.stored
        if result.from_bucket:
            other = (stored or {}).get("key", "?")
            return KernelRow(op, steps, shapes, None, None,
                             f"tuned earlier for {shapes_text(other)} (same size bucket)")
        return KernelRow(op, steps, shapes, _number(stored, "default_seconds"),
                         _number(stored, "seconds"), "tuned earlier (in the TuningDB)")
    best, default = result.best, result.default_trial
    if best is None:
        why = result.rejected[0].error if result.rejected else "none measured"
        return KernelRow(op, steps, shapes, None, None, f"no correct candidate ({why})"[:100])
    count = len(result.trials)
    note = (f"{count} candidate{'' if count == 1 else 's'}, "
            f"{'whole space' if result.exhausted else 'sampled'}")
    if result.cut_short:
        note += "; cut short by the budget"
    return KernelRow(op, steps, shapes, default.seconds if default else None, best.seconds,
                     note)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds:.2f} s"


def format_table(rows: Sequence[KernelRow]) -> str:
    """The kernels' table: op, step, shapes, default and tuned time, speedup, note."""
    def steps_text(steps: tuple[str, ...]) -> str:
        return (steps[0] + (f" (+{len(steps) - 1})" if len(steps) > 1 else "")
                if steps else "-")

    header = ("op", "step", "shapes", "default", "tuned", "speedup", "")
    cells = [header] + [
        (r.op, steps_text(r.steps), r.shapes, _duration(r.default_seconds),
         _duration(r.tuned_seconds), f"{r.speedup:.2f}x" if r.speedup else "-", r.note)
        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    right = {3, 4, 5}  # numbers
    lines = []
    for row in cells:
        parts = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  " + "  ".join(parts).rstrip())
    return "\n".join(lines)


def tuned_line(tuned: int, total: int, pending: int) -> str:
    """'tuned X of N kernels', and what to do when the budget left some for later."""
    line = f"tuned {tuned} of {total} kernel{'' if total == 1 else 's'}"
    return line + ("; run `ember tune` again to continue" if pending else "")


# -- running ----------------------------------------------------------------------------------
def _numpy_target_error(target: str) -> UsageError:
    """`--target numpy` (or cpu): nothing to tune there; say which devices could be."""
    found = [i for i in ember.devices() if not i.traits.simulator]
    if not found:
        instead = ("and no OpenCL device was found (pip install pocl-binary-distribution "
                   "gives a CPU one)")
    else:
        instead = "tune an OpenCL device instead: " + ", ".join(
            f"--target {i.target} ({i.traits.name})" for i in found)
    return UsageError(f"--target {target}: the numpy executor has no kernels to tune; "
                      f"{instead}")


@dataclass
class _Kernel:
    """A tunable kernel of a compiled plan: its op, the steps that run it, whether its
    parameters were tuned (looked up at the "device" level: the TuningDB answered)."""

    op: str
    steps: tuple[str, ...] = ()
    tuned: bool = False


def _tunable_kernels(model: ember.CompiledModel) -> dict[tuple[str, str], _Kernel]:
    """The plan's tunable kernels by (kind, key)."""
    found: dict[tuple[str, str], _Kernel] = {}
    for step in model.plan.steps:
        lookup = step.lowered.tuning if step.lowered is not None else None
        if step.op in TUNABLE_OPS and lookup is not None and lookup.key is not None:
            kernel = found.setdefault((lookup.kind, lookup.key), _Kernel(step.op))
            kernel.steps += (step.name,)
            kernel.tuned = lookup.level == "device"
    return found


def _latencies(models: Sequence[ember.CompiledModel], feeds: dict[str, np.ndarray],
               repeat: int) -> list[float]:
    """The median latency of each model, their calls taken in turns (a warm-up call each
    first), so that both see the same machine."""
    for model in models:
        model(**feeds)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(repeat):
        for model, seconds in zip(models, times):
            start = time.perf_counter()
            model(**feeds)
            seconds.append(time.perf_counter() - start)
    return [statistics.median(seconds) for seconds in times]


def _tune_model(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                args: argparse.Namespace, budget: TuneBudget) -> None:
    """Compile at default parameters, tune, compile tuned, and print the closing table.
    `shapes`: every input's."""
    signature = input_signature(proto)
    feeds = make_feeds(signature, {}, shapes, seed=0,
                       roles=input_roles(proto, {n: dt for n, (_, dt) in signature.items()}))
    fixed = {name: array.shape for name, array in feeds.items()}
    # opt_level 3 is opt_level 2 with tuned parameters: its default-parameter twin is 2
    before = ember.compile(proto, target=args.target, opt_level=min(args.opt, 2),
                           input_shapes=fixed)
    after = ember.compile(proto, target=args.target, opt_level=args.opt, input_shapes=fixed,
                          tune=budget)
    kernels = _tunable_kernels(after)
    if not kernels:
        print("  no tunable kernels on this device (MatMul, Conv, attention, softmax, norms)")
        return
    results = {(r.kind, r.key): r for r in after.tune_results}
    rows = [kernel_row(r, kernels[k].steps if k in kernels else ())
            for k, r in results.items()]
    rows += [KernelRow(kernel.op, kernel.steps, shapes_text(key), None, None,
                       "not reached: the budget ended")
             for (kind, key), kernel in kernels.items() if (kind, key) not in results]
    print(format_table(rows))
    default_latency, tuned_latency = _latencies([before, after], feeds, args.repeat)
    print(f"model latency, median of {args.repeat}: {_duration(default_latency)} with the "
          f"default parameters, {_duration(tuned_latency)} tuned "
          f"({default_latency / tuned_latency:.2f}x)")
    pending = sum(1 for k in kernels if k not in results or results[k].cut_short)
    print(tuned_line(sum(k.tuned for k in kernels.values()), len(kernels), pending))


def _cmd_tune(args: argparse.Namespace) -> int:
    # the command line first (usage errors, exit 2), then the device
    if not args.model and not (args.import_file or args.export):
        raise UsageError("give at least one MODEL (or --import / --export)")
    shapes = parse_shapes(args.shape)
    protos = [(path, load_model(path)) for path in args.model]
    names = {name for _, proto in protos for name in input_signature(proto)}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise UsageError(f"--shape names unknown input(s) {unknown}; the models' "
                         f"inputs are {sorted(names)}")
    fixed = [resolve_input_shapes(input_signature(proto), {
        n: s for n, s in shapes.items() if n in input_signature(proto)}) for _, proto in protos]
    device = open_target(args.target)
    if device is None:
        if args.target is not None:
            raise _numpy_target_error(args.target)
        raise DeviceError("ember tune needs an OpenCL device (pip install "
                          "pocl-binary-distribution gives a CPU one); none was found")
    db = TuningDB(device.target)
    if args.import_file:
        with as_usage():  # a file named on the command line
            taken = db.import_(args.import_file)
        print(f"imported {taken} entr{'y' if taken == 1 else 'ies'} from {args.import_file}")
    budget = TuneBudget(model_seconds=args.budget,
                        kernel_seconds=min(args.kernel_budget, args.budget),
                        progress=False if args.quiet else None)
    info = device.info
    for (path, proto), mine in zip(protos, fixed):
        print(f"tuning {path} on {info.target} {info.traits.name} (family "
              f"{info.family.name}), opt_level {args.opt}, budget {args.budget:g} s",
              flush=True)
        _tune_model(proto, mine, args, budget)
    db.reload()
    if args.export:
        count = db.export(args.export)
        print(f"exported {count} entr{'y' if count == 1 else 'ies'} to {args.export}")
    print(f"TuningDB: {db.path} ({len(db)} entr{'y' if len(db) == 1 else 'ies'})")
    return EXIT_OK


def add_tune_command(add: AddCommand) -> None:
    """Register `ember tune` through main.py's `add`."""
    tune = add("tune", _cmd_tune, "tune the kernels of models on a device (measured, "
               "checked against the reference) and keep the fastest parameters in the "
               "TuningDB, where later compiles with tune=True or opt_level 3 find them; "
               "prints each kernel's default and tuned time and the model's latency before "
               "and after")
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
    tune.add_argument("--repeat", type=positive_int, default=10,
                      help="timed calls of the model before and after tuning (default 10)")
    tune.add_argument("--import", dest="import_file", metavar="FILE",
                      help="first merge a TuningDB file exported on the same kind of device")
    tune.add_argument("--export", metavar="FILE", help="write this device's TuningDB to FILE")
