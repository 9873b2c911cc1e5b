"""Where ember keeps files, and how it writes them: the cache root, the version that keys
cached data, atomic writes and an exclusive file lock.

A leaf module (it imports no other part of ember), so that every stage can use it without
reaching up to the package face.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["VERSION", "CACHE_DIR_ENV", "default_cache_dir", "write_file_atomic", "fsync_dir",
           "file_lock"]

VERSION = "0.1.0"  # ember's version: keys the binary cache and the archives
CACHE_DIR_ENV = "EMBER_CACHE_DIR"  # where every cache lives, when set (tests, deployments)


def default_cache_dir() -> Path:
    """`EMBER_CACHE_DIR` when set, else the user cache directory."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ember"))


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (POSIX); some systems cannot open directories: best
    effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `path` whole or not at all: readers see the old file or the new one. A temp
    file in the same directory, replaced into place; `durable` also syncs the data and the
    rename to disk (caches that are cheap to rebuild skip that)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the file `path` (made if missing), between processes, for a
    read-merge-write of the file beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
