"""LSTMRecurrence, GRURecurrence, RNNRecurrence (`recurrent.cl.j2`): the serial part of
ONNX's recurrent ops, after the converter's one GEMM over the whole sequence.

One launch runs the whole sequence: one work-group per direction loops over the steps with a
barrier after each (see the template). A launch per step would cost the driver's launch
overhead (tens of microseconds on PoCL, plus the host's enqueue) S times, more than a step
of a tagger-sized cell computes; the price is one compute unit per direction, and a
work-group of at most `MAX_GROUP` work-items that loop over the tiles of larger states.

R is packed on the host when it is a constant (`Lowered.packed`), else by the kernel itself
into scratch before the first step. float32 only; other dtypes run on the host.
"""

from __future__ import annotations

import math

import numpy as np

from ember.codegen.csrc import float_literal
from ember.codegen.families import Target
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.codegen.types import IN, OUT, TMP, Kernel, Launch, Lowered, NodeSpec
from ember.ir import DType
from ember.ir.ops.recurrent import CELLS, activations_of

__all__ = ["MAX_GROUP", "pack_recurrent_weights", "activation_c"]

MAX_GROUP = 256


def _f(value: float) -> str:
    return f"({float_literal(value, 'float')})"


def activation_c(name: str, alpha: float, beta: float, width: int) -> str:
    """The C expression of an activation of the vector `x` (float`width`). Branches are
    vector ternaries (inline selects; PoCL calls fmax and friends out of line)."""
    vt = f"float{width}"
    zero, one = f"({vt})(0.0f)", f"({vt})(1.0f)"
    exp, tanh = f"ember_exp{width}", f"ember_tanh{width}"
    a, b = _f(alpha), _f(beta)
    return {
        "Relu": f"(x < 0.0f ? {zero} : x)",
        "Tanh": f"{tanh}(x)",
        "Sigmoid": f"({one} / ({one} + {exp}(-x)))",
        "Affine": f"({a} * x + {b})",
        "LeakyRelu": f"(x < 0.0f ? {a} * x : x)",
        "ThresholdedRelu": f"(x > {a} ? x : {zero})",
        "ScaledTanh": f"({a} * {tanh}({b} * x))",
        "HardSigmoid": (f"({a} * x + {b} < 0.0f ? {zero} : ({a} * x + {b} > 1.0f ? {one} : "
                        f"{a} * x + {b}))"),
        "Elu": f"(x < 0.0f ? {a} * ({exp}(x) - {one}) : x)",
        "Softsign": f"(x / ({one} + fabs(x)))",
        "Softplus": f"((x > 0.0f ? x : {zero}) + log1p({exp}(-fabs(x))))",
    }[name]


def _padded(hidden: int, width: int) -> int:
    return -(-hidden // width) * width


def pack_recurrent_weights(gates: int, width: int):
    """R [D, G * H, H] -> [D, H, G, HP]: k-major, each gate's outputs padded to HP with
    zeros, the layout the kernel reads vectors of hidden units from."""

    def layout(r: np.ndarray) -> np.ndarray:
        d_count, _, hidden = r.shape
        hp = _padded(hidden, width)
        out = np.zeros((d_count, hidden, gates, hp), dtype=r.dtype)
        out[..., :hidden] = r.reshape(d_count, gates, hidden, hidden).transpose(0, 3, 1, 2)
        return out

    return layout


def _step_code(cell: str, d: int, attrs, name: str) -> str:
    """The C statements of one step for direction d, given acc (the recurrent products),
    x (this step's projected gates), hv (the previous state); they set h."""
    per_dir = CELLS[cell][1]

    def act(k: int, arg: str) -> str:
        return f"{name}_act{d * per_dir + k}({arg})"

    def load(ptr: str) -> str:
        return f"{name}_load({ptr}, n)"

    if cell == "RNN":
        return f"h = {act(0, load('x') + ' + acc[0][bb]')};"
    if cell == "GRU":
        rb = load("rbh + d * H + j0")
        if attrs["linear_before_reset"]:
            lines = [f"const VT z = {act(0, load('x') + ' + acc[0][bb]')};",
                     f"const VT rg = {act(0, load('x + H') + ' + acc[1][bb]')};",
                     f"const VT hc = {act(1, load('x + 2 * H') + f' + rg * (acc[2][bb] + {rb})')};"]
        else:
            lines = [f"const VT z = {load('zb + so')};",
                     f"const VT hc = {act(1, load('x + 2 * H') + f' + acc[0][bb] + {rb}')};"]
        lines.append("h = (1.0f - z) * hc + z * hv;")
        return "\n".join(" " * 20 + line for line in lines)
    p = "peep + d * 3 * H + j0"
    forget = ("(1.0f - i)" if attrs["input_forget"]
              else act(0, f"{load('x + 2 * H')} + acc[2][bb] + {load(p + ' + 2 * H')} * c"))
    lines = [
        f"const VT c = {load('y_c + so')};",
        f"const VT i = {act(0, load('x') + ' + acc[0][bb] + ' + load(p) + ' * c')};",
        f"const VT f = {forget};",
        f"const VT cn = f * c + i * {act(1, load('x + 3 * H') + ' + acc[3][bb]')};",
        f"const VT o = {act(0, load('x + H') + ' + acc[1][bb] + ' + load(p + ' + H') + ' * cn')};",
        f"h = o * {act(2, 'cn')};",
        f"{name}_store(cn, y_c + so, n);",
    ]
    return "\n".join(" " * 20 + line for line in lines)


def _time_index(direction: str) -> str:
    if direction == "forward":
        return "s"
    if direction == "reverse":
        return "len - 1 - s"
    return "(d == 1 ? len - 1 - s : s)"


@kernel_builder("LSTMRecurrence", "GRURecurrence", "RNNRecurrence")
def build_recurrence(spec: NodeSpec, target: Target) -> Lowered | None:
    cell = spec.op[: -len("Recurrence")]
    xw, r = spec.inputs[0], spec.inputs[1]
    if xw.dtype != DType.FLOAT32:
        return None
    d_count, _, hidden = r.shape
    seq, batch = xw.shape[:2]
    if seq == 0 or batch == 0 or hidden == 0:
        return None  # nothing to loop over: the host copies the initial state
    if max(xw.size, spec.outputs[0].size, r.size * 2) >= 2**31:
        return None
    gates, per_dir, _ = CELLS[cell]
    two_phase = cell == "GRU" and not spec.attrs["linear_before_reset"]
    width = 8 if hidden >= 8 else 4
    hp = _padded(hidden, width)
    bt = min(batch, max(1, 8 // gates))
    j_tiles, b_tiles = hp // width, -(-batch // bt)
    tiles = j_tiles * b_tiles
    group = max(1, min(tiles, MAX_GROUP, target.traits.max_work_group_size))
    packed = 1 in spec.packable
    clip = spec.attrs["clip"]
    acts = []
    for k, (act_name, alpha, beta) in enumerate(activations_of(cell, spec.attrs)):
        # LSTM's h activation takes the cell state, which clip does not bound
        clipped = clip is not None and not (cell == "LSTM" and k % per_dir == 2)
        acts.append((activation_c(act_name, alpha, beta, width), clipped))
    key = (cell, seq, batch, hidden, d_count, spec.attrs.key(), packed, width, bt, group)
    name = kernel_name(f"{cell.lower()}_recurrence", *key)
    source = render(
        "recurrent.cl.j2", name=name, cell=cell, seq=seq, batch=batch, hidden=hidden,
        dirs=d_count, gates=gates, hp=hp, vw=width, bt=bt, j_tiles=j_tiles, tiles=tiles,
        acts=acts, clip=None if clip is None else float_literal(clip, "float"),
        packed=packed, two_phase=two_phase, acc_gates=2 if two_phase else gates,
        time_index=_time_index(spec.attrs["direction"]),
        step_code=[_step_code(cell, d, spec.attrs, name) for d in range(d_count)],
        label=(f"{cell} {spec.attrs['direction']} S={seq} B={batch} H={hidden}, "
               f"{'packed R' if packed else 'R packed in the kernel'}"),
    )
    state_bytes = d_count * batch * hidden * 4
    temps = [2 * state_bytes]
    n_in = len(spec.inputs)
    args = [(IN, i) for i in range(n_in)] + [(OUT, j) for j in range(len(spec.outputs))]
    args.append((TMP, 0))
    if not packed:
        args.append((TMP, len(temps)))
        temps.append(d_count * hidden * gates * hp * 4)
    if two_phase:
        args += [(TMP, len(temps)), (TMP, len(temps) + 1)]
        temps += [state_bytes, state_bytes]
    launch = Launch(Kernel(name, source), (d_count * group,), (group,), tuple(args))
    layout = ((1, pack_recurrent_weights(gates, width)),) if packed else ()
    return Lowered((launch,), temps=tuple(temps), packed=layout,
                   notes=(f"{cell} recurrence: one launch, {d_count} work-group(s) of "
                          f"{group} over {seq} steps",))
