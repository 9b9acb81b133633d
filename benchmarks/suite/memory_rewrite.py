"""What the memory rewrites save: MobileNetV2-Tiny int8 (10 classes, 3 channels) at each input size,
exported as edgekd exports it, then rewritten with `export.memory: groups` (the fewest groups that bring
each peak block down as far as groups go) and with `export.memory: patches` (spatial patches, grid and
cut searched, then groups: the smallest arena). For each graph: the TFLite-Micro arena on x86-64 and,
built with TFLM + CMSIS-NN for the Cortex-M4 and run in QEMU, the arena the 32-bit build uses, the
instructions per inference and the firmware's flash; the firmware's outputs are checked bit for bit
against the host every time. Weights are random (memory and instructions do not depend on them).

    python benchmarks/suite/memory_rewrite.py [--sizes 96,112,128,144,160,176]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from results import write_section

from edgekd.benchmarks import device
from edgekd.benchmarks.fit import student_like_trained
from edgekd.benchmarks.profiles import load_device
from edgekd.config import ExportConfig
from edgekd.exporters import memory_rewrite, tflite


def measure(path: Path, scratch: Path) -> device.DeviceRun:
    run = device.measure(path, "qemu-m4", load_device("cortex-m4"), project=None, build_root=scratch,
                         sample=None, count=3, tree_spec=None, log=lambda _: None)  # fmt: skip
    if run.status != "measured" or not run.bit_exact:
        raise SystemExit(f"{path.name}: the device run failed or was not bit-exact: {run.reason}")
    return run


def _row(size: int, mode: str, found: dict, run: device.DeviceRun, before: device.DeviceRun) -> str:
    arena = (found.get("arena_after") or found["arena_before"])["total"]
    macs = found.get("macs_after") or found["macs_before"]

    def change(after: float, base: float) -> str:
        return "" if mode == "none" else f" ({after / base - 1:+.2%})"

    what = "as converted" if mode == "none" else found["reason"].split(": arena")[0]
    return (
        f"| {size}×{size}×3 | {mode} | {arena:,} | **{run.arena_used_bytes:,}** "
        f"| {run.instructions_mean / 1e6:.2f} M{change(run.instructions_mean, before.instructions_mean)} "
        f"| {run.flash_bytes:,}{change(run.flash_bytes, before.flash_bytes)} "
        f"| {macs / 1e6:.2f} M{change(macs, found['macs_before'])} | {what} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="96,112,128,144,160,176")
    args = parser.parse_args()
    rows = [
        "| input | rewrite | arena x86 | **arena M4** | instructions M4 | firmware flash | MACs | what |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as folder:
            scratch = Path(folder)
            converted = scratch / "converted.tflite"
            tflite.convert(student_like_trained(0.35, 10, 3), torch.randn(8, 3, size, size), converted, int8=True)
            before = measure(converted, scratch / "none")
            for mode in ("none", "groups", "patches"):
                path = scratch / f"{mode}.tflite"
                path.write_bytes(converted.read_bytes())
                found = memory_rewrite.rewrite_for_memory(path, ExportConfig(memory=mode), sram_budget=0)
                run = before if mode == "none" else measure(path, scratch / mode)
                rows.append(_row(size, mode, found, run, before))
                print(rows[-1], flush=True)
    body = (
        "MobileNetV2-Tiny (width 0.35, last conv 448), int8, 10 classes, bytes. The firmware's outputs equal "
        "the host TFLite Micro's for every graph (3 random int8 inputs each). For scale: TinyEngine, MCUNet's "
        "own runtime, needs 308 kB for this network at 144 px (the figure issue 22 starts from); these graphs "
        "run in stock TFLite Micro.\n\n" + "\n".join(rows) + "\n\nwhat: the blocks rewritten (operators of the "
        "graph the rewrite applied to, output shapes) and the patch grid and cut."
    )
    write_section(
        "Memory rewrite: MobileNetV2-Tiny arena with channel groups and spatial patches",
        f"python benchmarks/suite/memory_rewrite.py --sizes {args.sizes}",
        body,
    )


if __name__ == "__main__":
    main()
