"""Distributed search: a chief and real worker processes over keras-tuner's gRPC protocol, with faults."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras_tuner
from keras_tuner.engine import trial as trial_module

from pipeline.search.oracle import SparseOracle
from pipeline.search.space import new_space
from pipeline.search.tuner import Budget, analytical_costs

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 900
TRAINED = ("trained", "below-floor")  # trained to the end, whether or not above the accuracy floor


class _Output:
    """A process's stdout, read line by line in a thread, waited on by pattern."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            assert self.proc.poll() is None or self.lines, "the process ended without output"
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n" + "\n".join(self.lines))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _start(argv: list[str]) -> tuple[subprocess.Popen, _Output]:
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})
    return proc, _Output(proc)


def _chief(out: Path, data_dir: Path, trials: int) -> list[str]:
    return [sys.executable, "-m", "pipeline", "search-distributed", "--dataset", "usps2", "--trials",
            str(trials), "--epochs", "1", "--workers", "2", "--out", str(out), "--data-dir", str(data_dir),
            "--worker-timeout", "30"]


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().split(") ", 1)[1][0] != "Z"


def test_make_search_distributed_keeps_every_finished_trial_when_a_worker_is_killed_mid_trial(
        tmp_path, data_dir):
    out = tmp_path / "run"
    proc, output = _start(["make", "search-distributed", "DATASET=usps2", "TRIALS=6", "EPOCHS=1", "WORKERS=2",
                           f"OUT={out}", f"DATA_DIR={data_dir}"])
    try:
        pid = int(output.wait_for(r"worker0: started, pid (\d+)").group(1))
        first = output.wait_for(r"trial (\d+): started on worker0").group(1)
        time.sleep(3)  # inside the trial: building and training take longer than this
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=TIMEOUT_S) == 0, output.text
    finally:
        if proc.poll() is None:
            proc.kill()
    text = output.text
    assert f"trial {first}: worker worker0 was lost mid-trial: its process was killed by SIGKILL; " \
           "it will run again" in text, text
    assert re.search(rf"trial {first}: started on worker1", text), text
    rows = _rows(out)
    assert [r["trial_id"] for r in rows] == [str(i) for i in range(6)]  # each once, in one trials.csv
    assert all(r["status"] in TRAINED for r in rows), rows
    for r in rows:  # the chief wrote every trial's models, as a one-machine search does
        assert (out / "search" / f"trial_{r['trial_id']}" / "model_int8.tflite").stat().st_size > 0
    assert {p.name for p in out.iterdir()} >= {"trials.csv", "pareto.json", "pareto.png", "report.md",
                                               "pareto_models", "run.json", "search"}


def test_a_restarted_chief_resumes_the_search_and_keeps_its_finished_trials(tmp_path, data_dir):
    out = tmp_path / "run"
    proc, output = _start(_chief(out, data_dir, 3))
    try:
        pids = [int(output.wait_for(rf"worker{i}: started, pid (\d+)").group(1)) for i in range(2)]
        done = output.wait_for(r"trial (\d+): (?:trained|below-floor); 1/3 ended").group(1)
        proc.kill()  # the chief dies at once, with trials still running
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {r["trial_id"]: r for r in _rows(out)}
    assert done in before and len(before) < 3  # another trial may have ended in the same instant
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(p) for p in pids), "the local workers outlived their chief"

    again, output = _start(_chief(out, data_dir, 3))
    assert again.wait(timeout=TIMEOUT_S) == 0, output.text
    rows = _rows(out)
    assert [r["trial_id"] for r in rows] == ["0", "1", "2"], output.text
    assert all(r["status"] in TRAINED for r in rows), rows
    for trial_id, row in before.items():  # kept as it was, not trained again
        assert rows[int(trial_id)] == row
        assert f"trial {trial_id}: started" not in output.text


def _oracle(tmp_path, trials: int) -> SparseOracle:
    budget = Budget(max_ram=327_680, max_flash=1_572_864)
    oracle = SparseOracle(lambda v: analytical_costs(v, (16, 16, 1), 2, budget), budget.max_flash,
                          budget.max_ram, max_trials=trials, seed=0, num_initial_points=1, num_candidates=40)
    oracle._set_project_dir(str(tmp_path), "search")
    oracle.update_space(new_space())
    return oracle


def _finish(oracle, trial, error: float) -> None:
    oracle.update_trial(trial.trial_id, {"error": error, "feasible": 1.0})
    trial.status = trial_module.TrialStatus.COMPLETED
    oracle.end_trial(trial)


def test_workers_asking_at_once_get_different_candidates_and_wait_for_a_possible_retry(tmp_path):
    oracle = _oracle(tmp_path, 4)
    _finish(oracle, oracle.create_trial("worker0"), 0.3)
    got: dict[str, object] = {}
    asks = [threading.Thread(target=lambda t=t: got.__setitem__(t, oracle.create_trial(t)))
            for t in ("worker0", "worker1", "worker2")]
    for ask in asks:
        ask.start()
    for ask in asks:
        ask.join(timeout=120)
    ids = sorted(t.trial_id for t in got.values())
    assert ids == ["1", "2", "3"]
    values = [oracle._compute_values_hash(t.hyperparameters.values) for t in got.values()]
    assert len(set(values)) == 3  # no two workers train the same candidate
    # every trial is handed out: a fourth worker waits while others run, rather than leaving
    assert oracle.create_trial("worker3").status == trial_module.TrialStatus.IDLE
    _finish(oracle, got["worker0"], 0.2)
    _finish(oracle, got["worker1"], 0.25)
    assert oracle.create_trial("worker3").status == trial_module.TrialStatus.IDLE
    _finish(oracle, got["worker2"], 0.1)
    assert oracle.create_trial("worker3").status == trial_module.TrialStatus.STOPPED
    # the next proposal's surrogate and scalarisation would see all four finished trials
    assert len(oracle._finished_feasible()) == 4


def test_a_single_tuner_still_stops_when_every_trial_is_done(tmp_path):
    oracle = _oracle(tmp_path, 1)
    trial = oracle.create_trial("tuner0")
    assert oracle.create_trial("tuner0").trial_id == trial.trial_id  # its own running trial again
    _finish(oracle, trial, 0.5)
    assert oracle.create_trial("tuner0").status == trial_module.TrialStatus.STOPPED
    assert isinstance(oracle.objective, keras_tuner.Objective)


def test_a_worker_given_up_on_that_reports_after_all_keeps_its_result_once(tmp_path):
    import io

    from pipeline.search.chief import Chief, ChiefSettings
    from pipeline.search.run import prepare_search

    search = prepare_search("digits", 2, 1, "stm32f413", "random", 0, tmp_path / "run", max_retries_per_trial=2)
    chief = Chief(search, ChiefSettings(workers=0, port=1), log=io.StringIO())
    trial = chief.create_trial("worker0")
    chief.lose("worker0", "test")  # its lease ran out: the trial waits for a retry
    assert trial.trial_id in chief.oracle._retry_queue and chief.oracle.ongoing_trials == {}
    chief.oracle.update_trial(trial.trial_id, {"error": 0.25, "accuracy": 0.75, "feasible": 1.0})
    trial.status = trial_module.TrialStatus.COMPLETED
    chief.end_trial(trial)  # worker0 was alive after all: its result is kept, the retry dropped
    assert chief.oracle._retry_queue == []
    assert chief.oracle.trials[trial.trial_id].status == trial_module.TrialStatus.COMPLETED
    chief.end_trial(trial)  # the same result again: ignored
    assert chief.oracle.end_order.count(trial.trial_id) == 1
    assert "a second result ignored" in chief.log.getvalue()
    assert chief.create_trial("worker1").trial_id != trial.trial_id  # the next worker gets a new trial
