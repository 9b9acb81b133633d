"""The report's plots (PNG beside report.md), drawn from report.json's content with matplotlib."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display: before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402

from edgekd.benchmarks.report_schema import Artefact, McuLatency, Report


def plot_training(metrics_csv: Path, out: Path) -> Path | None:
    if not metrics_csv.is_file():
        return None
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
    points = [a for a in report.artefacts if (a.sram or a.mcu_latency) and a.accuracy]
    if not points:  # a lone artefact has no test split: no accuracy to plot against
        return None
    fig, (sram_axis, latency_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    for a in points:
        accuracy = 100 * max(a.accuracy.values()) if a.accuracy else None
        if accuracy is None:
            continue
        sram, sram_label, latencies = _device_figures(a)
        if sram is not None:
            sram_axis.scatter(sram / 1024, accuracy, s=40, label=sram_label)
        for m, label in latencies:
            latency_axis.errorbar(m.ms, accuracy, xerr=[[m.ms - m.low_ms], [m.high_ms - m.ms]], fmt="o", capsize=3,
                                  label=label)  # fmt: skip
    sram_axis.axvline(report.device.sram_bytes / 1024, color="red", ls="--", label="SRAM budget")
    sram_axis.set(title="accuracy vs SRAM", xlabel="KiB", ylabel="test accuracy %")
    if report.device.latency_ms:
        latency_axis.axvline(report.device.latency_ms, color="red", ls="--", label="latency budget")
    latency_axis.set(title=f"accuracy vs MCU latency ({report.device.name})", xlabel="ms")
    for axis in (sram_axis, latency_axis):
        if axis.get_legend_handles_labels()[0]:  # a lone artefact without a latency budget draws none
            axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _device_figures(a: Artefact) -> tuple[int | None, str, list[tuple[McuLatency, str]]]:
    """(SRAM bytes, its label, latencies with labels) to plot: what the device run measured where it ran,
    else the graph's estimates."""
    run = a.device if a.device is not None and a.device.status == "measured" else None
    if run is not None:
        latencies = [(run.latency, f"{a.format} · measured on {run.target}")] if run.latency else []
        return run.arena_used_bytes, f"{a.format} · arena on {run.target}", latencies
    sram = (a.sram.arena_total_bytes or a.sram.static_peak_bytes) if a.sram else None
    label = f"{a.format} · {'arena, x86-64' if a.sram and a.sram.arena_total_bytes else 'static peak'}"
    return sram, label, [(m, f"{a.format} · {m.runtime} estimate") for m in a.mcu_latency]


def plot_memory(artefact: Artefact, sram_budget: int, out: Path) -> Path | None:
    if artefact.sram is None:
        return None
    live = [b / 1024 for b in artefact.sram.layer_live_bytes]
    peak = artefact.sram.peak_layer
    fig, axis = plt.subplots(figsize=(10, 3.6))
    colours = ["tab:red" if i == peak.index else "tab:blue" for i in range(len(live))]
    axis.bar(range(len(live)), live, color=colours)
    rewrite = artefact.memory_rewrite
    if rewrite is not None and rewrite.rewrite != "none" and rewrite.layer_live_bytes_before:
        before = [b / 1024 for b in rewrite.layer_live_bytes_before]
        axis.step(range(len(before)), before, where="mid", color="grey", lw=1,
                  label=f"as converted, before the {rewrite.rewrite} rewrite (its own op order)")  # fmt: skip
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
    ops = list(dict.fromkeys(layer.op for layer in run.layers))
    colours = {op: plt.get_cmap("tab10")(i % 10) for i, op in enumerate(ops)}
    timed = run.profiled_cycles is not None and all(layer.cycles is not None for layer in run.layers)
    unit, whole = ("cycles", run.profiled_cycles) if timed else ("instructions", run.profiled_instructions)
    fig, axis = plt.subplots(figsize=(10, 3.6))
    for op in ops:
        layers = [layer for layer in run.layers if layer.op == op]
        axis.bar(
            [layer.index for layer in layers],
            [(layer.cycles if timed else layer.instructions) / 1e3 for layer in layers],
            color=colours[op],
            label=op,
        )
    axis.set(
        title=f"{unit} per layer on the {run.core} ({'cycle model' if timed else 'QEMU'}, one inference: "
        f"{whole / 1e6:,.2f} M)",
        xlabel="layer (op order)",
        ylabel=f"thousand {unit}",
    )
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_confusion(artefact: Artefact, class_names: list[str], out: Path) -> Path | None:
    """The int8 model's confusion matrix in TFLite Micro on the test split, each row as shares of its class."""
    counts = artefact.confusion.get("tflite-micro")
    if counts is None:
        return None
    matrix = np.asarray(counts, dtype=np.float64)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = class_names or [str(c) for c in range(len(matrix))]
    size = min(10, 2.5 + 0.45 * len(names))
    fig, axis = plt.subplots(figsize=(size, size))
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 20:  # the counts, legible
        for (row, column), count in np.ndenumerate(matrix.astype(int)):
            if count:
                colour = "white" if shares[row, column] > 0.5 else "black"
                axis.text(column, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    accuracy = artefact.balanced_accuracy.get("tflite-micro")
    subtitle = f", balanced accuracy {accuracy:.1%}" if accuracy is not None else ""
    axis.set(title=f"{artefact.format} in TFLite Micro{subtitle}", xlabel="predicted", ylabel="true class")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
