"""The cycle model against published board latencies of the same model files.

For each MLPerf Tiny reference model (the four int8 files in ../shared/models/mlperf-tiny, or --models),
edgekd's device run (`edgekd.benchmarks.device.measure`: TFLite Micro + CMSIS-NN firmware, QEMU, outputs
checked bit for bit against the host) runs under the `ek-ra6m4` profile's cycle model; the firmware then
runs again under other settings of the model's free parameters.

Calibration, in the open: the flash's wait states come from the datasheet (3 at 200 MHz on RA6M4), the
rest of the core from the Cortex-M4 TRM. Two parameters are chosen here, on two rows only (IC and VWW on
EK-RA6M4): the taken-branch refill (1, 2 or 3 cycles, the TRM's range) and the flash line buffer (1 × 16,
8 × 16 or 8 × 32 bytes), the pair with the smallest worst error on those rows. KWS and AD are not used.
The profile must hold the chosen values; the table says whether it does, and the error band the profile
declares must cover every row of its board.

The NUCLEO-L4R5ZI rows (MLPerf Tiny v0.5) ran TFLM 2.3.1, which executed more instructions than today's
tree for the same file: listed, with the L4R5's own wait states (5 at 120 MHz), not counted.

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
from results import write_section

from edgekd import firmware as fw
from edgekd.benchmarks.device import cycle_model, describe, measure
from edgekd.benchmarks.profiles import Device, load_device
from edgekd.benchmarks.report_schema import DeviceRun
from edgekd.exporters.runtimes import MicroRunner

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Published:
    file: str
    board: str
    core: str
    clock_mhz: float
    software: str
    inferences: int
    seconds: float  # for `inferences`, the median window
    source: str

    @property
    def latency_ms(self) -> float:
        return 1000 * self.seconds / self.inferences


RA6M4 = "EK-RA6M4 (RA6M4, Cortex-M33)"
RA6M4_SOFTWARE = "TFLM + CMSIS-NN, GNU Arm 8.3.1"
RA6M4_SOURCE = "MLPerf Tiny v0.7, closed/renesas/results/EK-RA6M4/{task}/performance/results.txt"
L4R5 = "NUCLEO-L4R5ZI (STM32L4R5, Cortex-M4)"
L4R5_SOFTWARE = "TFLM 2.3.1 + CMSIS-NN, GCC 6-2017-q2, Mbed OS"
L4R5_SOURCE = "MLPerf Tiny v0.5 reference, closed/reference/results/Nucleo-L4R5ZI/{task}/performance"
PUBLISHED = [
    Published("pretrainedResnet_quant.tflite", RA6M4, "M33", 200, RA6M4_SOFTWARE, 50, 12.310,
              RA6M4_SOURCE.format(task="ic")),
    Published("kws_ref_model.tflite", RA6M4, "M33", 200, RA6M4_SOFTWARE, 200, 10.114, RA6M4_SOURCE.format(task="kws")),
    Published("vww_96_int8.tflite", RA6M4, "M33", 200, RA6M4_SOFTWARE, 100, 16.236, RA6M4_SOURCE.format(task="vww")),
    Published("ad01_int8.tflite", RA6M4, "M33", 200, RA6M4_SOFTWARE, 2500, 11.533, RA6M4_SOURCE.format(task="ad")),
    Published("pretrainedResnet_quant.tflite", L4R5, "M4", 120, L4R5_SOFTWARE, 100, 70.425,
              L4R5_SOURCE.format(task="ic")),
    Published("vww_96_int8.tflite", L4R5, "M4", 120, L4R5_SOFTWARE, 100, 60.054, L4R5_SOURCE.format(task="vww")),
]  # fmt: skip


CALIBRATION_ROWS = {("pretrainedResnet_quant.tflite", RA6M4), ("vww_96_int8.tflite", RA6M4)}
REFILLS = (1, 2, 3)
BUFFERS = ((16, 1), (16, 8), (32, 8))  # (line bytes, lines)
L4R5_WAIT_STATES = 5  # RM0432: 120 MHz (range 1 boost) needs 5 flash wait states
PROFILE = "ek-ra6m4"
INPUTS = 3


@dataclass
class Measured:
    """One model file on the emulated core: its firmware and, per cycle-model setting, cycles per inference."""

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


def measured(model: Path, folder: Path, device: Device, toolchain: fw.Toolchain) -> Measured:
    run = measure(model, "qemu-m33", device, project=None, build_root=folder, images=None, labels=None,
                  count=INPUTS, tree_spec=None, log=lambda _: None)  # fmt: skip
    if not run.bit_exact:
        raise SystemExit(f"{model.name}: the firmware's outputs differ from the host's")
    tree = fw.resolve_tflm_tree(None)
    firmware = fw.build_firmware(Path(run.project), fw.TARGETS["qemu-m33"], tree, toolchain, log=lambda _: None)
    shape = MicroRunner(model).input_shape
    inputs = np.random.default_rng(0).integers(-128, 128, size=(INPUTS, int(np.prod(shape))), dtype=np.int8)
    return Measured(run, firmware, inputs)


def setting(refill: int, buffer: tuple[int, int], wait: int) -> fw.CycleModel:
    return fw.CycleModel(refill=refill, flash_wait=wait, flash_line=buffer[0], flash_lines=buffer[1])


def error(row: Published, cycles: int) -> float:
    return 1000 * cycles / (row.clock_mhz * 1e6) / row.latency_ms - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT.parent / "shared" / "models" / "mlperf-tiny")
    args = parser.parse_args()
    toolchain = fw.find_toolchain()
    device = load_device(PROFILE)
    wait = device.cycle_model.flash.wait_states
    with tempfile.TemporaryDirectory() as scratch:
        files = {name: measured(args.models / name, Path(scratch) / Path(name).stem, device, toolchain)
                 for name in sorted({row.file for row in PUBLISHED})}  # fmt: skip

        def worst(refill: int, buffer: tuple[int, int]) -> float:
            model = setting(refill, buffer, wait)
            rows = [row for row in PUBLISHED if (row.file, row.board) in CALIBRATION_ROWS]
            return max(abs(error(row, files[row.file].cycles_under(model, toolchain))) for row in rows)

        refill, buffer = min(((r, b) for r in REFILLS for b in BUFFERS), key=lambda rb: worst(*rb))
        chosen = setting(refill, buffer, wait)
        profile = cycle_model(device)
        lines = [
            "| model file | board | clock | software | published | instructions | cycles | cycles ÷ clock | error "
            "| calibrated on it | source |",
            "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        errors = []
        for row in PUBLISHED:
            item = files[row.file]
            model = profile if row.board == RA6M4 else setting(refill, buffer, L4R5_WAIT_STATES)
            cycles = item.cycles_under(model, toolchain)
            e = error(row, cycles)
            if row.board == RA6M4:
                errors.append(e)
            used = "yes" if (row.file, row.board) in CALIBRATION_ROWS else "no"
            if row.board != RA6M4:
                used = "no (older software: not counted)"
            lines.append(
                f"| {row.file} | {row.board} | {row.clock_mhz:g} MHz | {row.software} | {row.latency_ms:.2f} ms | "
                f"{item.run.instructions_mean:,.0f} | {cycles:,} | {1000 * cycles / (row.clock_mhz * 1e6):.2f} ms | "
                f"{e:+.1%} | {used} | {row.source} |"
            )
            print(lines[-1], flush=True)
    band = max(abs(e) for e in errors)
    held_out = [e for row, e in zip([r for r in PUBLISHED if r.board == RA6M4], errors, strict=True)
                if (row.file, row.board) not in CALIBRATION_ROWS]  # fmt: skip
    agrees = chosen == profile
    summary = (
        f"Chosen on the calibration rows: refill {refill}, flash buffer {buffer[1]} × {buffer[0]} bytes (worst "
        f"calibration error {worst(refill, buffer):.1%}); the `{PROFILE}` profile holds "
        + ("these values." if agrees else f"other values ({profile}): update the profile.")
        + f" Rows not used to calibrate: {', '.join(f'{e:+.1%}' for e in held_out)}. Worst error on the board: "
        f"{band:.1%}; the profile's band: ±{device.cycle_model.error:.0%}"
        + (" (covers it)." if band <= device.cycle_model.error else " — too narrow: update the profile.")
    )
    print(summary)
    body = (
        f"The `{PROFILE}` profile's cycle model ({describe(device)}) on the firmware edgekd builds (TFLite Micro "
        "+ CMSIS-NN from the tree in `EDGEKD_TFLM`, GCC for Cortex-M4, run on QEMU's mps2-an386, outputs "
        "bit-exact with the host); median of 3 random inputs after a warm-up. Published: MLPerf Tiny median "
        "throughput windows on real boards, the same model files. The M33 is timed with the M4's table.\n\n"
        + summary
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
