"""The schema of report.json, what other programs import: pydantic models (`Report.model_json_schema()`
gives the JSON schema). report.md (edgekd.benchmarks.report) and the plots (edgekd.benchmarks.plots)
read it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from edgekd.checks import Check
from edgekd.rundir import Summary

SCHEMA_VERSION = 2


class HostLatency(BaseModel):
    runtime: str
    median_ms: float
    p90_ms: float
    runs: int


class McuLatency(BaseModel):
    runtime: str
    ms: float
    low_ms: float
    high_ms: float
    basis: str


class PeakLayer(BaseModel):
    index: int
    op: str
    output_shape: list[int]


class Sram(BaseModel):
    static_peak_bytes: int = Field(description="largest sum of simultaneously live activations (16-byte aligned)")
    arena_total_bytes: int | None = Field(None, description="TFLite-Micro arena needed (x86-64 build): head + tail")
    arena_head_bytes: int | None = Field(None, description="planned activations")
    arena_tail_bytes: int | None = Field(None, description="persistent data: per-channel requantisation, op data")
    io_bytes: int = Field(description="input + output tensors (inside the arena)")
    peak_layer: PeakLayer
    layer_live_bytes: list[int]


class DeviceLayer(BaseModel):
    index: int
    op: str
    output_shape: list[int]
    macs: int
    instructions: int
    cycles: int | None = Field(None, description="the cycle model's, when it ran")


class FlashPart(BaseModel):
    name: str
    bytes: int


class DeviceRun(BaseModel):
    """The int8 model compiled with TFLite Micro + CMSIS-NN for a Cortex-M core and run in QEMU."""

    target: str = Field(description="qemu-m4, qemu-m7 or qemu-m33")
    core: str
    machine: str = Field(description="the QEMU board")
    status: Literal["measured", "skipped"]
    reason: str | None = Field(None, description="why the device run was skipped")
    images: int = 0
    inputs: str = ""
    instructions_mean: float | None = Field(None, description="per inference, mean over the timed inferences")
    instructions_min: int | None = None
    instructions_max: int | None = None
    instruction_resolution: int | None = Field(None, description="instructions per timer tick: each figure is ± this")
    warmup_instructions: int | None = None
    profiled_instructions: int | None = Field(None, description="the inference profiled operator by operator")
    cycles_mean: float | None = Field(None, description="per inference, the cycle model's, mean over the timed ones")
    cycles_min: int | None = None
    cycles_max: int | None = None
    profiled_cycles: int | None = None
    cycle_model: str | None = Field(None, description="what the cycle model charged, or why it did not run")
    layers: list[DeviceLayer] = Field(default_factory=list)
    arena_used_bytes: int | None = Field(None, description="arena_used_bytes() of the 32-bit build")
    arena_x86_bytes: int | None = None
    flash_bytes: int | None = Field(None, description="firmware code, constants and .data initial values")
    flash_parts: list[FlashPart] = Field(default_factory=list)
    ram_static_bytes: int | None = Field(None, description=".data + .bss: arena, profiler, runner state")
    model_bytes: int | None = None
    agreement_with_host: float | None = Field(None, description="top-1 agreement with the host tflite-micro")
    bit_exact: bool | None = Field(None, description="every int8 output equal to the host tflite-micro's")
    max_output_difference: int | None = None
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    confusion: list[list[int]] | None = Field(None, description="firmware predictions: rows true, columns predicted")
    frames: int = Field(0, description="test images also fed as 8-bit frames through SetImage() and Predict()")
    frames_input_identical: int | None = Field(
        None, description="frames whose int8 input from SetImage() equals edgekd.preprocess's to the byte"
    )
    frames_class_agreement: float | None = Field(
        None, description="Predict()'s class equal to host TFLite Micro's on edgekd.preprocess's input"
    )
    frames_accuracy: float | None = Field(None, description="top-1 of Predict() on the frames")
    latency: McuLatency | None = None
    toolchain: str | None = None
    tflm_tree: str | None = None
    project: str | None = None
    seconds: float | None = None


class MemoryRewrite(BaseModel):
    """What the export's memory rewrite (export.memory) did to the int8 graph; "before" is the graph as
    converted, "after" the one every later artefact and the device run use."""

    mode: str = Field(description="export.memory: auto, none or groups")
    rewrite: str = Field(description="what was applied: none or groups")
    reason: str
    arena_before_bytes: int = Field(description="TFLite-Micro arena (x86-64 build) as converted")
    arena_after_bytes: int | None = None
    static_peak_before_bytes: int
    static_peak_after_bytes: int | None = None
    model_bytes_before: int
    model_bytes_after: int | None = None
    macs_before: int
    macs_after: int | None = None
    layer_live_bytes_before: list[int] = Field(default_factory=list)
    target_arena_before_bytes: int | None = Field(None, description="arena_used_bytes(), converted graph's firmware")
    target_instructions_before: float | None = Field(None, description="per inference, the converted graph's firmware")
    target_flash_before_bytes: int | None = Field(None, description="the converted graph's firmware image")


class Artefact(BaseModel):
    format: str
    path: str
    bytes: int
    accuracy: dict[str, float] = Field(default_factory=dict, description="test accuracy in each runtime")
    balanced_accuracy: dict[str, float] = Field(default_factory=dict, description="mean per-class recall, per runtime")
    confusion: dict[str, list[list[int]]] = Field(
        default_factory=dict, description="per runtime: rows the true class, columns the predicted one"
    )
    agreement: dict[str, float] = Field(default_factory=dict, description="top-1 agreement with PyTorch")
    host_latency: list[HostLatency] = Field(default_factory=list)
    mcu_latency: list[McuLatency] = Field(default_factory=list)
    flash_bytes: int | None = None
    sram: Sram | None = None
    macs: int | None = None
    memory_rewrite: MemoryRewrite | None = None
    device: DeviceRun | None = None


class Device(BaseModel):
    name: str
    description: str
    clock_mhz: float | None
    sram_bytes: int
    flash_bytes: int
    latency_ms: float | None = None


class Verdict(BaseModel):
    artefact: str = Field(description="the artefact that goes on the device")
    passed: bool = Field(description="every budget constraint and every check held")
    constraints: list[Check] = Field(description="the device artefact against the budget")
    checks: list[Check] = Field(
        default_factory=list, description="every export verification and the device run's output check"
    )

    @property
    def failed(self) -> list[Check]:
        return [c for c in [*self.constraints, *self.checks] if not c.passed]


class Report(BaseModel):
    schema_version: int = SCHEMA_VERSION
    source: str = Field(description="the run directory or artefact benchmarked")
    machine: str
    device: Device
    training: Summary | None = Field(None, description="what the run's training summary says, when there is one")
    student_accuracy: float | None = None
    student_balanced_accuracy: float | None = None
    student_confusion: list[list[int]] | None = None
    class_names: list[str] = Field(default_factory=list)
    test_images: int | None = None
    artefacts: list[Artefact]
    verdict: Verdict | None
    plots: list[str] = Field(default_factory=list)
