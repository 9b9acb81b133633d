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
from rich.console import Console

from edgekd.benchmarks.results import write_section
from edgekd.data import load_data, transfer_set
from edgekd.methods import Plain, build_method
from edgekd.models import create_model
from edgekd.recipe import load_recipe
from edgekd.train import MetricsLog, Runtime, train_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="quickstart")
    parser.add_argument("--stage", choices=["baseline", "student"], default="baseline")
    parser.add_argument("--lrs", default="0.01,0.02,0.05,0.1")
    parser.add_argument("--teacher", type=Path, help="teacher weights (default: train one per the recipe)")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    data = load_data(recipe.data, recipe.seed)  # the teacher learns from all of it
    transfer = transfer_set(data, recipe.data, recipe.seed)  # the students from this
    runtime = Runtime.from_recipe(recipe.device, recipe.channels_last, recipe.amp)
    console = Console(stderr=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        common = dict(
            seed=recipe.seed,
            batch_size=recipe.data.batch_size,
            workers=recipe.data.workers,
            checkpoint_dir=Path(scratch),
            metrics=MetricsLog(Path(scratch) / "m.csv"),
            resume=False,
            console=console,
        )

        def model(config, seed: int, checkpoint: Path | None = None) -> torch.nn.Module:
            torch.manual_seed(seed)
            return create_model(
                config.model,
                num_classes=data.num_classes,
                in_chans=data.in_chans,
                checkpoint=checkpoint,
                kwargs=config.kwargs,
            )

        teacher = None
        if args.stage == "student":
            teacher = model(recipe.teachers[0], recipe.seed, args.teacher)
            if args.teacher is None:
                train_stage("teacher", Plain(teacher), recipe.teachers[0].train, data, runtime, **common)
        for lr in [float(x) for x in args.lrs.split(",")]:
            student = model(recipe.student, recipe.seed + 1)  # the pipeline's initial student weights
            if args.stage == "baseline":
                config, method = recipe.baseline_train_config(), Plain(student)
            else:
                config = recipe.distill
                method = build_method(config, student, teacher, in_chans=data.in_chans, image_size=data.image_size)
            config = config.model_copy(update={"lr": lr})
            result = train_stage(f"lr={lr:g}", method, config, transfer, runtime, **common)
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
