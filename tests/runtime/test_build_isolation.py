"""Cold program builds run in worker processes first (runtime/opencl.py `prebuild`): a
kernel that kills its worker (here one that stores to address 16: SIGSEGV wherever page 0
is unmapped) is reported by op, node and signal; compile() runs that step on the host with
a warning, or raises CompileError under strict=True; a build that succeeded is remembered
so that the next compile of the same program starts no workers."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

import ember
from ember.runtime.cache import BinaryCache, cache_key, ember_version
from ember.codegen.registry import KERNEL_BUILDERS, lower
from ember.codegen.types import Kernel, Lowered
from ember.workers import isolated, shared_pool
from ember.errors import CompileError
from ember.frontends.builder import GraphBuilder
from ember.runtime.device import resolve_target
from ember.runtime import opencl
from ember.runtime.opencl import prebuild
from ember.runtime.plan import HOST
from tests.harness import assert_close

pytestmark = [pytest.mark.opencl, pytest.mark.skipif(
    not isolated(), reason="EMBER_WORKERS=0: builds run in this process, a crash would end it")]

WILD_STORE = "*(__global volatile int*)16 = 1;"
X = np.random.default_rng(5).standard_normal((4, 33)).astype(np.float32)


def graph():
    b = GraphBuilder("iso")
    x = b.input("x", X.shape)
    b.output("y", b.Tanh(b.Relu(b.Mul(x, x, name="square"), name="relu"), name="tanh"))
    return b.build()


def expected() -> np.ndarray:
    return np.tanh(np.maximum(X * X, 0))


def with_wild_store(lowered: Lowered) -> Lowered:
    launches = []
    for launch in lowered.launches:
        k = launch.kernel
        at = k.source.index("{", k.source.index("__kernel")) + 1
        source = k.source[:at] + "\n" + WILD_STORE + k.source[at:]
        launches.append(dataclasses.replace(
            launch, kernel=Kernel(k.name + "_wild", source.replace(k.name, k.name + "_wild"))))
    return dataclasses.replace(lowered, launches=tuple(launches))


@pytest.fixture
def crashing_relu(monkeypatch, tmp_path):
    """Relu's kernels crash the device; a fresh cache, and the fusion passes off (O0) so that
    Relu keeps a kernel of its own."""
    real = KERNEL_BUILDERS["Relu"]

    def build(spec, target):
        lowered = real(spec, target)
        return with_wild_store(lowered) if lowered is not None else None

    monkeypatch.setitem(KERNEL_BUILDERS, "Relu", build)
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "cache"))
    lower.cache_clear()
    yield
    lower.cache_clear()


def test_a_crashing_kernel_becomes_a_host_step_with_a_warning(crashing_relu, opencl_target,
                                                              caplog):
    with caplog.at_level(logging.WARNING, logger="ember.compiler"):
        model = ember.compile(graph(), target=opencl_target, opt_level=0)
    placement = {s.name: s.placement for s in model.plan.steps}
    assert placement["relu"] == HOST and placement["square"] != HOST
    warned = [r.getMessage() for r in caplog.records if "runs on the host" in r.getMessage()]
    assert len(warned) == 1 and "Relu 'relu'" in warned[0] and "SIGSEGV" in warned[0]
    assert_close(model(x=X)["y"], expected())


def test_strict_raises_compile_error_naming_op_node_and_signal(crashing_relu, opencl_target):
    with pytest.raises(CompileError, match=r"Relu 'relu': worker killed by SIGSEGV"):
        ember.compile(graph(), target=opencl_target, opt_level=0, strict=True)


def test_prebuild_reports_the_step_and_a_warm_program_needs_no_workers(opencl_target,
                                                                      tmp_path):
    device = resolve_target(opencl_target)
    model = ember.compile(graph(), target=opencl_target, opt_level=0, cache=False)
    plan = model.plan
    broken = [dataclasses.replace(s, lowered=with_wild_store(s.lowered))
              if s.name == "tanh" else s for s in plan.steps]
    (crash,) = prebuild(dataclasses.replace(plan, steps=broken), device, cache=tmp_path)
    assert (crash.op, crash.name) == ("Tanh", "tanh") and "SIGSEGV" in crash.reason
    cache, pool = BinaryCache(tmp_path / "fresh"), shared_pool()
    key = cache_key(opencl.program_source(plan.kernels()), (), device.info.traits.fingerprint,
                    ember_version())
    opencl._warm_marker(cache, key, device).unlink(missing_ok=True)  # PoCL's cache may be
    opencl._PROGRAMS.clear()  # shared with earlier runs; and as in a new process
    opencl._WARMED.clear()
    jobs = pool.jobs
    assert prebuild(plan, device, cache=cache) == [] and pool.jobs > jobs  # cold: in workers
    opencl._PROGRAMS.clear()
    opencl._WARMED.clear()
    jobs = pool.jobs
    assert prebuild(plan, device, cache=cache) == [] and pool.jobs == jobs  # warm: none
