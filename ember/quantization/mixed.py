"""Searching a mixed-precision plan: which layer runs in fp32, fp16, int8 or int4.

The search works on measured tables, not on the model: per layer and precision, the noise the
layer adds to the model's output when it alone is quantized (`noise`, as a fraction of the
output's power: 10^(-SQNR/10)), the bytes of its weights, and its device time when measured.
Noise from different layers is close to independent, so a plan's output noise is predicted
as their sum; the caller checks the chosen plan on real data and tightens the budget when the
prediction was optimistic.

Two searches, both deterministic:

- `greedy_plan`: from all-float, repeatedly take the step (one layer one precision down)
  that saves the most bytes per unit of added noise, until the byte budget is met.
- `evolve_plan`: a seeded genetic search over whole plans (the greedy plan in the first
  population), whose fitness also weighs the measured device time, so that a layer whose
  quantized kernel is slower on this device stays float unless the budget needs its bytes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ember.errors import EmberError

__all__ = [
    "PRECISIONS", "PRECISION_BITS", "LayerCosts", "Budget", "plan_bytes", "plan_bits",
    "predicted_noise", "greedy_plan", "evolve_plan",
]

PRECISIONS = ("fp32", "fp16", "int8", "int4")  # widest first
PRECISION_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}


@dataclass(frozen=True)
class LayerCosts:
    """What each precision of one layer costs: output noise, weight bytes, device time."""

    name: str
    params: int  # weight elements
    noise: Mapping[str, float]  # precision -> added output noise power (fp32: 0)
    nbytes: Mapping[str, int]  # precision -> weight bytes, scales included
    seconds: Mapping[str, float] | None = None  # precision -> measured device time

    def choices(self) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if p in self.noise and p in self.nbytes)


@dataclass(frozen=True)
class Budget:
    """At most `max_bytes` of weights (scales and zero points included), at most `avg_bits`
    per weight element (the precisions' nominal widths, 32/16/8/4, averaged over the weight
    elements, as mixed-precision plans are usually compared), and at most `max_noise`
    predicted output noise power; None: no limit."""

    max_bytes: int | None = None
    avg_bits: float | None = None
    max_noise: float | None = None

    def excess(self, layers: Sequence[LayerCosts], plan: Mapping[str, str]) -> float:
        """How far the plan is over the byte and bit budgets (relative; 0 when it fits)."""
        over = 0.0
        if self.max_bytes is not None:
            over += max(0.0, plan_bytes(layers, plan) / max(self.max_bytes, 1) - 1.0)
        if self.avg_bits is not None:
            over += max(0.0, plan_bits(layers, plan) / self.avg_bits - 1.0)
        return over


Plan = dict[str, str]


def plan_bytes(layers: Sequence[LayerCosts], plan: Mapping[str, str]) -> int:
    return sum(layer.nbytes[plan[layer.name]] for layer in layers)


def plan_bits(layers: Sequence[LayerCosts], plan: Mapping[str, str]) -> float:
    """Average nominal bits per weight element (32, 16, 8 or 4 per layer, by its size)."""
    params = sum(layer.params for layer in layers)
    if not params:
        return 0.0
    return sum(layer.params * PRECISION_BITS[plan[layer.name]] for layer in layers) / params


def predicted_noise(layers: Sequence[LayerCosts], plan: Mapping[str, str]) -> float:
    return sum(layer.noise[plan[layer.name]] for layer in layers)


def _seconds(layers: Sequence[LayerCosts], plan: Mapping[str, str]) -> float | None:
    if any(layer.seconds is None or plan[layer.name] not in layer.seconds for layer in layers):
        return None
    return sum(layer.seconds[plan[layer.name]] for layer in layers)


def greedy_plan(layers: Sequence[LayerCosts], budget: Budget) -> Plan:
    """Lower the precision of the layer that saves the most bytes per unit of added noise,
    step by step, until the plan fits the byte and bit budgets. Raises when even the
    narrowest plan does not fit."""
    plan = {layer.name: layer.choices()[0] for layer in layers}
    while budget.excess(layers, plan) > 0:
        best: tuple[float, str, str] | None = None
        for layer in layers:
            options = layer.choices()
            at = options.index(plan[layer.name])
            if at + 1 >= len(options):
                continue
            step = options[at + 1]
            saved = layer.nbytes[plan[layer.name]] - layer.nbytes[step]
            saved += layer.params * (PRECISION_BITS[plan[layer.name]] - PRECISION_BITS[step]) / 8
            added = max(layer.noise[step] - layer.noise[plan[layer.name]], 1e-30)
            score = saved / added
            if best is None or score > best[0]:
                best = (score, layer.name, step)
        if best is None:
            raise EmberError(
                f"no plan fits the budget (max_bytes={budget.max_bytes}, avg_bits="
                f"{budget.avg_bits}): the narrowest precisions take "
                f"{plan_bytes(layers, plan)} bytes, {plan_bits(layers, plan):.2f} bits per "
                f"weight")
        plan[best[1]] = best[2]
    return plan


def _fitness(layers: Sequence[LayerCosts], plan: Plan, budget: Budget,
             base_noise: float, base_seconds: float | None, speed_weight: float) -> float:
    """Lower is better: noise relative to the greedy plan's, plus the weighted relative
    time; plans over the byte or noise budget are penalized by how far they are over."""
    noise = predicted_noise(layers, plan)
    score = noise / max(base_noise, 1e-30)
    seconds = _seconds(layers, plan)
    if base_seconds and seconds is not None:
        score += speed_weight * seconds / base_seconds
    over = budget.excess(layers, plan)
    if over > 0:  # the byte and bit budgets are hard: worse than any noise
        score += 1e9 * (1 + over)
    if budget.max_noise is not None and noise > budget.max_noise:
        score += 1e3 * (1 + noise / budget.max_noise)
    return score


def evolve_plan(layers: Sequence[LayerCosts], budget: Budget, *, seed: int = 0,
                population: int = 32, generations: int = 40, speed_weight: float = 0.5,
                start: Plan | None = None) -> Plan:
    """A seeded genetic search over plans: tournament selection, uniform crossover, one- or
    two-layer mutations, the best plan always kept. `start` (the greedy plan by default)
    is in the first population, so the result is never worse than it by the fitness."""
    if population < 2 or generations < 0:
        raise EmberError(f"population must be >= 2 and generations >= 0, got "
                         f"{population} and {generations}")
    rng = random.Random(seed)
    start = dict(start) if start is not None else greedy_plan(layers, budget)
    base_noise = predicted_noise(layers, start)
    base_seconds = _seconds(layers, start)
    names = [layer.name for layer in layers]
    options = {layer.name: layer.choices() for layer in layers}

    def fitness(plan: Plan) -> float:
        return _fitness(layers, plan, budget, base_noise, base_seconds, speed_weight)

    def mutate(plan: Plan) -> Plan:
        child = dict(plan)
        for name in rng.sample(names, k=min(len(names), rng.choice((1, 2)))):
            child[name] = rng.choice(options[name])
        return child

    pool = [start] + [mutate(start) for _ in range(population - 1)]
    for _ in range(generations):
        ranked = sorted(pool, key=fitness)
        next_pool = ranked[:2]  # elitism
        while len(next_pool) < population:
            a = min(rng.sample(ranked, k=min(3, len(ranked))), key=fitness)
            b = min(rng.sample(ranked, k=min(3, len(ranked))), key=fitness)
            child = {name: (a if rng.random() < 0.5 else b)[name] for name in names}
            next_pool.append(mutate(child) if rng.random() < 0.7 else child)
        pool = next_pool
    best = min(pool, key=fitness)
    return best if fitness(best) <= fitness(start) else start
