"""report.md: the report a person reads, written from report.json's content (edgekd.benchmarks.report_schema)."""

from __future__ import annotations

from pathlib import Path

from edgekd.benchmarks.report_schema import DeviceLayer, DeviceRun, Report, Verdict
from edgekd.checks import Check, format_value
from edgekd.metrics import balanced_accuracy, precisions, recalls
from edgekd.registry import METHODS
from edgekd.rundir import Summary


def _kib(value: float | None) -> str:
    return "–" if value is None else f"{value / 1024:,.1f} KiB"


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
        lines += _verdict_section(report.verdict)
    if report.training:
        lines += _training_section(report.training)
    lines += _artefacts_section(report)
    lines += _device_section(report)
    lines += _per_class_section(report)
    lines += _graph_section(report)
    if report.plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report.plots] + [""]
    return "\n".join(lines)


def _verdict_section(verdict: Verdict) -> list[str]:
    lines = [f"## Verdict: {'PASS' if verdict.passed else 'FAIL'} ({verdict.artefact})", ""]
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
    return lines


def _artefacts_section(report: Report) -> list[str]:
    if report.student_accuracy is not None:
        intro = (
            f"Accuracy on {report.test_images} test images, in each artefact's own runtime "
            f"(PyTorch student: {report.student_accuracy:.2%})."
        )
    else:
        intro = "A lone artefact has no test split: accuracy needs a run directory."
    lines = [
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
    return [
        *lines,
        "",
        "Host latency: this machine's CPU, one thread, batch 1, MLPerf Tiny method (median of 5 windows). "
        "It ranks runtimes; it is not an MCU speed (int8 with int8 activations is often slower than fp32 on "
        "x86 onnxruntime).",
        "",
    ]


def _graph_section(report: Report) -> list[str]:
    graph_artefacts = [a for a in report.artefacts if a.mcu_latency or a.sram]
    if not graph_artefacts:
        return []
    lines = [
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
    return [
        *lines,
        "",
        "Estimates from the .tflite alone: the static peak from tensor lifetimes, the arena from "
        "TFLite-Micro's x86-64 build (its tail is smaller on a 32-bit MCU), latency from MACs × a cycles/MAC "
        "range. Where the device run measured a figure, the verdict uses the measurement.",
        "",
        *_memory_rewrite_section(graph_artefacts),
    ]


def _per_class_section(report: Report) -> list[str]:
    """Recall and precision per class, and balanced accuracy beside top-1: a minority class a model gets
    wrong is invisible in top-1 and shows here."""
    target = next((a for a in report.artefacts if a.format == "tflite-int8"), None)
    columns: list[tuple[str, list[list[int]]]] = []
    if report.student_confusion is not None:
        columns.append(("PyTorch", report.student_confusion))
    if target is not None and "tflite-micro" in target.confusion:
        columns.append(("int8, TFLite Micro", target.confusion["tflite-micro"]))
    device = target.device if target is not None else None
    if device is not None and device.status == "measured" and device.confusion is not None:
        columns.append((f"int8 firmware, {device.target} ({device.images} images)", device.confusion))
    if not columns:
        return []
    names = report.class_names or [str(c) for c in range(len(columns[0][1]))]
    header = (
        " | ".join(f"recall: {name}" for name, _ in columns)
        + " | "
        + " | ".join(f"precision: {name}" for name, _ in columns[:2])
    )
    alignment = "|" + " --- |" + " ---: |" * (1 + len(columns) + len(columns[:2]))
    lines = ["## Per class", "", f"| class | test images | {header} |", alignment]
    recall = [recalls(confusion) for _, confusion in columns]
    precision = [precisions(confusion) for _, confusion in columns[:2]]
    for index, name in enumerate(names):
        images = sum(columns[0][1][index])
        cells = [_percent(r[index]) for r in recall] + [_percent(p[index]) for p in precision]
        lines.append(f"| {name} | {images} | " + " | ".join(cells) + " |")
    balanced = [_percent(balanced_accuracy(confusion)) for _, confusion in columns]
    lines.append("| **balanced accuracy** | | " + " | ".join(balanced) + " |" + " |" * len(precision))
    return [*lines, "", "Balanced accuracy: the mean of the per-class recalls (the test split's class balance "
            "does not weigh it). The confusion matrix of the int8 model is in the plots.", ""]  # fmt: skip


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _memory_rewrite_section(artefacts: list) -> list[str]:
    """What export.memory did to the device model: before and after, and why."""
    lines = []
    for a in artefacts:
        m = a.memory_rewrite
        if m is None:
            continue
        lines += [f"**Memory rewrite** (`export.memory: {m.mode}`) of {a.format}: {m.reason}.", ""]
        if m.rewrite == "none":
            continue
        device = a.device if a.device is not None and a.device.status == "measured" else None
        lines += [
            "| | as converted | rewritten |",
            "| --- | ---: | ---: |",
            f"| TFLite-Micro arena, x86-64 | {_kib(m.arena_before_bytes)} | {_kib(m.arena_after_bytes)} |",
            f"| static activation peak | {_kib(m.static_peak_before_bytes)} | {_kib(m.static_peak_after_bytes)} |",
            f"| model flatbuffer | {_kib(m.model_bytes_before)} | {_kib(m.model_bytes_after)} |",
            f"| MACs | {m.macs_before:,} | {m.macs_after or 0:,} |",
        ]
        if device is not None and m.target_arena_before_bytes is not None:
            instructions = (m.target_instructions_before or 0) / 1e6, (device.instructions_mean or 0) / 1e6
            lines += [
                f"| arena on the {device.core} (measured) | {_kib(m.target_arena_before_bytes)} "
                f"| {_kib(device.arena_used_bytes)} |",
                f"| instructions per inference ({device.core}) | {instructions[0]:,.3f} M | {instructions[1]:,.3f} M |",
                f"| firmware flash | {_kib(m.target_flash_before_bytes)} | {_kib(device.flash_bytes)} |",
            ]
        lines += [
            "",
            "Outputs of the rewritten graph equal the converted graph's bit for bit in TFLite Micro on every "
            "test image (an export check); the device run checks the firmware against the rewritten graph.",
            "",
        ]
    return lines


def _training_section(t: Summary) -> list[str]:
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
        lines += [
            f"{artefact.format} compiled with TensorFlow Lite Micro + CMSIS-NN for the {run.core} and run in "
            f"QEMU ({run.machine}, `-icount shift=0`): {run.images} {run.inputs} in one boot. Cycle model: "
            f"{run.cycle_model}.",
            "",
            *_device_figures(run),
            "",
            *_layer_tables(run),
            "",
            "QEMU counts instructions exactly; the cycles come from a model of the core and its flash run inside "
            "the same QEMU run (`exporters/firmware/cycles/cortex_m_cycles.c`), and the latency's band is that "
            "model's error against real boards."
            if run.cycles_mean is not None
            else "QEMU counts instructions, not cycles, and no cycle model ran: the latency turns instructions into "
            "time with the device profile's cycles-per-instruction range.",
            "",
        ]
    return lines


def _device_figures(run: DeviceRun) -> list[str]:
    """The device run's figures as a table: instructions, cycles, latency, arena, flash, outputs, accuracy."""
    m = 1e6
    parts = ", ".join(f"{p.name} {_kib(p.bytes)}" for p in run.flash_parts)
    latency = run.latency
    lines = [
        "| figure | value | how |",
        "| --- | ---: | --- |",
        f"| instructions per inference | {run.instructions_mean / m:,.3f} M | mean of {run.images} timed "
        f"inferences after a warm-up (min {run.instructions_min / m:,.3f} M, "
        f"max {run.instructions_max / m:,.3f} M; "
        + ("exact) |" if run.instruction_resolution == 1 else f"±{run.instruction_resolution} per reading) |"),
    ]
    if run.cycles_mean is not None:
        lines.append(
            f"| cycles per inference | {run.cycles_mean / m:,.3f} M | the cycle model, same inferences (min "
            f"{run.cycles_min / m:,.3f} M, max {run.cycles_max / m:,.3f} M; "
            f"{run.cycles_mean / run.instructions_mean:.2f} cycles per instruction) |"
        )
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
    if run.frames:
        lines.append(
            f"| camera path: `SetImage()` + `Predict()` | {_percent(run.frames_accuracy)} | the same {run.frames} "
            f"test images as 8-bit frames: {run.frames_input_identical} of {run.frames} inputs byte-identical "
            f"to `edgekd.preprocess`'s, classes {_percent(run.frames_class_agreement)} equal to host "
            "TFLite-Micro's |"
        )
    return lines


def _layer_tables(run: DeviceRun) -> list[str]:
    """Per operator type and per layer: instructions, and cycles and cycles per MAC when the cycle model ran."""
    timed = run.cycles_mean is not None and all(layer.cycles is not None for layer in run.layers)
    unit, whole = ("cycles", run.profiled_cycles) if timed else ("instructions", run.profiled_instructions)

    def cost(layer: DeviceLayer) -> int:
        return layer.cycles if timed else layer.instructions

    total = sum(cost(layer) for layer in run.layers) or 1
    by_op: dict[str, list[DeviceLayer]] = {}
    for layer in run.layers:
        by_op.setdefault(layer.op, []).append(layer)
    extra = " | instructions" if timed else ""
    lines = [
        f"{unit.capitalize()} by operator (one profiled inference, {(whole or 0) / 1e6:,.3f} M; "
        f"the layers sum to {total / max(whole or 1, 1):.1%} of it):",
        "",
        f"| operator | layers | MACs{extra} | {unit} | per MAC | share |",
        f"| --- | ---: | ---:{' | ---:' if timed else ''} | ---: | ---: | ---: |",
    ]
    for op, layers in sorted(by_op.items(), key=lambda kv: -sum(cost(layer) for layer in kv[1])):
        spent = sum(cost(layer) for layer in layers)
        macs = sum(layer.macs for layer in layers)
        per_mac = f"{spent / macs:.2f}" if macs else "–"
        instructions = f" | {sum(layer.instructions for layer in layers):,}" if timed else ""
        lines.append(f"| {op} | {len(layers)} | {macs:,}{instructions} | {spent:,} | {per_mac} | {spent / total:.1%} |")
    lines += [
        "",
        "<details><summary>Every layer</summary>",
        "",
        f"| # | operator | output | MACs{extra} | {unit} | per MAC |",
        f"| ---: | --- | --- | ---:{' | ---:' if timed else ''} | ---: | ---: |",
    ]
    for layer in run.layers:
        per_mac = f"{cost(layer) / layer.macs:.2f}" if layer.macs else "–"
        instructions = f" | {layer.instructions:,}" if timed else ""
        lines.append(
            f"| {layer.index} | {layer.op} | {'×'.join(map(str, layer.output_shape))} | {layer.macs:,}{instructions} | "
            f"{cost(layer):,} | {per_mac} |"
        )
    lines += ["", "</details>"]
    return lines
