"""report.json (a pydantic model: its JSON schema is `Report.model_json_schema()`), report.md and plots."""

from __future__ import annotations

import csv
from pathlib import Path

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1


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


class Constraint(BaseModel):
    name: str
    value: float
    limit: float
    unit: str
    margin: float = Field(description="limit - value: negative when over budget")
    passed: bool
    basis: str


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


class Device(BaseModel):
    name: str
    description: str
    clock_mhz: float | None
    sram_bytes: int
    flash_bytes: int
    latency_ms: float | None = None


class Verdict(BaseModel):
    artefact: str
    passed: bool
    constraints: list[Constraint]


class Report(BaseModel):
    schema_version: int = SCHEMA_VERSION
    source: str = Field(description="the run directory or artefact benchmarked")
    machine: str
    device: Device
    training: dict | None = Field(None, description="summary.json of the run, when there is one")
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
        verdict = "PASS" if report.verdict.passed else "FAIL"
        lines += [
            f"## Verdict: {verdict} ({report.verdict.artefact})",
            "",
            "| constraint | value | limit | margin | result | basis |",
            "| --- | ---: | ---: | ---: | --- | --- |",
        ]
        for c in report.verdict.constraints:
            show = _kib if c.unit == "bytes" else (lambda v: f"{v:,.2f} ms")
            lines.append(
                f"| {c.name} | {show(c.value)} | {show(c.limit)} | {show(c.margin)} | "
                f"{'pass' if c.passed else '**FAIL**'} | {c.basis} |"
            )
        lines.append("")
    if report.training:
        t = report.training
        lines += ["## Training", "", "| stage | model | test accuracy |", "| --- | --- | ---: |"]
        lines += [
            f"| {stage} | {t[stage]['model']} | {t[stage]['accuracy']:.2%} |"
            for stage in ("teacher", "baseline", "student")
            if stage in t
        ]
        if "kd_gain" in t:
            lines += ["", f"Distillation gain over the student trained alone: {t['kd_gain'] * 100:+.2f} points."]
        if "excluded_classes" in t:
            excluded = t["excluded_classes"]
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
        if t.get("codistillation"):
            community = t["codistillation"]
            lines += [
                "",
                "Co-distillation: the students "
                + ", ".join(f"{a:.2%}" for a in community["students"])
                + f"; their ensemble {community['ensemble']:.2%} (the first student is the one exported).",
            ]
        lines.append("")
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
    device_artefacts = [a for a in report.artefacts if a.mcu_latency or a.sram]
    if device_artefacts:
        lines += [
            "## On the device",
            "",
            "| artefact | MACs | flash | static SRAM peak | TFLite-Micro arena (head + tail) | peak layer |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for a in device_artefacts:
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
        for a in device_artefacts:
            lines += [
                f"| {a.format} | {m.runtime} | {m.ms:,.1f} ms ({m.low_ms:,.1f}–{m.high_ms:,.1f}) | {m.basis} |"
                for m in a.mcu_latency
            ]
        lines += [
            "",
            "Flash counts the model's flatbuffer only, not the runtime's code. The arena is measured with "
            "TFLite-Micro's x86-64 build; its tail is smaller on a 32-bit MCU.",
            "",
        ]
    if report.plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report.plots] + [""]
    return "\n".join(lines)


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
