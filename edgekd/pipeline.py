"""`edgekd distill`: teacher → baseline → distilled student, into one run directory.

runs/<name>/ holds recipe.yaml (resolved), teacher.pt, baseline.pt, student.pt (edgekd weights files),
metrics.csv, summary.json and checkpoints/ (the last epoch of each stage, for --resume).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table
from torch import nn

from edgekd.data import DataBundle, load_data, make_loader
from edgekd.errors import RunDirError
from edgekd.methods import Plain, build_method
from edgekd.models import check_model_name, count_macs, count_parameters, create_model, load_weights
from edgekd.recipe import Recipe
from edgekd.train import MetricsLog, Runtime, StageResult, atomic_save, evaluate, train_stage

WEIGHTS_FORMAT = "edgekd.weights/1"
STAGES = ("teacher", "baseline", "student")


def default_run_dir(recipe: Recipe) -> Path:
    return recipe.output_dir / recipe.name


def prepare_run_dir(run_dir: Path, recipe: Recipe, *, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a finished or foreign folder unless told to; check we can write there."""
    recipe_file = run_dir / "recipe.yaml"
    if recipe_file.is_file():
        if overwrite:
            shutil.rmtree(run_dir)
        elif resume:
            saved = yaml.safe_load(recipe_file.read_text())
            current = recipe.model_dump(mode="json")
            changed = sorted(_changed_keys(saved, current))
            if changed:
                raise RunDirError(
                    f"{run_dir} was run with a different recipe (changed: {', '.join(changed)}); "
                    "resume with the same recipe, or use --overwrite or --out"
                )
        else:
            raise RunDirError(
                f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to "
                "replace it, or --out DIR to write elsewhere"
            )
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        raise RunDirError(f"{run_dir} is a non-empty folder that is not an edgekd run; choose another with --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(
            f"cannot write to run directory {run_dir} ({exc.strerror}); choose another with --out"
        ) from None


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = set(old) | set(new)
        return [k for key in keys for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def save_weights(
    path: Path, model: nn.Module, model_name: str, model_kwargs: dict, data: DataBundle, result: StageResult
) -> None:
    """Everything needed to rebuild and feed the model later (exporters read this)."""
    state_dict = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    atomic_save(
        {
            "format": WEIGHTS_FORMAT,
            "model": model_name,
            "model_kwargs": model_kwargs,
            "num_classes": data.num_classes,
            "in_chans": data.in_chans,
            "image_size": data.image_size,
            "mean": list(data.mean),
            "std": list(data.std),
            "class_names": data.class_names,
            "test_accuracy": result.test_accuracy,
            "val_accuracy": result.val_accuracy,
            "test_loss": result.test_loss,
            "seconds": result.seconds,
            "epochs": result.epochs,
            "state_dict": state_dict,
        },
        path,
    )


def _result_from_weights(stage: str, metadata: dict) -> StageResult:
    return StageResult(
        stage,
        metadata["val_accuracy"],
        metadata["test_accuracy"],
        metadata["test_loss"],
        metadata["seconds"],
        metadata["epochs"],
    )


def distill(
    recipe: Recipe, run_dir: Path, *, resume: bool = False, overwrite: bool = False, console: Console | None = None
) -> dict[str, Any]:
    console = console or Console(stderr=True)
    started = time.perf_counter()
    # Everything that can reject the input runs before the run directory is touched.
    check_model_name(recipe.teacher.model)
    check_model_name(recipe.student.model)
    runtime = Runtime.from_recipe(recipe.device, recipe.channels_last, recipe.amp)
    data = load_data(recipe.data, recipe.seed)
    prepare_run_dir(run_dir, recipe, resume=resume, overwrite=overwrite)
    atomic_save(recipe.to_yaml(), run_dir / "recipe.yaml")
    metrics = MetricsLog(run_dir / "metrics.csv")
    console.print(
        f"[bold]{recipe.name}[/bold]: {recipe.data.dataset} {data.image_size}×{data.image_size}×{data.in_chans}, "
        f"{data.num_classes} classes, {len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
        f"images, on {runtime.device.type}"
    )
    common = dict(
        seed=recipe.seed,
        batch_size=recipe.data.batch_size,
        workers=recipe.data.workers,
        checkpoint_dir=run_dir / "checkpoints",
        metrics=metrics,
        resume=resume,
        console=console,
    )

    def stage(name: str, model_name: str, model_kwargs: dict, build, train_config) -> tuple[nn.Module, StageResult]:
        """Reuse a finished stage's weights on --resume; otherwise build, train and save."""
        weights_path = run_dir / f"{name}.pt"
        model = build()
        if resume and weights_path.is_file():
            result = _result_from_weights(name, load_weights(model, weights_path))
            console.print(f"[dim]{name}: finished earlier, test accuracy {result.test_accuracy:.2%}[/dim]")
            return runtime.place(model), result
        if train_config is None:  # given weights, nothing to train: just measure them
            timer = time.perf_counter()
            model = runtime.place(model)
            loader = make_loader(data.test, recipe.data.batch_size, train=False)
            test_loss, test_accuracy = evaluate(model, loader, runtime)
            result = StageResult(name, None, test_accuracy, test_loss, time.perf_counter() - timer, 0)
        else:
            method = name_to_method(name, model)
            result = train_stage(name, method, train_config, data, runtime, **common)
        save_weights(weights_path, model, model_name, model_kwargs, data, result)
        # The weights file now stands for the finished stage; its resume checkpoint is dead weight.
        (run_dir / "checkpoints" / f"{name}.last.pt").unlink(missing_ok=True)
        return model, result

    def name_to_method(name: str, model: nn.Module):
        if name != "student":
            return Plain(model)
        return build_method(recipe.distill, model, teacher, in_chans=data.in_chans, image_size=data.image_size)

    def new_student() -> nn.Module:
        torch.manual_seed(recipe.seed + 1)  # baseline and distilled student start from the same weights
        return create_model(
            recipe.student.model,
            num_classes=data.num_classes,
            in_chans=data.in_chans,
            pretrained=recipe.student.pretrained,
            checkpoint=recipe.student.checkpoint,
            kwargs=recipe.student.kwargs,
        )

    def new_teacher() -> nn.Module:
        torch.manual_seed(recipe.seed)
        return create_model(
            recipe.teacher.model,
            num_classes=data.num_classes,
            in_chans=data.in_chans,
            pretrained=recipe.teacher.pretrained,
            checkpoint=recipe.teacher.checkpoint,
            kwargs=recipe.teacher.kwargs,
        )

    teacher, teacher_result = stage(
        "teacher", recipe.teacher.model, recipe.teacher.kwargs, new_teacher, recipe.teacher.train
    )
    results = {"teacher": (teacher, teacher_result)}
    if recipe.baseline.enabled:
        results["baseline"] = stage(
            "baseline", recipe.student.model, recipe.student.kwargs, new_student, recipe.baseline_train_config()
        )
    results["student"] = stage("student", recipe.student.model, recipe.student.kwargs, new_student, recipe.distill)

    summary: dict[str, Any] = {
        "recipe": recipe.name,
        "method": recipe.distill.method,
        "dataset": recipe.data.dataset,
        "image_size": data.image_size,
        "in_chans": data.in_chans,
        "num_classes": data.num_classes,
        "test_images": len(data.test),
        "device": runtime.device.type,
    }
    for name, (model, result) in results.items():
        summary[name] = {
            "model": recipe.teacher.model if name == "teacher" else recipe.student.model,
            "parameters": count_parameters(model),
            "macs": count_macs(model, data.in_chans, data.image_size),
            "accuracy": result.test_accuracy,
            "val_accuracy": result.val_accuracy,
            "epochs": result.epochs,
            "seconds": round(result.seconds, 1),
        }
    if "baseline" in summary:
        summary["kd_gain"] = round(summary["student"]["accuracy"] - summary["baseline"]["accuracy"], 6)
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    atomic_save(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
    return summary


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(
        title=f"{summary['recipe']}: {summary['method']} on {summary['dataset']} ({summary['test_images']} test images)"
    )
    for column in ("", "model", "params", "MACs", "test acc", "val acc", "epochs", "time"):
        table.add_column(column, justify="left" if column in ("", "model") else "right", no_wrap=True)
    for name in STAGES:
        if name not in summary:
            continue
        row = summary[name]
        val = "–" if row["val_accuracy"] is None else f"{row['val_accuracy']:.2%}"
        table.add_row(
            name,
            row["model"],
            f"{row['parameters'] / 1e6:.2f} M",
            f"{row['macs'] / 1e6:.1f} M",
            f"{row['accuracy']:.2%}",
            val,
            str(row["epochs"]),
            f"{row['seconds']:.0f} s",
        )
    if "kd_gain" in summary:
        table.caption = f"distillation gain over the baseline: {summary['kd_gain'] * 100:+.2f} points"
    return table
