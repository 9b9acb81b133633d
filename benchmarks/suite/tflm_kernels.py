"""The firmware of one model built against every TensorFlow Lite Micro kernel and against the model's
kernels only (what the Makefile does by default): build time, and whether the firmware is the same.

Exports an int8 MobileNetV2-Tiny (width 0.35, 32×32×1, 10 classes: the quickstart's shape) as an
mcu-project, then builds its firmware twice with `make -jN`, each time into an empty library folder:
`KERNELS=all`, then the model's kernels (or the other way round with --model-first). Reports each
build's wall and CPU seconds (user + system of make and every compiler it ran) and the number of
library sources, and compares the two firmware images (the ELF files without symbols: every section's
address and bytes) byte for byte: they must be identical, or the script exits 1. Writes a table to
benchmarks/RESULTS.md.

    python benchmarks/suite/tflm_kernels.py [--tree PATH] [--core cortex-m4] [--jobs 2] [--model-first]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from results import write_section
from tflm_build import build_arguments, timed_make

from edgekd.benchmarks import device, fit
from edgekd.exporters import tflite
from edgekd.exporters.mcu_project import model_ops
from edgekd.exporters.runtimes import MicroRunner
from edgekd.firmware import Toolchain, find_toolchain, flash_bytes, resolve_tflm_tree, section_sizes


def build(project: Path, tree: Path, core: str, lib_dir: Path, kernels: str, jobs: int, toolchain: Toolchain) -> dict:
    """Wall and CPU seconds of building the firmware into an empty `lib_dir`, the library's source count,
    the firmware image and its flash bytes."""
    prefix = toolchain.prefix
    common = [f"TFLM_TREE={tree}", f"CPU={core}", f"LIB_DIR={lib_dir}", f"CROSS={prefix}", f"KERNELS={kernels}",
              f"BUILD=build/{kernels}"]  # fmt: skip
    sources = subprocess.run(["make", "-s", "-C", str(project), "lib-sources", *common], check=True,
                             capture_output=True, text=True).stdout.split()  # fmt: skip
    wall, cpu = timed_make("-C", str(project), f"-j{jobs}", "all", *common)
    image = lib_dir / "firmware.stripped.elf"
    elf = project / "build" / kernels / "firmware.elf"
    subprocess.run([f"{prefix}strip", "--strip-all", "-o", str(image), str(elf)], check=True)
    return {
        "wall": wall,
        "cpu": cpu,
        "sources": len(sources),
        "image": image.read_bytes(),
        "flash": flash_bytes(section_sizes(elf, toolchain)),
    }


def main() -> None:
    parser = build_arguments(__doc__.splitlines()[0])
    parser.add_argument("--model-first", action="store_true", help="build with the model's kernels first")
    args = parser.parse_args()
    tree = resolve_tflm_tree(args.tree)
    toolchain = find_toolchain()
    builds: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        model_file = scratch / "student.int8.tflite"
        tflite.convert(fit.student_like_trained(0.35, 10, 1), torch.randn(8, 1, 32, 32), model_file, int8=True)
        micro = MicroRunner(model_file)
        project = device.project_for(model_file, micro, micro.arena["total"], scratch / "mcu-project")
        ops = model_ops(model_file)
        for kernels in ("model", "all") if args.model_first else ("all", "model"):
            builds[kernels] = build(project, tree, args.core, scratch / f"lib-{kernels}", kernels, args.jobs, toolchain)
            print(f"{kernels} kernels: {builds[kernels]['sources']} sources, {builds[kernels]['wall']:.0f} s wall, "
                  f"{builds[kernels]['cpu']:.0f} CPU-s", flush=True)  # fmt: skip
    same = builds["all"]["image"] == builds["model"]["image"]
    print(f"firmware images identical: {same} ({builds['all']['flash']:,} bytes of flash)", flush=True)
    rows = ["| library | sources | wall s | CPU s | × every kernel |", "| --- | ---: | ---: | ---: | ---: |"]
    for kernels, label in (("all", "every kernel (`KERNELS=all`)"), ("model", "the model's kernels (default)")):
        result = builds[kernels]
        rows.append(f"| {label} | {result['sources']} | {result['wall']:.0f} | {result['cpu']:.0f} "
                    f"| {result['cpu'] / builds['all']['cpu']:.2f} |")  # fmt: skip
    verdict = (
        f"The two firmware images are identical, byte for byte ({builds['all']['flash']:,} bytes of flash)."
        if same
        else "The two firmware images DIFFER."
    )
    write_section(
        "TFLite Micro library build: the model's kernels only",
        f"python benchmarks/suite/tflm_kernels.py --core {args.core} --jobs {args.jobs}"
        + (" --model-first" if args.model_first else ""),
        f"The firmware of an int8 MobileNetV2-Tiny (width 0.35, 32×32×1, 10 classes; operators {', '.join(ops)}) "
        f"for {args.core}, built with `make -j{args.jobs}` from an empty library folder against every TFLM kernel "
        "and against the kernels of the model's operators (with precompiled headers both times); CPU s = user + "
        f"system time of make and the compilers. {verdict}\n\n" + "\n".join(rows),
    )
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
