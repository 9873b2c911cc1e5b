"""Measuring what each layer's precision costs, and choosing a mixed-precision plan.

Per layer and precision (fp16, int8, int4 where the layer allows it):

- noise: quantize that layer alone (build_qdq with one precision set), run the model on a few
  calibration batches and take the output error power relative to the float output's power,
  summed over the outputs (10^(-SQNR/10)). Runs on the numpy executor, like calibration.
- bytes: the weight's bytes at that precision, scales and zero points included.
- device time: the layer alone, as a one-layer model with its quantize/dequantize nodes,
  compiled for the device and timed (median of a few calls). Layers of the same shape and
  attributes share one measurement.

`choose_plan` then searches (mixed.py): greedy by noise per byte saved, then the evolutionary
search that also weighs device time. With a user metric and `max_drop`, the chosen plan is
checked on the metric itself; while it drops more than allowed, the noise budget is halved
and the search runs again (greedy's plan is in every search's first population, and the
budget's penalty steers the search below the cap).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ember.compiler import compile as compile_model
from ember.errors import EmberError
from ember.quantization.calibration import CalibrationStats
from ember.quantization.debug import run_model
from ember.quantization.mixed import (
    Budget, LayerCosts, evolve_plan, greedy_plan, plan_bits, predicted_noise,
)
from ember.quantization.onnx_edit import layers, opset_of
from ember.quantization.qdq import QdqOptions, build_qdq, weight_axis

__all__ = ["MixedOptions", "LayerTimer", "layer_bytes", "measure_layers", "choose_plan",
           "Metric"]

log = logging.getLogger(__name__)

Feed = Mapping[str, np.ndarray]
Predict = Callable[[Feed], dict[str, np.ndarray]]
Metric = Callable[[Predict], float]  # metric(predict) -> score, higher is better


@dataclass(frozen=True)
class MixedOptions:
    avg_bits: float | None = None
    max_bytes: int | None = None
    metric: Metric | None = None
    max_drop: float | None = None
    seed: int = 0
    population: int = 32
    generations: int = 40
    speed_weight: float = 0.5
    device: str | None = None  # where layer times are measured; None: the default device
    measure_speed: bool = True
    eval_batches: int = 2  # calibration batches the noise is measured on
    max_rounds: int = 6  # searches while the metric drops too much


def layer_bytes(weight: np.ndarray, node: onnx.NodeProto, precision: str,
                block_size: int, int4_symmetric: bool) -> int:
    """Bytes of a layer's weight at `precision`: values plus scales and zero points."""
    params = int(weight.size)
    if precision == "fp32":
        return 4 * params
    if precision == "fp16":
        return 2 * params
    out_axis, k_axis = weight_axis(node, weight.ndim)
    channels = int(weight.shape[out_axis])
    if precision == "int8":
        return params + 5 * channels  # float32 scale and int8 zero point per channel
    blocks = channels * math.ceil(params / channels / block_size)
    zeros = 0 if int4_symmetric else math.ceil(blocks / 2)
    return math.ceil(params / 2) + 4 * blocks + zeros


def _choices(node: onnx.NodeProto, weight: np.ndarray | None) -> tuple[str, ...]:
    if weight is None:
        return ("fp32", "fp16", "int8") if node.op_type != "Conv" else ("fp32", "fp16", "int8")
    if node.op_type == "Conv" or weight.ndim != 2:
        return ("fp32", "fp16", "int8")
    return ("fp32", "fp16", "int8", "int4")


def _relative_noise(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> float:
    total = 0.0
    for name, want in expected.items():
        want64 = np.asarray(want, np.float64)
        err = want64 - np.asarray(got[name], np.float64)
        signal = float(np.mean(want64 * want64)) or 1e-30
        total += float(np.mean(err * err)) / signal
    return total


def _outputs(model: onnx.ModelProto, feeds: Sequence[Feed], target: str | None
             ) -> list[dict[str, np.ndarray]]:
    compiled = compile_model(model, target=target)
    return [dict(compiled(**{k: np.asarray(v) for k, v in feed.items()})) for feed in feeds]


def _noise(model: onnx.ModelProto, feeds: Sequence[Feed], reference, target) -> float:
    got = _outputs(model, feeds, target)
    return statistics.fmean(_relative_noise(r, g) for r, g in zip(reference, got))


# -- device time of one layer -----------------------------------------------------------------
def _one_layer_model(source: onnx.ModelProto, node: onnx.NodeProto,
                     shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """The layer alone: its node, its constant inputs, its data input as the graph input."""
    initializers = {init.name: init for init in source.graph.initializer}
    data = node.input[0]
    inits = [initializers[name] for name in node.input[1:] if name in initializers]
    graph = helper.make_graph(
        [node], f"layer_{node.name}",
        [helper.make_tensor_value_info(data, onnx.TensorProto.FLOAT, list(shapes[data]))],
        [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT,
                                       list(shapes[node.output[0]]))],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset_of(source))])


def _time_model(model: onnx.ModelProto, feed: Feed, device: str | None, repeat: int = 5
                ) -> float:
    compiled = compile_model(model, target=device)
    compiled(**feed)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        compiled(**feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _layer_key(node: onnx.NodeProto, source: onnx.ModelProto,
               shapes: Mapping[str, tuple[int, ...]]) -> tuple:
    initializers = {init.name: tuple(init.dims) for init in source.graph.initializer}
    return (node.op_type, shapes[node.input[0]],
            tuple(initializers.get(name) for name in node.input[1:]),
            tuple(sorted((a.name, str(helper.get_attribute_value(a)))
                         for a in node.attribute)))


# -- measuring --------------------------------------------------------------------------------
class LayerTimer:
    """Device time of single layers at a precision: the layer as a one-layer model with its
    quantize/dequantize nodes, compiled for `device` and timed on the input it sees on
    `feed`. Layers of one shape and attributes share a measurement."""

    def __init__(self, source: onnx.ModelProto, stats: CalibrationStats, qdq: QdqOptions,
                 feed: Feed, device: str | None, target: str | None = "cpu") -> None:
        self.source, self.stats, self.qdq, self.device = source, stats, qdq, device
        nodes = layers(source)
        names = sorted({n.input[0] for n in nodes} | {n.output[0] for n in nodes})
        self.seen = run_model(source, feed, names, target)
        self.shapes = {name: tuple(np.asarray(v).shape) for name, v in self.seen.items()}
        self.constants = {init.name for init in source.graph.initializer}
        self.timed: dict[tuple, float] = {}

    def seconds(self, node: onnx.NodeProto, precision: str) -> float | None:
        """None for a layer without a constant weight (nothing to quantize)."""
        if len(node.input) < 2 or node.input[1] not in self.constants:
            return None
        key = (_layer_key(node, self.source, self.shapes), precision)
        if key not in self.timed:
            layer = _one_layer_model(self.source, node, self.shapes)
            if precision != "fp32":
                layer = build_qdq(layer, self.stats, {node.name: precision}, self.qdq)
            sample = {node.input[0]: np.asarray(self.seen[node.input[0]], np.float32)}
            self.timed[key] = _time_model(layer, sample, self.device)
        return self.timed[key]


def measure_layers(source: onnx.ModelProto, stats: CalibrationStats, feeds: Sequence[Feed],
                   qdq: QdqOptions, options: MixedOptions, target: str | None = "cpu",
                   progress: Callable[[int, int], None] | None = None) -> list[LayerCosts]:
    """The noise, bytes and (optionally) device time of every layer at every precision."""
    initializers = {init.name: numpy_helper.to_array(init) for init in source.graph.initializer}
    reference = _outputs(source, feeds, target)
    timer = LayerTimer(source, stats, qdq, feeds[0], options.device, target) \
        if options.measure_speed else None
    nodes = layers(source)
    costs = []
    steps = sum(len(_choices(n, initializers.get(n.input[1]))) for n in nodes)
    done = 0
    for node in nodes:
        weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
        noise, nbytes, seconds = {"fp32": 0.0}, {}, {}
        for precision in _choices(node, weight):
            nbytes[precision] = 0 if weight is None else layer_bytes(
                weight, node, precision, qdq.block_size, qdq.int4_symmetric)
            if precision != "fp32":
                variant = build_qdq(source, stats, {node.name: precision}, qdq)
                noise[precision] = _noise(variant, feeds, reference, target)
            measured = timer.seconds(node, precision) if timer is not None else None
            if measured is not None:
                seconds[precision] = measured
            done += 1
            if progress is not None:
                progress(done, steps)
        params = int(weight.size) if weight is not None else 0
        costs.append(LayerCosts(node.name, params, noise, nbytes, seconds or None))
        log.info("layer %s: noise %s, bytes %s, seconds %s", node.name, noise, nbytes,
                 seconds)
    return costs


# -- choosing ---------------------------------------------------------------------------------
def _metric_of(model: onnx.ModelProto, metric: Metric, target: str | None) -> float:
    compiled = compile_model(model, target=target)

    def predict(feed: Feed) -> dict[str, np.ndarray]:
        return dict(compiled(**{k: np.asarray(v) for k, v in feed.items()}))

    return float(metric(predict))


def choose_plan(source: onnx.ModelProto, stats: CalibrationStats, costs: Sequence[LayerCosts],
                qdq: QdqOptions, options: MixedOptions, target: str | None = "cpu"
                ) -> tuple[dict[str, str], dict[str, float]]:
    """The plan (layer -> precision) and what was measured on the way (`float_metric`,
    `metric`, `predicted_noise`, `avg_bits`, `rounds`)."""
    if options.max_drop is not None and options.metric is None:
        raise EmberError("max_drop needs a metric: pass metric=fn(predict) -> score")
    greedy = greedy_plan(costs, Budget(options.max_bytes, options.avg_bits))
    # The evolutionary search may trade noise for speed, up to half again greedy's noise.
    cap = max(predicted_noise(costs, greedy) * 1.5, 1e-12)
    facts: dict[str, float] = {}
    base = _metric_of(source, options.metric, target) if options.metric else None
    if base is not None:
        facts["float_metric"] = base
    for round_ in range(1, options.max_rounds + 1):
        budget = Budget(options.max_bytes, options.avg_bits, cap)
        plan = evolve_plan(costs, budget, seed=options.seed + round_ - 1,
                           population=options.population, generations=options.generations,
                           speed_weight=options.speed_weight, start=greedy)
        if budget.excess(costs, plan) > 0:
            plan = greedy  # greedy fits the bytes and bits; the search found nothing better
        facts.update(rounds=round_, predicted_noise=predicted_noise(costs, plan),
                     avg_bits=plan_bits(costs, plan))
        if base is None or options.max_drop is None:
            break
        score = _metric_of(build_qdq(source, stats, plan, qdq), options.metric, target)
        facts["metric"] = score
        if base - score <= options.max_drop:
            break
        log.info("plan drops the metric by %.4g (> %.4g); halving the noise budget",
                 base - score, options.max_drop)
        cap = predicted_noise(costs, plan) / 2
    else:
        raise EmberError(
            f"no plan within the budget (avg_bits={options.avg_bits}, max_bytes="
            f"{options.max_bytes}) keeps the metric drop <= {options.max_drop}: the last of "
            f"{options.max_rounds} searches drops {base - facts['metric']:.4g} (metric "
            f"{facts['metric']:.4g} vs float {base:.4g}); allow more bits or a larger "
            f"max_drop")
    return plan, facts
