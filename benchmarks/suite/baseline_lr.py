"""Tune the student-alone baseline's learning rate honestly: pick by validation accuracy, report test.

The distillation gain is only meaningful against a tuned baseline (MobileNetV2 students trained alone
are very learning-rate sensitive). Usage:

    python benchmarks/suite/baseline_lr.py [RECIPE] [--lrs 0.003,0.01,0.03]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from edgekd.benchmarks.results import write_section
from rich.console import Console

from edgekd.data import load_data
from edgekd.methods import Plain
from edgekd.models import create_model
from edgekd.recipe import load_recipe
from edgekd.train import MetricsLog, Runtime, train_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="quickstart")
    parser.add_argument("--lrs", default="0.003,0.01,0.02,0.05")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    data = load_data(recipe.data, recipe.seed)
    runtime = Runtime.from_recipe(recipe.device, recipe.channels_last, recipe.amp)
    console = Console(stderr=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for lr in [float(x) for x in args.lrs.split(",")]:
            torch.manual_seed(recipe.seed + 1)  # the same initial weights as the pipeline's baseline
            student = create_model(
                recipe.student.model, num_classes=data.num_classes, in_chans=data.in_chans, kwargs=recipe.student.kwargs
            )
            config = recipe.baseline_train_config().model_copy(update={"lr": lr})
            result = train_stage(
                f"lr={lr:g}",
                Plain(student),
                config,
                data,
                runtime,
                seed=recipe.seed,
                batch_size=recipe.data.batch_size,
                workers=recipe.data.workers,
                checkpoint_dir=Path(scratch),
                metrics=MetricsLog(Path(scratch) / "m.csv"),
                resume=False,
                console=console,
            )
            rows.append((lr, result.val_accuracy, result.test_accuracy))
            print(f"lr {lr:g}: val {result.val_accuracy:.2%}  test {result.test_accuracy:.2%}", flush=True)
    best = max(rows, key=lambda row: row[1])
    table = ["| lr | val accuracy | test accuracy |", "| ---: | ---: | ---: |"]
    table += [f"| {lr:g}{' (picked)' if (lr, v, t) == best else ''} | {v:.2%} | {t:.2%} |" for lr, v, t in rows]
    body = (
        f"Recipe `{recipe.name}`: {recipe.student.model} alone, {config.epochs} epochs {config.optimizer} "
        f"{config.schedule}, picked by validation accuracy.\n\n" + "\n".join(table)
    )
    write_section(
        f"baseline learning rate: {recipe.name}",
        f"python benchmarks/suite/baseline_lr.py {args.recipe} --lrs {args.lrs}",
        body,
    )
    print(f"best lr {best[0]:g} (val {best[1]:.2%}); written to benchmarks/RESULTS.md")


if __name__ == "__main__":
    sys.exit(main())
