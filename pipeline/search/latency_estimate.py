"""The AOT engine's work for a candidate before training: its layout estimated, its paths counted.

Before training, only each kernel's shape and its pruning target are known. The
estimate builds a stand-in int8 kernel of that shape that keeps the target's
blocks of PRUNING_BLOCK weights (:func:`stand_in_kernel`: as many as
:func:`pipeline.search.costs.nonzeros_after_pruning` counts, placed as magnitude
pruning tends to place them). It then makes the
generator's own decisions on it (:mod:`pipeline.deploy.aot_layout`): each
kernel's smallest storage, the layers stored dense for speed within the flash
the search promised, one fully connected layer per output pixel on a small
map, and the im2col path with the scratch the arena plan leaves, which is
exact before training since it depends only on tensor sizes. The work of the
paths those decisions give is counted as for a converted model
(:mod:`pipeline.deploy.aot_work`). Every layer is taken to get the short
requantisation, which only the trained weights and scales can decide
(aot_quant.narrow_accumulators).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.deploy import aot_layout, aot_work
from pipeline.search import costs
from pipeline.search.costs import PRUNING_BLOCK, GraphOp, ResourceGraph

_CONV_KINDS = ("CONV_2D", "FULLY_CONNECTED")
Schedule = tuple[list[str], int, dict[str, int]]  # operator order, arena bytes, tensor offsets
# The share of a row's kept blocks taken where the taps read the input most, the rest spread evenly:
# of 0, 1/4, 1/2, 3/4 and 1, the one whose estimates came closest on the calibration models
# (scripts/fit_latency_model.py). Trained kernels lie between the two: magnitude pruning drops
# padding-only taps first, but not only those.
INSIDE_FIRST = 0.25


def estimated_work(graph: ResourceGraph, core: str, schedule: Schedule | None = None
                   ) -> list[tuple[str, dict[str, float]]]:
    """(operator kind, estimated counted work on ``core``) of every operator of ``graph`` the
    engine runs (an aliased one, which moves no data, does no work). ``schedule``: the operator
    order and the arena plan over it (costs.best_schedule, costs.arena_plan), when the caller
    has them; else they are made here."""
    dsp = aot_work.has_dsp(core)
    scratch = _scratch_bytes(graph, schedule)
    geometries = {i: _geometry(op, graph) for i, op in enumerate(graph.ops)
                  if op.kind in _CONV_KINDS and op.kernel_weights and not op.alias}
    kernels = {i: stand_in_kernel(graph.ops[i], g if graph.ops[i].kind == "CONV_2D" else None)
               for i, g in geometries.items()}
    layers = [aot_layout.WeightedLayer(i, graph.ops[i].kind, kernel.rows, _positions(graph.ops[i], graph),
                                       geometries[i] if graph.ops[i].kind == "CONV_2D" else None,
                                       scratch.get(graph.ops[i].name, 0), kernel.counts)
              for i, kernel in kernels.items()]
    layers += [aot_layout.WeightedLayer(i, op.kind, np.ones((1, op.kernel_weights // max(op.channels, 1), op.channels),
                                                       np.int8), 1)
               for i, op in enumerate(graph.ops) if op.kind == "DEPTHWISE_CONV_2D" and not op.alias]
    dense = aot_layout.choose_dense(layers, costs.aot_weight_bytes(graph))
    out = []
    for i, op in enumerate(graph.ops):
        if op.alias:
            continue
        if i in kernels:
            work = _conv_work(op, geometries[i], kernels[i], i in dense, scratch.get(op.name, 0), dsp)
        elif op.kind == "DEPTHWISE_CONV_2D":
            work = aot_work.depthwise_work(aot_work.same_geometry(op.input_hw, op.channels, op.channels,
                                                                  op.kernel_hw, _positions(op, graph)))
        else:
            outputs = graph.tensor_bytes[op.output]
            inputs = sum(graph.tensor_bytes[t] for t in op.inputs)
            taps = inputs if op.kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D") else 0
            work = aot_work.elementwise_work(outputs, inputs, taps)
        out.append((op.kind, work))
    return out


@dataclasses.dataclass(frozen=True)
class StandIn:
    """A stand-in kernel, kept as its distinct rows (at most two: every row keeps one of two
    numbers of blocks, in the same places).

    Attributes:
        rows: the distinct rows, shaped like the kernel ([n][kh][kw][in], or [n][k]).
        counts: how many of the kernel's rows each distinct row stands for.
        order: per row of the kernel, which distinct row it is.
    """

    rows: np.ndarray
    counts: np.ndarray
    order: np.ndarray

    def full(self) -> np.ndarray:
        """The whole kernel, every row in place."""
        return self.rows[self.order]


def stand_in_kernel(op: GraphOp, geometry: aot_work.ConvGeometry | None = None) -> StandIn:
    """An int8 kernel of ``op``'s shape ([rows][kh][kw][in] for a convolution, [rows][k] for a
    fully connected layer) holding ones in the blocks its pruning target keeps, zeros elsewhere.

    The kept blocks are shared evenly between the rows (the rows with one more spread evenly too,
    so that the rows kept are not all neighbours, which the kernels would run in pairs). Within a
    row, with a convolution's ``geometry``, an INSIDE_FIRST share of them are the blocks whose
    taps read the input for the most outputs (magnitude pruning drops first the taps that mostly
    or only read the padding, whose weights training hardly moves), the rest spread evenly along
    the row; full-length blocks before the row's shorter last one.
    """
    rows = op.rows or op.channels
    k = op.kernel_weights // rows
    full_per_row, tail = divmod(k, PRUNING_BLOCK)
    per_row = full_per_row + bool(tail)
    full = rows * full_per_row
    nonzeros = op.kernel_nonzeros
    if nonzeros <= full * PRUNING_BLOCK:
        kept = round(nonzeros / PRUNING_BLOCK)
    else:
        kept = full + round((nonzeros - full * PRUNING_BLOCK) / tail)
    kept = min(rows * per_row, max(1, kept))
    usage = np.zeros(per_row * PRUNING_BLOCK)
    usage[:k] = _tap_usage(geometry, k) if geometry is not None else 1.0
    score = usage.reshape(per_row, PRUNING_BLOCK).sum(axis=1) / np.minimum(
        PRUNING_BLOCK, k - PRUNING_BLOCK * np.arange(per_row))
    patterns = np.zeros((2, per_row), np.int8)  # a row's kept blocks: of kept // rows, and of one more
    for extra in (0, 1):
        blocks = min(per_row, kept // rows + extra)
        patterns[extra, _best_blocks(score, full_per_row if blocks <= full_per_row else per_row, blocks,
                                     INSIDE_FIRST)] = 1
    more = np.zeros(rows, np.int64)
    more[_spread(list(range(rows)), kept % rows)] = 1
    used = np.unique(more)  # [0], [1] or [0, 1]
    distinct = np.repeat(patterns[used], PRUNING_BLOCK, axis=1)[:, :k]
    if op.kind == "CONV_2D":
        kh, kw = op.kernel_hw
        distinct = distinct.reshape(len(used), kh, kw, k // max(kh * kw, 1))
    return StandIn(distinct, np.bincount(more)[used], np.searchsorted(used, more))


def _tap_usage(g: aot_work.ConvGeometry, k: int) -> np.ndarray:
    """Per weight of a kernel row (kh, kw, in), how many outputs' windows read it inside the input."""
    ys, xs = g.tap_usage()
    return np.repeat(np.outer(ys, xs).ravel(), k // (g.kernel_h * g.kernel_w)).astype(float)


def _best_blocks(score: np.ndarray, candidates: int, count: int, preference: float) -> list[int]:
    """``count`` of the first ``candidates`` blocks: a ``preference`` share of them the
    highest-scored first (ties spread evenly), the rest spread evenly over the others."""
    chosen: list[int] = []
    best = round(count * preference)
    for value in sorted({float(v) for v in score[:candidates]}, reverse=True):
        group = [b for b in range(candidates) if score[b] == value]
        chosen += group if len(chosen) + len(group) <= best else _spread(group, best - len(chosen))
        if len(chosen) >= best:
            break
    rest = [b for b in range(candidates) if b not in chosen]
    return chosen + _spread(rest, count - len(chosen))


def _spread(items: list[int], count: int) -> list[int]:
    """``count`` of ``items`` spread evenly over them, the first and the last included."""
    if count <= 0:
        return []
    return [items[int(j)] for j in np.linspace(0, len(items) - 1, count).round()]


def _conv_work(op: GraphOp, g: aot_work.ConvGeometry, kernel: StandIn, dense: bool, scratch: int,
               dsp: bool) -> dict[str, float]:
    """A CONV_2D's or FULLY_CONNECTED's work, of geometry ``g``, as the generator would lay out
    ``kernel`` (aot.py's _emit_op and _emit_gathered, aot_layout.op_work)."""
    distinct = kernel.rows.reshape(kernel.rows.shape[0], -1)
    if op.kind == "FULLY_CONNECTED" and not aot_layout.fast_fc(g):  # the portable kernel
        stored = g.out_c * g.in_c if dense else int(np.count_nonzero(distinct, axis=1) @ kernel.counts)
        return aot_work.fc_work(g.in_h, g.in_c, g.out_c, stored)
    pixels = aot_layout.gathered_if_smaller(g, kernel.rows, dense, kernel.counts) if op.kind == "CONV_2D" else None
    if pixels is not None:  # one single-pixel layer per output pixel over the whole input
        pixel = aot_work.ConvGeometry(1, 1, g.in_h * g.in_w * g.in_c, 1, 1, g.out_c, 1, 1)
        works = [aot_work.conv_work(pixel, _layout(StandIn(p, kernel.counts, kernel.order), dense, 0, None), dsp)
                 for p in pixels]
        return {key: sum(work[key] for work in works) for key in works[0]}
    return aot_work.conv_work(g, _layout(kernel, dense, scratch, g if op.kind == "CONV_2D" else None), dsp)


def _layout(kernel: StandIn, dense: bool, scratch: int, im2col_geometry: aot_work.ConvGeometry | None
            ) -> aot_work.KernelLayout:
    """The layout of a kernel stored dense when ``dense``, else in its smallest format."""
    distinct = kernel.rows.reshape(kernel.rows.shape[0], -1)
    shift = None if dense else aot_layout.smallest_format(distinct, kernel.counts)[1]
    if shift is None:
        return aot_work.KernelLayout()
    stored, _ = aot_layout.block_bitmap(distinct, shift)
    im2col = im2col_geometry is not None and aot_work.im2col_chosen(im2col_geometry, shift, scratch)
    layout = aot_work.row_layout(stored, shift, scratch, im2col)  # of the distinct rows: put each row in place
    return dataclasses.replace(layout, stored_blocks=tuple(layout.stored_blocks[i] for i in kernel.order),
                               stored_weights=tuple(layout.stored_weights[i] for i in kernel.order))


def _positions(op: GraphOp, graph: ResourceGraph) -> int:
    return max(1, graph.tensor_bytes[op.output] // max(op.channels, 1))


def _geometry(op: GraphOp, graph: ResourceGraph) -> aot_work.ConvGeometry:
    """A CONV_2D's "same"-padded geometry, or a FULLY_CONNECTED's as a 1x1 convolution over its
    rows of input."""
    rows = op.rows or op.channels
    k = op.kernel_weights // rows
    positions = _positions(op, graph)
    if op.kind == "FULLY_CONNECTED":
        return aot_work.ConvGeometry(positions, 1, k, positions, 1, rows, 1, 1)
    kh, kw = op.kernel_hw
    return aot_work.same_geometry(op.input_hw, k // max(kh * kw, 1), rows, op.kernel_hw, positions)


def _scratch_bytes(graph: ResourceGraph, schedule: Schedule | None) -> dict[str, int]:
    """Operator name -> free arena bytes while it runs, from the arena plan the generator uses."""
    if schedule is None:
        order = costs.best_schedule(graph)[1]
        schedule = (order, *costs.arena_plan(graph, order))
    order, arena, placed = schedule
    return {name: span[1] for name, span in costs.scratch_spans(graph, order, placed, arena).items()}
