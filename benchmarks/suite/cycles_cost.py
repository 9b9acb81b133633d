"""What the cycle model costs: the device run's QEMU boot with the cycle-model plugin against the same boot
counting instructions only, for the four MLPerf Tiny reference models.

Procedure: build each model's firmware once (edgekd's device run), then boot it alternately without and
with the plugin, `--repeats` times each, 3 inputs per boot; the figure is the median of the per-pair ratios.
Two cycle models: the `ek-ra6m4` profile's (Cortex-M4 table, flash reads behind a line buffer) on the M33
firmware, and the `stm32f746` profile's (Cortex-M7 dual issue with Capstone decoding, flash behind a 4-way
data cache) on the M7 firmware.
Run it with nothing else on the machine.

    python benchmarks/suite/cycles_cost.py [--models DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from cycles_validation import PUBLISHED, measured
from results import write_section

from edgekd import firmware as fw
from edgekd.benchmarks.device import cycle_model
from edgekd.benchmarks.profiles import load_device

ROOT = Path(__file__).resolve().parents[2]
PROFILES = (("ek-ra6m4", "qemu-m33"), ("stm32f746", "qemu-m7"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT.parent / "shared" / "models" / "mlperf-tiny")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    toolchain = fw.find_toolchain()
    lines = [
        "| model file | cycle model | instructions only | with the cycle model | ratio (median of pairs) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    files = sorted({row.model for row in PUBLISHED if row.profile == "ek-ra6m4"})
    with tempfile.TemporaryDirectory() as scratch:
        for (profile, target), name in ((pt, name) for pt in PROFILES for name in files):
            device = load_device(profile)
            model = cycle_model(device)
            item = measured(args.models / name, Path(scratch) / f"{name}-{target}", device, toolchain, target)
            firmware, inputs = item.firmware, item.inputs
            plain, timed = [], []
            for _ in range(args.repeats):  # alternating, so drift on the machine hits both alike
                started = time.perf_counter()
                fw.run_firmware(firmware, inputs, toolchain)
                plain.append(time.perf_counter() - started)
                started = time.perf_counter()
                fw.run_firmware(firmware, inputs, toolchain, cycles=model)
                timed.append(time.perf_counter() - started)
            ratio = statistics.median(t / p for p, t in zip(plain, timed, strict=True))
            lines.append(
                f"| {name} | `{profile}` on {target} | {statistics.median(plain):.2f} s | "
                f"{statistics.median(timed):.2f} s | {ratio:.2f}× |"
            )
            print(lines[-1], flush=True)
    body = (
        f"One QEMU boot of the device run (warm-up, 3 inferences, the profiled one), wall time, median of "
        f"{args.repeats} alternating pairs; both cycle models run a memory callback on every load.\n\n"
        + "\n".join(lines)
    )
    write_section("Cost of the cycle model (QEMU boot with and without the plugin)",
                  f"python benchmarks/suite/cycles_cost.py --repeats {args.repeats}", body)  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("EDGEKD_TFLM", str(ROOT.parent / "shared" / "third_party" / "tflm" / "tree"))
    main()
