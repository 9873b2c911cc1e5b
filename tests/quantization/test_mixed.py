"""The mixed-precision searches on measured tables: budgets respected, deterministic, never
worse than greedy, and a slow quantized kernel kept float when the bytes allow."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ember.errors import EmberError
from ember.quantization.mixed import (
    Budget, LayerCosts, evolve_plan, greedy_plan, plan_bits, predicted_noise,
)


def _layer(name: str, params: int, sensitivity: float, seconds=None) -> LayerCosts:
    noise = {"fp32": 0.0, "fp16": 1e-7 * sensitivity, "int8": 1e-4 * sensitivity,
             "int4": 1e-2 * sensitivity}
    nbytes = {"fp32": 4 * params, "fp16": 2 * params, "int8": params + 4 * (params // 64),
              "int4": params // 2 + 4 * (params // 32)}
    return LayerCosts(name, params, noise, nbytes, seconds)


layer_tables = st.lists(
    st.tuples(st.integers(64, 4096), st.floats(0.01, 100.0)), min_size=1, max_size=12,
).map(lambda rows: [_layer(f"l{i}", p * 64, s) for i, (p, s) in enumerate(rows)])


@settings(max_examples=60, deadline=None)
@given(layer_tables, st.floats(5.0, 32.0))
def test_greedy_meets_the_bit_budget(layers, avg_bits):
    plan = greedy_plan(layers, Budget(avg_bits=avg_bits))
    assert plan_bits(layers, plan) <= avg_bits + 1e-9


@settings(max_examples=30, deadline=None)
@given(layer_tables, st.floats(5.0, 16.0), st.integers(0, 3))
def test_evolution_is_deterministic_within_budget_and_no_worse_than_greedy(layers, bits, seed):
    budget = Budget(avg_bits=bits)
    greedy = greedy_plan(layers, budget)
    first = evolve_plan(layers, budget, seed=seed, population=12, generations=10)
    assert first == evolve_plan(layers, budget, seed=seed, population=12, generations=10)
    assert plan_bits(layers, first) <= bits + 1e-9
    assert predicted_noise(layers, first) <= predicted_noise(layers, greedy) * (1 + 1e-9)


def test_greedy_narrows_the_least_sensitive_layer_first():
    layers = [_layer("sensitive", 4096, 100.0), _layer("robust", 4096, 0.01)]
    order = ("fp32", "fp16", "int8", "int4")
    for bits in (28, 20, 12, 8, 6):
        plan = greedy_plan(layers, Budget(avg_bits=bits))
        assert order.index(plan["robust"]) >= order.index(plan["sensitive"]), (bits, plan)
    assert greedy_plan(layers, Budget(avg_bits=21)) == {"sensitive": "fp32", "robust": "int8"}


def test_a_layer_whose_quantized_kernel_is_slower_stays_float_when_bytes_allow():
    fast = {"fp32": 1.0, "fp16": 1.0, "int8": 0.5, "int4": 0.4}
    slow = {"fp32": 1.0, "fp16": 1.0, "int8": 3.0, "int4": 3.0}
    layers = [_layer("a", 4096, 1.0, fast), _layer("b", 4096, 1.0, slow),
              _layer("c", 4096, 1.0, fast)]
    budget = Budget(avg_bits=24)  # room to keep one layer in fp32 and one in fp16
    plan = evolve_plan(layers, budget, seed=0, population=24, generations=30,
                       speed_weight=5.0)
    assert plan["b"] in ("fp32", "fp16")
    assert plan_bits(layers, plan) <= 24


def test_an_impossible_budget_names_the_bytes():
    layers = [_layer("a", 4096, 1.0)]
    with pytest.raises(EmberError, match="no plan fits the budget"):
        greedy_plan(layers, Budget(avg_bits=1.0))
