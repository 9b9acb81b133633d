"""`edgekd fit`'s estimates against real exports at every corner of its grid: widths 0.35 and 1.0 ×
64 and 224 px × 1 and 3 channels × 10 and 1000 classes (16 int8 exports of students whose weights, as
trained ones, share no buffers). Every estimate must be at least what the export needs.

    python benchmarks/suite/fit_bounds.py
"""

from __future__ import annotations

import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import torch
from results import write_section

from edgekd.benchmarks import fit


def measure(corner: tuple) -> tuple:
    torch.set_num_threads(1)
    return corner, fit.measure_export(*corner)


def main() -> None:
    corners = list(itertools.product((min(fit.WIDTHS), max(fit.WIDTHS)), (64, 224), (1, 3), (10, 1000)))
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        measured = list(pool.map(measure, corners))
    rows = [
        "| width | input | classes | flash: estimate | export | estimate / export | arena: estimate | TFLM x86 | "
        "estimate / measured |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    bounded = True
    for (width, resolution, in_chans, classes), (flash, arena, _) in measured:
        estimate = fit.estimate(width, resolution, classes, in_chans)
        bounded &= estimate.flash_estimate >= flash and estimate.arena_estimate >= arena
        rows.append(
            f"| {width:g} | {resolution}×{resolution}×{in_chans} | {classes} | {estimate.flash_estimate:,} "
            f"| {flash:,} | "
            f"{estimate.flash_estimate / flash:.3f} | {estimate.arena_estimate:,} | {arena:,} | "
            f"{estimate.arena_estimate / arena:.3f} |"
        )
        print(rows[-1], flush=True)
    write_section(
        "fit's estimates against exports at every corner of its grid",
        "python benchmarks/suite/fit_bounds.py",
        f"Bytes. Every estimate an upper bound: **{'yes' if bounded else 'NO'}**.\n\n" + "\n".join(rows),
    )


if __name__ == "__main__":
    main()
