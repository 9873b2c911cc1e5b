"""Signal ops: DFT, STFT and MelWeightMatrix.

Complex tensors are real tensors whose last axis holds (real, imaginary); a last axis of 1
is a real signal. Inputs ONNX passes as tensors that fix the output shape (DFT's dft_length
and axis, STFT's frame_step and frame_length, every input of MelWeightMatrix) are
attributes here. The transforms run numpy's FFT at the input's precision (complex64 for
float32), as ONNX's reference does: a spectrum's exact zeros (the imaginary part of a real
signal's DC bin) then stay exactly zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.common import FLOAT_TYPES, normalize_axis, require_dtype
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["dft_length_of"]

_I, _F = AttrKind.INT, AttrKind.FLOAT


def _complex(x: np.ndarray) -> np.ndarray:
    """The complex signal of a (..., 1) or (..., 2) tensor, at x's precision (half: single)."""
    ctype = np.complex128 if x.dtype == np.float64 else np.complex64
    out = np.zeros(x.shape[:-1], ctype)
    out.real = x[..., 0]
    if x.shape[-1] == 2:
        out.imag = x[..., 1]
    return out


def _stacked(z: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1).astype(dtype)


def _require_signal(x: TensorType, what: str) -> None:
    require_dtype(x, FLOAT_TYPES, what)
    if x.rank < 2 or x.shape[-1] not in (1, 2):
        raise ShapeError(f"{what} has shape {x.shape}; expected a last axis of 1 (real) or 2 "
                         "(real, imaginary)")


# -- DFT --------------------------------------------------------------------------------------
def dft_length_of(shape: Sequence[int], axis: int, dft_length: int, inverse: int,
                  onesided: int) -> int:
    """The transform's length: dft_length, else the axis' (a one-sided inverse: the full
    spectrum's, 2 * (n - 1))."""
    if dft_length:
        return dft_length
    n = shape[axis]
    return 2 * (n - 1) if inverse and onesided else n


def _dft(x, *, axis, dft_length, inverse, onesided):
    axis = normalize_axis(axis, x.ndim)
    length = dft_length_of(x.shape, axis, dft_length, inverse, onesided)
    signal = _complex(x)
    if inverse and onesided:
        return np.fft.irfft(signal, n=length, axis=axis)[..., None].astype(x.dtype)
    if inverse:
        return _stacked(np.fft.ifft(signal, n=length, axis=axis), x.dtype)
    spectrum = np.fft.fft(signal, n=length, axis=axis)
    if onesided:
        spectrum = np.take(spectrum, np.arange(length // 2 + 1), axis=axis)
    return _stacked(spectrum, x.dtype)


def _infer_dft(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    _require_signal(x, "DFT input")
    axis = normalize_axis(attrs["axis"], x.rank)
    if axis == x.rank - 1:
        raise ShapeError(f"DFT axis {attrs['axis']} is the (real, imaginary) axis of {x.shape}")
    inverse, onesided = attrs["inverse"], attrs["onesided"]
    length = dft_length_of(x.shape, axis, attrs["dft_length"], inverse, onesided)
    if length < 1:
        raise ShapeError(f"DFT length {length} must be positive (input {x.shape})")
    shape = list(x.shape)
    shape[axis] = length // 2 + 1 if onesided and not inverse else length
    shape[-1] = 1 if inverse and onesided else 2
    return (x.with_shape(tuple(shape)),)


OPS.register(OpDef(
    "DFT", _infer_dft, _dft,
    attrs=(attr("axis", _I, 1), attr("dft_length", _I, 0), attr("inverse", _I, 0, (0, 1)),
           attr("onesided", _I, 0, (0, 1))),
    doc="Discrete Fourier transform along axis (zero-padded or cut to dft_length); inverse "
        "divides by the length; onesided keeps the first n//2 + 1 bins (forward) or takes "
        "them and returns the real signal (inverse).",
))


# -- STFT -------------------------------------------------------------------------------------
def _frame_count(length: int, frame_length: int, step: int) -> int:
    return 1 + (length - frame_length) // step


def _stft(signal, window=None, *, frame_step, frame_length, onesided):
    n_frames = _frame_count(signal.shape[1], frame_length, frame_step)
    starts = np.arange(n_frames) * frame_step
    frames = signal[:, starts[:, None] + np.arange(frame_length)[None, :]]  # (B, F, L, c)
    if window is not None:
        frames = frames * window.astype(signal.dtype)[:, None]
    spectrum = np.fft.fft(_complex(frames), n=frame_length, axis=-1)
    if onesided:
        spectrum = spectrum[..., : frame_length // 2 + 1]
    return _stacked(spectrum, signal.dtype)


def _infer_stft(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    signal = inputs[0]
    _require_signal(signal, "STFT signal")
    if signal.rank != 3:
        raise ShapeError(f"STFT signal has shape {signal.shape}; expected (batch, length, 1 "
                         "or 2)")
    step, length = attrs["frame_step"], attrs["frame_length"]
    if step < 1 or not 1 <= length <= signal.shape[1]:
        raise ShapeError(f"STFT frame_step {step} and frame_length {length} do not fit a "
                         f"signal of {signal.shape[1]} samples")
    if len(inputs) > 1:
        window = inputs[1]
        require_dtype(window, FLOAT_TYPES, "STFT window")
        if window.shape != (length,):
            raise ShapeError(f"STFT window has shape {window.shape}; expected ({length},)")
    if attrs["onesided"] and signal.shape[-1] == 2:
        raise ShapeError("STFT onesided=1 applies to real signals only")
    bins = length // 2 + 1 if attrs["onesided"] else length
    return (signal.with_shape((signal.shape[0], _frame_count(signal.shape[1], length, step),
                               bins, 2)),)


OPS.register(OpDef(
    "STFT", _infer_stft, _stft,
    attrs=(attr("frame_step", _I), attr("frame_length", _I), attr("onesided", _I, 1, (0, 1))),
    num_inputs=(1, 2),
    doc="Short-time Fourier transform: the DFT of every frame_length window (times the "
        "optional window) frame_step apart.",
))


# -- MelWeightMatrix --------------------------------------------------------------------------
def _hertz_to_mel(f):
    return 2595 * np.log10(1 + f / 700)


def _mel_to_hertz(m):
    return 700 * (10 ** (m / 2595) - 1)


def _mel_weight_matrix(*, num_mel_bins, dft_length, sample_rate, lower_edge_hertz,
                       upper_edge_hertz, output_datatype):
    """Triangular filters between num_mel_bins + 2 points evenly spaced on the mel scale,
    each point snapped down to a DFT bin."""
    low, high = _hertz_to_mel(float(lower_edge_hertz)), _hertz_to_mel(float(upper_edge_hertz))
    points = np.arange(num_mel_bins + 2) * ((high - low) / (num_mel_bins + 2)) + low
    bins = ((dft_length + 1) * _mel_to_hertz(points) // sample_rate).astype(np.int64)
    out = np.zeros((dft_length // 2 + 1, num_mel_bins))
    for i in range(num_mel_bins):
        left, center, right = bins[i:i + 3]
        if center == left:
            out[center, i] = 1
        else:
            rising = np.arange(left, center + 1)
            out[rising, i] = (rising - left) / (center - left)
        if right > center:
            falling = np.arange(center, right)
            out[falling, i] = (right - falling) / (right - center)
    return out.astype(output_datatype.np_dtype)


def _infer_mel(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    if attrs["num_mel_bins"] < 1 or attrs["dft_length"] < 1 or attrs["sample_rate"] < 1:
        raise ShapeError("MelWeightMatrix num_mel_bins, dft_length and sample_rate must be "
                         "positive")
    if not 0 <= attrs["lower_edge_hertz"] <= attrs["upper_edge_hertz"]:
        raise ShapeError(f"MelWeightMatrix edges {attrs['lower_edge_hertz']} and "
                         f"{attrs['upper_edge_hertz']} Hz must be ordered and non-negative")
    dtype = attrs["output_datatype"]
    if dtype in (DType.STRING, DType.BOOL):
        raise DTypeError(f"MelWeightMatrix output_datatype {dtype} is not numeric")
    return (TensorType((attrs["dft_length"] // 2 + 1, attrs["num_mel_bins"]), dtype),)


OPS.register(OpDef(
    "MelWeightMatrix", _infer_mel, _mel_weight_matrix,
    attrs=(attr("num_mel_bins", _I), attr("dft_length", _I), attr("sample_rate", _I),
           attr("lower_edge_hertz", _F), attr("upper_edge_hertz", _F),
           attr("output_datatype", AttrKind.DTYPE, DType.FLOAT32)),
    num_inputs=(0, 0),
    doc="The (dft_length // 2 + 1, num_mel_bins) matrix that maps a one-sided spectrum's "
        "bins onto triangular mel-scale bands.",
))
