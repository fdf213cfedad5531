"""Benchmark: the AOT engine beside TensorFlow Lite Micro, the same models on the same board.

For every exported Pareto model of a search run (RUN_DIR/models/<trial>/) this
runs both engines on the board (QEMU for the emulated ones; TFLM with CMSIS-NN
kernels on Cortex-M4, reference kernels on Cortex-M0) and prints flash, RAM,
arena, instructions per inference and outputs_match for each, with the
AOT/TFLM ratios. Each result is also a device.json beside the model
(device-<board>-<engine>/), so `make report` shows them.

Usage:
    .venv/bin/python scripts/bench_engines.py RUN_DIR --board qemu-stm32f4 [--samples 20]
    make bench-engines RUN=runs/usps-e3 BOARD=qemu-microbit TFLM_DIR=PATH
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
pipeline.import_tensorflow_quietly()  # before any module that imports TensorFlow
from pipeline.deploy.boards import emulated_twin  # noqa: E402
from pipeline.deploy.device import default_out_dir, run_device  # noqa: E402
from pipeline.deploy.export import latest_run, load_run, pareto_rows  # noqa: E402
from pipeline.errors import UserError, run_script  # noqa: E402

ENGINES = ("aot", "tflm")


def main() -> int:
    """Measures every exported Pareto model with both engines and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?", default=None,
                        help="a search's --out (default: the latest search under runs/)")
    parser.add_argument("--board", default="qemu-stm32f4")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES,
                        help="engines to run (default both; ratios need both)")
    parser.add_argument("--port", default=None,
                        help="serial port of the real board (without it a real board's QEMU twin runs)")
    args = parser.parse_args()
    args.run_dir = args.run_dir or latest_run(Path("runs"))
    board = args.board if args.port else emulated_twin(args.board)
    _, rows = load_run(args.run_dir)
    latency, unit = (("latency_cycles", "cycles") if args.port else ("latency_instructions", "instructions"))
    print(f"{' and '.join(args.engines)} on {board}, Pareto models of {args.run_dir}, {args.samples} test inputs "
          "each; " + ("cycles of the core clock\n" if args.port else
                      "instructions under QEMU -icount shift=0 (not cycles)\n"))
    print(f"| trial | MS B | WM B | engine | flash B | RAM B | arena B | stack B | {unit} | outputs match |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for row in pareto_rows(rows):
        model = args.run_dir / "models" / row["trial_id"] / "model_int8.tflite"
        if not model.is_file():
            print(f"| {row['trial_id']} | not exported: run make export RUN={args.run_dir} |")
            continue
        results = {}
        for engine in args.engines:
            try:
                results[engine] = run_device(model, board, engine, default_out_dir(model, board, engine),
                                             samples=args.samples, port=args.port)
            except UserError as exc:
                print(f"| {row['trial_id']} | | | {engine} | {exc} |")
                continue
            r = results[engine]
            print(f"| {row['trial_id']} | {row['model_size_bytes']:,} | {row['working_memory_bytes']:,} | "
                  f"{engine} | {r['flash_bytes']:,} | {r['ram_bytes']:,} | {r['arena_bytes']:,} | "
                  f"{r['stack_bytes']:,} | {r[latency]:,} | {r['outputs_match']:.2f} |")
        if len(results) == 2:
            a, t = results["aot"], results["tflm"]
            ratio = {k: a[k] / t[k] for k in ("flash_bytes", "ram_bytes", "arena_bytes", latency)}
            ratios.append(ratio)
            print(f"| {row['trial_id']} | | | AOT/TFLM | {ratio['flash_bytes']:.2f}x | {ratio['ram_bytes']:.2f}x | "
                  f"{ratio['arena_bytes']:.2f}x | | {ratio[latency]:.2f}x | |")
    if ratios:
        print("\nAOT/TFLM over all models (min-max): " + ", ".join(
            f"{k.replace('_bytes', '').replace('latency_', '')} {min(r[k] for r in ratios):.2f}-"
            f"{max(r[k] for r in ratios):.2f}x" for k in ratios[0]))
    return 0


if __name__ == "__main__":
    run_script(main)
