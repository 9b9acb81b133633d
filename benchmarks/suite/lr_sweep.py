"""Tune a stage's learning rate honestly: pick by validation accuracy, report test accuracy too.

The distillation gain means something only against a tuned baseline (MobileNetV2 students trained
alone are very learning-rate sensitive), and the distilled student deserves the same tuning. The
teacher is trained once (or loaded with --teacher); every candidate starts from the same weights.

    python benchmarks/suite/lr_sweep.py [RECIPE] [--stage baseline|student] [--lrs 0.01,0.02,0.05]
                                        [--teacher runs/quickstart/teacher.pt]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from results import write_section
from rich.console import Console

from edgekd.data import load_data
from edgekd.models import load_weights
from edgekd.pipeline import Session, train_baseline, train_student, train_teachers
from edgekd.recipe import load_recipe
from edgekd.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="quickstart")
    parser.add_argument("--stage", choices=["baseline", "student"], default="baseline")
    parser.add_argument("--lrs", default="0.01,0.02,0.05,0.1")
    parser.add_argument("--teacher", type=Path, help="teacher weights (default: train one per the recipe)")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    data = load_data(recipe.data, recipe.seed)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        session = Session.open(recipe, RunDir(Path(scratch)), data, Console(stderr=True))
        teacher = None
        if args.stage == "student":
            if args.teacher is not None:
                teacher = session.build(recipe.teachers[0], recipe.seed)
                load_weights(teacher, args.teacher)
                teacher = session.runtime.place(teacher.eval())
            else:
                teacher, _ = train_teachers(session)
        for lr in [float(x) for x in args.lrs.split(",")]:
            if args.stage == "baseline":
                config = recipe.baseline_train_config().model_copy(update={"lr": lr})
                session.recipe = recipe.model_copy(update={"baseline": recipe.baseline.model_copy(update={"lr": lr})})
                _, result = train_baseline(session)
            else:
                config = recipe.distill.model_copy(update={"lr": lr})
                session.recipe = recipe.model_copy(update={"distill": config})
                _, result = train_student(session, teacher)
            rows.append((lr, result.val_accuracy, result.test_accuracy))
            print(f"{args.stage} lr {lr:g}: val {result.val_accuracy:.2%}  test {result.test_accuracy:.2%}", flush=True)
    best = max(rows, key=lambda row: row[1])
    table = ["| lr | val accuracy | test accuracy |", "| ---: | ---: | ---: |"]
    table += [f"| {lr:g}{' (picked)' if (lr, v, t) == best else ''} | {v:.2%} | {t:.2%} |" for lr, v, t in rows]
    what = (
        "alone (baseline)"
        if args.stage == "baseline"
        else f"with {recipe.distill.method} from {recipe.teachers[0].model}"
    )
    body = (
        f"Recipe `{recipe.name}`: {recipe.student.model} {what}, {config.epochs} epochs {config.optimizer} "
        f"{config.schedule}, {torch.get_num_threads()} threads; picked by validation accuracy.\n\n" + "\n".join(table)
    )
    teacher_flag = f" --teacher {args.teacher}" if args.teacher else ""
    write_section(
        f"learning rate: {recipe.name} {args.stage}",
        f"python benchmarks/suite/lr_sweep.py {args.recipe} --stage {args.stage} --lrs {args.lrs}{teacher_flag}",
        body,
    )
    print(f"best lr {best[0]:g} (val {best[1]:.2%}); written to benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
