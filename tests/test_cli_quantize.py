"""`ember quantize`: calibrates on an .npz, writes a QDQ model that onnxruntime and ember
run, prints the per-layer plan (or JSON that QuantPlan reads back), reuses a plan, and
refuses a calibration file that does not match the model's inputs, naming both."""

from __future__ import annotations


import numpy as np
import onnx
import onnxruntime as ort
import pytest

import ember
from ember.cli import main
from ember.quantization.plan import QuantPlan
from tests.example_models import load_example

EXAMPLE = "breast_cancer_mlp"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    example = load_example(EXAMPLE)
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, anything=np.asarray(example.calib_x))  # one input: the key may be any
    return example, path


def test_int8_writes_a_model_that_onnxruntime_and_ember_run(calib, tmp_path, capsys):
    example, npz = calib
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(example.path), "--calib", str(npz), "--scheme", "int8",
                 "-o", str(out), "-q"]) == 0
    assert "wrote" in capsys.readouterr().out
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    x = np.asarray(example.test_x)
    ours = ember.compile(str(out), target="cpu")(input=x)["logits"]
    theirs = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.99
    assert example.accuracy_of(ours) >= example.accuracy - 0.005


def test_json_plan_reads_back_and_is_reused(calib, tmp_path, capsys):
    example, npz = calib
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(example.path), "--calib", str(npz), "--scheme", "mixed",
                 "--avg-bits", "6", "-o", str(out), "--json"]) == 0
    text = capsys.readouterr().out
    plan = QuantPlan.from_json(text)
    assert len(plan) == 3 and all(row.precision in ("fp32", "fp16", "int8", "int4")
                                  for row in plan)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(text)
    again = tmp_path / "again.onnx"
    assert main(["quantize", str(example.path), "--calib", str(npz), "--plan",
                 str(plan_file), "-o", str(again), "--json"]) == 0
    assert QuantPlan.from_json(capsys.readouterr().out).precisions() == plan.precisions()


def test_report_prints_the_table_and_the_worst_tensors(calib, tmp_path, capsys):
    example, npz = calib
    assert main(["quantize", str(example.path), "--calib", str(npz), "--scheme", "int4",
                 "--block-size", "32", "-o", str(tmp_path / "q.onnx"), "--report"]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "SQNR" in out and "int4" in out
    assert "per-tensor error" in out


def test_calibration_file_without_the_input_names_it(calib, tmp_path, capsys):
    example, _ = calib
    bad = tmp_path / "bad.npz"
    np.savez(bad, first=np.zeros((4, 30), np.float32), second=np.zeros((4, 30), np.float32))
    code = main(["quantize", str(example.path), "--calib", str(bad), "-o",
                 str(tmp_path / "q.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--calib" in err and "input" in err and "first" in err
