"""Our oracles: the seed given is the seed used, and trial ids are one plain decimal naming."""
from __future__ import annotations

import keras_tuner
from keras_tuner.engine import trial as trial_module

from pipeline.search.oracle import KerasTunerBayesianOracle, RandomOracle
from pipeline.search.results import trial_rows
from pipeline.search.space import new_space

OBJECTIVE = keras_tuner.Objective("error", "min")


def _oracle(cls, folder, max_trials: int, seed: int = 0):
    oracle = cls(objective=OBJECTIVE, max_trials=max_trials, seed=seed)
    oracle._set_project_dir(str(folder), "search")
    oracle.update_space(new_space())
    return oracle


def _run_trials(oracle, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        trial = oracle.create_trial("tuner0")
        oracle.update_trial(trial.trial_id, {"error": 0.5})
        trial.status = trial_module.TrialStatus.COMPLETED
        oracle.end_trial(trial)
        oracle.save()  # as the tuner does after each trial
        ids.append(trial.trial_id)
    return ids


def test_seed_zero_gives_the_same_proposals_every_time(tmp_path):
    first = _oracle(RandomOracle, tmp_path / "a", 5, seed=0)
    second = _oracle(RandomOracle, tmp_path / "b", 5, seed=0)
    assert first.seed == second.seed == 0
    _run_trials(first, 3)
    _run_trials(second, 3)
    assert [t.hyperparameters.values for t in first.trials.values()] == \
        [t.hyperparameters.values for t in second.trials.values()]
    other = _oracle(RandomOracle, tmp_path / "c", 5, seed=1)
    _run_trials(other, 3)
    assert [t.hyperparameters.values for t in other.trials.values()] != \
        [t.hyperparameters.values for t in first.trials.values()]
    bayes = _oracle(KerasTunerBayesianOracle, tmp_path / "d", 5, seed=0)
    assert bayes.seed == 0 and bayes.gpr.random_state == 0


def test_trial_ids_are_unpadded_numeric_order_and_kept_on_resume(tmp_path):
    oracle = _oracle(RandomOracle, tmp_path, 12)
    ids = _run_trials(oracle, 12)
    assert ids == [str(i) for i in range(12)]
    assert [r["trial_id"] for r in trial_rows(oracle)] == ids  # "2" before "10"
    assert sorted(p.name for p in (tmp_path / "search").glob("trial_*")) == sorted(f"trial_{i}" for i in ids)
    resumed = _oracle(RandomOracle, tmp_path, 15)
    resumed.reload()
    assert _run_trials(resumed, 3) == ["12", "13", "14"]


def test_a_trial_started_in_its_own_file_but_not_the_oracles_is_run_again_on_resume(tmp_path):
    oracle = _oracle(RandomOracle, tmp_path, 3)
    assert _run_trials(oracle, 1) == ["0"]
    saved = (tmp_path / "search" / "oracle.json").read_text()
    started = oracle.create_trial("worker0")  # writes trial_1/trial.json, then oracle.json
    assert started.trial_id == "1"
    (tmp_path / "search" / "oracle.json").write_text(saved)  # killed between the two writes
    resumed = _oracle(RandomOracle, tmp_path, 3)
    resumed.reload()
    again = resumed.create_trial("worker1")
    assert again.trial_id == "1" and again.hyperparameters.values == started.hyperparameters.values
    assert again.status == trial_module.TrialStatus.RUNNING
    assert resumed.create_trial("worker0").trial_id == "2"  # the third trial is still to come


def test_a_run_with_padded_ids_keeps_its_padding_when_resumed(tmp_path):
    stock = keras_tuner.oracles.RandomSearchOracle(objective=OBJECTIVE, max_trials=12, seed=3)
    stock._set_project_dir(str(tmp_path), "search")
    stock.update_space(new_space())
    assert _run_trials(stock, 2) == ["00", "01"]  # keras-tuner's own naming, as older runs have it
    resumed = _oracle(RandomOracle, tmp_path, 20)
    resumed.reload()
    assert _run_trials(resumed, 2) == ["02", "03"]


def test_neighbouring_seeds_draw_different_candidates(tmp_path):
    five = _oracle(RandomOracle, tmp_path / "a", 6, seed=5)
    six = _oracle(RandomOracle, tmp_path / "b", 6, seed=6)
    _run_trials(five, 6)
    _run_trials(six, 6)
    values = lambda o: [tuple(sorted(t.hyperparameters.values.items())) for t in o.trials.values()]  # noqa: E731
    assert not set(values(five)) & set(values(six))
    # keras-tuner's counter made seed 6's candidates seed 5's, one value later: no value is shared either
    firsts = lambda o: [t.hyperparameters.values["block1_layer1_filters"] for t in o.trials.values()]  # noqa: E731
    assert firsts(five) != firsts(six)
