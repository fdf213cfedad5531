"""Board facts: one data file shared by the cost model and the firmware build.

The file is ``tflm_project/boards/board_facts.tsv``: tab-separated, one row
per board, so that Make can read it with awk and Python with ``split``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline import REPO_ROOT
from pipeline.errors import UserError

BOARD_FACTS_PATH = REPO_ROOT / "tflm_project" / "boards" / "board_facts.tsv"


@dataclasses.dataclass(frozen=True)
class Board:
    """What the search and the firmware need to know about one board."""

    name: str
    core: str
    ram_bytes: int
    flash_bytes: int
    clock_hz: int
    timer_hz: int  # rate of the tick counter the firmware reports latency in
    qemu_machine: str | None
    flash_tool: str
    description: str

    @property
    def emulated(self) -> bool:
        """True when the board runs under QEMU rather than on hardware."""
        return self.qemu_machine is not None


def load_boards(path: Path = BOARD_FACTS_PATH) -> dict[str, Board]:
    """Reads every board from the facts file, keyed by name."""
    boards: dict[str, Board] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, core, ram, flash, clock, timer, qemu, tool, description = line.split("\t")
        boards[name] = Board(
            name=name,
            core=core,
            ram_bytes=int(ram),
            flash_bytes=int(flash),
            clock_hz=int(clock),
            timer_hz=int(timer),
            qemu_machine=None if qemu == "-" else qemu,
            flash_tool=tool,
            description=description,
        )
    return boards


def get_board(name: str) -> Board:
    """Returns the named board, or raises a UserError listing the known ones."""
    boards = load_boards()
    if name not in boards:
        raise UserError(
            f"unknown board {name!r}: expected one of {', '.join(sorted(boards))} "
            f"(the rows of {BOARD_FACTS_PATH.name})"
        )
    return boards[name]


def emulated_twin(name: str) -> str:
    """The QEMU board that stands in for board ``name``: itself when emulated, else one with its core."""
    boards = load_boards()
    board = get_board(name)
    if board.emulated:
        return name
    twin = next((b for b in boards.values() if b.emulated and b.core == board.core), None)
    if twin is None:
        raise UserError(f"no emulated board has {name}'s core {board.core}: run it on the real board")
    return twin.name
