"""Kernel builders of the nn family: pooling (`codegen/pool.py`) and the row kernels of
softmax and the normalizations, plus LRN (`codegen/norm.py`). Importing this module
registers them all."""

from __future__ import annotations

from ember.codegen import norm, pool  # noqa: F401  (registration happens on import)
from ember.codegen.norm import build_lrn, build_norm, build_softmax
from ember.codegen.pool import build_global_pool, build_pool
from ember.codegen.rows import RowParams, choose_row_params

__all__ = [
    "build_pool", "build_global_pool", "build_softmax", "build_norm", "build_lrn",
    "RowParams", "choose_row_params",
]
