"""edgekd beside torchdistill 1.1.5 on the same KD task, the same teacher file and the same machine.

The peer harness (`../shared/peer/run_torchdistill.sh`, its README states the task) and edgekd
(`peer_torchdistill.yaml`, the same task as a recipe) run alternately, A B A B …, nothing else running,
`--runs` times each. For each run: training images/s (60,000 images ÷ the training time, edgekd's
including the time to cache the teacher's outputs), the median epoch's images/s, wall time and peak RSS
of the process (GNU time), and the student's test accuracy. The medians of both and their ratio go to
benchmarks/RESULTS.md.

    python benchmarks/suite/peer_torchdistill.py [--runs 3] [--peer ../shared/peer] [--without-cache]

`--without-cache` adds a third arm, edgekd with `distill.cache_teacher: off`, to show what the cache gives.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import write_section

from edgekd.cache import cpu_name
from edgekd.rundir import RunDir

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRAIN_IMAGES = 4000 * 15
ENVIRONMENT = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}


def gnu_time(path: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) from `/usr/bin/time -v`'s report."""
    text = path.read_text()
    elapsed = re.search(r"Elapsed \(wall clock\) time.*?: (\S+)", text).group(1)
    seconds = 0.0
    for part in elapsed.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds, int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024


def torchdistill(peer: Path, teacher: Path, seed: int) -> dict:
    result = subprocess.run(
        ["bash", str(peer / "run_torchdistill.sh"), str(teacher)],
        capture_output=True,
        text=True,
        env={**os.environ, **ENVIRONMENT, "SEED": str(seed)},
        check=True,
    )
    line = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "images_per_s": line["images_per_s"],
        "median_epoch": line["images_per_s_median_epoch"],
        "accuracy": line["student_test_acc"] / 100,
        "wall_s": line["wall_s"],
        "peak_rss_mb": line["peak_rss_mb"],
    }


def edgekd(teacher: Path, scratch: Path, cache: str, seed: int) -> dict:
    """One edgekd run of the task; its student stage's memory format is the one `channels_last: auto`
    chose (the run's log says which, and why)."""
    run_dir = scratch / f"edgekd-{time.monotonic_ns()}"
    report = scratch / "time.txt"
    result = subprocess.run(
        ["/usr/bin/time", "-v", "-o", str(report), sys.executable, "-m", "edgekd", "distill",
         str(HERE / "peer_torchdistill.yaml"), "--out", str(run_dir),
         "--set", f"teacher.checkpoint={teacher}", "--set", f"distill.cache_teacher={cache}", "--set", f"seed={seed}"],
        capture_output=True,
        text=True,
        env={**os.environ, **ENVIRONMENT},
        check=True,
    )  # fmt: skip
    run = RunDir(run_dir)
    with run.metrics.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["stage"] == "student"]
    summary = run.read_summary()
    training = sum(float(r["epoch_seconds"]) for r in rows) + summary.student.teacher_cache_seconds
    wall, rss = gnu_time(report)
    chosen = re.search(r"student: memory format (\w+)", result.stderr)
    return {
        "memory_format": chosen.group(1) if chosen else "as the recipe says",
        "images_per_s": TRAIN_IMAGES / training,
        "median_epoch": statistics.median(float(r["images_per_second"]) for r in rows),
        "accuracy": summary.student.accuracy,
        "wall_s": wall,
        "peak_rss_mb": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peer", type=Path, default=REPO.parent / "shared" / "peer")
    parser.add_argument("--teacher", type=Path, default=Path("/tmp/peer_td/teacher_resnet18_mnist5k.pt"))
    parser.add_argument("--without-cache", action="store_true", help="also run edgekd with the teacher cache off")
    args = parser.parse_args()
    if not (args.peer / "run_torchdistill.sh").is_file():
        sys.exit(f"no peer harness at {args.peer}: give --peer PATH")
    if not args.teacher.is_file():  # the peer harness trains it, the same file every time
        print(f"training the shared teacher {args.teacher} with the peer's train_teacher.py", flush=True)
        torchdistill(args.peer, args.teacher, 0)

    arms = {"torchdistill 1.1.5": lambda seed: torchdistill(args.peer, args.teacher, seed)}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        arms["edgekd"] = lambda seed: edgekd(args.teacher, scratch, "auto", seed)
        if args.without_cache:
            arms["edgekd, teacher cache off"] = lambda seed: edgekd(args.teacher, scratch, "off", seed)
        runs: dict[str, list[dict]] = {name: [] for name in arms}
        for index in range(args.runs):  # alternate the toolkits (the machine's speed drifts); run i: seed i
            for name, run in arms.items():
                runs[name].append(run(index))
                r = runs[name][-1]
                print(
                    f"run {index + 1} {name}: {r['images_per_s']:,.0f} images/s "
                    f"(median epoch {r['median_epoch']:,.0f}), "
                    f"accuracy {r['accuracy']:.1%}, wall {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:,.0f} MB",
                    flush=True,
                )

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    base = "torchdistill 1.1.5"
    lines = [
        "| toolkit | runs | training images/s (median) | median epoch images/s | × torchdistill "
        "| student test accuracy (seed 0 / 1 / …) | wall s | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for name in runs:
        accuracies = " / ".join(f"{r['accuracy']:.1%}" for r in runs[name])
        lines.append(
            f"| {name} | {len(runs[name])} | {median(name, 'images_per_s'):,.0f} "
            f"| {median(name, 'median_epoch'):,.0f} | "
            f"{median(name, 'images_per_s') / median(base, 'images_per_s'):.2f} | {accuracies} | "
            f"{median(name, 'wall_s'):.1f} | {median(name, 'peak_rss_mb'):,.0f} |"
        )
    per_run = ["| run | " + " | ".join(runs) + " |", "| ---: |" + " ---: |" * len(runs)]
    for index in range(args.runs):
        per_run.append(
            f"| {index + 1} | " + " | ".join(f"{runs[name][index]['images_per_s']:,.0f}" for name in runs) + " |"
        )
    body = (
        "Hinton KD, timm resnet18 (the peer harness's teacher file, in eval mode) → timm mobilenetv2_035 on "
        "MNIST-5k (per class the first 400 images train, the last 100 test), 32 px, 3 channels, no augmentation, "
        "AdamW 1e-2, weight decay 5e-4, cosine per step, batch 64, T 4, CE 0.1 / KD 0.9, 15 epochs, 2 threads. "
        "Runs alternate between the toolkits. Training images/s = 60,000 ÷ training time (torchdistill: its "
        "train loop; edgekd: its epochs plus caching the teacher's outputs once). Wall time and peak RSS: the "
        "whole process (GNU time). Run i uses seed i in both toolkits; each seeds its own way (initial weights, "
        "shuffles), so their accuracies agree within the spread over seeds, not run by run.\n\n"
        + "\n".join(lines)
        + "\n\nTraining images/s per run (in the order they ran):\n\n"
        + "\n".join(per_run)
        + "\n\nedgekd's student stage trained in the memory format `channels_last: auto` chose on this CPU: "
        + ", ".join(sorted({r["memory_format"] for name in runs if name != base for r in runs[name]}))
        + "."
    )
    write_section(
        f"Side by side with torchdistill ({cpu_name()})",  # one section per CPU: which toolkit is faster varies
        f"python benchmarks/suite/peer_torchdistill.py --runs {args.runs}"
        + (" --without-cache" if args.without_cache else ""),
        body,
    )


if __name__ == "__main__":
    main()
