"""`edgekd bench RUN_DIR|ARTEFACT --device NAME`: every artefact's accuracy (from the export's
verification, in its own runtime), host latency per runtime, memory, MCU estimate, and a verdict for
the int8 TFLite model against the device's budget. Writes report.json, report.md and plots."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from edgekd import firmware
from edgekd.benchmarks import device as device_run
from edgekd.benchmarks import latency as latency_method
from edgekd.benchmarks.compute import layer_macs, mcu_latency
from edgekd.benchmarks.machine import machine_line
from edgekd.benchmarks.memory import analyse
from edgekd.benchmarks.plots import plot_confusion, plot_device_layers, plot_memory, plot_tradeoffs, plot_training
from edgekd.benchmarks.profiles import Budget, Device, load_device, parse_budget
from edgekd.benchmarks.report import markdown
from edgekd.benchmarks.report_schema import (
    Artefact,
    DeviceRun,
    HostLatency,
    McuLatency,
    MemoryRewrite,
    PeakLayer,
    Report,
    Sram,
    Verdict,
)
from edgekd.benchmarks.report_schema import Device as DeviceRecord
from edgekd.checks import Check, check
from edgekd.config import BenchConfig
from edgekd.errors import EdgeKDError
from edgekd.exporters.export import ExportSample, test_sample
from edgekd.exporters.formats import FORMATS, device_format
from edgekd.exporters.runtimes import ArtefactError, measure_arena, runner_for
from edgekd.exporters.tflite import ConversionError
from edgekd.rundir import ExportReport, RunDir

WINDOWS = 5  # MLPerf Tiny: five inputs, one window each
MCU_RUNTIME_FOR_VERDICT = "tflm-cmsis-nn"


def _artefact_format(path: Path) -> str:
    """What a lone file is, from its contents: the first format that recognises it."""
    if path.suffix not in (".onnx", ".tflite"):
        raise ArtefactError(f"{path}: not an artefact edgekd benchmarks (.onnx or .tflite), or a run directory")
    try:
        found = next((name for name, entry in FORMATS if entry.recognise is not None and entry.recognise(path)), None)
    except ConversionError as exc:
        raise ArtefactError(str(exc)) from None
    if found is None:
        raise ArtefactError(f"{path}: no export format edgekd knows recognises it")
    return found


def _collect(
    source: Path,
) -> tuple[list[tuple[str, Path]], ExportReport | None, dict | None, ExportSample | None]:
    """(format, path) pairs, the export findings, the training summary, and the test images the export kept
    (None for a lone file)."""
    if source.is_dir():
        run = RunDir(source)
        if not run.export_json.is_file():
            raise EdgeKDError(
                f"{source} has no {run.export_json.relative_to(source)}; run `edgekd export {source}` first"
            )
        try:
            exported = run.read_export()
        except ValueError:
            raise EdgeKDError(
                f"{run.export_json} is from another edgekd version; run `edgekd export {source}`"
            ) from None
        artefacts = [
            (fmt, source / entry.path)
            for fmt, entry in exported.artefacts.items()
            if fmt in FORMATS and FORMATS.get(fmt).runtimes and (source / entry.path).is_file()
        ]
        if not artefacts:
            raise EdgeKDError(f"{source}: no exported model files found; run `edgekd export {source}`")
        summary = run.read_summary()
        sample = test_sample(run)
        if sample is None:
            raise EdgeKDError(f"{source}: the export kept no test images; run `edgekd export {source}` again")
        return artefacts, exported, summary, sample
    if not source.is_file():
        raise EdgeKDError(f"{source} does not exist; give a run directory or an .onnx/.tflite file")
    return [(_artefact_format(source), source)], None, None, None


def _inputs_for(runner, images: np.ndarray | None) -> list:
    """Five prepared inputs: test images, or for a lone artefact random ones of its own shape."""
    if images is None:
        images = np.random.default_rng(0).standard_normal((WINDOWS, *runner.nchw_shape[1:])).astype(np.float32)
    return [runner.prepare(image[None]) for image in images[:WINDOWS]]


def _latency_words(latency: McuLatency, from_cycles: bool) -> str:
    if from_cycles:
        return f" = {latency.ms:,.1f} ms ± {latency.high_ms / latency.ms - 1:.0%}"
    return f", {latency.low_ms:,.1f}–{latency.high_ms:,.1f} ms (instructions × a CPI range: no cycle model)"


def resolve_target(target: str, device: Device, tflm: str | None) -> tuple[str | None, str | None]:
    """(QEMU target to run, or None with the reason). `auto` runs the device's core when the toolchain
    and a TFLM tree are present; a target named explicitly must be runnable, or it is bad input."""
    if firmware.check_target(target) == "none":
        return None, "not asked for (target: none)"
    if target == "auto":
        target = firmware.TARGET_FOR_CORE.get(device.core or "")
        if target is None:
            return None, f"device {device.name} names no Cortex-M4 or Cortex-M7 core to emulate"
        try:
            firmware.find_toolchain()
            firmware.resolve_tflm_tree(tflm)
        except firmware.DeviceSetupError as exc:
            return None, str(exc)
        return target, None
    core = firmware.TARGETS[target].core
    if device.core is not None and device.core != core:
        raise firmware.DeviceSetupError(
            f"--target {target} emulates a {core} but device {device.name} is a {device.core}; "
            f"use --target {firmware.TARGET_FOR_CORE.get(device.core, 'none')} or another device"
        )
    firmware.find_toolchain()
    firmware.resolve_tflm_tree(tflm)
    return target, None


def _sram(path: Path, int8: bool) -> tuple[Sram, int]:
    profile = analyse(path)
    arena = measure_arena(path) if int8 else None
    peak = profile.peak
    return Sram(
        static_peak_bytes=profile.peak_bytes,
        arena_total_bytes=arena and arena["total"],
        arena_head_bytes=arena and arena["head"],
        arena_tail_bytes=arena and arena["tail"],
        io_bytes=profile.input_bytes + profile.output_bytes,
        peak_layer=PeakLayer(index=peak.index, op=peak.op, output_shape=peak.output_shape),
        layer_live_bytes=[layer.live_bytes for layer in profile.layers],
    ), profile.file_bytes


def _memory_rewrite(found: dict) -> MemoryRewrite:
    """export.json's record of the memory rewrite, as the report shows it."""
    after = found.get("arena_after")
    return MemoryRewrite(
        mode=found["mode"],
        rewrite=found["rewrite"],
        reason=found["reason"],
        arena_before_bytes=found["arena_before"]["total"],
        arena_after_bytes=after and after["total"],
        static_peak_before_bytes=found["static_peak_before"],
        static_peak_after_bytes=found.get("static_peak_after"),
        model_bytes_before=found["flash_before"],
        model_bytes_after=found.get("flash_after"),
        macs_before=found["macs_before"],
        macs_after=found.get("macs_after"),
        layer_live_bytes_before=found.get("layer_live_bytes_before", []),
    )


def verdict(
    artefact: Artefact, budget: Budget, export_checks: list[Check] | None = None, test_images: int | None = None
) -> Verdict:
    """The device artefact against the budget, and every verification of the export.

    Budget: the arena must fit SRAM, the firmware (or, without a device run, the model) flash, the slow
    end of the latency the latency budget and the accuracies their floors (each when given).
    Measured figures come first: the device run's arena, firmware size and instruction count; the x86
    arena and the MAC-based estimate only when there was no device run, and the basis says so.
    Checks: every check of export.json, and the firmware's outputs against the host's."""
    measured = artefact.device if artefact.device is not None and artefact.device.status == "measured" else None
    constraints = [
        _sram_constraint(artefact, measured, budget),
        _flash_constraint(artefact, measured, budget),
        _latency_constraint(artefact, measured, budget),
    ]
    constraints = [c for c in constraints if c is not None] + _accuracy_constraints(artefact, budget, test_images)
    checks = list(export_checks or [])
    if measured is not None:
        checks.append(
            check(
                f"{artefact.format}: device outputs ({measured.target})",
                measured.agreement_with_host,
                1.0,
                "fraction",
                f"top-1 agreement of the firmware with host TFLite-Micro on {measured.images} inputs"
                + ("; int8 outputs bit-identical" if measured.bit_exact else "; int8 outputs differ"),
                bound="min",
            )
        )
    if measured is not None and measured.frames:
        both = min(measured.frames_input_identical / measured.frames, measured.frames_class_agreement)
        checks.append(
            check(
                f"{artefact.format}: device preprocessing ({measured.target})",
                both,
                1.0,
                "fraction",
                f"{measured.frames} test images as 8-bit frames through the firmware's SetImage() and Predict(): "
                f"{measured.frames_input_identical} inputs byte-identical to edgekd.preprocess's, classes "
                f"{measured.frames_class_agreement:.0%} equal to host TFLite-Micro's",
                bound="min",
            )
        )
    passed = all(c.passed for c in [*constraints, *checks])
    return Verdict(artefact=artefact.format, passed=passed, constraints=constraints, checks=checks)


def _sram_constraint(artefact: Artefact, measured: DeviceRun | None, budget: Budget) -> Check | None:
    if measured is not None:
        basis = f"TFLite-Micro arena on the {measured.core} (QEMU {measured.machine}), measured"
        return check("SRAM", measured.arena_used_bytes, budget.sram_bytes, "bytes", basis)
    sram = artefact.sram
    if sram is None:
        return None
    if sram.arena_total_bytes is not None:
        basis = "TFLite-Micro arena, x86-64 build (the 32-bit target needs a little less)"
        return check("SRAM", sram.arena_total_bytes, budget.sram_bytes, "bytes", basis)
    return check("SRAM", sram.static_peak_bytes, budget.sram_bytes, "bytes", "static activation peak")


def _flash_constraint(artefact: Artefact, measured: DeviceRun | None, budget: Budget) -> Check | None:
    if measured is not None:
        basis = "firmware image: model + TFLite Micro + CMSIS-NN + C runtime + runner (arm-none-eabi-size)"
        return check("flash", measured.flash_bytes, budget.flash_bytes, "bytes", basis)
    if artefact.flash_bytes is None:
        return None
    return check("flash", artefact.flash_bytes, budget.flash_bytes, "bytes", "model flatbuffer only (no device run)")


def _latency_constraint(artefact: Artefact, measured: DeviceRun | None, budget: Budget) -> Check | None:
    if budget.latency_ms is None:
        return None
    if measured is not None and measured.latency is not None:
        latency = measured.latency
        return check("latency", latency.high_ms, budget.latency_ms, "ms", "slow end of " + latency.basis)
    if artefact.mcu_latency:
        estimate = next(
            (m for m in artefact.mcu_latency if m.runtime == MCU_RUNTIME_FOR_VERDICT), artefact.mcu_latency[0]
        )
        basis = f"slow end of the {estimate.runtime} estimate"
        return check("latency", estimate.high_ms, budget.latency_ms, "ms", basis)
    return check("latency", float("inf"), budget.latency_ms, "ms", "no latency figure: no clock")


def _accuracy_constraints(artefact: Artefact, budget: Budget, test_images: int | None) -> list[Check]:
    found = []
    floors = (("accuracy", budget.accuracy, artefact.accuracy),
              ("balanced accuracy", budget.balanced_accuracy, artefact.balanced_accuracy))  # fmt: skip
    for name, floor, measured in floors:
        if floor is None:
            continue
        micro = measured.get("tflite-micro")
        if micro is None:
            basis = "not measured: a lone artefact has no test split"
            found.append(check(name, 0.0, floor, "fraction", basis, bound="min"))
            continue
        basis = f"{artefact.format} in TFLite Micro on {test_images} test images (bit-identical to the device)"
        found.append(check(name, micro, floor, "fraction", basis, bound="min"))
    return found


def export_checks(exported: ExportReport | None) -> list[Check]:
    """Every check of export.json, named by its artefact."""
    if exported is None:
        return []
    return [
        c.model_copy(update={"name": f"{fmt}: {c.name}"}) for fmt, e in exported.artefacts.items() for c in e.checks
    ]


@dataclass(frozen=True)
class BenchPlan:
    """What one benchmark is asked, resolved once: the device profile, the budget, the QEMU target to run
    the firmware on (or why not), and the recipe's `bench:` settings. Making one checks the input, so
    `edgekd run` makes it before training."""

    device: Device
    budget: Budget
    settings: BenchConfig
    run_target: str | None  # the QEMU target the firmware runs on, None when it does not
    skip_reason: str | None  # why the device run is skipped
    tflm: str | None = None  # a TensorFlow Lite Micro tree (default: $EDGEKD_TFLM)

    @classmethod
    def of(cls, settings: BenchConfig, tflm: str | None = None) -> BenchPlan:
        device = load_device(settings.device)
        budget = parse_budget(settings.budget, device)
        run_target, skip_reason = resolve_target(settings.target, device, tflm)
        return cls(device, budget, settings, run_target, skip_reason, tflm)


def bench(source: Path, plan: BenchPlan, *, out_dir: Path | None = None, console: Console | None = None) -> Report:
    """Benchmark a run directory (after export) or a lone artefact as `plan` says; write the report."""
    console = console or Console(stderr=True)
    source = Path(source)
    # A run directory gets the report and the firmware build: one writer at a time.
    lock = RunDir(source).locked() if source.is_dir() and RunDir(source).is_run else contextlib.nullcontext()
    threads = torch.get_num_threads()
    try:
        with lock:
            torch.set_num_threads(1)  # one thread, as on an MCU and in MLPerf Tiny
            return _bench(source, plan, out_dir or report_dir(source), console)
    finally:
        torch.set_num_threads(threads)  # the caller gets its own count back


def _bench(source: Path, plan: BenchPlan, out: Path, console: Console) -> Report:
    artefacts, exported, summary, test = _collect(source)
    records = [_artefact(fmt, path, source, plan, exported, test, out, console) for fmt, path in artefacts]
    budget = plan.budget
    device_record = DeviceRecord(
        name=plan.device.name,
        description=plan.device.description,
        clock_mhz=plan.device.clock_mhz,
        sram_bytes=budget.sram_bytes,
        flash_bytes=budget.flash_bytes,
        latency_ms=budget.latency_ms,
    )
    target = next((r for r in records if r.format == device_format()), None)
    test_images = exported.test_images if exported is not None else None
    report = Report(
        source=str(source),
        machine=machine_line(),
        device=device_record,
        training=summary,
        student_accuracy=exported.student.accuracy if exported is not None else None,
        student_balanced_accuracy=exported.student.balanced_accuracy if exported is not None else None,
        student_confusion=exported.student.confusion if exported is not None else None,
        class_names=exported.student.class_names if exported is not None else [],
        test_images=test_images,
        artefacts=records,
        verdict=verdict(target, budget, export_checks(exported), test_images) if target else None,
    )
    _write_report(report, source, out, target, budget)
    return report


def _artefact(
    fmt: str, path: Path, source: Path, plan: BenchPlan, exported: ExportReport | None, test: ExportSample | None,
    out: Path,
    console: Console,
) -> Artefact:  # fmt: skip
    """One artefact's record: the export's accuracy, host latency per runtime, and for TFLite the memory
    analysis, MACs and (the device artefact) the MCU estimate and the device run."""
    images = test.images if test is not None else None
    console.print(f"[bold]{fmt}[/bold] {path}")
    found = exported.artefacts[fmt].results if exported is not None and fmt in exported.artefacts else {}
    record = Artefact(
        format=fmt,
        path=str(path),
        bytes=path.stat().st_size,
        accuracy={runtime: r.accuracy for runtime, r in found.items()},
        balanced_accuracy={rt: r.balanced_accuracy for rt, r in found.items() if r.balanced_accuracy is not None},
        confusion={runtime: r.confusion for runtime, r in found.items() if r.confusion is not None},
        agreement={runtime: r.agreement for runtime, r in found.items()},
    )
    for runtime in FORMATS.get(fmt).runtimes:
        runner = runner_for(path, runtime)
        seconds = plan.settings.latency_seconds
        measured = latency_method.measure(runner.invoke, _inputs_for(runner, images), min_seconds=seconds)
        record.host_latency.append(
            HostLatency(runtime=runtime, median_ms=measured.median_ms, p90_ms=measured.p90_ms, runs=measured.runs)
        )
        console.print(f"  host {runtime}: median {measured.median_ms:.3f} ms, p90 {measured.p90_ms:.3f} ms")
    if path.suffix != ".tflite":  # the graph analyses read TFLite flatbuffers
        return record
    device_artefact = fmt == device_format()
    record.sram, record.flash_bytes = _sram(path, int8=device_artefact)
    if exported is not None and fmt in exported.artefacts and "memory" in exported.artefacts[fmt].info:
        record.memory_rewrite = _memory_rewrite(exported.artefacts[fmt].info["memory"])
    layers = layer_macs(path)
    record.macs = sum(layer.macs for layer in layers if layer.op_class != "other")
    if device_artefact:
        record.mcu_latency = [
            McuLatency(runtime=m.runtime, ms=m.ms, low_ms=m.low_ms, high_ms=m.high_ms, basis=m.basis)
            for m in mcu_latency(layers, plan.device)
        ]
        if plan.run_target is None:
            console.print(f"  [yellow]device run skipped[/yellow]: {plan.skip_reason}", highlight=False)
            record.device = device_run.skipped(plan.settings.target, plan.skip_reason)
        else:
            record.device = _on_device(path, source, plan, test, out, console)
            record.memory_rewrite = _unrewritten_on_device(record, path, plan, test, out, console)
    return record


def _unrewritten_on_device(
    record: Artefact, path: Path, plan: BenchPlan, sample: ExportSample | None, out: Path, console: Console
) -> MemoryRewrite | None:
    """What the graph as converted needs on the same target (three inferences), beside the rewritten graph's
    run: the rewrite's saving and its cost, both measured."""
    rewrite = record.memory_rewrite
    original = path.parent / f"{path.stem}.unrewritten.tflite"
    if rewrite is None or rewrite.rewrite == "none" or record.device.status != "measured" or not original.is_file():
        return rewrite
    console.print(f"  {plan.run_target}: the graph as converted, for the rewrite's before/after", highlight=False)
    before = device_run.measure(original, plan.run_target, plan.device, project=None,
                                build_root=RunDir(out).device / "unrewritten", sample=sample, count=3,
                                tree_spec=plan.tflm, log=lambda text: console.print(text, highlight=False))  # fmt: skip
    return rewrite.model_copy(update={
        "target_arena_before_bytes": before.arena_used_bytes,
        "target_instructions_before": before.instructions_mean,
        "target_flash_before_bytes": before.flash_bytes,
    })  # fmt: skip


def _write_report(report: Report, source: Path, out: Path, target: Artefact | None, budget: Budget) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = RunDir(out)  # the report goes into the run directory (or beside a lone artefact)
    plots = [
        plot_training(files.metrics, files.plot("training")) if source.is_dir() else None,
        plot_tradeoffs(report, files.plot("tradeoffs")),
        plot_memory(target, budget.sram_bytes, files.plot("memory")) if target else None,
        plot_device_layers(target, files.plot("device_layers")) if target else None,
        plot_confusion(target, report.class_names, files.plot("confusion")) if target else None,
    ]
    report.plots = [p.name for p in plots if p is not None]
    files.report_json.write_text(report.model_dump_json(indent=2) + "\n")
    files.report_md.write_text(markdown(report))


def report_dir(source: Path) -> Path:
    """Where the report goes: into the run directory, or a folder beside a lone artefact."""
    return source if source.is_dir() else source.parent / f"{source.stem}-report"


def _on_device(
    path: Path, source: Path, plan: BenchPlan, sample: ExportSample | None, out: Path,
    console: Console,
) -> DeviceRun:  # fmt: skip
    """Build and run the exported firmware project (or, for a lone .tflite, one made for it)."""
    exported_project = RunDir(source).artefact(FORMATS.get("mcu-project").file) if source.is_dir() else None
    project = exported_project if exported_project is not None and exported_project.is_dir() else None
    run = device_run.measure(
        path,
        plan.run_target,
        plan.device,
        project=project,
        build_root=RunDir(out).device,
        sample=sample,
        count=plan.settings.device_images,
        tree_spec=plan.tflm,
        log=lambda text: console.print(text, highlight=False),
    )
    console.print(
        f"  {run.target}: {run.instructions_mean / 1e6:,.3f} M instructions/inference"
        + (f", {run.cycles_mean / 1e6:,.3f} M cycles" if run.cycles_mean is not None else "")
        + (_latency_words(run.latency, run.cycles_mean is not None) if run.latency else "")
        + ", "
        f"arena {run.arena_used_bytes:,} B, "
        f"firmware flash {run.flash_bytes:,} B, agreement with host {run.agreement_with_host:.0%}"
        + (" (bit-exact)" if run.bit_exact else " (outputs differ)"),
        highlight=False,
    )
    return run
