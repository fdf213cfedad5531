"""The search command end to end, on scikit-learn's digits (real training, tiny budget)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets import load_dataset
from pipeline.pareto import pareto_mask

REPO = Path(__file__).resolve().parent.parent


def _search(out: Path, *extra: str, trials: int = 3) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", "search", "--dataset", "digits", "--trials", str(trials),
           "--epochs", "1", "--out", str(out), "--quiet", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def _rows(out: Path) -> list[dict]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """One finished 3-trial digits search on the micro:bit budget, shared by the tests below."""
    out = tmp_path_factory.mktemp("digits") / "run"
    result = _search(out, "--board", "microbit")
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
    assert [r["trial_id"] for r in rows] == ["0", "1", "2"]
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


def test_report_joins_search_export_and_device_figures_per_pareto_trial(digits_run):
    from pipeline.device import run_device

    assert _export(digits_run).returncode == 0
    front = [r for r in _rows(digits_run) if r["pareto"] == "True"]
    measured = front[0]["trial_id"]
    model = digits_run / "models" / measured / "model_int8.tflite"
    device = run_device(model, "qemu-microbit", "aot", model.parent / "qemu-microbit", samples=5)
    result = subprocess.run([sys.executable, "-m", "pipeline", "report", str(digits_run)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in result.stdout.splitlines() if line.startswith("| ") and "trial" not in line}
    assert set(table) == {r["trial_id"] for r in front}
    row = table[measured]
    info = json.loads((model.parent / "model.json").read_text())
    assert row[1] == f"{100 * info['test_accuracy']:.2f}"
    assert row[2] == f"{int(front[0]['model_size_bytes']):,}"
    assert row[5] == "qemu-microbit (aot)" and row[6] == f"{device['flash_bytes']:,}"
    assert row[-1] == "1.00"


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
