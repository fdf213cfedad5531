"""Command line: one subcommand per stage (search, search-distributed and worker, export, device, report)."""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import sys
from pathlib import Path

import pipeline
from pipeline.errors import DoesNotFit, UserError


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and a one-line message."""

    def error(self, message: str) -> None:  # noqa: D102
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _search_flags() -> argparse.ArgumentParser:
    """The flags of a search, shared by search and search-distributed."""
    s = _Parser(add_help=False)
    s.add_argument("--dataset", default="digits", help="digits, usps, usps2, mnist, mnist2, cifar10, "
                   "cifar10-2 or npz:PATH (default digits)")
    s.add_argument("--trials", type=int, default=20)
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--board", default="stm32f413", help="a row of tflm_project/boards/board_facts.tsv")
    s.add_argument("--optimizer", default="sparse", help="sparse, random, kt-bayes or nsga2 (Optuna's NSGA-II)")
    s.add_argument("--engine", default="aot", help="the engine the models must fit the board with: aot or "
                   "tflm (its measured fixed costs count against the board's RAM and flash)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/latest", help="output directory (resumed when it exists)")
    s.add_argument("--data-dir", default=None, help="where datasets are found and cached "
                   "(default $SPARSE_DATA_DIR, else datasets/)")
    s.add_argument("--max-ram", type=int, default=None, help="working-memory budget in bytes")
    s.add_argument("--max-flash", type=int, default=None, help="model-size budget in bytes")
    s.add_argument("--max-latency-ms", type=float, default=None, help="latency budget: the AOT engine's "
                   "predicted time per inference at the board's clock (default: none)")
    s.add_argument("--min-accuracy", type=float, default=None, help="accuracy floor, a fraction: candidates "
                   "unlikely to clear it are not proposed, and the front counts only models above it "
                   "(default: 60%% of the way from chance to 100%%; 0: no floor)")
    s.add_argument("--early-stopping", action="store_true", help="stop a trial at epoch E/3 or E/9 when smaller "
                   "trials did better there, and spend the saved epochs on more trials (search only)")
    s.add_argument("--morphism-trials", type=int, default=0, help="SpArSe's third stage: the last N trials are "
                   "network morphisms of Pareto models, built from their trained weights (sparse, search only; "
                   "default 0)")
    s.add_argument("--morphism-epochs", type=int, default=None, help="fine-tuning epochs of a morphed child "
                   "(default: a third of --epochs, at least 1)")
    s.add_argument("--quiet", action="store_true", help="no progress bar (search-distributed: no progress lines)")
    return s


def _strategy(args: argparse.Namespace) -> dict:
    """The search-strategy settings of a search command, as prepare_search's keywords."""
    return {"max_latency_ms": args.max_latency_ms, "min_accuracy": args.min_accuracy,
            "early_stop": args.early_stopping, "morphism_trials": args.morphism_trials,
            "morphism_epochs": args.morphism_epochs}


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("search", parents=[_search_flags()],
                   help="search architectures and pruning settings (SpArSe)")
    c = sub.add_parser("search-distributed", parents=[_search_flags()],
                       help="the same search, served by this process (the chief) to workers over "
                       "keras-tuner's gRPC protocol")
    c.add_argument("--workers", type=int, default=2, help="worker processes to start on this machine "
                   "(0: serve workers started elsewhere only; default 2)")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on: 0.0.0.0 for workers on other "
                   "machines (default 127.0.0.1)")
    c.add_argument("--port", type=int, default=0, help="port to listen on (default 0: any free port, "
                   "printed at start; give one when workers run elsewhere)")
    c.add_argument("--worker-timeout", type=float, default=60.0, help="seconds without a heartbeat after "
                   "which a worker is lost and its trial runs again (default 60)")
    c.add_argument("--idle-timeout", type=float, default=900.0, help="seconds with trials left and no worker "
                   "heard from before the chief stops (default 900)")
    c.add_argument("--threads", type=int, default=0, help="TensorFlow threads per local worker "
                   "(default: the cores shared out)")
    w = sub.add_parser("worker", help="run trials for a chief (found through KERASTUNER_TUNER_ID, "
                       "KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT)")
    w.add_argument("--data-dir", default=None, help="where this machine finds the search's dataset "
                   "(default $SPARSE_DATA_DIR, else datasets/)")
    w.add_argument("--work-dir", default=None, help="scratch folder for trials in training "
                   "(default: a new temporary folder, removed at the end)")
    w.add_argument("--remove-work-dir", action="store_true", help=argparse.SUPPRESS)
    w.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)  # a local chief's
    w.add_argument("--chief-timeout", type=float, default=600.0, help="seconds to wait for the chief to "
                   "answer, a restart included, before giving up (default 600)")
    w.add_argument("--threads", type=int, default=0, help="TensorFlow threads (default: TensorFlow's choice)")
    e = sub.add_parser("export", help="write the .tflite, C array and model.json of Pareto models")
    e.add_argument("run_dir", metavar="RUN_DIR", nargs="?", default=None,
                   help="the --out directory of a search (default: the latest search under runs/)")
    e.add_argument("--trial", default=None, help="export this trial only (default: every Pareto trial)")
    e.add_argument("--data-dir", default=None, help="where the run's dataset is found (for test accuracy)")
    d = sub.add_parser("device", help="build the firmware, run it on a board or QEMU, write device.json")
    d.add_argument("--model", default=None, help="an exported models/<trial>/model_int8.tflite "
                   "(default: the best Pareto model of the latest search under runs/)")
    d.add_argument("--run", default=None, metavar="RUN_DIR", help="every exported model of this search, one "
                   "after another, each device.json beside its model (instead of --model)")
    d.add_argument("--board", default="qemu-stm32f4", help="a row of tflm_project/boards/board_facts.tsv")
    d.add_argument("--engine", default="aot", help="aot (our generated C) or tflm (TensorFlow Lite Micro "
                   "from $TFLM_DIR or make tflm's cache)")
    d.add_argument("--out", default=None, help="folder for device.json and the firmware build "
                   "(default: device-BOARD-ENGINE/ beside the model)")
    d.add_argument("--port", default=None, help="serial port of a real board, e.g. /dev/ttyACM0")
    d.add_argument("--samples", type=int, default=None, help="test inputs to send (default: all exported)")
    d.add_argument("--dataset", default=None, help="send this dataset's first test images, quantised with the "
                   "model's input parameters (any int8 .tflite; default: the exported test_samples.npz)")
    d.add_argument("--data-dir", default=None, help="dataset location (for --dataset, or to export the default "
                   "model)")
    t = sub.add_parser("tflm", help="make TensorFlow Lite Micro trees (needs network): clone at the pin, "
                       "run create_tflm_tree.py")
    t.add_argument("--kernels", nargs="+", default=None, choices=("cmsis_nn", "reference"),
                   help="kernel sets to make (default both: CMSIS-NN for Cortex-M4, reference for Cortex-M0)")
    r = sub.add_parser("report", help="RUN_DIR/report.md and a self-contained report.html: the Pareto models' "
                       "promised and measured figures, the plots, and the SpArSe paper's points beside ours")
    r.add_argument("run_dir", metavar="RUN_DIR", nargs="?", default=None,
                   help="the --out directory of a search (default: the latest search under runs/)")
    parser.set_defaults(subparsers=sub.choices)
    return parser


def _exported_models(run_dir: Path) -> list[Path]:
    """The run's exported models, trial by trial."""
    models = sorted(run_dir.glob("models/*/model_int8.tflite"),
                    key=lambda p: (not p.parent.name.isdigit(), int(p.parent.name) if p.parent.name.isdigit() else 0,
                                   p.parent.name))
    if not models:
        raise UserError(f"--run {run_dir} has no exported models (expected {run_dir}/models/<trial>/"
                        f"model_int8.tflite): run make export RUN={run_dir} first")
    return models


def _search_distributed(args: argparse.Namespace) -> None:
    from pipeline.search.chief import ChiefSettings, serve
    from pipeline.search.run import prepare_search

    checks = (("--workers", args.workers, 0 <= args.workers <= 64, "a whole number from 0 to 64"),
              ("--port", args.port, 0 <= args.port < 65536 and (args.port or args.workers),
               "a port from 1 to 65535 (0, any free port, only with local --workers)"),
              ("--worker-timeout", args.worker_timeout, args.worker_timeout >= 5, "at least 5 seconds"),
              ("--idle-timeout", args.idle_timeout, args.idle_timeout >= 5, "at least 5 seconds"),
              ("--threads", args.threads, args.threads >= 0, "0 or more"))
    for flag, value, ok, accepted in checks:
        if not ok:
            raise UserError(f"{flag} {value} is not allowed: give {accepted}")
    if args.early_stopping or args.morphism_trials:
        flag = "--early-stopping" if args.early_stopping else f"--morphism-trials {args.morphism_trials}"
        raise UserError(f"{flag} is not available with search-distributed: a worker sees neither the other "
                        "trials' accuracies mid-training nor their trained models; leave it out, or use search")
    search = prepare_search(args.dataset, args.trials, args.epochs, args.board, args.optimizer, args.seed,
                            Path(args.out), data_dir=args.data_dir, max_ram=args.max_ram,
                            max_flash=args.max_flash, engine=args.engine, max_retries_per_trial=2,
                            **_strategy(args))
    with open(os.devnull, "w") if args.quiet else contextlib.nullcontext(sys.stdout) as log:
        serve(search, ChiefSettings(args.host, args.port, args.workers, args.worker_timeout, args.idle_timeout,
                                    args.threads), log=log)


def _worker(args: argparse.Namespace) -> None:
    import shutil
    import tempfile

    from pipeline.errors import ensure_directory
    from pipeline.search.worker import run_worker

    for flag, value, ok in (("--chief-timeout", args.chief_timeout, args.chief_timeout >= 1),
                            ("--threads", args.threads, args.threads >= 0)):
        if not ok:
            raise UserError(f"{flag} {value} is not allowed: give a number of at least {1 if 'timeout' in flag else 0}")
    given = args.work_dir is not None
    work = ensure_directory(Path(args.work_dir), "--work-dir") if given else Path(tempfile.mkdtemp(prefix="sparse-worker-"))
    try:
        run_worker(args.data_dir, work, args.chief_timeout, args.threads, args.parent_pid)
    finally:
        if not given or args.remove_work_dir:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    args, unknown = _parser().parse_known_args(argv)
    if unknown:  # named by the subcommand's parser, so the hint points at its --help
        args.subparsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    faulthandler.enable()  # a crash inside TensorFlow or TFLite Micro names the Python line it came from
    pipeline.import_tensorflow_quietly()
    try:
        if args.command == "search":
            from pipeline.search.run import run_search

            run_search(args.dataset, args.trials, args.epochs, args.board, args.optimizer, args.seed,
                       Path(args.out), data_dir=args.data_dir, max_ram=args.max_ram,
                       max_flash=args.max_flash, quiet=args.quiet, engine=args.engine, **_strategy(args))
        elif args.command == "search-distributed":
            _search_distributed(args)
        elif args.command == "worker":
            _worker(args)
        elif args.command == "export":
            from pipeline.deploy.export import export_run, latest_run

            run_dir = Path(args.run_dir) if args.run_dir else latest_run(Path("runs"))
            for folder in export_run(run_dir, args.trial, data_dir=args.data_dir):
                info = json.loads((folder / "model.json").read_text())
                print(f"{folder}: test accuracy {100 * info['test_accuracy']:.2f}% (int8, host TFLM), "
                      f"MS {info['metrics']['model_size_bytes']:,} B, "
                      f"WM {info['metrics']['working_memory_bytes']:,} B")
        elif args.command == "device":
            from pipeline.deploy.boards import get_board
            from pipeline.deploy.device import default_out_dir, latest_best_model, run_device, summary

            get_board(args.board)  # an unknown board is named before anything is looked for
            if args.run and (args.model or args.out):
                raise UserError(f"--run {args.run} runs every exported model, each with its own device.json: "
                                "give --run alone, or --model (and --out) for one model")
            if args.run:
                models = _exported_models(Path(args.run))
            else:
                models = [Path(args.model) if args.model else latest_best_model(Path("runs"), args.data_dir)]
            ran = 0
            for model in models:
                out = Path(args.out) if args.out else default_out_dir(model, args.board, args.engine)
                try:
                    result = run_device(model, args.board, args.engine, out, port=args.port,
                                        samples=args.samples, dataset=args.dataset, data_dir=args.data_dir)
                except DoesNotFit as exc:
                    if not args.run:
                        raise
                    print(f"skipped: {exc}")  # one model of the run; the others still run
                    continue
                ran += 1
                print(f"{out / 'device.json'}: {summary(result)}")
            if not ran:
                raise UserError(f"none of the {len(models)} exported models of --run {args.run} fits {args.board} "
                                f"with --engine {args.engine}: search with --board {args.board}")
        elif args.command == "tflm":
            from pipeline.deploy.tflm import make_trees

            for tree in make_trees(args.kernels):
                print(f"TFLM tree ready: {tree}")
        elif args.command == "report":
            from pipeline.deploy.export import latest_run
            from pipeline.deploy.report import write_report

            for path in write_report(Path(args.run_dir) if args.run_dir else latest_run(Path("runs"))):
                print(f"wrote {path}")
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: finished trials are saved; run the same command to resume\n")
        return 130
    return 0
