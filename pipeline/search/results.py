"""Search results on disk: trials.csv, pareto.json, pareto.png, report.md, Pareto models.

Everything is derived from keras-tuner's trial records, so the files are
rewritten whole after every trial and a resumed search rewrites them the same.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from keras_tuner.engine import trial as trial_module

from pipeline.search import pareto
from pipeline.search.oracle import OBJECTIVES, normalised_objectives
from pipeline.search.space import hyperparameter_names

METRIC_COLUMNS = ("accuracy", "int8_accuracy", "float_accuracy", "model_size_bytes",
                  "working_memory_bytes", "analytical_model_size_bytes",
                  "analytical_working_memory_bytes", "aot_arena_bytes", "firmware_flash_bytes",
                  "firmware_ram_bytes", "predicted_instructions", "sparsity", "flatbuffer_bytes", "arena_bytes")
PARETO_OBJECTIVES = ("error", "model_size_bytes", "working_memory_bytes")
HYPERVOLUME_REFERENCE = {"error": 1.0, "model_size": 1.0, "working_memory": 1.0}


def trial_sort_key(trial_id: str) -> tuple[int, str]:
    """Orders trial ids by number ("2" before "10"), any non-numeric id last."""
    return (int(trial_id), trial_id) if trial_id.isdigit() else (1 << 62, trial_id)


def same_trial(given: str, trial_id: str) -> bool:
    """True when a user's trial id names ``trial_id``: as written, or as the same number ("00" is "0")."""
    return given == trial_id or (given.isdigit() and trial_id.isdigit() and int(given) == int(trial_id))


def trial_rows(oracle, min_accuracy: float = 0.0) -> list[dict[str, Any]]:
    """One row per ended trial, in numeric trial-id order, with the pareto column filled in.

    A trial's status is ``trained``, ``below-floor`` (trained, but its int8
    accuracy is under ``min_accuracy``), ``stopped`` (early stopping),
    ``infeasible`` (never trained: it breaks the budget) or ``failed``. Only
    trained trials within the budget can be on the front.
    """
    rows = []
    waiting = set(getattr(oracle, "_retry_queue", ()))  # lost runs that will run again: not ended
    for trial_id in sorted(oracle.trials, key=trial_sort_key):
        trial = oracle.trials[trial_id]
        if trial_id in waiting or trial.status not in (trial_module.TrialStatus.COMPLETED, trial_module.TrialStatus.FAILED,
                                trial_module.TrialStatus.INVALID):
            continue
        metric = lambda name: (trial.metrics.get_last_value(name)  # noqa: E731
                               if trial.metrics.exists(name) else None)
        completed = trial.status == trial_module.TrialStatus.COMPLETED
        feasible = bool(metric("feasible")) if completed else False
        trained = completed and metric("int8_accuracy") is not None
        status = "trained" if trained else ("infeasible" if completed else "failed")
        if trained and metric("int8_accuracy") < min_accuracy:
            status, trained = "below-floor", False
        elif completed and metric("stopped_at_epoch") is not None:
            status = "stopped"
        row: dict[str, Any] = {"trial_id": trial_id, "status": status}
        row.update({name: trial.hyperparameters.values.get(name) for name in hyperparameter_names()})
        for name in METRIC_COLUMNS:
            value = metric(name)
            whole = name.endswith("bytes") or name.endswith("instructions")
            row[name] = None if value is None else (int(value) if whole else round(value, 6))
        row["feasible"] = feasible and trained
        row["stopped_at_epoch"] = None if metric("stopped_at_epoch") is None else int(metric("stopped_at_epoch"))
        morph = getattr(oracle, "morphs", {}).get(trial_id)
        row["parent_trial"] = morph["parent"] if morph else ""
        row["morphism"] = morphism_name(morph) if morph else ""
        row["seconds"] = round(metric("seconds") or 0.0, 2)
        row["reason"] = _last_line(trial.message) if status == "failed" else ""
        rows.append(row)
    points = [{"error": 1 - (r["accuracy"] or 0), "model_size_bytes": r["model_size_bytes"] or 0,
               "working_memory_bytes": r["working_memory_bytes"] or 0} for r in rows]
    mask = pareto.pareto_mask(points, PARETO_OBJECTIVES, [r["feasible"] for r in rows])
    for row, on_front in zip(rows, mask):
        row["pareto"] = on_front
    return rows


def _last_line(message: str | None) -> str:
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "unknown failure"


def front_hypervolume(rows: list[dict[str, Any]], max_flash: int, max_ram: int,
                      min_accuracy: float = 0.0) -> float:
    """Hypervolume of the feasible front in normalised objectives, reference point (1, 1, 1).

    With a floor, the error axis spans the error the floor allows, so only
    models above the floor add volume.
    """
    points = [normalised_objectives(1 - r["accuracy"], r["model_size_bytes"], r["working_memory_bytes"],
                                    max_flash, max_ram, min_accuracy) for r in rows if r["pareto"]]
    return pareto.hypervolume(points, OBJECTIVES, HYPERVOLUME_REFERENCE)


def write_results(out: Path, oracle, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Rewrites every result file of a run from the oracle's trials; returns the rows."""
    floor = run_floor(run)
    rows = trial_rows(oracle, floor)
    if not rows:
        return rows
    columns = ["trial_id", "status", *hyperparameter_names(), *METRIC_COLUMNS, "feasible", "pareto",
               "stopped_at_epoch", "parent_trial", "morphism", "seconds", "reason"]
    tmp = out / "trials.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    tmp.replace(out / "trials.csv")
    front = [r for r in rows if r["pareto"]]
    hv = front_hypervolume(rows, run["max_flash"], run["max_ram"], floor)
    summary = {"run": run, "hypervolume": hv,
               "hypervolume_reference": f"error / (1 - floor {floor}) 1, log(MS)/log(flash budget) 1, "
                                        "log(WM)/log(RAM budget) 1",
               "pareto": [{k: r[k] for k in ("trial_id", "accuracy", "float_accuracy", "model_size_bytes",
                                             "working_memory_bytes", "arena_bytes", "flatbuffer_bytes",
                                             "sparsity")} | {"hyperparameters": _hps(r)} for r in front]}
    (out / "pareto.json").write_text(json.dumps(summary, indent=2) + "\n")
    _copy_pareto_models(out, front)
    _plot(out / "pareto.png", rows, run)
    _report(out / "report.md", rows, run, hv)
    return rows


def morphism_name(morph: dict[str, Any]) -> str:
    """A morphism record as trials.csv shows it, e.g. ``wider block1_layer2``."""
    where = morph["side"] if morph["kind"] == "branch" else f"block{morph['block']}_layer{morph['layer']}"
    return f"{morph['kind']} {where}"


def run_floor(run: dict[str, Any]) -> float:
    """A run's accuracy floor (0 for runs made before the floor existed)."""
    return float(run.get("min_accuracy") or 0.0)


def _hps(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in hyperparameter_names() if row.get(k) is not None}


def _copy_pareto_models(out: Path, front: list[dict[str, Any]]) -> None:
    target = out / "pareto_models"
    keep = {r["trial_id"] for r in front}
    if target.exists():
        for old in target.iterdir():
            if old.name not in keep:
                shutil.rmtree(old)
    for trial_id in keep:
        src = out / "search" / f"trial_{trial_id}"
        dst = target / trial_id
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.glob("model_*"):
            shutil.copy2(f, dst / f.name)


def _plot(path: Path, rows: list[dict[str, Any]], run: dict[str, Any]) -> None:
    fig, axes = two_panel_figure()
    trained = [r for r in rows if r["status"] == "trained"]
    for ax, key, budget, label in ((axes[0], "model_size_bytes", run["max_flash"], "model size MS (bytes)"),
                                   (axes[1], "working_memory_bytes", run["max_ram"], "working memory WM (bytes)")):
        rest = [r for r in trained if not r["pareto"]]
        front = sorted((r for r in trained if r["pareto"]), key=lambda r: r[key])
        ax.scatter([r[key] for r in rest], [100 * r["accuracy"] for r in rest], c="0.6", s=18,
                   label="trial")
        ax.scatter([r[key] for r in front], [100 * r["accuracy"] for r in front], c="tab:red", s=36,
                   label="Pareto (3 objectives)", zorder=3)
        ax.axvline(budget, color="tab:blue", ls="--", lw=1, label=f"budget {budget:,} B")
        if run_floor(run) > 0:
            ax.axhline(100 * run_floor(run), color="tab:green", ls=":", lw=1,
                       label=f"accuracy floor {100 * run_floor(run):.1f} %")
            ax.set_ylim(bottom=100 * run_floor(run) - 1, top=100.5)
        finish_axis(ax, label, "int8 validation accuracy (%)")
    save_figure(fig, path, f"{run['dataset']} on {run['board']}: {len(rows)} trials, optimizer {run['optimizer']}",
                dpi=110)


def two_panel_figure():
    """A figure of two side-by-side axes (against MS, against WM), drawn off screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, 2, figsize=(11, 4.2))


def finish_axis(ax, xlabel: str, ylabel: str) -> None:
    """Our plots' accuracy-against-bytes axis: log bytes, labels, a light grid, the legend bottom right."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def save_figure(fig, path: Path, title: str, dpi: int) -> None:
    """Titles, lays out, writes and closes a figure."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _report(path: Path, rows: list[dict[str, Any]], run: dict[str, Any], hv: float) -> None:
    lines = [f"# Search report: {run['dataset']} on {run['board']}", "",
             f"- optimizer `{run['optimizer']}`, seed {run['seed']}, {run['epochs']} epochs per trial",
             f"- budget: RAM {run['max_ram']:,} B, flash {run['max_flash']:,} B; accuracy floor "
             f"{100 * run_floor(run):.2f} %",
             f"- trials: {len(rows)} ({status_counts(rows)})",
             f"- hypervolume of the feasible front above the floor: {hv:.4f} (normalised objectives, "
             "reference point 1,1,1)",
             "", "## Pareto front (int8 model, validation split)", "",
             "| trial | int8 acc % | float acc % | MS bytes | WM bytes | TFLM arena bytes | sparsity |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in rows if r["pareto"]), key=lambda r: r["model_size_bytes"]):
        lines.append(f"| {r['trial_id']} | {100 * r['accuracy']:.2f} | {100 * (r['float_accuracy'] or 0):.2f} | "
                     f"{r['model_size_bytes']:,} | {r['working_memory_bytes']:,} | {r['arena_bytes']:,} | "
                     f"{r['sparsity']:.2f} |")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- {r['trial_id']}: {r['reason']}" for r in failed]
    lines += ["", "![Pareto front](pareto.png)", ""]
    path.write_text("\n".join(lines))


STATUS_WORDS = {"trained": "trained", "below-floor": "trained below the accuracy floor",
                "stopped": "stopped early", "infeasible": "infeasible and never trained", "failed": "failed"}


def status_counts(rows: list[dict[str, Any]]) -> str:
    """How many trials ended each way, e.g. "12 trained, 3 stopped early, 1 failed"."""
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUS_WORDS}
    return ", ".join(f"{n} {STATUS_WORDS[s]}" for s, n in counts.items() if n or s == "trained")


def best_trial(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most accurate Pareto trial (ties: the smaller model)."""
    front = [r for r in rows if r["pareto"]]
    return min(front, key=lambda r: (-r["accuracy"], r["model_size_bytes"])) if front else None


