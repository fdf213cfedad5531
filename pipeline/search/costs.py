"""Analytical costs: model size (MS) and working memory (WM), in int8 bytes.

Plain functions over a resource graph, so they can be tested by hand:

* MS counts nonzero kernel weights at 1 byte and biases at 4 bytes (TFLite
  stores int8 kernels and int32 biases; batch norm folds into the bias).
* WM is SpArSe's max over operators of (input + output), extended to graphs
  with branches: at each operator it adds every tensor that a later operator
  still needs. It takes the operator order with the smallest such peak (an
  exact search over topological orders), which is the order the
  ahead-of-time engine runs. Flatten/reshape shares its input's buffer.

A :class:`ResourceGraph` is made from an architecture plan
(:func:`graph_from_plan`) before training, and from a converted .tflite by
``pipeline.compress.tflite_model`` after it, so both describe costs the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

from pipeline.search.architecture import Compression, Node

KERNEL_BYTES = 1
BIAS_BYTES = 4
ACTIVATION_BYTES = 1
ARENA_SEARCH_NODES = 5000  # placement orders tried when first fit misses WM
PRUNING_BLOCK = 16  # weights per pruning block along an output row; see pipeline.compress.block_pruning
AOT_DENSE_ALLOWANCE = 1.25  # the AOT engine may store weights dense for speed up to this x MS (goal 1.3)


@dataclasses.dataclass(frozen=True)
class GraphOp:
    """One operator: tensors it reads, the tensor it writes, weight nonzeros."""

    name: str
    inputs: tuple[str, ...]
    output: str
    kernel_nonzeros: int = 0
    bias_nonzeros: int = 0
    alias: bool = False
    kernel_weights: int = 0  # dense kernel size, zeros included
    rows: int = 0            # output rows of the kernel (filters, or channels of a depthwise kernel)
    bias_weights: int = 0    # biases stored, zeros included
    kind: str = ""           # the TFLite builtin it is (or converts to): CONV_2D, MAX_POOL_2D, ...
    channels: int = 0        # channels of its output tensor
    kernel_hw: tuple[int, int] = (0, 0)  # its kernel's window (kh, kw); (1, 1) for a 1x1 or FC kernel
    input_hw: tuple[int, int] = (0, 0)   # its first input's height and width (1, 1 for an FC input)


@dataclasses.dataclass(frozen=True)
class ResourceGraph:
    """Operators in a valid order plus the byte size of every activation tensor."""

    ops: tuple[GraphOp, ...]
    tensor_bytes: dict[str, int]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def nonzeros_after_pruning(weights: int, rows: int, sparsity: float) -> int:
    """The most weights block pruning can keep of a kernel with ``rows`` output rows.

    Each row is cut into blocks of PRUNING_BLOCK weights (the last one shorter
    when the row length is not a multiple); ``max(1, round(blocks * (1 - s)))``
    blocks survive, and the bound assumes the full-length ones are those kept.
    """
    full_per_row, tail = divmod(weights // rows, PRUNING_BLOCK)
    blocks = rows * (full_per_row + (1 if tail else 0))
    kept = max(1, int(round(blocks * (1.0 - sparsity))))
    full = rows * full_per_row
    return min(kept, full) * PRUNING_BLOCK + max(0, kept - full) * tail


def graph_from_plan(nodes: Sequence[Node], compression: Compression | None = None) -> ResourceGraph:
    """The resource graph of a planned network, with pruning targets applied."""
    ops = []
    shapes = {node.name: node.shape for node in nodes}
    for node in nodes:
        if node.op == "input":
            continue
        nonzeros = node.kernel_weights
        if compression is not None and node.group is not None:
            nonzeros = nonzeros_after_pruning(node.kernel_weights, node.shape[-1],
                                              _sparsity(node.group, compression))
        ops.append(GraphOp(node.name, node.inputs, node.name, nonzeros, node.bias,
                           alias=node.op == "flatten", kernel_weights=node.kernel_weights,
                           rows=_kernel_rows(node), bias_weights=node.bias, kind=PLAN_KINDS[node.op],
                           channels=node.shape[-1], kernel_hw=_window(node),
                           input_hw=_hw(shapes[node.inputs[0]]) if node.inputs else (0, 0)))
    sizes = {n.name: n.size * ACTIVATION_BYTES for n in nodes}
    return ResourceGraph(tuple(ops), sizes, ("input",), (nodes[-1].name,))


# what each plan op converts to (FC layers ship as 1x1 convolutions; see pipeline.search.builder)
PLAN_KINDS = {"channel_max": "REDUCE_MAX", "max_pool": "MAX_POOL_2D", "conv": "CONV_2D",
              "depthwise": "DEPTHWISE_CONV_2D", "flatten": "RESHAPE", "dense": "CONV_2D", "add": "ADD",
              "concat": "CONCATENATION"}


def _window(node: Node) -> tuple[int, int]:
    if not node.kernel_weights:
        return (0, 0)
    k = node.attrs.get("kernel", 1) if node.op in ("conv", "depthwise") else 1
    return (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))


def _hw(shape: tuple[int, ...]) -> tuple[int, int]:
    return (shape[0], shape[1]) if len(shape) == 3 else (1, 1)


def _kernel_rows(node: Node) -> int:
    """Rows of the kernel as TFLite stores it: one per filter (OHWI), one for a depthwise [1,H,W,C]."""
    if not node.kernel_weights:
        return 0
    return 1 if node.op == "depthwise" else node.shape[-1]


def _sparsity(group: str, compression: Compression) -> float:
    if group == "fc":
        return compression.fc_sparsity
    return compression.block_sparsity[int(group.removeprefix("block")) - 1]


def model_size_bytes(graph: ResourceGraph) -> int:
    """MS: nonzero kernel weights at int8 plus nonzero biases at int32, in bytes."""
    return sum(op.kernel_nonzeros * KERNEL_BYTES + op.bias_nonzeros * BIAS_BYTES for op in graph.ops)


def operator_count(graph: ResourceGraph) -> int:
    """Operators that run (a reshape shares its input's buffer and runs no code)."""
    return sum(not op.alias for op in graph.ops)


def output_channels(graph: ResourceGraph) -> int:
    """Output channels of the weighted operators: what per-channel quantisation data scales with."""
    return sum(op.rows for op in graph.ops)


def dense_weight_bytes(graph: ResourceGraph) -> int:
    """Kernels and biases as a dense format (TFLite's flatbuffer) stores them, zeros included."""
    return sum(op.kernel_weights * KERNEL_BYTES + op.bias_weights * BIAS_BYTES for op in graph.ops)


def block_sparse_weight_bytes(graph: ResourceGraph) -> int:
    """The most the AOT engine's block-bitmap format stores for these nonzeros.

    Every nonzero kernel weight lies in a stored block of PRUNING_BLOCK
    values, which MS's block bound already counts; on top come one bit per
    block of each row (rounded up to bytes per row) and a bias per output row,
    stored even for a bias-free layer (the engine folds the input offset into it).
    """
    total = 0
    for op in graph.ops:
        if op.kernel_weights:
            blocks_per_row = math.ceil(op.kernel_weights / max(op.rows, 1) / PRUNING_BLOCK)
            bitmap = op.rows * math.ceil(blocks_per_row / 8)
            total += min(op.kernel_weights, op.kernel_nonzeros + bitmap) * KERNEL_BYTES
        total += max(op.bias_weights, op.rows if op.kernel_weights else 0) * BIAS_BYTES
    return total


def aot_weight_bytes(graph: ResourceGraph) -> int:
    """The most flash the AOT engine gives these weights: its promise to the search.

    The block-sparse bound, or up to AOT_DENSE_ALLOWANCE x MS when that is more (never more
    than every kernel dense): within it, the engine stores nearly dense layers dense, which
    run faster (pipeline.deploy.aot).
    """
    dense = dense_weight_bytes(graph) + sum(
        max(0, op.rows - op.bias_weights) * BIAS_BYTES for op in graph.ops if op.kernel_weights)
    allowance = int(AOT_DENSE_ALLOWANCE * model_size_bytes(graph))
    return max(block_sparse_weight_bytes(graph), min(allowance, dense))


def working_memory_bytes(graph: ResourceGraph) -> int:
    """WM: the smallest achievable peak of live activation bytes."""
    return best_schedule(graph)[0]


def best_schedule(graph: ResourceGraph) -> tuple[int, list[str]]:
    """The operator order that minimises the peak of live tensors.

    Returns:
        (peak bytes, operator names in execution order). The peak of one step
        is the bytes of every tensor alive while that operator runs: its
        inputs, its output, and any earlier tensor some later operator or the
        graph's output still needs.
    """
    root = _alias_roots(graph)
    ops = [op for op in graph.ops if not op.alias]
    reads = [frozenset(root[t] for t in op.inputs) for op in ops]
    producer = {op.output: i for i, op in enumerate(ops)}
    consumers: dict[str, set[int]] = {}
    for i, r in enumerate(reads):
        for t in r:
            consumers.setdefault(t, set()).add(i)
    kept = {root[t] for t in graph.outputs}
    size = graph.tensor_bytes

    def live(done: frozenset[int]) -> int:
        total = 0
        for t in set(root[i] for i in graph.inputs) | {ops[i].output for i in done}:
            if t in kept or consumers.get(t, set()) - done:
                total += size[t]
        return total

    @functools.lru_cache(maxsize=None)
    def solve(done: frozenset[int]) -> tuple[int, tuple[int, ...]]:
        if len(done) == len(ops):
            return 0, ()
        best: tuple[int, tuple[int, ...]] | None = None
        base = live(done)
        for i, r in enumerate(reads):
            if i in done or any(t in producer and producer[t] not in done for t in r):
                continue
            step = base + size[ops[i].output]
            rest, order = solve(done | {i})
            candidate = (max(step, rest), (i,) + order)
            if best is None or candidate[0] < best[0]:
                best = candidate
        assert best is not None, "graph has a cycle"
        return best

    peak, order = solve(frozenset())
    return peak, [ops[i].name for i in order]


def arena_plan(graph: ResourceGraph, order: Sequence[str] | None = None,
               max_nodes: int = ARENA_SEARCH_NODES) -> tuple[int, dict[str, int]]:
    """Offsets of every activation tensor in one arena, and the arena's size in bytes.

    Each buffer lives from the step that writes it to the last step that
    reads it (graph inputs from the start, graph outputs to the end), over
    ``order`` (default: the order of :func:`best_schedule`); reshapes share
    their input's buffer. Buffers alive at the same step may not overlap, so
    the arena is at least WM, the peak of live bytes over that order. First
    it tries to fit every buffer within exactly WM bytes, each as low or as
    high as it fits (a chain of layers always fits so); failing that, first
    fit under a few orderings, then a bounded branch and bound over
    placement orders (each buffer at the lowest offset that fits, which is
    complete for this problem) looks for the smallest arena. Returns
    (arena bytes, offset of every tensor).
    """
    if order is None:
        order = best_schedule(graph)[1]
    root = _alias_roots(graph)
    buffers = _buffers(graph, order)
    peak = max(sum(b.size for b in buffers if b.start <= step <= b.stop) for step in range(-1, len(order) + 1))
    arena, offsets = _place(buffers, peak, max_nodes)
    return arena, {t: offsets[root[t]] for t in graph.tensor_bytes if root[t] in offsets}


def scratch_spans(graph: ResourceGraph, order: Sequence[str], offsets: dict[str, int], arena: int,
                  align: int = 4) -> dict[str, tuple[int, int]]:
    """The largest free part of the arena while each operator runs: room for a kernel's scratch.

    Scratch placed there overlaps no tensor alive at that step (the
    operator's own inputs and output included), so it adds nothing to the
    arena or to WM.

    Args:
        graph: the resource graph the arena was planned for.
        order: operator names in execution order, as given to :func:`arena_plan`.
        offsets: tensor offsets from :func:`arena_plan`.
        arena: arena bytes from :func:`arena_plan`.
        align: alignment of the span's start; its size is rounded down to a multiple of it.

    Returns:
        Operator name -> (offset, bytes) of its largest aligned free span (bytes may be 0).
    """
    buffers = _buffers(graph, order)
    start = {b.name: offsets[b.name] for b in buffers if b.name in offsets}
    spans = {}
    for step, name in enumerate(order):
        used = sorted((start[b.name], start[b.name] + b.size) for b in buffers
                      if b.start <= step <= b.stop and b.name in start)
        best, cursor = (0, 0), 0
        for lo, hi in used + [(arena, arena)]:
            first = -(-cursor // align) * align
            size = (lo - first) // align * align
            if size > best[1]:
                best = (first, size)
            cursor = max(cursor, hi)
        spans[name] = best
    return spans


def _buffers(graph: ResourceGraph, order: Sequence[str]) -> list[_Buffer]:
    """Each tensor's buffer (reshapes share their input's) with the steps it is alive over ``order``."""
    root = _alias_roots(graph)
    ops = {op.name: op for op in graph.ops}
    first = {root[t]: -1 for t in graph.inputs}
    last: dict[str, int] = {}
    for step, name in enumerate(order):
        for t in ops[name].inputs:
            last[root[t]] = step
        first.setdefault(root[ops[name].output], step)
    for t in graph.outputs:
        last[root[t]] = len(order)
    return [_Buffer(t, graph.tensor_bytes[t], first[t], last.get(t, first[t])) for t in first]


@dataclasses.dataclass(frozen=True)
class _Buffer:
    name: str
    size: int
    start: int
    stop: int

    def overlaps(self, other: _Buffer) -> bool:
        return self.start <= other.stop and other.start <= self.stop


def _lowest_offset(buffer: _Buffer, placed: list[tuple[int, _Buffer]]) -> int:
    """The lowest offset where ``buffer`` overlaps no placed buffer alive at the same time."""
    offset = 0
    for start, other in sorted(((o, b) for o, b in placed if b.overlaps(buffer)), key=lambda p: p[0]):
        if start >= offset + buffer.size:
            break
        offset = max(offset, start + other.size)
    return offset


def _highest_offset(buffer: _Buffer, placed: list[tuple[int, _Buffer]], top: int) -> int:
    """The highest offset at most ``top - size`` where ``buffer`` overlaps no live placed buffer (may be < 0)."""
    mirrored = [(top - o - b.size, b) for o, b in placed]
    return top - buffer.size - _lowest_offset(buffer, mirrored)


def _two_sided(buffers: list[_Buffer], top: int, max_nodes: int) -> dict[str, int] | None:
    """Offsets within exactly ``top`` bytes, each buffer in birth order put as low or as high as it fits.

    A chain of layers then alternates between the bottom and the top of the
    arena ("ping-pong"), which always fits in its WM; branches are handled
    by backtracking over the two choices, up to ``max_nodes`` steps.
    """
    ordered = sorted(buffers, key=lambda b: (b.start, -b.size))
    nodes = [0]

    def search(i: int, placed: list[tuple[int, _Buffer]]) -> list[tuple[int, _Buffer]] | None:
        if i == len(ordered):
            return placed
        nodes[0] += 1
        if nodes[0] > max_nodes:
            return None
        b = ordered[i]
        for offset in dict.fromkeys((_lowest_offset(b, placed), _highest_offset(b, placed, top))):
            if 0 <= offset <= top - b.size:
                found = search(i + 1, placed + [(offset, b)])
                if found is not None:
                    return found
        return None

    found = search(0, [])
    return None if found is None else {b.name: o for o, b in found}


def _place(buffers: list[_Buffer], lower_bound: int, max_nodes: int) -> tuple[int, dict[str, int]]:
    exact = _two_sided(buffers, lower_bound, max_nodes)
    if exact is not None:
        return lower_bound, exact
    best: list = [None, {}]

    def first_fit(sequence: list[_Buffer]) -> None:
        placed: list[tuple[int, _Buffer]] = []
        for b in sequence:
            placed.append((_lowest_offset(b, placed), b))
        top = max((o + b.size for o, b in placed), default=0)
        if best[0] is None or top < best[0]:
            best[0], best[1] = top, {b.name: o for o, b in placed}

    for key in (lambda b: (-b.size, b.start), lambda b: (b.start, -b.size),
                lambda b: (-(b.stop - b.start), -b.size), lambda b: (-b.size * (b.stop - b.start + 1), b.start)):
        first_fit(sorted(buffers, key=key))
        if best[0] == lower_bound:
            return best[0], best[1]
    nodes = [0]

    def search(placed: list[tuple[int, _Buffer]], rest: list[_Buffer], top: int) -> None:
        if best[0] == lower_bound or nodes[0] >= max_nodes:
            return
        nodes[0] += 1
        if not rest:
            best[0], best[1] = top, {b.name: o for o, b in placed}
            return
        moves = sorted(((_lowest_offset(b, placed), -b.size, i) for i, b in enumerate(rest)))
        for offset, _, i in moves:
            b = rest[i]
            if max(top, offset + b.size) >= best[0]:
                continue
            search(placed + [(offset, b)], rest[:i] + rest[i + 1:], max(top, offset + b.size))

    search([], list(buffers), 0)
    return best[0], best[1]


def _alias_roots(graph: ResourceGraph) -> dict[str, str]:
    """Maps each tensor to the buffer it lives in (reshapes share their input's)."""
    root = {t: t for t in graph.tensor_bytes}
    for op in graph.ops:
        if op.alias:
            root[op.output] = root[op.inputs[0]]
    return root
