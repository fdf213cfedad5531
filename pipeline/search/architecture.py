"""One architecture description, planned once, read two ways.

``decode`` turns keras-tuner values into an :class:`Architecture`. ``plan``
turns an Architecture into a list of :class:`Node` with every tensor shape;
``pipeline.search.builder`` reads that plan as a tf_keras model and
``pipeline.search.costs`` reads the same plan as a resource graph, so the model that
trains and the figures that budget it cannot disagree.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pipeline.search.space import layer_prefix

BLOCK_POOL = 2


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One searched conv layer.

    Attributes:
        kind: Conv2D, DownsampledConv2D or SeparableConv2D.
        kernel: kernel size K (square).
        filters: output channels.
        reduced_filters: channels of the 1x1 reduction of a DownsampledConv2D
            (0 for other kinds).
    """

    kind: str
    kernel: int
    filters: int
    reduced_filters: int = 0


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A complete network, with every width fixed (no budget arithmetic left)."""

    input_shape: tuple[int, int, int]
    num_classes: int
    downsample_depth: bool
    downsample_rate: int
    blocks: tuple[tuple[ConvLayer, ...], ...]
    batch_norm: bool
    main_fc_units: int
    left_fc_units: int
    right_fc_units: int
    merge: str

    def with_channel_keep(self, keep: tuple[float, ...]) -> Architecture:
        """The narrower network left after structured (channel) pruning.

        Each conv layer of block b keeps ``max(1, round(filters * keep[b]))``
        output channels; FC widths stay as searched.
        """
        blocks = tuple(
            tuple(dataclasses.replace(layer, filters=kept_channels(layer.filters, k))
                  for layer in block)
            for block, k in zip(self.blocks, keep))
        return dataclasses.replace(self, blocks=blocks)


@dataclasses.dataclass(frozen=True)
class Compression:
    """Pruning targets: per conv block and for the FC layers."""

    block_sparsity: tuple[float, ...]
    fc_sparsity: float
    block_channel_keep: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Node:
    """One operator of the planned network and the tensor it produces.

    ``op`` is one of input, channel_max, max_pool, conv, depthwise, flatten,
    dense, add, concat; the last node, ``classifier``, outputs the logits.
    ``group`` names the pruning group of a
    prunable kernel (``block1``, ``block2``, ``fc``) or is None.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    kernel_weights: int = 0
    bias: int = 0
    group: str | None = None

    @property
    def size(self) -> int:
        """Number of elements of the output tensor."""
        n = 1
        for d in self.shape:
            n *= d
        return n


def kept_channels(filters: int, keep: float) -> int:
    """Channels left when a layer of ``filters`` keeps the fraction ``keep``."""
    return max(1, int(round(filters * keep)))


def decode(values: Mapping[str, Any], input_shape: tuple[int, int, int],
           num_classes: int) -> tuple[Architecture, Compression]:
    """Turns active hyperparameter values into an architecture and its pruning targets."""
    blocks = []
    for b in range(1, int(values["num_conv_blocks"]) + 1):
        layers = []
        for i in range(1, int(values[f"block{b}_num_layers"]) + 1):
            p = layer_prefix(b, i)
            kind = values[f"{p}_type"]
            filters = int(values[f"{p}_filters"])
            reduced = 0
            if kind == "DownsampledConv2D":
                reduced = max(1, int(round(filters * float(values[f"{p}_downsample_fraction"]))))
            layers.append(ConvLayer(kind, int(values[f"{p}_kernel"]), filters, reduced))
        blocks.append(tuple(layers))
    rate = int(values["input_downsampling_rate"]) if values["downsample_input"] else 1
    draft = Architecture(
        input_shape=tuple(input_shape), num_classes=num_classes,
        downsample_depth=bool(values["downsample_input_depth"]), downsample_rate=rate,
        blocks=tuple(blocks), batch_norm=bool(values["batch_norm"]),
        main_fc_units=0, left_fc_units=0, right_fc_units=0, merge=values["merge_type"])
    main, left, right = _fc_units(draft, values)
    arch = dataclasses.replace(draft, main_fc_units=main, left_fc_units=left, right_fc_units=right)
    n = len(blocks)
    compression = Compression(
        block_sparsity=tuple(float(values[f"block{b}_sparsity"]) for b in range(1, n + 1)),
        fc_sparsity=float(values["fc_sparsity"]),
        block_channel_keep=tuple(float(values[f"block{b}_channel_keep"]) for b in range(1, n + 1)))
    return arch, compression


def _fc_units(draft: Architecture, values: Mapping[str, Any]) -> tuple[int, int, int]:
    """Splits the FC weight budget into the widths of the main/left/right FC layers.

    Each active FC layer gets ``total * fraction / sum(active fractions)`` weights,
    i.e. ``units = that / input features`` (at least 1). With a Sum merge and a
    main FC, every merged vector takes the smallest of the computed widths;
    without a main FC, ``plan`` gives the branches the main path's width.
    """
    probe = dataclasses.replace(draft, left_fc_units=int(bool(values["left_branch"])),
                                right_fc_units=int(bool(values["right_branch"])))
    sizes = {n.name: n.size for n in plan(probe)}
    active: dict[str, float] = {}
    if int(values["num_fc_layers"]) == 1:
        active["main"] = float(values["fc_fraction_main"])
    if values["left_branch"]:
        active["left"] = float(values["fc_fraction_left"])
    if values["right_branch"]:
        active["right"] = float(values["fc_fraction_right"])
    total = float(values["total_fc_weights"])
    weight = sum(active.values())
    units = {}
    for path, fraction in active.items():
        share = fraction / weight if weight > 0 else 1.0 / len(active)
        units[path] = max(1, int(total * share / sizes[f"{path}_flatten"]))
    if values["merge_type"] == "Sum" and "main" in units:
        width = min(units.values())
        units = {path: width for path in units}
    # Sum without a main FC: plan() sizes the branch FCs to the main path's features.
    return units.get("main", 0), units.get("left", 0), units.get("right", 0)


def plan(arch: Architecture) -> list[Node]:
    """Lays out the network as operators with their output shapes.

    Convolutions use 'same' padding and stride 1; each block ends in a 2x2 max
    pool (skipped once the map is 1 pixel wide); the input spatial pooling uses
    its rate as pool size and stride ('valid' padding).
    """
    h, w, c = arch.input_shape
    nodes = [Node("input", "input", (), (h, w, c))]
    x = "input"
    if arch.downsample_depth and c > 1:
        c = 1
        nodes.append(Node("input_depth_pool", "channel_max", (x,), (h, w, c)))
        x = "input_depth_pool"
    if arch.downsample_rate > 1:
        r = min(arch.downsample_rate, h, w)
        h, w = h // r, w // r
        nodes.append(Node("input_pool", "max_pool", (x,), (h, w, c), {"pool": r}))
        x = "input_pool"
    block1_input = x
    block1_output = x
    for b, block in enumerate(arch.blocks, start=1):
        group = f"block{b}"
        for i, layer in enumerate(block, start=1):
            name = f"block{b}_layer{i}"
            k = layer.kernel
            if layer.kind == "Conv2D":
                nodes.append(_conv(name, x, (h, w), c, layer.filters, k, group, True, arch.batch_norm))
            elif layer.kind == "DownsampledConv2D":
                nodes.append(_conv(f"{name}_reduce", x, (h, w), c, layer.reduced_filters, 1,
                                   group, False, False))
                nodes.append(_conv(name, f"{name}_reduce", (h, w), layer.reduced_filters,
                                   layer.filters, k, group, True, arch.batch_norm))
            elif layer.kind == "SeparableConv2D":
                nodes.append(Node(f"{name}_depthwise", "depthwise", (x,), (h, w, c),
                                  {"kernel": k}, kernel_weights=k * k * c))
                nodes.append(_conv(name, f"{name}_depthwise", (h, w), c, layer.filters, 1,
                                   group, True, arch.batch_norm))
            else:
                raise ValueError(f"unknown layer type {layer.kind!r}")
            x, c = name, layer.filters
        if h >= BLOCK_POOL and w >= BLOCK_POOL:
            h, w = h // BLOCK_POOL, w // BLOCK_POOL
            nodes.append(Node(f"block{b}_pool", "max_pool", (x,), (h, w, c), {"pool": BLOCK_POOL}))
            x = f"block{b}_pool"
        if b == 1:
            block1_output = x
    nodes.append(Node("main_flatten", "flatten", (x,), (h * w * c,)))
    merged = ["main_flatten"]
    if arch.main_fc_units:
        nodes.append(_dense("main_fc", "main_flatten", h * w * c, arch.main_fc_units, True))
        merged = ["main_fc"]
    for side, source, units in (("left", block1_output, arch.left_fc_units),
                                ("right", block1_input, arch.right_fc_units)):
        if not units:
            continue
        if arch.merge == "Sum" and not arch.main_fc_units:
            units = h * w * c  # summed with the flattened main path, whatever its width now
        src = next(n for n in nodes if n.name == source)
        nodes.append(Node(f"{side}_flatten", "flatten", (source,), (src.size,)))
        nodes.append(_dense(f"{side}_fc", f"{side}_flatten", src.size, units, True))
        merged.append(f"{side}_fc")
    x = merged[0]
    if len(merged) > 1:
        widths = [next(n for n in nodes if n.name == m).size for m in merged]
        if arch.merge == "Sum":
            nodes.append(Node("merge", "add", tuple(merged), (widths[0],)))
        else:
            nodes.append(Node("merge", "concat", tuple(merged), (sum(widths),)))
        x = "merge"
    features = next(n for n in nodes if n.name == x).size
    nodes.append(_dense("classifier", x, features, arch.num_classes, False))
    return nodes


def _conv(name: str, x: str, hw: tuple[int, int], cin: int, cout: int, k: int,
          group: str, relu: bool, batch_norm: bool) -> Node:
    use_bias = relu  # the last conv of a layer has a bias (or a folded BN); inner ones are linear
    return Node(name, "conv", (x,), (hw[0], hw[1], cout),
                {"kernel": k, "relu": relu, "batch_norm": batch_norm, "use_bias": use_bias},
                kernel_weights=k * k * cin * cout, bias=cout if use_bias else 0, group=group)


def _dense(name: str, x: str, fin: int, units: int, relu: bool) -> Node:
    return Node(name, "dense", (x,), (units,), {"relu": relu},
                kernel_weights=fin * units, bias=units, group="fc")
