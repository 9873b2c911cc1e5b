"""PoCL's own kernel cache, kept inside ember's (runtime/cache.py is ember's binary cache).

PoCL compiles each kernel to machine code at its first launch and keeps it in a cache of its
own; pointing that cache under ember's makes `ember cache build/export/import/clear` carry
and count the compiled kernels too.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from ember.runtime.cache import default_cache

__all__ = ["POCL_ENV", "POCL_LEFTOVER_SECONDS", "pocl_cache_in_use", "share_pocl_cache"]

log = logging.getLogger(__name__)

POCL_ENV = "POCL_CACHE_DIR"
_POCL_SHARED: list[Path] = []  # the directory this process pointed PoCL at, if any


def share_pocl_cache() -> Path | None:
    """Point PoCL's kernel cache at `<ember cache>/pocl`, unless the user set POCL_CACHE_DIR.

    PoCL's program binary holds LLVM IR only; it compiles each kernel to machine code at the
    kernel's first launch and keeps that in its own cache. Keeping PoCL's cache inside
    ember's makes `ember cache build/export/import` carry the compiled kernels as well, so
    that a deployed cache starts warm. PoCL keys that cache by a hash of the program, build
    options, PoCL and LLVM versions, its build timestamp and the CPU target: files made on
    another machine are never used by a different one. Must run before PoCL initializes
    (the first clGetPlatformIDs); PoCL lists no device at all when it cannot create its
    cache directory, so the directory is created and probed first, and left alone if that
    fails."""
    if os.environ.get(POCL_ENV):
        return None
    where = default_cache().pocl_dir
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix="tempfile-ember-probe", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        log.info("PoCL keeps its own cache: %s is not writable (%s)", where, exc)
        return None
    os.environ[POCL_ENV] = str(where)
    _POCL_SHARED[:] = [where]
    log.debug("PoCL's kernel cache is %s", where)
    _sweep_pocl_leftovers(where)
    return where


POCL_LEFTOVER_SECONDS = 3600.0


def _sweep_pocl_leftovers(where: Path) -> None:
    """Quirk, PoCL: each process leaves an empty `tempfile_*` at the top of its cache. An
    empty one older than an hour is no write in progress (PoCL fills a temp file and renames
    it at once): delete it, so that the directory does not grow by one file a run."""
    horizon = time.time() - POCL_LEFTOVER_SECONDS
    try:
        with os.scandir(where) as found:
            items = [i for i in found if i.name.startswith("tempfile")]
    except OSError:
        return
    for item in items:
        try:  # another process may sweep it first
            stat = item.stat(follow_symlinks=False)
            if item.is_file(follow_symlinks=False) and stat.st_size == 0 \
                    and stat.st_mtime < horizon:
                os.unlink(item.path)
        except OSError:
            continue


def pocl_cache_in_use() -> Path | None:
    """Where PoCL keeps its cache in this process, when ember or the user set it."""
    if _POCL_SHARED:
        return _POCL_SHARED[0]
    explicit = os.environ.get(POCL_ENV)
    return Path(explicit) if explicit else None
