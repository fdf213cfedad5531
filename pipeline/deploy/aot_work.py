"""The work the AOT engine's kernels do per operator: aot_conv_impl.h's choice of path, mirrored.

The fast CONV_2D kernel (tflm_project/engine/aot/aot_conv_impl.h) picks a path per
layer and per output row: a small window copied once per output pixel (on a core with the
DSP extension), two dense rows per pass, one row, a list of stored
blocks over contiguous windows (or, for a single output pixel, one walk of each
row's bitmap), im2col patches for blocks that straddle the window's runs, a
block-by-block walk, or a constant for a pruned-away filter.
Each path costs a different number of instructions per multiply-accumulate and
per output, so one linear function of "MACs" and "outputs" fits them badly.
:func:`conv_work` follows the same decisions as the C code and counts, per path,
the units whose cost is nearly constant (multiply-accumulates, outputs, stored
blocks visited, runs clipped at the border, bytes copied; outputs of a layer whose
accumulators the generator could not prove narrow again as ``wide_outputs``, for
their full requantisation). The latency model
(:mod:`pipeline.search.latency`) fits one coefficient per count, operator kind
and core.

The layout comes from the generator itself for a converted model
(:func:`pipeline.deploy.aot.generate`: the stored blocks per row, the scratch and
the im2col choice it made), or is estimated from the pruning targets for a
candidate not yet trained (:mod:`pipeline.search.latency`).
"""
from __future__ import annotations

import dataclasses
import math

WORK = ("pair_macs", "contiguous_macs", "pair_border_macs", "one_macs", "interior_runs", "border_runs",
        "row_bytes", "single_macs", "single_blocks", "listed_scan", "listed_macs", "listed_blocks", "listed_outputs", "im2col_bytes", "im2col_macs", "im2col_blocks",
        "im2col_outputs", "walk_macs", "walk_blocks", "walk_bits", "unaligned_bits", "contiguous_bits", "walk_outputs",
        "strided_pixels", "constant_outputs",
        "expand_bytes", "window_pixels", "window_bytes", "window_macs", "window_outputs", "fc_steps", "fc_macs",
        "taps", "group_taps", "outputs", "pair_outputs", "wide_outputs", "inputs", "rows", "fixed")
IM2COL_INSIDE_AT_LEAST = 0.75  # share of window taps inside the input for which copying windows pays
WINDOW_MAX = 32  # aot_conv_window.h's AOT_WINDOW_MAX: the largest kh x kw x in_c run through a patch
DSP_CORES = frozenset({"cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"})  # __ARM_FEATURE_DSP


def has_dsp(core: str) -> bool:
    """Whether the core has the DSP extension, for which some kernels take other paths."""
    return core in DSP_CORES


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """A convolution's shapes, strides, dilations and padding (before, in elements)."""

    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    kernel_h: int
    kernel_w: int
    stride_h: int = 1
    stride_w: int = 1
    dilation_h: int = 1
    dilation_w: int = 1
    pad_h: int = 0
    pad_w: int = 0

    @property
    def row_len(self) -> int:
        """Weights per output row (kh x kw x in_c)."""
        return self.kernel_h * self.kernel_w * self.in_c

    def inside(self) -> tuple[list[list[bool]], list[list[bool]]]:
        """Along the height, then the width: [output position][kernel tap] -> whether the tap
        reads inside the input there."""
        def axis(out: int, size: int, kernel: int, stride: int, dilation: int, pad: int) -> list[list[bool]]:
            return [[0 <= i * stride - pad + k * dilation < size for k in range(kernel)] for i in range(out)]
        return (axis(self.out_h, self.in_h, self.kernel_h, self.stride_h, self.dilation_h, self.pad_h),
                axis(self.out_w, self.in_w, self.kernel_w, self.stride_w, self.dilation_w, self.pad_w))

    def inside_taps(self) -> tuple[list[int], list[int]]:
        """Per output row, and per output column, how many kernel taps fall inside the input."""
        ys, xs = self.inside()
        return [sum(row) for row in ys], [sum(col) for col in xs]

    def tap_usage(self) -> tuple[list[int], list[int]]:
        """Per kernel row, and per kernel column, at how many output positions it reads inside the input."""
        ys, xs = self.inside()
        return [sum(col) for col in zip(*ys)], [sum(col) for col in zip(*xs)]

    def inside_share(self) -> float:
        """The share of all window taps that fall inside the input."""
        ys, xs = self.inside_taps()
        return sum(ys) * sum(xs) / (len(ys) * self.kernel_h * len(xs) * self.kernel_w)


def same_geometry(in_hw: tuple[int, int], in_c: int, out_c: int, kernel_hw: tuple[int, int],
                  positions: int) -> ConvGeometry:
    """The geometry of a "same"-padded convolution with ``positions`` output positions (the
    stride follows from how many fewer there are than input positions)."""
    (ih, iw), (kh, kw) = in_hw, kernel_hw
    stride = max(1, round(math.sqrt(ih * iw / max(positions, 1))))
    oh, ow = -(-ih // stride), -(-iw // stride)
    pad = lambda size, out, k: max(0, ((out - 1) * stride + k - size) // 2)  # noqa: E731
    return ConvGeometry(ih, iw, in_c, oh, ow, out_c, kh, kw, stride, stride, 1, 1,
                        pad(ih, oh, kh), pad(iw, ow, kw))


@dataclasses.dataclass(frozen=True)
class KernelLayout:
    """How a CONV_2D kernel is stored and what scratch its layer gets.

    Attributes:
        stored_blocks: per output row, its stored blocks of 2^block_shift weights (None: dense).
        stored_weights: per output row, the weights those blocks hold (a short last block counts
            its own length).
        block_shift: log2 of the block size.
        scratch_bytes: free arena bytes while the layer runs.
        im2col: whether the generator chose the im2col path (aot.py's ``_im2col_sparse``).
    """

    stored_blocks: tuple[int, ...] | None = None
    stored_weights: tuple[int, ...] | None = None
    block_shift: int = 0
    scratch_bytes: int = 0
    im2col: bool = False


def im2col_chosen(g: ConvGeometry, block_shift: int | None, scratch_bytes: int) -> bool:
    """Whether a block-sparse CONV_2D takes conv_im2col_sparse: blocks of 8 or more that straddle
    the window's runs, more than one block a row, enough of the window inside the input, and
    scratch for two patches."""
    if block_shift is None or block_shift < 3 or g.kernel_h == g.kernel_w == 1 or g.out_h == g.out_w == 1:
        return False
    run_len = g.kernel_w * g.in_c if g.dilation_w == 1 else g.in_c
    k = g.row_len
    if run_len % (1 << block_shift) == 0 or k <= 1 << block_shift or 2 * ((k + 3) & ~3) > scratch_bytes:
        return False
    return g.inside_share() >= IM2COL_INSIDE_AT_LEAST


def gathered_chosen(g: ConvGeometry) -> bool:
    """Whether a CONV_2D may run as one fully connected layer per output pixel over its whole input
    (aot.py's ``_emit_gathered``): some windows reach into the padding, and the pixels' whole-input
    rows together are no longer than one kernel row (a 5x5 kernel over a 2x2 map: 4 x 4 taps
    against 25), so storing them costs no more than the kernel and no padding tap is visited."""
    ys, xs = g.inside_taps()
    padded = min(ys) < g.kernel_h or min(xs) < g.kernel_w
    return padded and g.out_h * g.out_w * g.in_h * g.in_w * g.in_c <= g.row_len


def window_chosen(g: ConvGeometry, layout: KernelLayout, dsp: bool) -> bool:
    """Whether a CONV_2D takes conv_window (aot_conv_window.h's window_chosen): on a core with the
    DSP extension, dense rows of at most WINDOW_MAX weights over windows that are not contiguous,
    on a map of which at least half the outputs (and more than one) are interior."""
    ys, xs = g.inside_taps()
    interior = sum(y == g.kernel_h for y in ys) * sum(x == g.kernel_w for x in xs)
    return (dsp and layout.stored_blocks is None and g.row_len <= WINDOW_MAX and not _contiguous(g)
            and 2 * interior >= g.out_h * g.out_w and interior > 1)


def _contiguous(g: ConvGeometry) -> bool:
    """A 1x1 kernel without padding, or one output over the whole input: each window is one run."""
    return (g.kernel_h == g.kernel_w == 1 and g.pad_h == g.pad_w == 0) or (
        g.out_h * g.out_w == 1 and (g.in_h, g.in_w) == (g.kernel_h, g.kernel_w) and g.pad_h == g.pad_w == 0
        and g.dilation_h == g.dilation_w == 1)


def conv_work(g: ConvGeometry, layout: KernelLayout, dsp: bool = True) -> dict[str, float]:
    """The counted work of one CONV_2D, following aot_conv2d_inline's choice of path on a core with
    the DSP extension (``dsp``) or without.

    ``outputs`` counts every computed output of every path (each is requantised, clamped and
    stored alike); the paths that add work per output of their own count it again in
    ``<path>_outputs``.
    """
    work = _conv_paths(g, layout, dsp)
    work["outputs"] += sum(work[f"{path}_outputs"] for path in ("listed", "im2col", "walk"))
    return work


def _conv_paths(g: ConvGeometry, layout: KernelLayout, dsp: bool) -> dict[str, float]:
    work = dict.fromkeys(WORK, 0.0)
    k, pos, oc = g.row_len, g.out_h * g.out_w, g.out_c
    runs = g.kernel_h * (1 if g.dilation_w == 1 else g.kernel_w)
    run_len = g.kernel_w * g.in_c if g.dilation_w == 1 else g.in_c
    ys, xs = g.inside_taps()
    interior = sum(y == g.kernel_h for y in ys) * sum(x == g.kernel_w for x in xs)
    border = pos - interior
    border_macs = (sum(ys) * sum(xs) - interior * g.kernel_h * g.kernel_w) * g.in_c
    contiguous = _contiguous(g)
    strided = g.stride_h > 1 or g.stride_w > 1  # a contiguous window's pixel found by division
    work.update(fixed=1.0, rows=float(oc))
    if window_chosen(g, layout, dsp):  # conv_window: a patch per interior pixel, the border by runs
        work["outputs"] += oc * pos
        work["window_pixels"] += interior
        work["window_bytes"] += interior * k
        work["window_macs"] += interior * k * oc
        work["window_outputs"] += interior * oc  # each with its channel's constants loaded per output
        work["pair_border_macs"] += oc * border_macs
        work["border_runs"] += oc / 2 * border * runs
        return work

    def pairs(rows: int) -> None:  # `rows` dense rows, two per pass
        work["outputs"] += rows * pos
        work["pair_outputs"] += rows * pos  # two channels' constants and sums held at once
        if pos == 1:  # one output position (a dense layer): each weight used once
            work["fc_macs"] += rows * k
            work["interior_runs"] += rows / 2 * runs
        elif contiguous:  # conv_contiguous_dense2: two pixels too, four sums per pass
            work["contiguous_macs"] += rows * k * pos
            work["strided_pixels"] += rows / 2 * pos * strided
        else:
            work["pair_macs"] += rows * k * interior
            work["pair_border_macs"] += rows * border_macs
            work["interior_runs"] += rows / 2 * interior * runs
            work["border_runs"] += rows / 2 * border * runs

    def one_dense() -> None:
        work["outputs"] += pos
        work["one_macs"] += k * pos if contiguous else k * interior + border_macs
        work["interior_runs"] += (pos if contiguous else interior) * runs  # dense_interior: a dot per run
        if not contiguous:
            work["border_runs"] += border * runs

    if layout.stored_blocks is None:
        pairs(2 * (oc // 2))
        if oc % 2:
            one_dense()
        return work
    shift, scratch = layout.block_shift, layout.scratch_bytes
    block = 1 << shift
    blocks = -(-k // block)
    stored_b, stored_w = layout.stored_blocks, layout.stored_weights or layout.stored_blocks
    row_bytes = oc * -(-blocks // 8)  # aot_row_end: the row's bitmap bytes, counted per row
    if contiguous and pos == 1:  # conv_single_sparse: each row's bitmap walked once, blocks dotted as found
        work["row_bytes"] += row_bytes
        work["single_macs"] += sum(stored_w)
        work["single_blocks"] += sum(stored_b)
        work["outputs"] += oc
        return work
    if contiguous and shift >= 2 and 2 * (k >> shift) <= scratch:  # conv_contiguous_listed
        work["row_bytes"] += row_bytes
        for b, w in zip(stored_b, stored_w):
            if w == 0:
                work["constant_outputs"] += pos
            else:
                work["listed_scan"] += k >> shift  # the row's blocks scanned into the list
                work["listed_macs"] += w * pos
                work["listed_blocks"] += b * pos
                work["listed_outputs"] += pos
                work["strided_pixels"] += pos * strided
        return work
    if layout.im2col and 2 * ((k + 3) & ~3) <= scratch:  # conv_im2col_sparse
        work["im2col_bytes"] += k * pos
        work["im2col_macs"] += sum(stored_w) * pos
        work["im2col_blocks"] += sum(stored_b) * -(-pos // 2) + oc * -(-pos // 2) * -(-blocks // 8)
        work["im2col_outputs"] += oc * pos
        return work
    if 2 * k <= scratch and pos >= 4 and shift < 3:  # short rows of small blocks, expanded
        work["expand_bytes"] += oc * k
        work["row_bytes"] += row_bytes
        pairs(2 * (oc // 2))
        if oc % 2:
            one_dense()
        return work
    aligned = run_len % block == 0
    listed = aligned and not contiguous and 6 * blocks <= scratch and runs <= 255 and run_len < 256
    masked = not listed and aligned and not contiguous and blocks <= 32
    work["row_bytes"] += row_bytes
    row = 0
    while row < oc:
        w = stored_w[row]
        if w == k and row + 1 < oc and stored_w[row + 1] == k:
            pairs(2)
            row += 2
            continue
        if (k <= block and w != k) or w == 0:
            work["constant_outputs"] += pos
        elif w == k or k <= block:
            one_dense()
        else:
            work["walk_macs"] += w * interior + w / k * border_macs if not contiguous else w * pos
            work["walk_blocks"] += stored_b[row] * pos
            work["walk_outputs"] += pos
            if contiguous:  # sparse_contiguous: a bit test per block
                work["contiguous_bits"] += blocks * pos
            elif not listed and not masked:  # sparse_interior / sparse_border, or sparse_row's cut blocks
                work["walk_bits" if aligned else "unaligned_bits"] += blocks * pos
            if not contiguous:
                work["interior_runs"] += interior * runs
                work["border_runs"] += border * runs
        row += 1
    return work


def depthwise_work(g: ConvGeometry) -> dict[str, float]:
    """DEPTHWISE_CONV_2D: window taps inside the input per output channel and per group of four
    channels (a depth multiplier of 1 runs four channels a pass), and outputs."""
    ys, xs = g.inside_taps()
    work = dict.fromkeys(WORK, 0.0)
    groups = -(-g.out_c // 4) if g.out_c == g.in_c else g.out_c  # multiplier 1: four channels a pass
    work.update(taps=float(sum(ys) * sum(xs) * g.out_c), group_taps=float(sum(ys) * sum(xs) * groups), outputs=float(g.out_h * g.out_w * g.out_c),
                rows=float(g.out_c), fixed=1.0)
    return work


def fc_work(batches: int, in_len: int, out_len: int, stored: int) -> dict[str, float]:
    """A FULLY_CONNECTED too large for the convolution kernels (aot_fully_connected): every input
    position is tested per output (the row cursor), stored ones multiplied, per batch."""
    work = dict.fromkeys(WORK, 0.0)
    work.update(fc_steps=float(batches * in_len * out_len), fc_macs=float(batches * stored),
                outputs=float(batches * out_len), rows=float(out_len), fixed=1.0)
    return work


def elementwise_work(outputs: int, inputs: int, taps: int = 0) -> dict[str, float]:
    """Any other operator: elements written and read (and window taps, for pooling)."""
    work = dict.fromkeys(WORK, 0.0)
    work.update(outputs=float(outputs), inputs=float(inputs), taps=float(taps), fixed=1.0)
    return work


def row_layout(stored, block_shift: int, scratch_bytes: int, im2col: bool) -> KernelLayout:
    """The layout of a kernel stored as a block bitmap, from its [rows][k] per-weight stored mask
    (a numpy bool array, each block's weights all stored or all not)."""
    blocks = tuple(int(n) for n in stored[:, ::1 << block_shift].sum(axis=1))
    weights = tuple(int(n) for n in stored.sum(axis=1))
    return KernelLayout(blocks, weights, block_shift, scratch_bytes, im2col)
