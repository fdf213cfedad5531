"""`search`: run (or resume) one search into an output directory."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras_tuner
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from tqdm import tqdm

from pipeline.datasets import load_dataset, resolve_data_dir
from pipeline.deploy.boards import get_board
from pipeline.deploy.engine_costs import engine_cost
from pipeline.errors import UserError, ensure_directory
from pipeline.search import morphism
from pipeline.search.builder import SparseHyperModel
from pipeline.search.oracle import (KerasTunerBayesianOracle, RandomOracle, SparseOracle, check_min_accuracy,
                                    check_seed, default_min_accuracy)
from pipeline.search.results import best_trial, front_hypervolume, run_floor, write_results
from pipeline.search.tuner import Budget, SparseTuner, analytical_costs

OPTIMIZERS = ("sparse", "random", "kt-bayes", "nsga2")
RUN_FILE = "run.json"
IDENTITY = ("dataset", "board", "max_ram", "max_flash", "max_latency_ms", "min_accuracy", "early_stopping",
            "morphism_trials", "morphism_epochs", "optimizer", "seed", "epochs", "engine")
# what runs made before a setting existed did
IDENTITY_DEFAULTS = {"engine": "aot", "max_latency_ms": None, "min_accuracy": 0.0, "early_stopping": False,
                     "morphism_trials": 0, "morphism_epochs": 0}
MAX_CONSECUTIVE_FAILURES = 3
PROJECT = "search"  # keras-tuner's project folder inside --out: search/trial_<id>/


@dataclasses.dataclass
class PreparedSearch:
    """A search set up in its output directory, ready to run here or to serve to workers."""

    run: dict[str, Any]
    out: Path
    data: Any
    budget: Budget
    tuner: SparseTuner
    trials: int

    @property
    def oracle(self):
        """The search algorithm (a keras-tuner Oracle)."""
        return self.tuner.oracle

    def write_results(self) -> list[dict[str, Any]]:
        """Rewrites trials.csv, pareto.json, the plots and the report from the oracle's trials."""
        return write_results(self.out, self.oracle, self.run)

    def summary(self, rows: list[dict[str, Any]]) -> str:
        """One line: the best model and the hypervolume so far."""
        return _progress(rows, self.run)

    def stopped_by_failures(self, exc: RuntimeError) -> UserError:
        """The one-line error for a search keras-tuner stopped after consecutive failures."""
        self.write_results()
        return UserError(f"the search stopped after {MAX_CONSECUTIVE_FAILURES} consecutive failed trials "
                         f"(last: {str(exc).strip().splitlines()[-1]}); see {self.out / 'trials.csv'}")


def prepare_search(dataset: str, trials: int, epochs: int, board: str, optimizer: str, seed: int,
                   out: Path, data_dir: str | None = None, max_ram: int | None = None,
                   max_flash: int | None = None, engine: str = "aot",
                   on_trial_done: Callable[[], None] | None = None,
                   max_retries_per_trial: int = 0, max_latency_ms: float | None = None,
                   min_accuracy: float | None = None, early_stop: bool = False,
                   morphism_trials: int = 0, morphism_epochs: int | None = None) -> PreparedSearch:
    """Checks the settings, claims ``out`` (or finds the same search there) and makes the tuner.

    A candidate is feasible when its MS and WM fit ``max_flash`` and
    ``max_ram`` and its firmware, with ``engine``'s measured fixed costs,
    fits the board, and, with ``max_latency_ms``, when the AOT engine's predicted
    instructions per inference fit that time at the board's clock (one cycle
    per instruction). ``max_retries_per_trial``: how many times a trial whose
    run was lost (a worker that died) is run again before it counts as failed.
    ``min_accuracy``: the accuracy floor (None: the dataset's default, see
    :func:`~pipeline.search.oracle.default_min_accuracy`). ``early_stop``: stop
    hopeless trials at their rungs and spend the saved epochs on more trials.
    ``morphism_trials``: the last this many trials are morphisms of Pareto models
    (SpArSe's third stage; sparse only), each fine-tuned ``morphism_epochs``
    epochs (None: a third of ``epochs``, at least 1).
    """
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    for name, value in (("trials", trials), ("epochs", epochs)):
        if value < 1:
            raise UserError(f"--{name} {value} is not allowed: give a whole number of at least 1")
    check_seed(seed)
    morphism_epochs = _morphism_stage(optimizer, trials, epochs, morphism_trials, morphism_epochs)
    if min_accuracy is not None:
        check_min_accuracy(min_accuracy)
    spec = get_board(board)
    engine_cost(board, engine)  # an unknown engine or board stops here, before the data is read
    data = load_dataset(dataset, data_dir)
    run = {"dataset": dataset, "board": board,
           "max_ram": _budget("--max-ram", max_ram, spec.ram_bytes, int(np.prod(data.input_shape)),
                              "RAM", spec.name, "the input image alone needs"),
           "max_flash": _budget("--max-flash", max_flash, spec.flash_bytes, 2, "flash", spec.name,
                                "the log-scaled size objective needs"),
           "max_latency_ms": _latency_budget(max_latency_ms),
           "min_accuracy": default_min_accuracy(data.y_train) if min_accuracy is None else float(min_accuracy),
           "early_stopping": bool(early_stop),
           "morphism_trials": morphism_trials, "morphism_epochs": morphism_epochs if morphism_trials else 0,
           "optimizer": optimizer, "seed": seed, "epochs": epochs, "engine": engine,
           "data_dir": str(resolve_data_dir(data_dir, dataset))}  # not part of its identity: export reads it
    _claim_output_dir(out, run)
    budget = make_budget(run)
    oracle = _make_oracle(optimizer, trials, seed, data, budget, max_retries_per_trial, run["min_accuracy"],
                          morphism_trials)
    (out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    tuner = SparseTuner(oracle, SparseHyperModel(data.input_shape, data.num_classes), data, epochs,
                        budget, seed, on_trial_done=on_trial_done, min_accuracy=run["min_accuracy"],
                        early_stop=early_stop, morphism_epochs=morphism_epochs, directory=str(out),
                        project_name=PROJECT)
    tuner.update_allowance(trials)
    return PreparedSearch(run, out, data, budget, tuner, trials)


def make_budget(run: dict[str, Any]) -> Budget:
    """The resource budget of a run (its run.json settings)."""
    spec = get_board(run["board"])
    latency_ms = run.get("max_latency_ms")
    return Budget(run["max_ram"], run["max_flash"], engine_cost(run["board"], run["engine"]),
                  spec.ram_bytes, spec.flash_bytes, core=spec.core,
                  max_latency_instructions=int(latency_ms * spec.clock_hz / 1000) if latency_ms else 0)


def _latency_budget(value: float | None) -> float | None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise UserError(f"--max-latency-ms {value} is not allowed: give a number of milliseconds above 0, "
                        "or leave it out for no latency budget")
    return value


def run_search(dataset: str, trials: int, epochs: int, board: str, optimizer: str, seed: int,
               out: Path, data_dir: str | None = None, max_ram: int | None = None,
               max_flash: int | None = None, quiet: bool = False, engine: str = "aot",
               max_latency_ms: float | None = None, min_accuracy: float | None = None,
               early_stop: bool = False, morphism_trials: int = 0,
               morphism_epochs: int | None = None) -> list[dict[str, Any]]:
    """Runs a search in this process until ``trials`` trials have ended; resumes when ``out`` holds the same search."""
    bar = tqdm(total=trials, desc="trials", unit="trial", disable=quiet, dynamic_ncols=True)

    def on_trial_done() -> None:
        rows = search.write_results()
        bar.n = len(rows)
        bar.total = search.oracle.max_trials  # early stopping's saved epochs buy trials
        bar.set_postfix_str(search.summary(rows))

    try:
        search = prepare_search(dataset, trials, epochs, board, optimizer, seed, out, data_dir, max_ram,
                                max_flash, engine, on_trial_done, max_latency_ms=max_latency_ms,
                                min_accuracy=min_accuracy, early_stop=early_stop,
                                morphism_trials=morphism_trials, morphism_epochs=morphism_epochs)
    except BaseException:
        bar.close()
        raise
    rows = search.write_results()
    bar.n = len(rows)
    bar.refresh()
    try:
        with quiet_surrogates():
            search.tuner.search(verbose=0)
    except RuntimeError as exc:
        if "consecutive failures" not in str(exc):
            raise
        bar.close()
        raise search.stopped_by_failures(exc) from None
    rows = search.write_results()
    bar.set_postfix_str(search.summary(rows))
    bar.close()
    if not quiet:
        print(f"done: {len(rows)} trials in {out}; {search.summary(rows)}")
    return rows


@contextlib.contextmanager
def quiet_surrogates():
    """keras-tuner's own GP (kt-bayes) warns when a length scale meets its bound: surrogate
    chatter on a handful of points that no user can act on, as in our oracle."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        yield


def _progress(rows: list[dict[str, Any]], run: dict[str, Any]) -> str:
    best = best_trial(rows)
    hv = front_hypervolume(rows, run["max_flash"], run["max_ram"], run_floor(run))
    if best is None:
        return f"no feasible model above the {100 * run_floor(run):.1f} % floor yet, hypervolume {hv:.4f}"
    return (f"best {100 * best['accuracy']:.1f}% at MS {best['model_size_bytes']:,} B / "
            f"WM {best['working_memory_bytes']:,} B, hypervolume {hv:.4f} (ref 1,1,1)")


def _budget(flag: str, value: int | None, board_bytes: int, least: int, what: str, board: str,
            why: str) -> int:
    """A RAM or flash budget: the board's own when not given, else checked against the board."""
    if value is None:
        return board_bytes
    if not least <= value <= board_bytes:
        raise UserError(f"{flag} {value} is not allowed: give a whole number of bytes from {least:,} "
                        f"({why}) to {board_bytes:,} ({board}'s {what}), or leave it out for the board's")
    return value


def _claim_output_dir(out: Path, run: dict[str, Any]) -> None:
    """Refuses an output directory that holds a different search or something else."""
    ensure_directory(out, "--out")
    existing = out / RUN_FILE
    if existing.is_file():
        old = json.loads(existing.read_text())
        differs = [k for k in IDENTITY if old.get(k, IDENTITY_DEFAULTS.get(k)) != run[k]]
        if differs:
            detail = ", ".join(f"{k} {old.get(k)!r} (now {run[k]!r})" for k in differs)
            raise UserError(f"--out {str(out)!r} holds a different search ({detail}): "
                            "choose another --out, or repeat the original settings to resume")
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} is not empty and holds no {RUN_FILE}: "
                        "choose a new or empty directory")


def _morphism_stage(optimizer: str, trials: int, epochs: int, morphism_trials: int,
                    morphism_epochs: int | None) -> int:
    """Checks the morphism stage's settings; returns its fine-tuning epochs."""
    if not 0 <= morphism_trials < trials:
        raise UserError(f"--morphism-trials {morphism_trials} is not allowed: give a whole number from 0 to "
                        f"{trials - 1} (fewer than --trials {trials}: the stage needs trained models to morph)")
    if morphism_trials and optimizer != "sparse":
        raise UserError(f"--morphism-trials {morphism_trials} needs --optimizer sparse (the stage follows its "
                        f"Bayesian stage), not {optimizer}: leave it out or use sparse")
    if morphism_epochs is None:
        return max(1, epochs // 3)
    if not 1 <= morphism_epochs <= epochs:
        raise UserError(f"--morphism-epochs {morphism_epochs} is not allowed: give a whole number from 1 to "
                        f"--epochs {epochs}")
    return morphism_epochs


def _make_oracle(optimizer: str, trials: int, seed: int, data, budget: Budget, max_retries_per_trial: int,
                 min_accuracy: float, morphism_trials: int = 0):
    common = {"max_trials": trials, "seed": seed, "max_retries_per_trial": max_retries_per_trial,
              "max_consecutive_failed_trials": MAX_CONSECUTIVE_FAILURES}
    if optimizer == "sparse":
        return SparseOracle(lambda v: analytical_costs(v, data.input_shape, data.num_classes, budget),
                            budget.max_flash, budget.max_ram, min_accuracy=min_accuracy,
                            morphism_trials=morphism_trials,
                            morphisms_of=lambda v: morphism.candidates(v, data.input_shape, data.num_classes),
                            **common)
    if optimizer == "nsga2":
        from pipeline.search.nsga2 import NSGA2Oracle  # imports optuna only when asked for

        return NSGA2Oracle(budget.max_flash, budget.max_ram, min_accuracy=min_accuracy, **common)
    if optimizer == "random":
        return RandomOracle(objective=keras_tuner.Objective("error", "min"), **common)
    return KerasTunerBayesianOracle(
        objective=keras_tuner.Objective("weighted_sum", "min"), num_initial_points=3, **common)
