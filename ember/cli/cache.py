"""`ember cache build|info|clear|export|import`: the binary cache from the command line.

Registered by main.build_parser. The cache lives in EMBER_CACHE_DIR, else the user cache
directory (paths.py, runtime/cache.py); `build` fills it ahead of time, `export`/`import`
move it to the machines that deploy a model.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import ember
from ember.cli.args import (
    EXIT_CHECK_FAILED, EXIT_OK, AddCommand, Command, add_shape_arguments, make_feeds,
    parse_shapes, shape_text,
)
from ember.errors import InputError
from ember.frontends.onnx import input_signature, load_model
from ember.paths import CACHE_DIR_ENV, default_cache_dir
from ember.runtime.cache import BinaryCache, default_cache, pocl_cache_in_use
from ember.runtime.cache_archive import export_cache, import_cache
from ember.runtime.device import resolve_target

__all__ = ["add_cache_commands"]


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    value = nbytes / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _where(cache: BinaryCache) -> str:
    origin = CACHE_DIR_ENV if os.environ.get(CACHE_DIR_ENV) else "the user cache directory"
    return f"{cache.root} (from {origin})"


def _local_fingerprints() -> dict[str, str]:
    """Fingerprint -> target of this machine's OpenCL devices."""
    return {info.traits.fingerprint: info.target for info in ember.devices()}


def _pocl_line(cache: BinaryCache) -> str:
    files = cache.pocl_files()
    nbytes = sum(f.stat().st_size for f in files)
    in_use = pocl_cache_in_use()
    if in_use is not None and in_use.resolve() == cache.pocl_dir.resolve():
        note = "PoCL uses it"
    elif in_use is not None:
        note = (f"not used: POCL_CACHE_DIR is {in_use}, so build and export do not carry "
                "PoCL's kernels")
    else:
        note = "not used by PoCL in this process"
    return f"PoCL kernel cache {cache.pocl_dir}: {len(files)} files, {_size(nbytes)} ({note})"


# -- the commands ---------------------------------------------------------------------------
def _cmd_build(args: argparse.Namespace) -> int:
    device = resolve_target(args.target)
    if device is None:
        raise InputError("ember cache build: no OpenCL device (target "
                         f"{args.target or 'default'}); there is nothing to cache for numpy")
    shapes = parse_shapes(args.shape)
    protos = [(path, load_model(path)) for path in args.model]
    known = set().union(*(input_signature(proto) for _, proto in protos))
    unknown = sorted(set(shapes) - known)
    if unknown:
        raise InputError(f"--shape names {unknown}, which no model has; their inputs "
                         f"are {sorted(known)}")
    # Binaries are stored on every device here, PoCL too: building ahead of time is the
    # moment to pay for them (runtime/cache.py, stores_binaries_by_default).
    cache = BinaryCache(default_cache_dir(), store_binaries=True)
    for path, proto in protos:
        signature = input_signature(proto)
        feeds = make_feeds(signature, {}, {n: s for n, s in shapes.items() if n in signature},
                           args.seed)
        start = time.perf_counter()
        model = ember.compile(proto, target=args.target, opt_level=args.opt,
                              input_shapes={name: a.shape for name, a in feeds.items()},
                              cache=cache)
        compiled = time.perf_counter() - start
        start = time.perf_counter()
        model(**feeds)  # every kernel launches once: PoCL compiles (and caches) it here
        first = time.perf_counter() - start
        dims = ", ".join(f"{n}={shape_text(a.shape)}" for n, a in feeds.items())
        print(f"{path} ({dims}) on {device.info.target}: compile {compiled:.2f} s, "
              f"first call {first:.2f} s, {model.stats.kernels} kernels")
    print(f"binary cache {_where(cache)}: {cache.stats.stores} program(s) stored, "
          f"{cache.stats.hits} already there")
    print(_pocl_line(cache))
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    cache = default_cache()
    local = _local_fingerprints()
    entries = cache.entries()
    print(f"ember binary cache {_where(cache)}")
    total = sum(e.nbytes for e in entries)
    print(f"programs: {len(entries)} entries, {_size(total)}")
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for entry in entries:
        if entry.problem is None:
            counts[entry.fingerprint] += 1
            sizes[entry.fingerprint] += entry.nbytes
    for fingerprint, count in counts.most_common():
        where = (f"this machine's {local[fingerprint]}" if fingerprint in local
                 else "another device or driver: kept, not used here")
        print(f"  {count} entries, {_size(sizes[fingerprint])}: {fingerprint}  [{where}]")
    broken = [e for e in entries if e.problem is not None]
    for entry in broken:
        print(f"  broken entry {entry.key[:16]}: {entry.problem} (deleted when next looked "
              "up; `ember cache clear` removes it)")
    print(_pocl_line(cache))
    return EXIT_OK


def _cmd_clear(args: argparse.Namespace) -> int:
    cache = default_cache()
    entries, nbytes = cache.clear()
    print(f"cleared {_where(cache)}: {entries} program entries and PoCL's kernels, "
          f"{_size(nbytes)}")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    cache = default_cache()
    report = export_cache(cache, args.file)
    print(f"wrote {args.file}: {report.entries} program entries, {report.pocl_files} PoCL "
          f"files, {_size(report.nbytes)} (from {cache.root})")
    for line in report.skipped:
        print(f"  left out broken entry {line}")
    return EXIT_OK


def _cmd_import(args: argparse.Namespace) -> int:
    cache = default_cache()
    try:
        report = import_cache(cache, args.file)
    except OSError as exc:
        raise InputError(f"cannot write the cache at {cache.root}: {exc}") from None
    local = _local_fingerprints()
    here = sum(n for f, n in report.fingerprints.items() if f in local)
    print(f"imported {args.file} into {cache.root}: {report.imported} program entries "
          f"({here} for this machine's devices, {report.imported - here} for other devices "
          f"or drivers: kept, not used here), {report.present} already present; "
          f"{report.pocl_files} PoCL files ({report.pocl_present} already present)")
    for line in report.rejected:
        print(f"  refused {line}")
    return EXIT_CHECK_FAILED if report.rejected else EXIT_OK


def add_cache_commands(add: AddCommand) -> None:
    """Register `ember cache ...` through main.py's `add`."""
    parser = add("cache", _cmd_info, "the binary cache of built kernels: build it ahead of "
                 f"time, inspect, clear, export and import it (location: ${CACHE_DIR_ENV}, "
                 "else the user cache directory)")
    sub = parser.add_subparsers(dest="cache_command", required=True, metavar="ACTION")

    def action(name: str, func: Command, text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=text, description=text)
        command.set_defaults(func=func)
        return command

    build = action("build", _cmd_build, "compile each model for the device, run it once so "
                   "that every kernel is built, and keep everything in the cache")
    build.add_argument("model", nargs="+", help="paths of ONNX models")
    add_shape_arguments(build, "an input's shape (needed for dims the model does not fix)")
    build.add_argument("--opt", type=int, default=2, choices=range(4), help="opt level 0..3")
    build.add_argument("--target", default=None, help="opencl or opencl:P:D (default: the "
                       "first GPU, else the first device)")
    build.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    action("info", _cmd_info, "where the cache is, its entries and bytes per device")
    action("clear", _cmd_clear, "delete every cached program and PoCL kernel")
    export = action("export", _cmd_export, "write the whole cache into one zip file")
    export.add_argument("file", help="the archive to write (.zip)")
    imp = action("import", _cmd_import, "check every entry of an archive and add the good "
                 "ones; entries for other devices are kept but never used on this one. "
                 "Import only archives you trust: PoCL runs the kernels in them")
    imp.add_argument("file", help="an archive written by `ember cache export`")
