"""TensorFlow Lite Micro as a firmware engine: where its tree is, and the sources made per model.

A TFLM tree is the standalone source tree TFLM's own
``create_tflm_tree.py`` writes. ``python -m pipeline tflm`` (``make tflm``)
makes one per kernel set in a cache outside the checkout, from upstream at
the pins below (TFLM's download scripts fetch its third-party code at the
commits they declare). ``TFLM_DIR`` names an existing tree instead, or a
folder holding trees named ``tflm-<pin>-<kernels>``. Cortex-M4 boards use
CMSIS-NN kernels, Cortex-M0 boards the reference kernels.

Per model this writes ``model_data.c/.h`` (the flatbuffer as a C array) and
``tflm_ops.h``: a function that adds exactly the model's operators to a
``MicroMutableOpResolver``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.compress.tflite_graph import read_graph
from pipeline.deploy.boards import Board
from pipeline.errors import UserError

TFLM_REPOSITORY = "https://github.com/tensorflow/tflite-micro"
TFLM_PIN = "90b983c2b"  # see ../shared/docs/toolchain-facts.md: seen to build with CMSIS-NN for cortex-m4+fp
KERNELS_BY_CORE = {"cortex-m4": "cmsis_nn", "cortex-m0": "reference"}
TREE_OPTIONS = {"cmsis_nn": "TARGET=cortex_m_generic TARGET_ARCH=cortex-m4+fp OPTIMIZED_KERNEL_DIR=cmsis_nn",
                "reference": "TARGET=cortex_m_generic TARGET_ARCH=cortex-m0"}
CLONE_TIMEOUT_S = 600
TREE_TIMEOUT_S = 1800
_RESOLVER_METHODS = {
    "CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "FULLY_CONNECTED": "AddFullyConnected",
    "MAX_POOL_2D": "AddMaxPool2D", "AVERAGE_POOL_2D": "AddAveragePool2D", "ADD": "AddAdd", "MUL": "AddMul",
    "CONCATENATION": "AddConcatenation", "RESHAPE": "AddReshape", "MEAN": "AddMean", "SOFTMAX": "AddSoftmax",
    "QUANTIZE": "AddQuantize", "DEQUANTIZE": "AddDequantize", "LOGISTIC": "AddLogistic", "RELU": "AddRelu",
    "RELU6": "AddRelu6", "PAD": "AddPad", "TRANSPOSE_CONV": "AddTransposeConv", "SHAPE": "AddShape",
    "STRIDED_SLICE": "AddStridedSlice", "PACK": "AddPack", "SQUEEZE": "AddSqueeze", "TANH": "AddTanh",
    "HARD_SWISH": "AddHardSwish", "MAXIMUM": "AddMaximum", "MINIMUM": "AddMinimum", "SUB": "AddSub",
}


def cache_dir() -> Path:
    """Where trees and compiled libraries are kept: $SPARSE_MCU_CACHE, else ~/.cache/sparse-mcu."""
    return Path(os.environ.get("SPARSE_MCU_CACHE") or Path.home() / ".cache" / "sparse-mcu").expanduser()


def kernels_for(board: Board) -> str:
    """The kernel set a board's core uses."""
    if board.core not in KERNELS_BY_CORE:
        raise UserError(f"ENGINE=tflm has no kernel set for {board.name}'s core {board.core}: "
                        f"expected one of {', '.join(KERNELS_BY_CORE)}")
    return KERNELS_BY_CORE[board.core]


def _is_tree(path: Path) -> bool:
    return (path / "tensorflow" / "lite" / "micro" / "micro_interpreter.h").is_file()


def tree_for(board: Board, tflm_dir: str | None = None) -> Path:
    """The TFLM tree to build ``board``'s firmware with; UserError saying both ways to get one."""
    kernels = kernels_for(board)
    given = tflm_dir or os.environ.get("TFLM_DIR")
    name = f"tflm-{TFLM_PIN}-{kernels}"
    if given:
        root = Path(given).expanduser().resolve()
        for candidate in (root, root / name, *sorted(root.glob(f"tflm-*-{kernels}"))):
            if _is_tree(candidate):
                return candidate
        raise UserError(f"TFLM_DIR {str(root)!r} is neither a TFLM tree nor a folder holding {name}/: give "
                        "the output folder of TFLM's create_tflm_tree.py, or run make tflm")
    tree = cache_dir() / name
    if not _is_tree(tree):
        raise UserError(f"no TFLM tree for {board.name} ({kernels} kernels) in {tree}: run make tflm on a "
                        "machine with network, or pass TFLM_DIR=PATH to an existing tree")
    return tree


def library_dir(tree: Path, board: Board) -> Path:
    """Where the TFLM library compiled from ``tree`` for ``board``'s core is cached."""
    tag = hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "lib" / f"{tree.name}-{board.core}-{tag}"


def write_sources(model: bytes, folder: Path, label: str) -> None:
    """Writes model_data.c/.h and tflm_ops.h for ``model`` into ``folder``."""
    from pipeline.deploy.export import write_c_array

    ops = sorted({op.name for op in read_graph(model, label).operators})
    missing = [op for op in ops if op not in _RESOLVER_METHODS]
    if missing:
        raise UserError(f"{label} uses {', '.join(missing)}, which this tool cannot add to TFLM's op resolver "
                        f"yet: it adds {', '.join(sorted(_RESOLVER_METHODS))}")
    folder.mkdir(parents=True, exist_ok=True)
    write_c_array(model, folder / "model_data")
    adds = "".join(f"  if (resolver.{_RESOLVER_METHODS[op]}() != kTfLiteOk) return 1;\n" for op in ops)
    (folder / "tflm_ops.h").write_text(
        f"/* Generated by pipeline/deploy/tflm.py from {label}; do not edit. The model's operators: "
        f"{', '.join(ops)}. */\n#ifndef TFLM_OPS_H_\n#define TFLM_OPS_H_\n\n"
        f"#define TFLM_OP_COUNT {len(ops)}\n\ntemplate <typename Resolver>\n"
        f"int tflm_add_ops(Resolver& resolver) {{\n{adds}  return 0;\n}}\n\n#endif  // TFLM_OPS_H_\n")


def make_trees(kernel_sets: list[str] | None = None) -> list[Path]:
    """Clones TFLM at the pin and generates one tree per kernel set into the cache; returns them."""
    made = []
    for kernels in kernel_sets or sorted(TREE_OPTIONS):
        target = cache_dir() / f"tflm-{TFLM_PIN}-{kernels}"
        if _is_tree(target):
            made.append(target)
            continue
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / "tflite-micro"
            _run(["git", "clone", "--quiet", TFLM_REPOSITORY, str(source)], CLONE_TIMEOUT_S,
                 "cloning tensorflow/tflite-micro")
            _run(["git", "-C", str(source), "checkout", "--quiet", TFLM_PIN], 60, f"checking out {TFLM_PIN}")
            toolchain = Path(shutil.which("arm-none-eabi-gcc") or "/usr/bin/arm-none-eabi-gcc").parent
            env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            _run([sys.executable, "tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py",
                  f"--makefile_options={TREE_OPTIONS[kernels]} TARGET_TOOLCHAIN_ROOT={toolchain}/",
                  str(partial)], TREE_TIMEOUT_S, f"generating the {kernels} tree", cwd=source, env=env)
            partial.rename(target)
        made.append(target)
    return made


def _run(command: list[str], timeout: int, what: str, **kwargs) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} took over {timeout} s and was stopped: on a machine without network, pass "
                        "TFLM_DIR=PATH to an existing TFLM tree instead") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{what} failed ({last}): make tflm needs network access to GitHub; without it, pass "
                        "TFLM_DIR=PATH to an existing TFLM tree (the output of create_tflm_tree.py)")
