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
``pipeline.tflite_model`` after it, so both describe costs the same way.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

from pipeline.architecture import Compression, Node

KERNEL_BYTES = 1
BIAS_BYTES = 4
ACTIVATION_BYTES = 1
PRUNING_BLOCK = 16  # weights per pruning block along an output row; see pipeline.block_pruning


@dataclasses.dataclass(frozen=True)
class GraphOp:
    """One operator: tensors it reads, the tensor it writes, weight nonzeros."""

    name: str
    inputs: tuple[str, ...]
    output: str
    kernel_nonzeros: int = 0
    bias_nonzeros: int = 0
    alias: bool = False


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
    for node in nodes:
        if node.op == "input":
            continue
        nonzeros = node.kernel_weights
        if compression is not None and node.group is not None:
            nonzeros = nonzeros_after_pruning(node.kernel_weights, node.shape[-1],
                                              _sparsity(node.group, compression))
        ops.append(GraphOp(node.name, node.inputs, node.name, nonzeros, node.bias,
                           alias=node.op == "flatten"))
    sizes = {n.name: n.size * ACTIVATION_BYTES for n in nodes}
    return ResourceGraph(tuple(ops), sizes, ("input",), (nodes[-1].name,))


def _sparsity(group: str, compression: Compression) -> float:
    if group == "fc":
        return compression.fc_sparsity
    return compression.block_sparsity[int(group.removeprefix("block")) - 1]


def model_size_bytes(graph: ResourceGraph) -> int:
    """MS: nonzero kernel weights at int8 plus nonzero biases at int32, in bytes."""
    return sum(op.kernel_nonzeros * KERNEL_BYTES + op.bias_nonzeros * BIAS_BYTES for op in graph.ops)


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


def _alias_roots(graph: ResourceGraph) -> dict[str, str]:
    """Maps each tensor to the buffer it lives in (reshapes share their input's)."""
    root = {t: t for t in graph.tensor_bytes}
    for op in graph.ops:
        if op.alias:
            root[op.output] = root[op.inputs[0]]
    return root
