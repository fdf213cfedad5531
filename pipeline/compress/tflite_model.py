"""The converted int8 .tflite: make it, check it, read its costs, run it in TFLite Micro.

The flatbuffer is the source of truth for what ships. MS, WM and the arena
of a finished trial are read here from the bytes that the firmware embeds.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from pipeline import REPO_ROOT
from pipeline.errors import UserError
from pipeline.search.costs import GraphOp, ResourceGraph

CALIBRATION_SAMPLES = 200
WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
ALIAS_OPS = ("RESHAPE",)
ARENA_ALIGNMENT = 16
warnings.filterwarnings("ignore", message=r"(?s).*tf.lite.Interpreter is deprecated")


def convert_as_tflite_guide(model: tf_keras.Model, calibration: np.ndarray) -> bytes:
    """Full-integer conversion exactly as TFLite's post-training quantisation guide shows it, as a
    user converts their own model: FULLY_CONNECTED stays, nothing of this tool's shipped form."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def convert_int8(model: tf_keras.Model, calibration: np.ndarray, seed: int = 0) -> bytes:
    """Full-integer post-training quantisation with int8 input and output.

    Calibrated on up to CALIBRATION_SAMPLES training images (never random data).
    """
    rng = np.random.default_rng(seed)
    picked = calibration[rng.permutation(len(calibration))[:CALIBRATION_SAMPLES]]

    def representative() -> Iterator[list[np.ndarray]]:
        for sample in picked:
            yield [sample[None].astype(np.float32)]

    # Traced with a batch of one, every reshape's shape is a constant: one RESHAPE op each,
    # with no SHAPE/STRIDED_SLICE/PACK to compute it at run time.
    signature = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(signature)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    # Shipped search models have no Dense layer; a user's Dense keeps the classic per-tensor weights.
    converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    with _quiet():
        return bytes(converter.convert())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hides the converter's expected chatter; real Python warnings still show."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    stderr_fd = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Statistics for quantized inputs.*")
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(stderr_fd, 2)
        os.close(stderr_fd)
        logger.setLevel(level)


def read_tflite(path: str | os.PathLike) -> bytes:
    """Reads a .tflite file and checks that it is an int8 model; UserError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {str(path)!r} does not exist: give the path of an int8 .tflite "
                        "(python -m pipeline export writes models/<trial>/model_int8.tflite)")
    data = path.read_bytes()
    check_int8(data, str(path))
    return data


def check_int8(data: bytes, label: str) -> None:
    """Raises a UserError unless ``data`` is a valid flatbuffer with int8 input and output."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UserError(f"{label} is not a TFLite flatbuffer (no TFL3 identifier): re-export the model")
    try:
        interp = tf.lite.Interpreter(model_content=data)
    except Exception as exc:  # the parser raises ValueError or RuntimeError
        raise UserError(f"{label} is a corrupt TFLite flatbuffer ({str(exc).splitlines()[0]}): "
                        "re-export the model") from None
    for kind, details in (("input", interp.get_input_details()), ("output", interp.get_output_details())):
        wrong = [d["dtype"].__name__ for d in details if d["dtype"] != np.int8]
        if wrong:
            raise UserError(f"{label} has a {wrong[0]} {kind}, expected int8: convert with full-integer "
                            "quantisation (python -m pipeline export does)")


def quantization(data: bytes) -> dict:
    """Input/output shape, scale and zero point of an int8 model."""
    interp = tf.lite.Interpreter(model_content=data)
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    return {"input_shape": [int(d) for d in i["shape"]], "input_scale": float(i["quantization"][0]),
            "input_zero_point": int(i["quantization"][1]), "output_shape": [int(d) for d in o["shape"]],
            "output_scale": float(o["quantization"][0]), "output_zero_point": int(o["quantization"][1])}


def quantize_inputs(data: bytes, x: np.ndarray) -> np.ndarray:
    """Float images to the model's int8 input, with TFLite's rounding and clamping."""
    q = quantization(data)
    return np.clip(np.round(x / q["input_scale"]) + q["input_zero_point"], -128, 127).astype(np.int8)


def resource_graph(data: bytes) -> ResourceGraph:
    """The resource graph of a converted model: weights and activations as stored."""
    interp = tf.lite.Interpreter(model_content=data)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops_details = interp._get_ops_details()  # the only public-enough view of the op list
    produced = {o for op in ops_details for o in op["outputs"]}
    graph_inputs = [d["index"] for d in interp.get_input_details()]
    activations = produced | set(graph_inputs)
    ops = []
    for op in ops_details:
        kernel = bias = dense = rows = biases = 0
        window = (0, 0)
        if op["op_name"] in WEIGHTED_OPS:
            weights = interp.get_tensor(op["inputs"][1])
            kernel, dense = int(np.count_nonzero(weights)), int(weights.size)
            window = (int(weights.shape[1]), int(weights.shape[2])) if weights.ndim == 4 else (1, 1)
            rows = int(weights.shape[0])  # OHWI filters; a depthwise kernel [1,H,W,C] is one row
            if len(op["inputs"]) > 2 and op["inputs"][2] >= 0:
                values = interp.get_tensor(op["inputs"][2])
                bias, biases = int(np.count_nonzero(values)), int(values.size)
        first = tensors[op["inputs"][0]]["shape"] if len(op["inputs"]) else ()
        hw = (int(first[1]), int(first[2])) if len(first) == 4 else (1, 1)
        out_shape = tensors[op["outputs"][0]]["shape"]  # a scalar (a STRIDED_SLICE of a SHAPE) has none
        ops.append(GraphOp(f"{op['index']}:{op['op_name']}",
                           tuple(str(i) for i in op["inputs"] if i in activations),
                           str(op["outputs"][0]), kernel, bias, alias=op["op_name"] in ALIAS_OPS,
                           kernel_weights=dense, rows=rows, bias_weights=biases, kind=op["op_name"],
                           channels=int(out_shape[-1]) if len(out_shape) else 1, kernel_hw=window,
                           input_hw=hw))
    sizes = {str(i): int(np.prod(tensors[i]["shape"])) * tensors[i]["dtype"]().itemsize
             for i in activations}
    outputs = tuple(str(d["index"]) for d in interp.get_output_details())
    return ResourceGraph(tuple(ops), sizes, tuple(str(i) for i in graph_inputs), outputs)


def kernel_sparsity(data: bytes) -> float:
    """Fraction of zeros over the int8 CONV_2D and FULLY_CONNECTED kernels of a converted model."""
    interp = tf.lite.Interpreter(model_content=data)
    zeros = total = 0
    for op in interp._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):
            kernel = interp.get_tensor(op["inputs"][1])
            zeros += kernel.size - int(np.count_nonzero(kernel))
            total += kernel.size
    return zeros / total if total else 0.0


def op_names(data: bytes) -> list[str]:
    """The builtin operator of every op, in flatbuffer order."""
    return [op["op_name"] for op in tf.lite.Interpreter(model_content=data)._get_ops_details()]


def tflm_interpreter(data: bytes, arena_bytes: int):
    """A host TFLite Micro interpreter (the real TFLM code, via the tflite-micro wheel)."""
    from tflite_micro.python.tflite_micro import runtime

    with _silence_stdout():
        return runtime.Interpreter.from_bytes(data, arena_size=int(arena_bytes))


@contextlib.contextmanager
def _silence_stdout() -> Iterator[None]:
    """TFLM's C++ code prints allocation failures straight to fds 1 and 2; keep them from users."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def tflm_run(data: bytes, x_int8: np.ndarray, arena_bytes: int | None = None) -> np.ndarray:
    """Runs every int8 input through host TFLite Micro; returns the int8 outputs."""
    interp = tflm_interpreter(data, arena_bytes or smallest_arena(data) + 1024)
    outputs = []
    for sample in x_int8:
        interp.set_input(sample[None], 0)
        interp.invoke()
        outputs.append(np.array(interp.get_output(0)).reshape(-1))
    return np.stack(outputs)


def reference_run(data: bytes, x_int8: np.ndarray) -> np.ndarray:
    """Runs int8 inputs through tf.lite with its reference kernels.

    For the ops a shipped search model has, the outputs equal host TFLM's bit for
    bit; FULLY_CONNECTED and SOFTMAX round differently (see the README).
    """
    interp = tf.lite.Interpreter(model_content=data,
                                 experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    outputs = []
    for sample in x_int8:
        interp.set_tensor(i, sample[None])
        interp.invoke()
        outputs.append(interp.get_tensor(o).reshape(-1).copy())
    return np.stack(outputs)


def smallest_arena(data: bytes, upper: int | None = None) -> int:
    """The smallest arena (bytes, multiple of 16) in which host TFLM allocates and runs the model.

    Read from TFLM's RecordingMicroAllocator after one run in a generous
    arena, then checked by allocating and running in exactly that size; only
    if that fails is the size searched (upwards, then by bisection). Every
    allocation that may fail runs in a child process (`pipeline.compress.tflm_probe`):
    a failed allocation corrupts the tflite-micro wheel's state.

    Raises:
        RuntimeError: when TFLM cannot run the model at all (unsupported op,
            or no arena up to 64 MB is enough).
    """
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tflite"
        path.write_bytes(data)
        fits = functools.partial(_probe, path)
        hi = upper or max(1 << 20, len(data) * 4)
        while not fits(hi):
            hi *= 4
            if hi > 64 << 20:
                raise RuntimeError("TFLite Micro cannot allocate or run this model "
                                   "(an unsupported op, or over 64 MB of arena)")
        recorded = _recorded_arena_bytes(data, hi, np.zeros(quantization(data)["input_shape"], np.int8))
        lo = 0
        if recorded is not None:
            step = -(-recorded // ARENA_ALIGNMENT) * ARENA_ALIGNMENT
            candidate = step
            while candidate < hi:
                if fits(candidate):
                    hi = candidate
                    break
                lo, candidate = candidate, candidate + step // 4 // ARENA_ALIGNMENT * ARENA_ALIGNMENT + ARENA_ALIGNMENT
        while hi - lo > ARENA_ALIGNMENT:
            mid = (lo + hi) // 2 // ARENA_ALIGNMENT * ARENA_ALIGNMENT
            if fits(mid):
                hi = mid
            else:
                lo = mid
        return hi


def _probe(path: Path, arena: int) -> bool:
    """True when host TFLM allocates and runs the model in ``arena`` bytes (in a child process)."""
    import subprocess

    try:
        return subprocess.run([sys.executable, "-m", "pipeline.compress.tflm_probe", str(path), str(arena)],
                              cwd=REPO_ROOT, timeout=120,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _recorded_arena_bytes(data: bytes, arena: int, sample: np.ndarray) -> int | None:
    """The arena total TFLM's RecordingMicroAllocator prints after one run (None if unreadable)."""
    import re
    import tempfile

    interp = tflm_interpreter(data, arena)
    with tempfile.TemporaryFile() as capture:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            interp.set_input(sample, 0)
            interp.invoke()
            interp.print_allocations()
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    found = re.search(r"Arena allocation total (\d+) bytes", text)
    return int(found.group(1)) if found else None
