"""The binary cache: built OpenCL programs on disk, keyed by content.

A model's kernels are one OpenCL program; building it from source costs from a fraction of a
second (PoCL, warm) to minutes (large models, GPU drivers). The cache keeps each built
program's binary under a key hashing everything that decides the binary: the source, the
build options, ember's version and the device fingerprint (platform, vendor, device name,
device version, driver version). A changed driver is a changed key: old binaries are never
offered to it. Every build looks its program up; whether a fresh build's binary is stored
depends on the device (`stores_binaries_by_default`: not on PoCL, where fetching a binary
is expensive and its own kernel cache does the job) unless the cache says otherwise. Where
binaries are not stored, finding none is the rule: counted apart from misses
(`CacheStats.left_to_driver`), and not reported as a build from source.

Layout (the root is `EMBER_CACHE_DIR`, else the user cache directory of `platformdirs`):

    programs/<key[:2]>/<key>/binary       the driver's program binary, raw bytes
    programs/<key[:2]>/<key>/source.cl    the source it was built from (for reading, import)
    programs/<key[:2]>/<key>/info.json    key fields and the binary's sha256
    pocl/                                 PoCL's own kernel cache (runtime/pocl_cache.py)
    pocl/ember-warm/<key>, ember-warm/<key>   markers: workers built the program without a
                                          crash (runtime/opencl.py `prebuild`)
    tuning/<device>-<digest>.json         the TuningDB, one file per device (tuning/db.py)
    templates/                            compiled kernel templates (render.TemplateCodeCache)

`ember cache info` counts each part (cache_contents.py); `clear` removes all but the TuningDB
unless asked (tuned parameters take minutes to measure again, kernels seconds to build).

An entry is written into a temporary directory beside its final place, fsynced, then renamed
into place in one step: readers see a whole entry or none, and two writers of one key leave
one of their entries (equivalent: same source, options, version and device). An entry that
fails any check (JSON, key fields, checksum, or the driver refusing the binary) is deleted
and the program is built from source again.
Nothing is unpickled: JSON and raw bytes only (and the templates' marshalled code, which
Python's own .pyc files are too). A failed write (read-only disk, disk full) is
logged and the compile goes on without the cache. Archives (`ember cache export/import`) are
in cache_archive.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ember.codegen.families import DeviceTraits
from ember.paths import CACHE_DIR_ENV, VERSION, default_cache_dir, fsync_dir, write_file_atomic
from ember.codegen.render import TEMPLATE_CODE

__all__ = [
    "CACHE_DIR_ENV", "FORMAT", "BinaryCache", "CacheEntry", "CacheStats", "cache_key",
    "default_cache", "default_cache_dir", "ember_version", "resolve_cache",
    "stores_binaries_by_default", "verify_entry", "verify_entry_bytes", "write_file_atomic",
]

log = logging.getLogger(__name__)

FORMAT = 1  # layout of entries and archives; a new layout never reads an old one
PROGRAMS = "programs"
POCL = "pocl"
WARM = "ember-warm"  # runtime/opencl.py `_warm_marker` writes these
TUNING = "tuning"  # tuning/db.py `tuning_dir` (the tuning stage imports runtime, not back)
TEMPLATES = TEMPLATE_CODE
GENERIC = "generic"  # runtime/generic_plans.py `DiskStore`: generic kernels by skeleton
BINARY, SOURCE, INFO = "binary", "source.cl", "info.json"
MAX_INFO_BYTES = 1 << 20  # info.json is a few hundred bytes; anything huge is not ours
POCL_PLATFORM = "Portable Computing Language"


def ember_version() -> str:
    """The version that keys entries (paths.VERSION)."""
    return VERSION


def cache_key(source: str, options: Sequence[str], fingerprint: str, version: str) -> str:
    """sha256 over length-prefixed fields, so that no two field lists hash alike."""
    digest = hashlib.sha256()
    for part in (f"ember-binary-cache/{FORMAT}", version, fingerprint, "\0".join(options),
                 source):
        data = part.encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def stores_binaries_by_default(traits: DeviceTraits) -> bool:
    """Quirk, PoCL: asking for CL_PROGRAM_BINARIES makes it compile every kernel for a
    generic work-group size (resnet_mini's 14 kernels: several seconds, more than the build
    itself), and a program loaded from that binary still compiles the kernels it launches,
    per work-group size, at their first launch. Its own kernel cache (kept in ember's, see
    runtime/pocl_cache.py) serves warm starts instead. So a plain compile does not fetch PoCL
    binaries; `ember cache build` (store_binaries=True) does, and loading one is cheap."""
    return traits.platform != POCL_PLATFORM


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class CacheStats:
    """What one BinaryCache did in this process (tests and `ember cache build` read it)."""

    hits: int = 0  # programs built from a cached binary
    misses: int = 0  # no entry, or a broken one, on a device whose binaries are kept
    left_to_driver: int = 0  # no entry on a device whose binaries are not kept (PoCL: its
    #                          own kernel cache answers the build)
    stores: int = 0
    rejected: int = 0  # entries found broken or refused by the driver, then deleted
    store_errors: int = 0  # writes that failed (read-only, disk full); the compile went on


@dataclass(frozen=True)
class CacheEntry:
    """One entry as `ember cache info` lists it. `problem` is None for an intact entry."""

    key: str
    path: Path
    fingerprint: str
    ember_version: str
    nbytes: int
    problem: str | None = None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())




class BinaryCache:
    """Program binaries under `root`. Safe to share between threads and processes."""

    def __init__(self, root: str | os.PathLike[str], *, store_binaries: bool | None = None
                 ) -> None:
        """store_binaries: None stores where `stores_binaries_by_default` says it pays,
        True everywhere (`ember cache build`, tests), False nowhere (lookups only)."""
        self.root = Path(root).expanduser()
        self.store_binaries = store_binaries
        self.stats = CacheStats()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BinaryCache({str(self.root)!r}, store_binaries={self.store_binaries})"

    def wants_binary(self, traits: DeviceTraits) -> bool:
        """Whether to fetch and store a program binary built for this device."""
        if self.store_binaries is None:
            return stores_binaries_by_default(traits)
        return self.store_binaries

    @property
    def programs_dir(self) -> Path:
        return self.root / PROGRAMS

    @property
    def pocl_dir(self) -> Path:
        return self.root / POCL

    def entry_dir(self, key: str) -> Path:
        return self.programs_dir / key[:2] / key

    def record(self, name: str) -> None:
        """Count an event in `stats` (hits are counted by the runtime, once the driver has
        accepted the binary)."""
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    # -- reading ---------------------------------------------------------------------------
    def load(self, key: str, source: str, options: Sequence[str], fingerprint: str,
             *, kept: bool = True) -> bytes | None:
        """The binary stored under `key`, or None. A broken entry is deleted (and logged).
        `kept`: whether this device's binaries are stored (`wants_binary`); where they are
        not, a missing entry is the rule, counted as `left_to_driver`, not as a miss."""
        where = self.entry_dir(key)
        try:
            present = where.is_dir()
        except OSError:  # an unreadable cache directory is an empty one
            present = False
        if not present:
            self.record("misses" if kept else "left_to_driver")
            return None
        try:
            info = _read_info(where)
            binary = (where / BINARY).read_bytes()
        except (OSError, ValueError) as exc:
            self.reject(key, f"unreadable ({exc})")
            self.record("misses")
            return None
        expected = _info_fields(key, source, options, fingerprint, ember_version())
        problem = _check_info(info, expected) or _check_binary(info, binary)
        if problem is not None:
            self.reject(key, problem)
            self.record("misses")
            return None
        return binary

    def reject(self, key: str, reason: str) -> None:
        """Delete a broken entry so that the next build replaces it."""
        self.record("rejected")
        log.warning("binary cache entry %s %s: deleted, building from source", key[:16],
                    reason)
        self._remove(self.entry_dir(key))

    def _remove(self, where: Path) -> None:
        # Renamed aside first: other processes see the whole entry or none of it.
        try:
            trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=where.parent))
            os.replace(where, trash / "entry")
        except OSError as exc:
            if where.exists():
                log.warning("could not delete cache entry %s: %s", where, exc)
            return
        shutil.rmtree(trash, ignore_errors=True)

    # -- writing ---------------------------------------------------------------------------
    def store(self, key: str, source: str, options: Sequence[str], fingerprint: str,
              binary: bytes) -> bool:
        """Add an entry; False (and a log line) when the cache cannot be written."""
        info = _info_fields(key, source, options, fingerprint, ember_version())
        info.update(binary_sha256=_sha256(binary), binary_bytes=len(binary))
        try:
            stored = self.store_files(key, {
                BINARY: binary,
                SOURCE: source.encode(),
                INFO: json.dumps(info, indent=1, sort_keys=True).encode(),
            })
        except OSError as exc:
            self.record("store_errors")
            log.warning("could not write binary cache entry %s under %s (%s); the program "
                        "was built and is used, only not cached", key[:16], self.root, exc)
            return False
        if stored:
            self.record("stores")
        return True

    def store_files(self, key: str, files: dict[str, bytes]) -> bool:
        """Write an entry's files into a temp directory, then rename it into place. False
        when another writer got there first (its entry stays: same key, same program)."""
        final = self.entry_dir(key)
        if final.is_dir():
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        try:
            for name, data in files.items():
                _write_synced(tmp / name, data)
            fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if final.is_dir():  # lost the race to a writer of the same key
                    return False
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(final.parent)
        return True

    # -- listing and clearing ----------------------------------------------------------------
    def entry_dirs(self) -> Iterator[tuple[str, Path]]:
        """Every entry's (key, directory); a directory that another process removes while
        this one lists is left out."""
        for fan in _listing(self.programs_dir):
            if fan.name.startswith(".") or not fan.is_dir():
                continue
            for where in _listing(fan):
                if not where.name.startswith(".") and where.is_dir():
                    yield where.name, where

    def entries(self) -> list[CacheEntry]:
        """Every entry, checked in full (checksums, key recomputed from source.cl)."""
        found = []
        for key, where in self.entry_dirs():
            nbytes = _tree_bytes(where)
            try:
                info = _read_info(where)
            except (OSError, ValueError) as exc:
                found.append(CacheEntry(key, where, "?", "?", nbytes, f"unreadable ({exc})"))
                continue
            found.append(CacheEntry(key, where, str(info.get("fingerprint", "?")),
                                    str(info.get("ember_version", "?")), nbytes,
                                    verify_entry(key, where)))
        return found

    def pocl_files(self) -> list[Path]:
        """PoCL's cache files under the root (its unfinished temp files left out)."""
        if not self.pocl_dir.is_dir():
            return []
        return sorted(p for p in self.pocl_dir.rglob("*") if p.is_file()
                      and not p.name.startswith(("tempfile", ".tmp-")))

    def clear(self, *, tuning: bool = False) -> None:
        """Delete every entry, PoCL's files, the warm markers, the compiled templates and the
        generic kernels under the root, and the TuningDB only when `tuning` is set (cache_contents.py counts
        what is there before). The pocl directory itself stays, as a running PoCL expects
        it."""
        # Each tree is renamed aside before it is deleted, so that a process reading or
        # writing the cache at the same time sees whole entries or none, never half of one.
        trees = [self.programs_dir, self.root / TEMPLATES, self.root / WARM,
                 self.root / GENERIC]
        for tree in trees + ([self.root / TUNING] if tuning else []):
            _delete_aside(tree)
        if self.pocl_dir.is_dir():
            for child in _listing(self.pocl_dir):
                if child.is_dir():
                    _delete_aside(child)
                else:
                    child.unlink(missing_ok=True)


def _listing(directory: Path) -> list[Path]:
    """The sorted children of a directory; none where it is missing or unreadable."""
    try:
        return sorted(directory.iterdir())
    except OSError:
        return []


def _delete_aside(tree: Path) -> None:
    """Rename `tree` to a hidden name beside it, then delete it (another process clearing
    at the same time may have taken it already: nothing to do then)."""
    if not tree.exists():
        return
    try:
        trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=tree.parent))
    except OSError:
        shutil.rmtree(tree, ignore_errors=True)
        return
    try:
        os.replace(tree, trash / tree.name)
    except OSError:
        shutil.rmtree(tree, ignore_errors=True)  # not renamable here: delete in place
    shutil.rmtree(trash, ignore_errors=True)


def _tree_bytes(root: Path) -> int:
    """Bytes of the files under `root` (files that vanish while counted count nothing)."""
    total = 0
    try:
        for p in root.rglob("*"):
            try:
                total += p.stat().st_size if p.is_file() else 0
            except OSError:
                continue
    except OSError:
        return total
    return total


def _info_fields(key: str, source: str, options: Sequence[str], fingerprint: str,
                 version: str) -> dict[str, object]:
    return {"format": FORMAT, "key": key, "ember_version": version,
            "fingerprint": fingerprint, "options": list(options),
            "source_sha256": _sha256(source.encode())}


def _read_info(where: Path) -> dict[str, object]:
    with open(where / INFO, "rb") as handle:
        raw = handle.read(MAX_INFO_BYTES + 1)
    if len(raw) > MAX_INFO_BYTES:
        raise ValueError("info.json is too large")
    info = json.loads(raw.decode())
    if not isinstance(info, dict):
        raise ValueError("info.json is not a JSON object")
    return info


def _check_info(info: dict[str, object], expected: dict[str, object]) -> str | None:
    for name, want in expected.items():
        if info.get(name) != want:
            return f"has {name} {info.get(name)!r}, expected {want!r}"
    return None


def _check_binary(info: dict[str, object], binary: bytes) -> str | None:
    if not binary:
        return "has an empty binary"
    if info.get("binary_bytes") != len(binary):
        return f"has a binary of {len(binary)} bytes, info.json says {info.get('binary_bytes')}"
    if info.get("binary_sha256") != _sha256(binary):
        return "has a binary whose sha256 differs from info.json's"
    return None


def verify_entry(key: str, where: Path) -> str | None:
    """Check an entry on disk without knowing its source. None when it is intact."""
    try:
        info_bytes = (where / INFO).read_bytes()
        source = (where / SOURCE).read_bytes()
        binary = (where / BINARY).read_bytes()
    except OSError as exc:
        return f"unreadable ({exc})"
    return verify_entry_bytes(key, info_bytes, source, binary)


def verify_entry_bytes(key: str, info_bytes: bytes, source_bytes: bytes, binary: bytes
                       ) -> str | None:
    """The key must be the hash of the source and info.json's fields, and the binary must
    match its checksum. None when the entry is intact, else what is wrong."""
    try:
        if len(info_bytes) > MAX_INFO_BYTES:
            raise ValueError("info.json is too large")
        info = json.loads(info_bytes.decode())
        source = source_bytes.decode()
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return f"unreadable ({exc})"
    if not isinstance(info, dict):
        return "has an info.json that is not a JSON object"
    options, fingerprint, version = (info.get("options"), info.get("fingerprint"),
                                     info.get("ember_version"))
    if not (isinstance(options, list) and all(isinstance(o, str) for o in options)
            and isinstance(fingerprint, str) and isinstance(version, str)):
        return "has malformed key fields in info.json"
    if cache_key(source, options, fingerprint, version) != key:
        return "has a key that is not the hash of its source and fields"
    expected = _info_fields(key, source, options, fingerprint, version)
    return _check_info(info, expected) or _check_binary(info, binary)


# -- choosing a cache ----------------------------------------------------------------------
_DEFAULTS: dict[Path, BinaryCache] = {}
_DEFAULTS_LOCK = threading.Lock()


def default_cache() -> BinaryCache:
    """The cache at `default_cache_dir()`, one object (and one stats record) per directory."""
    root = default_cache_dir()
    with _DEFAULTS_LOCK:
        cache = _DEFAULTS.get(root)
        if cache is None:
            cache = _DEFAULTS[root] = BinaryCache(root)
    return cache


def resolve_cache(cache: bool | str | os.PathLike[str] | BinaryCache | None
                  ) -> BinaryCache | None:
    """compile()'s `cache=` argument: True = the default cache, False/None = none, a
    directory = a cache there, or a BinaryCache."""
    if cache is True:
        return default_cache()
    if cache is False or cache is None:
        return None
    if isinstance(cache, BinaryCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return BinaryCache(cache)
    raise TypeError(f"cache= takes a bool, a directory or a BinaryCache, not {cache!r}")
