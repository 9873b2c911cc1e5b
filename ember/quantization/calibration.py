"""Calibration: run the float model on the user's batches and observe the tensors to quantize.

The model runs through ember itself: the observed tensors become extra graph outputs of a
copy of the model, compiled once for the target (numpy by default, `target="cpu"`, so that
the ranges do not depend on a device's rounding). Each batch's values go to streaming
observers (observers.py) and are dropped, so memory does not grow with the number of
batches. Layers that the int4 error compensation needs also accumulate the Gram matrix of
their input, X^T X (K x K, float64), the Hessian of the layer's squared output error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from ember.compiler import compile as compile_model
from ember.quantization.observers import Observer, make_observer

__all__ = ["CalibrationStats", "Progress", "calibrate", "progress_bar", "with_outputs",
           "tensor_types"]

Progress = Callable[[int, int | None], None]  # (batches done, total batches or None)
Feed = Mapping[str, np.ndarray]


@dataclass
class CalibrationStats:
    """Plain statistics: the range of each observed tensor and the input Gram matrices."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    hessians: dict[str, np.ndarray] = field(default_factory=dict)  # tensor -> X^T X / rows
    batches: int = 0
    method: str = "minmax"


def _inferred(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    return {info.name: info for info in (*graph.input, *graph.output, *graph.value_info)
            if info.type.HasField("tensor_type")}


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type (TensorProto enum) of every tensor whose type ONNX can infer."""
    types = {name: info.type.tensor_type.elem_type for name, info in _inferred(model).items()}
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of the model whose graph also outputs the tensors `names`, typed as ONNX's
    shape inference finds them (dims it cannot fix stay symbolic)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    inferred = _inferred(model)
    for name in names:
        if name in present:
            continue
        info = inferred.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            raise ValueError(f"cannot observe tensor {name!r}: ONNX shape inference does not "
                             "give its rank")
        copy.graph.output.append(info)
        present.add(name)
    return copy


def calibrate(
    model: onnx.ModelProto,
    batches: Iterable[Feed],
    tensors: Sequence[str],
    *,
    method: str = "minmax",
    levels: int = 255,
    symmetric: bool = False,
    gram_tensors: Sequence[str] = (),
    target: str | None = "cpu",
    progress: Progress | None = None,
    bins: int = 2048,
    percentile: float = 99.99,
) -> CalibrationStats:
    """Observe `tensors` (and the Gram matrix of `gram_tensors`) over every batch.

    `levels` and `symmetric` are those of the activations' quantized type, which the
    entropy and MSE searches need (255 for uint8, 254 for symmetric int8)."""

    initializers = {init.name for init in model.graph.initializer}
    wanted = [t for t in dict.fromkeys([*tensors, *gram_tensors]) if t not in initializers]
    graph_inputs = {i.name for i in model.graph.input}
    computed = [t for t in wanted if t not in graph_inputs]
    compiled = compile_model(with_outputs(model, computed), target=target)
    observers: dict[str, Observer] = {t: make_observer(method, bins, percentile)
                                      for t in tensors if t not in initializers}
    grams: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    done = 0
    for feed in batches:
        feed = {k: np.asarray(v) for k, v in feed.items()}
        values = dict(compiled(**feed))
        values.update({k: v for k, v in feed.items() if k in wanted})
        for name, observer in observers.items():
            observer.update(values[name])
        for name in gram_tensors:
            if name in initializers:
                continue
            x = np.asarray(values[name], dtype=np.float64)
            x = x.reshape(-1, x.shape[-1])
            grams[name] = grams.get(name, 0.0) + x.T @ x
            rows[name] = rows.get(name, 0) + x.shape[0]
        done += 1
        if progress is not None:
            progress(done, total)
    if done == 0:
        raise ValueError("calibration needs at least one batch")
    ranges = {name: obs.range(levels, symmetric) for name, obs in observers.items()}
    hessians = {name: gram / rows[name] for name, gram in grams.items()}
    return CalibrationStats(ranges, hessians, done, method)


def progress_bar(description: str = "calibrating") -> Progress:
    """A `progress` callback that draws a tqdm bar over the batches (for the command line)."""
    from tqdm import tqdm

    bar: list[tqdm] = []

    def update(done: int, total: int | None) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc=description, unit="batch"))
        bar[0].update(done - bar[0].n)
        if total is not None and done >= total:
            bar[0].close()

    return update
