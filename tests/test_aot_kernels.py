"""The AOT engine's fast kernels compute exactly what its portable reference kernels and host
TFLite Micro compute, on both cores (the M4's DSP path and the M0's plain C), run in QEMU.

Two kinds of model: nine designed to reach every path (padding, stride, dilation, depth
multipliers, odd channel counts, kernels wider than tall, block-sparse rows with whole filters
pruned, blocks of 16 listed, walked from a register where the arena has no byte to spare,
blocks straddling runs, single output pixels over their whole input, maps smaller than the
kernel, and dense layers over small windows), and random ones drawn from seeded
generators (shapes, strides, dilations, padding, depth multipliers, channel counts, pooling,
sparsity and block sizes per layer), so that combinations nobody designed are tried as well.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import tf_keras as keras

from pipeline.compress import tflite_model
from pipeline.deploy import aot
from pipeline.deploy.device import run_device

LAYERS = {
    "padded": [("conv", dict(filters=5, kernel_size=3, padding="same"), 0.0),
               ("conv", dict(filters=11, kernel_size=4, padding="same"), 0.6),
               ("depthwise", dict(kernel_size=3, depth_multiplier=2, strides=2, padding="same"), 0.0),
               ("conv", dict(filters=7, kernel_size=1), 0.7)],
    "strided_dilated": [("conv", dict(filters=3, kernel_size=(3, 5), strides=2, padding="same"), 0.5),
                        ("conv", dict(filters=9, kernel_size=3, dilation_rate=2, padding="same"), 0.4),
                        ("conv", dict(filters=6, kernel_size=(2, 3), strides=(2, 1)), 0.0),
                        ("depthwise", dict(kernel_size=(3, 2), depth_multiplier=1, dilation_rate=(1, 2),
                                           padding="same"), 0.0)],
    # blocks of 16 that divide each run (3 x 16 inputs): the listed interior and border walks, with
    # room in the arena for the list (the first layer is the peak); depth multiplier 1 over 6
    # channels: four lanes and a remainder of two; the first layer's rows (5 x 5 x 2) are not a
    # whole number of blocks per run: the general walk
    "blocks_of_16": [("conv", dict(filters=16, kernel_size=5, strides=2, padding="same"), 0.7),
                     ("conv", dict(filters=10, kernel_size=3, strides=2, padding="same"), 0.8),
                     ("conv", dict(filters=6, kernel_size=1), 0.5),
                     ("depthwise", dict(kernel_size=3, depth_multiplier=1, padding="same"), 0.0)],
    # the arena's peak is this layer's input and output, so no free byte is left for a block list:
    # its rows of nine 16-weight blocks are walked from a register
    # (each block is one tap's 16 channels: border outputs take their inside blocks
    # whole and pairs of outputs share each weight load)
    "peak_sparse": [("conv", dict(filters=32, kernel_size=3, padding="same"), 0.8)],
    # the same with a dilated kernel: the next block's window offset jumps by the dilation
    "peak_dilated": [("conv", dict(filters=16, kernel_size=3, dilation_rate=2, padding="same"), 0.8)],
    # the same at the peak, but 16-weight blocks that straddle taps of 24 channels (a run of two taps
    # is three blocks): the register walk with border outputs clipped per block
    "peak_two_taps": [("conv", dict(filters=16, kernel_size=2, padding="same"), 0.85)],
    # single output pixels over their whole input (fully connected layers as convolutions): a 4x4
    # kernel over the 4x4x5 input (rows of five 16-weight blocks), then a 1x1 one over 37 channels
    # (two blocks and a short last one of 5): each row's bitmap walked once
    "single_pixel": [("conv", dict(filters=37, kernel_size=4), 0.6),
                     ("conv", dict(filters=9, kernel_size=1), 0.5)],
    # maps smaller than the kernel, windows mostly padding: a 5x5 kernel over 2x2x6 (as a search's
    # trial had it), then a strided 3x3 to one pixel, each run as one FC per output pixel
    "small_map": [("conv", dict(filters=27, kernel_size=5, padding="same"), 0.3),
                  ("conv", dict(filters=9, kernel_size=3, strides=2, padding="same"), 0.0)],
    # dense layers over small windows (as a grayscale model's first layers): a dilated 3x3 over one
    # channel to an odd number of filters, then a padded 2x2 over 7 channels (28 weights): each
    # interior window copied once and every filter run against it on the M4 (conv_window)
    "small_windows": [("conv", dict(filters=7, kernel_size=3, dilation_rate=2), 0.0),
                      ("conv", dict(filters=4, kernel_size=2, padding="same"), 0.0)],
}
INPUTS = {"padded": (9, 7, 3), "strided_dilated": (13, 12, 5), "blocks_of_16": (16, 16, 2), "peak_sparse": (8, 8, 16),
          "peak_two_taps": (8, 8, 24), "peak_dilated": (8, 8, 16), "single_pixel": (4, 4, 5), "small_map": (2, 2, 6),
          "small_windows": (12, 12, 1)}
BLOCK = {"padded": 4, "strided_dilated": 4, "blocks_of_16": 16, "peak_sparse": 16, "peak_two_taps": 16, "peak_dilated": 16,
         "single_pixel": 16, "small_map": 16, "small_windows": 16}
RANDOM_SEEDS = range(8)
_CONV_PARAMS = re.compile(r"aot_conv_params op\d+ = \{([-\d, ]+), [-\d]+, [-\d]+, [-\d]+, [-\d]+, "
                          r"op\d+_multiplier, .*?\{op\d+_values, (\w+), (\d+), (\d)\}(?:, \w+, (\d))?(?:, (\d))?\};")
_CONV_CALLS = re.compile(r"AOT_CONV2D\((op\d+), [^,]+, [^,]+, [^,]+, (\d+)\)")


def _random_case(seed: int) -> tuple[tuple[int, int, int], list[tuple[str, dict, float, int]]]:
    """A random input shape and 3-5 layers (kind, Keras options, sparsity, block) that fit it."""
    rng = np.random.default_rng(1000 + seed)
    shape = (int(rng.integers(5, 15)), int(rng.integers(5, 15)), int(rng.integers(1, 7)))
    h, w, c = shape
    layers = []
    for _ in range(int(rng.integers(3, 6))):
        kind = str(rng.choice(["conv", "conv", "depthwise", "pool"]))
        kernel = tuple(int(k) for k in rng.integers(1, 6 if kind != "pool" else 4, 2))
        dilated = kind != "pool" and rng.random() < 0.3  # Keras: dilation only with stride 1
        dilation = tuple(int(d) for d in rng.integers(1, 4, 2)) if dilated else (1, 1)
        strides = (1, 1) if dilated else tuple(int(s) for s in rng.integers(1, 3, 2))
        span = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
        padding = str(rng.choice(["same", "valid"])) if span[0] <= h and span[1] <= w else "same"
        out = [(n - (s if padding == "valid" else 1)) // t + 1
               for n, s, t in zip((h, w), span, strides)]
        if min(out) < 1:
            continue
        if kind == "pool":
            options = dict(pool_size=kernel, strides=strides, padding=padding)
        else:
            options = dict(kernel_size=kernel, strides=strides, dilation_rate=dilation, padding=padding)
        if kind == "conv":
            options["filters"] = int(rng.integers(1, 20))
        elif kind == "depthwise":
            options["depth_multiplier"] = int(rng.choice([1, 1, 2, 3]))
        sparsity = float(rng.choice([0.0, 0.6, 0.75, 0.9])) if kind == "conv" else 0.0
        layers.append((kind, options, sparsity, int(rng.choice([1, 2, 4, 8, 16]))))
        h, w = out
        c = options.get("filters", c * options.get("depth_multiplier", 1))
    return shape, layers


def _sparse_paths(source: str) -> list[str]:
    """How the fast CONV_2D kernel runs each block-sparse layer of generated code (aot_conv_impl.h's
    tests, on the layer's constants): rows expanded into scratch and run dense, blocks listed in
    scratch once per row (as window offsets, or as starts in a contiguous window), a single output
    pixel's rows each walked once ("single pixel"), windows copied
    into scratch (im2col), the row's bitmap held in a register (rows of up to 32 blocks; "masked
    taps" where each block lies within one tap), or the bitmap walked."""
    scratch = dict(_CONV_CALLS.findall(source))
    paths = []
    for match in _CONV_PARAMS.finditer(source):
        ih, iw, ic, oh, ow, oc, kh, kw, sh, sw, dh, dw, ph, pw, _ = (int(v) for v in match[1].split(", "))
        bitmap, k, shift, im2col = match[2], int(match[3]), int(match[4]), match[5] == "1"
        name = match[0].split(" = ")[0].split()[-1]
        room = int(scratch[name])
        if bitmap == "0":
            continue
        run_len, runs = (kw * ic, kh) if dw == 1 else (ic, kh * kw)
        blocks = run_len * runs >> shift
        contiguous = (kh == kw == 1 and ph == pw == 0) or (
            oh == ow == 1 and (ih, iw) == (kh, kw) and ph == pw == 0 and dh == dw == 1)
        if contiguous and oh == ow == 1:
            paths.append("single pixel")
        elif contiguous and shift >= 2 and 2 * (k >> shift) <= room:
            paths.append("listed contiguous")
        elif im2col and 2 * ((k + 3) & ~3) <= room:
            paths.append("im2col")
        elif 2 * k <= room and oh * ow >= 4 and shift < 3:
            paths.append("expanded")
        elif run_len % (1 << shift) == 0 and not contiguous and 6 * blocks <= room and run_len < 256:
            paths.append("listed")
        elif run_len % (1 << shift) == 0 and not contiguous and blocks <= 32:
            paths.append("masked taps" if ic % (1 << shift) == 0 else "masked")
        else:
            paths.append("walked")
    return paths


def _case(name: str) -> tuple[tuple[int, int, int], list[tuple[str, dict, float, int]]]:
    if name.startswith("random"):
        return _random_case(int(name.removeprefix("random")))
    return INPUTS[name], [(kind, options, sparsity, BLOCK[name]) for kind, options, sparsity in LAYERS[name]]


def _prune_blocks(kernel: np.ndarray, sparsity: float, block: int, rng: np.random.Generator) -> np.ndarray:
    """Zeroes random blocks of weights along each filter's [kh][kw][in] row, and one whole filter."""
    if sparsity == 0:
        return kernel
    rows = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1).copy()
    for row in rows:
        for start in range(0, row.size, block):
            if rng.random() < sparsity:
                row[start:start + block] = 0
    rows[rng.integers(len(rows))] = 0
    return np.moveaxis(rows.reshape(kernel.shape[-1], *kernel.shape[:-1]), 0, -1)


def _convert(name: str) -> tuple[bytes, tuple[int, int, int], np.random.Generator]:
    model, shape, rng = _build(name)
    return tflite_model.convert_int8(model, rng.normal(0, 1, (64, *shape)).astype(np.float32)), shape, rng


def _build(name: str) -> tuple[keras.Model, tuple[int, int, int], np.random.Generator]:
    """The case's float model, its layers' kernels block-pruned, with random biases."""
    shape, layers = _case(name)
    rng = np.random.default_rng(7)
    keras.utils.set_random_seed(7)
    x = inputs = keras.layers.Input(shape)
    for kind, options, _, _ in layers:
        if kind == "pool":
            x = keras.layers.MaxPooling2D(**options)(x)
        else:
            layer = keras.layers.Conv2D if kind == "conv" else keras.layers.DepthwiseConv2D
            x = layer(activation="relu", **options)(x)
    # random cases end in global pooling, so their convolutions dominate MS and the generator
    # keeps the pruned ones sparse rather than spending the flash allowance on storing them dense
    head = keras.layers.GlobalAveragePooling2D() if name.startswith("random") else keras.layers.Flatten()
    model = keras.Model(inputs, keras.layers.Dense(4)(head(x)))
    convs = [layer for layer in model.layers
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))][:len(layers)]
    for layer, (_, _, sparsity, block) in zip(convs, [spec for spec in layers if spec[0] != "pool"]):
        kernel, *rest = layer.get_weights()
        layer.set_weights([_prune_blocks(kernel, sparsity, block, rng),
                           *[rng.normal(0, 0.1, r.shape) for r in rest]])
    return model, shape, rng


@pytest.fixture(scope="module", params=sorted(LAYERS) + [f"random{seed}" for seed in RANDOM_SEEDS])
def kernel_model(request, tmp_path_factory):
    """An int8 model of the case's layers with pruned kernels, and test inputs beside it."""
    name = request.param
    flatbuffer, shape, rng = _convert(name)
    folder = tmp_path_factory.mktemp(name)
    (folder / "model_int8.tflite").write_bytes(flatbuffer)
    np.savez(folder / "test_samples.npz", x_int8=rng.integers(-128, 128, (6, *shape), dtype=np.int8),
             y=np.zeros(6, np.int64))
    return folder / "model_int8.tflite"


@pytest.mark.parametrize("board", ["qemu-stm32f4", "qemu-microbit"])
def test_fast_kernels_equal_the_reference_kernels_and_host_tflm(kernel_model, board, tmp_path):
    generated = aot.generate(kernel_model.read_bytes())
    designed = not kernel_model.parent.name.startswith("random")
    fast = run_device(kernel_model, board, "aot", tmp_path / "fast")
    reference = run_device(kernel_model, board, "aot", tmp_path / "reference", aot_kernels="reference")
    assert fast["outputs_match"] == reference["outputs_match"] == 1.0  # both equal host TFLM, bit for bit
    if designed:
        assert fast["latency_instructions"] < reference["latency_instructions"]
    assert len(fast["operators"]) == len(generated.operators) and all(o["latency"] > 0 for o in fast["operators"])


def test_the_kernel_models_reach_every_sparse_path_block_size_and_layer_kind():
    """What the QEMU test above runs through: every way a block-sparse row is computed, with
    every block size, random layers of every kind and option, dense layers over small windows
    (conv_window, on the M4), and every layer through the short requantisation, with the
    pruned-away filters' constants rewritten to be narrow."""
    shifts, paths, options = set(), set(), set()
    constant_filters = windows = 0
    for name in sorted(LAYERS) + [f"random{seed}" for seed in RANDOM_SEEDS]:
        generated = aot.generate(_convert(name)[0])
        source = generated.source
        windows += sum(work["window_macs"] > 0 for work in generated.op_work)  # dense small windows, on the M4
        shifts |= {int(v) for v in re.findall(r"_bitmap, \d+, (\d)\}", source)}
        paths |= set(_sparse_paths(source))
        # every layer takes the short requantisation, pruned-away filters given narrow constants
        assert {m[6] for m in _CONV_PARAMS.finditer(source)} == {"1"}, name
        constant_filters += "1073741824" in source
        if re.search(r"aot_conv_params op\d+_\d+ = ", source):  # a small map's layer, one FC per pixel
            paths.add("gathered")
        if name.startswith("random"):
            for kind, o, sparsity, _ in _case(name)[1]:
                options |= {kind, o["padding"], f"sparse {kind}" if sparsity else kind,
                            "strided" if max(o["strides"]) > 1 else "", "dilated" if max(o.get("dilation_rate", (1,))) > 1 else "",
                            "multiplier" if o.get("depth_multiplier", 1) > 1 else "",
                            "odd channels" if o.get("filters", 2) % 2 else ""}
    assert shifts == {0, 1, 2, 3, 4}
    assert constant_filters >= 8  # each sparse case prunes one whole filter (aot_quant.constant_filters)
    assert windows >= 4
    assert paths == {"expanded", "listed", "listed contiguous", "single pixel", "im2col", "masked", "masked taps",
                     "walked", "gathered"}
    assert {"conv", "sparse conv", "depthwise", "pool", "same", "valid", "strided", "dilated", "multiplier",
            "odd channels"} <= options


def test_the_latency_models_count_of_work_follows_the_path_each_sparse_layer_takes():
    """aot_work mirrors aot_conv_impl.h's choice of path: the work it counts for each block-sparse
    layer falls on the path the generated constants send that layer down."""
    # what each path always counts (a listed row pruned away entirely is a constant instead)
    counter = {"listed contiguous": ("listed_outputs", "constant_outputs"), "single pixel": ("single_macs",),
               "im2col": ("im2col_bytes",),
               "expanded": ("expand_bytes",)}
    walks = ("listed", "masked", "masked taps", "walked")
    seen = set()
    for name in sorted(LAYERS) + [f"random{seed}" for seed in RANDOM_SEEDS]:
        generated = aot.generate(_convert(name)[0])
        paths, works = _sparse_paths(generated.source), _bitmap_layers_work(generated)
        assert len(paths) == len(works), name
        for path, work in zip(paths, works):
            seen.add(path)
            others = {c for p, cs in counter.items() if p != path for c in cs} - set(counter.get(path, ()))
            assert not any(work[c] for c in others - {"constant_outputs"}), (name, path, work)
            if path in counter:
                assert sum(work[c] for c in counter[path]) > 0, (name, path, work)
            else:  # the bitmap is read per output only where the row's blocks are neither listed nor masked
                bits = work["walk_bits"] + work["unaligned_bits"] + work["contiguous_bits"]
                assert (bits > 0) == (path == "walked" and work["walk_blocks"] > 0), (name, path, work)
    assert seen == set(counter) | set(walks)


def _bitmap_layers_work(generated: aot.AotModel) -> list[dict[str, float]]:
    """The counted work of the CONV_2D layers stored as a block bitmap, in the generated file's order."""
    by_index = dict(zip(generated.op_indices, generated.op_work))
    layers = []
    for match in _CONV_PARAMS.finditer(generated.source):
        if match[2] != "0":
            layers.append(by_index[int(re.search(r"op(\d+) = ", match[0])[1])])
    return layers


def _fully_connected_model(folder) -> tuple[bytes, np.ndarray]:
    """Keras Dense layers as TFLite converts them: one over every position of a feature map (36 rows
    of 4, keep_num_dims), a block-sparse one over a flattened map, and a small dense head."""
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    x = inputs = keras.layers.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 1, activation="relu")(x)
    x = keras.layers.Dense(5, activation="relu")(keras.layers.Reshape((36, 4))(x))
    sparse = keras.layers.Dense(40, activation="relu")
    model = keras.Model(inputs, keras.layers.Dense(3)(sparse(keras.layers.Flatten()(x))))
    kernel, bias = sparse.get_weights()  # [in][out]: blocks of 16 inputs pruned per output
    for o in range(kernel.shape[1]):
        for start in range(0, kernel.shape[0], 16):
            if rng.random() < 0.6:
                kernel[start:start + 16, o] = 0
    sparse.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
    flatbuffer = tflite_model.convert_int8(model, rng.normal(0, 1, (64, 6, 6, 3)).astype(np.float32))
    (folder / "model_int8.tflite").write_bytes(flatbuffer)
    np.savez(folder / "test_samples.npz", x_int8=rng.integers(-128, 128, (6, 6, 6, 3), dtype=np.int8),
             y=np.zeros(6, np.int64))
    return flatbuffer, kernel


@pytest.mark.parametrize("board", ["qemu-stm32f4", "qemu-microbit"])
def test_fully_connected_layers_run_as_convolutions_and_equal_host_tflm(board, tmp_path):
    """A user's Dense layers (FULLY_CONNECTED) take the fast convolution kernels as 1x1
    convolutions over their rows of input: the per-position one runs 36 pixels, the pruned one a
    single pixel from its bitmap. Both engines' kernels equal host TFLite Micro, and the fast one
    takes fewer instructions for every FULLY_CONNECTED."""
    flatbuffer, _ = _fully_connected_model(tmp_path)
    generated = aot.generate(flatbuffer)
    assert "aot_fully_connected" not in generated.source
    assert [name.split()[0] for name in generated.operators].count("FULLY_CONNECTED") == 3
    conv_params = [m[1] for m in _CONV_PARAMS.finditer(generated.source)]
    assert any(p.startswith("36, 1, 4, 36, 1, 5, 1, 1,") for p in conv_params)  # 36 rows of 4, as pixels
    assert re.search(r"\{op\d+_values, op\d+_bitmap, 180, 4\}", generated.source)  # 16-weight blocks
    model = tmp_path / "model_int8.tflite"
    fast = run_device(model, board, "aot", tmp_path / "fast")
    reference = run_device(model, board, "aot", tmp_path / "reference", aot_kernels="reference")
    assert fast["outputs_match"] == reference["outputs_match"] == 1.0
    for op, f, r in zip(generated.operators, fast["operators"], reference["operators"]):
        if op.startswith("FULLY_CONNECTED"):
            assert f["latency"] < r["latency"], (op, f, r)


def _dead_relu_model(folder) -> bytes:
    """A 1x1 convolution whose ReLU is all but dead on the calibration data (each bias just below
    minus its largest pre-activation), so its output scale is tiny and its requantisation
    multiplies (shift > 0): outside the short requantisation, between two layers inside it."""
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    calibration = rng.normal(0, 1, (64, 6, 6, 2)).astype(np.float32)
    x = inputs = keras.layers.Input((6, 6, 2))
    first = keras.layers.Conv2D(6, 3, padding="same", activation="relu")
    dead = keras.layers.Conv2D(5, 1, activation="relu")
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(dead(first(x)))))
    kernel, _ = dead.get_weights()
    features = keras.Model(inputs, first.output).predict(calibration, verbose=0)
    top = np.einsum("nhwc,co->nhwo", features, kernel[0, 0]).reshape(-1, 5).max(axis=0)
    dead.set_weights([kernel, -top + 0.002 * np.abs(top)])
    flatbuffer = tflite_model.convert_int8(model, calibration)
    (folder / "model_int8.tflite").write_bytes(flatbuffer)
    np.savez(folder / "test_samples.npz", x_int8=rng.integers(-128, 128, (6, 6, 6, 2), dtype=np.int8),
             y=np.zeros(6, np.int64))
    return flatbuffer


@pytest.mark.parametrize("board", ["qemu-stm32f4", "qemu-microbit"])
def test_a_layer_outside_the_short_requantisation_takes_the_full_one_and_equals_host_tflm(board, tmp_path):
    """The generator gives the short requantisation (aot_conv_params.narrow) only to layers whose
    accumulators it proved narrow and whose shifts divide; the dead ReLU's layer, whose shift
    multiplies, keeps TFLite's full double rounding, and both give host TFLite Micro's outputs."""
    generated = aot.generate(_dead_relu_model(tmp_path))
    assert [m[6] for m in _CONV_PARAMS.finditer(generated.source)] == ["1", "0", "1"]
    assert re.search(r"op1_shift\[5\] = \{\s*[1-9]", generated.source)
    model = tmp_path / "model_int8.tflite"
    fast = run_device(model, board, "aot", tmp_path / "fast")
    reference = run_device(model, board, "aot", tmp_path / "reference", aot_kernels="reference")
    assert fast["outputs_match"] == reference["outputs_match"] == 1.0
