"""ENGINE=tflm: TensorFlow Lite Micro built from a TFLM tree, run on QEMU, spoken to with pyserial.

The tests that build firmware need a TFLM tree (`make tflm`, or TFLM_DIR=PATH to a
tree or to a folder holding tflm-<pin>-cmsis_nn and tflm-<pin>-reference); without
one they are skipped with that reason. The first build compiles the TFLM library
for the core (minutes); later builds reuse it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.compress import tflite_model
from pipeline.compress.training import TrainingSettings, train_candidate
from pipeline.datasets import load_dataset
from pipeline.deploy.device import run_device
from pipeline.search.architecture import decode

REPO = Path(__file__).resolve().parent.parent
needs_tree = pytest.mark.skipif(not os.environ.get("TFLM_DIR"),
                                reason="no TFLM tree: set TFLM_DIR (make tflm makes one where there is network)")


@pytest.fixture(scope="module")
def usps_model(data_dir, tmp_path_factory):
    """A small search-space CNN trained for one epoch on USPS, as the search would ship it."""
    from pipeline.search.space import new_space

    data = load_dataset("usps", data_dir)
    values = dict(new_space().values) | {"block1_layer1_filters": 6, "block1_sparsity": 0.5,
                                         "downsample_input": True, "input_downsampling_rate": 2}
    arch, compression = decode(values, data.input_shape, data.num_classes)
    model = train_candidate(arch, compression, TrainingSettings.from_values(values, 1),
                            data.x_train[:2000], data.y_train[:2000], seed=0)
    folder = tmp_path_factory.mktemp("usps_model")
    (folder / "model_int8.tflite").write_bytes(tflite_model.convert_int8(model, data.x_train))
    return folder / "model_int8.tflite"


@needs_tree
@pytest.mark.parametrize("board", ["qemu-stm32f4", "qemu-microbit"])
def test_tflm_firmware_on_qemu_matches_host_tflm_with_its_own_arena_figure(usps_model, board, data_dir,
                                                                            tmp_path):
    result = run_device(usps_model, board, "tflm", tmp_path / "out", samples=12, dataset="usps",
                        data_dir=str(data_dir))
    assert json.loads((tmp_path / "out" / "device.json").read_text()) == result
    assert result["engine"] == "tflm" and result["outputs_match"] == 1.0 and result["samples"] == 12
    # TFLM's own figure: more than the activations (it holds its bookkeeping too); the firmware
    # reserves the smallest arena the probe found to allocate, never less than that figure
    assert result["arena_bytes"] > result["working_memory_bytes"]
    assert result["arena_capacity_bytes"] >= result["arena_bytes"]
    assert result["static_ram_bytes"] >= result["arena_capacity_bytes"]
    assert result["ram_bytes"] == result["static_ram_bytes"] + result["stack_bytes"]
    assert result["latency_instructions"] > 0
    aot = run_device(usps_model, board, "aot", tmp_path / "aot", samples=12, dataset="usps",
                     data_dir=str(data_dir))
    assert set(aot) == set(result)  # the same fields, whichever engine


def test_tflm_without_a_tree_says_both_ways_to_get_one(usps_model, data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TFLM_DIR"} | {"SPARSE_MCU_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "pipeline", "device", "--model", str(usps_model),
                             "--engine", "tflm", "--dataset", "usps", "--data-dir", str(data_dir)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    line = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in line and "Traceback" not in line, line
    assert "make tflm" in line and "TFLM_DIR" in line


def test_a_users_model_that_does_not_fit_the_dataset_is_refused_naming_both(usps_model, data_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "device", "--model", str(usps_model),
                             "--dataset", "digits", "--out", str(tmp_path / "out")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    line = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in line, line
    assert "[1, 16, 16, 1]" in line and "[1, 8, 8, 1]" in line and "digits" in line
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def plain_keras_model(data_dir, tmp_path_factory):
    """A user's own model: plain Keras layers, converted the way TFLite's guide says, no part of ours."""
    import tensorflow as tf
    import tf_keras as keras

    data = load_dataset("usps", data_dir)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(10),
                              keras.layers.Softmax()])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(data.x_train[:2000], data.y_train[:2000], epochs=1, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in data.x_train[:100])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("plain_keras") / "user.tflite"
    path.write_bytes(converter.convert())
    return path


def test_a_model_this_tool_did_not_make_runs_on_the_aot_engine_with_dataset_inputs(plain_keras_model, data_dir,
                                                                                    tmp_path):
    # what `make bench MODEL=user.tflite DATASET=usps` runs: no export, no test_samples.npz beside it
    result = subprocess.run([sys.executable, "-m", "pipeline", "device", "--model", str(plain_keras_model),
                             "--dataset", "usps", "--data-dir", str(data_dir), "--samples", "8",
                             "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    device = json.loads((tmp_path / "out" / "device.json").read_text())
    assert device["engine"] == "aot" and device["outputs_match"] == 1.0 and device["samples"] == 8
    model = plain_keras_model.read_bytes()
    data = load_dataset("usps", data_dir)
    host = tflite_model.tflm_run(model, tflite_model.quantize_inputs(model, data.x_test[:8]))
    assert device["accuracy"] == pytest.approx(float(np.mean(host.argmax(1) == data.y_test[:8])), abs=1e-6)
