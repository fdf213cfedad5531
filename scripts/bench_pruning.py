"""Benchmark: what block pruning saves in time on the device, not only in flash.

Trains one search-space architecture twice on USPS for one epoch, dense and
block-pruned to SPARSITY by the search's own pruning (blocks of 16 weights of
one output row), converts both to int8, and runs them with the AOT engine on
both emulated cores. Prints weights in flash, instructions per inference and
the per-operator instructions, pruned against dense.

Usage:
    .venv/bin/python scripts/bench_pruning.py --data-dir ../shared/datasets [--sparsity 0.8]
    make bench-pruning DATA_DIR=../shared/datasets
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
pipeline.import_tensorflow_quietly()  # before any module that imports TensorFlow
from pipeline.compress import tflite_model  # noqa: E402
from pipeline.compress.training import TrainingSettings, train_candidate  # noqa: E402
from pipeline.datasets import load_dataset  # noqa: E402
from pipeline.deploy.device import run_device  # noqa: E402
from pipeline.errors import UserError, run_script  # noqa: E402
from pipeline.search.architecture import decode  # noqa: E402
from pipeline.search.space import new_space  # noqa: E402

# Two 3x3 convolutions of 16 and 32 filters (rows of 144 and 288 weights: whole blocks of 16),
# the input downsampled to 8x8, then the classifier: a shape the search makes.
ARCHITECTURE = {"downsample_input": True, "input_downsampling_rate": 2, "block1_num_layers": 2,
                "block1_layer1_type": "Conv2D", "block1_layer1_filters": 16, "block1_layer1_kernel": 3,
                "block1_layer2_type": "Conv2D", "block1_layer2_filters": 32, "block1_layer2_kernel": 3,
                "pruning_start_fraction": 0.0, "pruning_ramp_fraction": 0.3}


def _model(data, sparsity: float, folder: Path) -> Path:
    values = dict(new_space().values) | ARCHITECTURE | {"block1_sparsity": sparsity, "fc_sparsity": sparsity}
    arch, compression = decode(values, data.input_shape, data.num_classes)
    model = train_candidate(arch, compression, TrainingSettings.from_values(values, 1),
                            data.x_train[:3000], data.y_train[:3000], seed=0)
    path = folder / f"sparsity{sparsity:.2f}" / "model_int8.tflite"
    path.parent.mkdir(parents=True)
    path.write_bytes(tflite_model.convert_int8(model, data.x_train))
    return path


def main() -> int:
    """Trains the pair, measures both on both cores, prints the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("SPARSE_DATA_DIR"))
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    if not 0 < args.sparsity < 1:
        raise UserError(f"--sparsity {args.sparsity}: expected a fraction between 0 and 1, such as 0.8")
    data = load_dataset("usps", args.data_dir)
    with tempfile.TemporaryDirectory() as scratch:
        dense, pruned = (_model(data, s, Path(scratch)) for s in (0.0, args.sparsity))
        print(f"One architecture, dense and {args.sparsity:.0%} block-pruned, AOT engine, {args.samples} USPS "
              "test inputs; instructions under QEMU -icount shift=0\n")
        for board in ("qemu-stm32f4", "qemu-microbit"):
            results = [run_device(path, board, "aot", path.parent / board, samples=args.samples, dataset="usps",
                                  data_dir=args.data_dir) for path in (dense, pruned)]
            d, p = results
            print(f"{board}: weights {d['weight_bytes']:,} -> {p['weight_bytes']:,} B "
                  f"({p['weight_bytes'] / d['weight_bytes']:.2f}x), instructions {d['latency_instructions']:,} -> "
                  f"{p['latency_instructions']:,} ({p['latency_instructions'] / d['latency_instructions']:.2f}x), "
                  f"outputs match host {d['outputs_match']:.2f} / {p['outputs_match']:.2f}\n")
            print("| operator | dense | pruned | pruned / dense |\n|---|---|---|---|")
            for a, b in zip(d["operators"], p["operators"]):
                print(f"| {b['op']} | {a['latency']:,} | {b['latency']:,} | {b['latency'] / a['latency']:.2f}x |")
            print()
    return 0


if __name__ == "__main__":
    run_script(main)
