"""Block-granular magnitude pruning: what lets flash follow the nonzero weights.

Unstructured sparsity cannot be stored compactly: with weights pruned at
random positions, even an ideal encoding of *where* the nonzeros are costs
H(s) bits per weight (H the binary entropy), so at 90 % sparsity any format
needs at least 1.59x the nonzero bytes. Pruning whole blocks of
``PRUNING_BLOCK`` consecutive weights of one output row instead makes one
bit per block enough (the AOT engine's block bitmap), about 1.16x at 95 %.

The row is the layout every int8 engine reads: for a Conv2D kernel the
(kh, kw, cin) weights of one output channel, in TFLite's OHWI order; for a
Dense kernel the inputs of one output unit. The last block of a row is
shorter when the row length is not a multiple of the block.

* Dense kernels ([in, out] in Keras) are pruned by tfmot's
  ``prune_low_magnitude`` with ``block_size=(PRUNING_BLOCK, 1)``.
* tfmot block pruning accepts only 2-D kernels with more than one block per
  row and more than one output, so Conv2D kernels and such small Dense
  kernels are pruned by :class:`BlockPruning`, a callback with the same
  semantics: the same polynomial schedule object, blocks ranked by their mean
  absolute weight, the ``max(1, round(blocks * (1 - s)))`` strongest kept, the
  mask applied before every training step.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from pipeline.search.costs import PRUNING_BLOCK


def tfmot_can_block_prune(kernel_shape: tuple[int, ...]) -> bool:
    """Whether tfmot's block_size=(PRUNING_BLOCK, 1) works on a kernel.

    tfmot takes only 2-D kernels and squeezes both the kernel and its pooled
    block scores, so a kernel with one output, or with a single block per
    row (PRUNING_BLOCK inputs or fewer), breaks it.
    """
    return len(kernel_shape) == 2 and kernel_shape[0] > PRUNING_BLOCK and kernel_shape[1] > 1


def block_mask(kernel: np.ndarray, sparsity: float) -> np.ndarray:
    """The keep-mask (0/1, kernel's shape) of a Conv2D [kh, kw, cin, cout] or Dense [in, out] kernel."""
    rows = _rows(kernel)
    out, length = rows.shape
    padded = np.zeros((out, -(-length // PRUNING_BLOCK) * PRUNING_BLOCK), dtype=np.float64)
    padded[:, :length] = np.abs(rows)
    counts = np.zeros_like(padded)
    counts[:, :length] = 1.0
    score = (padded.reshape(out, -1, PRUNING_BLOCK).sum(-1)
             / counts.reshape(out, -1, PRUNING_BLOCK).sum(-1)).ravel()
    keep = max(1, int(round(score.size * (1.0 - sparsity))))
    kept = np.zeros(score.size, dtype=np.float32)
    kept[np.argsort(-score, kind="stable")[:keep]] = 1.0
    row_mask = np.repeat(kept.reshape(out, -1), PRUNING_BLOCK, axis=1)[:, :length]
    return row_mask.T.reshape(kernel.shape).astype(kernel.dtype)


def _rows(kernel: np.ndarray) -> np.ndarray:
    """[kh, kw, cin, cout] -> [cout][kh * kw * cin] in OHWI order; [in, out] -> [out][in]."""
    return kernel.reshape(-1, kernel.shape[-1]).T


def _pruning_turn(schedule: object, step: int) -> bool:
    """Whether a tfmot schedule with begin/end/frequency updates its mask at ``step``."""
    begin, end, frequency = schedule.begin_step, schedule.end_step, schedule.frequency
    return step >= begin and (step <= end or end < 0) and (step - begin) % frequency == 0


class _MaskedKernels(tf_keras.callbacks.Callback):
    """Multiplies kernels by 0/1 masks before every training step and after the last one."""

    def __init__(self, kernels: list[tf.Variable], masks: list[np.ndarray]) -> None:
        super().__init__()
        self._kernels = list(kernels)
        self._masks = [tf.Variable(m.astype(k.dtype.as_numpy_dtype), trainable=False)
                       for k, m in zip(self._kernels, masks)]
        self._apply = tf.function(self._apply_all)  # one call per batch, not one op per kernel

    def _apply_all(self) -> None:
        for kernel, mask in zip(self._kernels, self._masks):
            kernel.assign(kernel * mask)

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Traces the masking function now, outside the batches Keras times."""
        self._apply()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        """Masks the kernels before the step."""
        self._apply()

    def on_train_end(self, logs: dict | None = None) -> None:
        """Leaves the kernels masked after the last optimiser step."""
        self._apply()


class BlockPruning(_MaskedKernels):
    """Prunes kernels in blocks along each output row, on a tfmot pruning schedule.

    Args:
        schedules: the layers to prune, each with its tfmot ``PruningSchedule``
            (called with the training step, it says whether to update the
            mask and the sparsity to reach).
    """

    def __init__(self, schedules: list[tuple[tf_keras.layers.Layer, object]]) -> None:
        layers = [layer for layer, _ in schedules]
        super().__init__([layer.kernel for layer in layers],
                         [np.ones(layer.kernel.shape) for layer in layers])
        self._schedules = [schedule for _, schedule in schedules]
        self._step = -1  # tfmot's UpdatePruningStep also starts at -1

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        """Updates the masks when the schedule says so, then masks the kernels."""
        for kernel, mask, schedule in zip(self._kernels, self._masks, self._schedules):
            if not _pruning_turn(schedule, self._step):
                continue  # tfmot's own test, in Python: calling the schedule every batch is slow
            update, sparsity = schedule(tf.constant(self._step, dtype=tf.int64))
            if bool(update) and float(sparsity) > 0.0:
                mask.assign(block_mask(kernel.numpy(), float(sparsity)))
        self._step += 1
        self._apply()


class KeepZeros(_MaskedKernels):
    """Holds the zeros of pruned kernels at zero while a model trains on (e.g. in QAT).

    tfmot's prune-preserving QAT scheme loses the zeros of a Conv2D that its
    layout transforms fuse with the following ReLU; masking the kernel before
    every step keeps the pruned pattern exactly.

    Args:
        variables: kernel variables, each with the 0/1 mask of its weights to keep.
    """

    def __init__(self, variables: list[tuple[tf.Variable, np.ndarray]]) -> None:
        super().__init__([v for v, _ in variables], [m for _, m in variables])
