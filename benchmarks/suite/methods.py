"""Distillation methods side by side: baseline, KD, hints, ProKT, DKD and AT on MNIST-5k, 3 seeds.

Each method runs its bundled recipe (quickstart for KD, mnist5k_<method> for the others: same data,
teacher, student, epochs, optimiser and learning rate, so only the method differs). Per seed the
teacher and the baseline are trained once and shared. Test accuracy, mean ± std over seeds.

    python benchmarks/suite/methods.py [--seeds 0,1,2] [--methods kd,hints,prokt,dkd,at]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from edgekd.benchmarks.results import write_section
from rich.console import Console

from edgekd.data import load_data
from edgekd.methods import Plain, build_method
from edgekd.models import create_model
from edgekd.recipe import load_recipe
from edgekd.train import MetricsLog, Runtime, train_stage

RECIPES = {
    "kd": "quickstart",
    "hints": "mnist5k_hints",
    "prokt": "mnist5k_prokt",
    "dkd": "mnist5k_dkd",
    "at": "mnist5k_at",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(RECIPES))
    args = parser.parse_args()
    methods = args.methods.split(",")
    recipes = {m: load_recipe(RECIPES[m]) for m in methods}
    reference = recipes[methods[0]]
    for method, recipe in recipes.items():  # only the method may differ
        for section in ("data", "teacher", "student", "baseline"):
            assert getattr(recipe, section) == getattr(reference, section), f"{RECIPES[method]}: {section} differs"
    console = Console(stderr=True)
    runtime = Runtime.from_recipe(reference.device, reference.channels_last, reference.amp)
    results: dict[str, list[float]] = {name: [] for name in ["baseline", *methods]}
    started = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = load_data(reference.data, seed)
        with tempfile.TemporaryDirectory() as scratch:
            common = dict(
                seed=seed,
                batch_size=reference.data.batch_size,
                workers=reference.data.workers,
                checkpoint_dir=Path(scratch),
                metrics=MetricsLog(Path(scratch) / "m.csv"),
                resume=False,
                console=console,
            )

            def new(config, model_seed: int, data=data) -> torch.nn.Module:
                torch.manual_seed(model_seed)
                return create_model(
                    config.model, num_classes=data.num_classes, in_chans=data.in_chans, kwargs=config.kwargs
                )

            teacher = new(reference.teachers[0], seed)
            train_stage(f"teacher s{seed}", Plain(teacher), reference.teachers[0].train, data, runtime, **common)
            baseline = train_stage(
                f"baseline s{seed}",
                Plain(new(reference.student, seed + 1)),
                reference.baseline_train_config(),
                data,
                runtime,
                **common,
            )
            results["baseline"].append(baseline.test_accuracy)
            for name in methods:
                config = recipes[name].distill
                method = build_method(
                    config,
                    new(reference.student, seed + 1),
                    copy.deepcopy(teacher),
                    in_chans=data.in_chans,
                    image_size=data.image_size,
                )
                result = train_stage(f"{name} s{seed}", method, config, data, runtime, **common)
                results[name].append(result.test_accuracy)
                print(
                    f"seed {seed} {name}: {result.test_accuracy:.2%} (baseline {baseline.test_accuracy:.2%})",
                    flush=True,
                )
    base = statistics.mean(results["baseline"])
    rows = [
        "| method | recipe | test accuracy (mean ± std) | per seed | vs. baseline |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    for name, values in results.items():
        mean = statistics.mean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        gain = "–" if name == "baseline" else f"{(mean - base) * 100:+.2f} pt"
        per_seed = " / ".join(f"{v:.1%}" for v in values)
        recipe = RECIPES.get(name, "quickstart (baseline)")
        rows.append(f"| {name} | {recipe} | {mean:.2%} ± {std:.2%} | {per_seed} | {gain} |")
        print(rows[-1], flush=True)
    body = (
        f"MNIST-5k 32×32 (1,000 test images), {reference.teachers[0].model} teacher → {reference.student.model}, "
        f"{reference.distill.epochs} epochs, lr {reference.distill.lr:g} for every student (the value the baseline and "
        f"KD picked on validation), seeds {args.seeds}; {time.perf_counter() - started:,.0f} s in all. "
        "Last-epoch test accuracy, PyTorch fp32.\n\n" + "\n".join(rows)
    )
    write_section(
        "distillation methods on MNIST-5k",
        f"python benchmarks/suite/methods.py --seeds {args.seeds} --methods {args.methods}",
        body,
    )


if __name__ == "__main__":
    main()
