"""`ember cache build|info|clear|export|import`: the cache from the command line.

Registered by main.build_parser. The cache lives in EMBER_CACHE_DIR, else the user cache
directory (paths.py, runtime/cache.py); `build` fills it ahead of time, `info` counts what
each part holds on disk (runtime/cache_contents.py), `clear` removes the built kernels and
keeps the TuningDB unless `--all`, `export`/`import` move all of it to the machines that
deploy a model.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from collections.abc import Sequence

import ember
from ember.cli.args import (
    EXIT_CHECK_FAILED, EXIT_OK, AddCommand, Command, UsageError, add_shape_arguments,
    as_usage, make_feeds, open_target, parse_shapes, shape_text,
)
from ember.errors import InputError
from ember.frontends.onnx import input_signature, load_model
from ember.paths import CACHE_DIR_ENV, default_cache_dir
from ember.runtime.cache import TEMPLATES, TUNING, WARM, BinaryCache, default_cache
from ember.runtime.pocl_cache import pocl_cache_in_use
from ember.runtime.cache_archive import export_cache, import_cache
from ember.runtime.cache_contents import CacheContents, PoclKernels, survey, warm_dirs

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


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _where(cache: BinaryCache) -> str:
    origin = CACHE_DIR_ENV if os.environ.get(CACHE_DIR_ENV) else "the user cache directory"
    return f"{cache.root} (from {origin})"


def _local_fingerprints() -> dict[str, str]:
    """Fingerprint -> target of this machine's OpenCL devices."""
    return {info.traits.fingerprint: info.target for info in ember.devices()}


def _pocl_use(pocl: PoclKernels) -> str:
    in_use = pocl_cache_in_use()
    if in_use is not None and in_use.resolve() == pocl.path.resolve():
        return "PoCL uses it"
    if in_use is not None:
        return (f"not used: POCL_CACHE_DIR is {in_use}, so build and export do not carry "
                "PoCL's kernels")
    return "not used by PoCL in this process"


def _pocl_counts(pocl: PoclKernels) -> str:
    return f"{_count(pocl.kernels, 'kernel')} of {_count(pocl.programs, 'program')}"


def _pocl_line(contents: CacheContents) -> str:
    pocl = contents.pocl
    notes = [_pocl_use(pocl)]
    if pocl.temp_files:
        notes.append(f"including {_count(pocl.temp_files, 'PoCL temp file')}")
    return (f"PoCL kernels: {_pocl_counts(pocl)}, {_size(pocl.nbytes)} in {pocl.path} "
            f"({'; '.join(notes)})")


def _warm_line(contents: CacheContents) -> str:
    paths = contents.warm.paths or warm_dirs(contents.root)[:1]
    return (f"warm markers: {contents.warm.count} in {', '.join(map(str, paths))} (programs "
            "that workers built and launched without a crash)")


def _tuning_text(contents: CacheContents) -> str:
    tuning = contents.tuning
    return (f"{_count(len(tuning.files), 'device')}, {_count(tuning.entries, 'entry', 'entries')}"
            f", {_size(tuning.nbytes)}")


def _program_lines(contents: CacheContents, local: dict[str, str]) -> list[str]:
    entries = contents.programs.entries
    lines = [(f"programs: {_count(len(entries), 'entry', 'entries')}, "
              f"{_size(contents.programs.nbytes)} in {contents.programs.path} (ember's "
              "program binaries; on PoCL only `ember cache build` stores them)")]
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for entry in entries:
        if entry.problem is None:
            counts[entry.fingerprint] += 1
            sizes[entry.fingerprint] += entry.nbytes
    for fingerprint, count in counts.most_common():
        where = (f"this machine's {local[fingerprint]}" if fingerprint in local
                 else "another device or driver: kept, not used here")
        lines.append(f"  {_count(count, 'entry', 'entries')}, {_size(sizes[fingerprint])}: "
                     f"{fingerprint}  [{where}]")
    for entry in entries:
        if entry.problem is not None:
            lines.append(f"  broken entry {entry.key[:16]}: {entry.problem} (deleted when "
                         "next looked up; `ember cache clear` removes it)")
    return lines


def _info_lines(contents: CacheContents, local: dict[str, str]) -> list[str]:
    lines = _program_lines(contents, local)
    lines += [_pocl_line(contents), _warm_line(contents),
              f"TuningDB: {_tuning_text(contents)} in {contents.tuning.path}"]
    for file in contents.tuning.files:
        count = ("not a readable TuningDB file" if file.entries is None
                 else _count(file.entries, "entry", "entries"))
        lines.append(f"  {file.device}: {count} ({file.path.name})")
    templates = contents.templates
    lines.append(f"templates: {_count(templates.files, 'file')}, {_size(templates.nbytes)} "
                 f"in {templates.path} (the kernel templates' compiled code)")
    generic = contents.generic
    lines.append(f"generic kernels: {_count(generic.files, 'kernel form')}, "
                 f"{_size(generic.nbytes)} in {generic.path} (what models with free dims "
                 f"learned: a new shape needs no sampling)")
    return lines


def _print(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


# -- the commands ---------------------------------------------------------------------------
def _cmd_build(args: argparse.Namespace) -> int:
    device = open_target(args.target)
    if device is None:
        raise UsageError("ember cache build: no OpenCL device (target "
                         f"{args.target or 'default'}); there is nothing to cache for numpy")
    shapes = parse_shapes(args.shape)
    protos = [(path, load_model(path)) for path in args.model]
    known = set().union(*(input_signature(proto) for _, proto in protos))
    unknown = sorted(set(shapes) - known)
    if unknown:
        raise UsageError(f"--shape names {unknown}, which no model has; their inputs "
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
    print(_pocl_line(survey(cache)))
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    cache = default_cache()
    local = _local_fingerprints()
    contents = survey(cache)
    print(f"ember cache {_where(cache)}: {_size(contents.nbytes)} in all")
    _print(_info_lines(contents, local))
    return EXIT_OK


def _cmd_clear(args: argparse.Namespace) -> int:
    cache = default_cache()
    contents = survey(cache)
    try:
        cache.clear(tuning=args.all)
    except OSError as exc:
        raise InputError(f"cannot clear {cache.root}: {exc}") from None
    programs, pocl = contents.programs, contents.pocl
    removed = [(f"{_count(len(programs.entries), 'program entry', 'program entries')} "
                f"({_size(programs.nbytes)})"),
               f"PoCL's {_pocl_counts(pocl)} ({_size(pocl.nbytes)})",
               _count(contents.warm.count, "warm marker"),
               (f"{_count(contents.templates.files, 'compiled template')} "
                f"({_size(contents.templates.nbytes)})"),
               (f"{_count(contents.generic.files, 'generic kernel form')} "
                f"({_size(contents.generic.nbytes)})")]
    tuning = f"the TuningDB ({_tuning_text(contents)})"
    if args.all:
        removed.append(tuning)
    text = f"removed from {_where(cache)}: {', '.join(removed)}"
    if not args.all and contents.tuning.files:
        text += f"; kept {tuning}: `ember cache clear --all` removes it too"
    print(text)
    return EXIT_OK


_PART_NAMES = {TUNING: "TuningDB file", TEMPLATES: "compiled template", WARM: "warm marker"}


def _parts(counts: Counter[str]) -> str:
    """The files of the parts besides programs and PoCL's, as an archive counts them."""
    return ", ".join(_count(counts[part], name) for part, name in _PART_NAMES.items())


def _cmd_export(args: argparse.Namespace) -> int:
    cache = default_cache()
    try:
        report = export_cache(cache, args.file)
    except OSError as exc:
        raise InputError(f"cannot write {args.file}: {exc}") from None
    print(f"wrote {args.file}: {_count(report.entries, 'program entry', 'program entries')}, "
          f"{_count(report.pocl_files, 'PoCL file')}, {_parts(report.files)}, "
          f"{_size(report.nbytes)} (from {cache.root})")
    for line in report.skipped:
        print(f"  left out broken entry {line}")
    return EXIT_OK


def _cmd_import(args: argparse.Namespace) -> int:
    cache = default_cache()
    try:
        with as_usage():  # the archive named on the command line cannot be read
            report = import_cache(cache, args.file)
    except OSError as exc:
        raise InputError(f"cannot write the cache at {cache.root}: {exc}") from None
    local = _local_fingerprints()
    here = sum(n for f, n in report.fingerprints.items() if f in local)
    print(f"imported {args.file} into {cache.root}: "
          f"{_count(report.imported, 'program entry', 'program entries')} "
          f"({here} for this machine's devices, {report.imported - here} for other devices "
          f"or drivers: kept, not used here), {report.present} already present; "
          f"{_count(report.pocl_files, 'PoCL file')} ({report.pocl_present} already present); "
          f"{_parts(report.files)} ({sum(report.files_present.values())} already present, "
          f"{_count(report.tuning_merged, 'TuningDB file')} merged)")
    for line in report.rejected:
        print(f"  refused {line}")
    return EXIT_CHECK_FAILED if report.rejected else EXIT_OK


def add_cache_commands(add: AddCommand) -> None:
    """Register `ember cache ...` through main.py's `add`."""
    parser = add("cache", _cmd_info, "the cache of built kernels and tuned parameters: "
                 "build it ahead of time, inspect, clear, export and import it (location: "
                 f"${CACHE_DIR_ENV}, else the user cache directory)")
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
    action("info", _cmd_info, "where the cache is and what it holds, counted on disk: "
           "program binaries per device, PoCL's kernels, warm markers, the TuningDB, the "
           "compiled templates, the generic kernels")
    clear = action("clear", _cmd_clear, "delete the built kernels (program binaries, PoCL's "
                   "kernels, warm markers, compiled templates, generic kernels) and say what "
                   "was removed; "
                   "the TuningDB is kept, as tuning takes minutes to repeat")
    clear.add_argument("--all", action="store_true", help="remove the TuningDB too")
    export = action("export", _cmd_export, "write the whole cache (everything `info` "
                    "lists, the TuningDB included) into one zip file")
    export.add_argument("file", help="the archive to write (.zip)")
    imp = action("import", _cmd_import, "check every entry of an archive and add the good "
                 "ones (a TuningDB file already here is merged: a finished search wins, "
                 "then the faster); entries for other devices are kept but never used on "
                 "this one. Import only archives you trust: PoCL runs the kernels in them")
    imp.add_argument("file", help="an archive written by `ember cache export`")
