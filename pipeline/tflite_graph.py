"""The operators, tensors and options of an int8 .tflite, read from the flatbuffer.

tf.lite.Interpreter hides op options (strides, padding, fused activations),
which code generation needs; this reads them with TensorFlow's own generated
flatbuffer schema. Only single-subgraph models with batch 1 are accepted.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flatbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from pipeline.errors import UserError

_OPERATOR_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_DTYPES = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32,
           schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT64: np.int64,
           schema.TensorType.INT16: np.int16, schema.TensorType.UINT8: np.uint8}
PADDING_SAME = schema.Padding.SAME
ACTIVATIONS = {schema.ActivationFunctionType.NONE: "none", schema.ActivationFunctionType.RELU: "relu",
               schema.ActivationFunctionType.RELU_N1_TO_1: "relu_n1_to_1",
               schema.ActivationFunctionType.RELU6: "relu6"}


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A tensor: shape, dtype, quantisation and, for constants, its data."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: type
    scales: tuple[float, ...]  # float32 values, as stored
    zero_points: tuple[int, ...]
    data: np.ndarray | None

    @property
    def scale(self) -> float:
        """The per-tensor scale (the first one of a per-channel tensor)."""
        return self.scales[0]

    @property
    def zero_point(self) -> int:
        """The per-tensor zero point."""
        return self.zero_points[0] if self.zero_points else 0

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape)) if self.shape else 1


@dataclasses.dataclass(frozen=True)
class Operator:
    """One operator in flatbuffer order, with its builtin options as a dict."""

    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Graph:
    """The single subgraph of a model."""

    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def read_graph(data: bytes, label: str = "model") -> Graph:
    """Parses a .tflite flatbuffer into a Graph; UserError for what cannot be compiled."""
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as exc:  # flatbuffers raises assorted errors on corrupt input
        raise UserError(f"{label} is a corrupt TFLite flatbuffer ({exc}): re-export the model") from None
    if len(model.subgraphs) != 1:
        raise UserError(f"{label} has {len(model.subgraphs)} subgraphs, expected 1: "
                        "control flow is not supported by the AOT engine")
    sub = model.subgraphs[0]
    tensors = tuple(_tensor(i, t, model.buffers) for i, t in enumerate(sub.tensors))
    operators = []
    for i, op in enumerate(sub.operators):
        code = model.operatorCodes[op.opcodeIndex]
        name = _OPERATOR_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        options = dict(vars(op.builtinOptions)) if op.builtinOptions is not None else {}
        operators.append(Operator(i, name, tuple(int(t) for t in op.inputs),
                                  tuple(int(t) for t in op.outputs), options))
    graph = Graph(tensors, tuple(operators), tuple(int(t) for t in sub.inputs),
                  tuple(int(t) for t in sub.outputs))
    for t in graph.inputs + graph.outputs:
        if tensors[t].shape and tensors[t].shape[0] != 1:
            raise UserError(f"{label}: tensor {tensors[t].name!r} has batch {tensors[t].shape[0]}, expected 1")
    return graph


def _tensor(index: int, t: Any, buffers: list[Any]) -> Tensor:
    dtype = _DTYPES.get(t.type, np.uint8)
    shape = tuple(int(d) for d in t.shape) if t.shape is not None else ()
    raw = buffers[t.buffer].data if 0 <= t.buffer < len(buffers) else None
    data = None
    if raw is not None and len(raw):
        data = np.frombuffer(np.asarray(raw, np.uint8).tobytes(), dtype=dtype).reshape(shape or (-1,))
    q = t.quantization
    scales = tuple(float(s) for s in q.scale) if q is not None and q.scale is not None else ()
    zero_points = tuple(int(z) for z in q.zeroPoint) if q is not None and q.zeroPoint is not None else ()
    name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    return Tensor(index, name, shape, dtype, scales, zero_points, data)



def truncated(data: bytes, last_operator: int) -> bytes:
    """The same model cut after operator ``last_operator``, whose output becomes the model's.

    Lets a test compare two interpreters on an inner tensor (the pip packages
    expose only a model's outputs).
    """
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    graph = model.subgraphs[0]
    if not 0 <= last_operator < len(graph.operators):
        raise UserError(f"operator {last_operator} is not in a model of {len(graph.operators)} operators")
    graph.outputs = [int(graph.operators[last_operator].outputs[0])]
    graph.operators = graph.operators[:last_operator + 1]
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
