"""Checks in a throw-away process whether host TFLite Micro runs a model in a given arena.

The tflite-micro wheel corrupts its state when an interpreter fails to
allocate: the next interpreter created in the same process can crash with
SIGSEGV (seen deterministically: construct with too small an arena, then any
arena). So every allocation that may fail runs here, in a child process that
imports only tflite_micro and numpy (about 0.5 s), never in the search.

Usage: python -m pipeline.compress.tflm_probe MODEL.tflite ARENA_BYTES
Exit status 0 when the model allocates and runs one all-zero input, 1 when not.
"""
from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    """Allocates and invokes once; returns the exit status."""
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime

    path, arena = argv[0], int(argv[1])
    with open(path, "rb") as f:
        data = f.read()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        interp = runtime.Interpreter.from_bytes(data, arena_size=arena)
        details = interp.get_input_details(0)
        interp.set_input(np.zeros(details["shape"], details["dtype"]), 0)
        interp.invoke()
    except Exception:  # allocation failure or an op TFLM lacks
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
