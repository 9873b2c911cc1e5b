"""`ember cache export/import`: a cache as one zip file, for deployment.

The archive holds everything `ember cache info` counts (cache_contents.py): ember's program
entries, PoCL's kernel cache with its warm markers, the other warm markers, the TuningDB
files and the compiled templates. `manifest.json` names the format, ember's version, per
entry its fingerprint and the sha256 of each file, per PoCL file and per other file its
sha256. Import checks every file against the manifest and every entry against its own key
(the hash of its source and fields) before writing it with the cache's atomic writes;
anything that fails is reported and left out. Entries made for another device or driver
are imported too: their key names their fingerprint, so this machine never looks them up,
and a copy of the cache can serve several machines. A TuningDB file that is already there
is merged, the faster entry of a key winning, as `TuningDB.save` merges (tuning/db.py), under
the same lock; every entry is checked again when the TuningDB reads it. No pickle: JSON and
raw bytes only (templates are marshalled code, as Python's .pyc files are). Archives from
before the TuningDB and templates travelled have no `files` table and import as they did.

An archive is trusted input, like a model file: PoCL's cached kernels are shared objects
that PoCL loads and runs. Import archives you made or got from whom you trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ember.errors import InputError
from ember.paths import file_lock
from ember.runtime.cache import (
    BINARY, FORMAT, GENERIC, INFO, POCL, PROGRAMS, SOURCE, TEMPLATES, TUNING, WARM,
    BinaryCache, ember_version, verify_entry, verify_entry_bytes, write_file_atomic,
)
from ember.runtime.cache_contents import TEMPLATE_SUFFIX, tuning_files

__all__ = ["ExportReport", "ImportReport", "export_cache", "import_cache"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
KIND = "ember-binary-cache"
_KEY = re.compile(r"[0-9a-f]{64}")
_PART = re.compile(r"[A-Za-z0-9_.+-]{1,200}")  # PoCL names: hashes, kernel names, wg sizes
ENTRY_FILES = (BINARY, SOURCE, INFO)
# The other parts, as folders under the root, and the names a file there may have.
FILE_PARTS = {
    TUNING: re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,120}\.json"),
    TEMPLATES: re.compile(r"[0-9a-f]{1,128}-[0-9a-f]{1,128}-[0-9a-f]{1,64}"
                          + re.escape(TEMPLATE_SUFFIX)),
    WARM: _KEY,
    GENERIC: re.compile(r"[0-9a-f]{40}\.json"),
}


@dataclass(frozen=True)
class ExportReport:
    entries: int
    pocl_files: int
    skipped: tuple[str, ...]  # broken entries left out, with the reason
    nbytes: int  # the archive's size
    files: Counter[str] = field(default_factory=Counter)  # other files per part (FILE_PARTS)


@dataclass
class ImportReport:
    imported: int = 0
    present: int = 0  # already in the cache (same key: same content)
    pocl_files: int = 0
    pocl_present: int = 0
    rejected: list[str] = field(default_factory=list)  # what was refused, and why
    fingerprints: Counter[str] = field(default_factory=Counter)  # imported entries per device
    files: Counter[str] = field(default_factory=Counter)  # other files written, per part
    files_present: Counter[str] = field(default_factory=Counter)  # already there, same bytes
    tuning_merged: int = 0  # TuningDB files that were there, merged with the archive's


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _other_files(cache: BinaryCache) -> list[tuple[str, Path]]:
    """(member name, path) of the files of FILE_PARTS, as an archive holds them."""
    found = [(f"{TUNING}/{p.name}", p) for p in tuning_files(cache.root)]
    for part in (TEMPLATES, WARM, GENERIC):
        folder = cache.root / part
        try:
            names = sorted(p for p in folder.iterdir() if p.is_file())
        except OSError:
            continue
        found += [(f"{part}/{p.name}", p) for p in names if FILE_PARTS[part].fullmatch(p.name)]
    return found


def _create_beside(target: Path) -> tuple[int, Path]:
    """A new, empty temp file beside `target` with the mode any file the user writes gets
    (0666 less the umask; mkstemp's 0600 would make the archive private)."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def export_cache(cache: BinaryCache, path: str | os.PathLike[str]) -> ExportReport:
    """Write every intact entry, PoCL's cache files, the TuningDB, the warm markers and the
    compiled templates into one zip at `path` (atomically)."""
    target = Path(path)
    manifest: dict[str, object] = {"kind": KIND, "format": FORMAT,
                                   "ember_version": ember_version()}
    entries: dict[str, dict[str, object]] = {}
    pocl: dict[str, str] = {}
    others: dict[str, str] = {}
    skipped: list[str] = []
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(target)
    try:
        with os.fdopen(fd, "wb") as handle, \
                zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
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
            for member, file in _other_files(cache):
                data = file.read_bytes()
                others[member] = _sha256(data)
                archive.writestr(member, data)
            manifest.update(entries=entries, pocl=pocl, files=others)
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
            archive.close()
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    parts = Counter(member.split("/", 1)[0] for member in others)
    return ExportReport(len(entries), len(pocl), tuple(skipped), target.stat().st_size, parts)


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
    if not isinstance(manifest.setdefault("files", {}), dict):
        raise InputError(f"{path}: {MANIFEST} has a 'files' table that is not an object")
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


def _seconds(entry: object) -> float:
    value = entry.get("seconds") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, (int, float)) else float("inf")


def _tuning_document(data: bytes) -> dict[str, object]:
    document = json.loads(data.decode())
    if not (isinstance(document, dict) and isinstance(document.get("entries"), dict)
            and isinstance(document.get("device"), dict)):
        raise ValueError("is not a TuningDB file (no 'device' and 'entries' objects)")
    return document


def _merge_tuning(target: Path, data: bytes) -> str:
    """Add an archive's TuningDB file at `target`, under the TuningDB's lock: written when
    there is none ("added"), else its entries that are new or faster win, as in
    `TuningDB.save` ("merged", or "present" when none did). A local file that is not a
    TuningDB file is replaced (the TuningDB ignores it anyway)."""
    incoming = _tuning_document(data)
    with file_lock(target.with_name(target.name + ".lock")):
        try:
            local = _tuning_document(target.read_bytes())
        except (OSError, ValueError):
            write_file_atomic(target, data)
            return "added"
        if local.get("version") != incoming.get("version"):
            raise ValueError(f"has schema version {incoming.get('version')!r}; the file "
                             f"here has {local.get('version')!r}")
        entries = dict(local["entries"])
        taken = [name for name, entry in incoming["entries"].items()
                 if name not in entries or _seconds(entry) < _seconds(entries[name])]
        if not taken:
            return "present"
        entries.update((name, incoming["entries"][name]) for name in taken)
        local["entries"] = dict(sorted(entries.items()))
        write_file_atomic(target, (json.dumps(local, indent=1) + "\n").encode())
    return "merged"


def _import_file(cache: BinaryCache, report: ImportReport, member: str, data: bytes) -> None:
    """Write one file of FILE_PARTS unless it is there; a TuningDB file is merged."""
    part, name = member.split("/", 1)
    target = cache.root / part / name
    if part == TUNING:
        outcome = _merge_tuning(target, data)
    elif target.is_file():
        outcome = "present"
    else:
        write_file_atomic(target, data, durable=part != TEMPLATES)
        outcome = "added"
    if outcome == "added":
        report.files[part] += 1
    elif outcome == "merged":
        report.tuning_merged += 1
    else:
        report.files_present[part] += 1


def import_cache(cache: BinaryCache, path: str | os.PathLike[str]) -> ImportReport:
    """Check and add every entry, PoCL file and other file (TuningDB, warm markers,
    templates) of an archive; report what was refused."""
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
        for member, sha256 in sorted(manifest["files"].items()):
            part, _, name = str(member).partition("/")
            if part not in FILE_PARTS or not FILE_PARTS[part].fullmatch(name):
                report.rejected.append(f"file {member!r}: not a file a cache holds")
                continue
            try:
                _import_file(cache, report, member, _member(archive, member, sha256))
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError too
                report.rejected.append(f"file {member}: {exc}")
    for line in report.rejected:
        log.warning("cache import from %s refused %s", source, line)
    return report
