"""Build the firmware for a model and a board, and start emulated boards in QEMU.

The build runs tflm_project/Makefile with arm-none-eabi-gcc; the model is
compiled to C by the AOT engine first. A model that cannot fit the board is
refused before compiling, with the numbers, and the linker's own overflow
check backs that up.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline import REPO_ROOT
from pipeline.compress import tflite_graph, tflite_model
from pipeline.deploy import aot, clocks, tflm
from pipeline.deploy.boards import Board
from pipeline.errors import DoesNotFit, UserError
from pipeline.search import costs

PROJECT_DIR = REPO_ROOT / "tflm_project"
BUILD_TIMEOUT_S = 600
# RAM the linker keeps free for the stack (it refuses to link with less): about 4x the peak the
# AOT engine's flat calls were measured to reach (228-244 B), and 1.3x TFLM's (1,380-1,524 B).
# scripts/measure_engine_costs.py checks every measured peak against it.
STACK_RESERVE_BYTES = {"aot": 1024, "tflm": 2048}
TFLM_LIBRARY_TIMEOUT_S = 3600
ENGINES = ("aot", "tflm")


@dataclasses.dataclass(frozen=True)
class ModelFigures:
    """What the device result reports of the model itself, whatever the engine."""

    weight_bytes: int          # kernels as stored (dense or bitmap-sparse) plus biases
    nonzero_weight_bytes: int  # MS
    working_memory_bytes: int  # WM
    operators: tuple[str, ...] = ()  # AOT: the operators its per-operator profile names, in order


@dataclasses.dataclass(frozen=True)
class Firmware:
    """A built firmware image and its sizes from the ELF."""

    elf: Path
    text_bytes: int   # code, constants (weights) and the vector table
    data_bytes: int
    bss_bytes: int
    model: ModelFigures
    make_args: tuple[str, ...]  # the variables it was built with (flashing rebuilds nothing)

    @property
    def flash_bytes(self) -> int:
        """Flash used: text + data (the initialised data's load image)."""
        return self.text_bytes + self.data_bytes


def build(model_data: bytes, board: Board, engine: str, build_dir: Path, label: str,
          tflm_arena_bytes: int = 0, aot_kernels: str = "fast") -> Firmware:
    """Generates the model's sources and builds the firmware ELF in ``build_dir``.

    For ``engine == "tflm"``, ``tflm_arena_bytes`` sizes TFLM's static arena;
    0 builds the probe that lends TFLM all free RAM and reports what it used.
    ``aot_kernels="reference"`` builds the AOT engine's portable reference
    kernels in place of the fast ones (the oracle the tests compare with).
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if shutil.which("arm-none-eabi-gcc") is None:
        raise UserError("arm-none-eabi-gcc not found: install the Debian packages gcc-arm-none-eabi, "
                        "libnewlib-arm-none-eabi and libstdc++-arm-none-eabi-newlib")
    build_dir = build_dir.resolve()
    gen = build_dir / "gen"
    args = [f"BOARD={board.name}", f"ENGINE={engine}", f"BUILD={build_dir}", f"GEN_DIR={gen}"]
    if engine == "aot":
        model = aot.generate(model_data, label)
        figures = ModelFigures(model.weight_bytes, model.nonzero_weight_bytes, model.working_memory_bytes,
                               model.operators)
        ram_needed = model.arena_bytes + STACK_RESERVE_BYTES[engine]
        flash_needed = model.weight_bytes
        aot.write_sources(model, gen)
        args += [f"MIN_STACK_BYTES={STACK_RESERVE_BYTES[engine]}", f"AOT_KERNELS={aot_kernels}"]
    else:
        tree = tflm.tree_for(board)
        figures = _flatbuffer_figures(model_data)
        ram_needed, flash_needed = tflm_arena_bytes + STACK_RESERVE_BYTES[engine], len(model_data)
        tflm.write_sources(model_data, gen, label)
        library = tflm.library_dir(tree, board)
        args += [f"TFLM_DIR={tree}", f"TFLM_LIB_DIR={library}",
                 f"TFLM_ARENA_BYTES={tflm_arena_bytes}", f"MIN_STACK_BYTES={STACK_RESERVE_BYTES[engine]}"]
        with _exclusive(library / ".lock", TFLM_LIBRARY_TIMEOUT_S, "compiling the TFLM library"):
            _make([*args, "tflm-lib", f"-j{os.cpu_count() or 2}"], TFLM_LIBRARY_TIMEOUT_S, board, build_dir,
                  "compiling the TFLM library (once per core and tree)")
    if clocks.needs_pll(board):
        (gen / "board_clock.h").write_text(clocks.header(board))
    if flash_needed > board.flash_bytes or ram_needed > board.ram_bytes:
        raise DoesNotFit(f"{label} does not fit {board.name} with ENGINE={engine}: needs {flash_needed:,} B of "
                        f"weights (flash {board.flash_bytes:,} B) and {ram_needed:,} B of RAM for arena and "
                        f"stack (RAM {board.ram_bytes:,} B): pick a smaller Pareto model or search with "
                        f"--board {board.name}")
    _make(args, BUILD_TIMEOUT_S, board, build_dir, "the firmware build", label, engine)
    sizes = _section_sizes(build_dir / "size.txt")
    text = sum(sizes.get(s, 0) for s in (".isr_vector", ".text", ".ARM.exidx", ".init_array"))
    return Firmware(build_dir / "firmware.elf", text, sizes.get(".data", 0), sizes.get(".bss", 0), figures,
                    tuple(args))


@contextlib.contextmanager
def _exclusive(lock_file: Path, timeout: float, what: str) -> Iterator[None]:
    """Holds an exclusive lock on ``lock_file`` (made if missing): the TFLM library is compiled
    into a cache that builds running at once (a benchmark beside the tests, two CI jobs on one
    runner) share, and two compilers writing the same objects break both builds. Waits at most
    ``timeout`` seconds for another holder."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"{what}: another build has held {lock_file} for over {timeout:.0f} s: "
                                    "let it finish, or stop it, and run again") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make(args: list[str], timeout: int, board: Board, build_dir: Path, what: str, label: str = "",
          engine: str = "") -> None:
    """Runs tflm_project's Makefile; a firmware that the linker finds too big for the board's flash
    or RAM is DoesNotFit (weights alone fitted: the engine's code or statics did not)."""
    command = ["make", "-C", str(PROJECT_DIR), *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} took over {timeout} s and was stopped") from None
    if result.returncode != 0:
        region = re.search(r"region `(FLASH|RAM)' overflowed by (\d+) bytes", result.stderr)
        if region and label:
            size = board.flash_bytes if region[1] == "FLASH" else board.ram_bytes
            raise DoesNotFit(f"{label} does not fit {board.name} with ENGINE={engine}: its firmware is "
                             f"{int(region[2]):,} B over the {region[1]} ({size:,} B) once the engine's code "
                             f"and statics are linked: pick a smaller Pareto model or search with "
                             f"--board {board.name}")
        overflow = re.search(r"region `(\w+)' overflowed by (\d+) bytes|RAM overflow[^\n]*", result.stderr)
        detail = overflow.group(0) if overflow else (result.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"{what} for {board.name} failed: {detail} (full log: make -C tflm_project "
                        f"{' '.join(args)})")


def _flatbuffer_figures(model_data: bytes) -> ModelFigures:
    """Weights as the flatbuffer stores them (dense), MS and WM, for an interpreter engine."""
    graph = tflite_graph.read_graph(model_data)
    stored = 0
    for op in graph.operators:
        if op.name in tflite_model.WEIGHTED_OPS:
            stored += sum(graph.tensors[i].data.nbytes for i in op.inputs[1:3]
                          if i >= 0 and graph.tensors[i].data is not None)
    resources = tflite_model.resource_graph(model_data)
    return ModelFigures(stored, costs.model_size_bytes(resources), costs.working_memory_bytes(resources))


def _section_sizes(path: Path) -> dict[str, int]:
    sizes = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_command(board: Board, elf: Path, port: int) -> list[str]:
    """The qemu-system-arm command line of an emulated board, its UART on a TCP server socket.

    ``-icount shift=0`` makes time deterministic: one instruction is one
    nanosecond, so the firmware's tick counts are exact instruction counts.
    """
    if board.qemu_machine is None:
        raise UserError(f"board {board.name} is real hardware, not emulated")
    serial = f"tcp:127.0.0.1:{port},server=on,wait=on"
    # netduinoplus2 puts USART1 on serial0 and USART3 (the firmware's) on serial2.
    serials = ["-serial", "null", "-serial", "null"] if board.qemu_machine == "netduinoplus2" else []
    return ["qemu-system-arm", "-M", board.qemu_machine, "-kernel", str(elf), "-icount", "shift=0",
            "-display", "none", "-monitor", "none", *serials, "-serial", serial]
