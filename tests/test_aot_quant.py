"""When the generator lets a layer take the fast kernels' short requantisation, and the constants it
gives a filter pruned away entirely (pipeline/deploy/aot_quant.py). The kernels themselves are
checked against host TFLite Micro in QEMU by test_aot_kernels.py."""
from __future__ import annotations

import numpy as np

from pipeline.deploy.aot_quant import (NARROW_LIMIT, constant_filters, multiply_by_quantized_multiplier,
                                       narrow_accumulators)


def _rows_with_weight_sum(total: int) -> np.ndarray:
    """One row of int8 weights whose absolute values sum to ``total``."""
    full, rest = divmod(total, 127)
    return np.array([[127] * full + [-rest]], np.int8)


def test_a_layer_is_narrow_exactly_while_its_largest_accumulator_stays_under_two_to_the_thirty():
    rows = _rows_with_weight_sum(1000)  # 255 x 1000 from the inputs at most
    largest_bias = NARROW_LIMIT - 1 - 255 * 1000
    assert narrow_accumulators(rows, np.array([largest_bias]), [-7])
    assert narrow_accumulators(rows, np.array([-largest_bias]), [-7])
    assert not narrow_accumulators(rows, np.array([largest_bias + 1]), [-7])
    assert not narrow_accumulators(rows, np.array([0]), [0])  # a shift that does not divide
    assert not narrow_accumulators(np.concatenate([rows, rows]), np.array([0, 0]), [-7, 1])


def test_a_pruned_away_filter_gets_a_narrow_bias_and_multiplier_with_the_same_output():
    rng = np.random.default_rng(0)
    rows = np.zeros((40, 9), np.int8)
    rows[::2] = rng.integers(-127, 128, (20, 9))  # every other filter pruned away
    bias = rng.integers(-(1 << 31), 1 << 31, 40)
    pairs = [(int(rng.integers(1 << 30, 1 << 31)), int(rng.integers(-31, 0))) for _ in range(40)]
    for offset in (-128, -3, 127):
        new_bias, new_pairs = constant_filters(rows, bias, pairs, offset)
        for c in range(40):
            def output(b: int, pair: tuple[int, int]) -> int:
                return min(127, max(-128, multiply_by_quantized_multiplier(b, *pair) + offset))
            assert output(int(new_bias[c]), new_pairs[c]) == output(int(bias[c]), pairs[c])
            if c % 2 == 0:  # filters with weights keep their constants
                assert (new_bias[c], new_pairs[c]) == (bias[c], pairs[c])
        assert narrow_accumulators(rows[1::2], new_bias[1::2], [p[1] for p in new_pairs[1::2]])
        assert not narrow_accumulators(rows[1::2], bias[1::2], [p[1] for p in pairs[1::2]])


def test_the_requantisation_rounds_as_tflite_does():
    """TFLite's double rounding: the high half rounded to nearest (halves up), then the division by
    2^-shift rounded with halves away from zero."""
    assert multiply_by_quantized_multiplier(5, 1 << 30, -1) == 2  # 1.25: the high half 2.5 is 3, 3 / 2 is 2
    assert multiply_by_quantized_multiplier(-5, 1 << 30, -1) == -1  # -1.25: -2.5 is -2, -2 / 2 is -1
    assert multiply_by_quantized_multiplier(6, 1 << 30, -1) == 2  # 1.5, away from zero
    assert multiply_by_quantized_multiplier(-6, 1 << 30, -1) == -2
    assert multiply_by_quantized_multiplier(3, 1 << 30, 2) == 6  # shifts left first: 3 x 4 x 0.5
    assert multiply_by_quantized_multiplier(1 << 29, 1 << 30, 2) == -(1 << 30)  # 2^31 wraps to -2^31
