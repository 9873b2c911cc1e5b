"""The TuningDB file (tuning/db.py): atomic writes, two processes saving at once,
corrupt / other-version / other-device files ignored, version 1 files read, entries checked
before they are trusted, complete entries kept over incomplete ones, size-bucket lookups,
export and import. No OpenCL needed: the device is described by hand."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os

import pytest

from ember.codegen.families import DeviceTraits, Target
from ember.codegen.kernels.gemm_cpu import CpuGemmParams
from ember.codegen.kernels.matmul import GemmParams
from ember.codegen.params import BUCKET_SOURCE, bucket_key, params_for
from ember.tuning.db import (
    READABLE_VERSIONS, SCHEMA_VERSION, TuningDB, is_complete, tuning_dir,
)
from ember.errors import InputError

CPU = DeviceTraits("pthread-test CPU", "AuthenticAMD", "OpenCL 3.0 PoCL", "3.0", "PoCL", "CPU",
                   2, 4096, 524288, frozenset(), preferred_vector_width=8)
OTHER_CPU = DeviceTraits("pthread-other CPU", "GenuineIntel", "OpenCL 3.0 PoCL", "3.0", "PoCL",
                         "CPU", 2, 4096, 524288, frozenset(), preferred_vector_width=8)
KEY = "MatMul float32[17,31] float32[31,19] trans_a=0 trans_b=0 packed=1"



def target() -> Target:
    return Target.of(CPU)


def test_directory_rule_and_round_trip(cache_dir):
    db = TuningDB(target())
    assert db.path.parent == tuning_dir() == cache_dir / "tuning"
    params = CpuGemmParams(mr=3, vw=4, nv=2, ku=2, group_m=1)
    db.put("gemm_cpu", KEY, params, seconds=1e-5, default_seconds=2e-5)
    db.save()
    again = TuningDB(target())
    assert again.get("gemm_cpu", KEY) == params and ("gemm_cpu", KEY) in again
    assert again.entry("gemm_cpu", KEY)["default_seconds"] == 2e-5
    assert again.table().get("gemm_cpu", KEY) == params
    assert again.table([("gemm_cpu", "another key")]).get("gemm_cpu", KEY) is None
    document = json.loads(db.path.read_text())
    assert document["version"] == SCHEMA_VERSION and document["device"]["family"] == "cpu"
    assert document["entries"][f"gemm_cpu|{KEY}"]["params"] == {
        "mr": 3, "vw": 4, "nv": 2, "ku": 2, "group_m": 1}
    assert TuningDB(Target.of(OTHER_CPU)).path != db.path  # one file per device


def test_put_refuses_illegal_params():
    with pytest.raises(ValueError, match="vw in"):
        TuningDB(target()).put("gemm_cpu", KEY, CpuGemmParams(mr=2, vw=3, nv=1))
    with pytest.raises(ValueError, match="are not CpuGemmParams fields"):
        TuningDB(target()).put("gemm_cpu", KEY, GemmParams(8, 8, 8, 1, 1))


def test_write_is_atomic(monkeypatch):
    db = TuningDB(target())
    db.put("gemm_cpu", KEY, CpuGemmParams(), seconds=1.0)
    db.save()
    before = db.path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    db.put("gemm_cpu", KEY + " x", CpuGemmParams(), seconds=1.0)
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        db.save()
    monkeypatch.undo()
    assert db.path.read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in db.path.parent.iterdir()) == sorted(
        [db.path.name, db.path.name + ".lock"])  # no temporary file left behind


def _save_many(cache: str, worker: int, count: int, start) -> None:
    """A process that tunes `count` kernels, saving after each (as the tuner does)."""
    os.environ["EMBER_CACHE_DIR"] = cache
    db = TuningDB(target())
    start.wait(30)  # both begin together
    for i in range(count):
        db.put("gemm_cpu", f"{KEY} worker={worker} i={i}", CpuGemmParams(), seconds=1e-3)
        db.save()


def test_two_processes_saving_at_once_keep_both(cache_dir):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    workers = [ctx.Process(target=_save_many, args=(str(cache_dir), w, 25, start))
               for w in (1, 2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    db = TuningDB(target())
    assert len(db) == 50
    assert all(("gemm_cpu", f"{KEY} worker={w} i={i}") in db for w in (1, 2) for i in range(25))


def test_the_faster_entry_wins_a_merge():
    slow, fast = CpuGemmParams(mr=4), CpuGemmParams(mr=2)
    first, second = TuningDB(target()), TuningDB(target())
    first.put("gemm_cpu", KEY, fast, seconds=1e-4)
    first.save()
    second.put("gemm_cpu", KEY, slow, seconds=2e-4)  # measured before it saw the file
    second.save()
    assert TuningDB(target()).get("gemm_cpu", KEY) == fast


@pytest.mark.parametrize("content, why", [
    ("{not json", "not readable JSON"),
    ("[]", "not a tuning file"),
    (json.dumps({"version": min(READABLE_VERSIONS) - 1, "device": {}, "entries": {}}),
     "schema version"),
    (json.dumps({"version": SCHEMA_VERSION + 1, "device": {}, "entries": {}}), "schema version"),
])
def test_corrupt_or_other_version_file_is_ignored(content, why, caplog):
    path = TuningDB(target()).path
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="ember.tuning.db"):
        db = TuningDB(target())
    assert len(db) == 0 and why in caplog.text
    db.put("gemm_cpu", KEY, CpuGemmParams(), seconds=1.0)
    db.save()  # replaces the untrusted file with a good one
    assert TuningDB(target()).get("gemm_cpu", KEY) == CpuGemmParams()


def test_untrusted_entries_are_dropped_and_the_rest_kept(caplog):
    db = TuningDB(target())
    db.put("gemm_cpu", KEY, CpuGemmParams(), seconds=1.0)
    db.save()
    document = json.loads(db.path.read_text())
    good = document["entries"][f"gemm_cpu|{KEY}"]
    document["entries"].update({
        "gemm_cpu|spills": {**good, "key": "spills", "params": {**good["params"], "mr": 8,
                                                                "vw": 16, "nv": 4}},
        "gemm_cpu|extra field": {**good, "key": "extra field",
                                 "params": {**good["params"], "evil": 1}},
        "no_such_kind|k": {**good, "kind": "no_such_kind", "key": "k"},
        "gemm_cpu|renamed": {**good},  # the name does not match its key
    })
    db.path.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="ember.tuning.db"):
        again = TuningDB(target())
    assert len(again) == 1 and again.get("gemm_cpu", KEY) == CpuGemmParams()
    assert caplog.text.count("ignoring tuning entry") == 4
    assert "accumulators" in caplog.text


def test_file_of_another_device_is_ignored(caplog):
    mine = TuningDB(target())
    mine.put("gemm_cpu", KEY, CpuGemmParams(), seconds=1.0)
    mine.save()
    other = TuningDB(Target.of(OTHER_CPU))
    other.path.write_bytes(mine.path.read_bytes())  # copied by hand into another's name
    with caplog.at_level(logging.WARNING, logger="ember.tuning.db"):
        assert len(TuningDB(Target.of(OTHER_CPU))) == 0
    assert "tuned for another device" in caplog.text


def test_export_import_round_trip(tmp_path, monkeypatch):
    db = TuningDB(target())
    entries = {f"{KEY} {i}": CpuGemmParams(mr=1 + i) for i in range(3)}
    for key, params in entries.items():
        db.put("gemm_cpu", key, params, seconds=1e-3)
    db.save()
    shipped = tmp_path / "shipped.json"
    assert db.export(shipped) == 3

    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "elsewhere"))
    fresh = TuningDB(target())
    assert len(fresh) == 0
    assert fresh.import_(shipped) == 3
    assert fresh.import_(shipped) == 0  # nothing new or faster the second time
    reread = TuningDB(target())
    assert {k: reread.get("gemm_cpu", k) for k in entries} == entries

    with pytest.raises(InputError, match="another device"):
        TuningDB(Target.of(OTHER_CPU)).import_(shipped)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(InputError, match="not readable JSON"):
        fresh.import_(broken)
    with pytest.raises(InputError, match="no such file"):
        fresh.import_(tmp_path / "missing.json")


def test_version_1_file_is_read_with_every_entry_complete():
    db = TuningDB(target())
    db.put("gemm_cpu", KEY, CpuGemmParams(mr=3), seconds=1e-4)
    db.save()
    document = json.loads(db.path.read_text())
    (entry,) = document["entries"].values()
    entry.pop("complete")
    document["version"] = 1
    db.path.write_text(json.dumps(document))
    again = TuningDB(target())
    assert again.get("gemm_cpu", KEY) == CpuGemmParams(mr=3)
    assert is_complete(again.find("gemm_cpu", KEY))
    again.save()  # written back in the current version
    assert json.loads(db.path.read_text())["version"] == SCHEMA_VERSION


def test_a_complete_entry_wins_over_a_faster_incomplete_one():
    partial, whole = CpuGemmParams(mr=2), CpuGemmParams(mr=4)
    first, second = TuningDB(target()), TuningDB(target())
    first.put("gemm_cpu", KEY, partial, seconds=1e-5, complete=False)
    first.save()
    second.put("gemm_cpu", KEY, whole, seconds=2e-5, complete=True)
    second.save()
    first.put("gemm_cpu", KEY, partial, seconds=1e-5, complete=False)
    first.save()  # saved after the complete one: still loses to it
    assert TuningDB(target()).get("gemm_cpu", KEY) == whole


@pytest.mark.parametrize("key, bucket", [
    (KEY, "MatMul float32[17-32,17-32] float32[17-32,17-32] trans_a=0 trans_b=0 packed=1"),
    ("Conv float32[1,3,224,224] float32[64,3,7,7] strides=(2,2) float32[] packed=1",
     ("Conv float32[1,3-4,129-256,129-256] float32[33-64,3-4,5-8,5-8] strides=(2,2) "
      "float32[] packed=1")),
    ("MatMul float16[1,2,0] int8[2,1] packed=-", "MatMul float16[1,2,0] int8[2,1] packed=-"),
])
def test_bucket_key_rounds_every_dim_up_to_a_power_of_two(key, bucket):
    assert bucket_key(key) == bucket
    assert bucket_key(bucket) == bucket  # a bucket's bucket is itself


def test_a_new_size_takes_the_nearest_entry_of_its_bucket():
    """[17,31] x [31,19] and [20,31] x [31,19] share a bucket; [33,31] x [31,19], float64 and
    trans_b=1 do not. The bucket's entry reaches params_for under the bucket key."""
    db = TuningDB(target())
    near, far = CpuGemmParams(mr=3), CpuGemmParams(mr=5)
    db.put("gemm_cpu", KEY, near, seconds=1e-4)
    db.put("gemm_cpu", KEY.replace("[17,31]", "[32,31]"), far, seconds=1e-4)
    new = KEY.replace("[17,31]", "[20,31]")
    assert db.find("gemm_cpu", new)["key"] == KEY  # 20 is nearer 17 than 32
    for other in (KEY.replace("[17,31]", "[33,31]"), KEY.replace("float32", "float64"),
                  KEY.replace("trans_b=0", "trans_b=1")):
        assert db.find("gemm_cpu", other) is None, other
    assert db.find("gemv_cpu", new) is None  # another kind
    table = db.table([("gemm_cpu", new), ("gemm_cpu", KEY)])
    assert table.get("gemm_cpu", KEY) == near and table.get("gemm_cpu", new) is None
    assert table.get("gemm_cpu", bucket_key(new)) == near
    lookup = params_for("gemm_cpu", new, target().with_tuning(table))
    assert (lookup.level, lookup.source, lookup.params) == ("device", BUCKET_SOURCE, near)
    exact = params_for("gemm_cpu", KEY, target().with_tuning(table))
    assert (exact.level, exact.source) == ("device", "TuningDB")
