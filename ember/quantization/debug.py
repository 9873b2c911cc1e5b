"""Finding the layer that hurts: the SQNR of every tensor the float and the quantized model
share, on one batch, worst first.

The QDQ writer keeps tensor names (a quantized tensor is the DequantizeLinear's output under
the float tensor's name), so the two models are compared name by name. The quantized model
runs through ember; where ember cannot run it (an op it does not import), through
onnxruntime when that is installed, so that the comparison does not depend on the model
being one ember compiles.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from ember.compiler import compile as compile_model
from ember.errors import EmberError
from ember.quantization.calibration import tensor_types, with_outputs

__all__ = ["TensorError", "sqnr_db", "run_model", "compare_tensors", "format_errors"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorError:
    name: str
    sqnr_db: float  # 10 log10(signal power / error power); inf when identical
    max_abs_error: float


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    ref = np.asarray(reference, np.float64)
    err = ref - np.asarray(actual, np.float64)
    noise = float(np.mean(err * err)) if err.size else 0.0
    signal = float(np.mean(ref * ref)) if ref.size else 0.0
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def run_model(model: onnx.ModelProto, feed: Mapping[str, np.ndarray], outputs: Sequence[str],
              target: str | None = "cpu") -> dict[str, np.ndarray]:
    """The values of `outputs` (graph outputs or inner tensors) for one feed."""

    extended = with_outputs(model, outputs)
    try:
        compiled = compile_model(extended, target=target)
        return {k: v for k, v in compiled(**feed).items() if k in outputs}
    except EmberError as exc:
        try:
            import onnxruntime
        except ImportError:
            raise exc from None
        log.info("ember cannot run the model (%s); comparing with onnxruntime", exc)
        session = onnxruntime.InferenceSession(extended.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        return dict(zip(outputs, session.run(list(outputs), dict(feed))))


def compare_tensors(float_model: onnx.ModelProto, quantized: onnx.ModelProto,
                    feed: Mapping[str, np.ndarray], names: Sequence[str] | None = None,
                    target: str | None = "cpu") -> list[TensorError]:
    """SQNR of each shared float tensor (or of `names`), lowest (worst) first."""
    if names is None:
        float_types = tensor_types(float_model)
        quant_types = tensor_types(quantized)
        produced = {out for node in float_model.graph.node for out in node.output}
        names = [n for n in produced if n in quant_types
                 and float_types.get(n) == onnx.TensorProto.FLOAT]
    names = list(names)
    expected = run_model(float_model, feed, names, target)
    actual = run_model(quantized, feed, names, target)
    found = [TensorError(n, sqnr_db(expected[n], actual[n]),
                         float(np.max(np.abs(expected[n].astype(np.float64)
                                             - actual[n].astype(np.float64)), initial=0.0)))
             for n in names]
    return sorted(found, key=lambda e: e.sqnr_db)


def format_errors(errors: Sequence[TensorError], limit: int = 20) -> str:
    width = max([len(e.name) for e in errors[:limit]] + [6])
    lines = [f"{'tensor'.ljust(width)}  SQNR dB  max |error|"]
    lines += [f"{e.name.ljust(width)}  {e.sqnr_db:7.1f}  {e.max_abs_error:.3g}"
              for e in errors[:limit]]
    return "\n".join(lines)
