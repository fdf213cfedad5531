"""What an engine costs on a board beyond the model itself: measured, then budgeted by the search.

``tflm_project/boards/engine_costs.tsv`` (written by
``scripts/measure_engine_costs.py``, never by hand) holds per board and
engine an upper envelope fitted over measured models:

* flash = model weights as the engine stores them + ``flash_fixed`` +
  ``flash_per_op`` x operators + ``flash_per_channel`` x output channels of
  the weighted layers (code, vector table, per-channel quantisation
  constants, the flatbuffer's own tables for TFLM);
* RAM = activations + ``ram_fixed`` + ``ram_per_op`` x operators +
  ``ram_per_channel`` x channels (statics, the stack reserve the linker
  keeps, and for TFLM the arena's bookkeeping: its per-channel requantisation
  tables live in RAM, and its planner and kernel scratch buffers can take the
  arena above WM).

The AOT engine stores weights block-sparse and its arena is planned by
:func:`pipeline.search.costs.arena_plan`; TFLM stores the flatbuffer's dense
weights and plans its own arena.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline.deploy.boards import BOARD_FACTS_PATH
from pipeline.errors import UserError

ENGINE_COSTS_PATH = BOARD_FACTS_PATH.parent / "engine_costs.tsv"
ENGINES = ("aot", "tflm")
COLUMNS = ("board", "engine", "flash_fixed", "flash_per_op", "flash_per_channel", "ram_fixed", "ram_per_op",
           "ram_per_channel", "models")


@dataclasses.dataclass(frozen=True)
class EngineCost:
    """One row of engine_costs.tsv: bytes an engine adds on a board, as a fixed part and per operator."""

    board: str
    engine: str
    flash_fixed: int
    flash_per_op: int
    flash_per_channel: int
    ram_fixed: int
    ram_per_op: int
    ram_per_channel: int
    models: int

    def flash_needed(self, weight_bytes: int, ops: int, channels: int) -> int:
        """Flash for a model storing ``weight_bytes`` in ``ops`` operators with ``channels`` output channels."""
        return weight_bytes + self.flash_fixed + self.flash_per_op * ops + self.flash_per_channel * channels

    def ram_needed(self, activation_bytes: int, ops: int, channels: int) -> int:
        """RAM for a model with ``activation_bytes`` of activations, ``ops`` operators and ``channels``."""
        return activation_bytes + self.ram_fixed + self.ram_per_op * ops + self.ram_per_channel * channels


def upper_envelope(points: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """(fixed, per_op, per_channel) with fixed + per_op x ops + per_channel x channels >= every point.

    Each point is (ops, channels, bytes). The slopes are the least-squares ones,
    never negative (a negative one is set to 0 and the other refitted), rounded
    up to whole bytes; the intercept is then raised until no point lies above
    the plane.
    """
    if not points:
        raise ValueError("no measured points")
    features = np.array([(ops, channels) for ops, channels, _ in points], dtype=float)
    measured = np.array([y for _, _, y in points], dtype=float)
    slopes = np.zeros(2)
    active = [0, 1]
    while active:
        centred = features[:, active] - features[:, active].mean(axis=0)
        fitted = np.linalg.lstsq(centred, measured - measured.mean(), rcond=None)[0]
        if (fitted >= 0).all():
            slopes[active] = fitted
            break
        active.pop(int(np.argmin(fitted)))
    per_op, per_channel = (int(np.ceil(v - 1e-9)) for v in slopes)
    return int(max(y - per_op * o - per_channel * c for o, c, y in points)), per_op, per_channel


def load_engine_costs(path: Path = ENGINE_COSTS_PATH) -> dict[tuple[str, str], EngineCost]:
    """Every row of the facts file, keyed by (board, engine)."""
    costs: dict[tuple[str, str], EngineCost] = {}
    if not path.is_file():
        return costs
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != len(COLUMNS) or not all(v.isdigit() for v in fields[2:]):
            raise UserError(f"{path.name}: the line {line!r} is not {len(COLUMNS)} tab-separated fields "
                            f"({', '.join(COLUMNS)}): re-run scripts/measure_engine_costs.py to rewrite it")
        costs[(fields[0], fields[1])] = EngineCost(fields[0], fields[1], *(int(v) for v in fields[2:]))
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
    try:
        kept = load_engine_costs(path)
    except UserError:  # an older layout: the rows measured now replace it
        kept = {}
    for row in rows:
        kept[(row.board, row.engine)] = row
    lines = ["# Bytes an engine adds on a board beyond the model's weights and activations, as fixed +",
             "# per_op x operators + per_channel x output channels of the weighted layers: an upper",
             "# envelope over measured models plus a stated margin (see the script). Written by",
             "# scripts/measure_engine_costs.py; read by pipeline/deploy/engine_costs.py. Do not edit by hand.",
             "# " + "\t".join(COLUMNS)]
    for key in sorted(kept):
        row = kept[key]
        lines.append("\t".join(str(getattr(row, c)) for c in COLUMNS))
    path.write_text("\n".join(lines) + "\n")
