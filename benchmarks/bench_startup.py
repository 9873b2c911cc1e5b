"""What a user waits for: time to the first result (ember.compile + the first call) of a
model in a fresh process, with cold and warm caches.

Each measurement is a new Python process (so nothing is cached in memory) on the default
OpenCL device, with its own cache directories. Scenarios, per model:

    cold         empty ember cache, empty PoCL cache (ember points PoCL into its own)
    warm         a restart: the cache that `cold` left behind
    built        after `ember cache build` (which also stores program binaries on PoCL)
    binary-only  that cache's program binary, with PoCL's cache empty (POCL_CACHE_DIR set
                 to a new directory): what the binary alone gives
    pocl-only    an empty ember cache, with PoCL's cache from `built`
    imported     `ember cache export` of the built cache, `ember cache import` into an
                 empty one: a deployment made ahead of time

Every run prints a checksum of its outputs: all scenarios must agree bit for bit. Run:

    python benchmarks/bench_startup.py [--models resnet_mini,bert_mini] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "models"
SCENARIOS = ("cold", "warm", "built", "binary-only", "pocl-only", "imported")
WARM_SPEEDUP = 10.0  # the project's bar: warm start at least 10x faster than cold
COLD_RESNET_S = 10.0  # ... and a cold resnet_mini under 10 s

__all__ = ["SCENARIOS", "Run", "measure", "main"]


# -- the child: one fresh process, one model ----------------------------------------------------
def _feeds(name: str):
    import numpy as np

    rng = np.random.default_rng(0)
    if name.startswith("resnet") or name.startswith("mobilenet"):
        return {"input": rng.standard_normal((1, 3, 64, 64), dtype=np.float32)}
    ids = rng.integers(0, 1000, (1, 128), dtype=np.int64)
    if name.startswith("gpt2"):
        return {"input_ids": ids}
    mask = np.ones((1, 128), np.int64)
    mask[:, 96:] = 0  # a padded tail, as a tokenizer gives (benchmarks/bench_models.py)
    return {"input_ids": ids, "attention_mask": mask}


def _child(name: str) -> None:
    start = time.perf_counter()
    import ember
    from ember.runtime.cache import default_cache

    ember.compile  # noqa: B018 - the compiler (and onnx) load at first use: count them here
    imported = time.perf_counter()
    feeds = _feeds(name)
    model = ember.compile(MODELS / f"{name}.onnx",
                          input_shapes={k: v.shape for k, v in feeds.items()})
    compiled = time.perf_counter()
    outputs = model(**feeds)
    first = time.perf_counter()
    digest = hashlib.sha256()
    for key in sorted(outputs):
        digest.update(outputs[key].tobytes())
    stats = default_cache().stats
    print(json.dumps({"import_s": imported - start, "compile_s": compiled - imported,
                      "first_call_s": first - compiled, "checksum": digest.hexdigest()[:16],
                      "hits": stats.hits, "device": model.target}))


# -- the parent ----------------------------------------------------------------------------
@dataclass
class Run:
    model: str
    scenario: str
    import_s: float
    compile_s: float
    first_call_s: float
    checksum: str
    hits: int
    device: str

    @property
    def ttfr_s(self) -> float:
        """Time to first result: compile plus the first call (the interpreter and `import
        ember` are the same in every scenario)."""
        return self.compile_s + self.first_call_s


def _env(ember_dir: Path, pocl_dir: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("POCL_CACHE_DIR",
                                                             "EMBER_CACHE_DIR")}
    env["EMBER_CACHE_DIR"] = str(ember_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if pocl_dir is not None:
        env["POCL_CACHE_DIR"] = str(pocl_dir)
    return env


def _run_child(model: str, scenario: str, env: dict[str, str]) -> Run:
    done = subprocess.run([sys.executable, __file__, "--child", model], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{model} {scenario} failed:\n{done.stderr}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return Run(model, scenario, **data)


def _cli(env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ember", "cache", *args], env=env, cwd=ROOT,
                   check=True, capture_output=True, text=True, timeout=1800)
    return time.perf_counter() - start


def _shape_args(name: str) -> list[str]:
    args = []
    for input_name, array in _feeds(name).items():
        args += ["--shape", f"{input_name}={'x'.join(map(str, array.shape))}"]
    return args


def measure(model: str, work: Path) -> tuple[list[Run], float]:
    """One round of every scenario for one model, in fresh directories under `work`; also
    the seconds `ember cache build` took."""
    base = Path(tempfile.mkdtemp(prefix=f"{model}-", dir=work))
    used, built, deployed = base / "used", base / "built", base / "deployed"
    runs = [_run_child(model, "cold", _env(used, None))]
    runs.append(_run_child(model, "warm", _env(used, None)))
    build_s = _cli(_env(built, None), "build", str(MODELS / f"{model}.onnx"),
                   *_shape_args(model))
    runs.append(_run_child(model, "built", _env(built, None)))
    runs.append(_run_child(model, "binary-only", _env(built, base / "pocl-empty")))
    runs.append(_run_child(model, "pocl-only", _env(base / "ember-empty", built / "pocl")))
    _cli(_env(built, None), "export", str(base / "cache.zip"))
    _cli(_env(deployed, None), "import", str(base / "cache.zip"))
    runs.append(_run_child(model, "imported", _env(deployed, None)))
    return runs, build_s


def _median(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) if attr != "ttfr_s" else r.ttfr_s for r in runs)


def report(runs: list[Run], repeat: int) -> bool:
    """Print the table and the checks; True when every check passes."""
    ok = True
    print(f"time to first result (ttfr = compile + first call), median of {repeat} fresh "
          "process(es) per row; hits = programs loaded from ember's binary cache")
    print(f"{'model':<12} {'scenario':<11} {'compile s':>9} {'first s':>8} {'ttfr s':>8} "
          f"{'vs cold':>8} {'hits':>4}")
    for model in dict.fromkeys(r.model for r in runs):
        mine = [r for r in runs if r.model == model]
        cold = _median([r for r in mine if r.scenario == "cold"], "ttfr_s")
        for scenario in SCENARIOS:
            rows = [r for r in mine if r.scenario == scenario]
            ttfr = _median(rows, "ttfr_s")
            print(f"{model:<12} {scenario:<11} {_median(rows, 'compile_s'):9.2f} "
                  f"{_median(rows, 'first_call_s'):8.2f} {ttfr:8.2f} {cold / ttfr:7.1f}x "
                  f"{rows[0].hits:>4}")
        checksums = {r.checksum for r in mine}
        same = len(checksums) == 1
        warm = _median([r for r in mine if r.scenario == "warm"], "ttfr_s")
        print(f"{model}: outputs identical in every run: {'yes' if same else 'NO'}; "
              f"warm {cold / warm:.1f}x faster than cold (bar {WARM_SPEEDUP:.0f}x)")
        ok &= same and cold / warm >= WARM_SPEEDUP
        if model == "resnet_mini":
            print(f"resnet_mini: cold {cold:.2f} s (bar {COLD_RESNET_S:.0f} s)")
            ok &= cold < COLD_RESNET_S
    print(f"import ember: {_median(runs, 'import_s'):.2f} s (in every scenario; not in ttfr)")
    print(f"device: {runs[0].device}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet_mini,bert_mini",
                        help="comma-separated names from tests/models")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every scenario")
    parser.add_argument("--json", help="also write every run here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    runs: list[Run] = []
    builds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ember-startup-") as work:
        for _ in range(args.repeat):
            for model in args.models.split(","):
                model_runs, build_s = measure(model, Path(work))
                runs.extend(model_runs)
                builds.setdefault(model, []).append(build_s)
    ok = report(runs, args.repeat)
    for model, seconds in builds.items():
        print(f"{model}: `ember cache build` took {statistics.median(seconds):.2f} s "
              "(a process of its own, binaries stored)")
    if args.json:
        Path(args.json).write_text(json.dumps([vars(r) for r in runs], indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
