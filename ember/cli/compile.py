"""`ember compile`: compile an ONNX model for a device and save it as a bundle
(`CompiledModel.save`, runtime/bundle.py) that `ember run FILE.ember` and `ember.load` open
without compiling; registered by main.build_parser."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ember
from ember.cli.args import (
    EXIT_OK, AddCommand, UsageError, add_shape_arguments, as_usage, open_target, parse_shapes,
    resolve_input_shapes,
)
from ember.frontends.onnx import input_signature, load_model
from ember.runtime.bundle import SUFFIX

__all__ = ["add_compile_command"]


def _check_output(path: str) -> Path:
    out = Path(path)
    if out.suffix != SUFFIX:
        raise UsageError(f"-o {path}: a bundle's name ends in {SUFFIX} (ember run tells "
                         f"bundles from ONNX models by it)")
    if out.is_dir():
        raise UsageError(f"-o {path}: a directory; give a file name (MODEL{SUFFIX})")
    if not out.parent.is_dir():
        raise UsageError(f"-o {path}: the directory {out.parent} does not exist")
    return out


def _cmd_compile(args: argparse.Namespace) -> int:
    out = _check_output(args.output)
    with as_usage():
        proto = load_model(args.model)
    shapes = resolve_input_shapes(input_signature(proto), parse_shapes(args.shape))
    device = open_target(args.target)
    if args.tune and device is None:
        raise UsageError("--tune measures kernels on an OpenCL device; the target is numpy")
    start = time.perf_counter()
    model = ember.compile(proto, target=args.target, opt_level=args.opt, input_shapes=shapes,
                          tune=args.tune)
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    model.save(out)
    save_seconds = time.perf_counter() - start
    stats = model.stats
    if model.device is None:
        where = "numpy (the numpy executor)"
    else:
        info = model.device.info
        where = f"{info.target} {info.traits.name} (family {info.family.name}, driver " \
                f"{info.traits.driver_version})"
    shape_text = ", ".join(f"{name}={'x'.join(map(str, shape))}"
                           for name, shape in shapes.items())
    print(f"compiled {args.model} for {where}, opt_level {args.opt}, input shapes "
          f"{shape_text} in {compile_seconds:.3f} s")
    print(f"  {stats.steps} steps ({stats.host_steps} on the host), {stats.kernels} kernels, "
          f"{stats.kernel_launches} launches per call"
          + (f"; {len(model.tune_results)} kernel(s) tuned" if args.tune else ""))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {save_seconds:.3f} s): plans, "
          f"{'program binaries, ' if model.device is not None else ''}the ONNX model")
    return EXIT_OK


def add_compile_command(add: AddCommand) -> None:
    """Register `ember compile` through main.py's `add`."""
    cmd = add("compile", _cmd_compile, "compile a model for a device and save it as a "
              f"bundle (*{SUFFIX}) that `ember run` and ember.load open without compiling")
    cmd.add_argument("model", help="path of an ONNX model")
    cmd.add_argument("-o", "--output", required=True, metavar=f"FILE{SUFFIX}",
                     help="where to write the bundle")
    add_shape_arguments(cmd, "an input's shape (needed for dims the model does not fix)")
    cmd.add_argument("--target", default=None,
                     help="numpy (alias cpu), opencl, oclgrind or opencl:P:D (default: the "
                          "first GPU, else the first OpenCL device)")
    cmd.add_argument("--opt", type=int, default=2, choices=range(4), help="opt level 0..3")
    cmd.add_argument("--tune", action="store_true",
                     help="tune the tunable kernels first (as `ember tune`, 60 s per model) "
                          "and build with the fastest parameters")
