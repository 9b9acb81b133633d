"""Distillation methods side by side, 3 seeds: the baseline and every registered method.

The base recipe (quickstart by default) gives the data, the teacher, the student, the baseline and the
training settings (epochs, optimiser, learning rate, schedule); each method adds only its own options,
from the bundled recipe its registry entry names. So only the method differs. Per seed the teacher and
the baseline are trained once (the pipeline's own stages) and shared. Test accuracy, mean ± std over
seeds, of the PyTorch student and of its full-integer int8 TFLite export (TFLite's reference kernels,
which compute what TFLite-Micro computes, bit for bit).

    python benchmarks/suite/methods.py [--base quickstart] [--seeds 0,1,2] [--methods kd,hints,...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results import write_section
from rich.console import Console

from edgekd.config import TrainConfig
from edgekd.data import labels_of, load_data
from edgekd.exporters import tflite
from edgekd.exporters.runtimes import LiteRTRunner
from edgekd.methods import METHODS
from edgekd.pipeline import Session, train_baseline, train_student, train_teachers
from edgekd.recipe import load_recipe
from edgekd.rundir import RunDir

CALIBRATION_IMAGES = 200
VARIANTS = ["kd+mixup=mnist5k_kd_mixup"]  # rows that are a registered method with other options


def int8_accuracy(student: torch.nn.Module, data) -> float:
    """Convert to full-integer int8 TFLite (as `edgekd export` does) and score it on the test split."""
    student = copy.deepcopy(student).cpu().eval().to(memory_format=torch.contiguous_format)
    calibration = torch.stack([data.train_eval[i][0] for i in range(min(CALIBRATION_IMAGES, len(data.train_eval)))])
    images = np.stack([data.test[i][0].numpy() for i in range(len(data.test))])
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "student.int8.tflite"
        tflite.convert(student, calibration, path, int8=True)
        predictions = LiteRTRunner(path, reference_kernels=True).predict(images).argmax(1)
    return float((predictions == labels_of(data.test)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="quickstart", help="recipe giving data, models and training settings")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--methods",
        default=",".join([*(name for name, entry in METHODS if entry.recipe), *VARIANTS]),
        help="registered method names (options from the recipe their entry names) or ROW=RECIPE",
    )
    parser.add_argument("--label-smoothing", type=float, default=0.1, help="a second baseline row; 0: none")
    args = parser.parse_args()
    rows_wanted = args.methods.split(",")
    methods = [item.partition("=")[0] for item in rows_wanted]
    options = {item.partition("=")[0]: item.partition("=")[2] or METHODS.get(item).recipe for item in rows_wanted}
    reference = load_recipe(args.base)
    training = reference.distill.model_dump(include=set(TrainConfig.model_fields))
    configs = {m: load_recipe(options[m]).distill.model_copy(update=training) for m in methods}
    smoothed = f"baseline, label smoothing {args.label_smoothing:g}"
    baselines = ["baseline", smoothed] if args.label_smoothing else ["baseline"]
    console = Console(stderr=True)
    fp32: dict[str, list[float]] = {name: [] for name in [*baselines, *methods]}
    int8: dict[str, list[float]] = {name: [] for name in [*baselines, *methods]}
    started = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        recipe = reference.model_copy(update={"seed": seed})
        data = load_data(recipe.data, seed)

        def record(name: str, trained, data=data, seed=seed) -> None:
            student, result = trained
            fp32[name].append(result.test_accuracy)
            int8[name].append(int8_accuracy(student, data))
            print(f"seed {seed} {name}: {result.test_accuracy:.2%}, int8 {int8[name][-1]:.2%}", flush=True)

        with tempfile.TemporaryDirectory() as scratch:
            session = Session.open(recipe, RunDir(Path(scratch)), data, console)
            teacher, _ = train_teachers(session)
            baseline = train_baseline(session)
            record("baseline", baseline)
            if args.label_smoothing:
                options[smoothed] = f"baseline.label_smoothing: {args.label_smoothing:g}"
                smoothing = recipe.baseline.model_copy(update={"label_smoothing": args.label_smoothing})
                session.recipe = recipe.model_copy(update={"baseline": smoothing})
                record(smoothed, train_baseline(session))
            for name in methods:
                session.recipe = recipe.model_copy(update={"distill": configs[name]})
                given = copy.deepcopy(teacher) if METHODS.get(configs[name].method).needs_teacher else None
                record(name, train_student(session, given, baseline[0]))
    transfer = session.transfer
    base = statistics.mean(fp32["baseline"])
    rows = [
        "| method | options from | test accuracy (mean ± std) | per seed | vs. baseline | int8 TFLite (mean ± std) |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for name, values in fp32.items():
        mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        int8_mean, int8_std = statistics.mean(int8[name]), statistics.stdev(int8[name]) if len(values) > 1 else 0.0
        gain = "–" if name == "baseline" else f"{(mean - base) * 100:+.2f} pt"
        per_seed = " / ".join(f"{v:.1%}" for v in values)
        rows.append(
            f"| {name} | {options.get(name) or '–'} | {mean:.2%} ± {std:.2%} | {per_seed} | {gain} "
            f"| {int8_mean:.2%} ± {int8_std:.2%} |"
        )
        print(rows[-1], flush=True)
    settings = reference.distill
    body = (
        f"Base recipe `{reference.name}`: {reference.description}. The teacher ({reference.teachers[0].model}) "
        f"learns from {len(data.train):,} training images, every student from {len(transfer.train):,}; "
        f"{len(data.test):,} test images. {settings.epochs} epochs {settings.optimizer} {settings.schedule}, "
        f"lr {settings.lr:g} for the distilled students and {reference.baseline_train_config().lr:g} for the "
        f"baseline (each picked on validation; see the learning-rate sections), seeds {args.seeds}; "
        f"{time.perf_counter() - started:,.0f} s in all, {torch.get_num_threads()} threads. Last-epoch test accuracy "
        "of the PyTorch student and of its int8 TFLite export. A method that needs no teacher trains its students "
        "from each other; the first is scored.\n\n" + "\n".join(rows)
    )
    every = parser.get_default("methods")
    subset = "" if args.methods == every else f" ({', '.join(methods)})"  # a subset gets a section of its own
    write_section(
        f"distillation methods: {reference.name}{subset}",
        f"python benchmarks/suite/methods.py --base {args.base} --seeds {args.seeds} --methods {args.methods}",
        body,
    )


if __name__ == "__main__":
    main()
