"""A user's mistake gives one line naming the value and what is accepted, exit code 2, no traceback."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parent.parent


def _one_line_error(capfd, argv: list[str], *expected: str) -> str:
    code = main(argv)
    line = capfd.readouterr().err.strip()
    assert code == 2, line
    assert "\n" not in line and "Traceback" not in line, line
    for text in expected:
        assert text in line, line
    return line


def _search(out: Path, *extra: str) -> list[str]:
    return ["search", "--dataset", "digits", "--trials", "1", "--epochs", "1", "--quiet",
            "--out", str(out), *extra]


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_outside_0_to_2_32_is_refused(capfd, tmp_path, seed):
    _one_line_error(capfd, _search(tmp_path / "run", "--seed", seed), f"--seed {seed}", "4,294,967,295")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,value", [("--max-ram", "1"), ("--max-flash", "1"), ("--max-ram", "-5"),
                                        ("--max-flash", "-5"), ("--max-ram", "0"),
                                        ("--max-ram", "99999999")])
def test_budget_outside_what_the_board_allows_is_refused(capfd, tmp_path, flag, value):
    _one_line_error(capfd, _search(tmp_path / "run", "--board", "microbit", flag, value),
                    f"{flag} {value}", "microbit")


def test_out_below_a_file_or_in_a_read_only_place_is_refused(capfd, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    _one_line_error(capfd, _search(blocker / "run"), str(blocker / "run"), "cannot be written")
    _one_line_error(capfd, _search(blocker), str(blocker), "is a file")
    _one_line_error(capfd, _search(Path("/sys/sparse-mcu-run")), "/sys/sparse-mcu-run", "cannot be written")
    assert blocker.read_text() == "keep me"


def test_device_out_below_a_file_is_refused(capfd, tmp_path):
    from pipeline.compress import tflite_model
    from pipeline.datasets import load_dataset
    import tf_keras

    data = load_dataset("digits")
    model = tf_keras.Sequential([tf_keras.layers.Input((8, 8, 1)), tf_keras.layers.Conv2D(2, 3),
                                 tf_keras.layers.Flatten(), tf_keras.layers.Dense(10)])
    folder = tmp_path / "model"
    folder.mkdir()
    flatbuffer = tflite_model.convert_int8(model, data.x_train)
    (folder / "model_int8.tflite").write_bytes(flatbuffer)
    np.savez(folder / "test_samples.npz", x_int8=tflite_model.quantize_inputs(flatbuffer, data.x_test[:2]),
             y=data.y_test[:2])
    blocker = tmp_path / "file"
    blocker.write_text("")
    _one_line_error(capfd, ["device", "--model", str(folder / "model_int8.tflite"), "--board", "qemu-microbit",
                             "--out", str(blocker / "out")], "--out", str(blocker / "out"))


def _npz(path: Path, **changes) -> str:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (40, 8, 8), np.uint8), "y_train": np.arange(40) % 4,
              "x_test": rng.integers(0, 255, (10, 8, 8), np.uint8), "y_test": np.arange(10) % 4}
    np.savez(path, **(arrays | changes))
    return f"npz:{path}"


@pytest.mark.parametrize("case,changes,expected", [
    ("labels_10_20_30", {"y_train": (np.arange(40) % 3 + 1) * 10}, "10, 20, 30"),
    ("negative_labels", {"y_train": np.arange(40) % 4 - 1}, "-1, 0, 1, 2"),
    ("test_label_unseen", {"y_test": np.arange(10) % 5}, "y_test holds labels 4"),
    ("channels_first", {"x_train": np.zeros((40, 1, 28, 28), np.uint8),
                        "x_test": np.zeros((10, 1, 28, 28), np.uint8)}, "channels-first"),
    ("empty_test_split", {"x_test": np.zeros((0, 8, 8), np.uint8), "y_test": np.zeros(0, np.int64)},
     "x_test has 0 images"),
])
def test_npz_with_wrong_labels_layout_or_empty_split_is_refused(capfd, tmp_path, case, changes, expected):
    dataset = _npz(tmp_path / f"{case}.npz", **changes)
    _one_line_error(capfd, ["search", "--dataset", dataset, "--trials", "1", "--epochs", "1", "--quiet",
                             "--out", str(tmp_path / "run")], str(tmp_path / f"{case}.npz"), expected)
    assert not (tmp_path / "run").exists()


def test_unknown_option_names_the_real_help_command(capfd):
    with pytest.raises(SystemExit) as stop:
        main(["--bogus"])
    line = capfd.readouterr().err.strip()
    assert stop.value.code == 2 and "(see python -m pipeline --help)" in line and "pipeline pipeline" not in line
    with pytest.raises(SystemExit):
        main(["search", "--bogus"])
    assert "(see python -m pipeline search --help)" in capfd.readouterr().err


def _make_dry_run(*args: str) -> str:
    return subprocess.run(["make", "-n", "-s", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60).stdout


def test_make_bench_without_board_runs_on_qemu_and_flash_on_the_real_board():
    assert "--board qemu-stm32f4 " in _make_dry_run("bench")
    assert "--board qemu-microbit " in _make_dry_run("bench", "BOARD=qemu-microbit")
    assert "--board stm32f413 " in _make_dry_run("flash")


def test_make_search_default_out_is_one_folder_under_runs_for_an_npz_dataset():
    command = _make_dry_run("search", "DATASET=npz:/data/sets/my.digits.npz")
    out = command.split("--out ")[1].split()[0]
    assert out == "runs/npz-my.digits-stm32f413-sparse-e10-s0"


def test_device_run_without_exported_models_or_with_model_is_refused(capfd, tmp_path):
    _one_line_error(capfd, ["device", "--run", str(tmp_path)], f"--run {tmp_path}", "make export")
    _one_line_error(capfd, ["device", "--run", str(tmp_path), "--model", "x.tflite"], "--run", "--model")


def test_an_unknown_board_is_named_before_the_run_or_model_is_looked_for(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here: the board is still what the one line names
    _one_line_error(capfd, ["device", "--board", "mars"], "unknown board 'mars'", "stm32f413")
    _one_line_error(capfd, ["device", "--board", "mars", "--run", str(tmp_path)], "unknown board 'mars'")


def test_a_serial_port_that_does_not_exist_fails_before_any_build(capfd, tmp_path):
    model = tmp_path / "model_int8.tflite"
    model.write_bytes(b"not built from")
    _one_line_error(capfd, ["device", "--model", str(model), "--board", "stm32f413", "--port", str(tmp_path / "ttyACM9"),
                            "--out", str(tmp_path / "out")], "does not exist", "ttyACM9")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make_args,expected", [
    (["flash", "BOARD=stm32f413", "RUN=runs/ci", "PORT=/dev/ttyACM0"], "--run runs/ci"),
    (["bench-check", "RUN=runs/ci", "BOARDS=stm32f413"], "--boards stm32f413"),
    (["bench-baseline", "RUN=runs/ci"], "--write"),
    (["bench-engines", "RUN=runs/ci", "ENGINES=aot", "BOARD=stm32f413", "PORT=/dev/ttyACM0"], "--engines aot --port"),
])
def test_make_targets_of_the_ci_jobs_pass_their_variables_on(make_args, expected):
    result = subprocess.run(["make", "-n", *make_args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and expected in result.stdout, result.stdout + result.stderr


def test_a_script_that_imports_tensorflow_prints_only_its_own_one_line_error():
    result = subprocess.run([sys.executable, "scripts/reproduce.py", "--dataset", "foo"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --dataset 'foo' is not one the SpArSe paper reports: give one of usps2, mnist, cifar10-2 (DATASET=...)"]


@pytest.mark.parametrize("variables, expected", [
    (["EARLY_STOPPING=maybe"], "EARLY_STOPPING=maybe is not allowed: give 1"),
    (["fit-latency-model"], "FIT_RUNS is empty"),
])
def test_make_variables_that_cannot_work_stop_make_in_one_line(variables, expected):
    result = subprocess.run(["make", "-n", *variables], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_early_stopping_0_leaves_it_off_and_1_turns_it_on():
    assert "--early-stopping" not in _make_dry_run("search", "EARLY_STOPPING=0")
    assert "--early-stopping" in _make_dry_run("search", "EARLY_STOPPING=1")


def test_a_worker_without_its_chief_says_what_to_set_or_that_the_chief_did_not_answer(capfd, monkeypatch):
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)
    _one_line_error(capfd, ["worker"], "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_PORT=<its port>")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "worker0")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "http")
    _one_line_error(capfd, ["worker"], "KERASTUNER_ORACLE_PORT 'http'")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")  # nothing listens there
    started = time.monotonic()
    _one_line_error(capfd, ["worker", "--chief-timeout", "2"], "the chief at 127.0.0.1:1 did not answer",
                    "--chief-timeout")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("flags,expected", [(["--workers", "0"], "--port 0"),
                                            (["--workers", "-1"], "--workers -1"),
                                            (["--worker-timeout", "1"], "--worker-timeout 1.0")])
def test_search_distributed_refuses_settings_it_cannot_serve(capfd, tmp_path, flags, expected):
    _one_line_error(capfd, ["search-distributed", "--out", str(tmp_path / "run"), *flags], expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "-2", "nan"])
def test_a_latency_budget_that_is_not_a_positive_time_is_refused(capfd, tmp_path, value):
    _one_line_error(capfd, _search(tmp_path / "run", "--max-latency-ms", value), f"--max-latency-ms {value}",
                    "milliseconds above 0")


@pytest.mark.parametrize("value", ["1", "-0.1", "nan", "1.5"])
def test_an_accuracy_floor_that_is_not_a_fraction_below_one_is_refused(capfd, tmp_path, value):
    _one_line_error(capfd, _search(tmp_path / "run", "--min-accuracy", value), f"--min-accuracy {value}",
                    "fraction from 0")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags,expected", [(["--morphism-trials", "1"], "fewer than --trials 1"),
                                            (["--trials", "4", "--morphism-trials", "2", "--optimizer", "random"],
                                             "needs --optimizer sparse"),
                                            (["--trials", "4", "--morphism-trials", "2", "--morphism-epochs", "0"],
                                             "--morphism-epochs 0"),
                                            (["--trials", "4", "--morphism-trials", "-1"], "--morphism-trials -1")])
def test_a_morphism_stage_that_cannot_run_is_refused(capfd, tmp_path, flags, expected):
    _one_line_error(capfd, _search(tmp_path / "run", *flags), expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags,expected", [(["--early-stopping"], "--early-stopping"),
                                            (["--trials", "4", "--morphism-trials", "1"], "--morphism-trials 1")])
def test_search_distributed_refuses_the_strategies_a_worker_cannot_follow(capfd, tmp_path, flags, expected):
    _one_line_error(capfd, ["search-distributed", "--out", str(tmp_path / "run"), *flags], expected,
                    "not available with search-distributed")
    assert not (tmp_path / "run").exists()
