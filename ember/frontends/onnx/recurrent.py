"""Converters of ONNX's LSTM, GRU and RNN.

Each becomes the input projection of the whole sequence as ONE MatMul, X [S*B, I] times
W [D*G*H, I]ᵀ, plus the biases that do not depend on the state (Wb + Rb, except GRU's
recurrent h-gate bias, which linear_before_reset multiplies by the reset gate), and then
the op's recurrence (ir/ops/recurrent.py) over that projection. Absent optional inputs
become their ONNX defaults (full sequence lengths, zero states and peepholes); layout 1
(batch first) is transposed to layout 0 around the recurrence.
"""

from __future__ import annotations

import numpy as np
import onnx

from ember.errors import ShapeError, UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import DType, Value
from ember.ir.ops.recurrent import ACTIVATIONS, CELLS, DIRECTIONS, Activation, num_directions

__all__ = ["resolve_activations"]

_CANONICAL = {name.lower(): name for name in ACTIVATIONS}


def resolve_activations(cell: str, names: list[str] | None, alphas: list[float] | None,
                        betas: list[float] | None, directions: int) -> tuple[Activation, ...]:
    """One (name, alpha, beta) per activation and direction. Alphas and betas are consumed
    in order by the activations that take one (onnxruntime's reading of "in the order of
    activation functions"); missing ones take the defaults of the ONNX op of that name."""
    _, per_dir, defaults = CELLS[cell]
    names = list(names) if names else list(defaults) * directions
    if len(names) != per_dir * directions:
        raise UnsupportedOpError(f"{cell} with {directions} direction(s) takes "
                                 f"{per_dir * directions} activations, got {names}")
    alpha_left, beta_left = list(alphas or ()), list(betas or ())
    out = []
    for name in names:
        canonical = _CANONICAL.get(str(name).lower())
        if canonical is None:
            raise UnsupportedOpError(f"{cell} activation {name!r} is not one of "
                                     f"{sorted(ACTIVATIONS)}")
        alpha, beta = ACTIVATIONS[canonical]
        if alpha is not None and alpha_left:
            alpha = alpha_left.pop(0)
        if beta is not None and beta_left:
            beta = beta_left.pop(0)
        out.append((canonical, float(alpha or 0.0), float(beta or 0.0)))
    return tuple(out)


def _transpose01(ctx: ImportContext, value: Value) -> Value:
    return ctx.add("Transpose", [value], {"perm": (1, 0, 2)})


def _slice(ctx: ImportContext, value: Value, start: int, end: int) -> Value:
    return ctx.add("Slice", [value], {"starts": (start,), "ends": (end,), "axes": (1,)})


def _zeros(ctx: ImportContext, shape: tuple[int, ...], dtype: DType) -> Value:
    return ctx.constant(np.zeros(shape, dtype=dtype.np_dtype))


def _check(ctx: ImportContext, value: Value | None, shape: tuple[int, ...], what: str) -> None:
    if value is not None and tuple(ctx.type_of(value).shape) != shape:
        raise ShapeError(f"{ctx.where}: {what} has shape {ctx.type_of(value).shape}; "
                         f"expected {shape}")


@onnx_op("LSTM", "GRU", "RNN")
def _recurrent(ctx: ImportContext, node: onnx.NodeProto) -> list[Value | None]:
    cell = node.op_type
    gates = CELLS[cell][0]
    x, w, r = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    bias, lens, h0 = ctx.input(node, 3), ctx.input(node, 4), ctx.input(node, 5)
    c0 = ctx.input(node, 6) if cell == "LSTM" else None
    peep = ctx.input(node, 7) if cell == "LSTM" else None
    direction = ctx.attr(node, "direction", "forward")
    if direction not in DIRECTIONS:
        raise UnsupportedOpError(f"{ctx.where}: direction {direction!r} is not one of "
                                 f"{DIRECTIONS}")
    layout = int(ctx.attr(node, "layout", 0))
    if layout not in (0, 1):
        raise UnsupportedOpError(f"{ctx.where}: layout {layout} is not 0 or 1")
    d_count = num_directions(direction)
    x_type, r_type = ctx.type_of(x), ctx.type_of(r)
    dtype = x_type.dtype
    if x_type.rank != 3 or r_type.rank != 3:
        raise ShapeError(f"{ctx.where}: X {x_type.shape} and R {r_type.shape} must be 3-D")
    hidden = int(ctx.attr(node, "hidden_size", r_type.shape[2]))
    if layout == 1:
        x = _transpose01(ctx, x)
        h0 = None if h0 is None else _transpose01(ctx, h0)
        c0 = None if c0 is None else _transpose01(ctx, c0)
    seq, batch, size = ctx.type_of(x).shape
    width = gates * hidden
    state = (d_count, batch, hidden)
    for value, shape, what in ((w, (d_count, width, size), "W"), (r, (d_count, width, hidden), "R"),
                               (bias, (d_count, 2 * width), "B"), (lens, (batch,), "sequence_lens"),
                               (h0, state, "initial_h"), (c0, state, "initial_c"),
                               (peep, (d_count, 3 * hidden), "P")):
        _check(ctx, value, shape, what)

    flat_x = ctx.add("Reshape", [x], {"shape": (seq * batch, size)})
    flat_w = ctx.add("Reshape", [w], {"shape": (d_count * width, size)})
    xw = ctx.add("MatMul", [flat_x, flat_w], {"trans_a": 0, "trans_b": 1})
    rbh = None
    if bias is not None:
        input_bias = _slice(ctx, bias, 0, width)
        if cell == "GRU":  # the h gate's recurrent bias stays with the recurrence
            rbh = _slice(ctx, bias, width + 2 * hidden, 2 * width)
            recurrent_bias = ctx.add("Concat", [_slice(ctx, bias, width, width + 2 * hidden),
                                                _zeros(ctx, (d_count, hidden), dtype)],
                                     {"axis": 1})
        else:
            recurrent_bias = _slice(ctx, bias, width, 2 * width)
        total = ctx.add("Add", [input_bias, recurrent_bias])
        xw = ctx.add("Add", [xw, ctx.add("Reshape", [total], {"shape": (d_count * width,)})])
    xw = ctx.add("Reshape", [xw], {"shape": (seq, batch, d_count * width)})

    if lens is None:
        lens = ctx.constant(np.full((batch,), seq, dtype=np.int32))
    elif ctx.type_of(lens).dtype != DType.INT32:
        lens = ctx.add("Cast", [lens], {"to": DType.INT32})
    h0 = h0 if h0 is not None else _zeros(ctx, state, dtype)
    attrs = {
        "direction": direction,
        "activations": resolve_activations(
            cell, ctx.attr(node, "activations"), ctx.attr(node, "activation_alpha"),
            ctx.attr(node, "activation_beta"), d_count),
        "clip": None if ctx.attr(node, "clip") is None else float(ctx.attr(node, "clip")),
    }
    if cell == "LSTM":
        attrs["input_forget"] = int(ctx.attr(node, "input_forget", 0))
        inputs = [xw, r, lens, h0, c0 if c0 is not None else _zeros(ctx, state, dtype),
                  peep if peep is not None else _zeros(ctx, (d_count, 3 * hidden), dtype)]
    elif cell == "GRU":
        attrs["linear_before_reset"] = int(ctx.attr(node, "linear_before_reset", 0))
        inputs = [xw, r, rbh if rbh is not None else _zeros(ctx, (d_count, hidden), dtype),
                  lens, h0]
    else:
        inputs = [xw, r, lens, h0]
    outputs = list(ctx.add_multi(f"{cell}Recurrence", inputs, attrs))
    if layout == 1:  # Y [S, D, B, H] -> [B, S, D, H]; states [D, B, H] -> [B, D, H]
        outputs[0] = ctx.add("Transpose", [outputs[0]], {"perm": (2, 0, 1, 3)})
        outputs[1:] = [_transpose01(ctx, v) for v in outputs[1:]]
    return outputs
