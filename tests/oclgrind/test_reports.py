"""The tier's premise: Oclgrind runs here, and what it reports reaches the log that fails
a test. A kernel writing one element past the end of its buffer must be reported, and so
must work-items racing on one local-memory word."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ember.errors import DeviceError
from ember.runtime.device import resolve_target

pytestmark = pytest.mark.oclgrind

SOURCE = """
__kernel void write_past_end(__global float* out, const int n) {
    const int i = get_global_id(0);
    out[i + 1] = (float)i;  /* the last work-item writes out[n] */
}
__kernel void race_in_local_memory(__global float* out, const int n) {
    __local float shared[1];
    shared[0] = (float)get_local_id(0);  /* every work-item of the group, unordered */
    barrier(CLK_LOCAL_MEM_FENCE);
    out[get_global_id(0)] = shared[0];
}
__kernel void write_in_bounds(__global float* out, const int n) {
    const int i = get_global_id(0);
    if (i + 1 < n) out[i + 1] = (float)i;
}
"""


def _run(name: str, n: int = 7, local: int | None = None) -> np.ndarray:
    import pyopencl as cl

    device = resolve_target("oclgrind")
    program = cl.Program(device.context, SOURCE).build()
    out = np.zeros(n, np.float32)
    buffer = cl.Buffer(device.context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR,
                       hostbuf=out)
    getattr(program, name)(device.queue, (n,), (local,) if local else None, buffer,
                          np.int32(n))
    cl.enqueue_copy(device.queue, out, buffer)
    device.queue.finish()
    return out


def test_a_write_past_the_end_is_reported(oclgrind_log):
    _run("write_past_end")
    report = oclgrind_log.take()  # taken: the tier's check after the test sees nothing
    assert "Invalid write of size 4" in report and "write_past_end" in report, report


def test_a_data_race_is_reported(oclgrind_log):
    if os.environ.get("OCLGRIND_DATA_RACES") != "1":
        pytest.skip("OCLGRIND_DATA_RACES is not 1 in this run: races are not checked")
    _run("race_in_local_memory", 8, local=4)
    report = oclgrind_log.take()
    assert "data race at local memory" in report and "race_in_local_memory" in report, report


def test_a_kernel_in_bounds_reports_nothing(oclgrind_log):
    out = _run("write_in_bounds")
    np.testing.assert_array_equal(out, [0, 0, 1, 2, 3, 4, 5])
    assert oclgrind_log.take() == ""


def test_a_family_forced_on_the_simulator_reaches_codegen():
    device = resolve_target("oclgrind@amd-gcn")
    assert device.info.traits.simulator and device.target.family.name == "amd-gcn"
    assert device.target.simd_width == 64  # the family's: Oclgrind reports none
    assert resolve_target("oclgrind@amd-gcn") is device
    assert resolve_target("oclgrind").target.family.name == "gpu"  # its own, unchanged
    with pytest.raises(DeviceError, match="unknown family 'tpu'"):
        resolve_target("oclgrind@tpu")
