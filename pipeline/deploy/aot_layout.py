"""How the AOT generator lays out each kernel, which path the fast kernels take, and the work it counts.

The decisions here are the generator's (pipeline/deploy/aot.py) and, for the
counted work, the C kernels' (tflm_project/engine/aot/aot_conv_impl.h, whose
choices aot_work.py mirrors): an operator's geometry, its weights' smallest
storage (dense or a per-row bitmap over blocks of 1 to 16 weights), which
layers are stored dense to run faster within the flash the search was
promised, whether a sparse convolution takes the im2col path, and whether a
small map runs as one fully connected layer per output pixel.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from pipeline.compress.tflite_graph import PADDING_SAME, Graph, Operator
from pipeline.deploy import aot_work

MAX_BLOCK_SHIFT = 4  # bitmap blocks of up to 16 weights, costs.PRUNING_BLOCK
_INT16_MAX = 32767  # aot_conv_params' shapes are int16


class Generated(Protocol):
    """What the work counts need of a generated model, as aot._Emitter records it."""

    graph: Graph
    stored: dict[str, tuple[int, np.ndarray] | None]  # per kernel name: (block shift, stored mask), None dense
    scratch: dict[int, tuple[int, int]]  # operator index -> (offset, bytes) of free arena while it runs
    im2col: dict[int, bool]  # CONV_2D operator index -> whether it takes the im2col path
    gathered: dict[int, int]  # CONV_2D run as one FC per output pixel: how many pixels
    narrow: dict[str, int]  # per requantisation name: aot_conv_params.narrow


def padding(padding: int, stride: int, dilation: int, size_in: int, kernel: int, size_out: int) -> int:
    if padding != PADDING_SAME:
        return 0
    effective = (kernel - 1) * dilation + 1
    return max(0, ((size_out - 1) * stride + effective - size_in) // 2)


def geometry(op: Operator, t: dict) -> aot_work.ConvGeometry:
    """A CONV_2D's, DEPTHWISE_CONV_2D's or pooling's shapes, strides, dilations and padding; a
    FULLY_CONNECTED's as the 1x1 convolution it is over its rows of input (one per batch, or per
    leading position with keep_num_dims), each row a pixel."""
    if op.name == "FULLY_CONNECTED":
        out_len, in_len = t[op.inputs[1]].shape
        rows = t[op.inputs[0]].size // in_len
        return aot_work.ConvGeometry(rows, 1, in_len, rows, 1, out_len, 1, 1)
    (_, ih, iw, ic), (_, oh, ow, oc), o = t[op.inputs[0]].shape, t[op.outputs[0]].shape, op.options
    if op.name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        kh, kw = o["filterHeight"], o["filterWidth"]
    else:
        _, kh, kw, _ = t[op.inputs[1]].shape
    dh, dw = o.get("dilationHFactor", 1), o.get("dilationWFactor", 1)
    return aot_work.ConvGeometry(ih, iw, ic, oh, ow, oc, kh, kw, o["strideH"], o["strideW"], dh, dw,
                                 padding(o["padding"], o["strideH"], dh, ih, kh, oh),
                                 padding(o["padding"], o["strideW"], dw, iw, kw, ow))


def smallest_format(kernel: np.ndarray, counts: np.ndarray | None = None) -> tuple[int, int | None]:
    """(bytes, block shift) of a kernel's smallest format; the shift is None when dense is smallest.

    With ``counts``, ``kernel`` holds distinct rows and row i stands for counts[i] rows (the
    latency estimate's stand-in kernels, whose rows repeat); every size here adds up per row.
    """
    rows = kernel.reshape(kernel.shape[0], -1)
    counts = np.ones(rows.shape[0], np.int64) if counts is None else counts
    best = (int(counts.sum()) * rows.shape[1], None)
    for shift in reversed(range(MAX_BLOCK_SHIFT + 1)):  # on a tie the larger blocks, as weights() does
        stored, bitmap = block_bitmap(rows, shift)
        size = int(counts.sum()) * bitmap.shape[1] + int(stored.sum(axis=1) @ counts)
        best = min(best, (size, shift), key=lambda pair: pair[0])
    return best


def block_bitmap(rows: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """(which weights are stored, the packed per-row bitmap) for blocks of 2^shift weights."""
    out, k = rows.shape
    block = 1 << shift
    blocks = -(-k // block)
    padded = np.zeros((out, blocks * block), dtype=bool)
    padded[:, :k] = rows != 0
    kept = padded.reshape(out, blocks, block).any(-1)
    stored = np.repeat(kept, block, axis=1)[:, :k]
    return stored, np.packbits(kept, axis=1, bitorder="little")


_LISTED_DENSE_BELOW = 0.3  # zero fraction under which a listed 1x1 layer runs faster dense


@dataclasses.dataclass(frozen=True)
class WeightedLayer:
    """What the dense-for-speed choice needs of one layer with weights.

    Attributes:
        index: the operator's index (what the choice returns).
        name: CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED.
        kernel: its int8 kernel, [out][...] (a depthwise kernel's, as stored).
        pixels: its output positions.
        im2col_geometry: a CONV_2D's geometry (for the im2col choice), else None.
        scratch_bytes: free arena bytes while it runs.
        counts: with distinct rows in ``kernel``, how many rows each stands for (None: one each).
    """

    index: int
    name: str
    kernel: np.ndarray
    pixels: int
    im2col_geometry: aot_work.ConvGeometry | None = None
    scratch_bytes: int = 0
    counts: np.ndarray | None = None


def dense_layers(graph: Graph, allowed_bytes: float,
                  scratch: dict[int, tuple[int, int]] | None = None) -> frozenset[int]:
    """Layers of ``graph`` stored dense though a bitmap would be smaller (:func:`choose_dense`);
    ``scratch``: operator index -> (offset, bytes) of free arena."""
    scratch = scratch or {}
    t = graph.tensors
    layers = [WeightedLayer(op.index, op.name, t[op.inputs[1]].data,
                            int(np.prod(t[op.outputs[0]].shape[1:-1], dtype=np.int64)) or 1,
                            geometry(op, t) if op.name == "CONV_2D" else None, scratch.get(op.index, (0, 0))[1])
              for op in graph.operators if op.name in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D")]
    return choose_dense(layers, allowed_bytes)


def choose_dense(layers: list[WeightedLayer], allowed_bytes: float) -> frozenset[int]:
    """Layers stored dense though a bitmap would be smaller, because a dense row runs faster.

    Within ``allowed_bytes`` for all weights (costs.aot_weight_bytes: the flash the search was
    promised, up to AOT_DENSE_ALLOWANCE x MS), layers are taken in order of multiply-accumulates
    per extra byte, most first: a nearly dense layer costs a few bytes more and runs two output
    channels per pass; a heavily pruned one would cost several times its stored bytes, and stays
    block-sparse, where a pruned block costs no time. A 1x1 convolution pruned in blocks of four
    or more runs its stored blocks from a list two pixels at a time, as fast per stored weight as
    dense, so it stays block-sparse unless nearly dense (_LISTED_DENSE_BELOW of it zero). So does
    a layer whose blocks straddle its windows' runs when it has scratch for two im2col patches:
    its stored blocks then run two outputs at a time, border outputs included, which dense
    storage would only slow down.
    """
    candidates, stored = [], 0
    for layer in layers:
        w = layer.kernel
        if layer.name == "DEPTHWISE_CONV_2D":
            stored += w.size + 4 * w.shape[-1]
            continue
        counts = np.ones(w.shape[0], np.int64) if layer.counts is None else layer.counts
        rows = w.reshape(w.shape[0], -1)
        size, nonzeros = int(counts.sum()) * rows.shape[1], int(np.count_nonzero(rows, axis=1) @ counts)
        smallest, shift = smallest_format(w, counts)
        stored += smallest + 4 * int(counts.sum())
        extra = size - smallest
        listed = ((layer.name == "FULLY_CONNECTED" or w.shape[1:3] == (1, 1)) and shift is not None
                  and shift >= 2 and 1 - nonzeros / size >= _LISTED_DENSE_BELOW)
        im2col = layer.im2col_geometry is not None and aot_work.im2col_chosen(layer.im2col_geometry, shift,
                                                                              layer.scratch_bytes)
        if extra > 0 and not listed and not im2col and _has_partial_rows(w, shift):
            candidates.append((nonzeros * layer.pixels / extra, extra, layer.index))
    allowance = allowed_bytes - stored
    chosen = set()
    for _, extra, index in sorted(candidates, reverse=True):
        if extra <= allowance:
            chosen.add(index)
            allowance -= extra
    return frozenset(chosen)


def gathered_if_smaller(g: aot_work.ConvGeometry, kernel: np.ndarray, dense: bool,
                        counts: np.ndarray | None = None) -> list[np.ndarray] | None:
    """The per-pixel kernels of a CONV_2D run as one fully connected layer per output pixel
    (aot_work.gathered_chosen), when they store no more bytes than the kernel, biases included
    (dense when ``dense``, else each in its smallest format); else None. ``counts`` as for
    :func:`smallest_format` (the pixel kernels then hold the same distinct rows)."""
    if not aot_work.gathered_chosen(g):
        return None
    kernels = gathered_kernels(g, kernel)
    size = (lambda k: g.out_c * (k.size // k.shape[0]) if dense else smallest_format(k, counts)[0])  # noqa: E731
    if sum(size(k) + 4 * g.out_c for k in kernels) > size(kernel) + 8 * g.out_c:  # + bias and border bias
        return None
    return kernels


def _has_partial_rows(kernel: np.ndarray, shift: int | None) -> bool:
    """Whether some row of ``kernel`` has both stored and pruned blocks of 2^shift weights.

    Only such rows run faster dense: a row whose blocks are all stored already runs the dense
    paths, and one with none is a constant, which dense storage would compute in full.
    """
    if shift is None:
        return True
    rows = kernel.reshape(kernel.shape[0], -1)
    stored, _ = block_bitmap(rows, shift)
    return bool(np.any(stored.any(axis=1) & ~stored.all(axis=1)))


def gathered_kernels(g: aot_work.ConvGeometry, kernel: np.ndarray) -> list[np.ndarray]:
    """Per output pixel, the [out][in_h x in_w x in_c] weights that pixel applies to the whole
    input: each kernel tap placed where it reads, zero where the input is never read by it."""
    kernels = []
    for oy in range(g.out_h):
        for ox in range(g.out_w):
            rows = np.zeros((kernel.shape[0], g.in_h, g.in_w, g.in_c), kernel.dtype)
            for ky in range(g.kernel_h):
                yy = oy * g.stride_h - g.pad_h + ky * g.dilation_h
                for kx in range(g.kernel_w):
                    xx = ox * g.stride_w - g.pad_w + kx * g.dilation_w
                    if 0 <= yy < g.in_h and 0 <= xx < g.in_w:
                        rows[:, yy, xx, :] = kernel[:, ky, kx, :]
            kernels.append(rows.reshape(kernel.shape[0], -1))
    return kernels


def fast_fc(g: aot_work.ConvGeometry) -> bool:
    """Whether a FULLY_CONNECTED runs as a convolution: its sizes fit aot_conv_params' int16 fields."""
    return max(g.in_h, g.in_c, g.out_c) <= _INT16_MAX


def im2col_sparse(op: Operator, t: dict, shift: int | None, scratch_bytes: int) -> bool:
    """Whether a block-sparse CONV_2D takes the fast kernels' im2col path (aot_work.im2col_chosen)."""
    return op.name == "CONV_2D" and aot_work.im2col_chosen(geometry(op, t), shift, scratch_bytes)


def op_work(emit: Generated, op: Operator, dsp: bool) -> dict[str, float]:
    """The counted work of an operator as generated (aot_work), with its outputs counted again as
    ``wide_outputs`` where its requantisation is the full one (not ``narrow``)."""
    work = _kernel_work(emit, op, dsp)
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and not emit.narrow.get(f"op{op.index}", 1):
        work["wide_outputs"] = work["outputs"]
    return work


def _kernel_work(emit: Generated, op: Operator, dsp: bool) -> dict[str, float]:
    """The counted work of an operator as generated (aot_work): the paths its kernel takes on a
    core with the DSP extension (``dsp``) or without."""
    t = emit.graph.tensors
    x, y = t[op.inputs[0]], t[op.outputs[0]]
    stored = emit.stored.get(f"op{op.index}")  # as _Emitter.weights stored the kernel
    if op.index in emit.gathered:  # one single-pixel layer per output pixel (_emit_gathered)
        g = geometry(op, t)
        pixel = aot_work.ConvGeometry(1, 1, g.in_h * g.in_w * g.in_c, 1, 1, g.out_c, 1, 1)
        works = []
        for p in range(emit.gathered[op.index]):
            kept = emit.stored.get(f"op{op.index}_{p}")
            works.append(aot_work.conv_work(pixel, aot_work.KernelLayout() if kept is None
                                            else aot_work.row_layout(kept[1], kept[0], 0, False), dsp))
        return {key: sum(work[key] for work in works) for key in works[0]}
    if op.name == "CONV_2D" or (op.name == "FULLY_CONNECTED" and fast_fc(geometry(op, t))):
        if stored is None:
            return aot_work.conv_work(geometry(op, t), aot_work.KernelLayout(), dsp)
        shift, mask = stored
        layout = aot_work.row_layout(mask, shift, emit.scratch.get(op.index, (0, 0))[1], emit.im2col[op.index])
        return aot_work.conv_work(geometry(op, t), layout, dsp)
    if op.name == "DEPTHWISE_CONV_2D":
        return aot_work.depthwise_work(geometry(op, t))
    if op.name == "FULLY_CONNECTED":  # too large for the convolution's fields: the portable kernel
        g = geometry(op, t)
        return aot_work.fc_work(g.in_h, g.in_c, g.out_c, g.in_c * g.out_c if stored is None else int(stored[1].sum()))
    inputs = sum(t[i].size for i in op.inputs if i >= 0 and t[i].data is None)
    taps = 0
    if op.name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        ys, xs = geometry(op, t).inside_taps()
        taps = sum(ys) * sum(xs) * x.shape[3]
    return aot_work.elementwise_work(y.size, inputs, taps)
