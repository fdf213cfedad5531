"""Runs the committed reference models (bench/models/<id>/model_int8.tflite) on a board.

`make bench-check` compares their device.json files with bench/baseline.json. The models are
files in the repository, not the output of a search, so their figures depend only on the engines,
the firmware and the board: a search trains other weights on another CPU, and a baseline tied to
a CI search's models would fail on every runner but the one that made it. Each result goes to
OUT/models/<id>/device-<board>-<engine>/device.json; the inputs are the first test images of
usps2, the dataset the models were trained on.

Usage:
    .venv/bin/python scripts/bench_reference.py --board qemu-stm32f4 [--engines aot tflm]
    make bench-reference BOARD=qemu-microbit [ENGINES=aot] [PORT=/dev/ttyACM0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
pipeline.import_tensorflow_quietly()  # before any module that imports TensorFlow
from pipeline.deploy.boards import emulated_twin  # noqa: E402
from pipeline.deploy.device import run_device, summary  # noqa: E402
from pipeline.errors import DoesNotFit, UserError, run_script  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "bench" / "models"
DEFAULT_OUT = Path("runs") / "bench-reference"
DATASET = "usps2"
ENGINES = ("aot", "tflm")


def main() -> int:
    """Runs every reference model with each engine; one line per result, exit 1 if any failed.

    A model that does not fit the board is skipped, as `make bench RUN=...` skips it.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="qemu-stm32f4")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--port", default=None,
                        help="serial port of the real board (without it a real board's QEMU twin runs)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    board = args.board if args.port else emulated_twin(args.board)
    models = sorted(MODELS.glob("*/model_int8.tflite"), key=lambda p: (len(p.parent.name), p.parent.name))
    if not models:
        raise UserError(f"no reference models in {MODELS}: restore them with git checkout bench/models")
    failed = 0
    for model in models:
        for engine in args.engines:
            out = args.out / "models" / model.parent.name / f"device-{board}-{engine}"
            try:
                result = run_device(model, board, engine, out, port=args.port, samples=args.samples,
                                    dataset=DATASET, data_dir=args.data_dir)
            except DoesNotFit as exc:  # a reference model too large for this board: it has no baseline there
                print(f"{model.parent.name} {engine}: skipped: {exc}")
                continue
            except UserError as exc:
                failed += 1
                print(f"{model.parent.name} {engine}: {exc}")
                continue
            print(f"{out / 'device.json'}: {summary(result)}")
    return 1 if failed else 0


if __name__ == "__main__":
    run_script(main)
