"""Compiled bundles: `model.save(path)` and `ember.load(path)` (runtime/bundle.py,
runtime/plan_codec.py, ember/loaded.py) and `ember compile`.

A bundle loaded on the machine that wrote it must give the original model's outputs bit for
bit, from its stored binaries, in a process that never imports ONNX or the lowering passes;
a damaged file is a ModelLoadError naming it; a bundle made for another device or driver
is rebuilt with a warning saying what differs and what was done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.cli.main import main
from ember.codegen.types import Launch
from ember.frontends.builder import GraphBuilder
from ember.ir import DType
from ember.loaded import BINARIES, MODEL, NUMPY_PLANS, SOURCES, BundleWarning
from ember.runtime.bundle import MANIFEST, MANIFEST_SUM
from ember.runtime.plan_codec import decode_plan, encode_plan
from tests.harness import real_devices

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "models"
MLP = ROOT / "ember" / "data" / "digits_mlp.onnx"  # input [batch, 64]: small and dynamic
CNN = ROOT / "ember" / "data" / "digits_cnn.onnx"  # input [batch, 1, 8, 8]: convolutions

Feeds = dict[str, np.ndarray]


def _device() -> str:
    found = real_devices()
    if not found:
        pytest.skip("no OpenCL device found (pip install pocl-binary-distribution gives one)")
    return found[0].target


def _cnn_feeds() -> Feeds:
    return {"input": np.random.default_rng(0).standard_normal((4, 1, 8, 8), np.float32)}


def _bert_feeds(length: int = 16) -> Feeds:
    rng = np.random.default_rng(1)
    mask = np.ones((1, length), np.int64)
    mask[:, length - 3:] = 0
    return {"input_ids": rng.integers(0, 1000, (1, length), dtype=np.int64),
            "attention_mask": mask}


def _mlp_feeds(batch: int = 3) -> Feeds:
    return {"input": np.random.default_rng(2).standard_normal((batch, 64), np.float32)}


def _assert_same(actual: Feeds, expected: Feeds) -> None:
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert actual[name].shape == expected[name].shape, name
        assert actual[name].tobytes() == expected[name].tobytes(), f"{name} differs"


def _rewrite(source: Path, target: Path, *, manifest: Callable[[dict], None] | None = None,
             members: dict[str, bytes] | None = None) -> Path:
    """A copy of a bundle with its manifest edited and/or members replaced, checksums made
    to match: a bundle as another machine or ember would have written it."""
    with zipfile.ZipFile(source) as old:
        contents = {name: old.read(name) for name in old.namelist()}
    data = json.loads(contents[MANIFEST])
    for name, blob in (members or {}).items():
        contents[name] = blob
        data["members"][name] = hashlib.sha256(blob).hexdigest()
    if manifest is not None:
        manifest(data)
    contents[MANIFEST] = json.dumps(data).encode()
    contents[MANIFEST_SUM] = hashlib.sha256(contents[MANIFEST]).hexdigest().encode()
    with zipfile.ZipFile(target, "w") as new:
        for name, blob in contents.items():
            new.writestr(name, blob)
    return target


# -- a fresh process --------------------------------------------------------------------------
_CHILD = r"""
import json, sys, warnings
import numpy as np
import ember
with np.load(sys.argv[2], allow_pickle=False) as data:
    feeds = {name: data[name] for name in data.files}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = ember.load(sys.argv[1])
    outputs = model(**feeds)
np.savez(sys.argv[3], **outputs)
heavy = ("onnx", "ember.lowering", "ember.compiler", "ember.frontends.onnx", "ml_dtypes")
print(json.dumps({"origin": model.origin, "warnings": [str(w.message) for w in caught],
                  "imported": sorted(m for m in sys.modules
                                     if m.split(".")[0] in ("onnx", "ml_dtypes")
                                     or m.startswith(heavy))}))
"""


def _load_in_child(bundle: Path, feeds: Feeds, tmp_path: Path) -> tuple[Feeds, dict]:
    """ember.load and one call in a new Python process: its outputs and what it reports."""
    np.savez(tmp_path / "feeds.npz", **feeds)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", _CHILD, str(bundle),
                           str(tmp_path / "feeds.npz"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "out.npz", allow_pickle=False) as data:
        outputs = {name: data[name] for name in data.files}
    return outputs, json.loads(done.stdout.strip().splitlines()[-1])


# -- fixtures: one compile per model ------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory) -> tuple[Path, Feeds, Feeds]:
    """The digits CNN compiled for one batch size on the device, and its bundle."""
    feeds = _cnn_feeds()
    model = ember.compile(CNN, target=_device(), input_shapes={"input": feeds["input"].shape})
    expected = model(**feeds)
    path = model.save(tmp_path_factory.mktemp("cnn") / "digits_cnn.ember")
    return path, feeds, expected


@pytest.fixture(scope="module")
def bert_model(tmp_path_factory):
    """bert_mini (dims batch and sequence left free) called at one shape, and its bundle."""
    model = ember.compile(MODELS / "bert_mini.onnx", target=_device())
    feeds = _bert_feeds()
    expected = model(**feeds)
    path = model.save(tmp_path_factory.mktemp("bert") / "bert_mini.ember")
    return model, path, feeds, expected


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory) -> tuple[Path, Feeds, Feeds]:
    """The digits MLP on the numpy target: small enough to load many times."""
    model = ember.compile(MLP, target="numpy", input_shapes={"input": (3, 64)})
    feeds = _mlp_feeds()
    expected = model(**feeds)
    return model.save(tmp_path_factory.mktemp("mlp") / "mlp.ember"), feeds, expected


# -- round trips ------------------------------------------------------------------------------
def test_cnn_loads_from_its_binaries_in_a_fresh_process(cnn_bundle, tmp_path):
    path, feeds, expected = cnn_bundle
    outputs, report = _load_in_child(path, feeds, tmp_path)
    _assert_same(outputs, expected)
    assert report["origin"] == BINARIES
    assert report["warnings"] == []
    assert report["imported"] == [], "loading a bundle must not import ONNX, the compiler or ml_dtypes"


def test_dynamic_bert_loads_from_its_binaries_in_a_fresh_process(bert_model, tmp_path):
    _, path, feeds, expected = bert_model
    outputs, report = _load_in_child(path, feeds, tmp_path)
    _assert_same(outputs, expected)
    assert (report["origin"], report["warnings"], report["imported"]) == (BINARIES, [], [])


def test_loaded_model_takes_calls_as_a_compiled_model_does(bert_model):
    model, path, feeds, expected = bert_model
    loaded = ember.load(path)
    assert loaded.input_names == model.input_names
    assert loaded.output_names == model.output_names
    assert loaded.shapes == [((1, 16), (1, 16))]
    _assert_same(loaded(feeds["input_ids"], feeds["attention_mask"]), expected)
    _assert_same(loaded(feeds), expected)
    listed = loaded.run(["pooler_output"], feeds)
    assert listed[0].tobytes() == expected["pooler_output"].tobytes()
    assert "kernels from binaries" in loaded.summary()
    profile = loaded.profile(feeds, runs=2)
    assert profile.runs == 2 and len(profile.rows) == loaded.stats.steps
    with pytest.raises(ember.InputError, match="unknown input"):
        loaded(input_idz=feeds["input_ids"])
    with pytest.raises(ember.DTypeError, match="int64"):
        loaded(feeds["input_ids"].astype(np.int32), feeds["attention_mask"])
    with pytest.raises(ember.InputError, match="sequence"):
        loaded(feeds["input_ids"], np.ones((1, 9), np.int64))


@pytest.mark.parametrize("name, feeds", [("digits_mlp", _mlp_feeds()),
                                         ("bert_mini", _bert_feeds(8))])
def test_numpy_target_round_trip(name, feeds, tmp_path):
    source = MLP if name == "digits_mlp" else MODELS / f"{name}.onnx"
    model = ember.compile(source, target="numpy",
                          input_shapes={k: v.shape for k, v in feeds.items()})
    expected = model(**feeds)
    loaded = ember.load(model.save(tmp_path / f"{name}.ember"))
    assert loaded.origin == NUMPY_PLANS and loaded.device is None
    _assert_same(loaded(**feeds), expected)


def test_a_new_shape_compiles_from_the_embedded_model_with_a_log_line(bert_model, caplog):
    model, path, _, _ = bert_model
    loaded = ember.load(path)
    feeds = _bert_feeds(24)
    with caplog.at_level(logging.INFO, logger="ember.loaded"):
        outputs = loaded(**feeds)
    assert any("not in the bundle" in r.getMessage() for r in caplog.records)
    _assert_same(outputs, model(**feeds))


def test_plan_codec_writes_every_dataclass_field(bert_model):
    """Launch (and every other class) is written by dataclasses.fields: a field added to it
    is carried; the plan read back equals the plan written."""
    plan = bert_model[0].plan
    data, arrays = encode_plan(plan, "arrays/0/")
    text = json.dumps(data)
    back = decode_plan(json.loads(text), lambda name: arrays[name].copy())
    assert back.steps == plan.steps and back.slots == plan.slots
    assert back.memory == plan.memory and back.shared_kernels == plan.shared_kernels
    assert back.inputs == plan.inputs and back.outputs == plan.outputs
    assert all(np.array_equal(back.constants[k], v) for k, v in plan.constants.items())
    wanted = {f.name for f in dataclasses.fields(Launch) if f.init}
    stored = [launch["fields"] for step in data["plan"]["fields"]["steps"]["$list"]
              if step["fields"]["lowered"] is not None
              for launch in step["fields"]["lowered"]["fields"]["launches"]]
    assert stored and all(set(fields) == wanted for fields in stored)


def test_a_bundle_holds_no_pickle(cnn_bundle):
    path = cnn_bundle[0]
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert not [n for n in names if n.endswith((".pkl", ".pickle"))]
        arrays = [n for n in names if n.endswith(".npy")]
        assert arrays
        for name in arrays:
            with archive.open(name) as member:
                np.load(member, allow_pickle=False)
        manifest = json.loads(archive.read(MANIFEST))
    assert manifest["device"]["fingerprint"] == ember.load(path).device.info.traits.fingerprint
    assert manifest["model"] == "model.onnx" and manifest["tuning"]


# -- damage -----------------------------------------------------------------------------------
def _flipped(path: Path, offset: int, target: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def test_a_flipped_byte_in_any_member_is_a_load_error_naming_the_file(mlp_bundle, tmp_path):
    path = mlp_bundle[0]
    with zipfile.ZipFile(path) as archive:
        members = [(i.filename, i.header_offset + 30 + len(i.filename) + len(i.extra)
                    + i.compress_size // 2) for i in archive.infolist()]
    for name, offset in members:
        broken = _flipped(path, offset, tmp_path / "broken.ember")
        with pytest.raises(ember.ModelLoadError, match="broken.ember") as caught:
            ember.load(broken)(**mlp_bundle[1])
        assert "damaged" in str(caught.value) or "not an ember bundle" in str(caught.value), name


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_a_truncated_bundle_is_a_load_error(mlp_bundle, tmp_path, keep):
    data = mlp_bundle[0].read_bytes()
    broken = tmp_path / "cut.ember"
    broken.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ember.ModelLoadError, match="cut.ember"):
        ember.load(broken)


@settings(max_examples=30, deadline=None)
@given(position=st.floats(0.0, 1.0, exclude_max=True))
def test_any_flipped_byte_loads_the_same_model_or_fails_clearly(mlp_bundle, tmp_path_factory,
                                                                position):
    """Never garbage: a byte flipped anywhere either leaves what ember reads alone (a zip
    timestamp) or is a ModelLoadError."""
    path, feeds, expected = mlp_bundle
    size = path.stat().st_size
    broken = _flipped(path, int(position * size), tmp_path_factory.mktemp("flip") / "f.ember")
    try:
        outputs = ember.load(broken)(**feeds)
    except ember.ModelLoadError:
        return
    _assert_same(outputs, expected)


def test_files_that_are_not_bundles(tmp_path):
    with pytest.raises(ember.ModelLoadError, match="no such file"):
        ember.load(tmp_path / "missing.ember")
    with pytest.raises(ember.ModelLoadError, match="not an ember bundle"):
        ember.load(MLP)
    other = tmp_path / "other.ember"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(ember.ModelLoadError, match="not an ember bundle"):
        ember.load(other)


# -- another device, driver or ember -------------------------------------------------------
def test_another_driver_rebuilds_from_the_stored_sources(cnn_bundle, tmp_path):
    path, feeds, expected = cnn_bundle

    def older_driver(manifest: dict) -> None:
        manifest["device"]["driver_version"] = "0.9-old"
        manifest["device"]["fingerprint"] += "-old"

    edited = _rewrite(path, tmp_path / "edited.ember", manifest=older_driver)
    with pytest.warns(BundleWarning, match=r"driver version '0.9-old' in the bundle.*"
                                           r"rebuilding its kernels from the stored sources"):
        loaded = ember.load(edited)
    assert loaded.origin == SOURCES
    _assert_same(loaded(**feeds), expected)


def test_another_family_compiles_the_embedded_model(cnn_bundle, tmp_path):
    path, feeds, expected = cnn_bundle

    def other_device(manifest: dict) -> None:
        manifest["device"].update(name="Radeon RX 580", family="amd-gcn", fingerprint="x")

    edited = _rewrite(path, tmp_path / "gpu.ember", manifest=other_device)
    with pytest.warns(BundleWarning, match=r"device 'Radeon RX 580' in the bundle.*family "
                                           r"'amd-gcn'.*Compiling the ONNX model inside it"):
        loaded = ember.load(edited)
    assert loaded.origin == MODEL
    _assert_same(loaded(**feeds), expected)


def test_a_refused_binary_rebuilds_from_the_stored_sources(cnn_bundle, tmp_path):
    path, feeds, expected = cnn_bundle
    with zipfile.ZipFile(path) as archive:
        binaries = [n for n in archive.namelist() if n.startswith("binaries/")]
    assert binaries, "the driver handed out no binary to store"
    edited = _rewrite(path, tmp_path / "refused.ember",
                      members={name: b"not a program binary" for name in binaries})
    outputs, report = _load_in_child(edited, feeds, tmp_path)
    _assert_same(outputs, expected)
    assert report["origin"] == SOURCES
    assert any("refused" in w and "stored sources" in w for w in report["warnings"])


def test_another_ember_version_compiles_the_embedded_model(mlp_bundle, tmp_path):
    path, feeds, expected = mlp_bundle
    edited = _rewrite(path, tmp_path / "old.ember",
                      manifest=lambda m: m.update(ember_version="0.0.1"))
    with pytest.warns(BundleWarning, match="written by ember 0.0.1"):
        loaded = ember.load(edited)
    assert loaded.origin == MODEL
    _assert_same(loaded(**feeds), expected)


def test_a_bundle_of_a_built_graph_runs_but_cannot_be_compiled_again(tmp_path):
    builder = GraphBuilder("tiny")
    x = builder.input("x", (2, 3), DType.FLOAT32)
    builder.output("y", builder.op("Relu", x))
    model = ember.compile(builder.build(), target="numpy")
    feeds = {"x": np.array([[-1, 2, -3], [4, -5, 6]], np.float32)}
    path = model.save(tmp_path / "tiny.ember")
    _assert_same(ember.load(path)(**feeds), model(**feeds))
    edited = _rewrite(path, tmp_path / "old.ember",
                      manifest=lambda m: m.update(ember_version="0.0.1"))
    with pytest.raises(ember.ModelLoadError, match="holds no ONNX model"):
        ember.load(edited)


# -- the command line ---------------------------------------------------------------------------
def test_ember_compile_then_ember_run_the_bundle(tmp_path, capsys):
    out = tmp_path / "mlp.ember"
    assert main(["compile", str(MLP), "--shape", "input=5x64", "--target", "numpy",
                 "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert ember.load(out).shapes == [((5, 64),)]
    assert main(["run", str(out), "--repeat", "1"]) == 0
    assert "output logits: shape (5, 10)" in capsys.readouterr().out


def test_ember_compile_usage_errors(tmp_path, capsys):
    assert main(["compile", str(MLP), "-o", str(tmp_path / "mlp.ember")]) == 2
    assert "--shape" in capsys.readouterr().err
    assert main(["compile", str(MLP), "--shape", "input=1x64", "-o",
                 str(tmp_path / "mlp.onnx")]) == 2
    assert ".ember" in capsys.readouterr().err
