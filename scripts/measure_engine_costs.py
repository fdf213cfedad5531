"""Measure each engine's fixed cost per board into tflm_project/boards/engine_costs.tsv.

For a spread of architectures from the search space (untrained, every other one
block-pruned to 60 % as the search prunes, converted to int8 with real USPS
calibration images, so their shapes, operators and storage are what the search
makes), this builds and runs the firmware of every engine on every
emulated board and records, per model:

- flash beyond the weights as the engine stores them (code, constants, tables);
- RAM beyond the activations that the firmware needs to link: statics and the
  stack reserve the linker keeps free (pipeline.deploy.firmware.STACK_RESERVE_BYTES;
  every measured stack peak is checked against it), and for TFLM the arena's
  bookkeeping and planning space above WM;

then fits an upper envelope fixed + per_op x operators + per_channel x output
channels of the weighted layers over the models, adds a
stated margin (1 KB of flash, 128 B of RAM) and writes it (see
pipeline/deploy/engine_costs.py). A real board gets the figures of its
emulated twin (same core, same code but for the timer).

Usage:
    .venv/bin/python scripts/measure_engine_costs.py --data-dir ../shared/datasets [--engines aot tflm]
    make measure-engine-costs DATA_DIR=../shared/datasets TFLM_DIR=PATH [ENGINES=aot]
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
from pipeline.compress.block_pruning import block_mask  # noqa: E402
from pipeline.datasets import load_dataset  # noqa: E402
from pipeline.deploy.boards import load_boards  # noqa: E402
from pipeline.deploy.device import run_device  # noqa: E402
from pipeline.deploy.engine_costs import EngineCost, upper_envelope, write_engine_costs  # noqa: E402
from pipeline.deploy.firmware import STACK_RESERVE_BYTES  # noqa: E402
from pipeline.errors import UserError, run_script  # noqa: E402
from pipeline.search import costs  # noqa: E402
from pipeline.search.architecture import decode  # noqa: E402
from pipeline.search.builder import build_model  # noqa: E402
from pipeline.search.space import new_space  # noqa: E402

PRUNED_SPARSITY = 0.6

# Added to the fitted envelope for what six models cannot show (a deeper stack in another kernel
# mix, one more quantisation table): stated, not tuned.
FLASH_MARGIN_BYTES = 1024
RAM_MARGIN_BYTES = 128

# Architectures spanning the search space's operators: plain, separable, downsampled,
# two blocks, FC, both branches with Sum and Concatenate merges; and from 8 to 64 filters,
# so that what grows with channels (TFLM's per-channel tables in RAM) is measured, not guessed.
VARIANTS = (
    {},
    {"block1_num_layers": 2, "block1_layer2_type": "SeparableConv2D", "block1_layer2_filters": 8},
    {"block1_layer1_type": "DownsampledConv2D", "block1_layer1_filters": 12, "downsample_input": True},
    {"num_conv_blocks": 2, "block2_num_layers": 2, "block1_layer1_filters": 6, "block2_layer1_filters": 8,
     "block2_layer2_filters": 8, "num_fc_layers": 1, "total_fc_weights": 4000},
    {"left_branch": True, "right_branch": True, "merge_type": "Sum", "num_fc_layers": 1,
     "total_fc_weights": 6000, "block1_layer1_filters": 4, "downsample_input": True},
    {"left_branch": True, "merge_type": "Concatenate", "block1_num_layers": 3, "block1_layer1_filters": 4,
     "block1_layer2_filters": 4, "block1_layer3_filters": 6, "total_fc_weights": 3000,
     "downsample_input": True, "input_downsampling_rate": 2},
    {"downsample_input": True, "block1_layer1_filters": 64, "block1_layer1_kernel": 5},
    {"downsample_input": True, "block1_num_layers": 2, "block1_layer1_type": "SeparableConv2D",
     "block1_layer1_filters": 48, "block1_layer2_filters": 32, "num_fc_layers": 1, "total_fc_weights": 8000},
    {"downsample_input": True, "num_conv_blocks": 2, "block1_layer1_filters": 24, "block2_num_layers": 2,
     "block2_layer1_filters": 40, "block2_layer2_type": "SeparableConv2D", "block2_layer2_filters": 56},
)


def _layer_defaults() -> dict:
    """Values for every conditional parameter a variant may switch on (3x3 convs of 8 filters)."""
    values = {"fc_fraction_main": 1.0, "fc_fraction_left": 0.5, "fc_fraction_right": 0.5,
              "input_downsampling_rate": 2}
    for block in (1, 2):
        values |= {f"block{block}_num_layers": 1, f"block{block}_sparsity": 0.0,
                   f"block{block}_channel_keep": 1.0}
        for layer in (1, 2, 3):
            prefix = f"block{block}_layer{layer}"
            values |= {f"{prefix}_type": "Conv2D", f"{prefix}_kernel": 3, f"{prefix}_filters": 8,
                       f"{prefix}_downsample_fraction": 0.25}
    return values


def _models(folder: Path, data) -> list[tuple[Path, int, int]]:
    """Writes one int8 .tflite per variant; returns (path, operators, output channels) triples."""
    made = []
    for i, variant in enumerate(VARIANTS):
        values = _layer_defaults() | dict(new_space().values) | {"block1_layer1_filters": 8} | variant
        arch, _ = decode(values, data.input_shape, data.num_classes)
        model = build_model(arch, shipped=True)
        if i % 2:  # every other model block-pruned as the search prunes: the sparse kernels' code too
            for layer in model.layers:
                if type(layer).__name__ == "Conv2D":
                    kernel, *rest = layer.get_weights()
                    layer.set_weights([kernel * block_mask(kernel, PRUNED_SPARSITY), *rest])
        flatbuffer = tflite_model.convert_int8(model, data.x_train)
        path = folder / f"variant{i}" / "model_int8.tflite"
        path.parent.mkdir(parents=True)
        path.write_bytes(flatbuffer)
        graph = tflite_model.resource_graph(flatbuffer)
        made.append((path, costs.operator_count(graph), costs.output_channels(graph)))
    return made


def main() -> int:
    """Measures, fits and writes the facts file; prints what it measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("SPARSE_DATA_DIR"))
    parser.add_argument("--engines", nargs="+", default=["aot", "tflm"], choices=("aot", "tflm"))
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args()
    data = load_dataset("usps", args.data_dir)
    boards = load_boards()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        models = _models(Path(scratch), data)
        for board in (b for b in boards.values() if b.emulated):
            for engine in args.engines:
                flash, ram = [], []
                for path, ops, channels in models:
                    r = run_device(path, board.name, engine, path.parent / f"{board.name}-{engine}",
                                   samples=args.samples, dataset="usps", data_dir=args.data_dir)
                    activations = r["arena_bytes"] if engine == "aot" else r["working_memory_bytes"]
                    if r["stack_bytes"] > STACK_RESERVE_BYTES[engine]:
                        raise UserError(f"{board.name} {engine} {path.parent.name}: stack peaked at "
                                        f"{r['stack_bytes']} B, above the {STACK_RESERVE_BYTES[engine]} B the "
                                        "linker reserves: raise STACK_RESERVE_BYTES in pipeline/deploy/firmware.py")
                    flash.append((ops, channels, r["flash_bytes"] - r["weight_bytes"]))
                    ram.append((ops, channels, r["static_ram_bytes"] + STACK_RESERVE_BYTES[engine] - activations))
                    print(f"{board.name} {engine} {path.parent.name}: {ops} ops, {channels} channels, "
                          f"flash {r['flash_bytes']:,} (weights {r['weight_bytes']:,}), RAM {r['ram_bytes']:,} (WM "
                          f"{r['working_memory_bytes']:,}, arena {r['arena_bytes']:,}, stack {r['stack_bytes']})")
                for name in [board.name] + [b.name for b in boards.values()
                                            if not b.emulated and b.core == board.core]:
                    flash_fit, ram_fit = upper_envelope(flash), upper_envelope(ram)
                    rows.append(EngineCost(name, engine, flash_fit[0] + FLASH_MARGIN_BYTES, *flash_fit[1:],
                                           ram_fit[0] + RAM_MARGIN_BYTES, *ram_fit[1:], len(models)))
    write_engine_costs(rows)
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    run_script(main)
