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
    import tf_keras as keras

    data = load_dataset("usps", data_dir)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(10),
                              keras.layers.Softmax()])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(data.x_train[:2000], data.y_train[:2000], epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("plain_keras") / "user.tflite"
    path.write_bytes(tflite_model.convert_as_tflite_guide(model, data.x_train[:100]))
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


@pytest.fixture(scope="module")
def wide_per_channel_model(data_dir, tmp_path_factory):
    """A search-space CNN whose fully connected layers, stored as 1x1 convolutions, have 2,360 and
    879 output channels, each with its own int8 scale (a CI search's trial, trained for one epoch).

    TFLM's Prepare of such layers takes more arena for a moment (per-channel zero points and
    multipliers) than arena_used_bytes() reports after AllocateTensors, so the probe's smaller
    trial arenas fail inside it: where CMSIS-NN's convolution goes on with the null buffer.
    """
    from pipeline.search.space import new_space

    data = load_dataset("usps2", data_dir)
    values = dict(new_space().values) | {
        "downsample_input_depth": True, "downsample_input": True, "input_downsampling_rate": 3,
        "num_conv_blocks": 1, "block1_num_layers": 3, "block1_sparsity": 0.61, "block1_channel_keep": 0.41,
        "block1_layer1_type": "DownsampledConv2D", "block1_layer1_kernel": 3, "block1_layer1_filters": 64,
        "block1_layer1_downsample_fraction": 0.067, "block1_layer2_type": "DownsampledConv2D",
        "block1_layer2_kernel": 3, "block1_layer2_filters": 89, "block1_layer2_downsample_fraction": 0.21,
        "block1_layer3_type": "DownsampledConv2D", "block1_layer3_kernel": 2, "block1_layer3_filters": 50,
        "block1_layer3_downsample_fraction": 0.16, "num_fc_layers": 1, "total_fc_weights": 494000,
        "fc_fraction_main": 0.914, "left_branch": False, "right_branch": True, "fc_fraction_right": 0.0426,
        "merge_type": "Concatenate", "batch_norm": False, "fc_sparsity": 0.42, "quantization_aware": False}
    arch, compression = decode(values, data.input_shape, data.num_classes)
    model = train_candidate(arch, compression, TrainingSettings.from_values(values, 1),
                            data.x_train[:2000], data.y_train[:2000], seed=0)
    path = tmp_path_factory.mktemp("wide") / "model_int8.tflite"
    path.write_bytes(tflite_model.convert_int8(model, data.x_train))
    return path


@needs_tree
def test_tflm_probe_finds_the_arena_of_a_layer_whose_prepare_needs_more_than_tflm_reports(
        wide_per_channel_model, data_dir, tmp_path):
    # before the probe ended a trial at TFLM's first failure line, this firmware never sent READY
    result = run_device(wide_per_channel_model, "qemu-stm32f4", "tflm", tmp_path / "out", samples=8,
                        dataset="usps2", data_dir=str(data_dir))
    assert result["outputs_match"] == 1.0 and result["samples"] == 8
    assert result["arena_capacity_bytes"] > result["arena_bytes"] > result["working_memory_bytes"]


def test_a_users_model_with_ops_the_aot_engine_lacks_is_refused_in_one_line_naming_tflm(data_dir, tmp_path):
    # Keras' Reshape converts to SHAPE -> STRIDED_SLICE (a scalar) -> PACK -> RESHAPE
    import tf_keras as keras

    data = load_dataset("usps", data_dir)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((16, 16, 1)), keras.layers.MaxPooling2D(4),
                              keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Reshape((1, 1, 32)),
                              keras.layers.Conv2D(16, 1), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train[:500], data.y_train[:500], epochs=1, verbose=0)
    path = tmp_path / "reshape.tflite"
    path.write_bytes(tflite_model.convert_as_tflite_guide(model, data.x_train[:100]))
    assert tflite_model.resource_graph(path.read_bytes()).ops  # a scalar tensor is read, not a crash
    result = subprocess.run([sys.executable, "-m", "pipeline", "device", "--model", str(path), "--dataset", "usps",
                             "--data-dir", str(data_dir), "--out", str(tmp_path / "out")], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    line = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in line and "Traceback" not in line, line
    assert "SHAPE, STRIDED_SLICE" in line and "ENGINE=tflm" in line


def _hold_lock(lock_file: Path, seconds: float) -> subprocess.Popen:
    """Another process holding ``lock_file`` as a library build does, for ``seconds``."""
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(float(sys.argv[2]))")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock_file), str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_tflm_library_build_waits_for_another_on_the_same_cache_and_gives_up_in_one_line(tmp_path):
    import time

    from pipeline.deploy.firmware import _exclusive
    from pipeline.errors import UserError

    lock_file = tmp_path / "lib" / ".lock"
    lock_file.parent.mkdir()
    holder = _hold_lock(lock_file, 2)
    started = time.monotonic()
    with _exclusive(lock_file, 60, "compiling the TFLM library"):
        waited = time.monotonic() - started
    holder.wait(timeout=30)
    assert 1.0 < waited < 30  # it waited for the other build, then went on
    holder = _hold_lock(lock_file, 60)
    try:
        with pytest.raises(UserError, match=r"another build has held .*\.lock for over 1 s"):
            with _exclusive(lock_file, 1, "compiling the TFLM library"):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
