"""Quantized accuracy on models trained on real data (scikit-learn's digits and
breast-cancer sets, trained by examples/train_quant_models.py): the drop in held-out
accuracy against float32, per scheme, on the numpy executor and the default device.

The bars (accuracy points lost against float32): int8 static <= 0.5, int4 weight-only
<= 1.5, mixed at <= 5 average bits <= 0.5. One held-out example is 0.22 points of digits'
450 and 0.70 of breast cancer's 143, so for breast cancer 0.5 means no flip at all."""

from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.quantization.mixed import PRECISION_BITS
from tests.example_models import EXAMPLE_MODEL_NAMES, load_example

MAX_DROP = {"int8": 0.005, "int4": 0.015, "mixed": 0.005}
CALIBRATION_BATCH = 16


def calibration(example) -> list[dict[str, np.ndarray]]:
    x = np.asarray(example.calib_x)
    return [{"input": x[i:i + CALIBRATION_BATCH]} for i in range(0, len(x), CALIBRATION_BATCH)]


def accuracy(model, example, target) -> float:
    compiled = ember.compile(model, target=target)
    return example.accuracy_of(compiled(input=np.asarray(example.test_x))["logits"])


def metric_of(example):
    def metric(predict) -> float:
        return example.accuracy_of(predict({"input": np.asarray(example.test_x)})["logits"])
    return metric


def weighted_bits(plan) -> float:
    """Nominal bits per weight element of a plan (its float32 bytes count the elements)."""
    params = {row.name: row.weight_bytes_before // 4 for row in plan}
    return sum(params[row.name] * PRECISION_BITS[row.precision] for row in plan) / \
        sum(params.values())


@pytest.mark.parametrize("name", EXAMPLE_MODEL_NAMES)
@pytest.mark.parametrize("scheme", ["int8", "int4", "mixed"])
def test_quantized_accuracy_drop_is_within_the_bar(name, scheme, any_target):
    example = load_example(name)
    float_accuracy = accuracy(example.path, example, any_target)
    options = {"block_size": 32} if scheme == "int4" else {}
    if scheme == "mixed":
        options = {"avg_bits": 5, "metric": metric_of(example), "max_drop": MAX_DROP["mixed"],
                   "measure_speed": False, "block_size": 32}
    q = ember.quantize(example.path, calibration=calibration(example), scheme=scheme,
                       **options)
    got = accuracy(q, example, any_target)
    print(f"{name} {scheme} on {any_target}: float {float_accuracy:.4f}, quantized {got:.4f}")
    assert float_accuracy - got <= MAX_DROP[scheme] + 1e-9, (float_accuracy, got)
    if scheme == "mixed":
        assert weighted_bits(q.plan) <= 5.0
        assert {row.precision for row in q.plan} <= set(PRECISION_BITS)
    before, after = q.plan.weight_bytes
    assert after < before / (3 if scheme == "int8" else 2)
