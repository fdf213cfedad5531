"""Calibrates the search's latency model on QEMU, and checks it on models it was not fitted on.

For every trained trial of the ``--fit`` runs (search/trial_*/model_int8.tflite),
on each QEMU board: build the AOT firmware, run one test input, read the
per-operator profile (instructions, ``-icount shift=0``), and pair each
operator's count with the work the generator counts for it, per kernel path
(:mod:`pipeline.deploy.aot_work`). A non-negative least-squares fit per core
and operator kind (and one over all kinds, for kinds never seen) is written to
tflm_project/boards/latency_model.tsv. With several --fit runs, each is then
predicted by a fit on the others only (leave one run out).

Then, for every exported model of the ``--check`` run (the models
``scripts/bench_aot.py`` measures; any of them that is also a fit model is
left out of the fit), it prints measured instructions per inference on each
board beside the prediction from the generator's layout (what a finished
trial and the report show) and the estimate from the resource graph (how the
search predicts a candidate before training, here with the model's own
nonzeros); the estimate is also summed up over the calibration models.

Usage:
    .venv/bin/python scripts/fit_latency_model.py --fit runs/a runs/b --check runs/usps2-stm32f413-sparse-e10-s0 \
        --data-dir ../shared/datasets
    make fit-latency-model FIT_RUNS="runs/a runs/b" RUN=runs/usps2-stm32f413-sparse-e10-s0 DATA_DIR=../shared/datasets
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
pipeline.import_tensorflow_quietly()  # before any module that imports TensorFlow
from pipeline.compress import tflite_model  # noqa: E402
from pipeline.deploy import aot  # noqa: E402
from pipeline.deploy.boards import get_board  # noqa: E402
from pipeline.deploy.device import run_device  # noqa: E402
from pipeline.errors import UserError, run_script  # noqa: E402
from pipeline.search.latency import (ANY_KIND, FEATURES, LATENCY_MODEL_PATH, LatencyModel,  # noqa: E402
                                     load_latency_model, write_latency_model)

BOARDS = ("qemu-stm32f4", "qemu-microbit")


@functools.cache
def _engine_sha() -> str:
    """A hash of what makes the AOT firmware: its kernels, the firmware's app and the generator."""
    repo = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted([*(repo / "tflm_project" / "engine" / "aot").iterdir(), *(repo / "tflm_project" / "app").iterdir(),
                        *(repo / "pipeline" / "deploy").glob("aot*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _measure(model: Path, board: str, dataset: str, data_dir: str | None, scratch: Path) -> tuple[list, int]:
    """[(kind, features, instructions)] per operator, and the whole inference's instructions."""
    data = model.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    out = scratch / f"{sha[:16]}-{_engine_sha()[:12]}-{board}"  # remeasured when the engine changes
    done = out / "device.json"
    result = json.loads(done.read_text()) if done.is_file() else {}
    if result.get("model_sha256") != sha:  # measured before (an interrupted calibration resumes)
        result = run_device(model, board, "aot", out, samples=1, dataset=dataset, data_dir=data_dir)
    generated = aot.generate(data, str(model))
    ops = [(name.split()[0], work, entry["latency"])
           for name, work, entry in zip(generated.operators, generated.work_for(get_board(board).core),
                                        result["operators"])]
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


def _fit_all(runs) -> dict[tuple[str, str], tuple[tuple[float, ...], int]]:
    """(core, kind) -> (coefficients, operators fitted), with one row per core over every kind."""
    samples: dict[tuple[str, str], list] = defaultdict(list)
    for run in runs:
        for core, ops, _ in run:
            for kind, work, count in ops:
                samples[(core, kind)].append((work, count))
                samples[(core, ANY_KIND)].append((work, count))
    return {key: (_fit(s), len(s)) for key, s in samples.items()}


def _cross_validate(measured: dict[Path, list[tuple[str, list, int]]]) -> None:
    """Each fit run predicted by a model fitted on the other runs only: how well the fit carries over."""
    print("\nLeave one run out: each run's models predicted by a fit on the other runs\n")
    print("| held-out run | models x boards | within 20 % | median error | largest error |")
    print("|---|---|---|---|---|")
    for held in measured:
        coefficients = _fit_all(items for run, items in measured.items() if run != held)
        model = LatencyModel({key: coef for key, (coef, _) in coefficients.items()})
        errors = [abs(sum(model.kind_instructions(kind, work, core) for kind, work, _ in ops) / total - 1)
                  for core, ops, total in measured[held]]
        print(f"| {held} | {len(errors)} | {sum(e <= 0.2 for e in errors)} | {100 * float(np.median(errors)):.1f} % "
              f"| {100 * max(errors):.1f} % |")


def _check_estimate(model: LatencyModel, calibration: list[tuple[Path, str, int]]) -> None:
    """The before-training estimate (from each model's resource graph, its own nonzeros standing
    for the pruning targets) against every calibration model's measured count."""
    errors = [model.instructions(tflite_model.resource_graph(path.read_bytes()), core) / total - 1
              for path, core, total in calibration]
    if errors:
        print(f"\nestimated before training, the {len(errors)} calibration models x boards: "
              f"{sum(abs(e) <= 0.2 for e in errors)} within 20 %, median error "
              f"{100 * float(np.median(np.abs(errors))):.1f} %, largest {100 * max(map(abs, errors)):.1f} %")


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
    models = [(run, p) for run in args.fit for p in sorted(run.glob("search/trial_*/model_int8.tflite"))
              if hashlib.sha256(p.read_bytes()).hexdigest() not in held_out]
    if not models:
        raise UserError(f"the --fit runs {', '.join(map(str, args.fit))} hold no trained model outside --check")
    scratch = args.work_dir
    # per fit run: (core, [(kind, work, instructions) per operator], instructions per inference)
    measured: dict[Path, list[tuple[str, list, int]]] = defaultdict(list)
    calibration: list[tuple[Path, str, int]] = []  # (model, core, instructions per inference)
    for board in args.boards:
        core = get_board(board).core
        count = 0
        for run, model in models:
            try:
                ops, total = _measure(model, board, dataset, args.data_dir, scratch)
            except UserError as exc:  # a model too big for this board calibrates the other ones only
                print(f"{board}: skipped {model}: {str(exc)[:120]}", flush=True)
                continue
            count += 1
            measured[run].append((core, ops, total))
            calibration.append((model, core, total))
        print(f"{board} ({core}): {count} of {len(models)} models measured", flush=True)
    rows = [(core, kind, coef, n) for (core, kind), (coef, n) in _fit_all(measured.values()).items()]
    header = (f"Instructions per operator of the AOT engine = sum of coefficient x work, per core and\n"
              f"operator kind ({ANY_KIND}: every kind); the work is counted per kernel path by\n"
              f"pipeline/deploy/aot_work.py. Written by scripts/fit_latency_model.py from QEMU\n"
              f"profiles of the models of {', '.join(str(r) for r in args.fit)} (dataset {dataset});\n"
              f"read by pipeline/search/latency.py. Do not edit by hand.")
    write_latency_model(LATENCY_MODEL_PATH, rows, header)
    print(f"wrote {LATENCY_MODEL_PATH}: {len(rows)} rows")
    if len(measured) > 1:
        _cross_validate(measured)
    model = load_latency_model()
    _check_estimate(model, calibration)
    if not checks:
        return 0
    print(f"\nPredicted against QEMU-measured instructions per inference, exported models of {args.check}:"
          "\nfrom the generator's layout (model_instructions), and estimated from the resource graph as the"
          "\nsearch does before training (instructions)\n")
    print("| trial | board | measured | predicted | predicted / measured | estimated | estimated / measured |")
    print("|---|---|---|---|---|---|---|")
    errors: dict[str, list[float]] = {"predicted": [], "estimated": []}
    for board in args.boards:
        core = get_board(board).core
        for path in checks:
            try:
                _, count = _measure(path, board, dataset, args.data_dir, scratch)
            except UserError as exc:
                print(f"| {path.parent.name} | {board} | does not fit: {str(exc)[:80]} | | | | |")
                continue
            data = path.read_bytes()
            predicted = model.model_instructions(data, core)
            estimated = model.instructions(tflite_model.resource_graph(data), core)
            errors["predicted"].append(predicted / count - 1)
            errors["estimated"].append(estimated / count - 1)
            print(f"| {path.parent.name} | {board} | {count:,} | {predicted:,} | {predicted / count:.2f} "
                  f"| {estimated:,} | {estimated / count:.2f} |")
    for name, values in errors.items():
        if values:
            within = sum(abs(e) <= 0.2 for e in values)
            print(f"\n{name}: {within} of {len(values)} within 20 %, median error "
                  f"{100 * float(np.median(np.abs(values))):.1f} %, largest {100 * max(map(abs, values)):.1f} %")
    return 0


if __name__ == "__main__":
    run_script(main)
