"""The binary cache (runtime/cache.py, cache_archive.py): programs come back from disk in a
new process or after the in-process table is cleared, with identical results; broken
entries are detected, deleted and rebuilt; a cache that cannot be written never breaks a
compile; archives round-trip and refuse tampering; entries of other devices are never used;
concurrent writers leave valid entries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import ember
from ember.runtime import cache as cache_module
from ember.runtime import pocl_cache
from ember.runtime.cache import (
    BINARY, INFO, SOURCE, BinaryCache, CacheStats, cache_key, default_cache, ember_version,
    stores_binaries_by_default, verify_entry,
)
from ember.codegen.families import DeviceTraits
from ember.runtime.cache_archive import MANIFEST, export_cache, import_cache
from ember.frontends.builder import GraphBuilder
from ember.runtime import opencl
from ember.runtime.device import resolve_target
from ember.runtime.numpy import evaluate_graph
from tests.harness import real_devices, assert_close

ROOT = Path(__file__).resolve().parents[2]
X = np.random.default_rng(7).standard_normal((3, 5)).astype(np.float32)


def small_graph(activation: str = "Tanh"):
    """A few kernels; another activation is another program source."""
    b = GraphBuilder("cached")
    x = b.input("x", (3, 5))
    y = b.op(activation, b.Mul(x, b.constant(np.full((5,), 0.5, np.float32))))
    b.output("z", b.Add(b.Exp(y), x))
    return b.build()


@pytest.fixture
def fresh_programs(monkeypatch) -> None:
    """An empty in-process program table, as in a new process (restored afterwards)."""
    monkeypatch.setattr(opencl, "_PROGRAMS", {})


def run(graph, target: str, cache) -> np.ndarray:
    return ember.compile(graph, target=target, opt_level=0, cache=cache)(x=X)["z"]


def only_entry(cache: BinaryCache) -> Path:
    dirs = [where for _, where in cache.entry_dirs()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_key_covers_every_field() -> None:
    base = cache_key("src", ["-O2"], "dev|drv1", "0.1.0")
    assert base == cache_key("src", ["-O2"], "dev|drv1", "0.1.0")
    others = {cache_key("src2", ["-O2"], "dev|drv1", "0.1.0"),
              cache_key("src", ["-O3"], "dev|drv1", "0.1.0"),
              cache_key("src", ["-O2"], "dev|drv2", "0.1.0"),
              cache_key("src", ["-O2"], "dev|drv1", "0.1.1"),
              cache_key("src", ["-O", "2"], "dev|drv1", "0.1.0")}
    assert base not in others and len(others) == 5


def test_second_compile_loads_the_binary(opencl_target, tmp_path, fresh_programs,
                                         monkeypatch) -> None:
    cache = BinaryCache(tmp_path / "cache", store_binaries=True)
    first = run(small_graph(), opencl_target, cache)
    assert (cache.stats.stores, cache.stats.hits) == (1, 0)
    where = only_entry(cache)
    assert verify_entry(where.name, where) is None
    monkeypatch.setattr(opencl, "_PROGRAMS", {})
    second = run(small_graph(), opencl_target, cache)
    assert (cache.stats.stores, cache.stats.hits) == (1, 1)
    np.testing.assert_array_equal(first, second)
    assert_close(second, evaluate_graph(small_graph(), {"x": X})["z"])


def test_cache_argument_and_default_dir(opencl_target, tmp_path, fresh_programs,
                                        monkeypatch) -> None:
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "default"))
    default = default_cache()
    assert default.root == tmp_path / "default"
    run(small_graph(), opencl_target, False)  # off: not even looked up
    assert default.stats == CacheStats()
    run(small_graph("Sigmoid"), opencl_target, True)  # the default cache
    traits = resolve_target(opencl_target).info.traits
    kept = stores_binaries_by_default(traits)
    # a device whose binaries are not kept (PoCL) misses by design: not counted as a miss
    assert (default.stats.misses, default.stats.left_to_driver) == ((1, 0) if kept else (0, 1))
    count = sum(1 for _ in default.entry_dirs())
    assert count == (1 if kept else 0)
    always = BinaryCache(tmp_path / "always", store_binaries=True)
    run(small_graph("Relu"), opencl_target, always)
    assert sum(1 for _ in always.entry_dirs()) == 1


def test_pocl_cache_goes_into_ember_cache_unless_set(tmp_path, monkeypatch) -> None:
    """share_pocl_cache only sets POCL_CACHE_DIR (read by PoCL when it initializes; the
    subprocess tests check PoCL really uses it) when the user has not, to a writable dir."""
    monkeypatch.setattr(pocl_cache, "_POCL_SHARED", [])
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "ember"))
    monkeypatch.setenv("POCL_CACHE_DIR", str(tmp_path / "users"))
    assert pocl_cache.share_pocl_cache() is None
    assert os.environ["POCL_CACHE_DIR"] == str(tmp_path / "users")
    monkeypatch.delenv("POCL_CACHE_DIR")
    assert pocl_cache.share_pocl_cache() == tmp_path / "ember" / "pocl"
    assert os.environ["POCL_CACHE_DIR"] == str(tmp_path / "ember" / "pocl")
    assert pocl_cache.pocl_cache_in_use() == tmp_path / "ember" / "pocl"
    assert not list((tmp_path / "ember" / "pocl").iterdir())  # the probe cleaned up
    monkeypatch.delenv("POCL_CACHE_DIR")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "file" / "ember"))
    assert pocl_cache.share_pocl_cache() is None and "POCL_CACHE_DIR" not in os.environ


def test_pocl_binaries_are_stored_only_when_asked() -> None:
    def traits(platform: str, kind: str) -> DeviceTraits:
        return DeviceTraits(name="dev", vendor="vendor", version="OpenCL 3.0",
                            driver_version="1.0", platform=platform, device_type=kind,
                            compute_units=2, max_work_group_size=256, local_mem_bytes=65536,
                            extensions=frozenset())

    assert not stores_binaries_by_default(traits("Portable Computing Language", "CPU"))
    assert stores_binaries_by_default(traits("AMD Accelerated Parallel Processing", "GPU"))
    pocl = traits("Portable Computing Language", "CPU")
    assert BinaryCache("x", store_binaries=True).wants_binary(pocl)
    assert not BinaryCache("x", store_binaries=False).wants_binary(traits("NVIDIA CUDA", "GPU"))


def _flip(where: Path) -> None:
    data = bytearray((where / BINARY).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (where / BINARY).write_bytes(bytes(data))


def _truncate(where: Path) -> None:
    data = (where / BINARY).read_bytes()
    (where / BINARY).write_bytes(data[: len(data) // 3])


def _edit_info(field: str, value: object) -> Callable[[Path], None]:
    def edit(where: Path) -> None:
        info = json.loads((where / INFO).read_text())
        info[field] = value
        (where / INFO).write_text(json.dumps(info))
    return edit


def _garbage_with_matching_checksum(where: Path) -> None:
    """A checksum that matches, over bytes the driver cannot load."""
    import hashlib

    garbage = b"not an OpenCL program binary" * 40
    (where / BINARY).write_bytes(garbage)
    info = json.loads((where / INFO).read_text())
    info.update(binary_sha256=hashlib.sha256(garbage).hexdigest(), binary_bytes=len(garbage))
    (where / INFO).write_text(json.dumps(info))


CORRUPTIONS = {
    "flipped_byte": _flip,
    "truncated": _truncate,
    "info_not_json": lambda where: (where / INFO).write_text("{not json"),
    "info_missing": lambda where: (where / INFO).unlink(),
    "other_fingerprint": _edit_info("fingerprint", "Some Platform|vendor|gpu|1.0|2.0"),
    "other_version": _edit_info("ember_version", "0.0.0-other"),
    "other_options": _edit_info("options", ["-cl-fast-relaxed-math"]),
    "driver_refuses": _garbage_with_matching_checksum,
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_broken_entry_is_deleted_and_rebuilt(opencl_target, tmp_path, fresh_programs,
                                             monkeypatch, corrupt, caplog) -> None:
    cache = BinaryCache(tmp_path / "cache", store_binaries=True)
    expected = run(small_graph(), opencl_target, cache)
    where = only_entry(cache)
    corrupt(where)
    monkeypatch.setattr(opencl, "_PROGRAMS", {})
    with caplog.at_level("WARNING", logger="ember.runtime.cache"):
        again = run(small_graph(), opencl_target, cache)
    np.testing.assert_array_equal(again, expected)
    assert cache.stats.rejected == 1 and cache.stats.hits == 0 and cache.stats.stores == 2
    assert "deleted, building from source" in caplog.text
    assert verify_entry(where.name, only_entry(cache)) is None  # a fresh, intact entry
    monkeypatch.setattr(opencl, "_PROGRAMS", {})
    run(small_graph(), opencl_target, cache)
    assert cache.stats.hits == 1


def test_unwritable_cache_does_not_break_compile(opencl_target, tmp_path,
                                                 fresh_programs) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("the cache root cannot be a directory under a file")
    cache = BinaryCache(blocker / "cache", store_binaries=True)
    result = run(small_graph(), opencl_target, cache)
    assert_close(result, evaluate_graph(small_graph(), {"x": X})["z"])
    assert cache.stats.store_errors == 1 and cache.stats.stores == 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="file modes do not stop root; the disk-full test covers writes")
def test_read_only_cache_still_serves(opencl_target, tmp_path, fresh_programs,
                                      monkeypatch) -> None:
    cache = BinaryCache(tmp_path / "cache", store_binaries=True)
    run(small_graph(), opencl_target, cache)
    for path in [cache.root, *cache.root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o555)
    try:
        monkeypatch.setattr(opencl, "_PROGRAMS", {})
        run(small_graph(), opencl_target, cache)
        run(small_graph("Sigmoid"), opencl_target, cache)
        assert cache.stats.hits == 1 and cache.stats.store_errors == 1
    finally:
        for path in [cache.root, *cache.root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)


def test_disk_full_leaves_the_cache_readable(opencl_target, tmp_path, fresh_programs,
                                             monkeypatch) -> None:
    cache = BinaryCache(tmp_path / "cache", store_binaries=True)
    run(small_graph(), opencl_target, cache)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module.os, "fsync", disk_full)
    other = run(small_graph("Sigmoid"), opencl_target, cache)  # its store fails half-way
    assert cache.stats.store_errors == 1
    assert_close(other, evaluate_graph(small_graph("Sigmoid"), {"x": X})["z"])
    monkeypatch.undo()
    monkeypatch.setattr(opencl, "_PROGRAMS", {})
    run(small_graph(), opencl_target, cache)
    assert cache.stats.hits == 1
    assert not list(cache.programs_dir.rglob(".tmp-*")), "a half-written entry was left"
    assert sum(1 for _ in cache.entry_dirs()) == 1


def test_export_import_round_trip(opencl_target, tmp_path, fresh_programs,
                                  monkeypatch) -> None:
    cache = BinaryCache(tmp_path / "cache", store_binaries=True)
    expected = run(small_graph(), opencl_target, cache)
    pocl_file = cache.pocl_dir / "AB" / "CDEF" / "k" / "0-0-0" / "k.so"
    pocl_file.parent.mkdir(parents=True)
    pocl_file.write_bytes(b"\x7fELF stand-in for a PoCL kernel")
    report = export_cache(cache, tmp_path / "out" / "cache.zip")
    assert (report.entries, report.pocl_files) == (1, 1)

    target = BinaryCache(tmp_path / "fresh", store_binaries=True)
    imported = import_cache(target, tmp_path / "out" / "cache.zip")
    assert (imported.imported, imported.pocl_files, imported.rejected) == (1, 1, [])
    source_entry, copied = only_entry(cache), only_entry(target)
    for name in (BINARY, SOURCE, INFO):
        assert (source_entry / name).read_bytes() == (copied / name).read_bytes()
    assert (target.pocl_dir / pocl_file.relative_to(cache.pocl_dir)).read_bytes() == \
        pocl_file.read_bytes()
    again = import_cache(target, tmp_path / "out" / "cache.zip")
    assert (again.imported, again.present, again.pocl_present) == (0, 1, 1)

    monkeypatch.setattr(opencl, "_PROGRAMS", {})
    np.testing.assert_array_equal(run(small_graph(), opencl_target, target), expected)
    assert target.stats.hits == 1


def _rewrite(archive: Path, out: Path, edit) -> None:
    with zipfile.ZipFile(archive) as zin:
        members = {name: zin.read(name) for name in zin.namelist()}
    edit(members)
    with zipfile.ZipFile(out, "w") as zout:
        for name, data in members.items():
            zout.writestr(name, data)


def test_import_refuses_tampered_archives(opencl_target, tmp_path, fresh_programs) -> None:
    cache = BinaryCache(tmp_path / "cache", store_binaries=True)
    run(small_graph(), opencl_target, cache)
    export_cache(cache, tmp_path / "good.zip")
    key = only_entry(cache).name

    def flip_binary(members: dict[str, bytes]) -> None:
        name = f"programs/{key}/{BINARY}"
        members[name] = members[name][:-1] + bytes([members[name][-1] ^ 1])

    def escape(members: dict[str, bytes]) -> None:
        manifest = json.loads(members[MANIFEST])
        manifest["pocl"]["../../escaped"] = "0" * 64
        members["pocl/../../escaped"] = b"outside"
        members[MANIFEST] = json.dumps(manifest).encode()

    def rekey(members: dict[str, bytes]) -> None:  # consistent checksums, wrong key
        manifest = json.loads(members[MANIFEST])
        other = "f" * 64
        manifest["entries"][other] = manifest["entries"].pop(key)
        for name in (BINARY, SOURCE, INFO):
            members[f"programs/{other}/{name}"] = members.pop(f"programs/{key}/{name}")
        members[MANIFEST] = json.dumps(manifest).encode()

    # (edit, words of the refusal, entries still imported: the intact ones)
    for edit, words, good in ((flip_binary, "sha256", 0), (escape, "safe relative path", 1),
                              (rekey, "not the hash", 0)):
        _rewrite(tmp_path / "good.zip", tmp_path / "bad.zip", edit)
        target = BinaryCache(tmp_path / f"into_{edit.__name__}")
        report = import_cache(target, tmp_path / "bad.zip")
        assert any(words in r for r in report.rejected), report
        assert report.imported == good == sum(1 for _ in target.entry_dirs())
        assert not list(target.root.rglob("escaped"))
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


def test_entries_of_another_device_are_kept_but_not_used(opencl_target, tmp_path,
                                                         fresh_programs) -> None:
    """An entry made under another fingerprint (its key names that fingerprint) holding
    bytes that would fail here: this device never looks it up."""
    device = resolve_target(opencl_target)
    graph = small_graph()
    model = ember.compile(graph, target=opencl_target, opt_level=0, cache=False)
    source = opencl.program_source(model.plan.kernels())
    foreign = "Other Platform|Other Vendor|gfx803|OpenCL 2.0|3000.0 (driver 2)"
    assert foreign != device.info.traits.fingerprint
    cache = BinaryCache(tmp_path / "cache", store_binaries=True)
    key = cache_key(source, (), foreign, ember_version())
    assert cache.store(key, source, (), foreign, b"\x00binary for another device")
    opencl._PROGRAMS.clear()
    np.testing.assert_array_equal(run(graph, opencl_target, cache), model(x=X)["z"])
    assert (cache.stats.hits, cache.stats.rejected, cache.stats.stores) == (0, 0, 2)
    assert verify_entry(key, cache.entry_dir(key)) is None  # kept as it was


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ember.runtime.cache import BinaryCache, cache_key, ember_version
    cache, me = BinaryCache(sys.argv[1]), sys.argv[2]
    Path(sys.argv[1] + f".ready{me}").touch()
    while not all(Path(sys.argv[1] + f".ready{i}").exists() for i in (0, 1)):
        time.sleep(0.001)  # start together
    for i in range(40):
        source = f"__kernel void k{i}() {{}}"
        key = cache_key(source, (), "fp", ember_version())
        assert cache.store(key, source, (), "fp", (source * 200).encode())
    print(cache.stats.stores)
""")


def test_concurrent_writers_leave_valid_entries(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "c"), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert sum(int(out) for out, _ in outs) == 40  # each key written once, by one of them
    cache = BinaryCache(tmp_path / "c")
    entries = cache.entries()
    assert len(entries) == 40 and all(e.problem is None for e in entries)
    assert not list(cache.programs_dir.rglob(".tmp-*"))
    for i in range(40):
        source = f"__kernel void k{i}() {{}}"
        key = cache_key(source, (), "fp", ember_version())
        assert cache.load(key, source, (), "fp") == (source * 200).encode()


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import ember
    from ember.runtime.cache import BinaryCache, default_cache, default_cache_dir
    from ember.runtime.pocl_cache import pocl_cache_in_use
    x = np.arange(15, dtype=np.float32).reshape(3, 5) / 7
    # "always" stores binaries on every device (as `ember cache build` does), else default
    cache = (BinaryCache(default_cache_dir(), store_binaries=True)
             if sys.argv[2] == "always" else default_cache())
    model = ember.compile(sys.argv[1], input_shapes={"x": (3, 5)}, cache=cache)
    out = model(x=x)["y"]
    stats = cache.stats
    print(json.dumps({"hits": stats.hits, "stores": stats.stores, "out": out.tolist(),
                      "device": model.device is not None,
                      "pocl": str(pocl_cache_in_use())}))
""")


def _child(model: Path, cache_dir: Path, mode: str = "default") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "POCL_CACHE_DIR"}
    env.update(EMBER_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD, str(model), mode], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"],
                                                                        ["y"])]
    graph = helper.make_graph(
        nodes, "cache_child", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])])
    path = tmp_path_factory.mktemp("cache_model") / "silu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(path))
    return path


def test_new_process_loads_from_disk_and_carries_pocl(opencl_target, tmp_path,
                                                      onnx_file) -> None:
    first = _child(onnx_file, tmp_path / "cache", "always")
    second = _child(onnx_file, tmp_path / "cache")  # loading is on by default everywhere
    assert first["device"] and (first["stores"], first["hits"]) == (1, 0)
    assert (second["stores"], second["hits"]) == (0, 1)
    assert second["out"] == first["out"]
    # PoCL was pointed into ember's cache (no POCL_CACHE_DIR given): its kernels are there.
    assert first["pocl"] == str(tmp_path / "cache" / "pocl")
    if "Portable Computing Language" in real_devices()[0].traits.platform:
        assert list((tmp_path / "cache" / "pocl").rglob("*.so"))


def test_unusable_cache_dir_keeps_the_device(opencl_target, tmp_path, onnx_file) -> None:
    """PoCL lists no device when its cache dir cannot be made: ember must not point it at
    one it cannot write."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = _child(onnx_file, blocker / "cache", "always")
    assert result["device"] and result["stores"] == 0 and result["pocl"] == "None"
    x = np.arange(15, dtype=np.float32).reshape(3, 5) / 7
    assert_close(np.asarray(result["out"], np.float32), x / (1 + np.exp(-x)))



WARM_CHILD = textwrap.dedent("""
    import dataclasses, json, sys
    import numpy as np
    import ember
    from ember.runtime.cache import BinaryCache, default_cache_dir
    x = np.arange(15, dtype=np.float32).reshape(3, 5) / 7
    found = {}
    for target in sys.argv[2:]:
        cache = BinaryCache(default_cache_dir())  # as default_cache(), with its own stats
        model = ember.compile(sys.argv[1], target=target, input_shapes={"x": (3, 5)},
                              cache=cache)
        found[target] = {**dataclasses.asdict(cache.stats), "out": model(x=x)["y"].tolist()}
    print(json.dumps(found))
""")


def test_a_warm_run_in_a_new_process_uses_what_the_first_kept(tmp_path, onnx_file) -> None:
    """With the default cache (as `ember run` uses it), on a device of each kind (simulators
    too): where ember keeps binaries, the second process loads the first one's; where it
    leaves them to the driver's own cache (PoCL), the lookup finds nothing by design and
    counts no miss."""
    kinds: dict[bool, str] = {}
    for info in ember.devices():
        kinds.setdefault(stores_binaries_by_default(info.traits), info.target)
    if not kinds:
        pytest.skip("no OpenCL device")
    env = {k: v for k, v in os.environ.items() if k != "POCL_CACHE_DIR"}
    env.update(EMBER_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT),
               EMBER_WORKERS="0")  # builds in the child itself: one process start less

    def child() -> dict:
        done = subprocess.run([sys.executable, "-c", WARM_CHILD, str(onnx_file),
                               *kinds.values()], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    cold, warm = child(), child()
    for kept, target in kinds.items():
        assert warm[target]["out"] == cold[target]["out"]
        counts = [(s["hits"], s["misses"], s["stores"], s["left_to_driver"])
                  for s in (cold[target], warm[target])]
        expected = [(0, 1, 1, 0), (1, 0, 0, 0)] if kept else [(0, 0, 0, 1), (0, 0, 0, 1)]
        assert counts == expected, (target, counts)
