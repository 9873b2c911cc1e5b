"""`ember cache build|info|clear|export|import` (ember/cli/cache.py), on a temporary cache
directory given by EMBER_CACHE_DIR."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ember.cli import main
from ember.runtime.cache import BinaryCache
from tests.harness import real_devices

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "ember" / "data" / "digits_mlp.onnx"  # input (batch, 64)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    where = tmp_path / "cache"
    monkeypatch.setenv("EMBER_CACHE_DIR", str(where))
    return where


def _entries(where: Path) -> int:
    return sum(1 for _ in BinaryCache(where).entry_dirs())


def test_build_info_export_clear_import(opencl_target, cache_dir, tmp_path, capsys) -> None:
    assert main(["cache", "build", str(MLP), "--shape", "input=3x64",
                 "--target", opencl_target]) == 0
    out = capsys.readouterr().out
    assert "(input=3x64)" in out and "compile" in out and "first call" in out
    assert re.search(r"binary cache .*: 1 program\(s\) stored, 0 already there", out), out
    assert _entries(cache_dir) == 1

    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    fingerprint = real_devices()[0].traits.fingerprint
    assert f"ember cache {cache_dir} (from EMBER_CACHE_DIR)" in out
    assert "programs: 1 entry, " in out
    assert f"{fingerprint}  [this machine's {opencl_target}]" in out

    archive = tmp_path / "deploy.zip"
    assert main(["cache", "export", str(archive)]) == 0
    assert "1 program entry, " in capsys.readouterr().out
    with zipfile.ZipFile(archive) as z:
        manifest = json.loads(z.read("manifest.json"))
    assert len(manifest["entries"]) == 1

    assert main(["cache", "clear"]) == 0
    assert "1 program entry (" in capsys.readouterr().out
    assert _entries(cache_dir) == 0

    assert main(["cache", "import", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "1 program entry (1 for this machine's devices, 0 for other" in out
    assert _entries(cache_dir) == 1
    assert main(["cache", "import", str(archive)]) == 0
    assert "1 already present" in capsys.readouterr().out


def test_import_reports_a_tampered_entry(opencl_target, cache_dir, tmp_path, capsys) -> None:
    assert main(["cache", "build", str(MLP), "--shape", "input=1x64",
                 "--target", opencl_target]) == 0
    archive = tmp_path / "a.zip"
    assert main(["cache", "export", str(archive)]) == 0
    with zipfile.ZipFile(archive) as z:
        members = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in members if n.endswith("/binary"))
    members[name] = members[name][::-1]
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    assert main(["cache", "clear"]) == 0
    capsys.readouterr()
    assert main(["cache", "import", str(tmp_path / "b.zip")]) == 1
    out = capsys.readouterr().out
    assert "refused entry" in out and "sha256" in out
    assert _entries(cache_dir) == 0


@pytest.mark.parametrize("argv, words", [
    (["cache", "import", "{tmp}/missing.zip"], "cannot read the archive"),
    (["cache", "import", "{tmp}/not_a_zip.zip"], "cannot read the archive"),
    (["cache", "build", str(MLP), "--shape", "nope=1x64"], "no model has"),
    (["cache", "build", str(MLP), "--target", "cpu"], "no OpenCL device"),
])
def test_errors_are_one_line(cache_dir, tmp_path, capsys, argv, words) -> None:
    (tmp_path / "not_a_zip.zip").write_text("plain text")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ember: error:") and words in err


def test_build_in_a_fresh_process_carries_pocl_kernels(opencl_target, tmp_path) -> None:
    """In a new process ember points PoCL's cache into its own (POCL_CACHE_DIR unset), so
    that the compiled kernels travel in the archive."""
    env = {k: v for k, v in os.environ.items() if k != "POCL_CACHE_DIR"}
    env.update(EMBER_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))

    def ember_cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "ember", "cache", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = ember_cli("build", str(MLP), "--shape", "input=2x64")
    if "Portable Computing Language" not in real_devices()[0].traits.platform:
        pytest.skip("the default device is not PoCL: no PoCL kernel cache to carry")
    match = re.search(r"PoCL kernels: (\d+) kernels? of .*\(PoCL uses it", out)
    assert match and int(match.group(1)) > 0, out
    ember_cli("export", str(tmp_path / "all.zip"))
    with zipfile.ZipFile(tmp_path / "all.zip") as z:
        assert any(n.startswith("pocl/") and n.endswith(".so") for n in z.namelist())


def test_info_counts_what_runs_left_and_clear_says_what_it_removed(cache_dir, capsys) -> None:
    """Two `ember run`s in new processes fill a fresh cache; `info` prints what a walk of
    the directory finds, part by part; the warm run logs no build from source where PoCL's
    cache answers; `clear` reports the same numbers and keeps the TuningDB unless --all."""
    from ember.cli.cache import _size  # the sizes as info writes them
    from ember.codegen.families import DeviceTraits, Target
    from ember.codegen.kernels.gemm_cpu import CpuGemmParams
    from ember.runtime.cache import stores_binaries_by_default
    from ember.tuning.db import TuningDB

    env = {k: v for k, v in os.environ.items() if k not in ("POCL_CACHE_DIR", "EMBER_WORKERS")}
    env.update(EMBER_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT))
    logs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "ember", "-v", "run", str(MLP), "--shape",
                               "input=2x64", "--repeat", "1"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        logs.append(done.stderr)
    kept = stores_binaries_by_default(real_devices()[0].traits)
    if kept:
        assert "loaded from the binary cache" in logs[1], logs[1]
    else:
        assert "building from source" not in logs[1], logs[1]
    cpu = DeviceTraits("pthread-test CPU", "AuthenticAMD", "OpenCL 3.0 PoCL", "3.0", "PoCL",
                       "CPU", 2, 4096, 524288, frozenset(), preferred_vector_width=8)
    db = TuningDB(Target.of(cpu), cache_dir / "tuning")
    db.put("gemm_cpu", "MatMul float32[17,31] float32[31,19] trans_a=0 trans_b=0 packed=1",
           CpuGemmParams(), seconds=1e-4)
    db.save()

    def size(paths) -> int:
        return sum(p.stat().st_size for p in paths if p.is_file())

    pocl = cache_dir / "pocl"
    pocl_files = [p for p in pocl.rglob("*") if p.is_file() and p.parent.name != "ember-warm"]
    kernels = [p for p in pocl_files if p.suffix == ".so"]
    programs = [d for fan in pocl.iterdir() if fan.is_dir() and fan.name != "ember-warm"
                for d in fan.iterdir() if d.is_dir()]
    entries = _entries(cache_dir)
    assert entries == (1 if kept else 0) and (kept or kernels)
    markers = list(cache_dir.rglob("ember-warm/*"))
    templates = list((cache_dir / "templates").iterdir())
    assert markers and templates

    def n(count: int, one: str, many: str) -> str:
        return f"{count} {one if count == 1 else many}"

    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    program_bytes = _size(size(cache_dir.joinpath("programs").rglob("*")))
    tuning_bytes, template_bytes = _size(db.path.stat().st_size), _size(size(templates))
    pocl_counts = (f"{n(len(kernels), 'kernel', 'kernels')} of "
                   f"{n(len(programs), 'program', 'programs')}")
    expect = [
        f"programs: {n(entries, 'entry', 'entries')}, {program_bytes} in {cache_dir}/programs",
        f"PoCL kernels: {pocl_counts}, {_size(size(pocl_files))} in {pocl}",
        f"warm markers: {len(markers)} in ",
        f"TuningDB: 1 device, 1 entry, {tuning_bytes} in {cache_dir}/tuning",
        f"  {cpu.name}: 1 entry ({db.path.name})",
        f"templates: {n(len(templates), 'file', 'files')}, {template_bytes} in {cache_dir}/",
    ]
    for line in expect:
        assert line in out, (line, out)

    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert f"{len(kernels)} kernel" in out and f"{len(markers)} warm marker" in out
    assert "kept the TuningDB (1 device, 1 entry" in out and "--all" in out
    assert db.path.exists() and not list(pocl.rglob("*.so")) and _entries(cache_dir) == 0
    assert main(["cache", "clear", "--all"]) == 0
    out = capsys.readouterr().out
    assert "the TuningDB (1 device, 1 entry" in out and "kept" not in out
    assert not db.path.exists()
