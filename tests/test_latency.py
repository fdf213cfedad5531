"""The latency budget: the AOT engine's instructions predicted before training, checked on QEMU."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.compress import tflite_model
from pipeline.compress.training import TrainingSettings, train_candidate
from pipeline.datasets import load_dataset
from pipeline.deploy import aot_work
from pipeline.deploy.device import run_device
from pipeline.search import costs, latency_estimate
from pipeline.search.architecture import decode, plan
from pipeline.search.latency import load_latency_model
from pipeline.search.tuner import Budget, resource_costs

REPO = Path(__file__).resolve().parent.parent


def _graph(values: dict, shape=(16, 16, 1), classes: int = 2) -> costs.ResourceGraph:
    arch, compression = decode(values, shape, classes)
    return costs.graph_from_plan(plan(arch.with_channel_keep(compression.block_channel_keep)), compression)


def test_work_of_a_padded_convolution_is_counted_per_path_with_the_padding_left_out():
    # 3x3 "same" over 8x8x2, three dense filters: on the M0 two run as a pair, the third alone
    g = aot_work.ConvGeometry(8, 8, 2, 8, 8, 3, 3, 3, pad_h=1, pad_w=1)
    work = aot_work.conv_work(g, aot_work.KernelLayout(), dsp=False)
    # 6 x 6 interior outputs see all 18 weights; the 28 border ones see 22 x 22 - 36 x 9 = 160 taps in all
    assert (work["pair_macs"], work["pair_border_macs"], work["one_macs"]) == (2 * 18 * 36, 2 * 160 * 2, 18 * 36 + 160 * 2)
    assert work["outputs"] == 3 * 64
    assert work["border_runs"] == 28 * 3 + 28 * 3  # three kernel rows per border output: once per pair, once alone
    # on the M4 the 18-weight windows of the 36 interior outputs are copied once each, every filter
    # run against the copy; the border outputs read their runs' inside parts, as on the M0
    work = aot_work.conv_work(g, aot_work.KernelLayout(), dsp=True)
    assert (work["window_bytes"], work["window_macs"], work["pair_macs"], work["one_macs"]) == (36 * 18, 36 * 18 * 3, 0, 0)
    assert work["pair_border_macs"] == 3 * 160 * 2 and work["outputs"] == 3 * 64
    # the same layer block-sparse (blocks of 2 weights, one filter pruned away, one full, one half):
    # the full row runs dense alone, the pruned one is a constant, the half row is walked
    layout = aot_work.KernelLayout((0, 9, 5), (0, 18, 9), 1, scratch_bytes=0)
    work = aot_work.conv_work(g, layout, dsp=False)
    assert work["constant_outputs"] == 64 and work["walk_outputs"] == 64 and work["outputs"] == 2 * 64
    assert work["walk_macs"] == 9 * 36 + 9 / 18 * 160 * 2 and work["walk_blocks"] == 5 * 64


def test_a_candidate_predicted_slower_than_the_budget_breaks_the_latency_constraint(base_values):
    graph = _graph(base_values)
    predicted = load_latency_model().instructions(graph, "cortex-m4")
    assert predicted > 0
    at = resource_costs(graph, Budget(327_680, 1_572_864, core="cortex-m4", max_latency_instructions=predicted))
    over = resource_costs(graph, Budget(327_680, 1_572_864, core="cortex-m4",
                                        max_latency_instructions=predicted - 1))
    assert at["feasible"] and at["constraints"]["latency"] == 0
    assert not over["feasible"] and over["constraints"]["latency"] == 1
    assert "latency" not in resource_costs(graph, Budget(327_680, 1_572_864, core="cortex-m4"))["constraints"]
    # twice the filters, more instructions; the slower core takes more for the same model
    wider = _graph(base_values | {"block1_layer1_filters": 2 * base_values["block1_layer1_filters"]})
    assert load_latency_model().instructions(wider, "cortex-m4") > predicted
    assert load_latency_model().instructions(graph, "cortex-m0") > predicted


def test_stand_in_kernels_keep_the_pruning_targets_blocks_spread_over_rows(base_values):
    graph = _graph(base_values | PRUNED)
    convs = [op for op in graph.ops if op.kind in ("CONV_2D", "FULLY_CONNECTED") and op.kernel_weights]
    assert any(op.kernel_nonzeros < op.kernel_weights for op in convs)
    for op in convs:
        kernel = latency_estimate.stand_in_kernel(op).full()
        rows = kernel.reshape(kernel.shape[0], -1)
        assert rows.shape == (op.rows, op.kernel_weights // op.rows)
        assert int(rows.sum()) == op.kernel_nonzeros, op.name  # the bound costs assumes: whole blocks kept
        per_row = rows.sum(axis=1)
        assert per_row.max() - per_row.min() <= 16  # shared evenly: at most a block apart
    # two kept one-block rows of five are not neighbours (the kernels would run neighbours as a pair)
    few = costs.GraphOp("c", ("x",), "y", kernel_nonzeros=32, kernel_weights=80, rows=5, kind="CONV_2D",
                        channels=5, kernel_hw=(4, 4), input_hw=(16, 16))
    assert latency_estimate.stand_in_kernel(few).full().reshape(5, -1).any(axis=1).tolist() == [True, False, False,
                                                                                        False, True]


def test_a_search_under_an_impossible_latency_budget_trains_nothing(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "pipeline", "search", "--dataset", "digits", "--trials", "2",
                             "--epochs", "1", "--quiet", "--out", str(out), "--max-latency-ms", "0.0001"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["infeasible", "infeasible"]  # 10 instructions at 100 MHz: none fits
    assert all(int(r["predicted_instructions"]) > 10 for r in rows)
    assert not list(out.glob("search/trial_*/model_int8.tflite"))


PRUNED = {"num_conv_blocks": 2, "block1_sparsity": 0.8, "block2_num_layers": 2, "block2_sparsity": 0.6,
          "block2_channel_keep": 1.0, "block2_layer1_type": "Conv2D", "block2_layer1_kernel": 3,
          "block2_layer1_filters": 24, "block2_layer2_type": "SeparableConv2D", "block2_layer2_kernel": 3,
          "block2_layer2_filters": 24, "num_fc_layers": 1, "total_fc_weights": 20_000, "fc_fraction_main": 1.0}


@pytest.mark.parametrize("changes", [{}, PRUNED], ids=["dense", "pruned"])
def test_predicted_instructions_are_within_a_fifth_of_qemus_count_on_models_outside_the_calibration(base_values, data_dir, tmp_path, changes):
    data = load_dataset("usps2", data_dir)
    values = base_values | changes
    arch, compression = decode(values, data.input_shape, data.num_classes)
    model = train_candidate(arch, compression, TrainingSettings.from_values(values, 1), data.x_train[:800],
                            data.y_train[:800], seed=0)
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(tflite_model.convert_int8(model, data.x_train, seed=0))
    graph = tflite_model.resource_graph(path.read_bytes())
    planned = _graph(values, data.input_shape, data.num_classes)  # what the search sees before training
    for board, core in (("qemu-stm32f4", "cortex-m4"), ("qemu-microbit", "cortex-m0")):
        measured = run_device(path, board, "aot", tmp_path / board, samples=1, dataset="usps2",
                              data_dir=str(data_dir))["latency_instructions"]
        # issue 12's 20 %, from the layout the generator gives the converted model
        predicted = load_latency_model().model_instructions(path.read_bytes(), core)
        assert abs(predicted / measured - 1) <= 0.20, (board, predicted, measured)
        # the search's estimate from the resource graph, before the layout is known: from the
        # converted model's nonzeros, and from the pruning targets alone
        for source in (graph, planned):
            estimated = load_latency_model().instructions(source, core)
            assert abs(estimated / measured - 1) <= 0.25, (board, estimated, measured)
