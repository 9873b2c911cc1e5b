"""`ember cache export/import`: a binary cache as one zip file, for deployment.

The archive holds `manifest.json` (format, ember version, per entry its fingerprint and the
sha256 of each file; per PoCL file its sha256) and the files themselves. Import checks every
file against the manifest and every entry against its own key (the hash of its source and
fields) before writing it with the cache's atomic writes; anything that fails is reported
and left out. Entries made for another device or driver are imported too: their key names
their fingerprint, so this machine never looks them up, and a copy of the cache can serve
several machines. No pickle: JSON and raw bytes only.

An archive is trusted input, like a model file: PoCL's cached kernels are shared objects
that PoCL loads and runs. Import archives you made or got from whom you trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ember.runtime.cache import (
    BINARY, FORMAT, INFO, POCL, PROGRAMS, SOURCE, BinaryCache, ember_version,
    verify_entry, verify_entry_bytes, write_file_atomic,
)
from ember.errors import InputError

__all__ = ["ExportReport", "ImportReport", "export_cache", "import_cache"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
KIND = "ember-binary-cache"
_KEY = re.compile(r"[0-9a-f]{64}")
_PART = re.compile(r"[A-Za-z0-9_.+-]{1,200}")  # PoCL names: hashes, kernel names, wg sizes
ENTRY_FILES = (BINARY, SOURCE, INFO)


@dataclass(frozen=True)
class ExportReport:
    entries: int
    pocl_files: int
    skipped: tuple[str, ...]  # broken entries left out, with the reason
    nbytes: int  # the archive's size


@dataclass
class ImportReport:
    imported: int = 0
    present: int = 0  # already in the cache (same key: same content)
    pocl_files: int = 0
    pocl_present: int = 0
    rejected: list[str] = field(default_factory=list)  # what was refused, and why
    fingerprints: Counter[str] = field(default_factory=Counter)  # imported entries per device


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_cache(cache: BinaryCache, path: str | os.PathLike[str]) -> ExportReport:
    """Write every intact entry and PoCL's cache files into one zip at `path` (atomically)."""
    target = Path(path)
    manifest: dict[str, object] = {"kind": KIND, "format": FORMAT,
                                   "ember_version": ember_version()}
    entries: dict[str, dict[str, object]] = {}
    pocl: dict[str, str] = {}
    skipped: list[str] = []
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".zip", dir=target.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key, where in cache.entry_dirs():
                problem = verify_entry(key, where)
                if problem is not None:
                    skipped.append(f"{key[:16]}: {problem}")
                    log.warning("not exporting cache entry %s: %s", key[:16], problem)
                    continue
                hashes = {}
                for name in ENTRY_FILES:
                    data = (where / name).read_bytes()
                    hashes[name] = _sha256(data)
                    archive.writestr(f"{PROGRAMS}/{key}/{name}", data)
                info = json.loads((where / INFO).read_bytes())
                entries[key] = {"fingerprint": info["fingerprint"], "files": hashes}
            for file in cache.pocl_files():
                relative = file.relative_to(cache.pocl_dir).as_posix()
                data = file.read_bytes()
                pocl[relative] = _sha256(data)
                archive.writestr(f"{POCL}/{relative}", data)
            manifest.update(entries=entries, pocl=pocl)
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ExportReport(len(entries), len(pocl), tuple(skipped), target.stat().st_size)


def _read_manifest(archive: zipfile.ZipFile, path: Path) -> dict[str, object]:
    try:
        manifest = json.loads(archive.read(MANIFEST).decode())
    except KeyError:
        raise InputError(f"{path}: not an ember cache archive (no {MANIFEST})") from None
    except ValueError as exc:
        raise InputError(f"{path}: {MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise InputError(f"{path}: not an ember cache archive ({MANIFEST} kind "
                         f"{manifest.get('kind') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path}: archive format {manifest.get('format')!r}; this ember "
                         f"reads format {FORMAT}")
    if not isinstance(manifest.get("entries"), dict) or not isinstance(manifest.get("pocl"),
                                                                       dict):
        raise InputError(f"{path}: {MANIFEST} lacks its 'entries' and 'pocl' tables")
    return manifest


def _member(archive: zipfile.ZipFile, name: str, sha256: object) -> bytes:
    """A member's bytes, checked against the manifest's sha256 (ValueError if not)."""
    try:
        data = archive.read(name)
    except KeyError:
        raise ValueError(f"{name} is missing") from None
    except (zipfile.BadZipFile, OSError) as exc:  # a CRC error, a truncated member
        raise ValueError(f"{name} is unreadable ({exc})") from None
    if _sha256(data) != sha256:
        raise ValueError(f"{name} does not match the manifest's sha256")
    return data


def import_cache(cache: BinaryCache, path: str | os.PathLike[str]) -> ImportReport:
    """Check and add every entry (and PoCL file) of an archive; report what was refused."""
    source = Path(path)
    report = ImportReport()
    try:
        archive = zipfile.ZipFile(source)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"{source}: cannot read the archive: {exc}") from None
    with archive:
        manifest = _read_manifest(archive, source)
        for key, item in sorted(manifest["entries"].items()):
            try:
                if not _KEY.fullmatch(key) or not isinstance(item, dict):
                    raise ValueError("is not a well-formed entry")
                hashes = item.get("files")
                if not isinstance(hashes, dict):
                    raise ValueError("lists no file checksums")
                files = {n: _member(archive, f"{PROGRAMS}/{key}/{n}", hashes.get(n))
                         for n in ENTRY_FILES}
                problem = verify_entry_bytes(key, files[INFO], files[SOURCE], files[BINARY])
                if problem is not None:
                    raise ValueError(problem)
            except ValueError as exc:
                report.rejected.append(f"entry {key[:16]}: {exc}")
                continue
            if cache.store_files(key, files):
                report.imported += 1
                report.fingerprints[json.loads(files[INFO])["fingerprint"]] += 1
            else:
                report.present += 1
        for relative, sha256 in sorted(manifest["pocl"].items()):
            parts = PurePosixPath(relative).parts
            if not parts or not all(_PART.fullmatch(p) and p not in (".", "..")
                                    for p in parts):
                report.rejected.append(f"PoCL file {relative!r}: not a safe relative path")
                continue
            target = cache.pocl_dir.joinpath(*parts)
            if target.exists():
                report.pocl_present += 1
                continue
            try:
                write_file_atomic(target, _member(archive, f"{POCL}/{relative}", sha256))
            except ValueError as exc:
                report.rejected.append(f"PoCL file {relative}: {exc}")
                continue
            report.pocl_files += 1
    for line in report.rejected:
        log.warning("cache import from %s refused %s", source, line)
    return report
