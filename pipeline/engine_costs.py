"""What an engine costs on a board beyond the model itself: measured, then budgeted by the search.

``tflm_project/boards/engine_costs.tsv`` (written by
``scripts/measure_engine_costs.py``, never by hand) holds per board and
engine an upper envelope fitted over measured models:

* flash = model weights as the engine stores them + ``flash_fixed`` +
  ``flash_per_op`` x operators (code, vector table, quantisation constants,
  the flatbuffer's own tables for TFLM);
* RAM = activations + ``ram_fixed`` + ``ram_per_op`` x operators (statics,
  peak stack, and for TFLM the arena's bookkeeping and any planning slack
  above WM).

The AOT engine stores weights block-sparse and its arena is planned by
:func:`pipeline.costs.arena_plan`; TFLM stores the flatbuffer's dense
weights and plans its own arena.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.boards import BOARD_FACTS_PATH
from pipeline.errors import UserError

ENGINE_COSTS_PATH = BOARD_FACTS_PATH.parent / "engine_costs.tsv"
ENGINES = ("aot", "tflm")
COLUMNS = ("board", "engine", "flash_fixed", "flash_per_op", "ram_fixed", "ram_per_op", "models")


@dataclasses.dataclass(frozen=True)
class EngineCost:
    """One row of engine_costs.tsv: bytes an engine adds on a board, as a fixed part and per operator."""

    board: str
    engine: str
    flash_fixed: int
    flash_per_op: int
    ram_fixed: int
    ram_per_op: int
    models: int

    def flash_needed(self, weight_bytes: int, ops: int) -> int:
        """Flash the firmware needs for a model storing ``weight_bytes`` in ``ops`` operators."""
        return weight_bytes + self.flash_fixed + self.flash_per_op * ops

    def ram_needed(self, activation_bytes: int, ops: int) -> int:
        """RAM the firmware needs for a model with ``activation_bytes`` of activations in ``ops`` operators."""
        return activation_bytes + self.ram_fixed + self.ram_per_op * ops


def upper_envelope(points: list[tuple[int, int]]) -> tuple[int, int]:
    """(fixed, per_op) with fixed + per_op * ops >= every measured (ops, bytes) point.

    The slope is the least-squares one (never negative); the intercept is then
    raised until no point lies above the line.
    """
    if not points:
        raise ValueError("no measured points")
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = max(0.0, sum((x - mean_x) * (y - mean_y) for x, y in points) / spread) if spread else 0.0
    per_op = int(-(-slope // 1))
    return max(y - per_op * x for x, y in points), per_op


def load_engine_costs(path: Path = ENGINE_COSTS_PATH) -> dict[tuple[str, str], EngineCost]:
    """Every row of the facts file, keyed by (board, engine)."""
    costs: dict[tuple[str, str], EngineCost] = {}
    if not path.is_file():
        return costs
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        board, engine, *numbers = line.split("\t")
        row = EngineCost(board, engine, *(int(v) for v in numbers))
        costs[(board, engine)] = row
    return costs


def engine_cost(board: str, engine: str) -> EngineCost:
    """The measured cost of ``engine`` on ``board``; UserError when it has not been measured."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    found = load_engine_costs().get((board, engine))
    if found is None:
        raise UserError(f"no measured cost of ENGINE={engine} on {board} in {ENGINE_COSTS_PATH.name}: run "
                        "scripts/measure_engine_costs.py (with a TFLM tree for tflm) to measure it")
    return found


def write_engine_costs(rows: list[EngineCost], path: Path = ENGINE_COSTS_PATH) -> None:
    """Rewrites the facts file with ``rows`` (other boards' and engines' rows are kept)."""
    kept = load_engine_costs(path)
    for row in rows:
        kept[(row.board, row.engine)] = row
    lines = ["# Bytes an engine adds on a board beyond the model's weights and activations, as",
             "# fixed + per_op x operators: an upper envelope over measured models plus a stated margin",
             "# (see the script). Written by",
             "# scripts/measure_engine_costs.py; read by pipeline/engine_costs.py. Do not edit by hand.",
             "# " + "\t".join(COLUMNS)]
    for key in sorted(kept):
        row = kept[key]
        lines.append("\t".join(str(getattr(row, c)) for c in COLUMNS))
    path.write_text("\n".join(lines) + "\n")
