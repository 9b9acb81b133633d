"""Distillation methods side by side, 3 seeds: the baseline and every registered method.

The base recipe (quickstart by default) gives the data, the teacher, the student, the baseline and the
training settings (epochs, optimiser, learning rate, schedule); each method adds only its own options,
from the bundled recipe its registry entry names. So only the method differs. Per seed the teacher and
the baseline are trained once (the pipeline's own stages) and every method's student starts from them.
Test accuracy, mean ± std over seeds, of the PyTorch student and of its full-integer int8 TFLite export
(TFLite's reference kernels, which compute what TFLite-Micro computes, bit for bit).

Each (seed, row) is one unit of work. With --jobs N, N processes of one thread each take units as they
become ready (a seed's methods after its teacher and baseline): a small student uses a second thread
poorly, so on two cores two one-thread processes finish sooner than one two-thread process. Results
depend on the thread count (float sums in another order), so the table says which was used.

Every finished unit is appended at once to a record (benchmarks/results/methods_<base>.jsonl), stamped with
a fingerprint of what decides its numbers: the library's source, the recipes, torch's version and the
thread count. A rerun skips the units already recorded under the same fingerprint, so a long table killed
halfway (a session's end, Ctrl-C) continues where it stopped; the table is written once every unit is in.

    python benchmarks/suite/methods.py [--base quickstart] [--seeds 0,1,2] [--methods kd,hints,...] [--jobs 2]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import multiprocessing
import os
import shlex
import shutil
import statistics
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from results import write_section
from rich.console import Console

from edgekd.config import TrainConfig
from edgekd.data import labels_of, load_data, transfer_set
from edgekd.datasets.unlabelled import students_data
from edgekd.exporters import tflite
from edgekd.exporters.runtimes import LiteRTRunner
from edgekd.methods import METHODS
from edgekd.pipeline import Session, train_baseline, train_student, train_teachers
from edgekd.recipe import Recipe, load_recipe
from edgekd.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
CALIBRATION_IMAGES = 200
VARIANTS = ["kd+mixup=mnist5k_kd_mixup"]  # rows that are a registered method with other options
BASELINE = "baseline"


@dataclass(frozen=True)
class Unit:
    """One row of one seed. `recipe` is what that row trains: for BASELINE the base recipe (its teacher
    and baseline are what the seed's methods start from), for the label-smoothing row the base recipe
    with baseline.label_smoothing, for a method the base recipe with the method's distill section."""

    row: str
    seed: int
    recipe: Recipe
    kind: str  # "baseline" | "smoothed" | "method"

    def folder(self, scratch: Path) -> Path:
        return scratch / f"seed{self.seed}" / self.row.replace(" ", "_").replace(",", "")


@dataclass(frozen=True)
class Scored:
    row: str
    seed: int
    fp32: float
    int8: float
    seconds: float
    fingerprint: str = ""


def fingerprint(threads: int) -> str:
    """What a unit's numbers depend on besides its seed and row: edgekd's source (library, exporters,
    recipes, this script), torch's version and the threads each process runs."""
    digest = hashlib.sha256(f"torch {torch.__version__}, {threads} threads".encode())
    sources = [p for folder in ("edgekd", "exporters", "recipes") for p in (ROOT / folder).rglob("*")]
    for path in sorted([*sources, Path(__file__).resolve()]):
        if path.suffix in (".py", ".yaml"):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def read_record(path: Path, version: str) -> dict[tuple[str, int], Scored]:
    """The units `path` holds under fingerprint `version` (the last one of each row and seed)."""
    if not path.is_file():
        return {}
    scored = [Scored(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return {(s.row, s.seed): s for s in scored if s.fingerprint == version}


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


def run_unit(unit: Unit, scratch: Path, threads: int | None, quiet: bool) -> Scored:
    """Train and score one row of one seed in its own run folder. A method's folder starts with copies of
    the seed's teacher and baseline weights, which the pipeline's resume path loads instead of training."""
    started = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    console = Console(stderr=True, quiet=quiet)
    recipe = unit.recipe
    data = load_data(recipe.data, unit.seed)
    folder = unit.folder(scratch)
    folder.mkdir(parents=True)
    if unit.kind == "method":
        base = Unit(BASELINE, unit.seed, recipe, "baseline").folder(scratch)
        for stage in ("teacher", BASELINE):
            shutil.copy(RunDir(base).weights(stage), RunDir(folder).weights(stage))
    session = Session.open(recipe, RunDir(folder), data, console, resume=True)
    if unit.kind == "smoothed":
        student, result = train_baseline(session)
    else:
        needs_teacher = unit.kind == "baseline" or METHODS.get(recipe.distill.method).needs_teacher
        teacher = train_teachers(session)[0] if needs_teacher else None
        baseline = train_baseline(session)
        student, result = baseline if unit.kind == "baseline" else train_student(session, teacher, baseline[0])
    accuracy = result.test_accuracy
    return Scored(unit.row, unit.seed, accuracy, int8_accuracy(student, data), time.perf_counter() - started)


def run_all(baselines: list[Unit], methods: dict[int, list[Unit]], jobs: int, scratch: Path, record) -> None:
    """Every unit, a seed's methods only once its teacher and baseline are saved; `record` gets each result."""

    def finished(scored: Scored) -> None:
        record(scored)
        print(f"seed {scored.seed} {scored.row}: {scored.fp32:.2%}, int8 {scored.int8:.2%} ({scored.seconds:,.0f} s)",
              flush=True)  # fmt: skip

    if jobs == 1:
        for unit in baselines:
            finished(run_unit(unit, scratch, None, quiet=False))
            for method in methods.get(unit.seed, []) if unit.kind == "baseline" else []:
                finished(run_unit(method, scratch, None, quiet=False))
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # forking a process that runs torch threads can hang
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        pending: dict[Future, Unit] = {pool.submit(run_unit, u, scratch, threads, True): u for u in baselines}
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in ready:
                unit = pending.pop(future)
                finished(future.result())
                if unit.kind == "baseline":
                    pending |= {pool.submit(run_unit, m, scratch, threads, True): m for m in methods[unit.seed]}


def row_recipe(base: Recipe, row: Recipe, training: dict) -> Recipe:
    """The base recipe with the row recipe's distill section under the base's training settings. A row
    whose recipe adds unlabelled images (data.unlabelled) keeps them and its own epoch count (which its
    recipe sets to give as many optimiser steps as the base's); the baseline keeps the base's epochs."""
    if row.data.unlabelled is None:
        return base.model_copy(update={"distill": row.distill.model_copy(update=training)})
    if row.data.transfer_fraction != base.data.transfer_fraction:
        fractions = f"{row.data.transfer_fraction:g}, the base's {base.data.transfer_fraction:g}"
        raise SystemExit(f"{row.name}: transfer_fraction {fractions}; the rows would not share their labelled images")
    return base.model_copy(
        update={
            "distill": row.distill.model_copy(update={**training, "epochs": row.distill.epochs}),
            "data": base.data.model_copy(update={"unlabelled": row.data.unlabelled}),
            "baseline": base.baseline.model_copy(update={"epochs": base.distill.epochs}),
        }
    )


def unlabelled_note(rows: dict[str, Recipe], data, seed: int) -> str:
    """What the table says about rows that also learn from unlabelled images."""
    extra = {name: recipe for name, recipe in rows.items() if recipe.data.unlabelled is not None}
    if not extra:
        return ""
    name, recipe = next(iter(extra.items()))
    unlabelled = students_data(data, recipe.data, seed).unlabelled
    return (
        f" (the row{'s' if len(extra) > 1 else ''} {', '.join(extra)} also from {len(unlabelled):,} unlabelled "
        f"images, data.unlabelled: {recipe.data.unlabelled}, for {recipe.distill.epochs} epochs: as many "
        "optimiser steps as the others)"
    )


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
    parser.add_argument("--jobs", type=int, default=1, help="processes, one thread each when more than one")
    parser.add_argument("--record", type=Path, help="default: benchmarks/results/methods_<base>.jsonl")
    parser.add_argument("--fresh", action="store_true", help="run every unit again, even those recorded")
    args = parser.parse_args()
    rows_wanted = args.methods.split(",")
    methods = [item.partition("=")[0] for item in rows_wanted]
    options = {item.partition("=")[0]: item.partition("=")[2] or METHODS.get(item).recipe for item in rows_wanted}
    reference = load_recipe(args.base)
    training = reference.distill.model_dump(include=set(TrainConfig.model_fields))
    recipes = {m: row_recipe(reference, load_recipe(options[m]), training) for m in methods}
    smoothed = f"baseline, label smoothing {args.label_smoothing:g}"
    if args.label_smoothing:
        options[smoothed] = f"baseline.label_smoothing: {args.label_smoothing:g}"
    seeds = [int(s) for s in args.seeds.split(",")]

    base_units, method_units = [], {}
    for seed in seeds:
        recipe = reference.model_copy(update={"seed": seed})
        base_units.append(Unit(BASELINE, seed, recipe, "baseline"))
        method_units[seed] = [Unit(m, seed, recipes[m].model_copy(update={"seed": seed}), "method") for m in methods]
    if args.label_smoothing:
        for seed in seeds:  # needs no teacher: runs beside the first seeds' teachers
            recipe = reference.model_copy(update={"seed": seed})
            smoothing = recipe.baseline.model_copy(update={"label_smoothing": args.label_smoothing})
            base_units.append(Unit(smoothed, seed, recipe.model_copy(update={"baseline": smoothing}), "smoothed"))

    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else torch.get_num_threads()
    version = fingerprint(threads)
    record_path = args.record or ROOT / "benchmarks" / "results" / f"methods_{Path(args.base).stem}.jsonl"
    recorded = {} if args.fresh else read_record(record_path, version)
    method_units = {seed: [u for u in units if (u.row, u.seed) not in recorded] for seed, units in method_units.items()}
    # A seed whose methods are all recorded needs no teacher; one with any left trains it again (same seed,
    # same weights) for them.
    base_units = [
        u for u in base_units if (u.row, u.seed) not in recorded or (u.kind == "baseline" and method_units[u.seed])
    ]
    if recorded:
        print(f"{len(recorded)} units already in {record_path} (fingerprint {version}); running "
              f"{len(base_units) + sum(map(len, method_units.values()))} more", flush=True)  # fmt: skip
    record_path.parent.mkdir(parents=True, exist_ok=True)

    def record(scored: Scored) -> None:
        scored = Scored(**{**asdict(scored), "fingerprint": version})
        recorded[scored.row, scored.seed] = scored
        with record_path.open("a") as handle:
            handle.write(json.dumps(asdict(scored)) + "\n")

    with tempfile.TemporaryDirectory() as scratch:
        run_all(base_units, method_units, args.jobs, Path(scratch), record)
    seconds = sum(s.seconds for s in recorded.values())
    data = load_data(reference.data, seeds[0])
    transfer = transfer_set(data, reference.data, seeds[0])

    names = [BASELINE, *([smoothed] if args.label_smoothing else []), *methods]
    fp32 = {name: [recorded[name, seed].fp32 for seed in seeds] for name in names}
    int8 = {name: [recorded[name, seed].int8 for seed in seeds] for name in names}
    base = statistics.mean(fp32[BASELINE])
    rows = [
        "| method | options from | test accuracy (mean ± std) | per seed | vs. baseline | int8 TFLite (mean ± std) |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for name in names:
        values = fp32[name]
        mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        int8_mean, int8_std = statistics.mean(int8[name]), statistics.stdev(int8[name]) if len(values) > 1 else 0.0
        gain = "–" if name == BASELINE else f"{(mean - base) * 100:+.2f} pt"
        per_seed = " / ".join(f"{v:.1%}" for v in values)
        rows.append(
            f"| {name} | {options.get(name) or '–'} | {mean:.2%} ± {std:.2%} | {per_seed} | {gain} "
            f"| {int8_mean:.2%} ± {int8_std:.2%} |"
        )
        print(rows[-1], flush=True)
    settings = reference.distill
    layout = f"{args.jobs} processes × {threads} thread" if args.jobs > 1 else f"1 process × {threads} threads"
    body = (
        f"Base recipe `{reference.name}`: {reference.description}. The teacher ({reference.teachers[0].model}) "
        f"learns from {len(data.train):,} training images, every student from {len(transfer.train):,}"
        f"{unlabelled_note(recipes, data, seeds[0])}; "
        f"{len(data.test):,} test images. {settings.epochs} epochs {settings.optimizer} {settings.schedule}, "
        f"lr {settings.lr:g} for the distilled students and {reference.baseline_train_config().lr:g} for the "
        f"baseline (each picked on validation; see the learning-rate sections), seeds {args.seeds}; "
        f"{seconds:,.0f} s of training and scoring in all ({layout}; units recorded in "
        f"`{record_path.relative_to(ROOT) if record_path.is_relative_to(ROOT) else record_path}`, fingerprint "
        f"{version}). Last-epoch test accuracy of the PyTorch student and of its int8 "
        "TFLite export. A method that needs no teacher trains its students from each other or from itself; the "
        "first student is scored.\n\n" + "\n".join(rows)
    )
    every = parser.get_default("methods")
    subset = "" if args.methods == every else f" ({', '.join(methods)})"  # a subset gets a section of its own
    options = [f"--label-smoothing {args.label_smoothing:g}"] if args.label_smoothing != 0.1 else []
    options += [f"--jobs {args.jobs}"] if args.jobs > 1 else []
    options += [f"--record {shlex.quote(str(args.record))}"] if args.record else []
    command = f"--base {args.base} --seeds {args.seeds} --methods {shlex.quote(args.methods)} {' '.join(options)}"
    command = f"python benchmarks/suite/methods.py {command}".strip()
    write_section(f"distillation methods: {reference.name}{subset}", command, body)


if __name__ == "__main__":
    main()
