"""Predicted latency of the AOT engine: instructions per inference on a core, from the resource graph.

Known before training, like MS and WM: each operator's instructions are a
linear function of a few features of the operator, with coefficients fitted
per operator kind and core to the per-operator profiles QEMU measures
(``-icount shift=0``: one tick per instruction). The coefficients live in
``tflm_project/boards/latency_model.tsv``, which ``scripts/fit_latency_model.py``
regenerates and nothing edits by hand.

Features of one operator:

* ``dense_macs``: multiply-accumulates of a kernel stored dense (fewer than
  DENSE_BELOW of its weights zero, as the engine's dense-for-speed choice
  keeps such layers), zeros included;
* ``fc_macs``: the same for a dense kernel with one output position (an FC
  layer), whose weights are each read once;
* ``sparse_macs`` and ``skipped_macs``: for a kernel stored sparse, those over
  its nonzero weights and those its pruned weights would have cost (what the
  sparse walk still steps over);
* ``outputs``, ``taps`` (outputs x the kernel window's positions inside the
  input) and ``inputs``: elements written, window positions visited,
  elements read;
* ``fixed``: 1, the call and set-up.

Predicted milliseconds at a board's clock count one cycle per instruction:
a lower bound on a real Cortex-M (loads and taken branches take more), and
the only figure QEMU can calibrate until a board is measured.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from pipeline.deploy.boards import BOARD_FACTS_PATH
from pipeline.errors import UserError
from pipeline.search.costs import GraphOp, ResourceGraph

LATENCY_MODEL_PATH = BOARD_FACTS_PATH.parent / "latency_model.tsv"
FEATURES = ("dense_macs", "fc_macs", "sparse_macs", "skipped_macs", "outputs", "taps", "inputs", "fixed")
DENSE_BELOW = 0.2  # a kernel with fewer zeros than this is stored dense (the AOT engine's 1.25 x MS allowance)
ANY_KIND = "*"  # the row fitted over every operator, for a kind the calibration never saw


def op_features(op: GraphOp, graph: ResourceGraph) -> dict[str, float]:
    """The features of one operator (all zero for an aliased one, which runs no code)."""
    if op.alias:
        return dict.fromkeys(FEATURES, 0.0)
    outputs = graph.tensor_bytes[op.output]
    weighted = bool(op.kernel_weights and op.channels)
    positions = outputs / op.channels if weighted else 0.0
    fc = weighted and positions == 1  # one output position: each weight read once, no output pairs
    inside = inside_fraction(op)  # window taps in the padding cost nothing: the kernels skip them
    positions *= inside
    kept, all_macs = op.kernel_nonzeros * positions, op.kernel_weights * positions
    dense = weighted and op.kernel_nonzeros >= (1 - DENSE_BELOW) * op.kernel_weights
    features = dict.fromkeys(FEATURES, 0.0)
    if weighted:
        if dense:
            features["fc_macs" if fc else "dense_macs"] = all_macs
        else:
            features["sparse_macs"] = kept
            features["skipped_macs"] = all_macs - kept
    taps = outputs * op.kernel_hw[0] * op.kernel_hw[1] * inside  # window positions inside the input
    features.update(outputs=float(outputs), taps=float(taps),
                    inputs=float(sum(graph.tensor_bytes[i] for i in op.inputs)), fixed=1.0)
    return features


def inside_fraction(op: GraphOp) -> float:
    """The share of a kernel's window taps that fall inside the input, over all output positions.

    Convolutions here pad "same" at stride 1 (output as large as the input),
    so near the border part of the window lies in the padding; a 1x1 or FC
    kernel, or a window as large as a "valid" convolution's, lies inside.
    """
    (kh, kw), (h, w) = op.kernel_hw, op.input_hw
    if kh <= 1 and kw <= 1 or not h or not w:
        return 1.0
    return _axis_inside(kh, h) * _axis_inside(kw, w)


def _axis_inside(k: int, n: int) -> float:
    before = (k - 1) // 2
    inside = sum(min(n, i - before + k) - max(0, i - before) for i in range(n))
    return inside / (n * k)


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """Fitted coefficients per (core, operator kind), one per feature."""

    coefficients: dict[tuple[str, str], tuple[float, ...]]

    def op_instructions(self, op: GraphOp, graph: ResourceGraph, core: str) -> float:
        """Predicted instructions of one operator on ``core``."""
        if op.alias:
            return 0.0
        coef = self.coefficients.get((core, op.kind)) or self.coefficients.get((core, ANY_KIND))
        if coef is None:
            cores = sorted({c for c, _ in self.coefficients})
            raise UserError(f"no latency model for core {core!r} (calibrated: {', '.join(cores)}): "
                            f"run scripts/fit_latency_model.py for a board with that core")
        features = op_features(op, graph)
        return sum(c * features[f] for c, f in zip(coef, FEATURES))

    def instructions(self, graph: ResourceGraph, core: str) -> int:
        """Predicted instructions of one inference of the whole model on ``core``."""
        return int(round(sum(self.op_instructions(op, graph, core) for op in graph.ops)))


def predicted_ms(instructions: int, clock_hz: int) -> float:
    """Milliseconds at ``clock_hz``, one cycle per instruction (a lower bound; see the module)."""
    return 1000.0 * instructions / clock_hz


@functools.lru_cache(maxsize=4)
def load_latency_model(path: Path = LATENCY_MODEL_PATH) -> LatencyModel:
    """Reads latency_model.tsv: ``core kind <one coefficient per feature> operators``."""
    if not path.is_file():
        raise UserError(f"{path} is missing: run scripts/fit_latency_model.py to calibrate it")
    coefficients = {}
    for line in path.read_text().splitlines():
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
