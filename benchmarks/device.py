"""Measured on the target: the int8 model in TensorFlow Lite Micro + CMSIS-NN, compiled for a Cortex-M
core and run in QEMU.

The procedure, in order:
1. Write (or take the exported) mcu-project: the C array, a runner whose op resolver holds only the
   model's operators, a benchmark main. Refuse an operator the TFLM tree lacks, or a model the board
   cannot hold, before building.
2. Build it with the Arm GNU toolchain (the TFLM library once per tree/core/flags, cached).
3. Boot it once in QEMU with `-icount shift=0` and feed it N test images: one warm-up inference, then
   one timed inference per image, then one more inference of the first image with TFLM's MicroProfiler
   attached, operator by operator; then, when the test images' 8-bit pixels are known, the same images
   as camera frames through the firmware's own SetImage() and Predict(). The cycle-model plugin (the
   profile's `cycle_model`: the core's instruction timings, branch refill, flash wait states) counts
   instructions and cycles between the firmware's own timer reads.
4. Compare every int8 output with the host tflite-micro interpreter's (expected: bit-identical), and every
   input SetImage() wrote with edgekd.preprocess's for the same frame (expected: byte-identical).
5. Report instructions and cycles per inference (mean, min, max), per layer, the arena the 32-bit build
   used, the firmware's flash by component, and latency = cycles ÷ clock ± the error the validation
   measured against real boards. Where no cycle model runs (a profile without one, a QEMU without
   plugins), latency falls back to instructions × the profile's cycles-per-instruction range, labelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekd import firmware as fw
from edgekd.benchmarks.compute import layer_macs
from edgekd.benchmarks.profiles import Device
from edgekd.benchmarks.report_schema import DeviceLayer, DeviceRun, FlashPart, McuLatency
from edgekd.exporters.c_array import ModelInterface, input_hwc
from edgekd.exporters.export import ExportSample
from edgekd.exporters.mcu_project import check_operators, takes_frames, write_mcu_project
from edgekd.exporters.runtimes import MicroRunner
from edgekd.exporters.tflite import read_graph
from edgekd.metrics import balanced_accuracy, confusion_matrix
from edgekd.preprocess import frame_to_input, input_lut


def project_for(tflite_path: Path, micro: MicroRunner, arena_bytes: int, folder: Path) -> Path:
    """A project for a lone .tflite (a run directory's export already holds one): no normalisation or
    class names are known, so the header says identity and class_<i>."""
    channels = input_hwc(micro.input_shape)[2]
    classes = int(np.prod(micro.interpreter.get_output_details(0)["shape"]))
    interface = ModelInterface.of(
        micro,
        mean=[0.0] * channels,
        std=[1.0] * channels,
        class_names=[f"class_{i}" for i in range(classes)],
        arena_bytes=arena_bytes,
        description=tflite_path.name,
    )
    write_mcu_project(tflite_path, folder, interface)
    return folder


def measure(
    tflite_path: Path,
    target_name: str,
    device: Device,
    *,
    project: Path | None,
    build_root: Path,
    sample: ExportSample | None,
    count: int,
    tree_spec: str | None,
    log: Callable[[str], None] = print,
) -> DeviceRun:
    """The device figures of an int8 .tflite on a QEMU target, fed `count` test images of `sample`; without
    it, seeded random int8 inputs. When the sample holds the images' 8-bit pixels and `project` (exported
    with the run) has SetImage(), the same images then go through SetImage() and Predict() as frames."""
    target = fw.TARGETS[target_name]
    toolchain = fw.find_toolchain()
    tree = fw.resolve_tflm_tree(tree_spec)
    micro = _runnable(tflite_path, tree, target)
    arena_x86 = micro.arena["total"]
    fed_frames = sample is not None and sample.frames is not None and project is not None and takes_frames(project)
    if project is None:
        project = project_for(tflite_path, micro, arena_x86, build_root / "mcu-project")
    if sample is not None:
        inputs = np.stack([micro.prepare(image[None]) for image in sample.images[:count]])
    else:
        rng = np.random.default_rng(0)
        inputs = rng.integers(-128, 128, size=(count, *micro.input_shape), dtype=np.int8)
    host = np.stack([micro.invoke(x).reshape(-1) for x in inputs]).astype(np.int8)

    firmware = fw.build_firmware(project, target, tree, toolchain, log=log)
    started = time.perf_counter()
    records = _frame_records(sample, count) if fed_frames else []
    run = _run(firmware, inputs.reshape(len(inputs), -1), toolchain, device, log, b"".join(records))
    log(
        f"  {target.name}: {len(inputs) + len(records)} inferences in QEMU ({run.seconds:.1f} s); "
        f"build {firmware.seconds:.1f} s{' (TFLM library built)' if firmware.library_built else ''}"
    )
    if len(run.frames) != len(records):
        raise fw.CheckFailed(f"the firmware ran {len(run.frames)} of {len(records)} frames through SetImage()")
    labels = sample.labels if sample is not None else None
    record = _record(tflite_path, target, device, run, host, labels)
    if fed_frames:
        record = record.model_copy(update=_frame_results(run, sample, micro))
    return record.model_copy(update={
        "inputs": "test images" if sample is not None else "random int8 inputs (seed 0)",
        "arena_x86_bytes": arena_x86,
        "toolchain": toolchain.description,
        "tflm_tree": str(tree),
        "project": str(project),
        **_flash(firmware, toolchain),
        "seconds": round(firmware.seconds + time.perf_counter() - started, 1),
    })  # fmt: skip


def cycle_model(device: Device) -> fw.CycleModel | None:
    """What the plugin charges on this device, from its profile (None: the profile has no cycle model)."""
    spec = device.cycle_model
    if spec is None:
        return None
    core = "m7" if spec.timing == "cortex-m7" else "m4"
    if spec.flash is None:
        return fw.CycleModel(refill=spec.branch_refill, core=core)
    return fw.CycleModel(refill=spec.branch_refill, flash_wait=spec.flash.wait_states,
                         flash_line=spec.flash.line_bytes, flash_lines=spec.flash.buffer_lines,
                         flash_ways=spec.flash.ways or 0, core=core)  # fmt: skip


def _run(
    firmware: fw.Firmware, inputs: np.ndarray, toolchain: fw.Toolchain, device: Device, log, frames: bytes
) -> fw.FirmwareRun:
    """The firmware run under the device's cycle model, or without it (instructions only) when there is none
    or this QEMU cannot load the plugin."""
    model = cycle_model(device)
    if model is not None:
        try:
            return fw.run_firmware(firmware, inputs, toolchain, cycles=model, frames=frames)
        except fw.PluginUnsupported as exc:
            log(f"  {exc}; latency falls back to instructions x cycles per instruction")
            run = fw.run_firmware(firmware, inputs, toolchain, frames=frames)
            run.cycles_unavailable = str(exc)
            return run
    return fw.run_firmware(firmware, inputs, toolchain, frames=frames)


def _frame_records(sample: ExportSample, count: int) -> list[bytes]:
    """The first `count` images' pixels as records of the firmware's frames file."""
    records = []
    for pixels in sample.frames[:count]:
        height, width, channels = pixels.shape
        records.append(fw.frame_record(pixels.tobytes(), width, height, _pixel_format(channels), sample.resize))
    return records


def _pixel_format(channels: int) -> str:
    return "GRAY8" if channels == 1 else "RGB888"


def _frame_results(run: fw.FirmwareRun, sample: ExportSample, micro: MicroRunner) -> dict:
    """The frames' inputs against edgekd.preprocess's, Predict()'s classes against host TFLite Micro's on
    those inputs, and the accuracy through SetImage()."""
    lut = input_lut(sample.mean, sample.std, micro.input_scale, micro.input_zero_point)
    size, channels = micro.input_shape[1], micro.input_shape[3]
    identical = agreeing = 0
    for pixels, result in zip(sample.frames[: len(run.frames)], run.frames, strict=True):
        height, width, _ = pixels.shape
        expected = frame_to_input(pixels.tobytes(), width, height, _pixel_format(pixels.shape[2]), size=size,
                                  channels=channels, rule=sample.resize, lut=lut)  # fmt: skip
        identical += result.input_digest == fw.fnv1a(expected.tobytes())
        agreeing += result.class_index == int(np.argmax(micro.invoke(expected.reshape(micro.input_shape))))
    fed = len(run.frames)
    found = {"frames": fed, "frames_input_identical": identical, "frames_class_agreement": agreeing / max(fed, 1)}
    if sample.labels is not None and fed:
        predictions = np.array([result.class_index for result in run.frames])
        found["frames_accuracy"] = float((predictions == sample.labels[:fed]).mean())
    return found


def _record(
    tflite_path: Path, target: fw.Target, device: Device, run: fw.FirmwareRun, host: np.ndarray,
    labels: np.ndarray | None,
) -> DeviceRun:  # fmt: skip
    """What the firmware run measured: instructions (per inference and per layer), arena, and its
    outputs against the host's (`host`: TFLite Micro's int8 outputs for the same inputs)."""
    per_tick = run.instructions_per_tick
    outputs = run.outputs.reshape(host.shape)
    if run.cycles is not None:  # exact instructions from the plugin's stamps, and cycles
        instructions = np.array([i for i, _ in run.cycles.inferences], dtype=np.float64)
        cycles = np.array([c for _, c in run.cycles.inferences], dtype=np.float64)
        timing = {
            "instruction_resolution": 1,
            "warmup_instructions": run.cycles.warmup[0],
            "profiled_instructions": run.cycles.profile[0],
            "cycles_mean": float(cycles.mean()),
            "cycles_min": int(cycles.min()),
            "cycles_max": int(cycles.max()),
            "profiled_cycles": run.cycles.profile[1],
            "cycle_model": describe(device),
            "latency": latency_from_cycles(float(cycles.mean()), device),
        }
    else:
        instructions = np.array(run.ticks, dtype=np.float64) * per_tick
        timing = {
            "instruction_resolution": int(per_tick),
            "warmup_instructions": int(run.warmup_ticks * per_tick),
            "profiled_instructions": int(run.profile_ticks * per_tick),
            "cycle_model": run.cycles_unavailable or "the device profile has no cycle model",
            "latency": latency_on_clock(float(instructions.mean()), device),
        }
    return DeviceRun(
        target=target.name,
        core=target.core,
        machine=target.machine,
        status="measured",
        images=len(host),
        instructions_mean=float(instructions.mean()),
        instructions_min=int(instructions.min()),
        instructions_max=int(instructions.max()),
        layers=_layers(tflite_path, run, per_tick),
        arena_used_bytes=run.arena_used,
        model_bytes=tflite_path.stat().st_size,
        agreement_with_host=float((outputs.argmax(1) == host.argmax(1)).mean()),
        bit_exact=bool(np.array_equal(outputs, host)),
        max_output_difference=int(np.abs(outputs.astype(int) - host.astype(int)).max()),
        **timing,
        **_per_class(outputs, labels),
    )


def _per_class(outputs: np.ndarray, labels: np.ndarray | None) -> dict:
    """The firmware's accuracy, balanced accuracy and confusion matrix on the test images it ran."""
    if labels is None:
        return {}
    predictions, truth = outputs.argmax(1), labels[: len(outputs)]
    confusion = confusion_matrix(truth, predictions, outputs.shape[1])
    return {"accuracy": float((predictions == truth).mean()), "balanced_accuracy": balanced_accuracy(confusion),
            "confusion": confusion}  # fmt: skip


def _flash(firmware: fw.Firmware, toolchain: fw.Toolchain) -> dict:
    """The firmware image's flash (total and by component, largest first) and its static RAM."""
    sizes = fw.section_sizes(firmware.elf, toolchain)
    total = fw.flash_bytes(sizes)
    parts = fw.flash_by_component(firmware.map)
    parts["other (padding, merged strings)"] = total - sum(parts.values())
    return {
        "flash_bytes": total,
        "flash_parts": [FlashPart(name=k, bytes=v) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])],
        "ram_static_bytes": sum(sizes.get(name, 0) for name in fw.RAM_SECTIONS),
    }


def _runnable(tflite_path: Path, tree: Path, target: fw.Target) -> MicroRunner:
    """The model in host TFLite Micro, once it is known that the firmware can run it: every operator has
    a kernel in the tree, it is int8 in and out, and it fits the board's memory."""
    check_operators(tflite_path, tree)
    micro = MicroRunner(tflite_path)
    if micro.input_dtype != np.int8 or micro.output_dtype != np.int8:
        raise fw.DeviceSetupError(
            f"{tflite_path.name} has {micro.input_dtype} input and {micro.output_dtype} output; the firmware runs "
            "full-integer models (int8 in and out), as `edgekd export` writes student.int8.tflite"
        )
    fw.check_board_memory(tflite_path.stat().st_size, micro.arena["total"], target)
    return micro


def _layers(tflite_path: Path, run: fw.FirmwareRun, per_tick: float) -> list[DeviceLayer]:
    """The profiled inference's operators, matched with the graph's (same order)."""
    _, graph, op_names = read_graph(tflite_path)
    macs = layer_macs(tflite_path)
    if [tag for _, tag, _ in run.op_ticks] != op_names:
        raise fw.CheckFailed(
            f"the firmware's profile lists {len(run.op_ticks)} operators, the model has {len(op_names)}"
        )
    exact = run.cycles.ops if run.cycles is not None else [(int(t * per_tick), None) for _, _, t in run.op_ticks]
    layers = []
    for (index, tag, _), (instructions, cycles), op, compute in zip(run.op_ticks, exact, graph.operators, macs,
                                                                    strict=True):  # fmt: skip
        shape = [int(d) for d in graph.tensors[int(op.outputs[0])].shape] if len(op.outputs) else []
        layers.append(
            DeviceLayer(
                index=index,
                op=tag,
                output_shape=shape,
                macs=compute.macs if compute.op_class != "other" else 0,
                instructions=instructions,
                cycles=cycles,
            )
        )
    return layers


def describe(device: Device) -> str:
    spec = device.cycle_model
    flash = "zero-wait memory"
    if spec.flash and spec.flash.ways:
        kilobytes = spec.flash.buffer_lines * spec.flash.line_bytes // 1024
        flash = (f"flash {spec.flash.wait_states} wait states behind a {kilobytes} kB {spec.flash.ways}-way cache "
                 f"of {spec.flash.line_bytes}-byte lines")  # fmt: skip
    elif spec.flash:
        flash = (f"flash {spec.flash.wait_states} wait states behind {spec.flash.buffer_lines} × "
                 f"{spec.flash.line_bytes}-byte line buffer")  # fmt: skip
    branch = "mispredicted-branch penalty" if spec.timing == "cortex-m7" else "taken-branch refill"
    return f"{spec.timing} instruction timings, {branch} {spec.branch_refill}, {flash}"


def latency_from_cycles(cycles: float, device: Device) -> McuLatency | None:
    """cycles ÷ clock, ± the relative error the validation measured for this cycle model."""
    if device.clock_mhz is None:
        return None
    ms = cycles / (device.clock_mhz * 1e3)
    error = device.cycle_model.error
    return McuLatency(
        runtime="tflm-cmsis-nn",
        ms=ms,
        low_ms=ms * (1 - error),
        high_ms=ms * (1 + error),
        basis=(
            f"measured: {cycles / 1e6:,.3f} M cycles ({describe(device)}) ÷ {device.clock_mhz:g} MHz; "
            f"± {error:.0%}: {device.cycle_model.error_source}"
        ),
    )


def latency_on_clock(instructions: float, device: Device) -> McuLatency | None:
    """instructions × cycles per instruction ÷ clock, over the profile's CPI range: only where no cycle model
    ran."""
    cost = device.instruction_cost
    if cost is None or device.clock_mhz is None:
        return None
    low, high = (instructions * cpi / (device.clock_mhz * 1e3) for cpi in cost.cpi)
    return McuLatency(
        runtime="tflm-cmsis-nn",
        ms=(low + high) / 2,
        low_ms=low,
        high_ms=high,
        basis=(
            f"no cycle model: {instructions / 1e6:,.2f} M instructions × {cost.cpi[0]:g}–{cost.cpi[1]:g} "
            f"cycles/instruction ÷ {device.clock_mhz:g} MHz ({cost.source})"
        ),
    )


def skipped(target_name: str, reason: str) -> DeviceRun:
    """The record of a device run that did not happen, and why (`target_name` as asked: auto, none, …)."""
    target = fw.TARGETS.get(target_name)
    return DeviceRun(
        target=target_name,
        core=target.core if target else "",
        machine=target.machine if target else "",
        status="skipped",
        reason=reason,
    )
