"""What ember's cache directory holds, counted by walking it: `ember cache info` prints it,
and `ember cache clear` reports it as removed or kept.

Six parts share the root (runtime/cache.py lists the layout): ember's program binaries,
PoCL's kernel cache (on PoCL, the part that makes warm runs fast: ember keeps PoCL binaries
only when `ember cache build` asks), the warm markers of programs that workers built, the
TuningDB, the compiled kernel templates and the generic kernels models with free dims
learned. Each is counted from the files on disk, never
from what this process did, so the numbers hold for every process that used the cache.
Files that vanish while counted (another process clearing) count nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ember.runtime.cache import (
    GENERIC, POCL, TEMPLATES, TUNING, WARM, BinaryCache, CacheEntry,
)

__all__ = ["CacheContents", "GenericKernelFiles", "PoclKernels", "Programs", "Templates",
           "TuningFile",
           "TuningFiles", "WarmMarkers", "survey", "tuning_files", "warm_dirs"]

POCL_KERNEL_SUFFIX = ".so"  # PoCL's CPU devices keep each compiled kernel as a shared object
POCL_TEMP_PREFIX = "tempfile"  # PoCL writes through these; it leaves an empty one behind
TEMPLATE_SUFFIX = ".code"


def _files(root: Path) -> Iterator[tuple[Path, int]]:
    """(path, size) of the plain files under `root`; none where it is missing."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            try:
                yield path, path.stat().st_size
            except OSError:
                continue


@dataclass(frozen=True)
class Programs:
    """ember's program binaries (`programs/`), each entry checked in full."""

    path: Path
    entries: tuple[CacheEntry, ...]

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)


@dataclass(frozen=True)
class PoclKernels:
    """PoCL's kernel cache under ember's root: one folder per program, one shared object per
    compiled kernel (and work-group size). The warm markers inside are counted apart."""

    path: Path
    programs: int
    kernels: int
    nbytes: int
    temp_files: int  # PoCL's unfinished writes, and the empty files it leaves


@dataclass(frozen=True)
class WarmMarkers:
    """Programs that workers built and launched without a crash (`prebuild` skips them)."""

    paths: tuple[Path, ...]  # the folders that hold markers
    count: int


@dataclass(frozen=True)
class TuningFile:
    """One device's TuningDB file; `entries` is None when it is not a readable one."""

    path: Path
    device: str
    entries: int | None
    nbytes: int


@dataclass(frozen=True)
class TuningFiles:
    path: Path
    files: tuple[TuningFile, ...]

    @property
    def entries(self) -> int:
        return sum(f.entries or 0 for f in self.files)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.files)


@dataclass(frozen=True)
class GenericKernelFiles:
    """The generic kernels learned by sampling (`generic/`, runtime/generic_plans.py
    DiskStore): one file per kernel form, so a later process need not sample again."""

    path: Path
    files: int
    nbytes: int


@dataclass(frozen=True)
class Templates:
    path: Path
    files: int
    nbytes: int


@dataclass(frozen=True)
class CacheContents:
    root: Path
    programs: Programs
    pocl: PoclKernels
    warm: WarmMarkers
    tuning: TuningFiles
    templates: Templates
    generic: GenericKernelFiles

    @property
    def nbytes(self) -> int:
        return (self.programs.nbytes + self.pocl.nbytes + self.tuning.nbytes
                + self.templates.nbytes + self.generic.nbytes)


def warm_dirs(root: Path) -> tuple[Path, Path]:
    """Where markers live: in PoCL's cache for PoCL devices, at the root for the others."""
    return root / POCL / WARM, root / WARM


def tuning_files(root: Path) -> list[Path]:
    """The TuningDB's files (lock files and unfinished writes left out)."""
    folder = root / TUNING
    try:
        return sorted(p for p in folder.iterdir()
                      if p.suffix == ".json" and not p.name.startswith(".") and p.is_file())
    except OSError:
        return []


def _tuning_file(path: Path) -> TuningFile:
    try:
        raw = path.read_bytes()
    except OSError:
        return TuningFile(path, "?", None, 0)
    try:
        document = json.loads(raw.decode())
        entries = document["entries"]
        device = document["device"]
        if not isinstance(entries, dict) or not isinstance(device, dict):
            raise ValueError("not a tuning file")
    except (ValueError, KeyError, TypeError):
        return TuningFile(path, "?", None, len(raw))
    return TuningFile(path, str(device.get("device", "?")), len(entries), len(raw))


def _pocl(folder: Path) -> PoclKernels:
    programs = kernels = nbytes = temp = 0
    try:
        for fan in folder.iterdir():  # PoCL: <2 letters>/<program hash>/...
            if fan.name != WARM and fan.is_dir():
                programs += sum(1 for p in fan.iterdir() if p.is_dir())
    except OSError:
        pass
    warm = folder / WARM
    for path, size in _files(folder):
        if path.parent == warm:
            continue
        nbytes += size
        if path.name.startswith(POCL_TEMP_PREFIX):
            temp += 1
        elif path.suffix == POCL_KERNEL_SUFFIX:
            kernels += 1
    return PoclKernels(folder, programs, kernels, nbytes, temp)


def survey(cache: BinaryCache) -> CacheContents:
    """Count every part of the cache at `cache.root`."""
    root = cache.root
    markers = [d for d in warm_dirs(root) if d.is_dir()]
    templates = [(p, n) for p, n in _files(root / TEMPLATES) if p.suffix == TEMPLATE_SUFFIX]
    generic = [(p, n) for p, n in _files(root / GENERIC) if p.suffix == ".json"]
    return CacheContents(
        root=root,
        programs=Programs(cache.programs_dir, tuple(cache.entries())),
        pocl=_pocl(cache.pocl_dir),
        warm=WarmMarkers(tuple(markers), sum(1 for d in markers for _ in _files(d))),
        tuning=TuningFiles(root / TUNING, tuple(_tuning_file(p) for p in tuning_files(root))),
        templates=Templates(root / TEMPLATES, len(templates), sum(n for _, n in templates)),
        generic=GenericKernelFiles(root / GENERIC, len(generic), sum(n for _, n in generic)),
    )
