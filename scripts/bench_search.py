"""Benchmark: SpArSe's oracle against random search and keras-tuner's BayesianOptimization.

Runs `python -m pipeline search` once per optimiser and seed, all with the
same dataset, board, trial budget and epochs, then prints the hypervolume of
each run's feasible Pareto front (reference point: error 1, log MS / log flash
budget 1, log WM / log RAM budget 1; higher is better) side by side. Each run
is its own process and its own output directory, so an interrupted benchmark
resumes where it stopped.

Usage:
    .venv/bin/python scripts/bench_search.py --data-dir ../shared/datasets
    make bench-search DATA_DIR=../shared/datasets
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

OPTIMIZERS = ("sparse", "random", "kt-bayes")


def _run(optimizer: str, seed: int, args: argparse.Namespace) -> dict:
    """Runs (or resumes) one search; returns its pareto.json plus wall time and exit code."""
    out = Path(args.out) / f"{optimizer}-s{seed}"
    command = [sys.executable, "-m", "pipeline", "search", "--dataset", args.dataset,
               "--trials", str(args.trials), "--epochs", str(args.epochs), "--board", args.board,
               "--optimizer", optimizer, "--seed", str(seed), "--out", str(out), "--quiet"]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    start = time.monotonic()
    code = subprocess.run(command, check=False).returncode
    seconds = time.monotonic() - start
    summary = out / "pareto.json"
    if code != 0 or not summary.exists():
        print(f"{optimizer} seed {seed}: search exited with code {code}", file=sys.stderr)
        return {"hypervolume": float("nan"), "pareto": [], "seconds": seconds, "exit_code": code}
    result = json.loads(summary.read_text())
    result.update(seconds=seconds, exit_code=code)
    return result


def main() -> int:
    """Runs every optimiser for every seed and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="usps2")
    parser.add_argument("--board", default="stm32f413")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/bench-search")
    args = parser.parse_args()

    results = {(o, s): _run(o, s, args) for o in OPTIMIZERS for s in args.seeds}
    print(f"\n{args.dataset}, board {args.board}, {args.trials} trials x {args.epochs} epochs, "
          f"seeds {' '.join(map(str, args.seeds))}; hypervolume of the feasible int8 front "
          "(higher is better)\n")
    seed_cols = " | ".join(f"HV seed {s}" for s in args.seeds)
    print(f"| optimizer | {seed_cols} | mean HV | best int8 acc | front size | minutes |")
    print("|---|" + "---|" * (len(args.seeds) + 4))
    for optimizer in OPTIMIZERS:
        runs = [results[(optimizer, s)] for s in args.seeds]
        hvs = [r["hypervolume"] for r in runs]
        best = max((p["accuracy"] for r in runs for p in r["pareto"]), default=float("nan"))
        front = "/".join(str(len(r["pareto"])) for r in runs)
        minutes = sum(r["seconds"] for r in runs) / 60
        print(f"| {optimizer} | " + " | ".join(f"{hv:.4f}" for hv in hvs)
              + f" | {statistics.fmean(hvs):.4f} | {best:.4f} | {front} | {minutes:.1f} |")
    failed = [k for k, r in results.items() if r["exit_code"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
