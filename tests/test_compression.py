"""Pruning, int8 conversion and the host TFLite Micro check, with real training on USPS."""
from __future__ import annotations

import numpy as np
import pytest
import tf_keras

from pipeline.compress import tflite_graph, tflite_model
from pipeline.compress.training import TrainingSettings, train_candidate
from pipeline.datasets import load_dataset
from pipeline.search import costs
from pipeline.search.architecture import decode, plan


@pytest.fixture(scope="module")
def usps(data_dir):
    return load_dataset("usps", data_dir)


def _train(values, data, epochs=2):
    arch, compression = decode(values, data.input_shape, data.num_classes)
    model = train_candidate(arch, compression, TrainingSettings.from_values(values, epochs),
                            data.x_train[:2000], data.y_train[:2000], seed=0)
    return arch, compression, model


def _blocks_kept(rows: np.ndarray) -> tuple[int, int]:
    """(blocks holding a nonzero, blocks) of a [out][row] kernel cut into PRUNING_BLOCK pieces."""
    out, length = rows.shape
    padded = np.zeros((out, -(-length // costs.PRUNING_BLOCK) * costs.PRUNING_BLOCK))
    padded[:, :length] = rows
    nonzero = (padded.reshape(out, -1, costs.PRUNING_BLOCK) != 0).any(-1)
    return int(nonzero.sum()), nonzero.size


def test_block_pruning_reaches_target_and_survives_int8(usps, base_values):
    values = base_values | {"block1_num_layers": 2, "block1_layer2_type": "Conv2D",
                            "block1_layer2_kernel": 3, "block1_layer2_filters": 16,
                            "block1_sparsity": 0.7, "fc_sparsity": 0.7, "block1_channel_keep": 1.0,
                            "pruning_start_fraction": 0.0, "pruning_ramp_fraction": 0.2}
    arch, compression, model = _train(values, usps)
    kernels = [layer.get_weights()[0] for layer in model.layers
               if type(layer) in (tf_keras.layers.Conv2D, tf_keras.layers.Dense)]
    zeros = sum(k.size - np.count_nonzero(k) for k in kernels)
    assert zeros / sum(k.size for k in kernels) == pytest.approx(0.7, abs=0.01)
    # every kernel keeps exactly max(1, round(blocks * 0.3)) whole blocks of its output rows:
    # conv1 16 rows of 9 (16 blocks, 5 kept), conv2 16 rows of 144 (144, 43), classifier 10 x 1024 (640, 192)
    kept = [_blocks_kept(kernel.reshape(-1, kernel.shape[-1]).T) for kernel in kernels]
    assert kept == [(5, 16), (43, 144), (192, 640)]
    flatbuffer = tflite_model.convert_int8(model, usps.x_train)
    assert tflite_model.kernel_sparsity(flatbuffer) >= 0.7 - 0.01
    graph = tflite_graph.read_graph(flatbuffer)
    int8_kept = [_blocks_kept(kernel.reshape(kernel.shape[0], -1))
                 for kernel in (graph.tensors[op.inputs[1]].data for op in graph.operators
                                if op.name in ("CONV_2D", "FULLY_CONNECTED"))]
    assert [k[1] for k in int8_kept] == [k[1] for k in kept]
    assert all(k8 <= k for (k8, _), (k, _) in zip(int8_kept, kept))
    # the flatbuffer's nonzero count is at most what the analytical model promised
    promised = costs.model_size_bytes(costs.graph_from_plan(plan(arch), compression))
    assert costs.model_size_bytes(tflite_model.resource_graph(flatbuffer)) <= promised


def test_quantization_aware_finetune_keeps_every_pruned_zero(usps, base_values):
    # A trial of a real USPS search in which tfmot's prune-preserving QAT alone let the first
    # conv (no batch norm, channel-pruned, then ReLU) lose most of its zeros: MS grew past the
    # analytical promise. The zeros must survive QAT and int8 conversion.
    values = base_values | {
        "downsample_input_depth": True, "downsample_input": True, "input_downsampling_rate": 2,
        "block1_num_layers": 2, "block1_layer1_kernel": 4, "block1_layer1_filters": 40,
        "block1_layer2_type": "SeparableConv2D", "block1_layer2_kernel": 3, "block1_layer2_filters": 13,
        "block1_sparsity": 0.76, "block1_channel_keep": 0.525, "fc_sparsity": 0.79, "batch_norm": False,
        "learning_rate": 0.00107, "pruning_start_fraction": 0.327, "pruning_ramp_fraction": 0.211,
        "quantization_aware": True}
    arch, compression, model = _train(values, usps, epochs=3)
    flatbuffer = tflite_model.convert_int8(model, usps.x_train)
    assert tflite_model.kernel_sparsity(flatbuffer) >= 0.75
    promised = costs.model_size_bytes(costs.graph_from_plan(
        plan(arch.with_channel_keep(compression.block_channel_keep)), compression))
    assert costs.model_size_bytes(tflite_model.resource_graph(flatbuffer)) <= promised


def test_structured_pruning_lowers_working_memory_and_flatbuffer(usps, base_values):
    dense_values = base_values | {"block1_sparsity": 0.0, "fc_sparsity": 0.0, "block1_layer1_filters": 24}
    pruned_values = dense_values | {"block1_channel_keep": 0.5}
    _, _, dense = _train(dense_values, usps, epochs=1)
    _, _, pruned = _train(pruned_values, usps, epochs=2)
    dense_fb = tflite_model.convert_int8(dense, usps.x_train)
    pruned_fb = tflite_model.convert_int8(pruned, usps.x_train)
    dense_wm = costs.working_memory_bytes(tflite_model.resource_graph(dense_fb))
    pruned_wm = costs.working_memory_bytes(tflite_model.resource_graph(pruned_fb))
    # 24 channels: 16x16x24 + 8x8x24 = 7680 B; 12 channels left: 3840 B
    assert (dense_wm, pruned_wm) == (7680, 3840)
    # int8 weights removed: classifier 1536x10 -> 768x10 (7680 B), conv 3x3x24 -> 3x3x12 (108 B)
    assert len(dense_fb) - len(pruned_fb) >= 7680 + 108
    assert pruned.evaluate(usps.x_val, usps.y_val, verbose=0)[1] > 0.85


def test_tflm_matches_reference_kernels_for_branch_separable_downsampled(usps, base_values):
    values = base_values | {
        "block1_num_layers": 3, "block1_layer1_type": "DownsampledConv2D",
        "block1_layer1_downsample_fraction": 0.25, "block1_layer2_type": "SeparableConv2D",
        "block1_layer2_filters": 12, "block1_layer2_kernel": 3, "block1_layer3_type": "Conv2D",
        "block1_layer3_filters": 8, "block1_layer3_kernel": 3,
        "left_branch": True, "fc_fraction_left": 1.0, "total_fc_weights": 5000,
        "merge_type": "Concatenate", "block1_channel_keep": 1.0}
    _, _, model = _train(values, usps, epochs=1)
    flatbuffer = tflite_model.convert_int8(model, usps.x_train)
    ops = tflite_model.op_names(flatbuffer)
    assert {"DEPTHWISE_CONV_2D", "CONCATENATION", "CONV_2D"} <= set(ops)
    # FC layers ship as 1x1 convolutions and the model outputs logits: TF's tf.lite and TFLite
    # Micro requantise FULLY_CONNECTED differently and compute SOFTMAX differently.
    assert not {"FULLY_CONNECTED", "SOFTMAX"} & set(ops)
    x = tflite_model.quantize_inputs(flatbuffer, usps.x_val[:200])
    micro = tflite_model.tflm_run(flatbuffer, x)
    np.testing.assert_array_equal(micro, tflite_model.reference_run(flatbuffer, x))
    assert len(np.unique(micro)) > 20  # real logits, not a saturated constant


def test_corrupt_flatbuffer_is_rejected_with_file_name(tmp_path):
    from pipeline.errors import UserError

    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="model.tflite is not a TFLite flatbuffer"):
        tflite_model.read_tflite(bad)
