"""Memory planning (ember/runtime/memory.py): liveness, buffer sharing, in-place reuse.

A wrong share corrupts results silently, so every plan here goes through two checkers
written independently of the planner: `assert_no_live_overlap` (the invariant: two roots in
one buffer are never alive at the same step, except an in-place output over the input that
dies as it is written) and `assert_replay_reads_what_was_written` (walk the steps and track
which tensor each buffer holds; every read, and every graph output at the end, must find
its own tensor). Unit tests use hand-built plans; the property test and the models run on
the OpenCL device with and without planning and against numpy / onnxruntime.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import ember
from ember.codegen.types import Lowered
from ember.frontends.builder import GraphBuilder
from ember.ir import OPS, Attrs, DType, TensorType
from ember.runtime.memory import SHARED, MemoryPlan, build_memory_plan
from ember.runtime.numpy import evaluate_graph
from ember.runtime.plan import DEVICE, ExecutionPlan, Slot, Step
from tests.strategies import array_for
from tests.test_models import MODELS, compare, image, tokens

F32 = DType.FLOAT32


# -- independent checkers -----------------------------------------------------------------
def _root(plan: ExecutionPlan, slot: int) -> int:
    while plan.slots[slot].alias_of is not None:
        slot = plan.slots[slot].alias_of
    return slot


def live_ranges(plan: ExecutionPlan) -> dict[int, tuple[int, int]]:
    """(written, last needed) per root: -1 for inputs and constants; the end for outputs."""
    n = len(plan.steps)
    ranges: dict[int, list[int]] = {}
    for slot in plan.slots:
        if slot.alias_of is None and slot.kind in ("input", "constant"):
            ranges[slot.index] = [-1, -1]
    for i, step in enumerate(plan.steps):
        for s in step.outputs:
            if plan.slots[s].alias_of is None:
                ranges[s] = [i, i]
        for s in step.inputs:
            ranges[_root(plan, s)][1] = i
    for _, s in plan.outputs:
        ranges[_root(plan, s)][1] = n
    return {r: (a, b) for r, (a, b) in ranges.items()}


def in_place_ok(plan: ExecutionPlan, i: int, dying: int, out: int) -> bool:
    """May step i write root `out` over root `dying`?"""
    step = plan.steps[i]
    out_type = plan.slots[out].type
    readers = [plan.slots[s].type for s in step.inputs if _root(plan, s) == dying]
    return (OPS[step.op].elementwise and step.outputs == (out,)
            and plan.slots[dying].kind == "value"
            and all(t.shape == out_type.shape and t.nbytes == out_type.nbytes for t in readers))


def assert_no_live_overlap(plan: ExecutionPlan) -> None:
    memory = plan.memory
    ranges = live_ranges(plan)
    by_buffer: dict[int, list[int]] = {}
    for root in ranges:
        by_buffer.setdefault(memory.buffer_of[root], []).append(root)
    for b, roots in by_buffer.items():
        for x in roots:
            assert plan.slots[x].type.nbytes <= memory.buffers[b], f"{x} too big for {b}"
            for y in roots:
                (s1, e1), (s2, e2) = ranges[x], ranges[y]
                if x == y or s2 < s1 or (s1, x) > (s2, y) or s2 > e1:
                    continue
                assert s2 == e1 and in_place_ok(plan, s2, x, y), (
                    f"roots {plan.slots[x].name} {ranges[x]} and {plan.slots[y].name} "
                    f"{ranges[y]} are alive together in buffer {b}")


def assert_replay_reads_what_was_written(plan: ExecutionPlan) -> None:
    memory = plan.memory
    buf = memory.buffer_of
    fixed = {buf[s.index] for s in plan.slots if s.kind in ("input", "constant")}
    holds: dict[int, object] = {buf[s.index]: s.index for s in plan.slots
                                if s.alias_of is None and s.kind in ("input", "constant")}
    for i, step in enumerate(plan.steps):
        read = {buf[_root(plan, s)] for s in step.inputs}
        for s in step.inputs:
            r = _root(plan, s)
            assert holds.get(buf[r]) == r, f"step {i} {step.name} reads {plan.slots[r].name} " \
                                           f"but its buffer holds {holds.get(buf[r])}"
        writes = [s for s in step.outputs if plan.slots[s].alias_of is None]
        temps = list(memory.temps[i])
        sizes = step.lowered.temps if step.lowered is not None else ()
        assert len(temps) == len(sizes)
        targets = [buf[s] for s in writes] + temps
        assert len(set(targets)) == len(targets), f"step {i} writes one buffer twice"
        assert not set(targets) & fixed, f"step {i} writes an input or constant buffer"
        assert not set(temps) & read, f"step {i} scratch overlaps its inputs"
        for s in writes:
            if buf[s] in read:
                assert in_place_ok(plan, i, holds[buf[s]], s), f"step {i} bad in-place"
                assert all(_root(plan, t) != holds[buf[s]] for later in plan.steps[i + 1:]
                           for t in later.inputs), f"step {i} overwrites a live input"
            assert plan.slots[s].type.nbytes <= memory.buffers[buf[s]]
            holds[buf[s]] = s
        for k, b in enumerate(temps):
            assert sizes[k] <= memory.buffers[b]
            holds[b] = ("scratch", i, k)
    for name, s in plan.outputs:
        r = _root(plan, s)
        assert holds.get(buf[r]) == r, f"output {name} was overwritten"


def check(plan: ExecutionPlan) -> MemoryPlan:
    assert plan.memory is not None
    assert_no_live_overlap(plan)
    assert_replay_reads_what_was_written(plan)
    return plan.memory


# -- hand-built plans (no device) -----------------------------------------------------------
class PlanMaker:
    """Slots and steps by hand: the planner sees exactly the plan a test describes."""

    def __init__(self) -> None:
        self.slots: list[Slot] = []
        self.steps: list[Step] = []
        self.inputs: dict[str, int] = {}
        self.constants: dict[int, np.ndarray] = {}

    def _slot(self, shape, kind: str, dtype: DType = F32, alias_of: int | None = None) -> int:
        self.slots.append(Slot(len(self.slots), TensorType(tuple(shape), dtype), kind,
                               f"t{len(self.slots)}", alias_of))
        return len(self.slots) - 1

    def input(self, shape) -> int:
        self.inputs[f"x{len(self.inputs)}"] = index = self._slot(shape, "input")
        return index

    def constant(self, shape) -> int:
        index = self._slot(shape, "constant")
        self.constants[index] = np.zeros(shape, np.float32)
        return index

    def step(self, op: str, *inputs: int, shape=None, dtype: DType = F32, outputs: int = 1,
             view: bool = False, temps: tuple[int, ...] = ()) -> int:
        """Add a step; returns its first output slot (views alias input 0)."""
        shape = self.slots[inputs[0]].type.shape if shape is None else shape
        outs = tuple(self._slot(shape, "value", dtype, inputs[0] if view else None)
                     for _ in range(outputs))
        lowered = Lowered((), temps=temps) if temps else None
        self.steps.append(Step(f"s{len(self.steps)}", op, Attrs(), DEVICE, tuple(inputs),
                               outs, lowered))
        return outs[0]

    def plan(self, *outputs: int, share: bool = True) -> ExecutionPlan:
        plan = ExecutionPlan(self.slots, self.steps, self.inputs,
                             [(f"y{i}", s) for i, s in enumerate(outputs)], self.constants)
        plan.memory = build_memory_plan(plan, share=share)
        return plan


def test_tensors_alive_together_never_share():
    p = PlanMaker()
    x = p.input((64,))
    a, b = p.step("Exp", x), p.step("Tanh", x)
    c = p.step("Softmax", a, b)  # a and b both alive here
    plan = p.plan(c)
    memory = check(plan)
    assert memory.buffer_of[a] != memory.buffer_of[b]
    assert memory.buffer_of[c] not in (memory.buffer_of[a], memory.buffer_of[b])


def test_dead_tensors_buffer_is_reused():
    p = PlanMaker()
    s1 = p.step("Softmax", p.input((64,)))
    s2 = p.step("Softmax", s1)
    s3 = p.step("Softmax", s2)
    s4 = p.step("Softmax", s3, shape=(8,))
    plan = p.plan(s4)
    memory = check(plan)
    assert memory.buffer_of[s1] == memory.buffer_of[s3] != memory.buffer_of[s2]
    assert memory.buffer_of[s4] == memory.buffer_of[s2]  # the best fit for a smaller tensor
    assert memory.kinds.count(SHARED) == 2 and memory.planned_bytes < memory.naive_bytes


def test_view_keeps_its_root_alive():
    p = PlanMaker()
    x = p.input((4, 16))
    a = p.step("Softmax", x)
    v = p.step("Reshape", a, shape=(64,), view=True)
    b = p.step("Softmax", x)
    c = p.step("Softmax", b)
    d = p.step("MatMul", c, v, shape=(4, 16))  # reads `a` through its view at step 4
    plan = p.plan(d)
    memory = check(plan)
    assert memory.lifetimes[a] == (0, 4)
    assert memory.buffer_of[v] == memory.buffer_of[a]
    assert memory.buffer_of[a] not in (memory.buffer_of[b], memory.buffer_of[c])


def test_graph_outputs_are_never_overwritten():
    p = PlanMaker()
    x = p.input((32,))
    early = p.step("Softmax", x)
    h = p.step("Softmax", early)
    view_out = p.step("Reshape", p.step("Softmax", h), shape=(4, 8), view=True)
    for _ in range(4):
        h = p.step("Softmax", h)
    plan = p.plan(early, view_out, h)
    memory = check(plan)
    end = len(plan.steps)
    assert memory.lifetimes[early] == (0, end)
    assert memory.lifetimes[_root(plan, view_out)][1] == end
    taken = {memory.buffer_of[early], memory.buffer_of[view_out]}
    later = [s for step in plan.steps[4:] for s in step.outputs]
    assert not taken & {memory.buffer_of[s] for s in later}


def test_in_place_only_over_same_shape_elementwise_inputs_that_die():
    p = PlanMaker()
    x = p.input((8, 8))
    e = p.step("Exp", x)
    r = p.step("Relu", e)  # e dies here: in place
    t = p.step("Tanh", r)  # r is read again below: not in place
    s = p.step("Add", t, r)  # both die: in place over one of them
    m = p.step("Softmax", s)  # not elementwise: never in place
    w = p.step("Neg", p.step("Softmax", m), shape=(8, 8))
    plan = p.plan(w, m)
    memory = check(plan)
    pairs = {(inp, out) for _, inp, out in memory.in_place}
    assert (e, r) in pairs and memory.buffer_of[e] == memory.buffer_of[r]
    assert memory.buffer_of[t] != memory.buffer_of[r]
    assert (t, s) in pairs or (r, s) in pairs
    assert all(out not in (t, m) for _, _, out in memory.in_place)
    assert not any(inp == m for _, inp, _ in memory.in_place)  # m is a graph output


def test_no_in_place_over_inputs_constants_or_other_byte_sizes():
    p = PlanMaker()
    x, c = p.input((16,)), p.constant((16,))
    a = p.step("Add", x, c)  # x and c die here, but inputs and constants are never shared
    half = p.step("Cast", a, dtype=DType.FLOAT16)  # 2 bytes per element out of 4: no
    ints = p.step("Cast", p.step("Exp", half, dtype=F32), dtype=DType.INT32)  # same bytes: yes
    plan = p.plan(ints)
    memory = check(plan)
    assert [(plan.steps[i].op, out) for i, _, out in memory.in_place] == [("Cast", ints)]
    assert memory.buffer_of[a] not in (memory.buffer_of[x], memory.buffer_of[c])
    assert memory.buffer_of[half] != memory.buffer_of[a]


def test_broadcast_inputs_are_never_written_in_place():
    p = PlanMaker()
    x = p.input((6, 5))
    row = p.step("Exp", p.input((1, 5)))  # dies at the Add, but is read broadcast
    y = p.step("Add", x, row, shape=(6, 5))
    # One root read through two views: same shape as the output, and with a leading 1.
    sq = p.step("Exp", x)
    v = p.step("Reshape", sq, shape=(1, 6, 5), view=True)
    z = p.step("Mul", sq, v, shape=(1, 6, 5))
    plan = p.plan(y, z)
    memory = check(plan)
    assert memory.in_place == ()
    assert memory.buffer_of[y] != memory.buffer_of[row]
    assert memory.buffer_of[z] != memory.buffer_of[sq]


def test_steps_with_several_outputs_are_never_in_place():
    p = PlanMaker()
    e = p.step("Exp", p.input((10,)))
    first = p.step("FusedElementwise", e, outputs=2)
    plan = p.plan(first, first + 1)
    memory = check(plan)
    assert memory.in_place == ()


def test_scratch_buffers_come_from_the_pool():
    p = PlanMaker()
    x = p.input((256,))
    a = p.step("ReduceSum", x, shape=(1,), temps=(512,))
    b = p.step("Softmax", p.step("Softmax", x))  # 1 KiB tensors, alive after the scratch
    c = p.step("ReduceSum", b, shape=(1,), temps=(512,))
    plan = p.plan(a, c)
    memory = check(plan)
    first, second = memory.temps[0][0], memory.temps[3][0]
    assert first == second  # scratch of steps 0 and 3 shares one buffer
    assert first != memory.buffer_of[b]  # never the step's own input
    assert memory.naive_bytes == sum(s.type.nbytes for s in plan.slots) + 1024


def test_sharing_off_gives_the_naive_plan():
    p = PlanMaker()
    h = p.input((32,))
    for _ in range(5):
        h = p.step("Relu", p.step("Softmax", h), temps=(64,))
    memory = check(p.plan(h, share=False))
    assert memory.planned_bytes == memory.naive_bytes and memory.in_place == ()
    assert len(set(memory.buffer_of.values())) == len(memory.buffer_of)


def test_checkers_catch_a_wrong_share():
    """The checkers must be able to fail: move a live tensor into another's buffer."""
    p = PlanMaker()
    x = p.input((16,))
    a, b = p.step("Softmax", x), p.step("Softmax", x)
    plan = p.plan(p.step("MatMul", a, b))
    check(plan)
    wrong = dict(plan.memory.buffer_of)
    wrong[b] = wrong[a]
    bad = dataclasses.replace(plan.memory, buffer_of=wrong)
    for checker in (assert_no_live_overlap, assert_replay_reads_what_was_written):
        with pytest.raises(AssertionError):
            checker(dataclasses.replace(plan, memory=bad))
    from ember.runtime.memory import verify_memory_plan
    with pytest.raises(AssertionError, match="alive together"):
        verify_memory_plan(plan, bad)


# -- on the device --------------------------------------------------------------------------
def compile_both(graph, target: str, opt_level: int = 0):
    """The graph with memory planning and without; both plans checked."""
    planned = ember.compile(graph, target=target, opt_level=opt_level, plan_memory=True)
    naive = ember.compile(graph, target=target, opt_level=opt_level, plan_memory=False)
    check(planned.plan)
    check(naive.plan)
    assert naive.stats.peak_device_bytes == naive.stats.naive_device_bytes
    assert planned.stats.naive_device_bytes == naive.stats.naive_device_bytes
    return planned, naive


def assert_same_results(planned, naive, feeds) -> dict[str, np.ndarray]:
    """Same kernels in the same order: planning must not change a single bit."""
    got, want = planned(**feeds), naive(**feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    return got


def test_host_steps_share_buffers_with_device_steps(opencl_target):
    """bfloat16 has no OpenCL type: those Casts run on the host, reading their inputs back
    from shared buffers and writing outputs into them (a bf16 -> f16 Cast in place). Every
    device op here is exact, so numpy's result must come out bit for bit."""
    b = GraphBuilder("host_steps")
    x = b.input("x", (16, 16))
    a = b.Relu(x)
    half = b.Cast(b.Cast(b.Cast(a, to=DType.BFLOAT16), to=DType.FLOAT16), to=F32)
    d = b.Add(b.Neg(half), x)
    g = b.Cast(b.Cast(d, to=DType.BFLOAT16), to=F32)
    b.output("y", b.Mul(g, a))
    b.output("d", d)
    graph = b.build()
    planned, naive = compile_both(graph, opencl_target)
    plan, memory = planned.plan, planned.plan.memory
    host = [s for step in plan.steps if step.placement == "host" for s in step.outputs]
    assert len(host) == 4
    shared = [memory.buffer_of[s.index] for s in plan.slots if s.alias_of is None].count
    assert any(shared(memory.buffer_of[s]) > 1 for s in host)  # host outputs do share
    assert any(plan.steps[i].placement == "host" for i, _, _ in memory.in_place)
    for seed in (1, 2):
        feeds = {"x": array_for(seed, (16, 16), F32)}
        got = assert_same_results(planned, naive, feeds)
        for name, want in evaluate_graph(graph, feeds).items():
            np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_reduction_scratch_shares_the_pool(opencl_target):
    """Long reductions with few outputs split into partial sums in a scratch buffer."""
    b = GraphBuilder("scratch")
    x = b.input("x", (2, 40000))
    first = b.ReduceSum(b.Abs(x), axes=(1,), keepdims=0)
    second = b.ReduceSum(b.Relu(b.Neg(x)), axes=(1,), keepdims=0)
    b.output("y", b.Add(first, second))
    graph = b.build()
    planned, naive = compile_both(graph, opencl_target)
    memory = planned.plan.memory
    scratch = [b for per_step in memory.temps for b in per_step]
    assert len(scratch) == 2, "the reductions are expected to split on this device"
    tenants = [memory.buffer_of[s.index] for s in planned.plan.slots] + scratch
    assert all(tenants.count(b) > 1 for b in scratch)  # scratch reuses a pooled buffer
    feeds = {"x": array_for(3, (2, 40000), F32)}
    got = assert_same_results(planned, naive, feeds)["y"]
    want = evaluate_graph(graph, feeds)["y"]
    # 40000 nonnegative terms per output summed in another order: |error| <= n * eps * sum.
    bound = 40000 * np.finfo(np.float32).eps * np.abs(want)
    assert np.all(np.abs(got - want) <= bound)


UNARY = ("Relu", "Neg", "Tanh", "Sigmoid", "Abs")
BINARY = ("Add", "Sub", "Mul", "Max")
SIDES = (1, 3, 8, 17, 32)


def _broadcasts(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


@st.composite
def random_graph(draw):
    """Chains and diamonds of elementwise ops (broadcasts included), MatMul with constant
    weights, keepdims reductions, Reshape views, one or two inputs, several outputs. Ops
    mostly take recent values, so that tensors die along the way and buffers get reused.
    Values stay within [-1, 1] times a few sums, so float32 rounding stays small."""
    rows, cols = draw(st.sampled_from(SIDES)), draw(st.sampled_from(SIDES))
    seed = draw(st.integers(0, 999))
    b = GraphBuilder("memory")
    values = [b.input("x", (rows, cols))]
    feeds = {"x": array_for(seed, (rows, cols), F32, low=-1, high=1)}
    if draw(st.booleans()):
        values.append(b.input("r", (1, cols)))
        feeds["r"] = array_for(seed + 1, (1, cols), F32, low=-1, high=1)

    def pick(candidates: list) -> object:
        back = draw(st.integers(0, len(candidates) - 1) | st.integers(0, 2))
        return candidates[-1 - min(back, len(candidates) - 1)]

    for k in range(draw(st.integers(3, 14))):
        a = pick(values)
        shape = b.graph.type_of(a).shape
        kind = draw(st.sampled_from(("unary", "binary", "binary", "matmul", "reduce", "view")))
        if kind == "unary":
            v = b.op(draw(st.sampled_from(UNARY)), a)
        elif kind == "binary":
            partners = [w for w in values if _broadcasts(shape, b.graph.type_of(w).shape)]
            args = [a, pick(partners)]
            v = b.op(draw(st.sampled_from(BINARY)), *draw(st.permutations(args)))
        elif kind == "matmul":
            n = draw(st.sampled_from(SIDES))
            weight = array_for(seed + k, (shape[1], n), F32, low=-1, high=1) / shape[1]
            v = b.MatMul(a, b.constant(weight))
        elif kind == "reduce":
            op = draw(st.sampled_from(("ReduceSum", "ReduceMax")))
            v = b.op(op, a, axes=(draw(st.sampled_from((0, 1))),), keepdims=1)
        else:
            size = math.prod(shape)
            side = draw(st.sampled_from([d for d in (1, 3, 8, 17, size) if size % d == 0]))
            v = b.Reshape(a, shape=(size // side, side))
        values.append(v)
    made = values[len(feeds):]
    chosen = [made[-1]] + draw(st.lists(st.sampled_from(made), max_size=2))
    for i, v in enumerate(dict.fromkeys(chosen)):
        b.output(f"y{i}", v)
    return b.build(), feeds


@pytest.mark.parametrize("opt_level", [0, 2])
@given(case=random_graph())
def test_random_graphs_same_results_with_and_without_planning(opt_level, case, opencl_target):
    graph, feeds = case
    planned, naive = compile_both(graph, opencl_target, opt_level)
    expected = evaluate_graph(graph, feeds)
    for attempt in range(2):  # the second call runs over the buffers the first one left
        if attempt:
            feeds = {k: -v[::-1] for k, v in feeds.items()}
            expected = evaluate_graph(graph, feeds)
        got = assert_same_results(planned, naive, feeds)
        for name, want in expected.items():
            # Sums of at most 32 terms of magnitude <= 32: well under 1e-5 of the scale;
            # a wrong share gives errors of the order of the values themselves.
            scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5 * scale,
                                       err_msg=name)


# -- real models ----------------------------------------------------------------------------
MODEL_FEEDS = {
    "resnet_mini": lambda: image(0),
    "bert_mini": lambda: tokens(0, 128, padded=32),
}
# The project's bar: activations (everything but the weights, which no plan can share) at
# O2 at most half of the naive plan, one buffer per tensor of the unoptimized (O0) graph.
ACTIVATION_BOUND_O2 = 0.5


@pytest.mark.parametrize("opt_level", [0, 2])
@pytest.mark.parametrize("name", sorted(MODEL_FEEDS))
def test_models_with_memory_planning(name, opt_level, opencl_target):
    feeds = MODEL_FEEDS[name]()
    path = MODELS / f"{name}.onnx"
    shapes = {k: v.shape for k, v in feeds.items()}
    planned = ember.compile(path, target=opencl_target, opt_level=opt_level,
                            input_shapes=shapes, plan_memory=True)
    naive = ember.compile(path, target=opencl_target, opt_level=opt_level,
                          input_shapes=shapes, plan_memory=False)
    check(planned.plan)
    compare(planned, path, feeds, f"{name} O{opt_level} with memory planning")
    assert_same_results(planned, naive, feeds)
    stats = planned.stats
    assert naive.stats.peak_device_bytes == stats.naive_device_bytes
    assert stats.peak_device_bytes < stats.naive_device_bytes
    total = stats.peak_device_bytes / stats.naive_device_bytes
    activations = stats.peak_activation_bytes / stats.naive_activation_bytes
    print(f"{name} O{opt_level}: device memory {total:.1%} of naive, "
          f"activations {activations:.1%}")
    if opt_level == 2:
        unoptimized = ember.compile(path, target=opencl_target, opt_level=0,
                                    input_shapes=shapes, plan_memory=False).stats
        assert stats.peak_activation_bytes <= (ACTIVATION_BOUND_O2
                                               * unoptimized.naive_activation_bytes)
    assert f"{total:.0%}" in planned.summary()


def test_memory_planning_is_part_of_o2(opencl_target):
    """O0 and O1 keep one buffer per tensor; O2 and up share them (docs/ARCHITECTURE.md's levels)."""
    b = GraphBuilder("chain")
    x = b.input("x", (4, 16))
    b.output("y", b.Softmax(b.Softmax(b.Softmax(b.Softmax(x, axis=1), axis=1), axis=1), axis=1))
    graph = b.build()
    for level, planned in ((0, False), (1, False), (2, True), (3, True)):
        stats = ember.compile(graph, target=opencl_target, opt_level=level).stats
        assert (stats.peak_device_bytes < stats.naive_device_bytes) == planned, level
