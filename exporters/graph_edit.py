"""Editing a TFLite flatbuffer (object API) for the memory rewrites: new tensors, constants and
operators, and the buffers left behind."""

from __future__ import annotations

import copy

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.exporters.tflite import flatbuffer_schema


class RewriteError(EdgeKDError):
    """A memory-rewrite option that does not fit the graph."""


def new_tensor(graph, tensor) -> int:
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def constant_tensor(model, values: np.ndarray, name: bytes) -> int:
    """A new constant tensor holding `values` (int32 or int8), unquantised."""
    schema = flatbuffer_schema()
    buffer = schema.BufferT()
    buffer.data = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = np.array(values.shape, dtype=np.int32)
    tensor.type = {np.dtype(np.int32): schema.TensorType.INT32, np.dtype(np.int8): schema.TensorType.INT8}[values.dtype]
    tensor.buffer, tensor.name = len(model.buffers) - 1, name
    return new_tensor(model.subgraphs[0], tensor)


def activation_like(graph, source: int, shape: list[int], suffix: str) -> int:
    """A new activation tensor with `source`'s type and quantisation and the given shape."""
    tensor = copy.deepcopy(graph.tensors[source])
    tensor.shape = np.array(shape, dtype=np.int32)
    tensor.shapeSignature = None
    tensor.name = (tensor.name or b"") + suffix.encode()
    return new_tensor(graph, tensor)


def operator(model, code: int, inputs: list[int], outputs: list[int], options_type: int = 0, options=None):
    """A new builtin operator (its operator code added to the model when missing)."""
    schema = flatbuffer_schema()
    index = next((i for i, c in enumerate(model.operatorCodes) if max(c.builtinCode, c.deprecatedBuiltinCode) == code),
                 None)  # fmt: skip
    if index is None:
        opcode = schema.OperatorCodeT()
        opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), 2  # 2: int8
        model.operatorCodes.append(opcode)
        index = len(model.operatorCodes) - 1
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = index, np.array(inputs, dtype=np.int32), np.array(outputs, dtype=np.int32)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def concatenation(model, inputs: list[int], output: int, axis: int):
    """CONCATENATION of int8 tensors that share the output's scale and zero point (TFLite Micro's rule)."""
    schema = flatbuffer_schema()
    options = schema.ConcatenationOptionsT()
    options.axis, options.fusedActivationFunction = axis, schema.ActivationFunctionType.NONE
    return operator(model, schema.BuiltinOperator.CONCATENATION, inputs, [output],
                    schema.BuiltinOptions.ConcatenationOptions, options)  # fmt: skip


def drop_unused_buffers(model) -> None:
    """Empty the buffers no tensor points to any more (the unsliced weights), keeping the numbering."""
    used = {int(t.buffer) for graph in model.subgraphs for t in graph.tensors}
    for index, buffer in enumerate(model.buffers):
        if index not in used:
            buffer.data = None
