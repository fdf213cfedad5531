"""Benchmark: a user's own Keras CNN, converted as TFLite's guide says, on both engines and both cores.

What a user brings who has never run the search: plain Keras layers ending in
Dense layers, trained on USPS, converted to a full-integer .tflite with
TFLite's post-training quantisation recipe (so the graph keeps its
FULLY_CONNECTED operators), once dense and once pruned with tfmot's
``prune_low_magnitude`` (75 % of the hidden Dense layer's weights, in blocks of
16 inputs, ramped up over all epochs but the last). Each .tflite runs with the AOT engine and with TFLite Micro (CMSIS-NN
kernels on the Cortex-M4, the reference kernels on the M0) on the emulated
boards, fed the first USPS test images (``make bench MODEL=... DATASET=usps``).
Prints flash, RAM, arena, instructions per inference (QEMU ``-icount shift=0``,
not cycles), outputs_match against host TFLite Micro and the AOT/TFLM ratios,
then the AOT engine's instructions per operator.

Usage:
    .venv/bin/python scripts/bench_user_model.py --data-dir ../shared/datasets [--engines aot tflm]
    make bench-user-model DATA_DIR=../shared/datasets TFLM_DIR=PATH [ENGINES=aot]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
pipeline.import_tensorflow_quietly()  # before any module that imports TensorFlow
from pipeline.datasets import load_dataset  # noqa: E402
from pipeline.deploy.device import run_device  # noqa: E402
from pipeline.errors import UserError, run_script  # noqa: E402

BOARDS = ("qemu-stm32f4", "qemu-microbit")
ENGINES = ("aot", "tflm")
DATASET = "usps"
PRUNED_SPARSITY = 0.75
BATCH_SIZE = 64


def _model(data, epochs: int, pruned: bool) -> bytes:
    """The user's CNN, trained (and pruned) on USPS, converted as TFLite's guide says."""
    import numpy as np
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from pipeline.compress import tflite_model

    keras.utils.set_random_seed(0)
    hidden = keras.layers.Dense(64, activation="relu")
    if pruned:  # the sparsity ramps up over all epochs but the last, as tfmot's guide does it
        steps = -(-len(data.x_train) // BATCH_SIZE) * epochs
        schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, PRUNED_SPARSITY, 0, max(1, steps - steps // epochs),
                                                        frequency=10)
        hidden = tfmot.sparsity.keras.prune_low_magnitude(hidden, pruning_schedule=schedule, block_size=(16, 1))
    model = keras.Sequential([keras.layers.Input(data.input_shape), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(), hidden,
                              keras.layers.Dense(data.num_classes), keras.layers.Softmax()])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep()] if pruned else []
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=BATCH_SIZE, verbose=0, callbacks=callbacks)
    if pruned:
        model = tfmot.sparsity.keras.strip_pruning(model)
    calibration = data.x_train[np.random.default_rng(0).choice(len(data.x_train), 100, replace=False)]
    return tflite_model.convert_as_tflite_guide(model, calibration)


def main() -> int:
    """Trains, converts and measures both models; prints the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--boards", nargs="+", default=list(BOARDS), choices=BOARDS)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-user-model")
    args = parser.parse_args()
    if args.epochs < 1 or args.samples < 1:
        raise UserError(f"--epochs {args.epochs} --samples {args.samples}: expected positive numbers")
    data = load_dataset(DATASET, args.data_dir)
    print(f"A user's Keras CNN (Conv2D 8x3x3, max pooling, Dense 64, Dense {data.num_classes}, softmax), "
          f"{args.epochs} epochs on {DATASET}, converted as TFLite's guide says; {args.samples} test inputs; "
          "instructions under QEMU -icount shift=0 (not cycles)\n")
    print("| model | board | engine | flash B | RAM B | arena B | instructions | outputs match | accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    profiles = []
    for name, pruned in (("dense", False), (f"pruned {PRUNED_SPARSITY:.0%}", True)):
        folder = args.out / name.split()[0]
        folder.mkdir(parents=True, exist_ok=True)
        model = folder / "model_int8.tflite"
        model.write_bytes(_model(data, args.epochs, pruned))
        for board in args.boards:
            results = {}
            for engine in args.engines:
                try:
                    r = run_device(model, board, engine, folder / f"device-{board}-{engine}", samples=args.samples,
                                   dataset=DATASET, data_dir=args.data_dir)
                except UserError as exc:
                    print(f"| {name} | {board} | {engine} | {exc} |")
                    continue
                results[engine] = r
                print(f"| {name} | {board} | {engine} | {r['flash_bytes']:,} | {r['ram_bytes']:,} | "
                      f"{r['arena_bytes']:,} | {r['latency_instructions']:,} | {r['outputs_match']:.2f} | "
                      f"{100 * r['accuracy']:.1f} % |")
            if len(results) == 2:
                a, t = results["aot"], results["tflm"]
                print(f"| {name} | {board} | AOT/TFLM | {a['flash_bytes'] / t['flash_bytes']:.2f}x | "
                      f"{a['ram_bytes'] / t['ram_bytes']:.2f}x | {a['arena_bytes'] / t['arena_bytes']:.2f}x | "
                      f"{a['latency_instructions'] / t['latency_instructions']:.2f}x | | |")
            if "aot" in results:
                profiles.append((name, board, results["aot"]["operators"]))
    for name, board, operators in profiles:
        print(f"\nAOT engine, {name}, {board}: " + ", ".join(f"{o['op']} {o['latency']:,}" for o in operators))
    return 0


if __name__ == "__main__":
    run_script(main)
