"""Reads an architecture plan as a tf_keras model (the HyperModel's build)."""
from __future__ import annotations

import keras_tuner
import tensorflow as tf
import tf_keras

from pipeline.search.architecture import Architecture, decode, plan
from pipeline.search.space import declare_space


@tf_keras.utils.register_keras_serializable(package="sparse")
class ChannelMaxPool(tf_keras.layers.Layer):
    """Max-pools the input across channels (SpArSe's downsample-in-depth)."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:  # noqa: D102
        return tf.reduce_max(inputs, axis=-1, keepdims=True)


@tf_keras.utils.register_keras_serializable(package="sparse")
class ChannelGate(tf_keras.layers.Layer):
    """A learned non-negative gate per channel, penalised by the bytes it costs.

    The structured-pruning phase multiplies each conv layer's output by these
    gates and adds ``strength * sum(cost_c * g_c)`` to the loss, so channels
    whose removal frees the most bytes are pushed to zero first (the idea of
    "Differentiable Network Pruning for Microcontrollers").
    """

    def __init__(self, costs: list[float], strength: float, **kwargs):
        super().__init__(**kwargs)
        self.costs = [float(c) for c in costs]
        self.strength = float(strength)

    def build(self, input_shape):  # noqa: D102
        self.gate = self.add_weight(name="gate", shape=(len(self.costs),), initializer="ones",
                                    constraint=tf_keras.constraints.NonNeg())

    def call(self, inputs: tf.Tensor) -> tf.Tensor:  # noqa: D102
        self.add_loss(self.strength * tf.reduce_sum(tf.constant(self.costs) * self.gate))
        return inputs * self.gate

    def get_config(self) -> dict:  # noqa: D102
        return {**super().get_config(), "costs": self.costs, "strength": self.strength}


def build_model(arch: Architecture, gates: dict[str, tuple[list[float], float]] | None = None,
                shipped: bool = False) -> tf_keras.Model:
    """Builds the tf_keras model of ``arch``; layer names follow the plan's node names.

    The model outputs logits (the loss applies the softmax): the class is their
    argmax, and a device need not run a softmax to find it.

    Args:
        arch: the architecture.
        gates: optional conv-node name -> (per-channel costs, strength); a
            ChannelGate named ``<node>_gate`` follows each such conv layer.
        shipped: build the form that is converted and shipped. Each flatten
            becomes a reshape to a 1x1 map with the features as channels and
            each FC layer a 1x1 convolution over it (the same arithmetic), so
            the int8 graph has per-channel CONV_2D where it would have
            FULLY_CONNECTED: TFLite and TFLite Micro requantise CONV_2D the
            same way, but not FULLY_CONNECTED. A final flatten named
            ``logits`` gives the output its usual (batch, classes) shape.
    """
    gates = gates or {}
    tensors: dict[str, tf.Tensor] = {}
    for node in plan(arch):
        xs = [tensors[i] for i in node.inputs]
        a = node.attrs
        if node.op == "input":
            y = tf_keras.Input(shape=node.shape, name="input")
        elif node.op == "channel_max":
            y = ChannelMaxPool(name=node.name)(xs[0])
        elif node.op == "max_pool":
            y = tf_keras.layers.MaxPooling2D(a["pool"], strides=a["pool"], padding="valid",
                                             name=node.name)(xs[0])
        elif node.op == "conv":
            bn = a["batch_norm"]
            y = tf_keras.layers.Conv2D(node.shape[-1], a["kernel"], padding="same",
                                       use_bias=a["use_bias"] and not bn, name=node.name)(xs[0])
            if bn:
                y = tf_keras.layers.BatchNormalization(name=f"{node.name}_bn")(y)
            if a["relu"]:
                y = tf_keras.layers.ReLU(name=f"{node.name}_relu")(y)
            if node.name in gates:
                costs, strength = gates[node.name]
                y = ChannelGate(costs, strength, name=f"{node.name}_gate")(y)
        elif node.op == "depthwise":
            y = tf_keras.layers.DepthwiseConv2D(a["kernel"], padding="same", use_bias=False,
                                                name=node.name)(xs[0])
        elif node.op == "flatten" and shipped:
            y = tf_keras.layers.Reshape((1, 1, node.size), name=node.name)(xs[0])
        elif node.op == "flatten":
            y = tf_keras.layers.Flatten(name=node.name)(xs[0])
        elif node.op == "dense" and shipped:
            y = tf_keras.layers.Conv2D(node.shape[-1], 1, activation="relu" if a["relu"] else None,
                                       name=node.name)(xs[0])
        elif node.op == "dense":
            y = tf_keras.layers.Dense(node.shape[-1], activation="relu" if a["relu"] else None,
                                      name=node.name)(xs[0])
        elif node.op == "add":
            y = tf_keras.layers.Add(name=node.name)(xs)
        elif node.op == "concat":
            y = tf_keras.layers.Concatenate(name=node.name)(xs)
        else:
            raise ValueError(f"plan node {node.name!r} has unknown op {node.op!r}")
        tensors[node.name] = y
    if shipped:
        y = tf_keras.layers.Flatten(name="logits")(y)
    return tf_keras.Model(tensors["input"], y)


def shipped_model(model: tf_keras.Model, arch: Architecture) -> tf_keras.Model:
    """The shipped form (see :func:`build_model`) of a trained model of ``arch``, same weights.

    ``model`` is the training form without gates or pruning wrappers (after
    ``strip_pruning``); each FC kernel [in, out] becomes a 1x1 kernel [1, 1, in, out].
    """
    shipped = build_model(arch, shipped=True)
    for layer in shipped.layers:
        weights = model.get_layer(layer.name).get_weights() if layer.weights else []
        if weights:
            kernel_shape = tuple(layer.weights[0].shape)
            layer.set_weights([weights[0].reshape(kernel_shape)] + weights[1:])
    return shipped


class SparseHyperModel(keras_tuner.HyperModel):
    """keras-tuner HyperModel: declares the space and builds tf_keras models."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__(name="sparse")
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:  # noqa: D102
        declare_space(hp)

    def build(self, hp: keras_tuner.HyperParameters) -> tf_keras.Model:  # noqa: D102
        declare_space(hp)
        arch, _ = decode(hp.values, self.input_shape, self.num_classes)
        return build_model(arch)


def load_float_model(path) -> tf_keras.Model:
    """Loads a trial's saved float model, including quantisation-aware ones."""
    import tensorflow_model_optimization as tfmot

    with tfmot.quantization.keras.quantize_scope():
        return tf_keras.models.load_model(path, compile=False, custom_objects={
            "ChannelGate": ChannelGate, "ChannelMaxPool": ChannelMaxPool})
