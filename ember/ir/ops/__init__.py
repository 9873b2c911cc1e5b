"""Every op ember knows. Importing this package registers them all in `OPS`.

One module per op family: each defines its OpDefs (schema, inference, numpy reference).
"""

from __future__ import annotations

from ember.ir.ops.registry import OPS, OpDef, OpRegistry, attr

# Registration happens on import; the order only decides the order of `OPS.names()` ties.
from ember.ir.ops import core  # noqa: F401  (Input, Constant)
from ember.ir.ops import elementwise  # noqa: F401
from ember.ir.ops import fused  # noqa: F401  (FusedElementwise, MatMul/Conv epilogues)
from ember.ir.ops import linalg  # noqa: F401  (MatMul, Conv, ConvTranspose, BatchNorm)
from ember.ir.ops import nn  # noqa: F401  (normalization, softmax)
from ember.ir.ops import pool  # noqa: F401  (MaxPool, AveragePool, Global*Pool)
from ember.ir.ops import reduce  # noqa: F401  (reductions, ArgMax, CumSum, TopK)
from ember.ir.ops import movement  # noqa: F401  (reshape, transpose, pad, ...)
from ember.ir.ops import movement_select  # noqa: F401  (gather, one-hot, trilu, ...)
from ember.ir.ops import resize  # noqa: F401  (Resize)
from ember.ir.ops import attention  # noqa: F401  (fused scaled dot-product attention)
from ember.ir.ops import rotary  # noqa: F401  (RotaryEmbedding)
from ember.ir.ops import quant  # noqa: F401  ((de)quantization, integer MatMul/Conv)
from ember.ir.ops import scatter  # noqa: F401  (GatherND, ScatterND, ScatterElements)
from ember.ir.ops import math_extra  # noqa: F401  (Det, window functions)
from ember.ir.ops import recurrent  # noqa: F401  (LSTM, GRU, RNN recurrences)
from ember.ir.ops import dynamic  # noqa: F401  (NonZero, Unique, Compress, NonMaxSuppression)
from ember.ir.ops import loss  # noqa: F401  (NegativeLogLikelihoodLoss)
from ember.ir.ops import ml  # noqa: F401  (ai.onnx.ml: TreeEnsemble, LabelEncoder)
from ember.ir.ops import strings  # noqa: F401  (text ops on host-only strings)
from ember.ir.ops import vision  # noqa: F401  (GroupNormalization, GridSample, RoiAlign, ...)
from ember.ir.ops import signal  # noqa: F401  (DFT, STFT, MelWeightMatrix)

__all__ = ["OPS", "OpDef", "OpRegistry", "attr"]
