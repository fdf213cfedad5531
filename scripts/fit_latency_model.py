"""Calibrates the search's latency model on QEMU, and checks it on models it was not fitted on.

For every trained trial of the ``--fit`` runs (search/trial_*/model_int8.tflite),
on each QEMU board: build the AOT firmware, run one test input, read the
per-operator profile (instructions, ``-icount shift=0``), and pair each
operator's count with its features (:mod:`pipeline.search.latency`). A
non-negative least-squares fit per core and operator kind (and one over all
kinds, for kinds never seen) is written to
tflm_project/boards/latency_model.tsv.

Then, for every exported model of the ``--check`` run (the models
``scripts/bench_aot.py`` measures; any of them that is also a fit model is
left out of the fit), it prints predicted against measured instructions per
inference on each board.

Usage:
    .venv/bin/python scripts/fit_latency_model.py --fit runs/a runs/b --check runs/usps2-stm32f413-sparse-e10-s0 \
        --data-dir ../shared/datasets
    make fit-latency-model FIT_RUNS="runs/a runs/b" RUN=runs/usps2-stm32f413-sparse-e10-s0 DATA_DIR=../shared/datasets
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline  # noqa: E402,F401
from pipeline.compress import tflite_model  # noqa: E402
from pipeline.deploy import aot  # noqa: E402
from pipeline.deploy.boards import get_board  # noqa: E402
from pipeline.deploy.device import run_device  # noqa: E402
from pipeline.errors import UserError, run_script  # noqa: E402
from pipeline.search.latency import (ANY_KIND, FEATURES, LATENCY_MODEL_PATH, load_latency_model,  # noqa: E402
                                     op_features, write_latency_model)

BOARDS = ("qemu-stm32f4", "qemu-microbit")


def _measure(model: Path, board: str, dataset: str, data_dir: str | None, scratch: Path) -> tuple[list, int]:
    """[(kind, features, instructions)] per operator, and the whole inference's instructions."""
    data = model.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    out = scratch / f"{sha[:16]}-{board}"
    done = out / "device.json"
    result = json.loads(done.read_text()) if done.is_file() else {}
    if result.get("model_sha256") != sha:  # measured before (an interrupted calibration resumes)
        result = run_device(model, board, "aot", out, samples=1, dataset=dataset, data_dir=data_dir)
    graph = tflite_model.resource_graph(data)
    by_index = {int(op.name.split(":")[0]): op for op in graph.ops}
    indices = aot.generate(data, str(model)).op_indices
    ops = [(by_index[i].kind, op_features(by_index[i], graph), entry["latency"])
           for i, entry in zip(indices, result["operators"])]
    return ops, result["latency_instructions"]


def _fit(samples: list[tuple[dict, int]]) -> tuple[float, ...]:
    """Non-negative least squares of instructions on the features, each row weighted by 1/sqrt(count)."""
    from scipy.optimize import nnls

    x = np.array([[f[name] for name in FEATURES] for f, _ in samples], dtype=float)
    y = np.array([count for _, count in samples], dtype=float)
    w = 1.0 / np.sqrt(np.maximum(y, 1.0))  # small operators count too, not only the largest
    scale = np.maximum(np.abs(x).max(axis=0), 1.0)
    coef, _ = nnls(x / scale * w[:, None], y * w)
    return tuple(float(c) for c in coef / scale)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=Path, nargs="+", required=True, help="search runs whose trials calibrate")
    parser.add_argument("--check", type=Path, default=None, help="a run whose exported models are checked")
    parser.add_argument("--dataset", default=None, help="the runs' dataset (default: the first run's)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--boards", nargs="+", default=list(BOARDS))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/latency-fit"),
                        help="firmware builds and device.json files, reused when run again")
    args = parser.parse_args()
    for run in [*args.fit, *([args.check] if args.check else [])]:
        if not (run / "run.json").is_file():
            raise UserError(f"{run} is not a search run (no run.json): give the --out folder of a search")
    dataset = args.dataset or json.loads((args.fit[0] / "run.json").read_text())["dataset"]
    checks = sorted(args.check.glob("models/*/model_int8.tflite")) if args.check else []
    held_out = {hashlib.sha256(p.read_bytes()).hexdigest() for p in checks}
    models = [p for run in args.fit for p in sorted(run.glob("search/trial_*/model_int8.tflite"))
              if hashlib.sha256(p.read_bytes()).hexdigest() not in held_out]
    if not models:
        raise UserError(f"the --fit runs {', '.join(map(str, args.fit))} hold no trained model outside --check")
    scratch = args.work_dir
    samples: dict[tuple[str, str], list] = defaultdict(list)
    for board in args.boards:
        core = get_board(board).core
        measured = 0
        for model in models:
            try:
                ops, _ = _measure(model, board, dataset, args.data_dir, scratch)
            except UserError as exc:  # a model too big for this board calibrates the other ones only
                print(f"{board}: skipped {model}: {str(exc)[:120]}", flush=True)
                continue
            measured += 1
            for kind, features, count in ops:
                samples[(core, kind)].append((features, count))
                samples[(core, ANY_KIND)].append((features, count))
        print(f"{board} ({core}): {measured} of {len(models)} models measured", flush=True)
    rows = [(core, kind, _fit(s), len(s)) for (core, kind), s in samples.items()]
    header = (f"Instructions per operator of the AOT engine = sum of coefficient x feature, per core and\n"
              f"operator kind ({ANY_KIND}: every kind). Written by scripts/fit_latency_model.py from QEMU\n"
              f"profiles of the models of {', '.join(str(r) for r in args.fit)} (dataset {dataset});\n"
              f"read by pipeline/search/latency.py. Do not edit by hand.")
    write_latency_model(LATENCY_MODEL_PATH, rows, header)
    print(f"wrote {LATENCY_MODEL_PATH}: {len(rows)} rows")
    if not checks:
        return 0
    model = load_latency_model()
    print(f"\nPredicted against QEMU-measured instructions per inference, exported models of {args.check}\n")
    print("| trial | board | predicted | measured | predicted / measured |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for board in args.boards:
        core = get_board(board).core
        for path in checks:
            try:
                _, measured = _measure(path, board, dataset, args.data_dir, scratch)
            except UserError as exc:
                print(f"| {path.parent.name} | {board} | does not fit: {str(exc)[:80]} | | |")
                continue
            predicted = model.instructions(tflite_model.resource_graph(path.read_bytes()), core)
            worst = max(worst, abs(predicted / measured - 1))
            print(f"| {path.parent.name} | {board} | {predicted:,} | {measured:,} | {predicted / measured:.2f} |")
    print(f"\nlargest error: {100 * worst:.1f} %")
    return 0


if __name__ == "__main__":
    run_script(main)
