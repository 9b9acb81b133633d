"""Student-stage throughput: the teacher cache off and on, contiguous and channels_last memory, one
process with two threads and two processes (torchrun) with one thread each, on the quickstart and on
the resnet50 recipe.

Each recipe's teacher is trained once (one epoch; its accuracy does not matter here), then every
variant runs the distilled student for `--epochs` epochs from that teacher file, in an interleaved
order, and reports the median epoch's training images/s (all processes together) from metrics.csv.
Random augmentation is turned off in every variant so that the cache can be on, and the variants
differ only in what is named. Writes a table to benchmarks/RESULTS.md.

    python benchmarks/suite/throughput.py [--recipes quickstart,mnist5k_resnet50_to_mbv2tiny] [--epochs 3]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from results import write_section

from edgekd.rundir import RunDir

COMMON = ["--set", "data.augmentation.random_crop_padding=0", "--set", "data.augmentation.horizontal_flip=false",
          "--set", "baseline.enabled=false"]  # fmt: skip


def distill(recipe: str, out: Path, sets: list[str], processes: int) -> None:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(2 // processes)}
    if processes == 1:
        command = [sys.executable, "-m", "edgekd"]
    else:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
        command = [torchrun, "--standalone", f"--nproc_per_node={processes}", "-m", "edgekd"]
    subprocess.run([*command, "distill", recipe, "--out", str(out), *COMMON, *sets], env=environment,
                   check=True, capture_output=True, text=True)  # fmt: skip


def student_rate(run_dir: Path) -> tuple[float, float]:
    """(median epoch images/s, seconds spent caching the teacher's outputs) of the student stage."""
    run = RunDir(run_dir)
    with run.metrics.open() as handle:
        rates = [float(r["images_per_second"]) for r in csv.DictReader(handle) if r["stage"] == "student"]
    return statistics.median(rates), run.read_summary().student.teacher_cache_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="quickstart,mnist5k_resnet50_to_mbv2tiny")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    variants = list(itertools.product(("off", "on"), (False, True), (1, 2)))  # cache, channels_last, processes
    tables = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for recipe in args.recipes.split(","):
            teacher_run = scratch / f"{recipe}-teacher"
            print(f"{recipe}: training a teacher for one epoch", flush=True)
            distill(recipe, teacher_run, ["--set", "teacher.train.epochs=1", "--set", "distill.epochs=1"], 1)
            rates: dict[tuple, float] = {}
            caches: dict[tuple, float] = {}
            for index, (cache, channels_last, processes) in enumerate(variants):
                out = scratch / f"{recipe}-{index}"
                teacher = RunDir(teacher_run).weights("teacher")
                sets = ["--set", f"teacher.checkpoint={teacher}", "--set", "teacher.train=null",
                        "--set", f"distill.epochs={args.epochs}", "--set", f"distill.cache_teacher={cache}",
                        "--set", f"channels_last={str(channels_last).lower()}"]  # fmt: skip
                distill(recipe, out, sets, processes)
                key = (cache, channels_last, processes)
                rates[key], caches[key] = student_rate(out)
                print(f"  cache {cache}, channels_last {channels_last}, {processes} process(es): {rates[key]:,.0f} "
                      f"images/s (teacher cache built in {caches[key]:.1f} s)", flush=True)  # fmt: skip
            baseline = rates[("off", True, 1)]
            rows = ["| teacher cache | memory format | processes × threads | images/s | vs. default without cache |",
                    "| --- | --- | --- | ---: | ---: |"]  # fmt: skip
            for key in variants:
                cache, channels_last, processes = key
                rows.append(
                    f"| {cache} | {'channels_last' if channels_last else 'contiguous'} "
                    f"| {processes} × {2 // processes} "
                    f"| {rates[key]:,.0f} | {rates[key] / baseline:.2f} |"
                )
            tables.append(f"**{recipe}** (student stage, median epoch of {args.epochs}):\n\n" + "\n".join(rows))
    write_section(
        "Student-stage throughput: teacher cache, memory format, processes",
        f"python benchmarks/suite/throughput.py --recipes {args.recipes} --epochs {args.epochs}",
        "Training images/s of the distilled student (all processes together), random augmentation off in every "
        "variant. The teacher cache is built once before the first epoch; its seconds are not in these epoch "
        "rates (peer_torchdistill.py counts them).\n\n" + "\n\n".join(tables),
    )


if __name__ == "__main__":
    main()
