"""The TensorFlow Lite Micro library build with and without precompiled headers: time and machine code.

Builds the firmware Makefile's `lib` target twice from empty folders, `PCH=no` then `PCH=yes` (or the
other way round with --pch-first), for one core, with `make -jN`, and reports each build's wall and CPU
seconds (user + system of make and every compiler it ran). Then it compares every object file of the two
builds: the disassembly of its code sections and the bytes of its data sections must be identical, or
the script names the first object that differs and exits 1. Writes a table to benchmarks/RESULTS.md.

    python benchmarks/suite/tflm_build.py [--tree PATH] [--core cortex-m4] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import write_section

from edgekd.firmware import find_toolchain, resolve_tflm_tree

FIRMWARE = Path(__file__).resolve().parents[2] / "exporters" / "firmware"


def timed_make(*arguments: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of make and every compiler it ran) of one make run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["make", "-s", *arguments], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def build_arguments(description: str) -> argparse.ArgumentParser:
    """The options of both library-build benchmarks: the tree, the core and make's jobs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tree", help="a TFLM source tree (default: $EDGEKD_TFLM)")
    parser.add_argument("--core", default="cortex-m4", choices=["cortex-m4", "cortex-m7"])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    return parser


def build(tree: Path, core: str, lib_dir: Path, pch: bool, jobs: int, prefix: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of `make lib` into an empty `lib_dir`."""
    return timed_make("-C", str(FIRMWARE), f"-j{jobs}", "lib", f"TFLM_TREE={tree}", f"CPU={core}",
                      f"LIB_DIR={lib_dir}", f"CROSS={prefix}", f"PCH={'yes' if pch else 'no'}")  # fmt: skip


def code_and_data(obj: Path, prefix: str) -> dict[str, str]:
    """What the object gives the firmware, section by section: code disassembled, the other allocated
    sections' bytes (no file names, debug information or compiler identification). By section, because
    gcc may emit the same template instances in another order."""

    def objdump(*arguments: str) -> str:
        return subprocess.run([f"{prefix}objdump", *arguments, str(obj)], check=True, capture_output=True,
                              text=True).stdout  # fmt: skip

    sections: dict[str, str] = {}
    for block in objdump("-d", "-r").split("Disassembly of section ")[1:]:
        name, _, body = block.partition(":\n")
        sections[name] = body
    data_sections = [
        line.split()[1]
        for line in objdump("-h").splitlines()
        if line.strip()[:1].isdigit() and line.split()[1].startswith((".rodata", ".data", ".bss", ".init_array"))
    ]
    if data_sections:
        contents = objdump("-s", *[argument for name in data_sections for argument in ("-j", name)])
        for block in contents.split("Contents of section ")[1:]:
            name, _, body = block.partition(":\n")
            sections[name] = body
    return sections


def main() -> None:
    parser = build_arguments(__doc__.splitlines()[0])
    parser.add_argument("--pch-first", action="store_true", help="build with precompiled headers first")
    args = parser.parse_args()
    tree = resolve_tflm_tree(args.tree)
    prefix = find_toolchain().prefix
    timings: dict[bool, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        libs = {pch: Path(folder) / ("pch" if pch else "plain") for pch in (False, True)}
        for pch in (True, False) if args.pch_first else (False, True):
            timings[pch] = build(tree, args.core, libs[pch], pch, args.jobs, prefix)
            print(f"{'with' if pch else 'without'} precompiled headers: {timings[pch][0]:.0f} s wall, "
                  f"{timings[pch][1]:.0f} CPU-s", flush=True)  # fmt: skip
        objects = sorted(path.relative_to(libs[False]) for path in (libs[False] / "obj").rglob("*.o"))
        leftovers = sorted(str(p.relative_to(libs[True])) for p in libs[True].rglob("*.gch"))
        differing = [
            str(obj)
            for obj in objects
            if code_and_data(libs[False] / obj, prefix) != code_and_data(libs[True] / obj, prefix)
        ]
    print(f"{len(objects)} objects compared, {len(differing)} differ", flush=True)
    rows = ["| build | wall s | CPU s | × without |", "| --- | ---: | ---: | ---: |"]
    for pch in (False, True):
        wall, cpu = timings[pch]
        rows.append(f"| {'with' if pch else 'without'} precompiled headers | {wall:.0f} | {cpu:.0f} "
                    f"| {cpu / timings[False][1]:.2f} |")  # fmt: skip
    verdict = (
        f"All {len(objects)} objects have identical code and data in both builds."
        if not differing
        else f"{len(differing)} of {len(objects)} objects differ, first {differing[0]}."
    )
    gch = "none" if not leftovers else ", ".join(leftovers)
    write_section(
        "TFLite Micro library build: precompiled headers",
        f"python benchmarks/suite/tflm_build.py --core {args.core} --jobs {args.jobs}"
        + (" --pch-first" if args.pch_first else ""),
        f"The firmware Makefile's `lib` target for {args.core} from empty folders (`make -j{args.jobs}`), without "
        "and with the precompiled `tflm_prefix.h`; CPU s = user + system time of make and the compilers, "
        "'× without' is the ratio of CPU seconds. Objects compared section by section: disassembled code, "
        f"the bytes of data sections. {verdict} Precompiled headers left after the build: {gch}.\n\n" + "\n".join(rows),
    )
    if differing:
        sys.exit(1)


if __name__ == "__main__":
    main()
