"""Benchmark: what a second worker buys. The same search with 1 and with 2 local workers.

Runs `python -m pipeline search-distributed` once per worker count, each with
the same dataset, board, trials, epochs and seed, each in its own output
directory (a finished one is kept and reused), and prints trials per hour
and hypervolume per hour of wall-clock time, with the machine it ran on.
The cores are shared out between the workers (TensorFlow threads per worker
= cores // workers), so on a small machine the second worker competes with
the first for the same cores.

Usage:
    .venv/bin/python scripts/bench_distributed.py --data-dir ../shared/datasets
    make bench-distributed DATA_DIR=../shared/datasets
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.errors import UserError, run_script  # noqa: E402


def _run(workers: int, args: argparse.Namespace) -> dict:
    """Runs one search with ``workers`` local workers; returns its figures."""
    out = Path(args.out) / f"workers{workers}"
    timing = out / "bench_seconds.json"
    command = [sys.executable, "-m", "pipeline", "search-distributed", "--dataset", args.dataset,
               "--trials", str(args.trials), "--epochs", str(args.epochs), "--seed", str(args.seed),
               "--workers", str(workers), "--out", str(out)]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if not timing.exists():  # a finished run is reused; a partial one is started again from nothing
        if out.exists():
            raise UserError(f"{out} holds an unfinished benchmark run: remove it, or give another --out")
        start = time.monotonic()
        code = subprocess.run(command, check=False, stdout=subprocess.DEVNULL).returncode
        if code != 0:
            raise UserError(f"the search with {workers} worker(s) exited with code {code}: see "
                            f"{out / 'workers'} for the workers' logs")
        timing.write_text(json.dumps({"seconds": time.monotonic() - start}) + "\n")
    seconds = json.loads(timing.read_text())["seconds"]
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    hv = json.loads((out / "pareto.json").read_text())["hypervolume"]
    hours = seconds / 3600
    return {"workers": workers, "trials": len(rows), "seconds": seconds,
            "trial_seconds": sum(float(r["seconds"]) for r in rows),
            "trials_per_hour": len(rows) / hours, "hypervolume": hv, "hypervolume_per_hour": hv / hours}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="usps2")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/bench-distributed")
    args = parser.parse_args()
    results = [_run(k, args) for k in args.workers]
    cpu = platform.processor() or platform.machine()
    print(f"{args.dataset}, {args.trials} trials x {args.epochs} epochs, seed {args.seed}; "
          f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}")
    print("| workers | TF threads each | trials | wall minutes | sum of trial minutes | trials/hour "
          "| hypervolume | hypervolume/hour |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {max(1, (os.cpu_count() or 1) // r['workers'])} | {r['trials']} | "
              f"{r['seconds'] / 60:.1f} | {r['trial_seconds'] / 60:.1f} | {r['trials_per_hour']:.0f} | "
              f"{r['hypervolume']:.4f} | {r['hypervolume_per_hour']:.3f} |")
    base = results[0]
    for r in results[1:]:
        print(f"{r['workers']} workers against {base['workers']}: "
              f"{r['trials_per_hour'] / base['trials_per_hour']:.2f}x the trials per hour")
    return 0


if __name__ == "__main__":
    run_script(main)
