"""The AOT engine's requantisation constants, worked out as TFLite Micro's Prepare does.

TFLite's multipliers and shifts (`quantize_multiplier`), fused-activation clamps and MEAN's
scaling, the exact integer requantisation the kernels compute (`multiply_by_quantized_multiplier`,
TFLite's double rounding), and what lets the fast kernels use a shorter form of it: a layer whose
every accumulator is provably narrow (`narrow_accumulators`), helped by giving each filter that was
pruned away entirely constants that are narrow and give the same output (`constant_filters`).
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.compress.tflite_graph import ACTIVATIONS, Tensor
from pipeline.errors import UserError

NARROW_LIMIT = 1 << 30  # accumulators within [-2^30, 2^30): twice them fits int32 (aot_simd.h)
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: real = q * 2^(shift - 31), q in [2^30, 2^31)."""
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)
    q = round_half_away(fraction * (1 << 31))
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return int(q), int(shift)


def round_half_away(x: float) -> int:
    """Rounds to the nearest integer, halves away from zero (TFLite's TfLiteRound)."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def activation_range(activation: int, out: Tensor) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: the clamp of a fused activation (float32 maths)."""
    kind = ACTIVATIONS.get(activation)
    if kind is None:
        raise UserError(f"fused activation {activation} is not supported by the AOT engine")

    def quantize(value: float) -> int:
        return out.zero_point + round_half_away(float(np.float32(value) / np.float32(out.scale)))

    lo, hi = {"none": (-128, 127), "relu": (quantize(0.0), 127), "relu6": (quantize(0.0), quantize(6.0)),
              "relu_n1_to_1": (quantize(-1.0), quantize(1.0))}[kind]
    return max(-128, lo), min(127, hi)


def mean_multiplier(real: float, count: int) -> tuple[int, int]:
    """TFLite Micro's int8 MEAN rescaling: input/output scale folded with 1/count in integers."""
    multiplier, shift = quantize_multiplier(real)
    extra = min(count.bit_length() - 1, 32, 31 + shift)
    return int((multiplier << extra) // count), shift - extra


def _wrap32(value: int) -> int:
    return (value - _INT32_MIN) % (1 << 32) + _INT32_MIN


def multiply_by_quantized_multiplier(x: int, multiplier: int, shift: int) -> int:
    """TFLite's MultiplyByQuantizedMultiplier on int32 x: the integer every kernel requantises to."""
    a = _wrap32(x << max(shift, 0))
    right = max(-shift, 0)
    if a == multiplier == _INT32_MIN:
        high = _INT32_MAX
    else:
        nudged = a * multiplier + ((1 << 30) if a * multiplier >= 0 else 1 - (1 << 30))
        high = abs(nudged) // (1 << 31) * (1 if nudged >= 0 else -1)  # C's division, toward zero
    mask = (1 << right) - 1
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if (high & mask) > threshold else 0)


def narrow_accumulators(rows: np.ndarray, bias: np.ndarray, shifts: list[int]) -> bool:
    """Whether the fast kernels' short requantisation (aot_simd.h, requant_apply_narrow) gives
    TFLite's integers for every input: each channel's shift is negative, and its accumulator,
    bias + sum of w x (x - zero point), lies within [-2^30, 2^30) whatever the int8 input and its
    zero point (|x - zero point| <= 255).

    Args:
        rows: the weights, one row per output channel ([out][...]).
        bias: the int32 biases, one per output channel.
        shifts: each channel's requantisation shift (TFLite's: negative divides).
    """
    channels = rows.shape[0]
    weight_sums = np.abs(rows.reshape(channels, -1).astype(np.int64)).sum(axis=1)
    return bool(max(shifts) < 0 and np.max(np.abs(bias.astype(np.int64)) + 255 * weight_sums) < NARROW_LIMIT)


def constant_filters(rows: np.ndarray, bias: np.ndarray, pairs: list[tuple[int, int]],
                     output_offset: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The biases and (multiplier, shift) pairs with each filter pruned away entirely given ones that
    are narrow and give its output.

    TFLite gives an all-zero filter a tiny scale, so its bias is huge (often at the int32 limits) and
    its shift near -31, which would keep its layer from the short requantisation. Every output of such
    a channel is the same integer v + output_offset, v = its bias requantised (clamped to int8: exact,
    as the kernels clamp within that). A bias of 4 v with the multiplier 2^30 and shift -1 (times 1/4)
    gives v exactly, and is narrow.

    Args:
        rows: the weights, one row per output channel ([out][...]).
        bias: the int32 biases, one per output channel.
        pairs: each channel's (multiplier, shift), one per row (else nothing changes).
        output_offset: the output's zero point.
    """
    channels = rows.shape[0]
    biases, pairs = bias.astype(np.int64).copy(), list(pairs)
    if len(pairs) != channels:
        return biases, pairs
    for c in np.flatnonzero(~rows.reshape(channels, -1).any(axis=1)):
        multiplier, shift = pairs[c]
        out = min(127, max(-128, multiply_by_quantized_multiplier(int(biases[c]), multiplier, shift) + output_offset))
        biases[c], pairs[c] = 4 * (out - output_offset), (1 << 30, -1)
    return biases, pairs
