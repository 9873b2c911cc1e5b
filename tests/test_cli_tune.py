"""`ember tune`: tunes a model's MatMul on the OpenCL device, keeps the result in the
TuningDB, resumes, exports and imports it; argument errors; the `ember info` tunables line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ember
from ember.cli import main
from ember.cli.tune import parse_seconds
from ember.runtime.device import resolve_target
from ember.tuning.db import TuningDB


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def matmul_model(tmp_path_factory) -> Path:
    """y = Relu(x @ W) with x of shape (batch, 19) and W a 19 x 29 initializer."""
    w = np.random.default_rng(0).standard_normal((19, 29)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "cli_tune",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 19])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 29])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("tune") / "matmul.onnx"
    onnx.save(model, str(path))
    return path


def test_parse_seconds():
    assert [parse_seconds(t) for t in ("60s", "90", "1.5m", "2h", " 3 s ")] == [
        60.0, 90.0, 90.0, 7200.0, 3.0]
    for bad in ("", "abc", "-1s", "0", "5 days"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_seconds(bad)


@pytest.mark.opencl
def test_tune_stores_resumes_exports_and_imports(matmul_model, opencl_target, capsys,
                                                 tmp_path, monkeypatch):
    args = ["tune", str(matmul_model), "--budget", "4s", "--shape", "x=11x19",
            "--target", opencl_target]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "tuning" in out and "MatMul float32[11,19] float32[19,29]" in out
    assert "default" in out and "GFLOP/s" in out and "tuned" in out
    db = TuningDB(resolve_target(opencl_target).target)
    assert len(db) == 1 and f"TuningDB: {db.path} (1 entry)" in out
    (entry,) = db.entries()
    assert entry["kind"] == "gemm_cpu" or entry["kind"] == "gemm"

    assert main(args) == 0  # resumes: nothing left to measure
    assert "already tuned" in capsys.readouterr().out

    shipped = tmp_path / "shipped.json"
    assert main(["tune", "--export", str(shipped), "--target", opencl_target]) == 0
    assert "exported 1 entry" in capsys.readouterr().out
    assert json.loads(shipped.read_text())["entries"]

    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "fresh"))
    assert main(["tune", "--import", str(shipped), "--target", opencl_target]) == 0
    assert "imported 1 entry" in capsys.readouterr().out
    model = ember.compile(str(matmul_model), target=opencl_target, opt_level=3,
                          input_shapes={"x": (11, 19)})
    (step,) = [s for s in model.plan.steps if s.op == "MatMul"]
    assert step.lowered.tuning.level == "device"


@pytest.mark.parametrize("extra, message", [
    (["--shape", "nope=1x2"], "unknown input(s) ['nope']"),
    (["--shape", "x=1xz"], "expected dims like"),
    (["--target", "cpu"], "needs an OpenCL device"),
])
def test_tune_errors_exit_2(matmul_model, extra, message, capsys):
    assert main(["tune", str(matmul_model), *extra]) == 2
    assert message in capsys.readouterr().err


def test_tune_without_models_is_an_error(capsys):
    if not ember.devices():
        pytest.skip("no OpenCL device: the device error comes first")
    assert main(["tune"]) == 2
    assert "at least one MODEL" in capsys.readouterr().err


def test_bad_budget_is_a_usage_error(matmul_model, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["tune", str(matmul_model), "--budget", "soon"])
    assert stop.value.code == 2
    assert "expected a duration" in capsys.readouterr().err


def test_info_tells_where_tunables_come_from(capsys):
    if not ember.devices():
        pytest.skip("no OpenCL device: `ember info` has no device to describe")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    tunables = next(line for line in out.splitlines() if "tunables:" in line)
    assert " gemm from" in tunables and "gemm_cpu from" in tunables
    assert "tuned kernels: 0 in" in out
