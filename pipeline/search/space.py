"""SpArSe's search space, declared once for keras-tuner.

Every row of the SpArSe table is here (see ../shared/docs/sparse-brief.md).
Conditional parameters sit in keras-tuner conditional scopes, so they are
active only when their parent is: a layer's settings only when its block and
its position exist, a DownsampledConv2D's reduction only for that layer type,
a branch's share of the FC budget only when the branch is on.

Mapping of SpArSe's training and pruning rows onto our pipeline:

* ``learning_rate`` replaces SpArSe's training rows for the Adam optimiser.
* ``pruning_start_fraction``: the fraction of the epoch budget trained dense
  before pruning starts (SpArSe: "epochs before pruning starts").
* ``pruning_ramp_fraction``: the fraction of the epoch budget over which the
  polynomial sparsity schedule ramps to its target (SpArSe: "annealing").
* ``block{b}_sparsity`` / ``fc_sparsity``: unstructured target sparsity of the
  conv kernels of block b and of every fully connected kernel (SpArSe's
  per-layer thresholds, expressed as the fraction of weights removed).
* ``block{b}_channel_keep``: structured-pruning strength, the fraction of
  each conv layer's output channels in block b that survive channel pruning.
* ``quantization_aware``: fine-tune with prune-preserving quantisation-aware
  training before int8 conversion.
"""
from __future__ import annotations

from keras_tuner import HyperParameters

LAYER_TYPES = ("Conv2D", "DownsampledConv2D", "SeparableConv2D")
MERGE_TYPES = ("Sum", "Concatenate")
MAX_BLOCKS = 2
MAX_LAYERS_PER_BLOCK = 3


def layer_prefix(block: int, layer: int) -> str:
    """Name prefix of a conv layer's parameters, e.g. ``block1_layer2``."""
    return f"block{block}_layer{layer}"


def declare_space(hp: HyperParameters) -> None:
    """Registers the whole search space on ``hp`` (idempotent)."""
    hp.Boolean("downsample_input_depth", default=False)
    hp.Boolean("downsample_input", default=False)
    with hp.conditional_scope("downsample_input", [True]):
        hp.Int("input_downsampling_rate", 2, 4, step=1, default=2)

    hp.Int("num_conv_blocks", 1, MAX_BLOCKS, default=1)
    for block in range(1, MAX_BLOCKS + 1):
        with hp.conditional_scope("num_conv_blocks", list(range(block, MAX_BLOCKS + 1))):
            hp.Int(f"block{block}_num_layers", 1, MAX_LAYERS_PER_BLOCK, default=1)
            hp.Float(f"block{block}_sparsity", 0.0, 0.95, default=0.5)
            hp.Float(f"block{block}_channel_keep", 0.25, 1.0, default=1.0)
            for layer in range(1, MAX_LAYERS_PER_BLOCK + 1):
                with hp.conditional_scope(f"block{block}_num_layers",
                                          list(range(layer, MAX_LAYERS_PER_BLOCK + 1))):
                    prefix = layer_prefix(block, layer)
                    hp.Choice(f"{prefix}_type", list(LAYER_TYPES), default="Conv2D")
                    hp.Int(f"{prefix}_kernel", 2, 5, default=3)
                    hp.Int(f"{prefix}_filters", 1, 100, default=16)
                    with hp.conditional_scope(f"{prefix}_type", ["DownsampledConv2D"]):
                        hp.Float(f"{prefix}_downsample_fraction", 0.05, 0.5, default=0.25)

    hp.Int("num_fc_layers", 0, 1, default=0)
    hp.Int("total_fc_weights", 1000, 800_000, step=1000, default=10_000)
    with hp.conditional_scope("num_fc_layers", [1]):
        hp.Float("fc_fraction_main", 0.0, 1.0, default=1.0)
    hp.Boolean("left_branch", default=False)
    with hp.conditional_scope("left_branch", [True]):
        hp.Float("fc_fraction_left", 0.0, 1.0, default=0.5)
    hp.Boolean("right_branch", default=False)
    with hp.conditional_scope("right_branch", [True]):
        hp.Float("fc_fraction_right", 0.0, 1.0, default=0.5)
    hp.Choice("merge_type", list(MERGE_TYPES), default="Concatenate")
    hp.Boolean("batch_norm", default=True)

    hp.Float("learning_rate", 1e-3, 1e-2, sampling="log", default=3e-3)
    hp.Float("pruning_start_fraction", 0.0, 0.6, default=0.3)
    hp.Float("pruning_ramp_fraction", 0.2, 0.8, default=0.5)
    hp.Float("fc_sparsity", 0.0, 0.95, default=0.5)
    hp.Boolean("quantization_aware", default=False)


def new_space() -> HyperParameters:
    """A fresh HyperParameters object holding the whole space."""
    hp = HyperParameters()
    declare_space(hp)
    return hp


def hyperparameter_names() -> list[str]:
    """Every parameter name, in declaration order (the trials.csv columns)."""
    return [p.name for p in new_space().space]
