"""Benchmark: what int8 conversion costs in accuracy, and how WM predicts the TFLM arena.

For every Pareto model of a search run this measures, on the test split:
the float model's accuracy (tf_keras), the int8 model's accuracy (host
TFLite Micro interpreter), next to the figures the search already read from
the same int8 flatbuffer (trials.csv): the working memory WM and the smallest
host TFLM arena that allocates and runs it (host figures are for 64-bit
pointers, a Cortex-M needs less). It prints one Markdown table.

Usage:
    .venv/bin/python scripts/bench_compression.py RUN_DIR [--data-dir DIR]
    make bench-compression RUN=runs/usps-stm32f413-sparse-e10-s0 DATA_DIR=../shared/datasets
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
pipeline.import_tensorflow_quietly()  # before any module that imports TensorFlow
import numpy as np  # noqa: E402

from pipeline.compress import tflite_model  # noqa: E402
from pipeline.datasets import load_dataset  # noqa: E402
from pipeline.deploy.export import latest_run, load_run, pareto_rows  # noqa: E402
from pipeline.errors import run_script  # noqa: E402
from pipeline.search.builder import load_float_model  # noqa: E402
from pipeline.search.tuner import KERAS_FILE  # noqa: E402


def main() -> int:
    """Measures every Pareto model of RUN_DIR and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?", default=None,
                        help="a search's --out (default: the latest search under runs/)")
    parser.add_argument("--data-dir", default=os.environ.get("SPARSE_DATA_DIR"))
    args = parser.parse_args()
    args.run_dir = args.run_dir or latest_run(Path("runs"))

    run, rows = load_run(args.run_dir)
    data = load_dataset(run["dataset"], args.data_dir)
    print(f"{run['dataset']} on {run['board']}, run {args.run_dir}: test split ({len(data.y_test)} images)\n")
    print("| trial | float acc % | int8 acc % | change (points) | sparsity | WM bytes | TFLM arena bytes "
          "| arena / WM |")
    print("|---|---|---|---|---|---|---|---|")
    for row in pareto_rows(rows):
        trial_dir = args.run_dir / "search" / f"trial_{row['trial_id']}"
        model = tflite_model.read_tflite(trial_dir / "model_int8.tflite")
        float_model = load_float_model(trial_dir / KERAS_FILE)
        float_acc = float(np.mean(float_model.predict(data.x_test, verbose=0).argmax(1) == data.y_test))
        x_int8 = tflite_model.quantize_inputs(model, data.x_test)
        arena, wm = row["arena_bytes"], row["working_memory_bytes"]  # measured on this flatbuffer
        int8_acc = float(np.mean(tflite_model.tflm_run(model, x_int8, arena + 1024).argmax(1) == data.y_test))
        print(f"| {row['trial_id']} | {100 * float_acc:.2f} | {100 * int8_acc:.2f} | "
              f"{100 * (int8_acc - float_acc):+.2f} | {row['sparsity']:.2f} | {wm:,} | {arena:,} | "
              f"{arena / wm:.2f} |")
    return 0


if __name__ == "__main__":
    run_script(main)
