"""The AOT engine's fast kernels compute exactly what its portable reference kernels and host
TFLite Micro compute, on shapes chosen to reach every path: padding, stride, dilation, depth
multipliers, odd channel counts, kernels wider than tall, and block-sparse rows with whole
filters pruned; on both cores (the M4's DSP path and the M0's plain C), run in QEMU.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import tf_keras as keras

from pipeline import aot, tflite_model
from pipeline.device import run_device

LAYERS = {
    "padded": [("conv", dict(filters=5, kernel_size=3, padding="same"), 0.0),
               ("conv", dict(filters=11, kernel_size=4, padding="same"), 0.6),
               ("depthwise", dict(kernel_size=3, depth_multiplier=2, strides=2, padding="same"), 0.0),
               ("conv", dict(filters=7, kernel_size=1), 0.7)],
    "strided_dilated": [("conv", dict(filters=3, kernel_size=(3, 5), strides=2, padding="same"), 0.5),
                        ("conv", dict(filters=9, kernel_size=3, dilation_rate=2, padding="same"), 0.4),
                        ("conv", dict(filters=6, kernel_size=(2, 3), strides=(2, 1)), 0.0),
                        ("depthwise", dict(kernel_size=(3, 2), depth_multiplier=1, dilation_rate=(1, 2),
                                           padding="same"), 0.0)],
    # blocks of 16 that divide each run (3 x 16 inputs): the aligned interior and border walks;
    # depth multiplier 1 over 6 channels: four lanes and a remainder of two
    # the first layer's rows (5 x 5 x 2) are not a whole number of blocks per run: the general walk
    "blocks_of_16": [("conv", dict(filters=16, kernel_size=5, padding="same"), 0.7),
                     ("conv", dict(filters=10, kernel_size=3, padding="same"), 0.8),
                     ("conv", dict(filters=6, kernel_size=1), 0.5),
                     ("depthwise", dict(kernel_size=3, depth_multiplier=1, padding="same"), 0.0)],
}
INPUTS = {"padded": (9, 7, 3), "strided_dilated": (13, 12, 5), "blocks_of_16": (8, 8, 2)}
BLOCK = {"padded": 4, "strided_dilated": 4, "blocks_of_16": 16}


def _prune_blocks(kernel: np.ndarray, sparsity: float, block: int, rng: np.random.Generator) -> np.ndarray:
    """Zeroes random blocks of weights along each filter's [kh][kw][in] row, and one whole filter."""
    if sparsity == 0:
        return kernel
    rows = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1).copy()
    for row in rows:
        for start in range(0, row.size, block):
            if rng.random() < sparsity:
                row[start:start + block] = 0
    rows[rng.integers(len(rows))] = 0
    return np.moveaxis(rows.reshape(kernel.shape[-1], *kernel.shape[:-1]), 0, -1)


@pytest.fixture(scope="module", params=sorted(LAYERS))
def kernel_model(request, tmp_path_factory):
    """An int8 model of the case's layers with pruned kernels, and test inputs beside it."""
    name, rng = request.param, np.random.default_rng(7)
    keras.utils.set_random_seed(7)
    x = inputs = keras.layers.Input(INPUTS[name])
    for kind, options, _ in LAYERS[name]:
        layer = keras.layers.Conv2D if kind == "conv" else keras.layers.DepthwiseConv2D
        x = layer(activation="relu", **options)(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(x)))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    for layer, (_, _, sparsity) in zip(convs, LAYERS[name]):
        kernel, *rest = layer.get_weights()
        layer.set_weights([_prune_blocks(kernel, sparsity, BLOCK[name], rng),
                           *[rng.normal(0, 0.1, r.shape) for r in rest]])
    calibration = rng.normal(0, 1, (64, *INPUTS[name])).astype(np.float32)
    flatbuffer = tflite_model.convert_int8(model, calibration)
    folder = tmp_path_factory.mktemp(name)
    (folder / "model_int8.tflite").write_bytes(flatbuffer)
    np.savez(folder / "test_samples.npz", x_int8=rng.integers(-128, 128, (6, *INPUTS[name]), dtype=np.int8),
             y=np.zeros(6, np.int64))
    return folder / "model_int8.tflite"


@pytest.mark.parametrize("board", ["qemu-stm32f4", "qemu-microbit"])
def test_fast_kernels_equal_the_reference_kernels_and_host_tflm(kernel_model, board, tmp_path):
    generated = aot.generate(kernel_model.read_bytes())
    shifts = {int(v) for v in re.findall(r"_bitmap, \d+, (\d)\}", generated.source)}  # sparse rows' block sizes
    assert "AOT_CONV2D(" in generated.source and shifts, "no block-sparse layer to test"
    if kernel_model.parent.name.startswith("blocks_of_16"):
        assert {3, 4} <= shifts  # blocks of 16 (the listed blocks) and of 8 across runs (the general walk)
    fast = run_device(kernel_model, board, "aot", tmp_path / "fast")
    reference = run_device(kernel_model, board, "aot", tmp_path / "reference", aot_kernels="reference")
    assert fast["outputs_match"] == reference["outputs_match"] == 1.0  # both equal host TFLM, bit for bit
    assert fast["latency_instructions"] < reference["latency_instructions"]
    assert len(fast["operators"]) == len(generated.operators) and all(o["latency"] > 0 for o in fast["operators"])
