"""Static memory analysis of a .tflite graph: activation lifetimes → peak SRAM; constants → flash.

An activation tensor is live from the op that produces it (the start, for the graph input) to the
last op that reads it (the end, for the graph output). The peak is the largest sum of simultaneously
live tensors, each rounded up to TFLite-Micro's 16-byte buffer alignment: the least any memory planner
can do for this op order, and what TFLite-Micro's greedy planner achieves on a chain like MobileNetV2
(its arena "head" equals this bound to the byte).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.exporters.tflite import read_graph

ALIGNMENT = 16
_ITEM_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 16: 4}  # TensorType → bytes per element


def aligned(size: int) -> int:
    """Bytes a tensor takes in TFLite Micro's arena (its allocator aligns every buffer to 16)."""
    return (size + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


@dataclass
class LayerMemory:
    index: int
    op: str
    output_shape: list[int]
    live_bytes: int  # all activations live while this op runs (its inputs and outputs included)


@dataclass
class MemoryProfile:
    peak_bytes: int
    peak_layer: int
    layers: list[LayerMemory] = field(default_factory=list)
    input_bytes: int = 0
    output_bytes: int = 0
    constant_bytes: int = 0  # weights, biases and other constant buffers
    file_bytes: int = 0  # the whole flatbuffer: what flash holds

    @property
    def peak(self) -> LayerMemory:
        return self.layers[self.peak_layer]


def analyse(path: Path | bytes) -> MemoryProfile:
    """The memory profile of a .tflite file (or its bytes)."""
    model, graph, op_names = read_graph(path)

    def constant(tensor_index: int) -> bool:
        buffer = model.buffers[graph.tensors[tensor_index].buffer]
        return (buffer.data is not None and len(buffer.data) > 0) or bool(getattr(buffer, "size", 0))

    def size(tensor_index: int) -> int:
        tensor = graph.tensors[tensor_index]
        return int(np.prod(tensor.shape)) * _ITEM_BYTES.get(tensor.type, 4)

    last_op = len(graph.operators) - 1
    first_use: dict[int, int] = {int(t): 0 for t in graph.inputs}
    last_use: dict[int, int] = {int(t): last_op for t in graph.outputs}
    for index, op in enumerate(graph.operators):
        for tensor in op.outputs:
            first_use.setdefault(int(tensor), index)
        for tensor in op.inputs:
            if tensor >= 0 and not constant(int(tensor)):
                last_use[int(tensor)] = max(last_use.get(int(tensor), index), index)
    activations = [t for t in first_use if not constant(t)]
    layers = []
    for index, op in enumerate(graph.operators):
        live = sum(aligned(size(t)) for t in activations if first_use[t] <= index <= last_use.get(t, first_use[t]))
        output_shape = [int(d) for d in graph.tensors[int(op.outputs[0])].shape] if len(op.outputs) else []
        layers.append(LayerMemory(index, op_names[index], output_shape, live))
    peak_layer = max(range(len(layers)), key=lambda i: layers[i].live_bytes)
    constants = sum(len(b.data) if b.data is not None else int(getattr(b, "size", 0) or 0) for b in model.buffers)
    return MemoryProfile(
        peak_bytes=layers[peak_layer].live_bytes,
        peak_layer=peak_layer,
        layers=layers,
        input_bytes=sum(size(int(t)) for t in graph.inputs),
        output_bytes=sum(size(int(t)) for t in graph.outputs),
        constant_bytes=constants,
        file_bytes=len(path) if isinstance(path, bytes) else Path(path).stat().st_size,
    )
