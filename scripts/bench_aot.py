"""Benchmark: the AOT engine's flash and RAM against the search's MS and WM, on a board.

For every exported Pareto model of a search run (RUN_DIR/models/<trial>/) this
builds the AOT firmware, runs it on the board (QEMU for the emulated ones),
and prints, per model:

- weights in flash (int8 kernels as stored, dense or block-bitmap sparse, plus
  int32 biases) against MS (nonzero kernel bytes + 4 x nonzero biases);
- AOT RAM (arena + peak stack) against the analytical WM, and what the rest
  of the firmware's RAM is (the fixed overhead: UART code's statics, stack
  paint margin);
- latency and whether every output equalled the host TFLite Micro interpreter.

Usage:
    .venv/bin/python scripts/bench_aot.py RUN_DIR [--board qemu-stm32f4] [--samples 20]
    make bench-aot RUN=runs/usps-stm32f413-sparse-e2-s0 BOARD=qemu-stm32f4
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


def main() -> int:
    """Measures every exported Pareto model and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?", default=None,
                        help="a search's --out (default: the latest search under runs/)")
    parser.add_argument("--board", default="qemu-stm32f4")
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    args.run_dir = args.run_dir or latest_run(Path("runs"))
    args.board = emulated_twin(args.board)  # a run's board may be real hardware: bench its QEMU twin
    _, rows = load_run(args.run_dir)
    print(f"AOT engine on {args.board}, Pareto models of {args.run_dir}, {args.samples} test inputs each\n")
    print("| trial | sparsity | MS bytes | AOT weights bytes | weights / MS | WM bytes | arena bytes "
          "| stack bytes | (arena + stack) / WM | other static RAM bytes | flash bytes | instructions "
          "| outputs match |")
    print("|---|" * 1 + "---|" * 12)
    for row in pareto_rows(rows):
        model = args.run_dir / "models" / row["trial_id"] / "model_int8.tflite"
        if not model.is_file():
            print(f"| {row['trial_id']} | not exported: run make export RUN={args.run_dir} |")
            continue
        try:
            r = run_device(model, args.board, "aot", default_out_dir(model, args.board, "aot"),
                           samples=args.samples)
        except UserError as exc:
            print(f"| {row['trial_id']} | {exc} |")
            continue
        aot_ram = r["arena_bytes"] + r["stack_bytes"]
        print(f"| {row['trial_id']} | {row['sparsity']:.2f} | {r['nonzero_weight_bytes']:,} | "
              f"{r['weight_bytes']:,} | {r['weight_bytes'] / r['nonzero_weight_bytes']:.2f} | "
              f"{r['working_memory_bytes']:,} | {r['arena_bytes']:,} | {r['stack_bytes']:,} | "
              f"{aot_ram / r['working_memory_bytes']:.2f} | {r['static_ram_bytes'] - r['arena_bytes']:,} | "
              f"{r['flash_bytes']:,} | {r.get('latency_instructions', 0):,} | {r['outputs_match']:.2f} |")
    return 0


if __name__ == "__main__":
    run_script(main)
