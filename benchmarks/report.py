"""report.json (a pydantic model: its JSON schema is `Report.model_json_schema()`), report.md and plots."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from edgekd.checks import Check, format_value
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


class FlashPart(BaseModel):
    name: str
    bytes: int


class DeviceRun(BaseModel):
    """The int8 model compiled with TFLite Micro + CMSIS-NN for a Cortex-M core and run in QEMU."""

    target: str = Field(description="qemu-m4 or qemu-m7")
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
    latency: McuLatency | None = None
    toolchain: str | None = None
    tflm_tree: str | None = None
    project: str | None = None
    seconds: float | None = None


class Artefact(BaseModel):
    format: str
    path: str
    bytes: int
    accuracy: dict[str, float] = Field(default_factory=dict, description="test accuracy in each runtime")
    agreement: dict[str, float] = Field(default_factory=dict, description="top-1 agreement with PyTorch")
    host_latency: list[HostLatency] = Field(default_factory=list)
    mcu_latency: list[McuLatency] = Field(default_factory=list)
    flash_bytes: int | None = None
    sram: Sram | None = None
    macs: int | None = None
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
    test_images: int | None = None
    artefacts: list[Artefact]
    verdict: Verdict | None
    plots: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- markdown


def _kib(value: float | None) -> str:
    return "–" if value is None else f"{value / 1024:,.1f} KiB"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f} ms"


def _check_text(c: Check) -> str:
    if c.unit == "check":
        return c.basis
    relation = "≥" if c.bound == "min" else "≤"
    return f"{format_value(c.unit, c.value)}, need {relation} {format_value(c.unit, c.limit)} ({c.basis})"


def _check_table(kind: str, checks: list[Check]) -> list[str]:
    lines = [f"| {kind} | value | limit | margin | result | basis |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for c in checks:
        limit = ("≥ " if c.bound == "min" else "≤ ") + format_value(c.unit, c.limit) if c.unit != "check" else "–"
        value = ("holds" if c.passed else "does not hold") if c.unit == "check" else format_value(c.unit, c.value)
        margin = "–" if c.unit == "check" else format_value(c.unit, c.margin)
        lines.append(f"| {c.name} | {value} | {limit} | {margin} | {'pass' if c.passed else '**FAIL**'} | {c.basis} |")
    return [*lines, ""]


def markdown(report: Report) -> str:
    lines = [
        f"# edgekd report: {report.source}",
        "",
        f"Device **{report.device.name}**: {report.device.description}. "
        f"Budget: SRAM {_kib(report.device.sram_bytes)}, flash {_kib(report.device.flash_bytes)}"
        + (f", latency {report.device.latency_ms:g} ms" if report.device.latency_ms else "")
        + ".",
        "",
    ]
    if report.verdict:
        verdict = report.verdict
        lines += [f"## Verdict: {'PASS' if verdict.passed else 'FAIL'} ({verdict.artefact})", ""]
        if verdict.failed:
            lines += ["**Failed:**", ""]
            lines += [f"- {c.name}: {_check_text(c)}" for c in verdict.failed]
            lines.append("")
        lines += _check_table("constraint", verdict.constraints)
        if verdict.checks:
            passed = sum(c.passed for c in verdict.checks)
            lines += [f"Verification: {passed} of {len(verdict.checks)} checks hold.", ""]
            lines += ["<details><summary>Every check</summary>", "", *_check_table("check", verdict.checks)]
            lines += ["</details>", ""]
    if report.training:
        lines += _training_section(report.training)
    if report.student_accuracy is not None:
        intro = (
            f"Accuracy on {report.test_images} test images, in each artefact's own runtime "
            f"(PyTorch student: {report.student_accuracy:.2%})."
        )
    else:
        intro = "A lone artefact has no test split: accuracy needs a run directory."
    lines += [
        "## Artefacts",
        "",
        intro,
        "",
        "| artefact | size | runtime | accuracy | agreement | host median | host p90 |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for artefact in report.artefacts:
        runtimes = [h.runtime for h in artefact.host_latency] or list(artefact.accuracy) or ["–"]
        for runtime in runtimes:
            host = next((h for h in artefact.host_latency if h.runtime == runtime), None)
            accuracy = artefact.accuracy.get(runtime)
            agreement = artefact.agreement.get(runtime)
            lines.append(
                f"| {artefact.format} | {_kib(artefact.bytes)} | {runtime} | {_percent(accuracy)} | "
                f"{_percent(agreement)} | {_ms(host and host.median_ms)} | {_ms(host and host.p90_ms)} |"
            )
    lines += [
        "",
        "Host latency: this machine's CPU, one thread, batch 1, MLPerf Tiny method (median of 5 windows). "
        "It ranks runtimes; it is not an MCU speed (int8 with int8 activations is often slower than fp32 on "
        "x86 onnxruntime).",
        "",
    ]
    lines += _device_section(report)
    graph_artefacts = [a for a in report.artefacts if a.mcu_latency or a.sram]
    if graph_artefacts:
        lines += [
            "## From the graph",
            "",
            "| artefact | MACs | model flatbuffer | static SRAM peak | TFLite-Micro arena, x86-64 (head + tail) "
            "| peak layer |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for a in graph_artefacts:
            s = a.sram
            arena = (
                "–"
                if s is None or s.arena_total_bytes is None
                else (f"{_kib(s.arena_total_bytes)} ({_kib(s.arena_head_bytes)} + {_kib(s.arena_tail_bytes)})")
            )
            peak = (
                "–"
                if s is None
                else f"#{s.peak_layer.index} {s.peak_layer.op} → {'×'.join(map(str, s.peak_layer.output_shape))}"
            )
            static_peak = _kib(s.static_peak_bytes if s else None)
            lines.append(f"| {a.format} | {a.macs or 0:,} | {_kib(a.flash_bytes)} | {static_peak} | {arena} | {peak} |")
        lines += ["", "| artefact | MCU runtime | estimated latency | basis |", "| --- | --- | ---: | --- |"]
        for a in graph_artefacts:
            lines += [
                f"| {a.format} | {m.runtime} | {m.ms:,.1f} ms ({m.low_ms:,.1f}–{m.high_ms:,.1f}) | {m.basis} |"
                for m in a.mcu_latency
            ]
        lines += [
            "",
            "Estimates from the .tflite alone: the static peak from tensor lifetimes, the arena from "
            "TFLite-Micro's x86-64 build (its tail is smaller on a 32-bit MCU), latency from MACs × a cycles/MAC "
            "range. Where the device run measured a figure, the verdict uses the measurement.",
            "",
        ]
    if report.plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report.plots] + [""]
    return "\n".join(lines)


def _training_section(t: Summary) -> list[str]:
    from edgekd.methods import METHODS

    lines = ["## Training", "", "| stage | model | test accuracy |", "| --- | --- | ---: |"]
    for stage in ("teacher", "baseline", "student"):
        row = getattr(t, stage)
        if row is not None:
            lines.append(f"| {stage} | {row.model} | {row.accuracy:.2%} |")
    if t.kd_gain is not None:
        lines += ["", f"Distillation gain over the student trained alone: {t.kd_gain * 100:+.2f} points."]
    if t.excluded_classes:
        excluded = t.excluded_classes
        lines += [
            "",
            f"Classes {excluded['classes']} were left out of the students' training data. Accuracy on "
            "them (test split), before → after raising their bias to match their prior on the validation split:",
            "",
            "| student | on the excluded classes | overall | bias shift |",
            "| --- | ---: | ---: | --- |",
        ]
        lines += [
            f"| {stage} | {e['excluded_accuracy_before']:.1%} → {e['excluded_accuracy_after']:.1%} | "
            f"{e['accuracy_before']:.1%} → {e['accuracy_after']:.1%} | {e['bias_shift']} |"
            for stage, e in excluded.items()
            if stage != "classes"
        ]
    if t.method_results and t.method in METHODS:  # the method says what its own findings mean
        lines += ["", *METHODS.get(t.method).method.results_markdown(t.method_results)]
    return [*lines, ""]


def _device_section(report: Report) -> list[str]:
    runs = [(a, a.device) for a in report.artefacts if a.device is not None]
    if not runs:
        return []
    lines = ["## Measured on the device", ""]
    for artefact, run in runs:
        if run.status == "skipped":
            lines += [f"Skipped for {artefact.format}: {run.reason}", ""]
            continue
        m = 1e6
        parts = ", ".join(f"{p.name} {_kib(p.bytes)}" for p in run.flash_parts)
        latency = run.latency
        lines += [
            f"{artefact.format} compiled with TensorFlow Lite Micro + CMSIS-NN for the {run.core} and run in QEMU "
            f"({run.machine}, `-icount shift=0`): {run.images} {run.inputs} in one boot.",
            "",
            "| figure | value | how |",
            "| --- | ---: | --- |",
            f"| instructions per inference | {run.instructions_mean / m:,.3f} M | mean of {run.images} timed "
            f"inferences after a warm-up (min {run.instructions_min / m:,.3f} M, "
            f"max {run.instructions_max / m:,.3f} M; "
            f"±{run.instruction_resolution} per reading) |",
        ]
        if latency is not None:
            lines.append(
                f"| latency | {latency.ms:,.1f} ms ({latency.low_ms:,.1f}–{latency.high_ms:,.1f}) | {latency.basis} |"
            )
        else:
            lines.append("| latency | – | the device profile has no clock or cycles-per-instruction range |")
        lines += [
            f"| tensor arena | {_kib(run.arena_used_bytes)} | `arena_used_bytes()` on the target (x86-64 build: "
            f"{_kib(run.arena_x86_bytes)}) |",
            f"| firmware flash | {_kib(run.flash_bytes)} | {parts} |",
            f"| outputs vs host TFLite-Micro | {_percent(run.agreement_with_host)} | top-1 agreement; int8 outputs "
            + ("bit-identical" if run.bit_exact else f"differ by up to {run.max_output_difference}")
            + " |",
        ]
        if run.accuracy is not None:
            lines.append(f"| accuracy on the device | {_percent(run.accuracy)} | on the {run.images} test images |")
        lines += ["", *_layer_tables(run), ""]
        lines += [
            "QEMU counts instructions, not cycles: it models no pipeline, flash wait states or caches. The latency "
            "turns instructions into time with the device profile's cycles-per-instruction range.",
            "",
        ]
    return lines


def _layer_tables(run: DeviceRun) -> list[str]:
    total = sum(layer.instructions for layer in run.layers) or 1
    by_op: dict[str, list[DeviceLayer]] = {}
    for layer in run.layers:
        by_op.setdefault(layer.op, []).append(layer)
    lines = [
        f"Instructions by operator (one profiled inference, {run.profiled_instructions / 1e6:,.3f} M; "
        f"the layers sum to {total / max(run.profiled_instructions or 1, 1):.1%} of it):",
        "",
        "| operator | layers | MACs | instructions | per MAC | share |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for op, layers in sorted(by_op.items(), key=lambda kv: -sum(layer.instructions for layer in kv[1])):
        instructions = sum(layer.instructions for layer in layers)
        macs = sum(layer.macs for layer in layers)
        per_mac = f"{instructions / macs:.2f}" if macs else "–"
        lines.append(f"| {op} | {len(layers)} | {macs:,} | {instructions:,} | {per_mac} | {instructions / total:.1%} |")
    lines += [
        "",
        "<details><summary>Every layer</summary>",
        "",
        "| # | operator | output | MACs | instructions | per MAC |",
        "| ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for layer in run.layers:
        per_mac = f"{layer.instructions / layer.macs:.2f}" if layer.macs else "–"
        lines.append(
            f"| {layer.index} | {layer.op} | {'×'.join(map(str, layer.output_shape))} | {layer.macs:,} | "
            f"{layer.instructions:,} | {per_mac} |"
        )
    lines += ["", "</details>"]
    return lines


# ---------------------------------------------------------------- plots


def plot_training(metrics_csv: Path, out: Path) -> Path | None:
    if not metrics_csv.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    fig, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    for stage in dict.fromkeys(row["stage"] for row in rows):
        stage_rows = [r for r in rows if r["stage"] == stage]
        epochs = [int(r["epoch"]) for r in stage_rows]
        loss_axis.plot(epochs, [float(r["train_loss"]) for r in stage_rows], label=stage)
        accuracy_axis.plot(epochs, [100 * float(r["val_accuracy"]) for r in stage_rows], marker="o", ms=3, label=stage)
    loss_axis.set(title="training loss", xlabel="epoch", yscale="log")
    accuracy_axis.set(title="validation accuracy", xlabel="epoch", ylabel="%")
    accuracy_axis.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_tradeoffs(report: Report, out: Path) -> Path | None:
    points = [a for a in report.artefacts if a.sram or a.mcu_latency]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (sram_axis, latency_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    for a in points:
        accuracy = 100 * max(a.accuracy.values()) if a.accuracy else None
        if accuracy is None:
            continue
        if a.sram:
            sram = a.sram.arena_total_bytes or a.sram.static_peak_bytes
            sram_axis.scatter(sram / 1024, accuracy, s=40, label=a.format)
        for m in a.mcu_latency:
            latency_axis.errorbar(
                m.ms,
                accuracy,
                xerr=[[m.ms - m.low_ms], [m.high_ms - m.ms]],
                fmt="o",
                capsize=3,
                label=f"{a.format} · {m.runtime}",
            )
    sram_axis.axvline(report.device.sram_bytes / 1024, color="red", ls="--", label="SRAM budget")
    sram_axis.set(title="accuracy vs SRAM (arena, or static peak)", xlabel="KiB", ylabel="test accuracy %")
    if report.device.latency_ms:
        latency_axis.axvline(report.device.latency_ms, color="red", ls="--", label="latency budget")
    latency_axis.set(title=f"accuracy vs MCU latency ({report.device.name}, estimate)", xlabel="ms")
    for axis in (sram_axis, latency_axis):
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_memory(artefact: Artefact, sram_budget: int, out: Path) -> Path | None:
    if artefact.sram is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = [b / 1024 for b in artefact.sram.layer_live_bytes]
    peak = artefact.sram.peak_layer
    fig, axis = plt.subplots(figsize=(10, 3.6))
    colours = ["tab:red" if i == peak.index else "tab:blue" for i in range(len(live))]
    axis.bar(range(len(live)), live, color=colours)
    axis.axhline(sram_budget / 1024, color="red", ls="--", label="SRAM budget")
    if artefact.sram.arena_tail_bytes is not None:
        axis.axhline(
            (sram_budget - artefact.sram.arena_tail_bytes) / 1024,
            color="orange",
            ls=":",
            label="budget left for activations (after the arena tail)",
        )
    axis.annotate(
        f"peak: #{peak.index} {peak.op}\n{'×'.join(map(str, peak.output_shape))}, {live[peak.index]:.1f} KiB",
        (peak.index, live[peak.index]),
        textcoords="offset points",
        xytext=(10, -5),
        fontsize=8,
    )
    axis.set(title=f"live activations per layer ({artefact.format})", xlabel="layer (op order)", ylabel="KiB")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_device_layers(artefact: Artefact, out: Path) -> Path | None:
    run = artefact.device
    if run is None or run.status != "measured" or not run.layers:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = list(dict.fromkeys(layer.op for layer in run.layers))
    colours = {op: plt.get_cmap("tab10")(i % 10) for i, op in enumerate(ops)}
    fig, axis = plt.subplots(figsize=(10, 3.6))
    for op in ops:
        layers = [layer for layer in run.layers if layer.op == op]
        axis.bar(
            [layer.index for layer in layers],
            [layer.instructions / 1e3 for layer in layers],
            color=colours[op],
            label=op,
        )
    axis.set(
        title=f"instructions per layer on the {run.core} "
        f"(QEMU, one inference: {run.profiled_instructions / 1e6:,.2f} M)",
        xlabel="layer (op order)",
        ylabel="thousand instructions",
    )
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
