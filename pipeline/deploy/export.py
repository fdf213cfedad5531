"""Export the models of a search run: the .tflite, a C array of it, and model.json.

For every Pareto trial (or one chosen trial) of RUN_DIR this writes
RUN_DIR/models/<trial_id>/:

- ``model_int8.tflite``: the converted model the search measured;
- ``model_data.h`` / ``model_data.c``: the same bytes as a C array
  (``g_model_data``, ``g_model_data_len``, 16-byte aligned) for TFLite Micro;
- ``model.json``: input shape, scale and zero point, output quantisation,
  labels, every metric of the trial, and the int8 accuracy on the test split,
  computed here once with the host TFLite Micro interpreter;
- ``test_samples.npz``: the first test images as int8 model inputs with their
  labels (``x_int8``, ``y``), what `device` sends to a board.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.compress import tflite_model
from pipeline.errors import UserError
from pipeline.search.results import same_trial, trial_sort_key

DEVICE_SAMPLES = 100


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """run.json and the rows of trials.csv of a finished search; UserError when absent."""
    run_file, trials_file = run_dir / "run.json", run_dir / "trials.csv"
    if not run_file.is_file() or not trials_file.is_file():
        raise UserError(f"{str(run_dir)!r} is not a search output directory (no run.json and trials.csv): "
                        "give the --out of a finished `python -m pipeline search`")
    with trials_file.open(newline="") as f:
        rows = [{k: v if k == "trial_id" else _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return json.loads(run_file.read_text()), rows


def latest_run(runs_dir: Path) -> Path:
    """The search under ``runs_dir`` (at any depth) whose results were written last."""
    summaries = sorted((p for p in runs_dir.rglob("pareto.json") if (p.parent / "run.json").is_file()),
                       key=lambda p: p.stat().st_mtime)
    if not summaries:
        raise UserError(f"no finished search under {runs_dir}/: run make search first, or give RUN=DIR")
    return summaries[-1].parent


def pareto_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Pareto trials of a run's rows, smallest model first."""
    return sorted((r for r in rows if r["pareto"]),
                  key=lambda r: (r["model_size_bytes"], trial_sort_key(r["trial_id"])))


def _parse(text: str) -> Any:
    """A trials.csv cell as the value it was written from."""
    if text in ("True", "False"):
        return text == "True"
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def export_run(run_dir: Path, trial_id: str | None = None, data_dir: str | None = None,
               samples: int = DEVICE_SAMPLES) -> list[Path]:
    """Exports the Pareto trials of a run (or one trial); returns the model folders written."""
    from pipeline.datasets import load_dataset

    run, rows = load_run(run_dir)
    trained = [r["trial_id"] for r in rows if r["status"] in ("trained", "below-floor")]
    if trial_id is not None:
        row = next((r for r in rows if same_trial(str(trial_id), r["trial_id"])), None)
        if row is None or row["trial_id"] not in trained:
            raise UserError(f"trial {trial_id!r} of {run_dir} has no trained model: expected one of "
                            f"{', '.join(trained) or '(none trained yet: run more trials)'}")
        chosen = [row]
    else:
        chosen = [r for r in rows if r["pareto"]]
        if not chosen and trained:
            raise UserError(f"{run_dir} has no Pareto model (no trained trial fits the budget above the "
                            f"accuracy floor {run.get('min_accuracy') or 0}): run more "
                            f"trials, or export a trained one with --trial ID ({', '.join(trained)})")
        if not chosen:
            raise UserError(f"{run_dir} has no trained model yet (every trial was infeasible or failed; "
                            f"see {run_dir / 'trials.csv'}): run more trials or relax the budget")
    # the search's own data dir serves when neither --data-dir nor $SPARSE_DATA_DIR says otherwise
    data = load_dataset(run["dataset"], data_dir or os.environ.get("SPARSE_DATA_DIR") or run.get("data_dir"))
    written = []
    for row in chosen:
        written.append(_export_trial(run_dir, run, row, data, samples))
    return written


def _export_trial(run_dir: Path, run: dict[str, Any], row: dict[str, Any], data, samples: int) -> Path:
    trial_id = row["trial_id"]
    source = run_dir / "search" / f"trial_{trial_id}" / "model_int8.tflite"
    model = tflite_model.read_tflite(source)
    target = run_dir / "models" / trial_id
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target / "model_int8.tflite")
    write_c_array(model, target / "model_data")

    x_test = tflite_model.quantize_inputs(model, data.x_test)
    arena = int(row.get("arena_bytes") or tflite_model.smallest_arena(model))
    predictions = tflite_model.tflm_run(model, x_test, arena + 1024).argmax(axis=1)
    test_accuracy = float(np.mean(predictions == data.y_test))
    np.savez_compressed(target / "test_samples.npz", x_int8=x_test[:samples], y=data.y_test[:samples])

    info = {"trial_id": trial_id, "dataset": run["dataset"], "board": run["board"],
            **tflite_model.quantization(model), "labels": list(data.labels),
            "test_accuracy": round(test_accuracy, 6), "test_set_size": int(len(data.y_test)),
            "metrics": {k: v for k, v in row.items() if k not in _hyperparameter_names() and k != "reason"},
            "hyperparameters": {k: v for k, v in row.items() if k in _hyperparameter_names() and v is not None}}
    (target / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    return target


def _hyperparameter_names() -> set[str]:
    from pipeline.search.space import hyperparameter_names

    return set(hyperparameter_names())


def write_c_array(data: bytes, stem: Path, symbol: str = "g_model_data") -> None:
    """Writes ``stem.h`` and ``stem.c`` holding ``data`` as an aligned const byte array."""
    guard = f"{stem.name.upper()}_H_"
    stem.with_suffix(".h").write_text(
        f"#ifndef {guard}\n#define {guard}\n\n#include <stddef.h>\n#include <stdint.h>\n\n"
        f"#ifdef __cplusplus\nextern \"C\" {{\n#endif\n\nextern const uint8_t {symbol}[];\n"
        f"extern const size_t {symbol}_len;\n\n#ifdef __cplusplus\n}}\n#endif\n\n#endif  // {guard}\n")
    lines = [", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    body = ",\n  ".join(lines)
    stem.with_suffix(".c").write_text(
        f"// Generated by `python -m pipeline export`; do not edit.\n#include \"{stem.name}.h\"\n\n"
        f"__attribute__((aligned(16))) const uint8_t {symbol}[] = {{\n  {body}\n}};\n"
        f"const size_t {symbol}_len = {len(data)};\n")
