"""The search command end to end, on scikit-learn's digits (real training, tiny budget)."""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets import load_dataset
from pipeline.search.pareto import pareto_mask

REPO = Path(__file__).resolve().parent.parent


def _search(out: Path, *extra: str, trials: int = 3) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", "search", "--dataset", "digits", "--trials", str(trials),
           "--epochs", "1", "--out", str(out), "--quiet", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def _rows(out: Path) -> list[dict]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


DIGITS_RUN_TRIALS = 4  # three random trials, then one proposed by the scalarised GP


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """One finished 4-trial digits search (seed 0) on the micro:bit budget, shared by the tests below."""
    out = tmp_path_factory.mktemp("digits") / "run"
    result = _search(out, "--board", "microbit", "--seed", "0", trials=DIGITS_RUN_TRIALS)
    assert result.returncode == 0, result.stderr
    return out


def _export(run: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", "export", str(run), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_search_writes_results_and_pareto_column_is_the_front(digits_run):
    out = digits_run
    for name in ("trials.csv", "pareto.json", "pareto.png", "report.md", "run.json"):
        assert (out / name).is_file(), name
    rows = _rows(out)
    assert [r["trial_id"] for r in rows] == ["0", "1", "2", "3"]
    trained = [r for r in rows if r["status"] == "trained"]
    assert trained, rows
    for r in trained:
        assert int(r["working_memory_bytes"]) <= 16384 or r["feasible"] == "False"
        assert 0 < int(r["arena_bytes"]) and 0 <= float(r["int8_accuracy"]) <= 1
    points = [{"e": 1 - float(r["accuracy"] or 0), "m": int(r["model_size_bytes"] or 0),
               "w": int(r["working_memory_bytes"] or 0)} for r in rows]
    expected = pareto_mask(points, ("e", "m", "w"), [r["feasible"] == "True" for r in rows])
    assert [r["pareto"] == "True" for r in rows] == expected
    front = json.loads((out / "pareto.json").read_text())["pareto"]
    assert {p["trial_id"] for p in front} == {r["trial_id"] for r in rows if r["pareto"] == "True"}
    for p in front:
        assert (out / "pareto_models" / p["trial_id"] / "model_int8.tflite").is_file()


def test_export_writes_tflite_c_array_and_model_json_for_every_pareto_trial(digits_run):
    result = _export(digits_run)
    assert result.returncode == 0, result.stderr
    front = [r for r in _rows(digits_run) if r["pareto"] == "True"]
    assert front
    for row in front:
        folder = digits_run / "models" / row["trial_id"]
        tflite = (folder / "model_int8.tflite").read_bytes()
        assert tflite == (digits_run / "search" / f"trial_{row['trial_id']}" / "model_int8.tflite").read_bytes()
        c_source = (folder / "model_data.c").read_text()
        body = c_source[c_source.index("{") + 1:c_source.index("};")]
        assert bytes(int(b, 16) for b in body.replace("\n", " ").split(",") if b.strip()) == tflite
        assert f"g_model_data_len = {len(tflite)};" in c_source
        info = json.loads((folder / "model.json").read_text())
        assert info["input_shape"] == [1, 8, 8, 1] and info["output_shape"] == [1, 10]
        assert info["input_scale"] > 0 and -128 <= info["input_zero_point"] <= 127
        assert info["labels"] == [str(d) for d in range(10)]
        assert 0 <= info["test_accuracy"] <= 1
        assert info["test_set_size"] == len(load_dataset("digits").y_test) == 359
        assert info["metrics"]["int8_accuracy"] == float(row["int8_accuracy"])
        assert info["hyperparameters"]["num_conv_blocks"] == int(row["num_conv_blocks"])
        with np.load(folder / "test_samples.npz") as samples:
            assert samples["x_int8"].dtype == np.int8 and samples["x_int8"].shape == (100, 8, 8, 1)
            assert samples["y"].shape == (100,)


def test_export_rejects_unknown_trial_and_corrupt_model_in_one_line(digits_run, tmp_path):
    result = _export(digits_run, "--trial", "99")
    assert result.returncode == 2 and "'99'" in result.stderr and "expected one of" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    broken = tmp_path / "broken"
    for name in ("run.json", "trials.csv"):
        (broken / name).parent.mkdir(parents=True, exist_ok=True)
        (broken / name).write_bytes((digits_run / name).read_bytes())
    trial = next(r["trial_id"] for r in _rows(digits_run) if r["status"] == "trained")
    model = broken / "search" / f"trial_{trial}" / "model_int8.tflite"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"\x00" * 4 + b"TFL3" + b"\x07" * 64)
    result = _export(broken, "--trial", trial)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and str(model) in line and "corrupt" in line and "Traceback" not in line


def _report_table(run: Path) -> tuple[dict[str, list[list[str]]], str]:
    result = subprocess.run([sys.executable, "-m", "pipeline", "report", str(run)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["wrote", str(run / "report.md"), "wrote", str(run / "report.html")]
    text = (run / "report.md").read_text()
    table: dict[str, list[list[str]]] = {}
    for line in text.split("## Against the SpArSe paper")[0].splitlines():
        if line.startswith("| ") and "trial" not in line:
            cells = [c.strip() for c in line.split("|")[1:-1]]
            table.setdefault(cells[0], []).append(cells[1:])
    return table, text


def test_report_shows_every_board_and_engine_a_model_was_measured_on(digits_run):
    from pipeline.cli import main

    assert _export(digits_run).returncode == 0
    front = [r for r in _rows(digits_run) if r["pareto"] == "True"]
    table, text = _report_table(digits_run)
    assert f"make bench BOARD=qemu-microbit MODEL={digits_run / 'models'}/" in text  # run's board, full path

    measured = front[0]["trial_id"]
    model = digits_run / "models" / measured / "model_int8.tflite"
    for board in ("qemu-microbit", "qemu-stm32f4"):  # the same model on two boards, default OUT
        assert main(["device", "--model", str(model), "--board", board, "--samples", "5"]) == 0
    elsewhere = digits_run / "device-qemu-microbit"  # the README's OUT=RUN/device-<board> pattern
    assert main(["device", "--model", str(model), "--board", "qemu-microbit", "--samples", "3",
                 "--out", str(elsewhere)]) == 0
    table, _ = _report_table(digits_run)
    assert set(table) == {r["trial_id"] for r in front}
    rows = table[measured]
    assert [r[5] for r in rows] == ["qemu-microbit (aot)", "qemu-microbit (aot)", "qemu-stm32f4 (aot)"]
    info = json.loads((model.parent / "model.json").read_text())
    device = json.loads((model.parent / "device-qemu-stm32f4-aot" / "device.json").read_text())
    assert rows[2][1] == f"{100 * info['test_accuracy']:.2f}"
    assert rows[2][2] == f"{int(front[0]['model_size_bytes']):,}"
    assert rows[2][6] == f"{device['flash_bytes']:,}" and all(r[-1] == "1.00" for r in rows)
    from pipeline.search.latency import load_latency_model

    predicted = load_latency_model().model_instructions(model.read_bytes(), "cortex-m4")
    assert rows[2][9:11] == [f"{device['latency_instructions']:,} instr", f"{predicted:,} instr"]
    assert device["arena_bytes"] == device["working_memory_bytes"]


def test_same_seed_zero_gives_the_same_trials_and_weights(digits_run, tmp_path):
    again = tmp_path / "again"
    result = _search(again, "--board", "microbit", "--seed", "0", trials=DIGITS_RUN_TRIALS)
    assert result.returncode == 0, result.stderr
    from pipeline.search.space import hyperparameter_names

    names = ["trial_id", "status", *hyperparameter_names()]
    first, second = _rows(digits_run), _rows(again)
    assert [[r[k] for k in names] for r in first] == [[r[k] for k in names] for r in second]
    for row in first:
        if row["status"] == "trained":
            model = Path("search") / f"trial_{row['trial_id']}" / "model_int8.tflite"
            assert (digits_run / model).read_bytes() == (again / model).read_bytes()
    assert json.loads((again / "run.json").read_text())["seed"] == 0


def test_export_and_report_read_zero_padded_trial_ids_as_written(digits_run, tmp_path):
    # keras-tuner's own naming (trials "00", "01", ... when TRIALS >= 10), as older runs have it
    padded = tmp_path / "padded"
    shutil.copytree(digits_run / "search", padded / "search")
    shutil.copy2(digits_run / "run.json", padded / "run.json")
    for trial in (padded / "search").glob("trial_*"):
        trial.rename(trial.with_name(f"trial_{int(trial.name[6:]):02d}"))
    text = (digits_run / "trials.csv").read_text().splitlines()
    (padded / "trials.csv").write_text("\n".join([text[0]] + [f"{int(line.split(',')[0]):02d}," + line.split(",", 1)[1]
                                                               for line in text[1:]]) + "\n")
    trained = next(r["trial_id"] for r in _rows(digits_run) if r["status"] == "trained")
    for given in (f"{int(trained):02d}", trained):  # as written, or as the same number
        result = _export(padded, "--trial", given)
        assert result.returncode == 0, result.stderr
        assert (padded / "models" / f"{int(trained):02d}" / "model.json").is_file()
    result = _export(padded)
    assert result.returncode == 0, result.stderr
    table, _ = _report_table(padded)
    assert set(table) == {f"{int(r['trial_id']):02d}" for r in _rows(digits_run) if r["pareto"] == "True"}


def test_bench_without_model_finds_the_latest_search_at_any_depth_under_runs(digits_run, tmp_path):
    from pipeline.deploy.device import latest_best_model
    from pipeline.search.results import best_trial

    nested = tmp_path / "runs" / "npz:" / "data" / "run"
    shutil.copytree(digits_run, nested)
    best = best_trial([{**r, "pareto": r["pareto"] == "True", "accuracy": float(r["accuracy"] or 0),
                        "model_size_bytes": int(r["model_size_bytes"] or 0)} for r in _rows(digits_run)])
    assert latest_best_model(tmp_path / "runs") == nested / "models" / best["trial_id"] / "model_int8.tflite"


def test_export_of_a_run_with_nothing_trained_says_so_without_suggesting_a_trial(tmp_path):
    out = tmp_path / "run"
    result = _search(out, "--max-flash", "2")  # every candidate is over this budget: none is trained
    assert result.returncode == 0, result.stderr
    assert {r["status"] for r in _rows(out)} == {"infeasible"}
    result = _export(out)
    line = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in line
    assert "no trained model" in line and "--trial" not in line


def test_a_search_stopped_by_failures_records_every_failed_trial(tmp_path, monkeypatch):
    """The third consecutive failure stops the search; it is still saved as FAILED and reported."""
    from keras_tuner.errors import FailedTrialError

    from pipeline.errors import UserError
    from pipeline.search.run import MAX_CONSECUTIVE_FAILURES, run_search
    from pipeline.search.tuner import SparseTuner

    def failing_trial(self, trial, *args, **kwargs):  # the stimulus: a trial that cannot train
        raise FailedTrialError(f"out of memory: trial {trial.trial_id} needed more than this machine has")

    monkeypatch.setattr(SparseTuner, "run_trial", failing_trial)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="consecutive failed trials"):
        run_search("digits", 6, 1, "stm32f413", "sparse", 0, out, quiet=True)
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["failed"] * MAX_CONSECUTIVE_FAILURES
    report = (out / "report.md").read_text()
    for row in rows:
        assert row["reason"] == f"out of memory: trial {row['trial_id']} needed more than this machine has"
        assert f"- {row['trial_id']}: {row['reason']}" in report
        saved = json.loads((out / "search" / f"trial_{row['trial_id']}" / "trial.json").read_text())
        assert saved["status"] == "FAILED"


def test_search_resumes_after_kill_without_losing_or_repeating_trials(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipeline", "search", "--dataset", "digits", "--trials", "3",
           "--epochs", "1", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (out / "trials.csv").is_file():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # mid-way through the second trial
    proc.wait(timeout=30)
    first = _rows(out)
    assert len(first) == 1
    result = _search(out)
    assert result.returncode == 0, result.stderr
    rows = _rows(out)
    assert [r["trial_id"] for r in rows] == ["0", "1", "2"]
    # the finished trial is kept as it was; only its pareto flag may change, since it depends on later trials
    assert {k: v for k, v in rows[0].items() if k != "pareto"} == {k: v for k, v in first[0].items() if k != "pareto"}


def test_output_dir_of_a_different_search_is_refused_intact(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"dataset": "usps", "board": "stm32f413"}))
    before = (out / "run.json").read_text()
    result = _search(out)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "holds a different search" in result.stderr
    assert (out / "run.json").read_text() == before


def test_unknown_board_and_dataset_give_one_line_errors(tmp_path):
    for flag, value, accepted in (("--board", "stm32", "stm32f413"), ("--dataset", "usp", "usps"),
                                  ("--optimizer", "grid", "kt-bayes")):
        result = _search(tmp_path / flag.strip("-"), flag, value)
        assert result.returncode == 2, result.stderr
        line = result.stderr.strip()
        assert "\n" not in line and value in line and accepted in line and "Traceback" not in line


def test_device_over_a_run_skips_a_model_too_big_for_the_board_and_runs_the_others(digits_run, tmp_path):
    import tf_keras as keras

    from pipeline.compress import tflite_model

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    if not list(run.glob("models/*/model_int8.tflite")):
        assert _export(run).returncode == 0
    fitting = sorted(run.glob("models/*/model_int8.tflite"))
    # 8 x 8 x 5,000 int8 weights: 320 KB, over the micro:bit's 256 KB of flash; and 8 x 8 x 3,800 with
    # their biases: 258,400 B, under it, but not once the multipliers and the engine's code are linked
    data = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
    for trial, width in (("99", 5000), ("98", 3800)):
        big = keras.Sequential([keras.layers.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(width)])
        (run / "models" / trial).mkdir()
        (run / "models" / trial / "model_int8.tflite").write_bytes(tflite_model.convert_int8(big, data, seed=0))
        shutil.copy(fitting[0].parent / "test_samples.npz", run / "models" / trial)  # digits inputs, as exported
    result = subprocess.run([sys.executable, "-m", "pipeline", "device", "--board", "qemu-microbit", "--run",
                             str(run), "--samples", "2"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    skipped = sorted(line for line in result.stdout.splitlines() if line.startswith("skipped:"))
    assert len(skipped) == 2 and "models/98/model_int8.tflite does not fit qemu-microbit" in skipped[0]
    assert "over the FLASH" in skipped[0] and "models/99/model_int8.tflite does not fit qemu-microbit" in skipped[1]
    for trial in ("98", "99"):  # no empty folder left behind
        assert not (run / "models" / trial / "device-qemu-microbit-aot").exists()
    for model in fitting:
        assert (model.parent / "device-qemu-microbit-aot" / "device.json").is_file()
