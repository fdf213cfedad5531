"""Predicted latency of the AOT engine: instructions per inference on a core.

Known before training, like MS and WM: each operator's instructions are a
linear function of the work its kernel does, counted per path the kernel takes
(:mod:`pipeline.deploy.aot_work`: multiply-accumulates and outputs of two dense
rows per pass, of a block walk, of im2col patches, stored blocks visited, runs
clipped at the border, ...), with coefficients fitted per operator kind and
core to the per-operator profiles QEMU measures (``-icount shift=0``: one tick
per instruction). The coefficients live in
``tflm_project/boards/latency_model.tsv``, which ``scripts/fit_latency_model.py``
regenerates and nothing edits by hand.

Two sources of that work:

* :meth:`LatencyModel.model_instructions`, for a converted model: the
  generator's own layout (stored blocks per row, scratch, the im2col choice);
* :meth:`LatencyModel.instructions`, for a candidate's resource graph before
  training (the search's constraint): the generator's decisions made on
  stand-in kernels that keep the pruning targets' blocks
  (:mod:`pipeline.search.latency_estimate`).

Predicted milliseconds at a board's clock count one cycle per instruction:
a lower bound on a real Cortex-M (loads and taken branches take more), and
the only figure QEMU can calibrate until a board is measured.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from pipeline.deploy import aot_work
from pipeline.deploy.boards import BOARD_FACTS_PATH
from pipeline.errors import UserError
from pipeline.search import latency_estimate
from pipeline.search.costs import ResourceGraph

LATENCY_MODEL_PATH = BOARD_FACTS_PATH.parent / "latency_model.tsv"
FEATURES = aot_work.WORK
ANY_KIND = "*"  # the row fitted over every operator, for a kind the calibration never saw


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """Fitted coefficients per (core, operator kind), one per feature."""

    coefficients: dict[tuple[str, str], tuple[float, ...]]

    def kind_instructions(self, kind: str, work: dict[str, float], core: str) -> float:
        """Predicted instructions of one operator of ``kind`` that does ``work`` on ``core``."""
        coef = self.coefficients.get((core, kind)) or self.coefficients.get((core, ANY_KIND))
        if coef is None:
            cores = sorted({c for c, _ in self.coefficients})
            raise UserError(f"no latency model for core {core!r} (calibrated: {', '.join(cores)}): "
                            f"run scripts/fit_latency_model.py for a board with that core")
        return sum(c * work[f] for c, f in zip(coef, FEATURES))

    def instructions(self, graph: ResourceGraph, core: str,
                     schedule: latency_estimate.Schedule | None = None) -> int:
        """Predicted instructions of one inference of a candidate on ``core``, before training
        (the layout estimated by :mod:`pipeline.search.latency_estimate`; ``schedule`` as there)."""
        return int(round(sum(self.kind_instructions(kind, work, core)
                             for kind, work in latency_estimate.estimated_work(graph, core, schedule))))

    def model_instructions(self, data: bytes, core: str) -> int:
        """Predicted instructions of one inference of a converted int8 model on ``core``, from the
        layout the AOT generator gives it (UserError for an operator the engine lacks)."""
        return int(round(sum(self.kind_instructions(kind, work, core) for kind, work in _generated_work(data, core))))


def _generated_work(data: bytes, core: str) -> tuple[tuple[str, dict[str, float]], ...]:
    """(operator kind, counted work on ``core``) of every operator the AOT engine runs for ``data``."""
    model = _generated(data)
    return tuple((name.split()[0], work) for name, work in zip(model.operators, model.work_for(core)))


@functools.lru_cache(maxsize=16)
def _generated(data: bytes):
    """The AOT engine's sources for ``data``, generated once per model however many cores and
    devices ask."""
    from pipeline.deploy import aot  # the generator imports the search's cost functions

    return aot.generate(data)


def predicted_ms(instructions: int, clock_hz: int) -> float:
    """Milliseconds at ``clock_hz``, one cycle per instruction (a lower bound; see the module)."""
    return 1000.0 * instructions / clock_hz


@functools.lru_cache(maxsize=4)
def load_latency_model(path: Path = LATENCY_MODEL_PATH) -> LatencyModel:
    """Reads latency_model.tsv: ``core kind <one coefficient per feature> operators``."""
    if not path.is_file():
        raise UserError(f"{path} is missing: run scripts/fit_latency_model.py to calibrate it")
    coefficients = {}
    header = "# core\tkind\t" + "\t".join(FEATURES) + "\toperators"
    lines = path.read_text().splitlines()
    if header not in lines:
        raise UserError(f"{path} was fitted for other features than {', '.join(FEATURES)}: "
                        f"run scripts/fit_latency_model.py to recalibrate it")
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        core, kind, values = fields[0], fields[1], fields[2:2 + len(FEATURES)]
        coefficients[(core, kind)] = tuple(float(v) for v in values)
    return LatencyModel(coefficients)


def write_latency_model(path: Path, rows: list[tuple[str, str, tuple[float, ...], int]], header: str) -> None:
    """Writes latency_model.tsv: a comment header, then one row per (core, kind)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append("# core\tkind\t" + "\t".join(FEATURES) + "\toperators")
    for core, kind, coef, count in sorted(rows):
        lines.append("\t".join([core, kind, *(f"{c:.6g}" for c in coef), str(count)]))
    path.write_text("\n".join(lines) + "\n")
    load_latency_model.cache_clear()
