"""Student-stage throughput: the teacher cache off and on, contiguous and channels_last memory, one
process with two threads and two processes (torchrun) with one thread each, on the quickstart and on
the resnet50 recipe.

Each recipe's teacher is trained once (one epoch; its accuracy does not matter here), then every
variant runs the distilled student for `--epochs` epochs from that teacher file, in an interleaved
order, and reports the median epoch's training images/s (all processes together) from metrics.csv.
`--compile` adds a variant with `torch_compile: true` (cache on, channels_last, one process); its first
epoch, which includes compiling, is reported beside it.
Random augmentation is turned off in every variant so that the cache can be on, and the variants
differ only in what is named. Writes a table to benchmarks/RESULTS.md.

    python benchmarks/suite/throughput.py [--recipes quickstart,mnist5k_resnet50_to_mbv2tiny] [--epochs 3] [--compile]
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


def student_rate(run_dir: Path) -> tuple[float, float, float]:
    """(median epoch images/s, seconds spent caching the teacher's outputs, first epoch's seconds) of the
    student stage."""
    run = RunDir(run_dir)
    with run.metrics.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["stage"] == "student"]
    rate = statistics.median(float(r["images_per_second"]) for r in rows)
    return rate, run.read_summary().student.teacher_cache_seconds, float(rows[0]["epoch_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="quickstart,mnist5k_resnet50_to_mbv2tiny")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add a torch_compile: true variant")
    args = parser.parse_args()
    # (teacher cache, channels_last, processes, torch_compile)
    variants = [(*key, False) for key in itertools.product(("off", "on"), (False, True), (1, 2))]
    if args.compile:
        variants.append(("on", True, 1, True))
    tables = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for recipe in args.recipes.split(","):
            teacher_run = scratch / f"{recipe}-teacher"
            print(f"{recipe}: training a teacher for one epoch", flush=True)
            distill(recipe, teacher_run, ["--set", "teacher.train.epochs=1", "--set", "distill.epochs=1"], 1)
            rates: dict[tuple, float] = {}
            caches: dict[tuple, float] = {}
            first_epoch: dict[tuple, float] = {}
            for index, (cache, channels_last, processes, compiled) in enumerate(variants):
                out = scratch / f"{recipe}-{index}"
                teacher = RunDir(teacher_run).weights("teacher")
                sets = ["--set", f"teacher.checkpoint={teacher}", "--set", "teacher.train=null",
                        "--set", f"distill.epochs={args.epochs}", "--set", f"distill.cache_teacher={cache}",
                        "--set", f"channels_last={str(channels_last).lower()}",
                        "--set", f"torch_compile={str(compiled).lower()}"]  # fmt: skip
                distill(recipe, out, sets, processes)
                key = (cache, channels_last, processes, compiled)
                rates[key], caches[key], first_epoch[key] = student_rate(out)
                print(f"  cache {cache}, channels_last {channels_last}, {processes} process(es), compiled {compiled}: "
                      f"{rates[key]:,.0f} images/s (teacher cache built in {caches[key]:.1f} s, first epoch "
                      f"{first_epoch[key]:.1f} s)", flush=True)  # fmt: skip
            baseline = rates[("off", True, 1, False)]
            rows = ["| teacher cache | memory format | processes × threads | torch.compile | images/s "
                    "| vs. default without cache | first epoch s |",
                    "| --- | --- | --- | --- | ---: | ---: | ---: |"]  # fmt: skip
            for key in variants:
                cache, channels_last, processes, compiled = key
                rows.append(
                    f"| {cache} | {'channels_last' if channels_last else 'contiguous'} "
                    f"| {processes} × {2 // processes} | {'yes' if compiled else 'no'} "
                    f"| {rates[key]:,.0f} | {rates[key] / baseline:.2f} | {first_epoch[key]:.1f} |"
                )
            tables.append(f"**{recipe}** (student stage, median epoch of {args.epochs}):\n\n" + "\n".join(rows))
    write_section(
        "Student-stage throughput: teacher cache, memory format, processes",
        f"python benchmarks/suite/throughput.py --recipes {args.recipes} --epochs {args.epochs}"
        + (" --compile" if args.compile else ""),
        "Training images/s of the distilled student (all processes together), random augmentation off in every "
        "variant. The teacher cache is built once before the first epoch; its seconds are not in these epoch "
        "rates (peer_torchdistill.py counts them). The first epoch's seconds include, with torch.compile, "
        "compiling the step.\n\n" + "\n\n".join(tables),
    )


if __name__ == "__main__":
    main()
