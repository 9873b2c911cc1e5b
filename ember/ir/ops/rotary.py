"""Rotary position embedding (RoPE): rotate pairs of a head's features by position angles.

    x        [B, S, H, D] (seq_axis 1) or [B, H, S, D] (seq_axis 2)
    cos, sin [B or 1, S, R/2]: the angles' cosines and sines for each batch and position
             (ONNX's RotaryEmbedding looks them up by position_ids first: a Gather)

The first R = rotary_dim features (0: all D) are rotated in R/2 pairs, the rest pass
through. A pair is (k, k + R/2) (the halves of the rotated block), or (2k, 2k + 1) when
`interleaved`: x1' = cos_k x1 - sin_k x2, x2' = sin_k x1 + cos_k x2. Each output element
reads two inputs and one angle: the kernel is elementwise-style.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.ops.common import FLOAT_TYPES
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["rotary_dims", "rotary_reference"]


def rotary_dims(x: Sequence[int], angles: Sequence[int], rotary_dim: int, seq_axis: int
                ) -> int:
    """R, after checking the shapes against each other (ShapeError naming the parts)."""
    if len(x) != 4:
        raise ShapeError(f"RotaryEmbedding input must be 4-D, got {tuple(x)}")
    d = x[3]
    r = rotary_dim or d
    if r % 2 or not 0 < r <= d:
        raise ShapeError(f"RotaryEmbedding rotary_dim {r} must be even and within the head "
                         f"size {d}")
    want = (x[0], x[seq_axis], r // 2)
    if len(angles) != 3 or angles[0] not in (1, want[0]) or tuple(angles[1:]) != want[1:]:
        raise ShapeError(f"RotaryEmbedding cos/sin {tuple(angles)} must be [batch or 1, "
                         f"sequence, rotary_dim / 2] = {want} for input {tuple(x)}")
    return r


def _infer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x, cos, sin = inputs
    if x.dtype not in FLOAT_TYPES:
        raise DTypeError(f"RotaryEmbedding takes float tensors, got {x.dtype}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dtype != x.dtype:
            raise DTypeError(f"RotaryEmbedding {name} has dtype {t.dtype}; expected the "
                             f"input's {x.dtype}")
    if cos.shape != sin.shape:
        raise ShapeError(f"RotaryEmbedding cos {cos.shape} and sin {sin.shape} differ")
    rotary_dims(x.shape, cos.shape, attrs["rotary_dim"], attrs["seq_axis"])
    return (TensorType(x.shape, x.dtype),)


def rotary_reference(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, *, interleaved: int = 0,
                     rotary_dim: int = 0, seq_axis: int = 1) -> np.ndarray:
    """In the input's dtype, as ONNX's reference computes it."""
    r = rotary_dims(x.shape, cos.shape, rotary_dim, seq_axis)
    # angles as [B, S, 1, R/2] against x as [B, S, H, D]
    xs = x if seq_axis == 1 else np.swapaxes(x, 1, 2)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    block = xs[..., :r]
    x1, x2 = (block[..., 0::2], block[..., 1::2]) if interleaved else np.split(block, 2, -1)
    real, imag = c * x1 - s * x2, s * x1 + c * x2
    if interleaved:
        rotated = np.stack((real, imag), axis=-1).reshape(real.shape[:-1] + (r,))
    else:
        rotated = np.concatenate((real, imag), axis=-1)
    out = np.concatenate((rotated, xs[..., r:]), axis=-1).astype(x.dtype, copy=False)
    return out if seq_axis == 1 else np.swapaxes(out, 1, 2)


_I = AttrKind.INT

ROTARY_EMBEDDING = OPS.register(OpDef(
    "RotaryEmbedding", _infer, rotary_reference,
    attrs=(attr("interleaved", _I, 0, (0, 1)), attr("rotary_dim", _I, 0),
           attr("seq_axis", _I, 1, (1, 2))),
    num_inputs=(3, 3),
    doc="Rotate the first rotary_dim features (0: all) of x [B, S, H, D] (seq_axis 1) or "
        "[B, H, S, D] (seq_axis 2) in pairs by angles cos/sin [B or 1, S, rotary_dim / 2].",
))
