"""The ahead-of-time engine: plain C generated from an int8 .tflite.

`generate(data)` turns a model into two C files that, with
tflm_project/engine/aot/aot_kernels.c, compute exactly what TFLite's int8
reference kernels compute. Everything TFLite Micro does at run time in
Prepare (requantisation multipliers, activation clamps, padding, softmax
scaling) is done here in Python, with the same double-precision arithmetic
and the same rounding, and written as constants.

Memory plan: one static arena. The operator order is the one that minimises
the peak of live tensors (`costs.best_schedule`, the same computation as the
search's WM); offsets come from `costs.arena_plan`, the same function the
search budgets with, which places buffers so that the arena equals WM
whenever its bounded search finds such a placement; reshapes share their
input's bytes. A convolution's scratch (a sparse row's block list or its
expanded rows) is the largest part of the arena no tensor occupies while
it runs (`costs.scratch_spans`); a layer without room walks its bitmap
instead, so the engine needs no RAM beyond the arena and a small stack.

Weights: each CONV_2D and FULLY_CONNECTED kernel is stored dense or, when
smaller, as a per-row bitmap over blocks of 1 to 16 weights plus the values
of the blocks holding a nonzero, so flash follows the nonzero weights of a
pruned layer.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from pipeline.compress import tflite_model
from pipeline.compress.tflite_graph import Graph, Operator, Tensor, read_graph
from pipeline.deploy import aot_layout, aot_work
from pipeline.deploy.aot_quant import (activation_range, constant_filters, mean_multiplier, narrow_accumulators,
                                       quantize_multiplier)
from pipeline.errors import UserError
from pipeline.search import costs


SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "AVERAGE_POOL_2D",
                 "ADD", "CONCATENATION", "RESHAPE", "MEAN", "SOFTMAX", "QUANTIZE")


@dataclasses.dataclass(frozen=True)
class AotModel:
    """Generated sources and the figures the firmware build and the benchmark report."""

    source: str
    header: str
    arena_bytes: int
    kernel_bytes: int       # int8 kernel values plus sparsity bitmaps, as stored
    bias_bytes: int         # int32 biases, as stored
    quant_param_bytes: int  # per-channel multipliers and shifts
    nonzero_weight_bytes: int  # MS of the same model: nonzero kernel bytes + 4 * nonzero biases
    working_memory_bytes: int
    operators: tuple[str, ...] = ()  # the operators that run, in order: what the per-op profile names
    op_indices: tuple[int, ...] = ()  # the .tflite operator index of each of them
    op_work: tuple[dict[str, float], ...] = ()  # the counted work of each of them (aot_work), on a DSP core
    op_work_no_dsp: tuple[dict[str, float], ...] = ()  # the same on a core without the DSP extension

    def work_for(self, core: str) -> tuple[dict[str, float], ...]:
        """The counted work of each operator on ``core``, whose kernels' paths depend on its DSP extension."""
        return self.op_work if aot_work.has_dsp(core) else self.op_work_no_dsp

    @property
    def weight_bytes(self) -> int:
        """Kernel and bias bytes in flash (what MS counts, as actually stored)."""
        return self.kernel_bytes + self.bias_bytes


def _c_array(ctype: str, name: str, values: np.ndarray | list[int]) -> str:
    values = [int(v) for v in np.asarray(values).reshape(-1)] or [0]
    rows = [", ".join(str(v) for v in values[i:i + 24]) for i in range(0, len(values), 24)]
    return f"static const {ctype} {name}[{len(values)}] = {{\n  " + ",\n  ".join(rows) + "\n};\n"


class _Emitter:
    """Collects constant arrays, parameter structs and kernel calls."""

    def __init__(self, graph: Graph, offsets: dict[int, int], dense: frozenset[int] = frozenset(),
                 scratch: dict[int, tuple[int, int]] | None = None):
        self.graph, self.offsets, self.dense = graph, offsets, dense
        self.scratch = scratch or {}  # operator index -> (offset, bytes) of free arena while it runs
        self.arrays: list[str] = []
        self.calls: list[str] = []
        self.kernel_bytes = self.bias_bytes = self.quant_bytes = 0
        # what the work counts (aot_work) need of each kernel as stored: its block shift and stored mask
        # (None for dense), and whether a CONV_2D takes the im2col path
        self.stored: dict[str, tuple[int, np.ndarray] | None] = {}
        self.im2col: dict[int, bool] = {}
        self.gathered: dict[int, int] = {}  # CONV_2D run as one FC per output pixel: how many pixels
        # per requantisation name: aot_conv_params.narrow, and the biases as stored (constant_filters)
        self.narrow: dict[str, int] = {}
        self.biases: dict[str, np.ndarray] = {}

    def ptr(self, tensor: int) -> str:
        return f"arena + {self.offsets[tensor]}"

    def weights(self, name: str, kernel: np.ndarray, dense: bool = False) -> tuple[str, int | None]:
        """Stores a [rows][k] kernel in its smallest format (`aot_layout.smallest_format`), or dense when
        ``dense``; returns the aot_weights initialiser and the block shift (None: stored dense).

        Dense, or a block bitmap: each row cut into blocks of 2^shift weights,
        one bit per block, and the values of the blocks holding a nonzero.
        Shift 0 suits unstructured sparsity, shift 4 the 16-weight blocks the
        search prunes (pipeline.compress.block_pruning).
        """
        rows = kernel.reshape(kernel.shape[0], -1)
        size, shift = (rows.size, None) if dense else aot_layout.smallest_format(rows)
        self.kernel_bytes += size
        k = rows.shape[1]
        if shift is None:
            self.arrays.append(_c_array("int8_t", f"{name}_values", rows))
            self.stored[name] = None
            return f"{{{name}_values, 0, {k}, 0}}", None
        stored, bitmap = aot_layout.block_bitmap(rows, shift)
        self.stored[name] = (shift, stored)
        self.arrays.append(_c_array("uint8_t", f"{name}_bitmap", bitmap))
        self.arrays.append(_c_array("int8_t", f"{name}_values", rows[stored]))
        return f"{{{name}_values, {name}_bitmap, {k}, {shift}}}", shift

    def requant(self, name: str, x: Tensor, w: Tensor, y: Tensor, bias: Tensor | None,
                fold_input_offset: bool = False, depthwise: bool = False, channels: int = 0,
                store_bias: bool = True) -> str:
        """Stores multipliers, shifts and (unless all zero, or not ``store_bias``) biases; returns the
        bias initialiser. Notes in ``narrow`` whether the layer's accumulators are narrow.

        With ``fold_input_offset`` (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) the stored bias
        is bias + input_offset x the output channel's weight sum, always stored: the fast kernels
        then add no offset per weight. ``channels`` repeats a per-tensor multiplier once per
        output channel, as the convolution kernels read one per channel.
        """
        scales = w.scales if len(w.scales) > 1 else w.scales[:1] * max(channels, 1)
        pairs = [quantize_multiplier(float(x.scale) * float(s) / float(y.scale)) for s in scales]
        # one row per output channel: [out][...] kernels, or the last axis of a depthwise [1][kh][kw][out]
        per_channel = np.moveaxis(w.data, -1, 0) if depthwise else w.data
        values = np.zeros(per_channel.shape[0], np.int64) if bias is None or bias.data is None else bias.data
        values, pairs = constant_filters(per_channel, values, pairs, y.zero_point)
        self.arrays.append(_c_array("int32_t", f"{name}_multiplier", [p[0] for p in pairs]))
        self.arrays.append(_c_array("int8_t", f"{name}_shift", [p[1] for p in pairs]))
        self.quant_bytes += 5 * len(pairs)
        self.biases[name] = values
        self.narrow[name] = int(narrow_accumulators(per_channel, values, [p[1] for p in pairs]))
        if not store_bias:
            return "0"
        if fold_input_offset:
            return self.folded_bias(name, x, values, per_channel)
        if not np.any(values):
            return "0"  # TFLite adds all-zero biases to bias-free layers; the kernels accept none
        self.arrays.append(_c_array("int32_t", f"{name}_bias", values))
        self.bias_bytes += 4 * len(values)
        return f"{name}_bias"

    def folded_bias(self, name: str, x: Tensor, bias: np.ndarray, rows: np.ndarray) -> str:
        """Stores bias + input_offset x each output row's weight sum (``rows``: [out][...]); returns its name."""
        channels = rows.shape[0]
        values = bias.astype(np.int64) - int(x.zero_point) * rows.reshape(channels, -1).astype(np.int64).sum(axis=1)
        # int32 arithmetic wraps (the firmware is built with -fwrapv, as TFLite's sums wrap on the
        # device): a bias saturated at the int32 limits, as on a pruned-away channel, folds modulo 2^32
        values = (values + (1 << 31)) % (1 << 32) - (1 << 31)
        self.arrays.append(_c_array("int32_t", f"{name}_bias", values))
        self.bias_bytes += 4 * len(values)
        return f"{name}_bias"


def generate(data: bytes, label: str = "model") -> AotModel:
    """Generates the C sources of the AOT engine for an int8 .tflite."""
    graph = read_graph(data, label)
    missing = sorted({op.name for op in graph.operators if op.name not in SUPPORTED_OPS})
    if missing:
        raise UserError(f"{label} uses {', '.join(missing)}, which the AOT engine lacks: it supports "
                        f"{', '.join(SUPPORTED_OPS)}; run it with ENGINE=tflm (--engine tflm)")
    resources = tflite_model.resource_graph(data)
    wm, order_names = costs.best_schedule(resources)
    order = [int(name.split(":")[0]) for name in order_names]
    arena, placed = costs.arena_plan(resources, order_names)
    offsets = {int(t): offset for t, offset in placed.items()}
    # dense-for-speed stays within the flash the search promised for these weights
    allowance = costs.aot_weight_bytes(resources)
    spans = costs.scratch_spans(resources, order_names, placed, arena)
    scratch = {int(name.split(":")[0]): span for name, span in spans.items()}
    emit = _Emitter(graph, offsets, aot_layout.dense_layers(graph, allowance, scratch), scratch)
    by_index = {op.index: op for op in graph.operators}
    operators, op_indices, op_work, op_work_no_dsp = [], [], [], []
    for index in order:
        _emit_op(emit, by_index[index])
        if emit.calls and not emit.calls[-1].startswith("  aot_mark("):
            emit.calls.append(f"  aot_mark({len(operators)});\n")  # the op's end tick: per-op profile
            operators.append(_describe(graph, by_index[index]))
            op_indices.append(index)
            op_work.append(aot_layout.op_work(emit, by_index[index], dsp=True))
            op_work_no_dsp.append(aot_layout.op_work(emit, by_index[index], dsp=False))
    x, y = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    header = (f"/* Generated by pipeline/deploy/aot.py from {label}; do not edit. */\n"
              "#ifndef AOT_MODEL_H_\n#define AOT_MODEL_H_\n#include <stdint.h>\n"
              f"#define AOT_ARENA_BYTES {arena}\n#define AOT_INPUT_OFFSET {offsets[x.index]}\n"
              f"#define AOT_INPUT_BYTES {x.size}\n#define AOT_OUTPUT_OFFSET {offsets[y.index]}\n"
              f"#define AOT_OUTPUT_BYTES {y.size}\n#define AOT_OP_COUNT {len(operators)}\n"
              "void aot_model_invoke(int8_t* arena);\n"
              "void aot_mark(int op); /* engine_aot.c: notes the tick at which operator `op` ended */\n"
              "#endif\n")
    source = (f"/* Generated by pipeline/deploy/aot.py from {label}; do not edit. */\n"
              '#include "aot_fast.h"\n#include "aot_kernels.h"\n#include "aot_model.h"\n\n'
              + "".join(emit.arrays)
              + "\nvoid aot_model_invoke(int8_t* arena) {\n" + "".join(emit.calls) + "}\n")
    return AotModel(source, header, arena, emit.kernel_bytes, emit.bias_bytes, emit.quant_bytes,
                    costs.model_size_bytes(resources), wm, tuple(operators), tuple(op_indices), tuple(op_work),
                    tuple(op_work_no_dsp))


def write_sources(model: AotModel, folder: Path) -> None:
    """Writes aot_model.c and aot_model.h into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "aot_model.c").write_text(model.source)
    (folder / "aot_model.h").write_text(model.header)


def _emit_op(emit: _Emitter, op: Operator) -> None:
    t = emit.graph.tensors
    name = f"op{op.index}"
    o = op.options
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        x, w, y = t[op.inputs[0]], t[op.inputs[1]], t[op.outputs[0]]
        bias = t[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        depthwise = op.name == "DEPTHWISE_CONV_2D"
        kh, kw = (w.shape[1], w.shape[2])
        _, ih, iw, ic = x.shape
        _, oh, ow, oc = y.shape
        lo, hi = activation_range(o["fusedActivationFunction"], y)
        if not depthwise and _emit_gathered(emit, op, name, lo, hi):
            return
        bias_ref = emit.requant(name, x, w, y, bias, fold_input_offset=True, depthwise=depthwise)
        shift = None
        if depthwise:
            emit.arrays.append(_c_array("int8_t", f"{name}_values", w.data))
            emit.kernel_bytes += w.size
            weights = f"{{{name}_values, 0, {w.size}}}"
        else:
            weights, shift = emit.weights(name, w.data, op.index in emit.dense)
        dh, dw = o.get("dilationHFactor", 1), o.get("dilationWFactor", 1)
        ph = aot_layout.padding(o["padding"], o["strideH"], dh, ih, kh, oh)
        pw = aot_layout.padding(o["padding"], o["strideW"], dw, iw, kw, ow)
        extra = ""
        if not depthwise:
            inside_y, inside_x = aot_layout.geometry(op, t).inside_taps()
            border_ref = "0"
            if min(inside_y) < kh or min(inside_x) < kw:  # border outputs: their bias, unfolded, as a constant
                emit.arrays.append(_c_array("int32_t", f"{name}_border_bias", emit.biases[name]))
                emit.quant_bytes += 4 * oc
                border_ref = f"{name}_border_bias"
            im2col = aot_layout.im2col_sparse(op, t, shift, emit.scratch.get(op.index, (0, 0))[1])
            emit.im2col[op.index] = im2col
            extra = f", {border_ref}, {int(im2col)}"
        extra = (extra or ", 0, 0") + f", {emit.narrow[name]}"
        emit.arrays.append(
            f"static const aot_conv_params {name} = {{{ih}, {iw}, {ic}, {oh}, {ow}, {oc}, {kh}, {kw}, "
            f"{o['strideH']}, {o['strideW']}, {dh}, {dw}, {ph}, {pw}, {oc // ic if depthwise else 1}, "
            f"{-x.zero_point}, {y.zero_point}, {lo}, {hi}, {name}_multiplier, {name}_shift, "
            f"{bias_ref}, {weights}{extra}}};\n")
        if depthwise:
            emit.calls.append(f"  AOT_DEPTHWISE_CONV2D({name}, {emit.ptr(x.index)}, {emit.ptr(y.index)});\n")
        else:  # inlined with the layer's constants: specialised per layer (engine/aot/aot_fast.h)
            at, size = emit.scratch.get(op.index, (0, 0))
            emit.calls.append(f"  AOT_CONV2D({name}, {emit.ptr(x.index)}, {emit.ptr(y.index)}, "
                              f"{f'arena + {at}' if size else '0'}, {size});\n")
    elif op.name == "FULLY_CONNECTED":
        x, w, y = t[op.inputs[0]], t[op.inputs[1]], t[op.outputs[0]]
        bias = t[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        lo, hi = activation_range(o["fusedActivationFunction"], y)
        g = aot_layout.geometry(op, t)
        if aot_layout.fast_fc(g):  # a 1x1 convolution over its rows of input: the fast CONV_2D kernel, inlined
            bias_ref = emit.requant(name, x, w, y, bias, fold_input_offset=True, channels=g.out_c)
            weights, _ = emit.weights(name, w.data, op.index in emit.dense)
            emit.im2col[op.index] = False
            emit.arrays.append(_pointwise_params(name, name, g.in_h, g.in_c, g.out_c, x, y, lo, hi, bias_ref, weights,
                                             emit.narrow[name]))
            at, size = emit.scratch.get(op.index, (0, 0))
            emit.calls.append(f"  AOT_CONV2D({name}, {emit.ptr(x.index)}, {emit.ptr(y.index)}, "
                              f"{f'arena + {at}' if size else '0'}, {size});\n")
            return
        bias_ref = emit.requant(name, x, w, y, bias)
        weights, _ = emit.weights(name, w.data, op.index in emit.dense)
        emit.arrays.append(
            f"static const aot_fc_params {name} = {{{g.in_h}, {w.shape[1]}, {w.shape[0]}, {-x.zero_point}, "
            f"{y.zero_point}, {lo}, {hi}, {name}_multiplier, {name}_shift, {int(len(w.scales) > 1)}, "
            f"{bias_ref}, {weights}}};\n")
        emit.calls.append(f"  aot_fully_connected(&{name}, {emit.ptr(x.index)}, {emit.ptr(y.index)});\n")
    elif op.name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        x, y = t[op.inputs[0]], t[op.outputs[0]]
        _, ih, iw, c = x.shape
        _, oh, ow, _ = y.shape
        lo, hi = activation_range(o["fusedActivationFunction"], y)
        g = aot_layout.geometry(op, t)
        ph, pw = g.pad_h, g.pad_w
        emit.arrays.append(
            f"static const aot_pool_params {name} = {{{ih}, {iw}, {c}, {oh}, {ow}, {o['filterHeight']}, "
            f"{o['filterWidth']}, {o['strideH']}, {o['strideW']}, {ph}, {pw}, {lo}, {hi}}};\n")
        if op.name == "MAX_POOL_2D":  # inlined with the layer's constants (engine/aot/aot_fast.h)
            emit.calls.append(f"  AOT_MAX_POOL({name}, {emit.ptr(x.index)}, {emit.ptr(y.index)});\n")
        else:
            emit.calls.append(f"  aot_average_pool(&{name}, {emit.ptr(x.index)}, {emit.ptr(y.index)});\n")
    elif op.name == "ADD":
        a, b, y = t[op.inputs[0]], t[op.inputs[1]], t[op.outputs[0]]
        if a.shape != b.shape:
            raise UserError(f"ADD with broadcasting ({a.shape} + {b.shape}) is not supported by the AOT engine")
        twice_max = 2 * max(float(a.scale), float(b.scale))
        m1, s1 = quantize_multiplier(float(a.scale) / twice_max)
        m2, s2 = quantize_multiplier(float(b.scale) / twice_max)
        mo, so = quantize_multiplier(twice_max / ((1 << 20) * float(y.scale)))
        lo, hi = activation_range(o.get("fusedActivationFunction", 0), y)
        emit.arrays.append(
            f"static const aot_add_params {name} = {{{y.size}, {-a.zero_point}, {-b.zero_point}, "
            f"{y.zero_point}, 20, {m1}, {m2}, {mo}, {s1}, {s2}, {so}, {lo}, {hi}}};\n")
        emit.calls.append(f"  aot_add(&{name}, {emit.ptr(a.index)}, {emit.ptr(b.index)}, "
                          f"{emit.ptr(y.index)});\n")
    elif op.name == "CONCATENATION":
        y = t[op.outputs[0]]
        inputs = [t[i] for i in op.inputs]
        if o.get("axis", -1) % len(y.shape) != len(y.shape) - 1:
            raise UserError(f"CONCATENATION on axis {o.get('axis')} is not supported by the AOT engine "
                            "(only the channel axis)")
        for i in inputs:
            if (i.scale, i.zero_point) != (y.scale, y.zero_point):
                raise UserError("CONCATENATION of inputs with different quantisation is not supported "
                                "by the AOT engine")
        depths = [i.shape[-1] for i in inputs]
        outer = y.size // y.shape[-1]
        emit.arrays.append(_c_array("int32_t", f"{name}_depths", depths))
        pointers = ", ".join(f"{emit.ptr(i.index)}" for i in inputs)
        emit.calls.append(f"  {{ const int8_t* in[] = {{{pointers}}}; aot_concat_last_axis({outer}, "
                          f"{len(inputs)}, in, {name}_depths, {emit.ptr(y.index)}); }}\n")
    elif op.name == "QUANTIZE":
        x, y = t[op.inputs[0]], t[op.outputs[0]]
        if x.dtype != np.int8 or y.dtype != np.int8:
            raise UserError("QUANTIZE from or to a type other than int8 is not supported by the AOT engine")
        multiplier, shift = quantize_multiplier(float(x.scale) / float(y.scale))
        emit.calls.append(f"  aot_requantize({y.size}, {x.zero_point}, {y.zero_point}, {multiplier}, {shift}, "
                          f"{emit.ptr(x.index)}, {emit.ptr(y.index)});\n")
    elif op.name == "MEAN":
        x, y = t[op.inputs[0]], t[op.outputs[0]]
        outer, count, inner = _mean_layout(x, t[op.inputs[1]])
        multiplier, shift = mean_multiplier(float(x.scale) / float(y.scale), count)
        emit.calls.append(f"  aot_mean({outer}, {count}, {inner}, {x.zero_point}, {y.zero_point}, "
                          f"{multiplier}, {shift}, {emit.ptr(x.index)}, {emit.ptr(y.index)});\n")
    elif op.name == "SOFTMAX":
        x, y = t[op.inputs[0]], t[op.outputs[0]]
        if y.zero_point != -128 or float(y.scale) != 1.0 / 256:
            raise UserError("SOFTMAX output must have zero point -128 and scale 1/256 (TFLite's int8 layout)")
        real = min(float(np.float32(o.get("beta", 1.0))) * float(x.scale) * (1 << 26), (1 << 31) - 1.0)
        multiplier, left_shift = quantize_multiplier(real)
        diff_min = -math.floor(31.0 * (1 << 26) / (1 << left_shift))
        depth = y.shape[-1]
        emit.arrays.append(f"static const aot_softmax_params {name} = {{{y.size // depth}, {depth}, "
                           f"{multiplier}, {left_shift}, {diff_min}}};\n")
        emit.calls.append(f"  aot_softmax(&{name}, {emit.ptr(x.index)}, {emit.ptr(y.index)});\n")


def _emit_gathered(emit: _Emitter, op: Operator, name: str, lo: int, hi: int) -> bool:
    """A CONV_2D on a map so small that its windows are mostly padding (aot_work.gathered_chosen),
    emitted as one fully connected layer per output pixel over the whole input, when that stores no
    more bytes than the kernel: no tap of padding is visited. Returns whether it was."""
    t = emit.graph.tensors
    x, w, y = t[op.inputs[0]], t[op.inputs[1]], t[op.outputs[0]]
    g = aot_layout.geometry(op, t)
    dense = op.index in emit.dense
    kernels = aot_layout.gathered_if_smaller(g, w.data, dense)
    if kernels is None:
        return False
    bias = t[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    # the multipliers and shifts, shared by every pixel; each pixel's accumulator sums a subset of the
    # kernel's taps, so the kernel's accumulator bound (emit.narrow) holds for it
    emit.requant(name, x, w, y, bias, store_bias=False)
    for p, rows in enumerate(kernels):
        pixel = f"{name}_{p}"
        bias_ref = emit.folded_bias(pixel, x, emit.biases[name], rows)
        weights, _ = emit.weights(pixel, rows, dense)
        emit.arrays.append(_pointwise_params(pixel, name, 1, rows.shape[1], g.out_c, x, y, lo, hi, bias_ref, weights,
                                               emit.narrow[name]))
        emit.calls.append(f"  AOT_CONV2D({pixel}, {emit.ptr(x.index)}, {emit.ptr(y.index)} + {p * g.out_c}, 0, 0);\n")
    emit.gathered[op.index] = len(kernels)
    emit.im2col[op.index] = False
    return True


def _pointwise_params(name: str, quant: str, pixels: int, in_c: int, out_c: int, x: Tensor, y: Tensor,
                      lo: int, hi: int, bias_ref: str, weights: str, narrow: int) -> str:
    """The aot_conv_params of a 1x1 convolution over ``pixels`` contiguous rows of ``in_c`` inputs
    (a FULLY_CONNECTED, or one pixel of a gathered CONV_2D), with ``quant``'s multipliers and shifts."""
    return (f"static const aot_conv_params {name} = {{{pixels}, 1, {in_c}, {pixels}, 1, {out_c}, 1, 1, 1, 1, 1, 1, "
            f"0, 0, 1, {-x.zero_point}, {y.zero_point}, {lo}, {hi}, {quant}_multiplier, {quant}_shift, {bias_ref}, "
            f"{weights}, 0, 0, {narrow}}};\n")


def _describe(graph: Graph, op: Operator) -> str:
    """An operator as the profile names it: type, input and output shapes, kernel size if any."""
    t = graph.tensors
    shape = lambda i: "x".join(str(d) for d in t[i].shape[1:])  # noqa: E731
    text = f"{op.name} {shape(op.inputs[0])}->{shape(op.outputs[0])}"
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        w = t[op.inputs[1]]
        stored = "dense" if not np.any(w.data == 0) else f"{np.mean(w.data == 0):.0%} zero"
        text += f" k{w.shape[1]}x{w.shape[2]} {stored}"
    return text


def _mean_layout(x: Tensor, axis: Tensor) -> tuple[int, int, int]:
    """MEAN's input as [outer][count][inner]: the reduced axes must be adjacent (e.g. H, W of NHWC)."""
    rank = len(x.shape)
    axes = sorted({int(a) % rank for a in np.asarray(axis.data).reshape(-1)})
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise UserError(f"MEAN over axes {axes} of a {list(x.shape)} tensor is not supported by the AOT "
                        "engine (only adjacent axes, as in global average pooling)")
    outer = int(np.prod(x.shape[:axes[0]], dtype=np.int64))
    count = int(np.prod(x.shape[axes[0]:axes[-1] + 1], dtype=np.int64))
    return outer, count, x.size // (outer * count)
