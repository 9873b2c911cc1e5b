"""The `ember` command: info, run (with --input files and random inputs), errors, demo."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ember
from ember.cli import main
from ember.cli.main import DEMO_MIN_ACCURACY, DemoResult, print_demo
from tests.harness import real_devices

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """x (batch x 5) and y (1 x 5) -> sum = Relu(x + y), prod = x * y."""
    nodes = [
        helper.make_node("Add", ["x", "y"], ["s"]),
        helper.make_node("Relu", ["s"], ["sum"]),
        helper.make_node("Mul", ["x", "y"], ["prod"]),
    ]
    graph = helper.make_graph(
        nodes, "cli_small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 5]),
         helper.make_tensor_value_info("prod", TensorProto.FLOAT, ["batch", 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("cli") / "small.onnx"
    onnx.save(model, str(path))
    return path


def _output_line(text: str, name: str) -> re.Match:
    match = re.search(rf"^output {name}: shape \(([\d, ]*)\) (\w+)\s+sum (\S+)\s+mean (\S+)$",
                      text, re.MULTILINE)
    assert match, f"no output line for {name!r} in:\n{text}"
    return match


def test_info_lists_devices_and_default(capsys) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"ember {ember.__version__}" in out
    found = ember.devices()
    for info in found:
        assert info.target in out and info.traits.name in out
        assert f"family {info.family.name}" in out
    if real_devices():
        assert f"default target: {real_devices()[0].target}" in out
    else:
        assert "default target: numpy (the numpy executor" in out


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "ember", "info"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ember {ember.__version__}")


@pytest.mark.parametrize("target", ["cpu", None], ids=["numpy", "default"])
def test_run_with_input_files(small_model: Path, tmp_path: Path, target, capsys) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    y = rng.standard_normal((1, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    argv = ["run", str(small_model), "--input", f"x={tmp_path / 'x.npy'}",
            "--input", f"y={tmp_path / 'y.npy'}", "--repeat", "2", "--summary"]
    if target is not None:
        argv += ["--target", target]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for name, expected in (("sum", np.maximum(x + y, 0)), ("prod", x * y)):
        match = _output_line(out, name)
        assert match[1] == "3, 5" and match[2] == "float32"
        assert float(match[3]) == pytest.approx(expected.sum(dtype=np.float64), rel=1e-5)
        assert float(match[4]) == pytest.approx(expected.mean(dtype=np.float64), rel=1e-5)
    assert re.search(r"compile \d+\.\d+ s; first call .* median latency .* over 2 runs", out)
    assert "ember model" in out  # the summary


def test_run_with_random_inputs_and_shape(small_model: Path, capsys) -> None:
    assert main(["run", str(small_model), "--shape", "x=7x5", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "input  x: shape (7, 5) float32  from random normal (seed 0)" in out
    assert "input  y: shape (1, 5) float32  from random normal (seed 0)" in out
    assert _output_line(out, "sum")[1] == "7, 5"
    # Relu output: a sum of non-negative numbers.
    assert float(_output_line(out, "sum")[3]) >= 0.0
    # The same seed gives the same random inputs, hence the same checksums.
    assert main(["run", str(small_model), "--shape", "x=7x5", "--repeat", "1",
                 "--target", "cpu"]) == 0
    again = capsys.readouterr().out
    for name in ("sum", "prod"):
        assert float(_output_line(again, name)[3]) == pytest.approx(
            float(_output_line(out, name)[3]), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "{missing}"], "no ONNX model at"),
        (["run", "{model}", "--input", "nope=a.npy"],
         "--input names unknown input(s) ['nope']; the model's inputs are ['x', 'y']"),
        (["run", "{model}", "--input", "x={missing}"], "--input x={missing}: no such file"),
        (["run", "{model}", "--shape", "x=3xq"], "expected dims like"),
        (["run", "{model}", "--shape", "x=3x4"], "dim 1 is fixed at 5"),
        (["run", "{model}", "--shape", "x=2x5", "--target", "opencl:9:9"],
         "no OpenCL device 9:9"),
        (["run", "{model}", "--target", "cpu"], "no size for input 'x' dim 0 ('batch')"),
    ],
    ids=["missing-model", "unknown-input", "missing-npy", "bad-shape", "wrong-shape",
         "no-device", "dim-not-given"],
)
def test_errors_are_one_line_with_exit_2(small_model: Path, tmp_path: Path, argv, message,
                                         capsys) -> None:
    """Usage errors: what the command line asks cannot be done as written."""
    missing = str(tmp_path / "does_not_exist")
    argv = [a.format(model=small_model, missing=missing) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ember: error: "), captured.err
    assert message.format(missing=missing) in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize(
    ("array", "extra", "message"),
    [
        (np.zeros((2, 5), np.float64), [], "input 'x' expects dtype float32, got float64"),
        (np.zeros((2, 4), np.float32), [], "shape (2, 4) does not fit input 'x' (batch, 5)"),
        (np.zeros((5,), np.float32), [], "shape (5,) does not fit input 'x' (batch, 5)"),
        (np.zeros((2, 5), np.float32), ["--shape", "x=4x5"], "differs from the file's shape"),
    ],
    ids=["wrong-dtype", "wrong-dim", "wrong-rank", "shape-conflict"],
)
def test_input_file_errors(small_model: Path, tmp_path: Path, array, extra, message,
                           capsys) -> None:
    np.save(tmp_path / "x.npy", array)
    argv = ["run", str(small_model), "--target", "cpu", "--input", f"x={tmp_path / 'x.npy'}"]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("ember: error: ") and message in err and err.count("\n") == 1
    if not extra:  # the file's own problem: the error names the flag and the file
        assert f"--input x={tmp_path / 'x.npy'}: " in err


def test_missing_model_in_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "ember", "run", str(tmp_path / "x.onnx")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"ember: error: no ONNX model at {tmp_path / 'x.onnx'}"


def test_demo_on_the_default_target(capsys) -> None:
    code = main(["demo", "--repeat", "3"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out + captured.err
    for name in ("mlp", "cnn"):
        block = out.split(f"digits_{name} on ", 1)[1]
        accuracy = float(re.search(r"accuracy\s+(\S+)", block)[1])
        assert accuracy >= DEMO_MIN_ACCURACY
        assert re.search(r"identical predictions 1\.0000", block)
    assert "FAILED" not in out


def _demo_result(**changes) -> DemoResult:
    fields = dict(name="mlp", where="cpu", accuracy=0.97, trained_accuracy=0.97,
                  max_abs_diff=1e-6, tolerance=1e-3, agreement=1.0, compile_seconds=0.1,
                  first_call_seconds=0.2, median_seconds=1e-3, host_steps=0)
    return DemoResult(**{**fields, **changes})


def test_demo_verdict() -> None:
    """Low accuracy, logits off the reference, or differing predictions each fail."""
    assert _demo_result().ok
    assert not _demo_result(accuracy=0.5).ok
    assert not _demo_result(max_abs_diff=0.5).ok
    assert not _demo_result(agreement=0.9).ok


def test_demo_prints_why_it_failed(capsys) -> None:
    low = _demo_result(accuracy=0.5)
    off = _demo_result(name="cnn", max_abs_diff=0.5, agreement=0.9, host_steps=2)
    print_demo([low, off], 450, 3)
    out = capsys.readouterr().out
    assert f"FAILED          accuracy 0.5000 < {DEMO_MIN_ACCURACY}" in out
    assert "FAILED          ember disagrees with the numpy reference" in out
    assert "2 step(s) ran on the host" in out


def test_show_prints_passes_ir_and_dot(tmp_path: Path, capsys) -> None:
    model = Path(__file__).parent / "models" / "resnet_mini.onnx"
    dot = tmp_path / "graph.dot"
    assert main(["show", str(model), "--target", "cpu", "--passes", "--dot", str(dot)]) == 0
    out = capsys.readouterr().out
    assert "== FoldBatchNorm:" in out and "changed=True" in out and "'folded': 15" in out
    final = out.split("== Place:")[-1]
    assert "BatchNormalization" not in final and "Conv(" in final
    text = dot.read_text()
    assert text.startswith('digraph "') and "\\nConv\\n" in text and text.rstrip().endswith("}")
    assert main(["show", str(model), "--target", "cpu", "--opt", "0"]) == 0
    assert "BatchNormalization(" in capsys.readouterr().out
