"""`ember quantize`: calibrate a float ONNX model on data from an .npz file and write its
quantized QDQ form; registered by main.build_parser.

The .npz holds one array per model input (by input name; a single array feeds a model with
a single input whatever its key), with the batch along axis 0. It is cut into calibration
batches of --batch-size rows. A tqdm bar follows calibration (and, for `mixed`, the
measuring of every layer), and the per-layer plan is printed (as JSON with --json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

import ember
from ember.cli.args import EXIT_OK, AddCommand, UsageError
from ember.frontends.onnx import input_signature, load_model
from ember.quantization.debug import compare_tensors, format_errors

__all__ = ["add_quantize_command", "calibration_batches"]

SCHEMES = ("int8", "int8-dynamic", "int4", "fp16", "mixed")


def calibration_batches(path: str, model: object, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The feeds of the .npz at `path`, cut along axis 0 into batches of `batch_size`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"--calib {path}: cannot read an .npz file: {exc}") from None
    inputs = list(input_signature(load_model(model)))
    if len(inputs) == 1 and len(arrays) == 1:
        arrays = {inputs[0]: next(iter(arrays.values()))}
    missing = [name for name in inputs if name not in arrays]
    if missing:
        raise UsageError(f"--calib {path}: no array for input(s) {missing}; it holds "
                         f"{sorted(arrays)} (one array per model input, by name)")
    rows = {name: arrays[name].shape[0] if arrays[name].ndim else 0 for name in inputs}
    if len(set(rows.values())) != 1 or not next(iter(rows.values())):
        raise UsageError(f"--calib {path}: the inputs need the same number of rows (axis 0), "
                         f"got {rows}")
    total = next(iter(rows.values()))
    return [{name: arrays[name][start:start + batch_size] for name in inputs}
            for start in range(0, total, batch_size)]


class _Bar:
    """A progress(done, total) callback drawing one tqdm bar per stage."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: tqdm | None = None

    def stage(self, description: str):
        def progress(done: int, total: int | None) -> None:
            if self.quiet:
                return
            if self.bar is None or self.bar.desc != description:
                self.close()
                self.bar = tqdm(total=total, desc=description, unit="step", leave=False,
                                file=sys.stderr)
            self.bar.update(done - self.bar.n)
        return progress

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _cmd_quantize(args: argparse.Namespace) -> int:
    batches = calibration_batches(args.calib, args.model, args.batch_size)
    options = {"device": args.target, "measure_speed": not args.no_time}
    if args.scheme == "mixed":
        options.update(avg_bits=args.avg_bits, max_bytes=args.max_bytes, seed=args.seed)
    bar = _Bar(args.json or args.quiet)
    try:
        q = ember.quantize(args.model, calibration=batches, scheme=args.scheme,
                           method=args.method, block_size=args.block_size,
                           plan=Path(args.plan).read_text() if args.plan else None,
                           progress=bar.stage("calibrating"),
                           **({"search_progress": bar.stage("measuring layers")}
                              if args.scheme == "mixed" else {}),
                           **options)
    finally:
        bar.close()
    out = Path(args.output)
    q.save(out)
    if args.json:
        print(q.plan.to_json())
        return EXIT_OK
    if not args.quiet:
        print(q.report())
    if args.report:
        errors = compare_tensors(load_model(args.model), q.model, batches[0])
        print("\nper-tensor error on the first calibration batch, worst first:")
        print(format_errors(errors))
    before, after = q.plan.weight_bytes
    print(f"wrote {out} ({args.scheme}; weights {before / 2**20:.2f} MiB -> "
          f"{after / 2**20:.2f} MiB)")
    return EXIT_OK


def add_quantize_command(add: AddCommand) -> None:
    sub = add("quantize", _cmd_quantize, "calibrate a float ONNX model on data and write its "
              "quantized (QDQ) form, with a per-layer report")
    sub.add_argument("model", help="path of a float ONNX model")
    sub.add_argument("--calib", required=True, metavar="DATA.npz",
                     help="calibration inputs: one array per model input, batch along axis 0")
    sub.add_argument("--scheme", default="int8", choices=SCHEMES,
                     help="int8 (static), int8-dynamic, int4 (weight-only), fp16, or mixed "
                          "(per-layer, under --avg-bits/--max-bytes)")
    sub.add_argument("-o", "--output", required=True, metavar="OUT.onnx",
                     help="where to write the quantized model")
    sub.add_argument("--batch-size", type=int, default=8, help="rows per calibration batch")
    sub.add_argument("--method", default="minmax",
                     choices=("minmax", "percentile", "entropy", "mse"),
                     help="how activation ranges are chosen from the calibration data")
    sub.add_argument("--block-size", type=int, default=128, choices=(32, 64, 128),
                     help="int4 block along K")
    sub.add_argument("--avg-bits", type=float, default=None,
                     help="mixed: at most this many bits per weight on average")
    sub.add_argument("--max-bytes", type=int, default=None,
                     help="mixed: at most this many bytes of weights")
    sub.add_argument("--plan", metavar="PLAN.json", help="reuse a plan's per-layer precisions")
    sub.add_argument("--target", default=None,
                     help="the device whose layer times are measured and, for mixed, "
                          "weighed (default: the default device)")
    sub.add_argument("--no-time", action="store_true",
                     help="do not time each layer on the device (mixed: choose by accuracy "
                          "and size alone)")
    sub.add_argument("--seed", type=int, default=0, help="mixed: seed of the search")
    sub.add_argument("--report", action="store_true",
                     help="also print the error (SQNR) of every tensor, worst first, to find "
                          "the layer that hurts")
    sub.add_argument("--json", action="store_true", help="print the plan as JSON only")
