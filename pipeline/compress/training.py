"""Train one candidate: dense phase, channel pruning, unstructured pruning, QAT.

The schedule of one trial, for an epoch budget E:

1. Dense phase, ``round(pruning_start_fraction * E)`` epochs (at most E - 1):
   train the full-width model. When a block's ``channel_keep`` is below 1,
   a :class:`~pipeline.search.builder.ChannelGate` follows each of its conv layers,
   with an L1 penalty weighted by the bytes each channel costs.
2. Structured pruning: keep the ``round(keep * filters)`` channels with the
   largest gate x kernel-magnitude, fold the gates into the layer, and copy
   the surviving weights into the narrower model (``Architecture.with_channel_keep``),
   slicing the matching input channels of every consumer.
3. Pruning phase, the remaining epochs: block magnitude pruning of every
   Conv2D and Dense kernel (blocks of 16 weights along each output row, see
   :mod:`pipeline.compress.block_pruning`; tfmot ``prune_low_magnitude`` for Dense,
   a callback with the same semantics for Conv2D and tiny Dense kernels) with a tfmot polynomial
   schedule that ramps from 0 to the target sparsity of its group over
   ``pruning_ramp_fraction * E`` epochs, then ``strip_pruning``.
4. The shipped form (:func:`~pipeline.search.builder.shipped_model`): the same
   weights with every FC layer as a 1x1 convolution, so that the int8 model
   computes the same in TFLite, TFLite Micro and the AOT engine.
5. Optional quantisation-aware fine-tuning (one epoch) of the shipped form
   with tfmot's prune-preserving scheme, when ``quantization_aware`` is on.

Models output logits; the loss applies the softmax.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from pipeline.compress.block_pruning import PRUNING_BLOCK, BlockPruning, KeepZeros, tfmot_can_block_prune
from pipeline.search.architecture import Architecture, Compression, Node, plan
from pipeline.search.builder import ChannelMaxPool, build_model, shipped_model

BATCH_SIZE = 64
GATE_STRENGTH = 1e-3


class _NoCallbackTimingHint(logging.Filter):
    """Drops Keras' "Callback method ... is slow compared to the batch time" hint.

    Pruning masks every kernel before each step, which on the tiny models the
    search trains costs about as much as the step itself: expected, and
    nothing a user can act on.
    """

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return "is slow compared to the batch time" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_NoCallbackTimingHint())


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """The searched training and schedule settings of one trial."""

    epochs: int
    learning_rate: float
    pruning_start_fraction: float
    pruning_ramp_fraction: float
    quantization_aware: bool

    @classmethod
    def from_values(cls, values: Mapping[str, Any], epochs: int) -> TrainingSettings:
        """Reads the settings from keras-tuner values."""
        return cls(epochs, float(values["learning_rate"]), float(values["pruning_start_fraction"]),
                   float(values["pruning_ramp_fraction"]), bool(values["quantization_aware"]))

    @property
    def dense_epochs(self) -> int:
        """Epochs trained before any pruning."""
        return min(self.epochs - 1, int(round(self.pruning_start_fraction * self.epochs)))


EpochHook = Callable[[int, tf_keras.Model], None]


class _AfterEpoch(tf_keras.callbacks.Callback):
    """Calls ``hook(epoch, model)`` after every epoch, counting epochs across the trial's phases."""

    def __init__(self, hook: EpochHook, first_epoch: int):
        super().__init__()
        self.hook = hook
        self.first_epoch = first_epoch

    def on_epoch_end(self, epoch: int, logs=None) -> None:  # noqa: D102
        self.hook(self.first_epoch + epoch + 1, self.model)


def train_candidate(arch: Architecture, compression: Compression, settings: TrainingSettings,
                    x: np.ndarray, y: np.ndarray, seed: int,
                    after_epoch: EpochHook | None = None) -> tf_keras.Model:
    """Trains, channel-prunes and block-prunes one candidate; returns its float model in shipped form.

    The same seed gives the same weights on the same machine: every random
    generator is seeded and TensorFlow's ops run deterministically.

    ``after_epoch(epoch, model)`` runs after each of the E epochs (1-based, dense
    and pruning phases counted together); an exception it raises ends the
    training (early stopping raises :class:`~pipeline.search.early_stopping.Stopped`).
    """
    hooks = (lambda first: [_AfterEpoch(after_epoch, first)]) if after_epoch else (lambda first: [])
    tf.config.experimental.enable_op_determinism()
    tf_keras.utils.set_random_seed(seed)
    structured = any(k < 1.0 for k in compression.block_channel_keep)
    gates = _gate_costs(arch, compression) if structured else {}
    model = build_model(arch, gates)
    _compile(model, settings.learning_rate)
    if settings.dense_epochs:
        model.fit(x, y, batch_size=BATCH_SIZE, epochs=settings.dense_epochs, verbose=0, shuffle=True,
                  callbacks=hooks(0))
    if structured:
        model = prune_channels(model, arch, compression)
        arch = arch.with_channel_keep(compression.block_channel_keep)
    return _prune_and_ship(model, arch, compression, settings, x, y, hooks(settings.dense_epochs))


def finetune_candidate(model: tf_keras.Model, arch: Architecture, compression: Compression,
                       settings: TrainingSettings, x: np.ndarray, y: np.ndarray, seed: int,
                       after_epoch: EpochHook | None = None) -> tf_keras.Model:
    """Fine-tunes a model that starts from trained weights (a morphed child); returns it in shipped form.

    ``model`` is the training form of ``arch``, already as narrow as channel
    pruning would leave it, so there is no dense phase and no channel pruning:
    all ``settings.epochs`` epochs prune toward ``compression``'s sparsities,
    then the model is shipped (and fine-tuned quantisation-aware if set).
    """
    tf.config.experimental.enable_op_determinism()
    tf_keras.utils.set_random_seed(seed)
    settings = dataclasses.replace(settings, pruning_start_fraction=0.0)
    hooks = [_AfterEpoch(after_epoch, 0)] if after_epoch else []
    return _prune_and_ship(model, arch, compression, settings, x, y, hooks)


def _prune_and_ship(model: tf_keras.Model, arch: Architecture, compression: Compression,
                    settings: TrainingSettings, x: np.ndarray, y: np.ndarray,
                    hooks: list[tf_keras.callbacks.Callback]) -> tf_keras.Model:
    """The pruning phase, then the shipped form and the optional quantisation-aware epoch."""
    model, block_pruning = _prune_weights(model, compression, settings, len(x))
    _compile(model, settings.learning_rate)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=settings.epochs - settings.dense_epochs, verbose=0,
              shuffle=True, callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), block_pruning, *hooks])
    model = shipped_model(tfmot.sparsity.keras.strip_pruning(model), arch)
    if settings.quantization_aware:
        model = _quantization_aware_finetune(model, settings.learning_rate / 10, x, y)
    _compile(model, settings.learning_rate)
    return model


def _compile(model: tf_keras.Model, learning_rate: float) -> None:
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def _gate_costs(arch: Architecture, compression: Compression) -> dict[str, tuple[list[float], float]]:
    """Per gated conv layer: each channel's bytes (weights in and out, plus its feature map).

    Costs are normalised by their mean so the penalty strength means the same
    for every architecture.
    """
    nodes = plan(arch)
    by_name = {n.name: n for n in nodes}
    consumers = _consumers(nodes)
    gated = _prunable_convs(nodes, compression)
    raw: dict[str, float] = {}
    for name in gated:
        node = by_name[name]
        channels = node.shape[-1]
        cost = node.kernel_weights / channels + node.bias / channels + node.size / channels
        for consumer in consumers.get(name, []):
            cost += _weights_per_input_channel(consumer, channels, consumers)
        raw[name] = cost
    mean = float(np.mean(list(raw.values()))) or 1.0
    return {name: ([raw[name] / mean] * by_name[name].shape[-1], GATE_STRENGTH) for name in gated}


def _weights_per_input_channel(node: Node, channels: int, consumers: dict[str, list[Node]]) -> float:
    """Weights a consumer holds per channel of its input (following pools/flattens)."""
    if node.op in ("conv", "depthwise", "dense"):
        return node.kernel_weights / channels
    return sum(_weights_per_input_channel(c, channels, consumers) for c in consumers.get(node.name, []))


def _consumers(nodes: list[Node]) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = {}
    for node in nodes:
        for i in node.inputs:
            out.setdefault(i, []).append(node)
    return out


def _prunable_convs(nodes: list[Node], compression: Compression) -> list[str]:
    """Names of the layer-output convs whose channels structured pruning removes."""
    return [n.name for n in nodes if n.op == "conv" and n.attrs["relu"] and n.group
            and compression.block_channel_keep[int(n.group[5:]) - 1] < 1.0]


def prune_channels(model: tf_keras.Model, arch: Architecture, compression: Compression) -> tf_keras.Model:
    """Removes the least important channels and returns the narrower model with copied weights."""
    nodes = plan(arch)
    by_name = {n.name: n for n in nodes}
    narrow_arch = arch.with_channel_keep(compression.block_channel_keep)
    narrow_channels = {n.name: n.shape[-1] for n in plan(narrow_arch)}
    narrow = build_model(narrow_arch)
    gated = set(_prunable_convs(nodes, compression))
    keep: dict[str, np.ndarray] = {}
    for node in nodes:
        if node.op == "input":
            keep[node.name] = np.arange(node.shape[-1])
        elif node.name in gated:
            n_keep = narrow_channels[node.name]
            gate = model.get_layer(f"{node.name}_gate").get_weights()[0]
            _fold_gate(model, node, gate)
            kernel = model.get_layer(node.name).get_weights()[0]
            score = gate * np.abs(kernel).reshape(-1, kernel.shape[-1]).mean(axis=0)
            keep[node.name] = np.sort(np.argsort(-score, kind="stable")[:n_keep])
        elif node.op == "dense" and arch.merge == "Sum" and not arch.main_fc_units \
                and node.name in ("left_fc", "right_fc"):
            keep[node.name] = keep["main_flatten"]  # summed with the main path's features
        elif node.op in ("conv", "dense"):
            keep[node.name] = np.arange(node.shape[-1])
        elif node.op == "flatten":
            src = by_name[node.inputs[0]]
            grid = np.arange(src.size).reshape(src.shape)
            keep[node.name] = grid[..., keep[node.inputs[0]]].reshape(-1)
        elif node.op == "concat":
            offsets = np.cumsum([0] + [by_name[i].size for i in node.inputs])
            keep[node.name] = np.concatenate([keep[i] + o for i, o in zip(node.inputs, offsets)])
        else:  # channel-wise ops keep their input's channels
            keep[node.name] = keep[node.inputs[0]]
    for node in nodes:
        if node.op in ("conv", "depthwise", "dense"):
            cin = keep[node.inputs[0]]
            cout = keep[node.name] if node.op != "depthwise" else None
            weights = model.get_layer(node.name).get_weights()
            kernel = weights[0][..., cin, :] if node.op != "dense" else weights[0][cin, :]
            if cout is not None:
                kernel = kernel[..., cout]
            narrow.get_layer(node.name).set_weights([kernel] + [b[cout] for b in weights[1:]])
            if node.op == "conv" and node.attrs["batch_norm"]:
                bn = model.get_layer(f"{node.name}_bn").get_weights()
                narrow.get_layer(f"{node.name}_bn").set_weights([p[cout] for p in bn])
    return narrow


def _fold_gate(model: tf_keras.Model, node: Node, gate: np.ndarray) -> None:
    """Moves a non-negative gate into the layer before the ReLU: relu(z) * g = relu(z * g)."""
    if node.attrs["batch_norm"]:
        bn = model.get_layer(f"{node.name}_bn")
        gamma, beta, mean, var = bn.get_weights()
        bn.set_weights([gamma * gate, beta * gate, mean, var])
    else:
        layer = model.get_layer(node.name)
        layer.set_weights([w * gate for w in layer.get_weights()])


def _prune_weights(model: tf_keras.Model, compression: Compression, settings: TrainingSettings,
                   samples: int) -> tuple[tf_keras.Model, BlockPruning]:
    """Sets up block pruning of every Conv2D/Dense kernel with its group's schedule.

    Dense kernels are wrapped in tfmot's prune_low_magnitude with a block size;
    Conv2D kernels, and Dense kernels tfmot cannot block-prune, go to the
    returned callback (see :mod:`pipeline.compress.block_pruning`).
    """
    steps = int(np.ceil(samples / BATCH_SIZE)) * (settings.epochs - settings.dense_epochs)
    ramp = max(1, min(steps - 1, int(round(settings.pruning_ramp_fraction * settings.epochs
                                           * np.ceil(samples / BATCH_SIZE)))))
    frequency = max(1, ramp // 20)
    end_step = frequency * (ramp // frequency)
    sparsity_of = {f"block{b + 1}": s for b, s in enumerate(compression.block_sparsity)}
    sparsity_of["fc"] = compression.fc_sparsity
    schedule_of: dict[str, tfmot.sparsity.keras.PolynomialDecay] = {}

    def wrap(layer: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
        clone = layer.__class__.from_config(layer.get_config())
        if not _is_pruned_kind(layer):
            return clone
        group = "fc" if isinstance(layer, tf_keras.layers.Dense) else layer.name.split("_")[0]
        schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, sparsity_of[group], 0, end_step,
                                                        frequency=frequency)
        if isinstance(layer, tf_keras.layers.Dense) and tfmot_can_block_prune(tuple(layer.kernel.shape)):
            return tfmot.sparsity.keras.prune_low_magnitude(
                clone, pruning_schedule=schedule, block_size=(PRUNING_BLOCK, 1))
        schedule_of[layer.name] = schedule
        return clone

    pruned = tf_keras.models.clone_model(model, clone_function=wrap)
    for src, dst in zip(model.layers, pruned.layers):
        target = dst.layer if hasattr(dst, "layer") and not isinstance(dst, ChannelMaxPool) else dst
        if src.get_weights():
            target.set_weights(src.get_weights())
    callback = BlockPruning([(pruned.get_layer(name), s) for name, s in schedule_of.items()])
    return pruned, callback


def _quantization_aware_finetune(model: tf_keras.Model, learning_rate: float,
                                 x: np.ndarray, y: np.ndarray) -> tf_keras.Model:
    """One epoch of prune-preserving quantisation-aware training that keeps every pruned zero."""
    quantize = tfmot.quantization.keras
    scope = {"ChannelMaxPool": ChannelMaxPool}
    masks = {layer.name: layer.kernel.numpy() != 0 for layer in model.layers if _is_pruned_kind(layer)}
    with quantize.quantize_scope(scope):
        annotated = quantize.quantize_annotate_model(model)
        qat = quantize.quantize_apply(
            annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    kernels = []
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if inner is not None and inner.name in masks:  # the wrapper swaps inner.kernel for a tensor
            kernel = next(w for w in layer.weights if w.name.endswith(f"{inner.name}/kernel:0"))
            kernels.append((kernel, masks[inner.name]))
    _compile(qat, learning_rate)
    qat.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0, shuffle=True, callbacks=[KeepZeros(kernels)])
    return qat


def _is_pruned_kind(layer: tf_keras.layers.Layer) -> bool:
    """Conv2D and Dense layers (not depthwise): the kernels the search prunes."""
    return isinstance(layer, (tf_keras.layers.Conv2D, tf_keras.layers.Dense)) and not isinstance(
        layer, tf_keras.layers.DepthwiseConv2D)
