"""ember.quantize: calibrate a float ONNX model and write its quantized QDQ form.

    q = ember.quantize("model.onnx", calibration=batches, scheme="int8")
    q.model; q.plan; q.save("model.int8.onnx"); ember.compile(q)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ember.frontends.onnx import load_model
from ember.quantization.calibration import CalibrationStats, Progress, calibrate
from ember.quantization.debug import compare_tensors
from ember.quantization.onnx_edit import layers, name_nodes
from ember.quantization.plan import LayerPlan, QuantPlan
from ember.quantization.mixed import LayerCosts
from ember.quantization.sensitivity import (
    LayerTimer, Metric, MixedOptions, choose_plan, measure_layers,
)
from ember.quantization.qdq import (
    LayerWeights,
    QdqOptions,
    activation_tensors,
    build_qdq,
    gram_tensors,
)

__all__ = ["SCHEMES", "QuantizedModel", "quantize"]

log = logging.getLogger(__name__)

SCHEMES = ("int8", "int8-dynamic", "int4", "fp16", "mixed")
Feed = Mapping[str, np.ndarray]
_EVAL_BATCHES = 2  # calibration batches the mixed search measures layer noise on


@dataclass
class QuantizedModel:
    """A quantized model: the QDQ ModelProto, the per-layer plan and the statistics used."""

    model: onnx.ModelProto
    plan: QuantPlan
    stats: CalibrationStats
    scheme: str

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        onnx.save(self.model, str(path))
        return path

    def report(self) -> str:
        return f"scheme {self.scheme}, {self.stats.batches} calibration batches " \
               f"({self.stats.method})\n{self.plan.table()}"


def _scheme_precisions(model: onnx.ModelProto, scheme: str) -> dict[str, str]:
    precision = {"int8": "int8", "int8-dynamic": "int8", "int4": "int4", "fp16": "fp16"}[scheme]
    weights = {i.name: i for i in model.graph.initializer}
    found = {}
    for node in layers(model):
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        quantizable = weight is not None
        if scheme == "int4" and (node.op_type == "Conv" or weight is None or len(weight.dims) != 2):
            found[node.name] = "fp32"  # weight-only: nothing to do without a constant weight
        elif scheme == "int8-dynamic" and not quantizable:
            found[node.name] = "fp32"
        else:
            found[node.name] = precision
    return found


def quantize(
    model: str | os.PathLike | bytes | onnx.ModelProto,
    calibration: Iterable[Feed] | None = None,
    scheme: str = "int8",
    *,
    method: str = "minmax",
    block_size: int = 128,
    symmetric_activations: bool = False,
    int4_method: str = "auto",
    int4_symmetric: bool = True,
    keep_fp32: Sequence[str] = (),
    plan: QuantPlan | str | None = None,
    target: str | None = "cpu",
    progress: Progress | None = None,
    avg_bits: float | None = None,
    max_bytes: int | None = None,
    metric: Metric | None = None,
    max_drop: float | None = None,
    seed: int = 0,
    population: int = 32,
    generations: int = 40,
    device: str | None = None,
    measure_speed: bool | None = None,
    search_progress: Progress | None = None,
) -> QuantizedModel:
    """Quantize a float model with statistics from `calibration` (an iterable of feed dicts).

    scheme: "int8" (static), "int8-dynamic", "int4" (weight-only, `block_size` along K;
    `int4_method="gptq"` compensates rounding errors with the calibration inputs' Hessian,
    kept per layer only where it lowers the output error; "auto", the default, does so where
    the Hessians fit in 256 MiB, "rtn" only rounds to nearest), "fp16" (`keep_fp32`: op types or
    node names kept in float32 beyond fp16.KEEP_FP32). method: the activation observer.
    plan: a QuantPlan (or its JSON) whose per-layer precisions are used instead of the
    scheme's. target: where calibration runs (numpy by default, for determinism).
    progress(done, total) is called after each calibration batch.

    scheme "mixed" chooses each layer's precision (fp32, fp16, int8, int4) under a budget:
    `avg_bits` per weight and/or `max_bytes` of weights; with `metric(predict) -> score`
    (higher is better; predict(feed) returns the model's outputs) and `max_drop`, the plan
    is checked on the metric and tightened until the drop is within `max_drop`. Each layer's
    sensitivity is measured on the calibration batches, its time per precision on `device`
    (the default device when None; `measure_speed=False` skips it; other schemes measure
    the chosen precision of each layer only when `measure_speed=True`, for q.plan), then a
    greedy search and a seeded evolutionary one (`population`, `generations`) choose; see
    sensitivity.py.
    search_progress(done, total) follows the measuring."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, not {block_size}")
    source = name_nodes(load_model(model))
    if isinstance(plan, str):
        plan = QuantPlan.from_json(plan)
    mixed = scheme == "mixed" and plan is None
    if scheme == "mixed" and plan is None and avg_bits is None and max_bytes is None \
            and max_drop is None:
        raise ValueError("scheme 'mixed' needs a budget: avg_bits, max_bytes or max_drop "
                         "(with a metric)")
    if plan is not None:
        precisions = plan.precisions()
    elif mixed:
        precisions = _scheme_precisions(source, "int8")  # calibrate what any plan may need
    else:
        precisions = _scheme_precisions(source, scheme)
    options = QdqOptions(
        symmetric_activations=symmetric_activations, dynamic=scheme == "int8-dynamic",
        block_size=block_size, int4_symmetric=int4_symmetric, int4_method=int4_method,
        keep_fp32=tuple(keep_fp32), fp16_everywhere=scheme == "fp16" and plan is None)
    observed = activation_tensors(source, precisions, options)
    grams = gram_tensors(source, _scheme_precisions(source, "int4") if mixed else precisions,
                         options)
    if calibration is None and int4_method == "auto":
        grams = []  # weight-only int4 without data: round to nearest
    batches = [] if calibration is None else calibration
    first: list[Feed] = []
    if observed or grams:
        if calibration is None:
            raise ValueError(f"scheme {scheme!r} needs calibration batches")
        batches = _remember_first(calibration, first, _EVAL_BATCHES if mixed else 1)
        levels = 254 if symmetric_activations else 255
        stats = calibrate(source, batches, observed, method=method, levels=levels,
                          symmetric=symmetric_activations, gram_tensors=grams, target=target,
                          progress=progress)
    else:
        stats = CalibrationStats(method=method)
        first = list(_take_one(batches))
    costs: dict[str, LayerCosts] = {}
    if mixed:
        if not first:
            raise ValueError("scheme 'mixed' needs calibration batches")
        search = MixedOptions(avg_bits=avg_bits, max_bytes=max_bytes, metric=metric,
                              max_drop=max_drop, seed=seed, population=population,
                              generations=generations, device=device,
                              measure_speed=measure_speed is not False)
        measured = measure_layers(source, stats, first, options, search, target,
                                  search_progress)
        costs = {c.name: c for c in measured}
        precisions, facts = choose_plan(source, stats, measured, options, search, target)
        log.info("mixed plan: %s", facts)
    weights: dict[str, LayerWeights] = {}
    quantized = build_qdq(source, stats, precisions, options, weights)
    result = QuantizedModel(quantized, _make_plan(source, precisions, weights, scheme),
                            stats, scheme)
    timer = LayerTimer(source, stats, options, first[0], device, target) \
        if measure_speed and not mixed and first else None
    nodes = {node.name: node for node in layers(source)}
    for row in result.plan:
        found = costs.get(row.name)
        if found is not None and found.seconds is not None:
            row.device_seconds = found.seconds.get(row.precision)
        elif timer is not None:
            row.device_seconds = timer.seconds(nodes[row.name], row.precision)
    if first:
        _fill_sqnr(result, source, first[0], target)
    return result


def _remember_first(batches: Iterable[Feed], first: list[Feed], keep: int = 1
                    ) -> Iterable[Feed]:
    """Pass the batches through, keeping the first `keep` (the plan's SQNR is measured on
    the first; the mixed search measures layer noise on them)."""
    class Passing:
        def __len__(self) -> int:
            return len(batches)  # type: ignore[arg-type]

        def __iter__(self):
            for feed in batches:
                if len(first) < keep:
                    first.append(feed)
                yield feed

    return Passing() if hasattr(batches, "__len__") else Passing().__iter__()


def _take_one(batches: Iterable[Feed]) -> Iterable[Feed]:
    for feed in batches:
        return [feed]
    return []


def _make_plan(model: onnx.ModelProto, precisions: Mapping[str, str],
               weights: Mapping[str, LayerWeights], scheme: str) -> QuantPlan:
    rows = []
    for node in layers(model):
        w = weights.get(node.name, LayerWeights(node.name))
        note = w.note + "".join(f"; {k} error {v:.3g}" for k, v in w.errors.items())
        rows.append(LayerPlan(node.name, node.op_type, precisions.get(node.name, "fp32"),
                              w.bytes_before, w.bytes_after or w.bytes_before, note=note))
    return QuantPlan(rows, scheme)


def _fill_sqnr(result: QuantizedModel, source: onnx.ModelProto, feed: Feed,
               target: str | None) -> None:
    outputs = {node.name: node.output[0] for node in layers(source)}
    feed = {k: np.asarray(v) for k, v in feed.items()}
    errors = {e.name: e.sqnr_db for e in
              compare_tensors(source, result.model, feed, list(outputs.values()), target)}
    for row in result.plan:
        row.sqnr_db = errors.get(outputs[row.name])

