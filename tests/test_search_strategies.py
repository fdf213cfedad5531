"""The accuracy floor, early stopping, the morphism stage and Optuna's NSGA-II, with real training on USPS."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from keras_tuner.engine import trial as trial_module

from pipeline.compress.training import TrainingSettings, train_candidate
from pipeline.datasets import load_dataset
from pipeline.search import early_stopping, morphism
from pipeline.search.oracle import SparseOracle, default_min_accuracy
from pipeline.search.results import front_hypervolume, trial_rows
from pipeline.search.run import make_budget, prepare_search, quiet_surrogates, run_search
from pipeline.search.space import new_space
from pipeline.search.tuner import analytical_costs


def _rows(out: Path) -> list[dict]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


def _ended(oracle, trial_id: str, values: dict, metrics: dict) -> None:
    """Records an ended trial with these metrics in ``oracle`` (what a finished trial leaves there)."""
    hps = oracle.hyperparameters.copy()
    hps.values = dict(values)
    trial = trial_module.Trial(hyperparameters=hps, trial_id=trial_id, status=trial_module.TrialStatus.COMPLETED)
    for name, value in metrics.items():
        trial.metrics.register(name, direction="min")
        trial.metrics.update(name, float(value))
    oracle.trials[trial_id] = trial


def test_default_floor_is_sixty_percent_of_the_way_from_chance_to_perfect():
    assert default_min_accuracy(np.array([0, 1] * 50)) == pytest.approx(0.8)
    assert default_min_accuracy(np.arange(1000) % 10) == pytest.approx(0.64)
    assert default_min_accuracy(np.array([0] * 70 + [1] * 30)) == pytest.approx(0.88)  # chance is the majority


def test_models_below_the_floor_are_kept_off_the_front_and_out_of_the_hypervolume(base_values):
    oracle = SparseOracle(lambda v: {"feasible": True}, 1 << 20, 1 << 16, max_trials=4, seed=0)
    oracle.update_space(new_space())
    for trial_id, accuracy, size in (("0", 0.97, 5000), ("1", 0.75, 50), ("2", 0.90, 800)):
        _ended(oracle, trial_id, base_values, {"error": 1 - accuracy, "accuracy": accuracy, "int8_accuracy": accuracy,
                                               "model_size_bytes": size, "working_memory_bytes": 300, "feasible": 1})
    unfloored = trial_rows(oracle)
    assert [r["pareto"] for r in unfloored] == [True, True, True]
    rows = trial_rows(oracle, min_accuracy=0.8)
    assert [r["status"] for r in rows] == ["trained", "below-floor", "trained"]
    assert [r["pareto"] for r in rows] == [True, False, True]
    hv = front_hypervolume(rows, 1 << 20, 1 << 16, 0.8)
    # the floor is the error axis' reference: a model just above it adds almost nothing
    assert 0 < hv < front_hypervolume(unfloored, 1 << 20, 1 << 16, 0.0)
    above_floor_only = [dict(r, pareto=r["trial_id"] == "0") for r in rows]
    assert front_hypervolume(above_floor_only, 1 << 20, 1 << 16, 0.8) < hv


def test_the_floor_keeps_the_oracle_from_proposing_what_the_surrogate_says_cannot_clear_it(data_dir):
    """Records where every model without batch norm scored 60 %: with a 90 % floor none is proposed."""
    data = load_dataset("usps2", data_dir)
    run = {"board": "stm32f413", "max_ram": 327680, "max_flash": 1572864, "engine": "aot", "max_latency_ms": None}
    budget = make_budget(run)

    def cost(values):
        return analytical_costs(values, data.input_shape, data.num_classes, budget)

    def proposals(floor: float) -> list[dict]:
        oracle = SparseOracle(cost, budget.max_flash, budget.max_ram, max_trials=60, seed=3, min_accuracy=floor,
                              num_candidates=200)
        oracle.update_space(new_space())
        for i in range(24):
            values = oracle._random_feasible()
            accuracy = 0.97 if values["batch_norm"] else 0.6
            _ended(oracle, str(i), values, {"error": 1 - accuracy, "feasible": 1, **{
                k: cost(values)[k] for k in ("model_size_bytes", "working_memory_bytes")}})
        with quiet_surrogates():
            return [oracle._propose(oracle._finished_feasible(), 24 + k) for k in range(8)]

    assert not all(v["batch_norm"] for v in proposals(0.0))  # without a floor, size alone can win
    assert all(v["batch_norm"] for v in proposals(0.9))


def test_rungs_and_the_hopeless_rule_compare_a_trial_only_with_no_larger_peers():
    assert early_stopping.rungs(10) == [1, 3]
    assert early_stopping.rungs(2) == []
    bigger_and_better = [early_stopping.RungRecord(0.99, 10_000, 5000)] * 5
    assert not early_stopping.hopeless(0.7, 100, 300, bigger_and_better)
    smaller_and_better = [early_stopping.RungRecord(0.95, 90, 280)] * 3
    assert early_stopping.hopeless(0.7, 100, 300, smaller_and_better)
    assert not early_stopping.hopeless(0.96, 100, 300, smaller_and_better)
    assert not early_stopping.hopeless(0.7, 100, 300, smaller_and_better[:2])  # too few to judge
    assert early_stopping.trial_allowance(10, 3, [1, 1, 1]) == 12


def test_early_stopping_records_stopped_trials_off_the_front_and_spends_their_epochs(data_dir, tmp_path):
    search = prepare_search("usps2", 5, 3, "stm32f413", "random", 0, tmp_path / "run", str(data_dir),
                            early_stop=True, min_accuracy=0.0)
    for trial_id in ("0", "1", "2"):  # three tiny trials that reached 99.9 % at epoch 1
        _ended(search.oracle, trial_id, {}, {"rung_1_accuracy": 0.999, "model_size_bytes": 1,
                                             "working_memory_bytes": 1, "feasible": 0})
    search.tuner.update_allowance(5)
    search.tuner.search(verbose=0)
    rows = [r for r in search.write_results() if r["trial_id"] not in ("0", "1", "2")]
    stopped = [r for r in rows if r["status"] == "stopped"]
    assert stopped and {r["status"] for r in rows} <= {"stopped", "infeasible"}  # infeasible: never trained
    assert all(r["stopped_at_epoch"] == 1 and not r["pareto"] for r in stopped)
    saved = 2 * len(stopped)  # each stopped after 1 of 3 epochs
    assert search.oracle.max_trials == 5 + saved // 3 > 5 and len(rows) == search.oracle.max_trials - 3
    written = _rows(tmp_path / "run")
    assert {r["status"] for r in written if r["trial_id"] not in ("0", "1", "2")} == {"stopped"}
    assert all(float(r["accuracy"]) < 0.999 for r in written if r["status"] == "stopped")


@pytest.fixture(scope="module")
def parent(data_dir):
    """A parent trained 2 epochs on usps2: two blocks, batch norm, channel pruning, a separable layer."""
    values = dict(new_space().values)
    values.update({"num_conv_blocks": 2, "block1_num_layers": 2, "block1_layer2_type": "SeparableConv2D",
                   "block1_layer1_filters": 12, "block1_layer2_filters": 10, "block1_channel_keep": 0.75,
                   "block2_num_layers": 1, "block2_layer1_filters": 8, "block2_channel_keep": 1.0,
                   "block2_sparsity": 0.3, "block2_layer1_type": "Conv2D", "block2_layer1_kernel": 3,
                   "block1_layer2_kernel": 3})
    data = load_dataset("usps2", data_dir)
    from pipeline.search.architecture import decode

    arch, compression = decode(values, data.input_shape, data.num_classes)
    model = train_candidate(arch, compression, TrainingSettings.from_values(values, 2), data.x_train,
                            data.y_train, seed=1)
    return values, model, data


@pytest.mark.parametrize("kind", morphism.KINDS)
def test_a_morphed_child_starts_where_its_trained_parent_is(parent, kind):
    values, model, data = parent
    _, parent_nodes = morphism.narrow_plan(values, data.input_shape, data.num_classes)
    before = model.predict(data.x_val, verbose=0)
    weights = morphism.trained_weights(model, parent_nodes)
    changes = [m for m in morphism.candidates(values, data.input_shape, data.num_classes) if m.kind == kind]
    assert changes, kind
    for change in changes:
        child_arch, child_nodes = morphism.narrow_plan(change.values, data.input_shape, data.num_classes)
        assert child_nodes != parent_nodes
        child = morphism.build_with_weights(
            child_arch, morphism.morph_weights(weights, parent_nodes, child_nodes, change, seed=0))
        after = child.predict(data.x_val, verbose=0)
        parent_accuracy = np.mean(before.argmax(1) == data.y_val)
        child_accuracy = np.mean(after.argmax(1) == data.y_val)
        assert abs(child_accuracy - parent_accuracy) <= 0.002, change
        assert np.abs(after - before).max() < 1e-3 * max(1.0, np.abs(before).max()), change


def test_the_morphism_stage_fine_tunes_children_of_pareto_models(data_dir, tmp_path):
    rows = run_search("usps2", 5, 2, "stm32f413", "sparse", 0, tmp_path / "run", str(data_dir), quiet=True,
                      min_accuracy=0.0, morphism_trials=2, morphism_epochs=1)
    by_id = {r["trial_id"]: r for r in rows}
    children = [r for r in rows if r["parent_trial"]]
    assert [r["trial_id"] for r in children] == ["3", "4"]
    for child in children:
        parent = by_id[child["parent_trial"]]
        assert int(child["parent_trial"]) < int(child["trial_id"])
        assert child["morphism"].split()[0] in morphism.KINDS and child["status"] == "trained"
        assert math.isfinite(child["accuracy"]) and parent["status"] == "trained"
    written = _rows(tmp_path / "run")
    assert [r["morphism"] != "" for r in written] == [False, False, False, True, True]


def test_nsga2_runs_the_same_space_and_a_resumed_study_proposes_as_an_unbroken_one(data_dir, tmp_path):
    whole = run_search("usps2", 5, 1, "stm32f413", "nsga2", 0, tmp_path / "whole", str(data_dir), quiet=True)
    run_search("usps2", 4, 1, "stm32f413", "nsga2", 0, tmp_path / "split", str(data_dir), quiet=True)
    resumed = run_search("usps2", 5, 1, "stm32f413", "nsga2", 0, tmp_path / "split", str(data_dir), quiet=True)
    names = [k for k in new_space().values]
    assert [[r[k] for k in names] for r in resumed] == [[r[k] for k in names] for r in whole]
    assert [r["accuracy"] for r in resumed] == [r["accuracy"] for r in whole]
    assert {r["status"] for r in whole} <= {"trained", "below-floor", "infeasible"}
