"""What the cycle model costs: the device run's QEMU boot with the cycle-model plugin against the same boot
counting instructions only, for the four MLPerf Tiny reference models.

Procedure: build each model's firmware once (edgekd's device run), then boot it alternately without and
with the plugin (the `ek-ra6m4` profile's model: flash reads behind a line buffer, the most expensive
setting), `--repeats` times each, 3 inputs per boot; the figure is the median of the per-pair ratios.
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

from cycles_validation import PROFILE, PUBLISHED, measured
from results import write_section

from edgekd import firmware as fw
from edgekd.benchmarks.device import cycle_model
from edgekd.benchmarks.profiles import load_device

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT.parent / "shared" / "models" / "mlperf-tiny")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    toolchain, device = fw.find_toolchain(), load_device(PROFILE)
    model = cycle_model(device)
    lines = [
        "| model file | instructions only | with the cycle model | ratio (median of pairs) |",
        "| --- | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        for name in sorted({row.file for row in PUBLISHED}):
            item = measured(args.models / name, Path(scratch) / name, device, toolchain)
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
                f"| {name} | {statistics.median(plain):.2f} s | {statistics.median(timed):.2f} s | {ratio:.2f}× |"
            )
            print(lines[-1], flush=True)
    body = (
        f"One QEMU boot of the device run (warm-up, 3 inferences, the profiled one), wall time, median of "
        f"{args.repeats} alternating pairs; cycle model: the `ek-ra6m4` profile's (a memory callback on every "
        "load).\n\n" + "\n".join(lines)
    )
    write_section("Cost of the cycle model (QEMU boot with and without the plugin)",
                  f"python benchmarks/suite/cycles_cost.py --repeats {args.repeats}", body)  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("EDGEKD_TFLM", str(ROOT.parent / "shared" / "third_party" / "tflm" / "tree"))
    main()
