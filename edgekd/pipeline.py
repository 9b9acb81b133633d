"""`edgekd distill`: teacher → baseline → distilled student, into one run directory.

runs/<name>/ holds recipe.yaml (resolved), teacher.pt, baseline.pt, student.pt (edgekd weights files),
metrics.csv, summary.json and checkpoints/ (the last epoch of each stage, for --resume).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from rich import box
from rich.console import Console
from rich.table import Table
from torch import nn

from edgekd.data import DataBundle, load_data, make_loader, transfer_set
from edgekd.errors import RunDirError
from edgekd.methods import Plain, build_method
from edgekd.methods.codistill import CoDistillation
from edgekd.methods.ensemble import TeacherEnsemble
from edgekd.methods.mythical import correct_excluded_bias
from edgekd.models import check_model_name, count_macs, count_parameters, create_model, load_weights, probe_model
from edgekd.recipe import Recipe
from edgekd.rundir import RunDir
from edgekd.train import MetricsLog, Runtime, StageResult, atomic_save, evaluate, train_stage

WEIGHTS_FORMAT = "edgekd.weights/1"
STAGES = ("teacher", "baseline", "student")


def default_run_dir(recipe: Recipe) -> Path:
    return recipe.output_dir / recipe.name


def prepare_run_dir(run: RunDir, recipe: Recipe, *, resume: bool, overwrite: bool) -> None:
    """Refuse to touch a folder edgekd did not make, or a finished run unless told to; then clean what a
    killed process left and mark the folder as a run. Called with the run directory locked."""
    if run.is_run:
        if overwrite:
            run.clear()
        elif resume:
            saved = yaml.safe_load(run.recipe.read_text()) if run.recipe.is_file() else None
            changed = sorted(_changed_keys(saved, recipe.model_dump(mode="json"))) if saved is not None else []
            if changed:
                raise RunDirError(
                    f"{run.path} was run with a different recipe (changed: {', '.join(changed)}); "
                    "resume with the same recipe, or use --overwrite or --out"
                )
        else:
            raise RunDirError(
                f"{run.path} already holds a run; pass --resume to continue it, --overwrite to "
                "replace it, or --out DIR to write elsewhere"
            )
    elif run.has_content():
        raise RunDirError(
            f"{run.path} is a non-empty folder that edgekd did not make; it is never resumed or overwritten: "
            "choose another with --out"
        )
    run.remove_temporary()
    run.create()


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
    for model_config in [*recipe.teachers, recipe.student]:
        check_model_name(model_config.model)
    runtime = Runtime.from_recipe(recipe.device, recipe.channels_last, recipe.amp)
    data = load_data(recipe.data, recipe.seed)
    transfer = transfer_set(data, recipe.data, recipe.seed)  # the teachers learn from all of `data`
    for model_config in [*recipe.teachers, recipe.student]:  # kwargs and checkpoints, before any file exists
        model = create_model(
            model_config.model,
            num_classes=data.num_classes,
            in_chans=data.in_chans,
            pretrained=model_config.pretrained,
            checkpoint=model_config.checkpoint,
            kwargs=model_config.kwargs,
        )
        probe_model(model, model_config.model, model_config.kwargs, data.in_chans, data.image_size)
    run = RunDir(run_dir)
    with run.locked():
        prepare_run_dir(run, recipe, resume=resume, overwrite=overwrite)
        return _distill(recipe, run, data, transfer, runtime, resume=resume, console=console, started=started)


def _distill(
    recipe: Recipe,
    run: RunDir,
    data: DataBundle,
    transfer: DataBundle,
    runtime: Runtime,
    *,
    resume: bool,
    console: Console,
    started: float,
) -> dict[str, Any]:
    run_dir = run.path
    atomic_save(recipe.to_yaml(), run.recipe)
    metrics = MetricsLog(run.metrics)
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

    def stage(name: str, config, seed: int, train_config, stage_data: DataBundle) -> tuple[nn.Module, StageResult]:
        """Reuse a finished stage's weights on --resume; otherwise build, train and save."""
        weights_path = run_dir / f"{name}.pt"
        torch.manual_seed(seed)
        model = create_model(
            config.model,
            num_classes=data.num_classes,
            in_chans=data.in_chans,
            pretrained=config.pretrained,
            checkpoint=config.checkpoint,
            kwargs=config.kwargs,
        )
        if resume and weights_path.is_file():
            result = _result_from_weights(name, load_weights(model, weights_path))
            console.print(f"[dim]{name}: finished earlier, test accuracy {result.test_accuracy:.2%}[/dim]")
            return runtime.place(model), result
        if train_config is None:  # given weights, nothing to train: just measure them
            model = runtime.place(model)
            result = measure(name, model)
        else:
            if name == "student":
                method = build_method(
                    recipe.distill, model, teacher, in_chans=data.in_chans, image_size=data.image_size, new_student=peer
                )
            else:
                method = Plain(model)
            result = train_stage(name, method, train_config, stage_data, runtime, **common)
            if isinstance(method, CoDistillation):
                community.update(evaluate_community(method))
        if excluded and name in ("baseline", "student"):
            correction[name] = correct_excluded_bias(model, data, excluded, runtime, recipe.data.batch_size)
            result = measure(name, model, result)
        save_weights(weights_path, model, config.model, config.kwargs, data, result)
        # The weights file now stands for the finished stage; its resume checkpoint is dead weight.
        (run_dir / "checkpoints" / f"{name}.last.pt").unlink(missing_ok=True)
        return model, result

    def measure(name: str, model: nn.Module, trained: StageResult | None = None) -> StageResult:
        timer = time.perf_counter()
        test_loss, test_accuracy = evaluate(model, make_loader(data.test, recipe.data.batch_size, train=False), runtime)
        val_accuracy = (
            evaluate(model, make_loader(data.val, recipe.data.batch_size, train=False), runtime)[1]
            if len(data.val)
            else None
        )
        if trained is None:
            return StageResult(name, val_accuracy, test_accuracy, test_loss, time.perf_counter() - timer, 0)
        return StageResult(name, val_accuracy, test_accuracy, test_loss, trained.seconds, trained.epochs)

    def peer(k: int) -> nn.Module:  # co-distillation's extra students, each from its own initial weights
        torch.manual_seed(recipe.seed + 1 + 100 * k)
        return create_model(
            recipe.student.model, num_classes=data.num_classes, in_chans=data.in_chans, kwargs=recipe.student.kwargs
        )

    def evaluate_community(method: CoDistillation) -> dict[str, Any]:
        loader = make_loader(data.test, recipe.data.batch_size, train=False)
        accuracies = [evaluate(student, loader, runtime)[1] for student in method.students]
        correct = 0
        for images, labels in loader:
            images, labels = runtime.batch(images, labels)
            correct += (method.ensemble_logits(images).argmax(1) == labels).sum().item()
        return {"students": accuracies, "ensemble": correct / len(data.test)}

    excluded = recipe.data.exclude_classes
    correction: dict[str, dict] = {}
    single = len(recipe.teachers) == 1
    teachers = [
        stage("teacher" if single else f"teacher_{index}", config, recipe.seed + 1000 * index, config.train, data)
        for index, config in enumerate(recipe.teachers)
    ]
    community: dict[str, Any] = {}
    if not teachers:  # co-distillation: the students teach each other
        teacher, results = None, {}
    elif single:
        teacher = teachers[0][0]
        results = {"teacher": teachers[0]}
    else:
        teacher = runtime.place(
            TeacherEnsemble([model for model, _ in teachers], recipe.distill.temperature, recipe.distill.ensemble)
        )
        results = {"teacher": (teacher, measure("teacher", teacher))}
    student_seed = recipe.seed + 1  # baseline and distilled student start from the same weights
    if recipe.baseline.enabled:
        results["baseline"] = stage("baseline", recipe.student, student_seed, recipe.baseline_train_config(), transfer)
    results["student"] = stage("student", recipe.student, student_seed, recipe.distill, transfer)

    summary: dict[str, Any] = {
        "recipe": recipe.name,
        "method": recipe.distill.method,
        "dataset": recipe.data.dataset,
        "image_size": data.image_size,
        "in_chans": data.in_chans,
        "num_classes": data.num_classes,
        "test_images": len(data.test),
        "train_images": {"teacher": len(data.train), "students": len(transfer.train)},
        "device": runtime.device.type,
    }
    if recipe.distill.method == "codistill":  # a finished run resumed: keep what was measured then
        previous = run_dir / "summary.json"
        community = community or (
            json.loads(previous.read_text()).get("codistillation", {}) if previous.is_file() else {}
        )
        summary["codistillation"] = community
    teacher_name = (
        "–"
        if not recipe.teachers
        else recipe.teachers[0].model
        if single
        else (f"{recipe.distill.ensemble} ensemble of " + " + ".join(c.model for c in recipe.teachers))
    )
    for name, (model, result) in results.items():
        summary[name] = {
            "model": teacher_name if name == "teacher" else recipe.student.model,
            "parameters": count_parameters(model),
            "macs": count_macs(model, data.in_chans, data.image_size),
            "accuracy": result.test_accuracy,
            "val_accuracy": result.val_accuracy,
            "epochs": result.epochs,
            "seconds": round(result.seconds, 1),
        }
    if not single:
        summary["teachers"] = [
            {"model": c.model, "accuracy": r.test_accuracy} for c, (_, r) in zip(recipe.teachers, teachers, strict=True)
        ]
    if excluded:
        summary["excluded_classes"] = {"classes": excluded, **correction}
    if "baseline" in summary:
        summary["kd_gain"] = round(summary["student"]["accuracy"] - summary["baseline"]["accuracy"], 6)
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    atomic_save(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
    return summary


def summary_table(summary: dict[str, Any]) -> Table:
    # Fits an 80-column terminal: light borders, and only the model name may wrap.
    table = Table(
        title=f"{summary['recipe']}: {summary['method']} on {summary['dataset']} "
        f"({summary['test_images']} test images)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
    )
    for column in ("", "model", "params", "MACs", "test acc", "val acc", "epochs", "time"):
        table.add_column(
            column,
            justify="left" if column in ("", "model") else "right",
            no_wrap=column != "model",
            overflow="fold",
            min_width=16 if column == "model" else None,
        )
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
    notes = []
    if "kd_gain" in summary:
        notes.append(f"distillation gain over the baseline: {summary['kd_gain'] * 100:+.2f} points")
    train_images = summary.get("train_images", {})
    if train_images and train_images["students"] != train_images["teacher"]:
        notes.append(
            f"the students learn from {train_images['students']:,} of {train_images['teacher']:,} training images"
        )
    table.caption = "; ".join(notes) or None
    return table
