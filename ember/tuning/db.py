"""The TuningDB: tuned kernel parameters of one device, kept in one readable JSON file.

Where: `<cache>/tuning/<device>-<digest>.json`, where `<cache>` is `EMBER_CACHE_DIR` when
set, else `platformdirs.user_cache_dir("ember")` (the binary cache in cache.py uses the same
rule), and the digest hashes what tuned parameters are valid for: vendor, device, driver,
platform and family (`Target.identity`).

File format (`SCHEMA_VERSION`):

    {"version": 2,
     "device": {"vendor": ..., "device": ..., "driver": ..., "platform": ..., "family": ...},
     "entries": {"<kind>|<key>": {"kind": "gemm_cpu", "key": "MatMul float32[...] ...",
                                  "params": {"mr": 6, ...}, "seconds": 0.0012,
                                  "default_seconds": 0.0019, "complete": true, ...}}}

Version 2 added `complete`: false when the model's budget ended the kernel's search before
its own budget did, so that the next `ember tune` searches it again (from the best set so
far). Version 1 files are read as version 2 files whose entries are all complete.

Lookups (`find`, `table`) answer a key from its own entry, else from an entry of the same
kind in its size bucket (`params.bucket_key`: same dtypes and attributes, each dim in the
same power-of-two range), the nearest in size: a model compiled for a new input shape gets
the parameters tuned for a neighbouring one, without tuning again.

A file of another version, a corrupt file, a file of another device, and any entry whose
params are not a legal set of its kind on this device are ignored with a log line: tuned
parameters choose among correct kernels, so an untrusted file may cost speed, never
correctness. Writes go through a temporary file, fsync and os.replace, under an exclusive
lock file; `save()` merges with what is on disk (per key, a complete entry wins over an
incomplete one, then the faster), so two processes tuning at once both keep their results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ember.codegen.families import Target, TuningTable
from ember.codegen.params import bucket_key, key_sizes, param_kinds
from ember.errors import InputError
from ember.paths import CACHE_DIR_ENV, default_cache_dir, file_lock, write_file_atomic

__all__ = ["TuningDB", "SCHEMA_VERSION", "READABLE_VERSIONS", "tuning_dir", "CACHE_DIR_ENV",
           "is_complete"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no `complete` field (every entry complete)
# What must match for an imported file to be taken; a driver or platform difference is
# logged and accepted (the kernels stay correct, only their speed may differ).
_SAME_DEVICE = ("vendor", "device", "family")


def tuning_dir() -> Path:
    """`<cache>/tuning`, under the cache directory the binary cache uses (runtime/cache.py)."""
    return default_cache_dir() / "tuning"


def _file_name(identity: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", identity.get("device", "device")).strip("-")[:40]
    return f"{slug or 'device'}-{digest}.json"


def _seconds(entry: dict[str, Any]) -> float:
    value = entry.get("seconds")
    return float(value) if isinstance(value, (int, float)) else float("inf")


def is_complete(entry: dict[str, Any]) -> bool:
    """Whether an entry's search ran to its end (version 1 entries did)."""
    return entry.get("complete", True) is not False


def _rank(entry: dict[str, Any]) -> tuple[bool, float]:
    """Which of two entries of one key to keep: the lower (complete first, then faster)."""
    return (not is_complete(entry), _seconds(entry))


def _distance(key: str, other: str) -> float:
    """How far apart two problems of one bucket are: the sum of |log2| of their dims' ratios."""
    return sum(abs(math.log2(max(a, 1) / max(b, 1)))
               for a, b in zip(key_sizes(key), key_sizes(other)))


class TuningDB:
    """Tuned parameters of one device: (kind, key) -> params and what was measured."""

    def __init__(self, target: Target, directory: str | os.PathLike[str] | None = None) -> None:
        self.target = target
        self.identity = target.identity
        self.directory = Path(directory) if directory is not None else tuning_dir()
        self.path = self.directory / _file_name(self.identity)
        self._entries: dict[str, dict[str, Any]] = self._read(self.path, strict=False)

    # -- reading ------------------------------------------------------------------------
    def _read(self, path: Path, *, strict: bool) -> dict[str, dict[str, Any]]:
        """The valid entries of a file. A missing file is empty; an unreadable one, another
        version or another device is empty with a log line (strict: an InputError)."""
        def refuse(why: str) -> dict[str, dict[str, Any]]:
            if strict:
                raise InputError(f"tuning file {path}: {why}")
            log.warning("ignoring tuning file %s: %s", path, why)
            return {}

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return refuse("no such file") if strict else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return refuse(f"not readable JSON ({exc})")
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            return refuse("not a tuning file (no 'entries' object)")
        if data.get("version") not in READABLE_VERSIONS:
            return refuse(f"schema version {data.get('version')!r}, this ember reads "
                          f"{' and '.join(map(str, READABLE_VERSIONS))}")
        device = data.get("device")
        if not isinstance(device, dict):
            return refuse("no 'device' object")
        other = [f"{k} {device.get(k)!r} != {self.identity[k]!r}" for k in _SAME_DEVICE
                 if device.get(k) != self.identity[k]]
        if other:
            return refuse("tuned for another device: " + ", ".join(other))
        if device != self.identity:
            log.info("tuning file %s was made with %s; this device has %s", path, device,
                     self.identity)
        entries = {}
        for name, entry in data["entries"].items():
            why = self._invalid(name, entry)
            if why:
                log.warning("ignoring tuning entry %r of %s: %s", name, path, why)
            else:
                entries[name] = entry
        return entries

    def _invalid(self, name: str, entry: Any) -> str | None:
        """Why an entry cannot be trusted, or None."""
        if not isinstance(entry, dict):
            return "not an object"
        kind, key, fields = entry.get("kind"), entry.get("key"), entry.get("params")
        kinds = param_kinds()
        if kind not in kinds or not isinstance(key, str) or name != f"{kind}|{key}":
            return f"unknown kind {kind!r} or a key that does not match its name"
        params = self._params(kind, fields)
        if params is None:
            return f"params {fields!r} are not {kinds[kind].params_type.__name__} fields"
        broken = kinds[kind].violations(params, self.target, 8 if "float64" in key else 4)
        return f"params {params} break: {'; '.join(broken)}" if broken else None

    @staticmethod
    def _params(kind: str, fields: Any) -> Any | None:
        params_type = param_kinds()[kind].params_type
        names = {f.name for f in dataclasses.fields(params_type)}
        if (not isinstance(fields, dict) or set(fields) != names
                or not all(type(v) is int for v in fields.values())):
            return None
        return params_type(**fields)

    # -- queries ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: tuple[str, str]) -> bool:
        return f"{item[0]}|{item[1]}" in self._entries

    def entry(self, kind: str, key: str) -> dict[str, Any] | None:
        """Everything stored about one tuned kernel (params as a dict of fields)."""
        entry = self._entries.get(f"{kind}|{key}")
        return dict(entry) if entry is not None else None

    def get(self, kind: str, key: str) -> Any | None:
        """The tuned params of one kernel, or None."""
        entry = self._entries.get(f"{kind}|{key}")
        return self._params(kind, entry["params"]) if entry is not None else None

    def entries(self) -> list[dict[str, Any]]:
        return [dict(e) for _, e in sorted(self._entries.items())]

    def find(self, kind: str, key: str) -> dict[str, Any] | None:
        """The entry that answers a kernel: its own, else the one of its size bucket
        (`params.bucket_key`) nearest in size, complete entries first; None when neither
        exists. `entry["key"] != key` says it came from the bucket."""
        own = self._entries.get(f"{kind}|{key}")
        if own is not None:
            return dict(own)
        bucket = bucket_key(key)
        mates = [e for e in self._entries.values()
                 if e["kind"] == kind and bucket_key(e["key"]) == bucket]
        if not mates:
            return None
        return dict(min(mates, key=lambda e: (not is_complete(e), _distance(key, e["key"]),
                                              e["key"])))

    def table(self, keys: Iterable[tuple[str, str]] | None = None) -> TuningTable:
        """The tuned params of `keys` (every entry when None), to put in a Target: a key's
        own entry under its key, else its bucket's entry under its bucket key, where
        `params_for` looks next. Keys of one bucket without entries of their own share the
        bucket's slot, filled for the first of them in sorted order."""
        found: dict[tuple[str, str], Any] = {}
        if keys is None:
            for entry in self._entries.values():
                found[(entry["kind"], entry["key"])] = self._params(entry["kind"],
                                                                    entry["params"])
            return TuningTable.of(found)
        for kind, key in sorted(set(keys)):
            entry = self.find(kind, key)
            if entry is None:
                continue
            name = key if entry["key"] == key else bucket_key(key)
            if (kind, name) not in found:
                found[(kind, name)] = self._params(kind, entry["params"])
                if name != key:
                    log.info("%s %s takes the tuned params of %s (same size bucket)", kind,
                             key, entry["key"])
        return TuningTable.of(found)

    # -- writing ------------------------------------------------------------------------
    def put(self, kind: str, key: str, params: Any, *, complete: bool = True,
            **info: Any) -> None:
        """Remember tuned params (in memory until `save`); `info` is what was measured,
        `complete` whether the search ran to its end."""
        entry = {"kind": kind, "key": key, "params": dataclasses.asdict(params), **info,
                 "complete": complete, "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        why = self._invalid(f"{kind}|{key}", entry)
        if why:
            raise ValueError(f"cannot store tuning entry {kind}|{key}: {why}")
        self._entries[f"{kind}|{key}"] = json.loads(json.dumps(entry))  # plain JSON values

    def _merge(self, entries: dict[str, dict[str, Any]]) -> int:
        """Take `entries` where they are new or better than ours (complete where ours is
        not, else faster); how many were taken."""
        taken = 0
        for name, entry in entries.items():
            mine = self._entries.get(name)
            if mine is None or _rank(entry) < _rank(mine):
                self._entries[name] = entry
                taken += 1
        return taken

    def _document(self) -> str:
        return json.dumps({"version": SCHEMA_VERSION, "device": self.identity,
                           "entries": dict(sorted(self._entries.items()))}, indent=1) + "\n"

    def save(self) -> Path:
        """Merge with the file on disk (another process may have tuned meanwhile) and write
        it atomically, under the lock."""
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            disk = self._read(self.path, strict=False)
            # ours win unless the disk's entry is better
            ours = self._entries
            self._entries = disk
            self._merge(ours)
            write_file_atomic(self.path, self._document().encode())
        return self.path

    def reload(self) -> None:
        """Read the file again (entries another process saved since)."""
        self._entries = self._read(self.path, strict=False)

    def export(self, path: str | os.PathLike[str]) -> int:
        """Write this device's entries (merged with the file on disk) to `path`, to ship a
        tuned DB; returns how many entries it holds."""
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            self._merge(self._read(self.path, strict=False))
        write_file_atomic(Path(path), self._document().encode())
        return len(self._entries)

    def import_(self, path: str | os.PathLike[str]) -> int:
        """Merge the entries of an exported file (same device; each entry checked) and save;
        returns how many were new or faster. A file that cannot be trusted raises
        InputError: an import is asked for by name, so it must not fail silently."""
        taken = self._merge(self._read(Path(path), strict=True))
        self.save()
        return taken
