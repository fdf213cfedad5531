"""SpArSe's third stage: network morphisms of trained Pareto models.

A morphism changes a parent's hyperparameter values (so the child is an
ordinary point of the search space, decoded, budgeted and recorded like any
other) and carries the parent's trained weights over so that the child
computes the same function before it is fine-tuned (Net2Net, Chen et al.
2016; Wei et al. 2016):

* ``wider``: a conv layer that is not its block's last gets more output
  channels; each new channel copies an existing one (its kernel, bias and
  batch-norm), and the next layer divides the weights reading each copied
  channel by how many copies there now are.
* ``deeper``: a Conv2D is inserted before a block's last layer with as many
  output channels as its input, an identity kernel and an identity
  batch-norm; its input is non-negative (image pixels or a ReLU's output),
  so the ReLU after it changes nothing.
* ``kernel``: a kernel of size k (at most 3) becomes k + 2, the old kernel at
  its centre and zeros around it ('same' padding keeps the alignment).
* ``branch``: the left or right branch of SpArSe's architecture is added
  with zero weights, so it adds (Sum) or feeds the classifier (Concatenate)
  nothing.

Morphisms apply to the network as it was shipped, after channel pruning: a
layer's channel count there is ``kept_channels(filters, channel_keep)``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.search.architecture import Architecture, Node, decode, kept_channels, plan
from pipeline.search.space import MAX_LAYERS_PER_BLOCK, layer_prefix

KINDS = ("wider", "deeper", "kernel", "branch")
MAX_FILTERS = 100
WIDER_FACTOR = 1.5  # a widened layer gets about half as many channels again
Weights = dict[str, list[np.ndarray]]  # layer name -> its weights, Dense kernels as [in, out]
_WEIGHT_ORDER = ("kernel", "depthwise_kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")


@dataclasses.dataclass(frozen=True)
class Morphism:
    """One change to a parent: its kind, where (block, layer or branch side), and the child's values."""

    kind: str
    block: int
    layer: int
    side: str
    values: Mapping[str, Any]



def candidates(values: Mapping[str, Any], input_shape: tuple[int, int, int],
               num_classes: int) -> list[Morphism]:
    """Every morphism this parent allows (none may be possible)."""
    arch, compression = decode(values, input_shape, num_classes)
    narrow = arch.with_channel_keep(compression.block_channel_keep)
    out: list[Morphism] = []
    for b, block in enumerate(narrow.blocks, start=1):
        keep = compression.block_channel_keep[b - 1]
        for i, layer in enumerate(block, start=1):
            p = layer_prefix(b, i)
            if i < len(block) and layer.kind != "DownsampledConv2D":
                wider = _filters_for(max(layer.filters + 1, int(round(layer.filters * WIDER_FACTOR))), keep)
                if wider is not None and wider > int(values[f"{p}_filters"]):
                    out.append(Morphism("wider", b, i, "", {**values, f"{p}_filters": wider}))
            if int(values[f"{p}_kernel"]) + 2 <= 5:
                out.append(Morphism("kernel", b, i, "", {**values, f"{p}_kernel": int(values[f"{p}_kernel"]) + 2}))
        if len(block) < MAX_LAYERS_PER_BLOCK:
            position = len(block)  # the new layer goes just before the last one
            channels = block[position - 2].filters if position > 1 else _block_input_channels(narrow, b)
            filters = _filters_for(channels, keep)
            if filters is not None:
                out.append(Morphism("deeper", b, position, "", _insert_layer(values, b, position, filters)))
    if int(values["num_fc_layers"]) == 0 and not values["left_branch"] and not values["right_branch"]:
        for side, fraction in (("left", "fc_fraction_left"), ("right", "fc_fraction_right")):
            if side == "left" and len(narrow.blocks) < 2:
                continue  # the left branch reads block 1's output: the main path itself
            out.append(Morphism("branch", 0, 0, side, {**values, f"{side}_branch": True, fraction: 0.5}))
    return out


def _filters_for(channels: int, keep: float) -> int | None:
    """The ``filters`` value whose kept channels are ``channels`` under ``keep``, if one exists."""
    guess = int(round(channels / keep))
    for f in (guess - 1, guess, guess + 1):
        if 1 <= f <= MAX_FILTERS and kept_channels(f, keep) == channels:
            return f
    return None


def _block_input_channels(arch: Architecture, block: int) -> int:
    if block == 1:
        return 1 if arch.downsample_depth else arch.input_shape[-1]
    return arch.blocks[block - 2][-1].filters


def _insert_layer(values: Mapping[str, Any], block: int, position: int, filters: int) -> dict[str, Any]:
    """The values with a Conv2D (kernel 3) inserted at ``position`` of ``block``, later layers moved up."""
    out = dict(values)
    n = int(values[f"block{block}_num_layers"])
    for i in range(n, position - 1, -1):
        src, dst = layer_prefix(block, i), layer_prefix(block, i + 1)
        for suffix in ("type", "kernel", "filters", "downsample_fraction"):
            if f"{src}_{suffix}" in values:
                out[f"{dst}_{suffix}"] = values[f"{src}_{suffix}"]
            else:
                out.pop(f"{dst}_{suffix}", None)
    new = layer_prefix(block, position)
    out.update({f"block{block}_num_layers": n + 1, f"{new}_type": "Conv2D", f"{new}_kernel": 3,
                f"{new}_filters": filters})
    out.pop(f"{new}_downsample_fraction", None)
    return out


def narrow_plan(values: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int
                ) -> tuple[Architecture, list[Node]]:
    """The shipped (channel-pruned) architecture of ``values`` and its plan."""
    arch, compression = decode(values, input_shape, num_classes)
    narrow = arch.with_channel_keep(compression.block_channel_keep)
    return narrow, plan(narrow)


def morph_weights(parent: Weights, parent_nodes: list[Node], child_nodes: list[Node],
                  morphism: Morphism, seed: int = 0) -> Weights:
    """The child's weights: the parent's, changed so that the child computes the same function."""
    child: Weights = {k: [w.copy() for w in v] for k, v in parent.items()}
    by_name = {n.name: n for n in child_nodes}
    if morphism.kind == "kernel":
        name = layer_prefix(morphism.block, morphism.layer)
        node = by_name.get(f"{name}_depthwise") or by_name[name]
        kernel = child[node.name][0]
        child[node.name][0] = np.pad(kernel, ((1, 1), (1, 1)) + ((0, 0),) * (kernel.ndim - 2))
    elif morphism.kind == "wider":
        _widen(child, parent_nodes, child_nodes, layer_prefix(morphism.block, morphism.layer), seed)
    elif morphism.kind == "deeper":
        child = _deepen(child, parent_nodes, child_nodes, morphism)
    elif morphism.kind == "branch":
        fc = by_name[f"{morphism.side}_fc"]
        fin = by_name[fc.inputs[0]].size
        child[fc.name] = [np.zeros((fin, fc.shape[-1]), np.float32), np.zeros(fc.shape[-1], np.float32)]
        classifier = by_name["classifier"]
        kernel, bias = parent["classifier"]
        merged = by_name[classifier.inputs[0]]
        if merged.op == "concat":  # the new features get zero weights in the classifier
            before = merged.inputs[:merged.inputs.index(fc.name)]
            offset = sum(by_name[i].size for i in before)
            kernel = np.insert(kernel, [offset] * fc.shape[-1], 0.0, axis=0)
        child["classifier"] = [kernel, bias]
    else:
        raise ValueError(f"unknown morphism {morphism.kind!r}: expected one of {', '.join(KINDS)}")
    return child


def _widen(weights: Weights, parent_nodes: list[Node], child_nodes: list[Node], name: str, seed: int) -> None:
    """Net2WiderNet on conv ``name``: copy channels, then rescale what reads them."""
    before = next(n for n in parent_nodes if n.name == name).shape[-1]
    after = next(n for n in child_nodes if n.name == name).shape[-1]
    rng = np.random.default_rng(seed)
    source = np.concatenate([np.arange(before), rng.integers(0, before, after - before)])
    copies = np.bincount(source, minlength=before).astype(np.float32)
    weights[name] = [w[..., source] for w in weights[name]]
    if f"{name}_bn" in weights:
        weights[f"{name}_bn"] = [p[source] for p in weights[f"{name}_bn"]]
    consumer = next(n for n in child_nodes if name in n.inputs)
    while consumer.op == "depthwise":  # per channel: copy its filters too, then go on to what reads it
        weights[consumer.name] = [w[..., source, :] for w in weights[consumer.name]]
        consumer = next(n for n in child_nodes if consumer.name in n.inputs)
    kernel = weights[consumer.name][0]
    weights[consumer.name][0] = kernel[..., source, :] / copies[source][:, None]


def _deepen(weights: Weights, parent_nodes: list[Node], child_nodes: list[Node], morphism: Morphism) -> Weights:
    """Inserts an identity Conv2D at the morphism's position; later layers of the block move up a name."""
    block, position = morphism.block, morphism.layer
    renamed: Weights = {}
    layers = sum(1 for n in parent_nodes if n.name.startswith(f"block{block}_layer") and n.op == "conv"
                 and n.attrs["relu"])
    for name, w in weights.items():
        new_name = name
        for i in range(layers, position - 1, -1):
            old = layer_prefix(block, i)
            if name == old or name.startswith(old + "_"):
                new_name = layer_prefix(block, i + 1) + name[len(old):]
                break
        renamed[new_name] = w
    node = next(n for n in child_nodes if n.name == layer_prefix(block, position))
    channels = node.shape[-1]
    k = node.attrs["kernel"]
    kernel = np.zeros((k, k, channels, channels), np.float32)
    kernel[(k - 1) // 2, (k - 1) // 2] = np.eye(channels, dtype=np.float32)
    if node.attrs["batch_norm"]:
        renamed[node.name] = [kernel]
        eps = 1e-3  # tf_keras BatchNormalization's default epsilon
        renamed[f"{node.name}_bn"] = [np.full(channels, np.sqrt(1 + eps), np.float32), np.zeros(channels, np.float32),
                                      np.zeros(channels, np.float32), np.ones(channels, np.float32)]
    else:
        renamed[node.name] = [kernel, np.zeros(channels, np.float32)]
    return renamed


def trained_weights(model, nodes: list[Node]) -> Weights:
    """A trained model's weights by layer name, in training form (Dense kernels [in, out]).

    Reads shipped models (FC layers as 1x1 convolutions) and quantisation-aware
    ones (each layer inside a wrapper) alike.
    """
    by_name = {n.name: n for n in nodes}
    out: Weights = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        # a quantisation-aware wrapper owns some of its layer's variables: take them by name, in layer order
        named = {v.name.rsplit("/", 1)[-1].split(":")[0]: v for v in layer.weights}
        weights = [named[k].numpy() for k in _WEIGHT_ORDER if k in named]
        if not weights:
            continue
        node = by_name.get(inner.name)
        if node is not None and node.op == "dense":
            weights = [weights[0].reshape(weights[0].shape[-2], weights[0].shape[-1])] + weights[1:]
        out[inner.name] = weights
    return out


def build_with_weights(arch: Architecture, weights: Weights):
    """The training-form model of ``arch`` holding ``weights`` (each reshaped to its layer's)."""
    from pipeline.search.builder import build_model

    model = build_model(arch)
    for layer in model.layers:
        if layer.weights:
            given = weights[layer.name]
            layer.set_weights([w.reshape(tuple(v.shape)) for w, v in zip(given, layer.weights)])
    return model
