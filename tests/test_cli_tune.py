"""`ember tune`: tunes a model's MatMuls on the OpenCL device, prints the closing table,
keeps the results in the TuningDB, resumes (also after a budget that ended early), exports
and imports them; the numpy target and argument errors; the `ember info` tunables line."""

from __future__ import annotations

import argparse
import itertools
import json
import re
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


def _save_model(path: Path, sizes: tuple[int, ...]) -> Path:
    """A chain of MatMuls (the first with a Relu) on x of shape (batch, sizes[0]), each
    weight a sizes[i] x sizes[i + 1] initializer."""
    rng = np.random.default_rng(0)
    nodes, weights, current = [], [], "x"
    for i, (k, n) in enumerate(itertools.pairwise(sizes)):
        weights.append(onnx.numpy_helper.from_array(
            rng.standard_normal((k, n)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        current = f"m{i}"
        if i == 0:
            nodes.append(helper.make_node("Relu", [current], ["r0"]))
            current = "r0"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes, "cli_tune",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def matmul_model(tmp_path_factory) -> Path:
    """y = Relu(x @ W) with x of shape (batch, 19) and W a 19 x 29 initializer."""
    return _save_model(tmp_path_factory.mktemp("tune") / "matmul.onnx", (19, 29))


@pytest.fixture(scope="module")
def two_matmuls(tmp_path_factory) -> Path:
    """y = Relu(x @ W0) @ W1: two kernels to tune, the larger product first."""
    return _save_model(tmp_path_factory.mktemp("tune") / "two.onnx", (96, 128, 40))


def _row(out: str, shapes: str) -> str:
    """The closing table's row of the kernel with these operand shapes."""
    (row,) = [line for line in out.splitlines() if shapes in line and "MatMul" in line]
    return row


def test_parse_seconds():
    assert [parse_seconds(t) for t in ("60s", "90", "1.5m", "2h", " 3 s ")] == [
        60.0, 90.0, 90.0, 7200.0, 3.0]
    for bad in ("", "abc", "-1s", "0", "5 days"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_seconds(bad)


@pytest.mark.opencl
def test_tune_stores_resumes_exports_and_imports(matmul_model, opencl_target, capsys,
                                                 tmp_path, monkeypatch):
    args = ["tune", str(matmul_model), "--budget", "2s", "--shape", "x=11x19",
            "--target", opencl_target, "--repeat", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "speedup" in line)
    assert header.split() == ["op", "step", "shapes", "default", "tuned", "speedup"]
    row = _row(out, "float32 11x19, 19x29")
    assert row.split()[1] == "y" and row.split()[-1] not in ("-", "")  # the step; a note
    assert re.search(r"\d+\.\d\dx", row)  # a speedup: both times were measured
    assert re.search(r"model latency, median of 2: [\d.]+ \w+ with the default "
                     r"parameters, [\d.]+ \w+ tuned \([\d.]+x\)", out)
    assert "tuned 1 of 1 kernel\n" in out
    db = TuningDB(resolve_target(opencl_target).target)
    assert len(db) == 1 and f"TuningDB: {db.path} (1 entry)" in out
    (entry,) = db.entries()
    assert entry["kind"] in ("gemm_cpu", "gemm") and entry["complete"]

    assert main(args) == 0  # resumes: nothing left to measure
    out = capsys.readouterr().out
    assert "tuned earlier (in the TuningDB)" in _row(out, "float32 11x19, 19x29")
    assert "tuned 1 of 1 kernel\n" in out

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


@pytest.mark.opencl
def test_a_budget_that_ends_early_is_continued_by_the_next_run(two_matmuls, opencl_target,
                                                               capsys):
    """1 s cannot search the first product's space (over 20 candidates, each a kernel
    build): the second kernel is not reached, and the next run tunes it, keeping the
    first as it was measured. -q hides the progress bar, never the table."""
    args = ["tune", str(two_matmuls), "--budget", "1s", "--shape", "x=33x96", "--target",
            opencl_target, "--repeat", "1", "-q"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    first = captured.out
    assert "not reached: the budget ended" in _row(first, "float32 33x128, 128x40")
    assert "tuned 1 of 2 kernels; run `ember tune` again to continue\n" in first
    db = TuningDB(resolve_target(opencl_target).target)
    (kept,) = db.entries()

    assert main(args) == 0
    second = capsys.readouterr().out
    assert "tuned earlier (in the TuningDB)" in _row(second, "float32 33x96, 96x128")
    assert "candidate" in _row(second, "float32 33x128, 128x40")
    assert "tuned 2 of 2 kernels\n" in second
    db.reload()
    assert len(db) == 2 and db.entry(kept["kind"], kept["key"]) == kept


@pytest.mark.opencl
@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_numpy_target_names_the_devices_to_tune_instead(matmul_model, opencl_target, target,
                                                        capsys):
    assert main(["tune", str(matmul_model), "--shape", "x=2x19", "--target", target]) == 2
    err = capsys.readouterr().err
    assert "the numpy executor has no kernels to tune" in err
    assert f"--target {opencl_target} (" in err


@pytest.mark.parametrize("extra, message", [
    (["--shape", "nope=1x2"], "unknown input(s) ['nope']"),
    (["--shape", "x=1xz"], "expected dims like"),
    ([], "input 'x' dim 0 ('batch'): --shape does not give it"),
])
def test_tune_errors_exit_2(matmul_model, extra, message, capsys):
    assert main(["tune", str(matmul_model), *extra]) == 2
    assert message in capsys.readouterr().err


def test_tune_without_models_is_an_error(capsys):
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
