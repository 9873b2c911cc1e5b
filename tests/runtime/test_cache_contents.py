"""Every part of the cache directory (runtime/cache_contents.py): counted from the files on
disk, carried whole by export/import (the TuningDB merged, the faster entry winning),
cleared with the TuningDB kept unless asked; PoCL's leftover temp files swept. The parts
are made by hand here (no OpenCL), so each number is known exactly; tests/test_cli_cache.py
counts a cache that real runs filled."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from ember.codegen.families import DeviceTraits, Target
from ember.codegen.kernels.gemm_cpu import CpuGemmParams
from ember.codegen.render import TEMPLATE_CODE
from ember.paths import default_cache_dir
from ember.runtime import pocl_cache
from ember.runtime.cache import (
    POCL, TEMPLATES, TUNING, WARM, BinaryCache, cache_key, ember_version,
)
from ember.runtime.cache_archive import MANIFEST, export_cache, import_cache
from ember.runtime.cache_contents import survey, warm_dirs
from ember.tuning.db import TuningDB, tuning_dir

CPU = DeviceTraits("pthread-test CPU", "AuthenticAMD", "OpenCL 3.0 PoCL", "3.0", "PoCL", "CPU",
                   2, 4096, 524288, frozenset(), preferred_vector_width=8)
KEY = "MatMul float32[17,31] float32[31,19] trans_a=0 trans_b=0 packed=1"
OTHER_KEY = KEY.replace("17", "23")
FAST, SLOW = CpuGemmParams(mr=3, vw=4, nv=2, ku=2, group_m=1), CpuGemmParams()
TEMPLATE = f"{'a1' * 20}-{'b2' * 20}-0d0d0a0d.code"


def tuned(root: Path, entries: dict[str, tuple[CpuGemmParams, float]]) -> TuningDB:
    db = TuningDB(Target.of(CPU), root / TUNING)
    for key, (params, seconds) in entries.items():
        db.put("gemm_cpu", key, params, seconds=seconds)
    db.save()
    return db


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def filled(root: Path) -> BinaryCache:
    """One of each part: a program entry, a PoCL program with two kernels (and a leftover
    temp file), a warm marker in each place, a compiled template, a TuningDB file."""
    cache = BinaryCache(root)
    source = "__kernel void k() {}"
    assert cache.store(cache_key(source, (), "fp", ember_version()), source, (), "fp",
                       b"\x7fbinary" * 50)
    program = cache.pocl_dir / "AB" / "CDEFGHIJ"
    write(program / "program.bc", b"BC" * 300)
    write(program / "last_accessed", b"")
    for name in ("k1", "k2"):
        write(program / name / "1-1-1-goffs0-smallgrid" / f"{name}.so", b"\x7fELF" * 100)
    write(cache.pocl_dir / "tempfile_Ab12Cd", b"")
    for folder in warm_dirs(root):
        write(folder / ("e" * 64), b"")
    write(root / TEMPLATES / TEMPLATE, b"marshalled code" * 10)
    tuned(root, {KEY: (FAST, 1e-4)})
    return cache


def files_under(root: Path) -> dict[str, bytes]:
    """Every file a cache keeps, by relative path (lock files and PoCL's temp files left
    out: neither is content)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(".lock")
            and not p.name.startswith("tempfile")}


def test_the_parts_agree_with_the_modules_that_write_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    assert tuning_dir() == default_cache_dir() / TUNING
    assert TEMPLATES == TEMPLATE_CODE
    assert warm_dirs(tmp_path) == (tmp_path / POCL / WARM, tmp_path / WARM)


def test_survey_counts_each_part_from_disk(tmp_path) -> None:
    cache = filled(tmp_path / "cache")
    found = survey(cache)
    (entry,) = found.programs.entries
    assert entry.problem is None and found.programs.path == cache.programs_dir
    assert found.programs.nbytes == sum(p.stat().st_size for p in entry.path.rglob("*"))
    pocl = found.pocl
    assert (pocl.programs, pocl.kernels, pocl.temp_files) == (1, 2, 1)
    assert pocl.nbytes == 600 + 2 * 400
    assert found.warm.count == 2 and set(found.warm.paths) == set(warm_dirs(cache.root))
    (tuning,) = found.tuning.files
    assert (tuning.device, tuning.entries, found.tuning.entries) == (CPU.name, 1, 1)
    assert tuning.nbytes == tuning.path.stat().st_size > 0
    assert (found.templates.files, found.templates.nbytes) == (1, 150)
    assert found.nbytes == (found.programs.nbytes + pocl.nbytes + tuning.nbytes + 150)

    write(cache.root / TUNING / "broken-0123.json", b"{not json")
    broken = [f for f in survey(cache).tuning.files if f.entries is None]
    assert [f.path.name for f in broken] == ["broken-0123.json"]

    empty = survey(BinaryCache(tmp_path / "nothing"))
    assert (len(empty.programs.entries), empty.pocl.kernels, empty.warm.count,
            len(empty.tuning.files), empty.templates.files, empty.nbytes) == (0, 0, 0, 0, 0, 0)


def test_export_carries_every_part_and_import_restores_it(tmp_path) -> None:
    cache = filled(tmp_path / "cache")
    archive = tmp_path / "out" / "cache.zip"
    old_umask = os.umask(0o027)
    try:
        report = export_cache(cache, archive)
    finally:
        os.umask(old_umask)
    assert archive.stat().st_mode & 0o777 == 0o640  # 0666 less the umask, not private
    assert (report.entries, report.skipped) == (1, ())
    assert (report.files[TUNING], report.files[TEMPLATES], report.files[WARM]) == (1, 1, 1)
    assert not list(archive.parent.glob(".*.tmp"))

    fresh = BinaryCache(tmp_path / "fresh")
    imported = import_cache(fresh, archive)
    assert imported.rejected == [] and imported.imported == 1
    assert (imported.files[TUNING], imported.files[TEMPLATES], imported.files[WARM]) == (1, 1, 1)
    assert files_under(fresh.root) == files_under(cache.root)
    assert TuningDB(Target.of(CPU), fresh.root / TUNING).get("gemm_cpu", KEY) == FAST

    again = import_cache(fresh, archive)
    assert (again.imported, sum(again.files.values()), again.tuning_merged) == (0, 0, 0)
    assert again.files_present[TUNING] == 1 and again.present == 1


def test_import_merges_a_tuning_file_that_is_there(tmp_path) -> None:
    """The faster entry of a key wins, as when two tuners save; entries only one side
    has are kept."""
    source = BinaryCache(tmp_path / "source")
    tuned(source.root, {KEY: (FAST, 1e-4)})
    export_cache(source, tmp_path / "a.zip")
    target = BinaryCache(tmp_path / "target")
    tuned(target.root, {KEY: (SLOW, 5e-4), OTHER_KEY: (SLOW, 1e-3)})
    report = import_cache(target, tmp_path / "a.zip")
    assert report.tuning_merged == 1 and report.rejected == []
    db = TuningDB(Target.of(CPU), target.root / TUNING)
    assert db.get("gemm_cpu", KEY) == FAST and db.get("gemm_cpu", OTHER_KEY) == SLOW

    slower = BinaryCache(tmp_path / "slower")
    tuned(slower.root, {KEY: (SLOW, 9e-4)})
    export_cache(slower, tmp_path / "slow.zip")
    again = import_cache(target, tmp_path / "slow.zip")
    assert again.tuning_merged == 0 and again.files_present[TUNING] == 1
    assert TuningDB(Target.of(CPU), target.root / TUNING).get("gemm_cpu", KEY) == FAST


def _rewrite(archive: Path, out: Path, edit) -> None:
    with zipfile.ZipFile(archive) as zin:
        members = {name: zin.read(name) for name in zin.namelist()}
    manifest = json.loads(members[MANIFEST])
    edit(members, manifest)
    members[MANIFEST] = json.dumps(manifest).encode()
    with zipfile.ZipFile(out, "w") as zout:
        for name, data in members.items():
            zout.writestr(name, data)


def test_import_refuses_files_that_fail_a_check(tmp_path) -> None:
    cache = filled(tmp_path / "cache")
    export_cache(cache, tmp_path / "good.zip")
    tuning_member = next(m for m in files_under(cache.root) if m.startswith(f"{TUNING}/"))

    def tamper(members, manifest) -> None:
        members[tuning_member] += b" "

    def escape(members, manifest) -> None:
        for name in (f"{TUNING}/../../escaped.json", "bin/escaped.json"):
            members[name] = b"{}"
            manifest["files"][name] = "0" * 64

    def not_tuning(members, manifest) -> None:
        import hashlib

        members[tuning_member] = b"[1, 2, 3]"
        manifest["files"][tuning_member] = hashlib.sha256(b"[1, 2, 3]").hexdigest()

    for edit, words in ((tamper, "sha256"), (escape, "not a file a cache holds"),
                        (not_tuning, "not a TuningDB file")):
        _rewrite(tmp_path / "good.zip", tmp_path / "bad.zip", edit)
        target = BinaryCache(tmp_path / f"into_{edit.__name__}")
        report = import_cache(target, tmp_path / "bad.zip")
        assert any(words in line for line in report.rejected), report.rejected
        assert report.imported == 1 and report.files[TEMPLATES] == 1  # the rest came in
        assert not (target.root / TUNING).exists() or edit is escape
    assert not list(tmp_path.rglob("escaped.json"))


def test_an_archive_without_the_files_table_still_imports(tmp_path) -> None:
    """Archives written before the TuningDB and templates travelled."""
    cache = filled(tmp_path / "cache")
    export_cache(cache, tmp_path / "new.zip")

    def older(members, manifest) -> None:
        for name in manifest.pop("files"):
            del members[name]

    _rewrite(tmp_path / "new.zip", tmp_path / "old.zip", older)
    report = import_cache(BinaryCache(tmp_path / "fresh"), tmp_path / "old.zip")
    assert (report.imported, report.rejected, sum(report.files.values())) == (1, [], 0)
    assert report.pocl_files == len(cache.pocl_files())


def test_clear_keeps_the_tuning_db_unless_asked(tmp_path) -> None:
    cache = filled(tmp_path / "cache")
    cache.clear()
    left = survey(cache)
    assert (len(left.programs.entries), left.pocl.kernels, left.pocl.nbytes, left.warm.count,
            left.templates.files) == (0, 0, 0, 0, 0)
    assert left.tuning.entries == 1 and cache.pocl_dir.is_dir()  # PoCL expects its folder
    cache.clear(tuning=True)
    assert survey(cache).nbytes == 0 and not (cache.root / TUNING).exists()


def test_pocl_leftover_temp_files_are_swept(tmp_path, monkeypatch) -> None:
    """Only empty ones older than an hour: a younger or non-empty one may be a write in
    progress."""
    monkeypatch.setattr(pocl_cache, "_POCL_SHARED", [])
    monkeypatch.setenv("POCL_CACHE_DIR", "")  # restored after the test, set or not
    monkeypatch.delenv("POCL_CACHE_DIR")
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    pocl = tmp_path / POCL
    hour_ago = time.time() - pocl_cache.POCL_LEFTOVER_SECONDS - 60
    old_empty = write(pocl / "tempfile_old", b"")
    young_empty = write(pocl / "tempfile_young", b"")
    old_full = write(pocl / "tempfile_full", b"data")
    kernel = write(pocl / "AB" / "tempfile_deep", b"")
    for path in (old_empty, old_full, kernel):
        os.utime(path, (hour_ago, hour_ago))
    assert pocl_cache.share_pocl_cache() == pocl
    assert not old_empty.exists()
    assert young_empty.exists() and old_full.exists() and kernel.exists()


@pytest.mark.parametrize("member", ["tuning/x.json.lock", "templates/notes.txt",
                                    "ember-warm/short"])
def test_only_the_files_of_a_part_are_exported(tmp_path, member) -> None:
    cache = filled(tmp_path / "cache")
    write(cache.root / member, b"not part of the cache")
    export_cache(cache, tmp_path / "a.zip")
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert member not in archive.namelist()
