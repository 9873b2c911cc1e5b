"""Device families (codegen/families.py): detection from hand-made DeviceTraits for every
family ember knows (there is no GPU here, so GPU devices are described as their drivers
report them), the lookup's fallback levels, every default parameter set legal on a device
of its family, and the search spaces' named constraints."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from ember.codegen.families import (
    FAMILIES, DeviceTraits, Target, TuningTable, VectorUnit, detect_family, llvm_cpu, vector_unit,
)
from ember.codegen.kernels.gemm_cpu import CpuGemmParams
from ember.codegen.types import NodeSpec
from ember.codegen.kernels.matmul import GemmParams
from ember.codegen.params import (
    LEVELS, param_kinds, params_for, search_space, tunable_spec, tuning_key,
)
from ember.ir import OPS, DType, TensorType
from ember.ir.ops.fused import FusedExpr

AMD = "Advanced Micro Devices, Inc."


def traits(name: str, vendor: str, device_type: str = "GPU", *, wg: int = 256,
           local: int = 65536, **extra) -> DeviceTraits:
    return DeviceTraits(name, vendor, "OpenCL 2.0", "1.0", "platform", device_type, 16, wg,
                        local, frozenset(), **extra)


# name -> (traits as the driver reports them, family, arch, generation, vendor)
DEVICES = {
    "polaris_rocm": (traits("gfx803", AMD, board_name="Radeon RX 580 Series", simd_width=64),
                     "amd-gcn", "gfx803", "Polaris", "amd"),
    "polaris_amdgpu_pro": (traits("Ellesmere", AMD), "amd-gcn", "gfx803", "Polaris", "amd"),
    "polaris_rusticl": (traits("AMD Radeon RX 580 Series (radeonsi, polaris10, LLVM 15.0.7)",
                               "AMD"), "amd-gcn", "gfx803", "Polaris", "amd"),
    "vega20": (traits("gfx906:sramecc+:xnack-", AMD, wg=1024), "amd-gcn", "gfx906", "Vega",
               "amd"),
    "mi210": (traits("gfx90a:sramecc+:xnack-", AMD, wg=1024), "amd-gcn", "gfx90a", "CDNA2",
              "amd"),
    "rdna1": (traits("gfx1010:xnack-", AMD, wg=1024), "amd-rdna", "gfx1010", "RDNA1", "amd"),
    "rdna2": (traits("gfx1030", AMD, wg=1024), "amd-rdna", "gfx1030", "RDNA2", "amd"),
    "rdna3": (traits("gfx1100", AMD, wg=1024), "amd-rdna", "gfx1100", "RDNA3", "amd"),
    "ampere": (traits("NVIDIA GeForce RTX 3060", "NVIDIA Corporation", wg=1024, local=49152,
                      compute_capability=(8, 6), simd_width=32),
               "nvidia", "sm_86", "Ampere", "nvidia"),
    "ada": (traits("NVIDIA GeForce RTX 4090", "NVIDIA Corporation", wg=1024, local=49152,
                   compute_capability=(8, 9)), "nvidia", "sm_89", "Ada", "nvidia"),
    "pascal": (traits("NVIDIA GeForce GTX 1060 6GB", "NVIDIA Corporation", wg=1024,
                      local=49152, compute_capability=(6, 1)), "nvidia", "sm_61", "Pascal",
               "nvidia"),
    "intel_gen9": (traits("Intel(R) UHD Graphics 620", "Intel(R) Corporation"), "intel-gpu",
                   "gen9", "", "intel"),
    "intel_arc": (traits("Intel(R) Arc(TM) A770 Graphics", "Intel(R) Corporation", wg=1024),
                  "intel-gpu", "xe-hpg", "", "intel"),
    "apple": (traits("Apple M1", "Apple", local=32768), "gpu", "", "", "apple"),
    "mali": (traits("Mali-G78", "ARM", wg=384, local=32768, local_mem_real=False), "gpu", "",
             "", "arm"),
    "adreno": (traits("QUALCOMM Adreno(TM)", "QUALCOMM", wg=1024, local=32768), "gpu", "", "",
               "qualcomm"),
    "unknown_gpu": (traits("Some GPU", "Some Vendor"), "gpu", "", "", "generic"),
    "pocl_amd_cpu": (traits("pthread-AMD EPYC", "AuthenticAMD", "CPU", wg=4096, local=524288,
                            preferred_vector_width=8, local_mem_real=False),
                     "cpu", "", "", "amd"),
    "pocl_intel_cpu": (traits("cpu-skylake-avx512-Intel(R) Xeon(R)", "GenuineIntel", "CPU",
                              wg=4096, local=524288, preferred_vector_width=16),
                       "cpu", "", "", "intel"),
    "accelerator": (traits("FPGA", "Some Vendor", "ACCELERATOR"), "generic", "", "", "generic"),
}


@pytest.mark.parametrize("name", list(DEVICES))
def test_detection(name):
    device, family, arch, generation, vendor = DEVICES[name]
    found = detect_family(device)
    assert (found.name, found.arch, found.generation, found.vendor) == (
        family, arch, generation, vendor)
    assert found.is_gpu == (device.device_type == "GPU")
    assert Target.of(device).family == found


def test_simd_width_reported_or_from_the_family():
    assert Target.of(DEVICES["polaris_rocm"][0]).simd_width == 64
    assert Target.of(DEVICES["rdna2"][0]).simd_width == 32  # wave32, from the family
    assert Target.of(DEVICES["adreno"][0]).simd_width == 64  # vendor documentation
    assert Target.of(DEVICES["pocl_amd_cpu"][0]).simd_width == 8  # its float vector width


def test_public_names_keep_working():
    assert set(FAMILIES) >= {"nvidia", "amd-gcn", "amd-rdna", "intel-gpu", "gpu", "cpu",
                             "generic"}
    device = DEVICES["polaris_rocm"][0]
    assert Target(device, FAMILIES["amd-gcn"]).tuning == TuningTable()
    assert "gfx803" in device.fingerprint


# -- the lookup's levels ------------------------------------------------------------------------
@pytest.mark.parametrize("name, kind, level, source", [
    ("ampere", "gemm", "arch", "arch sm_86"),
    ("rdna3", "gemm", "arch", "arch gfx1100"),
    ("pascal", "gemm", "family", "family nvidia"),
    ("polaris_rocm", "gemm", "family", "family amd-gcn"),
    ("apple", "gemm", "vendor", "vendor apple"),
    ("mali", "gemm", "vendor", "vendor arm"),
    ("unknown_gpu", "gemm", "generic", "generic gpu"),
    ("accelerator", "gemm", "generic", "generic other"),
    ("pocl_amd_cpu", "gemm_cpu", "family", "family cpu"),
    ("pocl_amd_cpu", "gemv_cpu", "family", "family cpu"),
    ("pocl_amd_cpu", "gemm", "family", "family cpu"),
])
def test_lookup_levels(name, kind, level, source):
    lookup = params_for(kind, "some key", Target.of(DEVICES[name][0]))
    assert (lookup.level, lookup.source) == (level, source)
    assert level in LEVELS and isinstance(lookup.params, param_kinds()[kind].params_type)


def test_tuned_entry_answers_first_and_only_for_its_key():
    target = Target.of(DEVICES["pocl_amd_cpu"][0])
    tuned = CpuGemmParams(mr=3, vw=4, nv=2, ku=2, group_m=1)
    table = TuningTable.of({("gemm_cpu", "k1"): tuned})
    lookup = params_for("gemm_cpu", "k1", target.with_tuning(table))
    assert (lookup.params, lookup.level, lookup.source) == (tuned, "device", "TuningDB")
    assert params_for("gemm_cpu", "k2", target.with_tuning(table)).level == "family"
    assert params_for("gemv_cpu", "k1", target.with_tuning(table)).level == "family"
    # a different table is a different target: lower()'s cache cannot mix them up
    assert target.with_tuning(table) != target and hash(target.with_tuning(table))


def test_illegal_tuned_entry_is_not_trusted(caplog):
    target = Target.of(DEVICES["polaris_rocm"][0])  # 256 work-items at most
    huge = GemmParams(128, 128, 16, 2, 2, 0)  # 64 x 64 = 4096 work-items
    table = TuningTable.of({("gemm", "k"): huge})
    with caplog.at_level(logging.WARNING, logger="ember.codegen.families"):
        lookup = params_for("gemm", "k", target.with_tuning(table))
    assert lookup.level == "family" and lookup.params != huge
    assert "work-group" in caplog.text


def test_a_default_that_does_not_fit_falls_to_the_next_level():
    small_lmem = dataclasses.replace(DEVICES["ampere"][0], local_mem_bytes=8192)
    lookup = params_for("gemm", "k", Target.of(small_lmem))
    assert lookup.level == "generic"  # arch, family and vendor sets need > 8 KiB
    assert not param_kinds()["gemm"].violations(lookup.params, Target.of(small_lmem))
    # float64 vectors of 16 lanes are 1024 bits: the GEMV default gives way
    cpu = Target.of(DEVICES["pocl_amd_cpu"][0])
    assert params_for("gemv_cpu", "k", cpu, itemsize=8).level == "generic"
    assert params_for("gemv_cpu", "k", cpu, itemsize=4).level == "family"


# -- every default legal on a device of its family ----------------------------------------------
def _targets_for(level: str, name: str) -> list[Target]:
    targets = [Target.of(device) for device, family, arch, _, vendor in DEVICES.values()
               if {"arch": arch, "family": family, "vendor": vendor}.get(level) == name]
    if level == "generic":
        gpu = name == "gpu"
        targets = [Target.of(d) for d, *_ in DEVICES.values() if (d.device_type == "GPU") == gpu]
    return targets


@pytest.mark.parametrize("kind", ["gemm", "gemm_cpu", "gemv_cpu"])
def test_every_default_is_legal_for_its_family(kind):
    spec = param_kinds()[kind]
    checked = 0
    for level, table in spec.defaults.items():
        for name, params in table.items():
            for target in _targets_for(level, name):
                if kind != "gemm" and target.family.is_gpu:
                    continue  # the CPU kinds only run on CPU devices
                assert not spec.violations(params, target), (kind, level, name, target.traits)
                checked += 1
    assert checked >= len(spec.defaults)


# -- search spaces -------------------------------------------------------------------------------
def test_gemm_space_on_a_gcn_gpu_names_what_it_rejects():
    target = Target.of(dataclasses.replace(DEVICES["polaris_rocm"][0], local_mem_bytes=16384))
    space = search_space("gemm", target)
    assert space.legal and all(not param_kinds()["gemm"].violations(p, target)
                               for p in space.legal)
    reasons = " | ".join(space.rejected)
    assert "work-group" in reasons  # more than 256 work-items
    assert "whole warps / wavefronts" in reasons  # e.g. 8 x 4 items on a 64-wide wavefront
    assert "local memory" in reasons  # 128-wide tiles need more than 16 KiB
    assert all(p.threads % 64 == 0 for p in space.legal)


def test_cpu_space_keeps_accumulators_in_registers():
    avx2 = Target.of(DEVICES["pocl_amd_cpu"][0])  # 16 registers of 8 floats
    avx512 = Target.of(DEVICES["pocl_intel_cpu"][0])  # 32 registers of 16 floats
    small, large = search_space("gemm_cpu", avx2), search_space("gemm_cpu", avx512)
    assert any("must not spill" in reason for reason in small.rejected)
    assert len(small) < len(large)
    assert CpuGemmParams(6, 16, 2) not in small.legal and CpuGemmParams(6, 16, 2) in large.legal
    assert CpuGemmParams(6, 8, 2) in small.legal  # the default
    neighbours = small.neighbours(CpuGemmParams(6, 8, 2))
    assert CpuGemmParams(4, 8, 2) in neighbours and CpuGemmParams(6, 8, 2, 2) in neighbours
    assert all(p in small.legal for p in neighbours)


@pytest.mark.parametrize("version, cpu, lanes, registers", [
    ("OpenCL 3.0 PoCL HSTR: pthread-x86_64-unknown-linux-gnu-znver3", "znver3", 8, 16),
    ("OpenCL 3.0 PoCL HSTR: pthread-x86_64-pc-linux-gnu-skylake-avx512", "skylake-avx512",
     16, 32),
    ("OpenCL 3.0 PoCL HSTR: pthread-x86_64-unknown-linux-gnu-znver4", "znver4", 16, 32),
    ("OpenCL 3.0 PoCL HSTR: pthread-x86_64-unknown-linux-gnu-x86-64-v3", "x86-64-v3", 8, 16),
    ("OpenCL 3.0 PoCL HSTR: pthread-x86_64-unknown-linux-gnu-nehalem", "nehalem", 4, 16),
    ("OpenCL 3.0 PoCL HSTR: pthread-aarch64-unknown-linux-gnu-cortex-a72", "cortex-a72", 4, 32),
])
def test_vector_unit_comes_from_the_llvm_cpu(version, cpu, lanes, registers):
    """PoCL says 16 preferred float lanes even where it emits AVX2: the register rules
    follow the LLVM CPU named in its version string."""
    base = DEVICES["pocl_intel_cpu"][0]
    traits = dataclasses.replace(base, version=version)
    assert llvm_cpu(traits) == cpu
    assert vector_unit(traits) == VectorUnit(lanes, registers)


def test_vector_unit_without_a_named_cpu_uses_the_preferred_width():
    assert vector_unit(DEVICES["pocl_amd_cpu"][0]) == VectorUnit(8, 16)
    assert vector_unit(DEVICES["pocl_intel_cpu"][0]) == VectorUnit(16, 32)
    assert vector_unit(dataclasses.replace(DEVICES["pocl_amd_cpu"][0],
                                           preferred_vector_width=1)) is None


# -- tuning keys ---------------------------------------------------------------------------------
def _matmul_spec(epilogue=None, extras=(), packable=frozenset()) -> NodeSpec:
    a, b = TensorType((3, 5), DType.FLOAT32), TensorType((5, 7), DType.FLOAT32)
    attrs = OPS["MatMul"].make_attrs({"epilogue": epilogue})
    return NodeSpec("MatMul", attrs, (a, b, *extras), (TensorType((3, 7), DType.FLOAT32),),
                    packable)


def test_tuning_key_is_readable_and_names_the_epilogue():
    plain = _matmul_spec(packable=frozenset({1}))
    relu = FusedExpr.single("Relu", OPS["Relu"].make_attrs({}), 1, DType.FLOAT32)
    add = FusedExpr.single("Add", OPS["Add"].make_attrs({}), 2, DType.FLOAT32)
    bias = TensorType((7,), DType.FLOAT32)
    assert tuning_key(plain) == ("MatMul float32[3,5] float32[5,7] trans_a=0 trans_b=0 "
                                 "packed=1")
    with_relu = tuning_key(_matmul_spec(relu, packable=frozenset({1})))
    assert with_relu == ("MatMul float32[3,5] float32[5,7] epilogue=Relu trans_a=0 trans_b=0 "
                         "packed=1")
    fused = _matmul_spec(add, (bias,), frozenset({1, 2}))
    assert tuning_key(fused) == ("MatMul float32[3,5] float32[5,7] float32[7] epilogue=Add "
                                 "trans_a=0 trans_b=0 packed=1,2")
    assert tunable_spec(fused) is fused  # the store's cost depends on the tiling
    assert tuning_key(_matmul_spec()) != tuning_key(plain)  # B not packed: another kernel
    relu_spec = NodeSpec("Relu", OPS["Relu"].make_attrs({}), (bias,), (bias,))
    assert tuning_key(relu_spec) is None
