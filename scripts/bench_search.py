"""Benchmark: search strategies and optimisers, hypervolume against trials and against time.

Runs `python -m pipeline search` once per dataset, variant and seed, all with
the same board, trial budget, epochs and trial function, then scores every
run the same way: the hypervolume of its feasible int8 front above one common
accuracy floor (the dataset's default floor, so runs made without a floor are
judged by the same yardstick; reference point: error at the floor, log MS =
log flash budget, log WM = log RAM budget; higher is better).

Variants: SpArSe's oracle without a floor (the plain search as it was), with
the floor, with the floor and the morphism stage, with all of that and early
stopping; and, with the floor, random search, keras-tuner's BayesianOptimization
and Optuna's NSGA-II. Each run is its own process and output directory, so an
interrupted benchmark resumes where it stopped. Writes ``bench.md`` (the
table), ``bench.png`` (hypervolume against trials and against training
seconds, mean over seeds) and ``bench.json`` into --out.

Usage:
    .venv/bin/python scripts/bench_search.py --data-dir ../shared/datasets
    make bench-search DATA_DIR=../shared/datasets
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
pipeline.import_tensorflow_quietly()  # before any module that imports TensorFlow
from pipeline.deploy.export import load_run  # noqa: E402
from pipeline.search import pareto  # noqa: E402
from pipeline.search.oracle import OBJECTIVES, normalised_objectives  # noqa: E402
from pipeline.search.results import HYPERVOLUME_REFERENCE, PARETO_OBJECTIVES  # noqa: E402


def variants(trials: int) -> dict[str, list[str]]:
    """Variant name -> the search flags that make it."""
    morph = ["--morphism-trials", str(max(1, trials // 4))]
    return {"sparse, no floor": ["--optimizer", "sparse", "--min-accuracy", "0"],
            "sparse + floor": ["--optimizer", "sparse"],
            "sparse + floor + morphism": ["--optimizer", "sparse", *morph],
            "sparse + floor + morphism + early stop": ["--optimizer", "sparse", *morph, "--early-stopping"],
            "random + floor": ["--optimizer", "random"],
            "kt-bayes + floor": ["--optimizer", "kt-bayes"],
            "nsga2 + floor": ["--optimizer", "nsga2"]}


def _folder(variant: str) -> str:
    return variant.replace(" + ", "-").replace(", ", "-").replace(" ", "-")


def _run(dataset: str, variant: str, flags: list[str], seed: int, args: argparse.Namespace) -> Path | None:
    """Runs (or resumes) one search; returns its folder, or None when it failed."""
    out = Path(args.out) / dataset / f"{_folder(variant)}-s{seed}"
    command = [sys.executable, "-m", "pipeline", "search", "--dataset", dataset, "--trials", str(args.trials),
               "--epochs", str(args.epochs), "--board", args.board, "--seed", str(seed), "--out", str(out),
               "--quiet", *flags]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    started = time.monotonic()
    code = subprocess.run(command, check=False, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}).returncode
    print(f"{dataset} / {variant} / seed {seed}: exit {code} in {(time.monotonic() - started) / 60:.1f} min",
          flush=True)
    return out if code == 0 and (out / "trials.csv").is_file() else None


def hypervolume_curve(rows: list[dict], run: dict, floor: float) -> list[tuple[int, float, float]]:
    """(trials so far, training seconds so far, hypervolume above ``floor``) after each trial."""
    curve, points, seconds = [], [], 0.0
    for i, row in enumerate(rows, start=1):
        seconds += float(row["seconds"] or 0.0)
        if row["feasible"] is True and row["accuracy"] is not None and row["accuracy"] >= floor:
            points.append({"error": 1 - row["accuracy"], "model_size_bytes": row["model_size_bytes"],
                           "working_memory_bytes": row["working_memory_bytes"]})
        front = [p for p, on in zip(points, pareto.pareto_mask(points, PARETO_OBJECTIVES)) if on]
        normalised = [normalised_objectives(p["error"], p["model_size_bytes"], p["working_memory_bytes"],
                                            run["max_flash"], run["max_ram"], floor) for p in front]
        curve.append((i, seconds, pareto.hypervolume(normalised, OBJECTIVES, HYPERVOLUME_REFERENCE)))
    return curve


def _score(folder: Path, floor: float) -> dict:
    run, rows = load_run(folder)
    curve = hypervolume_curve(rows, run, floor)
    above = [r for r in rows if r["feasible"] is True and (r["accuracy"] or 0) >= floor]
    return {"hypervolume": curve[-1][2] if curve else 0.0, "curve": curve, "trials": len(rows),
            "useful": len(above), "stopped": sum(r["status"] == "stopped" for r in rows),
            "best": max((r["accuracy"] for r in above), default=float("nan")),
            "seconds": sum(float(r["seconds"] or 0) for r in rows)}


def _table(dataset: str, floor: float, scores: dict, seeds: list[int]) -> list[str]:
    lines = [f"**{dataset}** (common floor {100 * floor:.2f} %)", "",
             "| variant | " + " | ".join(f"HV seed {s}" for s in seeds)
             + " | mean HV | trials above floor | stopped | best acc % | training min |",
             "|---|" + "---|" * (len(seeds) + 5)]
    for variant, runs in scores.items():
        done = [runs[s] for s in seeds if runs.get(s)]
        hvs = [f"{runs[s]['hypervolume']:.4f}" if runs.get(s) else "failed" for s in seeds]
        if not done:
            lines.append(f"| {variant} | " + " | ".join(hvs) + " | | | | | |")
            continue
        mean = statistics.fmean(r["hypervolume"] for r in done)
        useful = "/".join(f"{r['useful']}" for r in done) + f" of {'/'.join(str(r['trials']) for r in done)}"
        lines.append(f"| {variant} | " + " | ".join(hvs) + f" | {mean:.4f} | {useful} | "
                     f"{sum(r['stopped'] for r in done)} | {100 * max(r['best'] for r in done):.2f} | "
                     f"{sum(r['seconds'] for r in done) / 60:.1f} |")
    return lines + [""]


def _plot(path: Path, all_scores: dict, seeds: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(all_scores), 2, figsize=(12, 4.2 * len(all_scores)), squeeze=False)
    for row, (dataset, scores) in enumerate(all_scores.items()):
        for variant, runs in scores.items():
            curves = [runs[s]["curve"] for s in seeds if runs.get(s)]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            hv = [statistics.fmean(c[i][2] for c in curves) for i in range(n)]
            seconds = [statistics.fmean(c[i][1] for c in curves) for i in range(n)]
            axes[row][0].plot(range(1, n + 1), hv, marker=".", label=variant)
            axes[row][1].plot([s / 60 for s in seconds], hv, marker=".", label=variant)
        for ax, xlabel in ((axes[row][0], "trials"), (axes[row][1], "training minutes (mean over seeds)")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{dataset}: hypervolume above the floor")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"hypervolume, mean over seeds {' '.join(map(str, seeds))}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    """Runs every variant for every dataset and seed, then writes the table and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["usps2", "mnist2"])
    parser.add_argument("--board", default="stm32f413")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=None, help="a subset of the variant names")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/bench-search")
    args = parser.parse_args()

    chosen = variants(args.trials)
    unknown = [v for v in (args.variants or []) if v not in chosen]
    if unknown:
        print(f"unknown variant(s) {', '.join(map(repr, unknown))}: expected some of "
              f"{', '.join(map(repr, chosen))}", file=sys.stderr)
        return 2
    if args.variants:
        chosen = {k: v for k, v in chosen.items() if k in args.variants}
    all_scores, failed = {}, 0
    for dataset in args.datasets:
        folders = {v: {s: _run(dataset, v, flags, s, args) for s in args.seeds} for v, flags in chosen.items()}
        floors = [json.loads((f / "run.json").read_text())["min_accuracy"] for runs in folders.values()
                  for f in runs.values() if f is not None]
        floor = max(floors, default=0.0)  # the dataset's default floor (the no-floor variant has 0)
        all_scores[dataset] = {v: {s: _score(f, floor) if f else None for s, f in runs.items()}
                               for v, runs in folders.items()}
        all_scores[dataset]["_floor"] = floor
        failed += sum(f is None for runs in folders.values() for f in runs.values())
    out = Path(args.out)
    header = (f"board {args.board}, {args.trials} trials x {args.epochs} epochs, seeds "
              f"{' '.join(map(str, args.seeds))}; hypervolume of the feasible int8 front above the common floor "
              "(higher is better)")
    lines = [header, ""]
    for dataset, scores in all_scores.items():
        floor = scores.pop("_floor")
        lines += _table(dataset, floor, scores, args.seeds)
    (out / "bench.md").write_text("\n".join(lines))
    (out / "bench.json").write_text(json.dumps(all_scores, indent=1) + "\n")
    _plot(out / "bench.png", all_scores, args.seeds)
    print("\n" + "\n".join(lines))
    print(f"wrote {out / 'bench.md'}, {out / 'bench.png'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
