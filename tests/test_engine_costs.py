"""The search's budget means "fits on this board with this engine", fixed costs included."""
from __future__ import annotations

import os

import keras_tuner
import pytest

from pipeline.compress import tflite_model
from pipeline.compress.training import TrainingSettings, train_candidate
from pipeline.datasets import load_dataset
from pipeline.deploy.boards import get_board
from pipeline.deploy.device import run_device
from pipeline.deploy.engine_costs import engine_cost, upper_envelope
from pipeline.search import costs
from pipeline.search.architecture import decode, plan
from pipeline.search.space import new_space
from pipeline.search.tuner import Budget, analytical_costs


def test_upper_envelope_lies_on_or_above_every_point():
    points = [(3, 40, 1000), (5, 60, 1180), (8, 100, 1500), (4, 300, 3200), (6, 24, 1100)]
    fixed, per_op, per_channel = upper_envelope(points)
    assert per_op >= 0 and per_channel > 0
    assert all(fixed + per_op * o + per_channel * c >= measured for o, c, measured in points)
    assert any(fixed + per_op * o + per_channel * c == measured for o, c, measured in points)  # tight
    assert upper_envelope([(2, 10, 50), (2, 10, 70)]) == (70, 0, 0)
    # a slope that would be negative is dropped, and the other refitted
    assert upper_envelope([(1, 10, 100), (2, 20, 90), (3, 10, 300)])[1:] == (100, 0)


def test_the_block_sparse_bound_holds_for_a_pruned_model(data_dir, base_values):
    from pipeline.deploy import aot

    data = load_dataset("usps", data_dir)
    values = base_values | {"block1_sparsity": 0.7, "fc_sparsity": 0.7, "pruning_start_fraction": 0.0,
                            "pruning_ramp_fraction": 0.2, "block1_layer1_filters": 8}
    arch, compression = decode(values, data.input_shape, data.num_classes)
    model = train_candidate(arch, compression, TrainingSettings.from_values(values, 1),
                            data.x_train[:1000], data.y_train[:1000], seed=0)
    flatbuffer = tflite_model.convert_int8(model, data.x_train)
    budget = Budget(1 << 20, 1 << 20)
    promised = analytical_costs(values, data.input_shape, data.num_classes, budget)
    stored = aot.generate(flatbuffer).weight_bytes
    graph = costs.graph_from_plan(plan(arch.with_channel_keep(compression.block_channel_keep)), compression)
    assert stored <= costs.aot_weight_bytes(graph) < costs.dense_weight_bytes(graph)
    assert costs.block_sparse_weight_bytes(graph) <= costs.aot_weight_bytes(graph)
    assert promised["model_size_bytes"] >= costs.model_size_bytes(tflite_model.resource_graph(flatbuffer))


def _largest_feasible_candidate(board_name: str, engine: str, input_shape, classes) -> tuple[dict, dict]:
    board = get_board(board_name)
    budget = Budget(board.ram_bytes, board.flash_bytes, engine_cost(board_name, engine), board.ram_bytes,
                    board.flash_bytes)
    oracle = keras_tuner.Oracle(objective=keras_tuner.Objective("error", "min"), seed=7)
    oracle.update_space(new_space())
    best = None
    for _ in range(400):
        values = oracle._random_values()
        found = analytical_costs(values, input_shape, classes, budget)
        if found["feasible"] and (best is None or found["firmware_ram_bytes"] > best[1]["firmware_ram_bytes"]):
            best = (values, found)
    assert best is not None
    return best


@pytest.mark.parametrize("engine", ["aot", pytest.param("tflm", marks=pytest.mark.skipif(
    not os.environ.get("TFLM_DIR"), reason="no TFLM tree: set TFLM_DIR (make tflm makes one)"))])
def test_the_largest_model_the_search_calls_feasible_on_the_microbit_runs_there(engine, data_dir, tmp_path):
    data = load_dataset("usps", data_dir)
    values, promised = _largest_feasible_candidate("microbit", engine, data.input_shape, data.num_classes)
    assert promised["firmware_ram_bytes"] > 16384 * 0.6  # near the board's 16 KB: a real test of the bound
    arch, compression = decode(values, data.input_shape, data.num_classes)
    model = train_candidate(arch, compression, TrainingSettings.from_values(values, 1),
                            data.x_train[:1000], data.y_train[:1000], seed=0)
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(tflite_model.convert_int8(model, data.x_train))
    result = run_device(path, "qemu-microbit", engine, tmp_path / "out", samples=3, dataset="usps",
                        data_dir=str(data_dir))
    assert result["outputs_match"] == 1.0, (promised, result)
    assert result["ram_bytes"] <= promised["firmware_ram_bytes"] <= 16384, (promised, result)
    assert result["flash_bytes"] <= promised["firmware_flash_bytes"] <= 262144


def test_the_budget_counts_each_engines_own_costs_so_tflm_fits_fewer_models_on_the_microbit(data_dir):
    data = load_dataset("usps", data_dir)
    board = get_board("microbit")
    budgets = {engine: Budget(board.ram_bytes, board.flash_bytes, engine_cost("microbit", engine),
                              board.ram_bytes, board.flash_bytes) for engine in ("aot", "tflm")}
    oracle = keras_tuner.Oracle(objective=keras_tuner.Objective("error", "min"), seed=3)
    oracle.update_space(new_space())
    feasible = {"aot": 0, "tflm": 0}
    for _ in range(200):
        values = oracle._random_values()
        found = {e: analytical_costs(values, data.input_shape, data.num_classes, b) for e, b in budgets.items()}
        for engine, costs_found in found.items():
            feasible[engine] += costs_found["feasible"]
            # the whole firmware is budgeted, not only MS and WM
            assert costs_found["firmware_flash_bytes"] > costs_found["model_size_bytes"]
            assert costs_found["firmware_ram_bytes"] > costs_found["working_memory_bytes"]
            assert costs_found["feasible"] == all(v <= 0 for v in costs_found["constraints"].values())
        assert found["tflm"]["firmware_ram_bytes"] > found["aot"]["firmware_ram_bytes"]
        assert not found["tflm"]["feasible"] or found["aot"]["feasible"]
    assert 0 < feasible["tflm"] < feasible["aot"], feasible
