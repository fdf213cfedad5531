"""Build the firmware for a model and a board, and start emulated boards in QEMU.

The build runs tflm_project/Makefile with arm-none-eabi-gcc; the model is
compiled to C by the AOT engine first. A model that cannot fit the board is
refused before compiling, with the numbers, and the linker's own overflow
check backs that up.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import socket
import subprocess
from pathlib import Path

from pipeline import aot
from pipeline.boards import Board
from pipeline.errors import UserError

PROJECT_DIR = Path(__file__).resolve().parent.parent / "tflm_project"
BUILD_TIMEOUT_S = 600
MIN_STACK_BYTES = 1024
ENGINES = ("aot", "tflm")


@dataclasses.dataclass(frozen=True)
class Firmware:
    """A built firmware image and its sizes from the ELF."""

    elf: Path
    text_bytes: int   # code, constants (weights) and the vector table
    data_bytes: int
    bss_bytes: int
    model: aot.AotModel

    @property
    def flash_bytes(self) -> int:
        """Flash used: text + data (the initialised data's load image)."""
        return self.text_bytes + self.data_bytes


def build(model_data: bytes, board: Board, engine: str, build_dir: Path, label: str) -> Firmware:
    """Generates the model's C sources and builds the firmware ELF in ``build_dir``."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "tflm":
        raise UserError("ENGINE=tflm (TensorFlow Lite Micro from TFLM_DIR) is not built yet: use ENGINE=aot")
    if shutil.which("arm-none-eabi-gcc") is None:
        raise UserError("arm-none-eabi-gcc not found: install the Debian packages gcc-arm-none-eabi, "
                        "libnewlib-arm-none-eabi and libstdc++-arm-none-eabi-newlib")
    model = aot.generate(model_data, label)
    ram_needed = model.arena_bytes + MIN_STACK_BYTES
    if model.weight_bytes > board.flash_bytes or ram_needed > board.ram_bytes:
        raise UserError(f"{label} does not fit {board.name}: needs {model.weight_bytes:,} B of weights "
                        f"(flash {board.flash_bytes:,} B) and {ram_needed:,} B of RAM for arena and stack "
                        f"(RAM {board.ram_bytes:,} B): pick a smaller Pareto model or search with "
                        f"--board {board.name}")
    build_dir = build_dir.resolve()
    aot.write_sources(model, build_dir / "gen")
    command = ["make", "-C", str(PROJECT_DIR), f"BOARD={board.name}", f"ENGINE={engine}",
               f"BUILD={build_dir}", f"GEN_DIR={build_dir / 'gen'}", f"MIN_STACK_BYTES={MIN_STACK_BYTES}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"the firmware build took over {BUILD_TIMEOUT_S} s and was stopped") from None
    if result.returncode != 0:
        overflow = re.search(r"region `(\w+)' overflowed by (\d+) bytes|RAM overflow[^\n]*", result.stderr)
        detail = overflow.group(0) if overflow else (result.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"firmware build for {board.name} failed: {detail} (full log: make -C tflm_project "
                        f"BOARD={board.name} BUILD={build_dir})")
    sizes = _section_sizes(build_dir / "size.txt")
    text = sizes.get(".isr_vector", 0) + sizes.get(".text", 0) + sizes.get(".ARM.exidx", 0)
    return Firmware(build_dir / "firmware.elf", text, sizes.get(".data", 0), sizes.get(".bss", 0), model)


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
