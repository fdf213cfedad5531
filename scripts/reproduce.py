"""Reproduction against the SpArSe paper: search at a stated budget, export, compare with its points.

For a dataset the paper reports (usps2 = its binary USPS; mnist; cifar10-2),
runs the whole method (random, Bayesian and morphism stages, the accuracy
floor and early stopping) at the budget below, sized to finish within 2 hours
on 2 cores, then exports the front (int8 test accuracy on host TFLite Micro)
and prints our Pareto models beside the paper's published points, marking
which of ours dominate which of theirs. A rerun resumes the same search.

Usage:
    make reproduce DATASET=usps2 DATA_DIR=../shared/datasets
    .venv/bin/python scripts/reproduce.py --dataset mnist --data-dir ../shared/datasets
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
pipeline.import_tensorflow_quietly()  # before any module that imports TensorFlow
from pipeline.deploy import paper  # noqa: E402
from pipeline.deploy.export import load_run, pareto_rows  # noqa: E402

# dataset -> (trials, epochs, morphism trials, morphism epochs): what fits in 2 hours on 2 cores here
BUDGETS = {"usps2": (40, 10, 10, 3), "mnist": (24, 4, 6, 1), "cifar10-2": (20, 6, 5, 2)}


def _pipeline(*args: str) -> None:
    command = [sys.executable, "-m", "pipeline", *args]
    code = subprocess.run(command, check=False, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}).returncode
    if code != 0:
        raise SystemExit(code)


def comparison_lines(run_dir: Path) -> list[str]:
    """The paper's points and our exported Pareto models, as markdown tables with the dominance marks."""
    run, rows = load_run(run_dir)
    points = paper.points_for(run["dataset"])
    models = []
    for row in pareto_rows(rows):
        info = run_dir / "models" / row["trial_id"] / "model.json"
        accuracy = json.loads(info.read_text())["test_accuracy"] if info.is_file() else None
        models.append({"trial": row["trial_id"], "test_accuracy": accuracy, "ms_bytes": row["model_size_bytes"],
                       "wm_bytes": row["working_memory_bytes"]})
    wins = paper.comparison(models, points)
    lines = ["| published point | acc % | WM B | MS B | our Pareto models that dominate it |", "|---|---|---|---|---|"]
    for i, point in enumerate(points):
        ours = [m["trial"] for m in models if i in wins.get(m["trial"], [])]
        lines.append(f"| {point.paper_dataset} | {100 * point.accuracy:.2f} | {point.wm_bytes:,.0f} | "
                     f"{point.ms_bytes:,.0f} | {', '.join(ours) or 'none'} |")
    lines += ["", "| our trial | test acc % | WM B | MS B | dominates |", "|---|---|---|---|---|"]
    for m in models:
        beaten = [f"{100 * points[i].accuracy:.2f} %" for i in wins.get(m["trial"], [])]
        accuracy = "" if m["test_accuracy"] is None else f"{100 * m['test_accuracy']:.2f}"
        lines.append(f"| {m['trial']} | {accuracy} | {m['wm_bytes']:,} | {m['ms_bytes']:,} | "
                     f"{', '.join(beaten)} |")
    return lines


def main() -> int:
    """Runs (or resumes) the reproduction of one dataset and prints the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="usps2")
    parser.add_argument("--board", default="stm32f413")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="default runs/reproduce-<dataset>-s<seed>")
    args = parser.parse_args()
    if args.dataset not in BUDGETS:
        print(f"error: --dataset {args.dataset!r} is not one the SpArSe paper reports: give one of "
              f"{', '.join(BUDGETS)} (DATASET=...)", file=sys.stderr)
        return 2
    trials, epochs, morph_trials, morph_epochs = BUDGETS[args.dataset]
    out = Path(args.out or f"runs/reproduce-{args.dataset}-s{args.seed}")
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    started = time.monotonic()
    _pipeline("search", "--dataset", args.dataset, "--trials", str(trials), "--epochs", str(epochs),
              "--board", args.board, "--seed", str(args.seed), "--morphism-trials", str(morph_trials),
              "--morphism-epochs", str(morph_epochs), "--early-stopping", "--out", str(out), "--quiet", *data)
    _pipeline("export", str(out), *data)
    minutes = (time.monotonic() - started) / 60
    binary = any("binary" in point.paper_dataset for point in paper.points_for(args.dataset))
    grouping = (" The paper's binary grouping is not published (ours: reference/sparse_paper_points.tsv)."
                if binary else "")
    unit = "epoch" if morph_epochs == 1 else "epochs"
    print(f"\n{args.dataset}: {trials} trials x {epochs} epochs (the last {morph_trials} morphisms of Pareto "
          f"models, {morph_epochs} {unit} each), early stopping, default accuracy floor, seed {args.seed}, "
          f"board {args.board}; {minutes:.0f} min this run. Ours: int8 test accuracy on host TFLite Micro, MS "
          f"and WM read from the .tflite.{grouping}\n")
    print("\n".join(comparison_lines(out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
