"""LSTM, GRU and RNN: the recurrence ops against their numpy references on the device and the
numpy target (every direction, activation, clip, input_forget, linear_before_reset, ragged
sequence_lens, hidden sizes that leave partial vectors), and the ONNX converter (one GEMM
plus the recurrence) against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

import ember
from ember.errors import UnsupportedOpError
from ember.frontends.onnx.recurrent import resolve_activations
from ember.ir import OPS, DType
from ember.ir.ops.recurrent import ACTIVATIONS, CELLS, DIRECTIONS, num_directions
from tests.harness import TOLERANCE, assert_close, check_op, real_devices

DEVICES = real_devices()
FEW = settings(max_examples=5, deadline=None)
# activations whose output stays bounded, so that errors do not grow over the steps
BOUNDED = ("Tanh", "Sigmoid", "HardSigmoid", "ScaledTanh", "Softsign")


def recurrence_inputs(rng: np.random.Generator, cell: str, direction: str, seq: int,
                      batch: int, hidden: int, full: bool = False) -> list[np.ndarray]:
    """Inputs of `cell`Recurrence: projected gates, R, (GRU: rbh), lens, states, (LSTM: P)."""
    gates = CELLS[cell][0]
    d = num_directions(direction)

    def f(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.uniform(-1, 1, shape) * scale).astype(np.float32)

    lens = (np.full(batch, seq) if full else rng.integers(0, seq + 1, batch)).astype(np.int32)
    arrays = [f(seq, batch, d * gates * hidden, scale=2.0), f(d, gates * hidden, hidden)]
    if cell == "GRU":
        arrays.append(f(d, hidden))
    arrays += [lens, f(d, batch, hidden)]
    if cell == "LSTM":
        arrays += [f(d, batch, hidden), f(d, 3 * hidden)]
    return arrays


def recurrence_attrs(rng: np.random.Generator, cell: str, direction: str, clip: bool,
                     choices: tuple[str, ...] = BOUNDED) -> dict:
    per_dir = CELLS[cell][1] * num_directions(direction)
    acts = tuple((str(rng.choice(choices)), float(rng.uniform(0.1, 1.0)),
                  float(rng.uniform(-0.5, 0.5))) for _ in range(per_dir))
    attrs = {"direction": direction, "activations": acts,
             "clip": float(rng.uniform(0.5, 2.0)) if clip else None}
    if cell == "LSTM":
        attrs["input_forget"] = int(rng.integers(0, 2))
    if cell == "GRU":
        attrs["linear_before_reset"] = int(rng.integers(0, 2))
    return attrs


@pytest.mark.skipif(not DEVICES, reason="no OpenCL device (the kernel needs one)")
@FEW
@given(st.integers(0, 2**32 - 1), st.sampled_from(sorted(CELLS)), st.sampled_from(DIRECTIONS),
       st.integers(1, 4), st.integers(1, 5), st.integers(1, 11), st.booleans())
def test_recurrence_kernel_matches_reference(seed, cell, direction, seq, batch, hidden, clip):
    rng = np.random.default_rng(seed)
    arrays = recurrence_inputs(rng, cell, direction, seq, batch, hidden)
    check_op(f"{cell}Recurrence", arrays, recurrence_attrs(rng, cell, direction, clip),
             target=DEVICES[0].target)


ALL_ACTIVATIONS = sorted(ACTIVATIONS)


@pytest.mark.skipif(not DEVICES, reason="no OpenCL device (the kernel needs one)")
@pytest.mark.parametrize("names", [ALL_ACTIVATIONS[:6], ALL_ACTIVATIONS[5:]])
def test_every_activation_on_the_device(names):
    """Every activation (with parameters where it takes them) in a bidirectional LSTM,
    with a clip that cuts."""
    rng = np.random.default_rng(len(names))
    arrays = recurrence_inputs(rng, "LSTM", "bidirectional", 3, 2, 9)
    acts = tuple((n, 0.2 if n == "ThresholdedRelu" else 0.4, 0.3) for n in names)
    attrs = {"direction": "bidirectional", "clip": 1.5, "activations": acts}
    check_op("LSTMRecurrence", arrays, attrs, target=DEVICES[0].target)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(sorted(CELLS)), st.sampled_from(DIRECTIONS))
def test_recurrence_on_the_numpy_target(seed, cell, direction):
    rng = np.random.default_rng(seed)
    arrays = recurrence_inputs(rng, cell, direction, 3, 2, 4)
    check_op(f"{cell}Recurrence", arrays, recurrence_attrs(rng, cell, direction, False,
                                                            tuple(ACTIVATIONS)), target="cpu")


def test_padded_steps_hold_the_state_and_write_zeros():
    rng = np.random.default_rng(0)
    xw, r, lens, h0 = recurrence_inputs(rng, "RNN", "bidirectional", 4, 3, 2)
    lens = np.array([4, 0, 2], np.int32)
    op = OPS["RNNRecurrence"]
    y, y_h = op.evaluate([xw, r, lens, h0], op.make_attrs({"direction": "bidirectional"}))
    assert not y[:, :, 1].any() and not y[2:, :, 2].any()
    assert not y_h[:, 1].any()  # no step at all: zero, as onnxruntime gives
    np.testing.assert_array_equal(y_h[0, 2], y[1, 0, 2])  # forward: the last real step
    np.testing.assert_array_equal(y_h[1, 2], y[0, 1, 2])  # reverse: ends at time 0


def test_activation_parameters_are_consumed_in_order():
    acts = resolve_activations("LSTM", ["LeakyRelu", "Tanh", "Affine"], [0.3, 0.7], [0.2], 1)
    assert acts == (("LeakyRelu", 0.3, 0.0), ("Tanh", 0.0, 0.0), ("Affine", 0.7, 0.2))
    assert resolve_activations("GRU", ["hardsigmoid", "tanh"], None, None, 1)[0] == (
        "HardSigmoid", 0.2, 0.5)
    with pytest.raises(UnsupportedOpError, match="takes 6 activations"):
        resolve_activations("LSTM", ["Sigmoid", "Tanh", "Tanh"], None, None, 2)


# -- the ONNX converter against onnxruntime ---------------------------------------------------
def onnx_model(cell: str, seq: int, batch: int, size: int, hidden: int, *, seed: int = 0,
               weights_as_inputs: bool = False, lens=None, states: bool = True,
               peepholes: bool = False, layout: int = 0, **attrs):
    """A one-node model and its feeds; W, R, B initializers unless `weights_as_inputs`."""
    rng = np.random.default_rng(seed)
    gates = CELLS[cell][0]
    d = num_directions(attrs.get("direction", "forward"))
    state_shape = (batch, d, hidden) if layout else (d, batch, hidden)
    arrays = {
        "X": rng.uniform(-1, 1, (batch, seq, size) if layout else (seq, batch, size)),
        "W": rng.uniform(-0.5, 0.5, (d, gates * hidden, size)),
        "R": rng.uniform(-0.5, 0.5, (d, gates * hidden, hidden)),
        "B": rng.uniform(-0.5, 0.5, (d, 2 * gates * hidden)),
    }
    names = ["X", "W", "R", "B", "", "", "", ""]
    if lens is not None:
        arrays["L"], names[4] = np.asarray(lens, np.int32), "L"
    if states:
        arrays["h0"], names[5] = rng.uniform(-1, 1, state_shape), "h0"
        if cell == "LSTM":
            arrays["c0"], names[6] = rng.uniform(-1, 1, state_shape), "c0"
    if peepholes:
        arrays["P"], names[7] = rng.uniform(-0.5, 0.5, (d, 3 * hidden)), "P"
    arrays = {k: v.astype(np.float32) if v.dtype != np.int32 else v for k, v in arrays.items()}
    while not names[-1]:
        names.pop()
    outputs = ["Y", "Y_h"] + (["Y_c"] if cell == "LSTM" else [])
    y_shape = (batch, seq, d, hidden) if layout else (seq, d, batch, hidden)
    node = helper.make_node(cell, names, outputs, hidden_size=hidden, layout=layout, **attrs)
    feeds = {"X": arrays["X"]}
    inputs, inits = [helper.make_tensor_value_info("X", TensorProto.FLOAT, arrays["X"].shape)], []
    for name in names[1:]:
        if not name:
            continue
        if weights_as_inputs and name in ("W", "R", "B"):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                        arrays[name].shape))
            feeds[name] = arrays[name]
        else:
            inits.append(helper.make_tensor(name, helper.np_dtype_to_tensor_dtype(
                arrays[name].dtype), arrays[name].shape, arrays[name].ravel()))
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT,
                                          y_shape if o == "Y" else state_shape) for o in outputs]
    graph = helper.make_graph([node], "rnn", inputs, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]), feeds


def _against_onnxruntime(model, feeds, target) -> None:
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ember.compile(model, target=target)(**feeds)
    for info, want in zip(model.graph.output, expected):
        assert_close(got[info.name], want, info.name, TOLERANCE[DType.FLOAT32])


ORT_CASES = [
    ("LSTM", dict(direction="bidirectional", lens=[5, 2, 3], peepholes=True, clip=0.8)),
    ("LSTM", dict(direction="reverse", input_forget=1, weights_as_inputs=True, states=False)),
    ("GRU", dict(direction="bidirectional", linear_before_reset=1, lens=[1, 5, 4])),
    ("RNN", dict(direction="reverse", activations=["ScaledTanh"], activation_alpha=[0.9],
                 activation_beta=[0.8], lens=[3, 5, 0], clip=0.7)),
]


@pytest.mark.parametrize("cell, attrs", ORT_CASES, ids=[f"{c}-{i}" for i, (c, _) in
                                                        enumerate(ORT_CASES)])
def test_converter_matches_onnxruntime(cell, attrs):
    model, feeds = onnx_model(cell, 5, 3, 4, 9, **attrs)
    _against_onnxruntime(model, feeds, DEVICES[0].target if DEVICES else "cpu")


def test_layout_one_is_layout_zero_transposed():
    """onnxruntime refuses layout 1; ember's equals layout 0 with batch and sequence swapped."""
    kw = dict(direction="bidirectional", peepholes=True, seed=3)
    batch_first, feeds1 = onnx_model("LSTM", 4, 2, 3, 5, layout=1, **kw)
    seq_first, feeds0 = onnx_model("LSTM", 4, 2, 3, 5, layout=0, **kw)
    inits0 = {t.name: t for t in seq_first.graph.initializer}
    for t in batch_first.graph.initializer:  # the same weights; states [B, D, H]
        if t.name in ("h0", "c0"):
            a = np.asarray(t.float_data, np.float32).reshape(t.dims).transpose(1, 0, 2)
            inits0[t.name].CopyFrom(helper.make_tensor(t.name, t.data_type, a.shape, a.ravel()))
        else:
            inits0[t.name].CopyFrom(t)
    got1 = ember.compile(batch_first, target="cpu")(X=feeds1["X"])
    got0 = ember.compile(seq_first, target="cpu")(X=feeds1["X"].transpose(1, 0, 2))
    np.testing.assert_array_equal(got1["Y"], got0["Y"].transpose(2, 0, 1, 3))
    for name in ("Y_h", "Y_c"):
        np.testing.assert_array_equal(got1[name], got0[name].transpose(1, 0, 2))
