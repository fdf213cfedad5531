"""The `report` stage: what the search promised next to what export and the device measured.

For every Pareto trial of a run it joins the trials.csv row (int8 validation
accuracy, MS, WM, host TFLM arena), the exported model.json (test accuracy)
and every device.json anywhere under RUN whose model is that trial's
(flash, RAM, latency, outputs_match): one row per board and engine measured,
so a reader sees in one table whether the numbers on the chip are the ones
the search promised.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.boards import emulated_twin
from pipeline.export import load_run, pareto_rows

_COLUMNS = ("trial", "int8 val acc %", "test acc %", "MS B", "WM B", "host arena B", "board",
            "flash B", "RAM B", "arena B", "latency", "outputs match")


def device_results(run_dir: Path, model: Path) -> list[dict[str, Any]]:
    """Every device.json under ``run_dir`` measured on ``model``, by board and engine.

    A result names its model by sha256 (older ones only by path), so results
    written to any folder of the run are found, whatever OUT was.
    """
    if not model.is_file():
        return []
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    found = []
    for path in sorted(run_dir.rglob("device.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if result.get("model_sha256") == digest or (
                "model_sha256" not in result and Path(result.get("model", "")).resolve() == model.resolve()):
            found.append(result)
    return sorted(found, key=lambda r: (r["board"], r["engine"]))


def report_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per (Pareto trial, device measurement); trials never run on a device get one row."""
    _, rows = load_run(run_dir)
    table = []
    for row in pareto_rows(rows):
        model_dir = run_dir / "models" / row["trial_id"]
        info_file = model_dir / "model.json"
        test_accuracy = json.loads(info_file.read_text())["test_accuracy"] if info_file.is_file() else None
        base = {"trial": row["trial_id"], "int8 val acc %": _percent(row["int8_accuracy"]),
                "test acc %": _percent(test_accuracy), "MS B": f"{row['model_size_bytes']:,}",
                "WM B": f"{row['working_memory_bytes']:,}", "host arena B": f"{row['arena_bytes']:,}"}
        devices = device_results(run_dir, model_dir / "model_int8.tflite") or [None]
        for device in devices:
            table.append(base | _device_columns(device))
    return table


def _device_columns(device: dict[str, Any] | None) -> dict[str, str]:
    if device is None:
        return {"board": "not run", "flash B": "", "RAM B": "", "arena B": "", "latency": "",
                "outputs match": ""}
    if "latency_instructions" in device:
        latency = f"{device['latency_instructions']:,} instr"
    else:
        latency = f"{device['latency_ms']} ms"
    return {"board": f"{device['board']} ({device['engine']})", "flash B": f"{device['flash_bytes']:,}",
            "RAM B": f"{device['ram_bytes']:,}", "arena B": f"{device['arena_bytes']:,}",
            "latency": latency, "outputs match": f"{device['outputs_match']:.2f}"}


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def format_report(run_dir: Path) -> str:
    """The report as a markdown table, with a line saying how to fill its gaps."""
    run, _ = load_run(run_dir)
    rows = report_rows(run_dir)
    lines = [f"Pareto models of {run_dir}: the search's figures, then each device measurement", "",
             "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in _COLUMNS) + " |" for r in rows]
    if not rows:
        lines.append("(no Pareto trial: the run has no feasible trained model)")
    elif any(r["test acc %"] == "" for r in rows):
        lines += ["", f"Empty test accuracy: run `make export RUN={run_dir}`."]
    not_run = [r["trial"] for r in rows if r["board"] == "not run"]
    if not_run:
        model = run_dir / "models" / not_run[0] / "model_int8.tflite"
        lines += ["", f"Not run on a device: `make bench BOARD={emulated_twin(run['board'])} MODEL={model}` "
                  f"(trials {', '.join(not_run)})."]
    return "\n".join(lines) + "\n"
