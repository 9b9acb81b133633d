"""Per-layer MACs of a .tflite graph, and the MCU latency estimate they give with a device profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.benchmarks.profiles import Device
from edgekd.exporters.tflite import read_graph

_CLASS = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise", "FULLY_CONNECTED": "fully_connected"}


@dataclass
class LayerCompute:
    index: int
    op: str
    op_class: str
    macs: int  # for "other" ops: output elements


def layer_macs(path: Path | bytes) -> list[LayerCompute]:
    _, graph, op_names = read_graph(path)
    layers = []
    for index, (op, name) in enumerate(zip(graph.operators, op_names, strict=True)):
        output = graph.tensors[int(op.outputs[0])].shape if len(op.outputs) else [0]
        op_class = _CLASS.get(name, "other")
        if op_class == "conv":  # weights O×KH×KW×I: each output element costs KH·KW·I
            macs = int(np.prod(output)) * int(np.prod(graph.tensors[int(op.inputs[1])].shape[1:]))
        elif op_class == "depthwise":  # weights 1×KH×KW×O
            kh, kw = graph.tensors[int(op.inputs[1])].shape[1:3]
            macs = int(np.prod(output)) * int(kh) * int(kw)
        elif op_class == "fully_connected":  # weights O×I
            macs = int(np.prod(graph.tensors[int(op.inputs[1])].shape))
        else:
            macs = int(np.prod(output))
        layers.append(LayerCompute(index, name, op_class, macs))
    return layers


@dataclass
class McuEstimate:
    device: str
    runtime: str
    low_ms: float
    high_ms: float
    source: str

    @property
    def ms(self) -> float:
        return (self.low_ms + self.high_ms) / 2

    @property
    def plus_minus_percent(self) -> float:
        return 100 * (self.high_ms - self.low_ms) / (self.low_ms + self.high_ms)

    @property
    def basis(self) -> str:
        return f"estimate from profile {self.device}/{self.runtime}, ±{self.plus_minus_percent:.0f} % ({self.source})"


def mcu_latency(layers: list[LayerCompute], device: Device) -> list[McuEstimate]:
    """Σ MACs × cycles/MAC ÷ clock for each runtime of the profile (none without a clock)."""
    if device.clock_mhz is None:
        return []
    estimates = []
    for runtime, cost in device.runtimes.items():
        low = sum(layer.macs * getattr(cost, layer.op_class)[0] for layer in layers)
        high = sum(layer.macs * getattr(cost, layer.op_class)[1] for layer in layers)
        hz = device.clock_mhz * 1e6
        estimates.append(McuEstimate(device.name, runtime, 1e3 * low / hz, 1e3 * high / hz, cost.source))
    return estimates
