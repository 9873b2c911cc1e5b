"""The recurrences of ONNX's LSTM, GRU and RNN: LSTMRecurrence, GRURecurrence, RNNRecurrence.

The input projection X·Wᵀ (+ bias) of every time step is independent of the state, so the
ONNX converter computes it for the whole sequence as one MatMul and hands these ops its
result `xw` [S, B, D * G * H] (G gates per direction, in ONNX's gate order: LSTM i, o, f, c;
GRU z, r, h; RNN one). What stays here is the serial part: per step the product of the
previous state with Rᵀ, the gates and their activations.

Inputs (all present; the converter fills absent optional ONNX inputs with their defaults):
    LSTM: xw, r [D, 4H, H], sequence_lens [B] int32, initial_h [D, B, H], initial_c [D, B, H],
          p [D, 3H] (peepholes i, o, f)
    GRU:  xw, r [D, 3H, H], rbh [D, H] (the recurrent bias of the h gate, which
          linear_before_reset puts inside the reset gate's product), sequence_lens, initial_h
    RNN:  xw, r [D, H, H], sequence_lens, initial_h
Outputs: Y [S, D, B, H], Y_h [D, B, H] (and Y_c [D, B, H] for LSTM): ONNX's layout 0.

sequence_lens: batch entry b runs its first L_b steps (the reverse direction from step
L_b - 1 down to 0); Y is zero past L_b and the state holds, so Y_h is the state after the
last real step (zero where L_b is 0). `activations` holds one (name, alpha, beta) per activation and direction,
resolved (defaults filled; None: ONNX's default functions); `clip` (None: no clipping)
bounds the input of every gate's activation; LSTM's cell state goes into h unclipped, as
onnxruntime computes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError, UnsupportedOpError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["ACTIVATIONS", "CELLS", "DIRECTIONS", "Activation", "activations_of",
           "num_directions"]

Activation = tuple[str, float, float]  # (name, alpha, beta)

DIRECTIONS = ("forward", "reverse", "bidirectional")

# name -> (default alpha, default beta), None where the function takes no such parameter;
# the defaults are those of the ONNX operators of the same name.
ACTIVATIONS: dict[str, tuple[float | None, float | None]] = {
    "Relu": (None, None),
    "Tanh": (None, None),
    "Sigmoid": (None, None),
    "Affine": (1.0, 0.0),
    "LeakyRelu": (0.01, None),
    "ThresholdedRelu": (1.0, None),
    "ScaledTanh": (1.0, 1.0),
    "HardSigmoid": (0.2, 0.5),
    "Elu": (1.0, None),
    "Softsign": (None, None),
    "Softplus": (None, None),
}

# cell -> (gates per direction, activations per direction, default activations)
CELLS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "LSTM": (4, 3, ("Sigmoid", "Tanh", "Tanh")),
    "GRU": (3, 2, ("Sigmoid", "Tanh")),
    "RNN": (1, 1, ("Tanh",)),
}


def num_directions(direction: str) -> int:
    return 2 if direction == "bidirectional" else 1


def activations_of(cell: str, attrs) -> tuple[Activation, ...]:
    """The node's activations, every direction's; None stands for ONNX's defaults."""
    given = attrs["activations"]
    if given is not None:
        return tuple(given)
    names = CELLS[cell][2] * num_directions(attrs["direction"])
    return tuple((n, *_default_params(n)) for n in names)


def _apply(act: Activation, x: np.ndarray) -> np.ndarray:
    name, alpha, beta = act
    t = x.dtype.type
    if name == "Relu":
        return np.maximum(x, t(0))
    if name == "Tanh":
        return np.tanh(x)
    if name == "Sigmoid":
        return t(1) / (t(1) + np.exp(-x))
    if name == "Affine":
        return t(alpha) * x + t(beta)
    if name == "LeakyRelu":
        return np.where(x < 0, t(alpha) * x, x)
    if name == "ThresholdedRelu":
        return np.where(x > t(alpha), x, t(0))
    if name == "ScaledTanh":
        return t(alpha) * np.tanh(t(beta) * x)
    if name == "HardSigmoid":
        return np.clip(t(alpha) * x + t(beta), t(0), t(1))
    if name == "Elu":
        return np.where(x < 0, t(alpha) * (np.exp(x) - t(1)), x)
    if name == "Softsign":
        return x / (t(1) + np.abs(x))
    if name == "Softplus":
        return np.logaddexp(x, t(0)).astype(x.dtype)
    raise UnsupportedOpError(f"unknown recurrent activation {name!r}")


def _activate(act: Activation, x: np.ndarray, clip: float | None) -> np.ndarray:
    if clip is not None:
        x = np.clip(x, -x.dtype.type(clip), x.dtype.type(clip))
    with np.errstate(over="ignore"):
        return _apply(act, x)


Cell = Callable[..., tuple[np.ndarray, np.ndarray | None]]


def _lstm_cell(gx, h, c, r, extra, acts, clip, attrs):
    """One LSTM step for every batch entry: new (h, c)."""
    (p,) = extra
    hidden = h.shape[-1]
    g = gx + h @ r.T
    gi, go, gf, gc = (g[:, k * hidden:(k + 1) * hidden] for k in range(4))
    pi, po, pf = p[:hidden], p[hidden:2 * hidden], p[2 * hidden:]
    f_act, g_act, h_act = acts
    i = _activate(f_act, gi + pi * c, clip)
    f = (1 - i) if attrs["input_forget"] else _activate(f_act, gf + pf * c, clip)
    c_new = f * c + i * _activate(g_act, gc, clip)
    o = _activate(f_act, go + po * c_new, clip)
    return o * _activate(h_act, c_new, None), c_new


def _gru_cell(gx, h, c, r, extra, acts, clip, attrs):
    """One GRU step for every batch entry: new (h, None)."""
    (rbh,) = extra
    hidden = h.shape[-1]
    gz, gr, gh = (gx[:, k * hidden:(k + 1) * hidden] for k in range(3))
    rz, rr, rh = (r[k * hidden:(k + 1) * hidden] for k in range(3))
    f_act, g_act = acts
    z = _activate(f_act, gz + h @ rz.T, clip)
    reset = _activate(f_act, gr + h @ rr.T, clip)
    if attrs["linear_before_reset"]:
        cand = _activate(g_act, gh + reset * (h @ rh.T + rbh), clip)
    else:
        cand = _activate(g_act, gh + (reset * h) @ rh.T + rbh, clip)
    return (1 - z) * cand + z * h, None


def _rnn_cell(gx, h, c, r, extra, acts, clip, attrs):
    """One RNN step for every batch entry: new (h, None)."""
    return _activate(acts[0], gx + h @ r.T, clip), None


def _run(cell: str, step: Cell, xw, r, seq_lens, h0, c0, extras, attrs) -> tuple:
    """Every direction over the sequence: (Y, Y_h, Y_c or None)."""
    seq, batch = xw.shape[:2]
    d_count, hidden = h0.shape[0], h0.shape[-1]
    gates, per_dir, _ = CELLS[cell]
    width = gates * hidden
    lens = np.asarray(seq_lens).astype(np.int64)
    if ((lens < 0) | (lens > seq)).any():
        raise ShapeError(f"{cell} sequence_lens {lens.tolist()} must lie in 0..{seq}")
    y = np.zeros((seq, d_count, batch, hidden), dtype=xw.dtype)
    y_h = np.array(h0, dtype=xw.dtype, copy=True)
    y_c = None if c0 is None else np.array(c0, dtype=xw.dtype, copy=True)
    rows = np.arange(batch)
    for d in range(d_count):
        reverse = attrs["direction"] == "reverse" or d == 1
        acts = activations_of(cell, attrs)[d * per_dir:(d + 1) * per_dir]
        h = y_h[d]
        c = None if y_c is None else y_c[d]
        for s in range(seq):
            active = s < lens
            t = np.where(active, (lens - 1 - s) if reverse else s, 0)
            gx = xw[t, rows, d * width:(d + 1) * width]
            h_new, c_new = step(gx, h, c, r[d], [e[d] for e in extras], acts,
                                attrs["clip"], attrs)
            h = np.where(active[:, None], h_new, h).astype(xw.dtype)
            if c is not None:
                c = np.where(active[:, None], c_new, c).astype(xw.dtype)
            y[t[active], d, rows[active]] = h[active]
        empty = (lens == 0)[:, None]  # no step at all: zero states, as onnxruntime gives
        y_h[d] = np.where(empty, 0, h)
        if y_c is not None:
            y_c[d] = np.where(empty, 0, c)
    return y, y_h, y_c


def _lstm(xw, r, seq_lens, h0, c0, p, **attrs):
    y, y_h, y_c = _run("LSTM", _lstm_cell, xw, r, seq_lens, h0, c0, [p], attrs)
    return y, y_h, y_c


def _gru(xw, r, rbh, seq_lens, h0, **attrs):
    y, y_h, _ = _run("GRU", _gru_cell, xw, r, seq_lens, h0, None, [rbh], attrs)
    return y, y_h


def _rnn(xw, r, seq_lens, h0, **attrs):
    y, y_h, _ = _run("RNN", _rnn_cell, xw, r, seq_lens, h0, None, [], attrs)
    return y, y_h


def _expect(t: TensorType, shape: tuple, dtype: DType, what: str) -> None:
    if t.shape != shape:
        raise ShapeError(f"{what} has shape {t.shape}; expected {shape}")
    if t.dtype != dtype:
        raise DTypeError(f"{what} has dtype {t.dtype}; expected {dtype}")


def _infer(cell: str, inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    gates, per_dir, _ = CELLS[cell]
    xw, r = inputs[0], inputs[1]
    if not xw.dtype.is_float:
        raise DTypeError(f"{cell} computes in floating point, got {xw.dtype}")
    d_count = num_directions(attrs["direction"])
    if r.rank != 3 or r.shape[0] != d_count or r.shape[1] != gates * r.shape[2]:
        raise ShapeError(f"{cell} R has shape {r.shape}; expected ({d_count}, {gates} * H, H)")
    hidden = r.shape[2]
    if xw.rank != 3 or xw.shape[2] != d_count * gates * hidden:
        raise ShapeError(f"{cell} projected input has shape {xw.shape}; expected "
                         f"(S, B, {d_count * gates * hidden})")
    seq, batch = xw.shape[:2]
    _expect(r, r.shape, xw.dtype, f"{cell} R")
    state = (d_count, batch, hidden)
    rest = list(inputs[2:])
    if cell == "GRU":
        _expect(rest.pop(0), (d_count, hidden), xw.dtype, "GRU recurrent bias of the h gate")
    lens = rest.pop(0)
    if lens.shape != (batch,) or lens.dtype != DType.INT32:
        raise ShapeError(f"{cell} sequence_lens is {lens}; expected int32 ({batch},)")
    _expect(rest.pop(0), state, xw.dtype, f"{cell} initial_h")
    if cell == "LSTM":
        _expect(rest.pop(0), state, xw.dtype, "LSTM initial_c")
        _expect(rest.pop(0), (d_count, 3 * hidden), xw.dtype, "LSTM peepholes P")
    acts = activations_of(cell, attrs)
    if len(acts) != d_count * per_dir:
        raise UnsupportedOpError(f"{cell} takes {d_count * per_dir} activations for direction "
                                 f"{attrs['direction']!r}, got {len(acts)}")
    for name, _, _ in acts:
        if name not in ACTIVATIONS:
            raise UnsupportedOpError(f"{cell} activation {name!r} is not one of "
                                     f"{sorted(ACTIVATIONS)}")
    y = TensorType((seq, d_count, batch, hidden), xw.dtype)
    states = TensorType(state, xw.dtype)
    return (y, states, states) if cell == "LSTM" else (y, states)


def _common_attrs() -> tuple:
    return (
        attr("direction", AttrKind.STRING, "forward", DIRECTIONS),
        attr("activations", AttrKind.ANY, None),
        attr("clip", AttrKind.FLOAT, None),
    )


def _default_params(name: str) -> tuple[float, float]:
    alpha, beta = ACTIVATIONS[name]
    return (0.0 if alpha is None else alpha, 0.0 if beta is None else beta)


OPS.register(OpDef(
    "LSTMRecurrence", lambda i, a: _infer("LSTM", i, a), _lstm,
    attrs=(*_common_attrs(), attr("input_forget", AttrKind.INT, 0, (0, 1))),
    num_inputs=(6, 6), num_outputs=3,
    doc="ONNX LSTM after its input projection: Y, Y_h, Y_c from X·Wᵀ + B over the sequence.",
))
OPS.register(OpDef(
    "GRURecurrence", lambda i, a: _infer("GRU", i, a), _gru,
    attrs=(*_common_attrs(), attr("linear_before_reset", AttrKind.INT, 0, (0, 1))),
    num_inputs=(5, 5), num_outputs=2,
    doc="ONNX GRU after its input projection: Y, Y_h from X·Wᵀ + B over the sequence.",
))
OPS.register(OpDef(
    "RNNRecurrence", lambda i, a: _infer("RNN", i, a), _rnn,
    attrs=_common_attrs(), num_inputs=(4, 4), num_outputs=2,
    doc="ONNX RNN after its input projection: Y, Y_h from X·Wᵀ + B over the sequence.",
))
