"""Blocked 4-bit weights: round-to-nearest, and GPTQ error compensation.

Weights are handled as W (N, K): one row per output, blocks of `block_size` along K (the
reduction axis), one scale (and zero point) per row and block. Symmetric blocks are int4 in
[-8, 7] with scale max|w| / 7 and no zero point; asymmetric blocks are uint4 in [0, 15] over
[min(w, 0), max(w, 0)] with a zero point.

GPTQ (Frantar et al., 2022) quantizes the columns of W one at a time and spreads each
column's rounding error over the columns not yet quantized, weighted by the inverse of the
layer input's Gram matrix H = X^T X / rows: the quantity it lowers is the layer's output
error on the calibration data, trace((W - Wq) H (W - Wq)^T) / N, which `output_error`
measures. Block parameters are taken from the updated weights when a block starts. The
caller keeps GPTQ's result only where that error is lower than round-to-nearest's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BlockedWeights", "quantize_rtn", "quantize_gptq", "output_error"]


@dataclass
class BlockedWeights:
    codes: np.ndarray  # (N, K) int64, in the int4 or uint4 range
    scales: np.ndarray  # (N, n_blocks) float32
    zeros: np.ndarray | None  # (N, n_blocks) int64, None when symmetric
    block_size: int

    def dequantized(self) -> np.ndarray:
        """W_q (N, K) float64, as DequantizeLinear computes it (in float32)."""
        expand = np.repeat(np.arange(self.scales.shape[1]), self.block_size)[: self.codes.shape[1]]
        zeros = 0 if self.zeros is None else self.zeros[:, expand]
        return ((self.codes - zeros).astype(np.float32) * self.scales[:, expand]).astype(np.float64)


def _block_params(block: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale (and zero point) per row of one block (N, width)."""
    if symmetric:
        scale = np.abs(block).max(axis=1) / 7.0
        return np.where(scale > 0, scale, 1.0).astype(np.float32), None
    lo = np.minimum(block.min(axis=1), 0.0)
    hi = np.maximum(block.max(axis=1), 0.0)
    scale = ((hi - lo) / 15.0).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    zero = np.clip(np.rint(-lo / scale), 0, 15).astype(np.int64)
    return scale, zero


def _quantize_column(w: np.ndarray, scale: np.ndarray, zero: np.ndarray | None) -> np.ndarray:
    """Codes of one column (N,) with QuantizeLinear's arithmetic: rint(w / scale) + zero,
    saturated, the division in float32."""
    q = np.rint((w.astype(np.float32) / scale).astype(np.float64))
    if zero is None:
        return np.clip(q, -8, 7).astype(np.int64)
    return np.clip(q + zero, 0, 15).astype(np.int64)


def quantize_rtn(w: np.ndarray, block_size: int, symmetric: bool) -> BlockedWeights:
    """Round every weight to the nearest level of its block."""
    n, k = w.shape
    blocks = -(-k // block_size)
    codes = np.zeros((n, k), np.int64)
    scales = np.zeros((n, blocks), np.float32)
    zeros = None if symmetric else np.zeros((n, blocks), np.int64)
    for b in range(blocks):
        part = slice(b * block_size, min(k, (b + 1) * block_size))
        scale, zero = _block_params(w[:, part], symmetric)
        scales[:, b] = scale
        if zeros is not None:
            zeros[:, b] = zero
        for j in range(part.start, part.stop):
            codes[:, j] = _quantize_column(w[:, j], scale, zero)
    return BlockedWeights(codes, scales, zeros, block_size)


def quantize_gptq(w: np.ndarray, hessian: np.ndarray, block_size: int, symmetric: bool,
                  damping: float = 0.01) -> BlockedWeights:
    """GPTQ with per-block parameters; `hessian` is X^T X / rows of the layer input (K, K)."""
    n, k = w.shape
    work = np.array(w, dtype=np.float64)
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0  # inputs that never vary: their weights do not matter
    h[dead, dead] = 1.0
    work[:, dead] = 0.0
    h += damping * np.mean(np.diag(h)) * np.eye(k)
    # Upper Cholesky factor of H^-1: row i holds how column i's error moves later columns.
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    blocks = -(-k // block_size)
    codes = np.zeros((n, k), np.int64)
    scales = np.zeros((n, blocks), np.float32)
    zeros = None if symmetric else np.zeros((n, blocks), np.int64)
    scale = zero = None
    for i in range(k):
        b, start = divmod(i, block_size)
        if start == 0:
            scale, zero = _block_params(work[:, i:i + block_size], symmetric)
            scales[:, b] = scale
            if zeros is not None:
                zeros[:, b] = zero
        code = _quantize_column(work[:, i], scale, zero)
        codes[:, i] = code
        value = (code - (0 if zero is None else zero)).astype(np.float32) * scale
        error = (work[:, i] - value) / upper[i, i]
        work[:, i + 1:] -= np.outer(error, upper[i, i + 1:])
    return BlockedWeights(codes, scales, zeros, block_size)


def output_error(w: np.ndarray, quantized: BlockedWeights, hessian: np.ndarray) -> float:
    """Mean squared error of the layer output over the calibration rows:
    trace((W - Wq) H (W - Wq)^T) / N with H = X^T X / rows."""
    delta = np.asarray(w, np.float64) - quantized.dequantized()
    return float(np.einsum("nk,kj,nj->", delta, hessian, delta) / w.shape[0])
