"""`ember run` (ember/cli/run.py) and what every command shares in main.py: random inputs
read from the graph (ember/cli/inputs.py), NaN/Inf warnings, --output, --repeat/--warmup,
--profile, --compare, --threads, -v/-q anywhere, exit codes, a closed stdout."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.cli import main
from ember.cli.inputs import SMALL_INT_HIGH, input_roles, random_input
from ember.cli.main import build_parser
from ember.frontends.onnx import input_signature
from ember.ir import DType
from ember.runtime.device import resolve_target, with_threads
from tests.harness import TOLERANCE, real_devices

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).parent / "models"
OPSET = [helper.make_opsetid("", 17)]


def _save(tmp_path: Path, name: str, nodes, inputs, outputs, initializers=()) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=OPSET)
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _roles(model: onnx.ModelProto | Path):
    proto = onnx.load(str(model)) if isinstance(model, Path) else model
    return input_roles(proto, {n: dtype for n, (_, dtype) in input_signature(proto).items()})


@pytest.fixture(scope="module")
def roles_model(tmp_path_factory) -> Path:
    """One graph with an input of every role: ids through Cast/Unsqueeze/Reshape into two
    Gathers (13 and 7 rows), an unnamed additive mask (1 - m) * -10000, a Where condition,
    segment and position ids, a bool, a plain int (Sub from 1, scaled by 2: no mask) and
    an int that indexes an input (not a constant table)."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [
        helper.make_node("Cast", ["tok"], ["tok32"], to=TensorProto.INT32),
        helper.make_node("Unsqueeze", ["tok32", "axis0"], ["tok_u"]),
        helper.make_node("Reshape", ["tok_u", "flat"], ["tok_r"]),
        helper.make_node("Gather", ["table13", "tok_r"], ["emb13"]),
        helper.make_node("Gather", ["table7", "tok"], ["emb7"]),
        helper.make_node("Cast", ["m"], ["m_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "m_f"], ["inv"]),
        helper.make_node("Mul", ["inv", "big_negative"], ["bias"]),
        helper.make_node("Cast", ["keep"], ["keep_b"], to=TensorProto.BOOL),
        helper.make_node("Where", ["keep_b", "x", "zero"], ["kept"]),
        helper.make_node("Gather", ["table7", "segment_ids"], ["seg"]),
        helper.make_node("Gather", ["table13", "position_ids"], ["pos"]),
        helper.make_node("Not", ["flag"], ["not_flag"]),
        helper.make_node("Cast", ["count"], ["count_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "count_f"], ["c1"]),
        helper.make_node("Mul", ["c1", "two"], ["c2"]),
        helper.make_node("Gather", ["x", "k"], ["xk"]),
    ]
    inits = [_const("table13", np.zeros((13, 2), np.float32)),
             _const("table7", np.zeros((7, 2), np.float32)),
             _const("axis0", np.array([0], np.int64)), _const("flat", np.array([-1], np.int64)),
             _const("one", np.array(1.0, np.float32)),
             _const("big_negative", np.array(-10000.0, np.float32)),
             _const("zero", np.array(0.0, np.float32)), _const("two", np.array(2.0, np.float32))]
    inputs = [helper.make_tensor_value_info(n, t, s) for n, t, s in (
        ("tok", i64, [4]), ("m", i64, [4]), ("keep", TensorProto.INT32, [4]),
        ("segment_ids", i64, [4]), ("position_ids", i64, [2, 4]), ("flag", TensorProto.BOOL, [4]),
        ("count", i64, [4]), ("k", i64, [4]), ("x", f, [4]))]
    outputs = [helper.make_tensor_value_info(n, t, s) for n, t, s in (
        ("emb13", f, [4, 2]), ("emb7", f, [4, 2]), ("bias", f, [4]), ("kept", f, [4]),
        ("seg", f, [4, 2]), ("pos", f, [2, 4, 2]), ("not_flag", TensorProto.BOOL, [4]),
        ("c2", f, [4]), ("xk", f, [4]))]
    return _save(tmp_path_factory.mktemp("roles"), "roles", nodes, inputs, outputs, inits)


def test_roles_read_from_the_graph(roles_model: Path) -> None:
    roles = _roles(roles_model)
    kinds = {name: (role.kind, role.high) for name, role in roles.items()}
    assert kinds == {
        "tok": ("ids", 7), "m": ("mask", None), "keep": ("mask", None),
        "segment_ids": ("zeros", None), "position_ids": ("positions", 13),
        "flag": ("bool", None), "count": ("int", None), "k": ("int", None),
        "x": ("float", None),
    }
    assert "table7" in roles["tok"].describe()
    assert "large negative" in roles["m"].describe() and "Where" in roles["keep"].describe()


def test_random_values_follow_the_roles(roles_model: Path) -> None:
    proto = onnx.load(str(roles_model))
    roles = _roles(proto)
    rng = np.random.default_rng(0)
    signature = input_signature(proto)
    made = {name: random_input(rng, (50,) if name != "position_ids" else (2, 20), dtype,
                               roles[name]) for name, (_, dtype) in signature.items()}
    assert made["tok"].dtype == np.int64 and made["tok"].min() >= 0 and made["tok"].max() < 7
    assert len(np.unique(made["tok"])) > 1
    assert (made["m"] == 1).all() and (made["keep"] == 1).all()
    assert made["keep"].dtype == np.int32
    assert (made["segment_ids"] == 0).all()
    np.testing.assert_array_equal(made["position_ids"], np.tile(np.arange(20) % 13, (2, 1)))
    assert made["flag"].dtype == np.bool_ and made["flag"].all()
    assert made["count"].min() >= 0 and made["count"].max() < SMALL_INT_HIGH
    assert made["x"].dtype == np.float32 and made["x"].std() > 0.5


def test_names_say_the_role_first(tmp_path: Path) -> None:
    """A mask by name gets ones although it feeds a Gather; floats named a mask too."""
    nodes = [helper.make_node("Gather", ["table", "attention_mask"], ["g"]),
             helper.make_node("Mul", ["x_mask", "x_mask"], ["y"])]
    path = _save(tmp_path, "named", nodes,
                 [helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [3]),
                  helper.make_tensor_value_info("x_mask", TensorProto.FLOAT, [3])],
                 [helper.make_tensor_value_info("g", TensorProto.FLOAT, [3, 2]),
                  helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                 [_const("table", np.zeros((2, 2), np.float32))])
    roles = _roles(path)
    assert roles["attention_mask"].kind == "mask" and roles["x_mask"].kind == "mask"
    ones = random_input(np.random.default_rng(0), (3,), DType.FLOAT32, roles["x_mask"])
    assert ones.dtype == np.float32 and (ones == 1).all()


@pytest.mark.parametrize(("model", "expected"), [
    ("bert_mini", {"input_ids": "ids", "attention_mask": "mask"}),
    ("gpt2_mini", {"input_ids": "ids"}),
])
def test_transformers_run_on_random_inputs_with_finite_outputs(model: str, expected,
                                                               tmp_path: Path,
                                                               capsys) -> None:
    path = MODELS / f"{model}.onnx"
    roles = _roles(path)
    assert {name: role.kind for name, role in roles.items()} == expected
    assert roles["input_ids"].high == 1000  # the vocabulary of the mini models
    out_file = tmp_path / "out.npz"
    assert main(["run", str(path), "--shape", "input_ids=2x8", "--target", "numpy",
                 "--repeat", "1", "--output", str(out_file)]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert "from random ids in [0, 1000)" in captured.out
    with np.load(out_file) as saved:
        assert saved.files and all(np.isfinite(saved[key]).all() for key in saved.files)


@pytest.fixture(scope="module")
def log_model(tmp_path_factory) -> Path:
    """x (4,) -> y = Log(x), file = Neg(x): one output named like np.savez's parameter."""
    f = TensorProto.FLOAT
    return _save(tmp_path_factory.mktemp("log"), "log",
                 [helper.make_node("Log", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["file"])],
                 [helper.make_tensor_value_info("x", f, [4])],
                 [helper.make_tensor_value_info("y", f, [4]),
                  helper.make_tensor_value_info("file", f, [4])])


@pytest.fixture
def log_input(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.array([-1.0, 0.0, 0.0, 2.0], np.float32))
    return path


def test_nonfinite_outputs_are_a_warning_and_outputs_are_saved(log_model: Path, log_input: Path,
                                                               tmp_path: Path, capsys) -> None:
    out_file = tmp_path / "outputs.bin"  # kept as given: no .npz appended
    assert main(["run", str(log_model), "--target", "numpy", "--input", f"x={log_input}",
                 "--repeat", "1", "--output", str(out_file)]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert warnings == ["ember: warning: output 'y' holds 1 NaN and 2 Inf of 4 values"]
    assert f"wrote 2 output(s) to {out_file}" in captured.out
    with np.load(out_file) as saved:
        assert sorted(saved.files) == ["file", "y"]
        x = np.load(log_input)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.testing.assert_array_equal(saved["y"], np.log(x))
        np.testing.assert_array_equal(saved["file"], -x)
    # -q: errors only
    assert main(["run", str(log_model), "--target", "numpy", "--input", f"x={log_input}",
                 "--repeat", "1", "-q"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("flags", "message"), [
    (["--output", "{tmp}/missing/out.npz"], "--output {tmp}/missing/out.npz: the directory "
                                            "{tmp}/missing does not exist"),
    (["--output", "{tmp}"], "a directory; give a file name"),
    (["--target", "no-such-target"], "unknown target 'no-such-target'"),
], ids=["output-dir-missing", "output-is-dir", "unknown-target"])
def test_bad_flag_values_are_usage_errors(log_model: Path, tmp_path: Path, flags, message,
                                          capsys) -> None:
    flags = [f.format(tmp=tmp_path) for f in flags]
    assert main(["run", str(log_model), "--shape", "x=4", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ember: error: ") and message.format(tmp=tmp_path) in err


@pytest.mark.parametrize(("flags", "message"), [
    (["--repeat", "0"], "argument --repeat: must be >= 1, got 0"),
    (["--repeat", "two"], "argument --repeat: expected a whole number, got 'two'"),
    (["--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
    (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["--compare", "tensorrt"], "argument --compare: invalid choice: 'tensorrt'"),
], ids=["repeat-0", "repeat-word", "warmup-negative", "threads-0", "compare-unknown"])
def test_counts_are_checked_at_parse_time(flags, message, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["run", "model.onnx", *flags])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_an_error_while_compiling_exits_1(tmp_path: Path, capsys) -> None:
    """A model ember cannot compile is no usage error: the command line was fine."""
    # training-mode Dropout draws random numbers: ember compiles inference only
    path = _save(tmp_path, "unsupported", [helper.make_node("Dropout", ["x", "r", "t"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                 [_const("r", np.float32(0.5)), _const("t", np.bool_(True))])
    assert main(["run", str(path), "--target", "numpy"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ember: error: ") and "Dropout" in err and "Traceback" not in err


def test_warmup_and_repeat_count_the_calls(log_model: Path, capsys) -> None:
    assert main(["run", str(log_model), "--shape", "x=4", "--target", "numpy",
                 "--repeat", "3", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"median latency \d+\.\d+ ms over 3 runs \(min \d+\.\d+ ms, after 0 "
                     r"warm-up\)", out), out


def test_profile_prints_ops_slowest_first_with_the_total(capsys) -> None:
    model = ROOT / "ember" / "data" / "digits_mlp.onnx"
    assert main(["run", str(model), "--shape", "input=4x64", "--target", "numpy",
                 "--repeat", "2", "--profile"]) == 0
    out = capsys.readouterr().out
    table = out.split("profile of ", 1)[1].splitlines()
    rows = [line.split() for line in table[2:-1]]
    medians = [float(row[0]) for row in rows]
    assert medians == sorted(medians, reverse=True) and "MatMul" in {row[-1] for row in rows}
    total = re.search(r"^\s*(\S+)\s+total of the medians .*; 2 run\(s\)", table[-1])
    assert total and float(total[1]) == pytest.approx(sum(medians), abs=2e-3 * len(rows))


def test_compare_with_onnxruntime(capsys) -> None:
    pytest.importorskip("onnxruntime", reason="--compare onnxruntime needs onnxruntime")
    model = ROOT / "ember" / "data" / "digits_cnn.onnx"
    assert main(["run", str(model), "--shape", "input=2x1x8x8", "--target", "numpy",
                 "--repeat", "2", "--compare", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"onnxruntime \S+ \(CPUExecutionProvider\): median latency .* over 2 "
                     r"runs; ember/onnxruntime \d+\.\d+x", out), out
    found = re.search(r"^compare logits: max abs error (\S+), relative L2 (\S+)$", out,
                      re.MULTILINE)
    assert found, out
    rtol, _ = TOLERANCE[DType.FLOAT32]
    assert np.isfinite(float(found[1])) and float(found[2]) <= rtol


def test_compare_without_onnxruntime_is_a_usage_error(log_model: Path, monkeypatch,
                                                      capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # Python's mark of "not importable"
    assert main(["run", str(log_model), "--shape", "x=4", "--compare", "onnxruntime"]) == 2
    assert ("--compare onnxruntime: onnxruntime is not installed (pip install onnxruntime)"
            in capsys.readouterr().err)


def _opencl_cpu():
    return next((i for i in real_devices() if i.traits.device_type == "CPU"), None)


def test_threads_on_an_opencl_cpu_device_make_a_sub_device(capsys) -> None:
    info = _opencl_cpu()
    if info is None:
        pytest.skip("no OpenCL CPU device (PoCL) to partition")
    model = ROOT / "ember" / "data" / "digits_mlp.onnx"
    x = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    whole = ember.compile(model, target=info.target, input_shapes={"input": x.shape})
    one = ember.compile(model, target=info.target, input_shapes={"input": x.shape}, threads=1)
    assert one.device.info.traits.compute_units == 1
    assert one.device.device.max_compute_units == 1  # the context's device, not a label
    assert whole.device.info.traits.compute_units == info.traits.compute_units
    np.testing.assert_array_equal(one(input=x)["logits"], whole(input=x)["logits"])
    assert main(["run", str(model), "--shape", "input=6x64", "--target", info.target,
                 "--threads", "1", "--repeat", "1"]) == 0
    assert ", 1 compute unit, opt_level 2" in capsys.readouterr().out


def test_threads_beyond_the_device_or_on_a_gpu_keep_the_whole_device(caplog) -> None:
    caplog.set_level(logging.INFO, logger="ember")
    info = _opencl_cpu()
    if info is not None:
        device = resolve_target(info.target)
        assert with_threads(device, info.traits.compute_units + 1) is device
        assert f"has {info.traits.compute_units} compute units; using all of them" in caplog.text
        assert with_threads(device, info.traits.compute_units) is device
    gpus = [i for i in ember.devices() if i.traits.device_type == "GPU"]
    if not gpus:
        pytest.skip("no OpenCL GPU (Oclgrind counts) to ignore threads on")
    gpu = resolve_target(gpus[0].target)
    assert with_threads(gpu, 1) is gpu
    assert "threads=1 ignored" in caplog.text


def test_threads_on_numpy_say_there_is_no_such_setting(caplog) -> None:
    model = ROOT / "ember" / "data" / "digits_mlp.onnx"
    compiled = ember.compile(model, target="numpy", input_shapes={"input": (1, 64)}, threads=2)
    assert compiled.device is None
    assert "the numpy target has no thread setting" in caplog.text
    assert "OMP_NUM_THREADS" in caplog.text
    with pytest.raises(ember.InputError, match="threads must be a whole number >= 1"):
        ember.compile(model, target="numpy", threads=0)


@pytest.mark.parametrize("argv", [
    ["-v", "run", "m.onnx"], ["run", "-v", "m.onnx"], ["run", "m.onnx", "-v"],
    ["cache", "info", "-v"], ["-v", "cache", "info"], ["quantize", "m.onnx", "--calib", "c.npz",
                                                      "-o", "q.onnx", "-v"],
], ids=lambda argv: " ".join(argv))
def test_verbose_anywhere(argv) -> None:
    args = build_parser().parse_args(argv)
    assert args.verbose == 1 and args.quiet is False


def test_quiet_anywhere_and_defaults() -> None:
    for argv in (["-q", "info"], ["info", "-q"], ["tune", "m.onnx", "-q"],
                 ["quantize", "m.onnx", "--calib", "c.npz", "-o", "q.onnx", "-q"]):
        args = build_parser().parse_args(argv)
        assert args.quiet is True and args.verbose == 0
    args = build_parser().parse_args(["run", "m.onnx"])
    assert args.quiet is False and args.verbose == 0
    assert build_parser().parse_args(["-vv", "info"]).verbose == 2


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"ember {ember.__version__}\n"


def test_a_closed_stdout_ends_quietly_and_v_after_the_subcommand_logs(log_model: Path) -> None:
    """`ember run ... -v | head -0`: the reader is gone before anything is printed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "ember", "run", str(log_model),
                               "--shape", "x=4", "--target", "numpy", "--repeat", "1", "-v"],
                              cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert "ember.cli.run: compiling " in done.stderr  # -v, given after the subcommand


def test_a_bundle_runs_like_a_model(tmp_path: Path, capsys) -> None:
    model = ROOT / "ember" / "data" / "digits_mlp.onnx"
    bundle = tmp_path / "mlp.ember"
    compiled = ember.compile(model, target="numpy", input_shapes={"input": (2, 64)})
    compiled.save(bundle)
    assert main(["run", str(bundle), "--repeat", "1", "--output",
                 str(tmp_path / "b.npz")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^loaded \d+\.\d+ s; first call", out, re.MULTILINE)
    assert "input  input: shape (2, 64) float32  from random normal (seed 0)" in out
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    with np.load(tmp_path / "b.npz") as saved:
        np.testing.assert_array_equal(saved["logits"], compiled(input=x)["logits"])
    for flag in (["--threads", "1"], ["--opt", "1"], ["--compare", "onnxruntime"]):
        assert main(["run", str(bundle), *flag]) == 2
        assert "needs an ONNX model" in capsys.readouterr().err
    assert main(["run", str(bundle), "--profile", "--repeat", "1"]) == 0  # LoadedModel.profile
    assert "profile of 'main_graph'" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "missing.ember")]) == 2
    assert "no compiled bundle at" in capsys.readouterr().err
