"""Measured on the emulated target: MobileNetV2-Tiny at several input sizes and published reference
networks, compiled with TFLite Micro + CMSIS-NN for Cortex-M4 and M7 and run in QEMU; and the cycles
per instruction that turn those instruction counts into time, calibrated on published latencies.

For each model: instructions per inference on qemu-m4 and qemu-m7, instructions per MAC, the arena
the 32-bit build needs beside the x86-64 figure and the static bound, and the old MAC-based latency
estimate next to the measured instructions × the profile's CPI.

Calibration: a published latency of a network we also run here, on a board with the same core,
gives cycles = latency × clock; cycles ÷ our instruction count is that board's cycles per instruction
for TFLM + CMSIS-NN code (it also absorbs differences between the TFLM version measured there and
ours: say so when you use it).

    python benchmarks/suite/device_table.py [--sizes 32,64,96,144] [--images 5]

Needs the Arm toolchain, qemu-system-arm and a TFLM tree ($EDGEKD_TFLM).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_models import REFERENCE_MODELS  # noqa: E402
from results import write_section  # noqa: E402

from edgekd.benchmarks import device as device_run  # noqa: E402
from edgekd.benchmarks.compute import layer_macs, mcu_latency  # noqa: E402
from edgekd.benchmarks.memory import analyse  # noqa: E402
from edgekd.benchmarks.profiles import load_device  # noqa: E402
from edgekd.exporters import tflite  # noqa: E402
from edgekd.exporters.runtimes import measure_arena  # noqa: E402
from edgekd.models import create_model  # noqa: E402

# Published latencies of networks in REFERENCE_MODELS: (model, core target, board, clock MHz, ms, what, source)
PUBLISHED = [
    (
        "mlperf-ic-resnet8",
        "qemu-m4",
        "STM32L4R5ZI (Nucleo-L4R5ZI)",
        120,
        704.25,
        "TFLM v2.3.1 + CMSIS-NN, GCC 6-2017-q2, Mbed OS",
        "MLPerf Tiny v0.5 reference submission, closed/reference/results/Nucleo-L4R5ZI/ic/performance "
        "(100 inferences in 70.425 s)",
    ),
    (
        "mlperf-vww-mobilenetv1-0.25",
        "qemu-m4",
        "STM32L4R5ZI (Nucleo-L4R5ZI)",
        120,
        600.54,
        "TFLM v2.3.1 + CMSIS-NN, GCC 6-2017-q2, Mbed OS",
        "MLPerf Tiny v0.5 reference submission, closed/reference/results/Nucleo-L4R5ZI/vww/performance "
        "(100 inferences in 60.054 s)",
    ),
    (
        "mobilenetv2-0.30-80px-1000",
        "qemu-m7",
        "STM32F746G-Discovery",
        216,
        129.0,
        "TFLM 2.5 + CMSIS-NN",
        "Plumerai, 'The world's fastest deep learning inference software for Arm Cortex-M' (2021-10-04)",
    ),
]
TARGETS = ("qemu-m4", "qemu-m7")


def tiny(size: int) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    torch.manual_seed(0)
    model = create_model("mobilenetv2_tiny", num_classes=10, in_chans=3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    return model.eval(), (3, size, size)


def measure_model(name: str, model: torch.nn.Module, shape: tuple[int, int, int], scratch: Path, images: int) -> dict:
    path = scratch / f"{name}.tflite"
    tflite.convert(model, torch.randn(16, *shape), path, int8=True)
    layers = layer_macs(path)
    row = {
        "name": name,
        "input": "×".join(map(str, (shape[1], shape[2], shape[0]))),
        "macs": sum(layer.macs for layer in layers if layer.op_class != "other"),
        "arena_x86": measure_arena(path)["total"],
        "static": analyse(path).peak_bytes,
        "model_bytes": path.stat().st_size,
        "estimate": next(m for m in mcu_latency(layers, load_device("cortex-m4")) if m.runtime == "tflm-cmsis-nn"),
    }
    for target in TARGETS:
        profile = load_device("cortex-m4" if target == "qemu-m4" else "stm32f746")
        run = device_run.measure(
            path,
            target,
            profile,
            project=None,
            build_root=scratch / f"{name}-{target}",
            sample=None,
            count=images,
            tree_spec=None,
            log=lambda text: print(text, flush=True),
        )
        row[target] = run
    print(
        f"{name}: {row['qemu-m4'].instructions_mean:,.0f} instructions on M4, "
        f"{row['qemu-m7'].instructions_mean:,.0f} on M7, arena {row['qemu-m4'].arena_used_bytes:,} B",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64,96,144")
    parser.add_argument("--images", type=int, default=5, help="random inputs per model (counts vary ~0.001 %)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for size in [int(s) for s in args.sizes.split(",")]:
            model, shape = tiny(size)
            rows.append(measure_model(f"mobilenetv2_tiny-{size}", model, shape, scratch, args.images))
        for name, (build, shape) in REFERENCE_MODELS.items():
            rows.append(measure_model(name, build(), shape, scratch, args.images))
    by_name = {row["name"]: row for row in rows}
    m4 = load_device("cortex-m4")

    table = [
        "| model | input | MACs | M4 instructions | per MAC | M7 instructions | per MAC | arena on M4 | "
        "arena x86-64 | static bound | firmware flash (M4) | MAC estimate, cortex-m4 | measured × CPI, cortex-m4 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        r4, r7 = row["qemu-m4"], row["qemu-m7"]
        estimate = row["estimate"]
        measured = device_run.latency_on_clock(r4.instructions_mean, m4)
        table.append(
            f"| {row['name']} | {row['input']} | {row['macs']:,} | {r4.instructions_mean:,.0f} | "
            f"{r4.instructions_mean / row['macs']:.2f} | {r7.instructions_mean:,.0f} | "
            f"{r7.instructions_mean / row['macs']:.2f} | {r4.arena_used_bytes:,} | {row['arena_x86']:,} | "
            f"{row['static']:,} | {r4.flash_bytes:,} | {estimate.low_ms:,.0f}–{estimate.high_ms:,.0f} ms | "
            + (f"{measured.low_ms:,.0f}–{measured.high_ms:,.0f} ms |" if measured else "– |")
        )
        print(table[-1], flush=True)

    calibration = [
        "| published model | board | clock | software | published latency | cycles | our instructions | "
        "cycles per instruction | source |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, target, board, mhz, ms, software, source in PUBLISHED:
        instructions = by_name[name][target].instructions_mean
        cycles = ms * mhz * 1e3
        calibration.append(
            f"| {name} | {board} ({target.removeprefix('qemu-').upper()}) | {mhz} MHz | {software} | {ms:,.2f} ms | "
            f"{cycles:,.0f} | {instructions:,.0f} | **{cycles / instructions:.2f}** | {source} |"
        )
        print(calibration[-1], flush=True)

    command = f"python benchmarks/suite/device_table.py --sizes {args.sizes} --images {args.images}"
    write_section(
        "Measured on the device: MobileNetV2-Tiny and reference networks",
        command,
        "TFLite Micro + CMSIS-NN compiled with GCC for Cortex-M4 (QEMU mps2-an386) and Cortex-M7 (mps2-an500); "
        f"instructions per inference, mean of {args.images} random int8 inputs after a warm-up (QEMU `-icount "
        "shift=0`, ±40 per reading). MobileNetV2-Tiny: width 0.35, last conv 448, 3 channels, 10 classes, random "
        "weights. Reference networks as `benchmarks/suite/reference_models.py` rebuilds them. Arena in bytes: the "
        "32-bit target's `arena_used_bytes()`, TFLite Micro's x86-64 build, and the static activation bound. "
        "Latency on the `cortex-m4` profile (64 MHz): the old estimate (MACs × 1.7–4.8 cycles/MAC) and the "
        "measured instructions × the profile's cycles per instruction.\n\n" + "\n".join(table),
    )
    write_section(
        "Cycles per instruction, calibrated on published latencies",
        command,
        "QEMU counts instructions; a board's latency also depends on its pipeline, flash wait states and caches. "
        "Each row divides a published latency (× clock = cycles) by the instructions edgekd counts for the same "
        "network on the same core. The older TFLM versions measured there executed more instructions than the "
        "tree edgekd builds, which these ratios absorb: read them as an upper end for current TFLM.\n\n"
        + "\n".join(calibration),
    )


if __name__ == "__main__":
    main()
