"""AOT firmware built with arm-none-eabi-gcc, run on QEMU, spoken to with pyserial.

Each model is trained for real (one epoch on USPS), converted to int8, compiled
to C by the AOT engine, built for an emulated board, and fed test images over
the serial port; its outputs must equal the host TFLite Micro interpreter's.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tf_keras

from pipeline.compress import tflite_graph, tflite_model
from pipeline.compress.training import TrainingSettings, train_candidate
from pipeline.datasets import load_dataset
from pipeline.deploy.device import run_device
from pipeline.search.architecture import decode

SAMPLES = 12

ARCHITECTURES = {
    "branch_sum_merge": {"left_branch": True, "right_branch": True, "fc_fraction_left": 0.5,
                         "fc_fraction_right": 0.5, "merge_type": "Sum", "num_fc_layers": 1,
                         "fc_fraction_main": 0.5, "total_fc_weights": 6000, "block1_layer1_filters": 6},
    "separable_downsampled_concat": {
        "block1_num_layers": 3, "block1_layer1_type": "DownsampledConv2D",
        "block1_layer1_downsample_fraction": 0.25, "block1_layer2_type": "SeparableConv2D",
        "block1_layer2_filters": 12, "block1_layer2_kernel": 3, "block1_layer3_type": "Conv2D",
        "block1_layer3_filters": 8, "block1_layer3_kernel": 3, "left_branch": True,
        "fc_fraction_left": 1.0, "total_fc_weights": 5000, "merge_type": "Concatenate"},
    "pruned": {"block1_sparsity": 0.6, "fc_sparsity": 0.6, "pruning_start_fraction": 0.0,
               "pruning_ramp_fraction": 0.2, "block1_layer1_filters": 8, "downsample_input": True,
               "input_downsampling_rate": 2},
}
BOARDS = {"branch_sum_merge": "qemu-stm32f4", "separable_downsampled_concat": "qemu-stm32f4",
          "pruned": "qemu-microbit"}


@pytest.fixture(scope="module")
def usps(data_dir):
    return load_dataset("usps", data_dir)


def _exported_model(values: dict, data, folder) -> tuple[bytes, object]:
    arch, compression = decode(values, data.input_shape, data.num_classes)
    model = train_candidate(arch, compression, TrainingSettings.from_values(values, 1),
                            data.x_train[:2000], data.y_train[:2000], seed=0)
    flatbuffer = tflite_model.convert_int8(model, data.x_train)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_int8.tflite").write_bytes(flatbuffer)
    x = tflite_model.quantize_inputs(flatbuffer, data.x_test[:SAMPLES])
    np.savez(folder / "test_samples.npz", x_int8=x, y=data.y_test[:SAMPLES])
    return flatbuffer, model


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_aot_firmware_on_qemu_matches_host_tflm_bit_exactly(name, usps, base_values, tmp_path):
    values = base_values | {"block1_channel_keep": 1.0} | ARCHITECTURES[name]
    flatbuffer, _ = _exported_model(values, usps, tmp_path / "model")
    ops = set(tflite_model.op_names(flatbuffer))
    expected_ops = {"branch_sum_merge": {"ADD", "CONV_2D", "RESHAPE"},
                    "separable_downsampled_concat": {"DEPTHWISE_CONV_2D", "CONCATENATION"},
                    "pruned": {"CONV_2D", "MAX_POOL_2D"}}[name]
    assert expected_ops <= ops, ops
    result = run_device(tmp_path / "model" / "model_int8.tflite", BOARDS[name], "aot", tmp_path / "out")
    written = json.loads((tmp_path / "out" / "device.json").read_text())
    assert written == result
    assert result["outputs_match"] == 1.0
    assert result["samples"] == SAMPLES
    assert result["latency_instructions"] > 0 and "latency_cycles" not in result
    assert 0 < result["arena_bytes"] == result["working_memory_bytes"]
    assert result["ram_bytes"] >= result["arena_bytes"] + result["stack_bytes"] > result["arena_bytes"]
    assert result["flash_bytes"] > result["weight_bytes"]
    if name == "pruned":
        # stored sparse: flash follows the nonzero weights, not the dense kernel
        assert result["weight_bytes"] < sum(_dense_kernel_bytes(flatbuffer))


def test_aot_runs_a_users_own_model_with_mean_fc_and_softmax_like_host_tflm_on_qemu(usps, tmp_path):
    # The search ships convolutions and logits; a user's own model often ends in global average
    # pooling (MEAN), FULLY_CONNECTED and SOFTMAX.
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.Input(usps.input_shape), tf_keras.layers.Conv2D(12, 3, activation="relu"),
        tf_keras.layers.GlobalAveragePooling2D(), tf_keras.layers.Dense(usps.num_classes),
        tf_keras.layers.Softmax()])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(usps.x_train[:2000], usps.y_train[:2000], epochs=1, verbose=0)
    full = tflite_model.convert_int8(model, usps.x_train)
    ops = tflite_model.op_names(full)
    assert {"MEAN", "FULLY_CONNECTED", "SOFTMAX"} <= set(ops)
    # the model cut after MEAN too: its outputs are the 12 channel means themselves, which the
    # classifier and softmax would blur
    for name, flatbuffer in (("full", full), ("mean", tflite_graph.truncated(full, ops.index("MEAN")))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model_int8.tflite").write_bytes(flatbuffer)
        x = tflite_model.quantize_inputs(flatbuffer, usps.x_test[:SAMPLES])
        np.savez(folder / "test_samples.npz", x_int8=x, y=usps.y_test[:SAMPLES])
        result = run_device(folder / "model_int8.tflite", "qemu-stm32f4", "aot", tmp_path / f"{name}_out")
        assert result["outputs_match"] == 1.0, name


def _dense_kernel_bytes(flatbuffer: bytes):
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=flatbuffer)
    for op in interp._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D"):
            yield interp.get_tensor(op["inputs"][1]).size
            if len(op["inputs"]) > 2 and op["inputs"][2] >= 0:
                yield 4 * interp.get_tensor(op["inputs"][2]).size


def test_device_errors_are_one_line_and_leave_results_intact(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "device.json").write_text("{}")
    cases = [
        (["--board", "nucleo"], "unknown board 'nucleo'"),
        (["--model", str(tmp_path / "missing.tflite")], "does not exist"),
        (["--engine", "cmsis"], "unknown engine 'cmsis'"),
    ]
    model = tmp_path / "m" / "model_int8.tflite"
    model.parent.mkdir()
    model.write_bytes(b"\x00" * 4 + b"TFL3" + b"\x01" * 100)
    cases.append((["--model", str(model)], "corrupt"))
    for extra, message in cases:
        args = ["--model", str(model), "--out", str(out), *extra]
        result = subprocess.run([sys.executable, "-m", "pipeline", "device", *args],
                                capture_output=True, text=True, timeout=120)
        line = result.stderr.strip()
        assert result.returncode == 2, (extra, result.stderr)
        assert message in line and "\n" not in line and "Traceback" not in line, line
    assert (out / "device.json").read_text() == "{}"
