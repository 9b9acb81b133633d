"""The cycle models against published board latencies of the same model files.

For each published row, edgekd's device run (`edgekd.benchmarks.device.measure`: TFLite Micro + CMSIS-NN
firmware, QEMU, outputs checked bit for bit against the host) runs the same model file (the four MLPerf
Tiny reference int8 files in ../shared/models/mlperf-tiny, or --models) or the same network rebuilt layer
for layer (`reference_models.py`), under the cycle model of the board's edgekd profile.

Cortex-M4/M33 (the M4's TRM table). Calibration, in the open: the flash's wait states come from the
datasheet (3 at 200 MHz on RA6M4), the rest of the core from the TRM. Two parameters are chosen here, on two
rows only (IC and VWW on EK-RA6M4): the taken-branch refill (1, 2 or 3 cycles, the TRM's range) and the
flash line buffer (1 × 16, 8 × 16 or 8 × 32 bytes), the pair with the smallest worst error on those rows.
KWS and AD are not used. The profile must hold the chosen values; the table says whether it does, and the
error band the profile declares must cover every row of its board. The NUCLEO-L4R5ZI rows (MLPerf Tiny
v0.5) ran TFLM 2.3.1, which executed more instructions than today's tree for the same file: listed, under
the `nucleo-l4r5zi` profile, not counted.

Cortex-M7 (LLVM's dual-issue model): nothing is calibrated; the `stm32f746` profile's model (branch
mispredict 4, flash 7 wait states behind the 4 kB data cache) predicts Plumerai's published TFLM 2.5 +
CMSIS-NN latency of MobileNetV2 (α 0.30, 80 × 80, 1000 classes) on STM32F746, rebuilt here.

    python benchmarks/suite/cycles_validation.py [--models DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from reference_models import REFERENCE_MODELS
from results import write_section

from edgekd import firmware as fw
from edgekd.benchmarks.device import cycle_model, describe, measure
from edgekd.benchmarks.profiles import Device, load_device
from edgekd.benchmarks.report_schema import DeviceRun
from edgekd.exporters import tflite
from edgekd.exporters.runtimes import MicroRunner

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Published:
    model: str  # a file in --models, or a network in reference_models.REFERENCE_MODELS
    board: str
    profile: str  # edgekd's device profile of the board
    target: str  # the emulated core whose firmware runs
    software: str
    inferences: int
    seconds: float  # for `inferences`, the median window
    source: str
    counted: bool = True  # False: older software, listed only

    @property
    def latency_ms(self) -> float:
        return 1000 * self.seconds / self.inferences


RA6M4 = "EK-RA6M4 (RA6M4, Cortex-M33)"
RA6M4_SOFTWARE = "TFLM + CMSIS-NN, GNU Arm 8.3.1"
RA6M4_SOURCE = "MLPerf Tiny v0.7, closed/renesas/results/EK-RA6M4/{task}/performance/results.txt"
L4R5 = "NUCLEO-L4R5ZI (STM32L4R5, Cortex-M4)"
L4R5_SOFTWARE = "TFLM 2.3.1 + CMSIS-NN, GCC 6-2017-q2, Mbed OS"
L4R5_SOURCE = "MLPerf Tiny v0.5 reference, closed/reference/results/Nucleo-L4R5ZI/{task}/performance"
F746 = "STM32F746G-Discovery (Cortex-M7)"
PUBLISHED = [
    Published("pretrainedResnet_quant.tflite", RA6M4, "ek-ra6m4", "qemu-m33", RA6M4_SOFTWARE, 50, 12.310,
              RA6M4_SOURCE.format(task="ic")),
    Published("kws_ref_model.tflite", RA6M4, "ek-ra6m4", "qemu-m33", RA6M4_SOFTWARE, 200, 10.114,
              RA6M4_SOURCE.format(task="kws")),
    Published("vww_96_int8.tflite", RA6M4, "ek-ra6m4", "qemu-m33", RA6M4_SOFTWARE, 100, 16.236,
              RA6M4_SOURCE.format(task="vww")),
    Published("ad01_int8.tflite", RA6M4, "ek-ra6m4", "qemu-m33", RA6M4_SOFTWARE, 2500, 11.533,
              RA6M4_SOURCE.format(task="ad")),
    Published("pretrainedResnet_quant.tflite", L4R5, "nucleo-l4r5zi", "qemu-m4", L4R5_SOFTWARE, 100, 70.425,
              L4R5_SOURCE.format(task="ic"), counted=False),
    Published("vww_96_int8.tflite", L4R5, "nucleo-l4r5zi", "qemu-m4", L4R5_SOFTWARE, 100, 60.054,
              L4R5_SOURCE.format(task="vww"), counted=False),
    Published("mobilenetv2-0.30-80px-1000", F746, "stm32f746", "qemu-m7", "TFLM 2.5 + CMSIS-NN", 1, 0.129,
              "Plumerai, 'The world's fastest deep learning inference software for Arm Cortex-M' (2021-10-04)"),
]  # fmt: skip


CALIBRATION_ROWS = {("pretrainedResnet_quant.tflite", RA6M4), ("vww_96_int8.tflite", RA6M4)}
REFILLS = (1, 2, 3)
BUFFERS = ((16, 1), (16, 8), (32, 8))  # (line bytes, lines)
PROFILE = "ek-ra6m4"  # the calibrated one
INPUTS = 3


@dataclass
class Measured:
    """One model on one emulated core: its firmware and, per cycle-model setting, cycles per inference."""

    run: DeviceRun
    firmware: fw.Firmware
    inputs: np.ndarray
    cycles: dict[fw.CycleModel, int] = field(default_factory=dict)

    def cycles_under(self, model: fw.CycleModel, toolchain: fw.Toolchain) -> int:
        """The median over the inputs, after the warm-up."""
        if model not in self.cycles:
            run = fw.run_firmware(self.firmware, self.inputs, toolchain, cycles=model)
            self.cycles[model] = int(statistics.median(c for _, c in run.cycles.inferences))
        return self.cycles[model]


def model_file(name: str, models: Path, folder: Path) -> Path:
    """The published file, or the network rebuilt and exported int8 (seeded)."""
    if name not in REFERENCE_MODELS:
        return models / name
    build, shape = REFERENCE_MODELS[name]
    path = folder / f"{name}.tflite"
    torch.manual_seed(0)
    tflite.convert(build(), torch.randn(16, *shape), path, int8=True)
    return path


def measured(model: Path, folder: Path, device: Device, toolchain: fw.Toolchain, target: str = "qemu-m33") -> Measured:
    run = measure(model, target, device, project=None, build_root=folder, images=None, labels=None,
                  count=INPUTS, tree_spec=None, log=lambda _: None)  # fmt: skip
    if not run.bit_exact:
        raise SystemExit(f"{model.name}: the firmware's outputs differ from the host's")
    tree = fw.resolve_tflm_tree(None)
    firmware = fw.build_firmware(Path(run.project), fw.TARGETS[target], tree, toolchain, log=lambda _: None)
    shape = MicroRunner(model).input_shape
    inputs = np.random.default_rng(0).integers(-128, 128, size=(INPUTS, int(np.prod(shape))), dtype=np.int8)
    return Measured(run, firmware, inputs)


def setting(refill: int, buffer: tuple[int, int], wait: int) -> fw.CycleModel:
    return fw.CycleModel(refill=refill, flash_wait=wait, flash_line=buffer[0], flash_lines=buffer[1])


def error(row: Published, cycles: int, clock_mhz: float) -> float:
    return 1000 * cycles / (clock_mhz * 1e6) / row.latency_ms - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT.parent / "shared" / "models" / "mlperf-tiny")
    args = parser.parse_args()
    toolchain = fw.find_toolchain()
    device = load_device(PROFILE)
    wait = device.cycle_model.flash.wait_states
    with tempfile.TemporaryDirectory() as scratch:
        files = {}
        for row in PUBLISHED:
            if (row.model, row.target) not in files:
                folder = Path(scratch) / f"{Path(row.model).stem}-{row.target}"
                folder.mkdir()
                path = model_file(row.model, args.models, folder)
                files[row.model, row.target] = measured(path, folder, load_device(row.profile), toolchain, row.target)

        def worst(refill: int, buffer: tuple[int, int]) -> float:
            model = setting(refill, buffer, wait)
            rows = [row for row in PUBLISHED if (row.model, row.board) in CALIBRATION_ROWS]
            return max(abs(error(row, files[row.model, row.target].cycles_under(model, toolchain), device.clock_mhz))
                       for row in rows)  # fmt: skip

        refill, buffer = min(((r, b) for r in REFILLS for b in BUFFERS), key=lambda rb: worst(*rb))
        chosen = setting(refill, buffer, wait)
        lines = [
            "| model | board | clock | software | published | instructions | cycles | cycles ÷ clock | error "
            "| calibrated on it | source |",
            "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        errors: dict[str, list[tuple[Published, float]]] = {}
        for row in PUBLISHED:
            item, board = files[row.model, row.target], load_device(row.profile)
            cycles = item.cycles_under(cycle_model(board), toolchain)
            e = error(row, cycles, board.clock_mhz)
            if row.counted:
                errors.setdefault(row.profile, []).append((row, e))
            used = "yes" if (row.model, row.board) in CALIBRATION_ROWS else "no"
            if not row.counted:
                used = "no (older software: not counted)"
            lines.append(
                f"| {row.model} | {row.board} | {board.clock_mhz:g} MHz | {row.software} | {row.latency_ms:.2f} ms | "
                f"{item.run.instructions_mean:,.0f} | {cycles:,} | {1000 * cycles / (board.clock_mhz * 1e6):.2f} ms | "
                f"{e:+.1%} | {used} | {row.source} |"
            )
            print(lines[-1], flush=True)
    summaries = []
    for profile, rows in errors.items():
        board = load_device(profile)
        band = max(abs(e) for _, e in rows)
        held_out = [e for row, e in rows if (row.model, row.board) not in CALIBRATION_ROWS]
        summaries.append(
            f"`{profile}` ({describe(board)}): rows not used to calibrate {', '.join(f'{e:+.1%}' for e in held_out)}; "
            f"worst error {band:.1%}; the profile's band ±{board.cycle_model.error:.0%}"
            + (" (covers it)." if band <= board.cycle_model.error else " — too narrow: update the profile.")
        )
    profile = cycle_model(device)
    calibration = (
        f"Chosen for `{PROFILE}` on its calibration rows: refill {refill}, flash buffer {buffer[1]} × {buffer[0]} "
        f"bytes (worst calibration error {worst(refill, buffer):.1%}); the profile holds "
        + ("these values." if chosen == profile else f"other values ({profile}): update the profile.")
    )
    print(calibration, *summaries, sep="\n")
    body = (
        "Each row: the board's edgekd profile and its cycle model, on the firmware edgekd builds (TFLite Micro "
        "+ CMSIS-NN from the tree in `EDGEKD_TFLM`, GCC for the row's core, run in QEMU, outputs bit-exact "
        "with the host); median of 3 random inputs after a warm-up. Published: MLPerf Tiny median throughput "
        "windows on real boards (the same model files) and Plumerai's STM32F746 figure (the network rebuilt "
        "layer for layer, `reference_models.py`). The M33 is timed with the M4's table; the M7 with LLVM's "
        "dual-issue model, nothing calibrated.\n\n"
        + calibration
        + "\n\n"
        + "\n".join(f"- {line}" for line in summaries)
        + "\n\n"
        + "\n".join(lines)
    )
    write_section(
        "Cycle model vs published board latencies (MLPerf Tiny reference models)",
        "python benchmarks/suite/cycles_validation.py",
        body,
    )


if __name__ == "__main__":
    os.environ.setdefault("EDGEKD_TFLM", str(ROOT.parent / "shared" / "third_party" / "tflm" / "tree"))
    main()
