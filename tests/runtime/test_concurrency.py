"""Threads and processes: a CompiledModel called from many threads at once gives each
caller its own correct result; compile() runs from several threads at once; two processes
tuning the same kernel into one TuningDB leave it whole and holding that kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import ember
from ember.frontends.builder import GraphBuilder
from ember.ir import Graph

THREADS, CALLS = 8, 50
WEIGHT = np.random.default_rng(7).standard_normal((64, 64)).astype(np.float32)


def matmul_tanh() -> Graph:
    """The case that went wrong: MatMul 16x64 @ 64x64, then Tanh."""
    b = GraphBuilder("matmul_tanh")
    y = b.op("Tanh", b.op("MatMul", b.input("x", (16, 64)), b.constant(WEIGHT, "w")))
    b.output("y", y)
    return b.build()


def reference(x: np.ndarray) -> np.ndarray:
    return np.tanh(x.astype(np.float64) @ WEIGHT).astype(np.float32)


def error_bound(x: np.ndarray) -> np.ndarray:
    """Per element: a float32 sum of K = 64 products is within K * u * sum|x_k w_k| of the
    exact one (u = 2^-24), tanh is 1-Lipschitz, and ember's tanh and the final rounding add
    a relative 2^-21 (TOLERANCE's float32 row is for results of one rounding, not sums)."""
    u = 2.0**-24
    products = np.abs(x.astype(np.float64)) @ np.abs(WEIGHT.astype(np.float64))
    return 64 * u * products + 2.0**-21 * np.abs(reference(x)) + 1e-30


def matches_reference(got: np.ndarray, x: np.ndarray) -> bool:
    return bool(np.all(np.abs(got.astype(np.float64) - reference(x)) <= error_bound(x)))


def _hammer(model: ember.CompiledModel, seed: int) -> list[str]:
    """CALLS calls with inputs of this thread's own; the mismatches it saw."""
    rng = np.random.default_rng(seed)
    wrong = []
    for call in range(CALLS):
        x = rng.standard_normal((16, 64)).astype(np.float32)
        if not matches_reference(model(x=x)["y"], x):
            wrong.append(f"thread {seed} call {call}")
    return wrong


@pytest.mark.parametrize("target_kind", ["opencl", "cpu"])
def test_one_model_from_eight_threads(target_kind, opencl_target):
    target = opencl_target if target_kind == "opencl" else "cpu"
    model = ember.compile(matmul_tanh(), target=target)
    barrier = threading.Barrier(THREADS)

    def run(seed: int) -> list[str]:
        barrier.wait()  # every thread calls at once
        return _hammer(model, seed)

    with ThreadPoolExecutor(THREADS) as pool:
        wrong = [w for found in pool.map(run, range(THREADS)) for w in found]
    assert not wrong, f"{len(wrong)} of {THREADS * CALLS} results wrong: {wrong[:5]}"


def test_compile_from_several_threads_at_once(opencl_target, tmp_path, monkeypatch):
    """Threads compiling (cold binary cache, shared device and program table) at once each
    get a working model."""
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "cache"))
    barrier = threading.Barrier(4)

    def build(seed: int) -> np.ndarray:
        barrier.wait()
        model = ember.compile(matmul_tanh(), target=opencl_target, opt_level=seed % 4)
        x = np.random.default_rng(seed).standard_normal((16, 64)).astype(np.float32)
        assert matches_reference(model(x=x)["y"], x), f"opt_level {seed % 4}"
        return x

    with ThreadPoolExecutor(4) as pool:
        assert len(list(pool.map(build, range(4)))) == 4


def test_two_models_on_one_device_from_threads(opencl_target):
    """Models share the device's queue and program table: calls on two models interleave."""
    first = ember.compile(matmul_tanh(), target=opencl_target)
    second = ember.compile(matmul_tanh(), target=opencl_target, opt_level=0)
    with ThreadPoolExecutor(4) as pool:
        found = pool.map(lambda i: _hammer(first if i % 2 else second, i), range(4))
        wrong = [w for part in found for w in part]
    assert not wrong, wrong[:5]


_TUNE_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import ember
    from ember.tuning.tuner import TuneBudget
    from ember.frontends.builder import GraphBuilder

    b = GraphBuilder("tuned")
    w = np.ones((37, 29), np.float32)
    b.output("y", b.op("MatMul", b.input("x", (13, 37)), b.constant(w, "w")))
    budget = TuneBudget(model_seconds=6, kernel_seconds=6, repeats=1, warmup=0)
    model = ember.compile(b.build(), target=sys.argv[1], tune=budget)
    x = np.ones((13, 37), np.float32)
    ok = bool(np.allclose(model(x=x)["y"], x @ w))
    print(json.dumps({"ok": ok, "tuned": [r.key for r in model.tune_results]}))
""")


def test_two_processes_tune_the_same_kernel(opencl_target, tmp_path):
    """Both processes measure and save the same key into one DB file at once: the file stays
    valid JSON, holds the key, and a third process reads it at opt_level 3."""
    env = {**os.environ, "EMBER_CACHE_DIR": str(tmp_path / "cache")}
    script = tmp_path / "tune_child.py"
    script.write_text(_TUNE_CHILD)
    children = [subprocess.Popen([sys.executable, str(script), opencl_target], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=Path(__file__).resolve().parents[2])
                for _ in range(2)]
    results = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["ok"] for r in results), results
    files = list((tmp_path / "cache" / "tuning").glob("*.json"))
    assert len(files) == 1, files
    data = json.loads(files[0].read_text())
    keys = json.dumps(data)
    assert any(key in keys for r in results for key in r["tuned"]), data


_BUILD_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import ember
    from ember.runtime.cache import BinaryCache
    from ember.frontends.builder import GraphBuilder

    cache = BinaryCache(sys.argv[2], store_binaries=True)
    for n in range(3, 3 + int(sys.argv[3])):
        b = GraphBuilder(f"build{n}")
        x = b.input("x", (n, 5))
        b.output("y", b.op("Relu", b.op("Add", x, b.constant(np.full((5,), n, np.float32)))))
        model = ember.compile(b.build(), target=sys.argv[1], cache=cache, opt_level=0)
        x = np.arange(n * 5, dtype=np.float32).reshape(n, 5) - 7
        assert np.array_equal(model(x=x)["y"], np.maximum(x + n, 0)), n
""")

_CLEAR_CHILD = textwrap.dedent("""
    import sys, time
    from ember.runtime.cache import BinaryCache

    cache = BinaryCache(sys.argv[1])
    stop = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < stop:
        cache.clear()
        time.sleep(0.01)
""")


def test_processes_building_and_clearing_one_cache_leave_it_consistent(opencl_target,
                                                                       tmp_path):
    """Two processes fill one binary cache while a third clears it over and over: every
    build still runs correctly, and what stays in the cache passes its full check."""
    from ember.runtime.cache import BinaryCache

    root = tmp_path / "cache"
    env = {**os.environ, "EMBER_CACHE_DIR": str(root)}
    build, clear = tmp_path / "build.py", tmp_path / "clear.py"
    build.write_text(_BUILD_CHILD)
    clear.write_text(_CLEAR_CHILD)
    cwd = Path(__file__).resolve().parents[2]
    children = [subprocess.Popen([sys.executable, str(build), opencl_target, str(root), "4"],
                                 env=env, stderr=subprocess.PIPE, text=True, cwd=cwd)
                for _ in range(2)]
    children.append(subprocess.Popen([sys.executable, str(clear), str(root), "8"], env=env,
                                     stderr=subprocess.PIPE, text=True, cwd=cwd))
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-2000:]
    cache = BinaryCache(root, store_binaries=True)
    assert all(entry.problem is None for entry in cache.entries()), cache.entries()
    done = subprocess.run([sys.executable, str(build), opencl_target, str(root), "2"], env=env,
                          stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
