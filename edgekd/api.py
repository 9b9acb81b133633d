"""edgekd from Python: the commands as functions that return typed results.

    import edgekd
    result = edgekd.run("quickstart", "runs/mine")
    result.summary.student.accuracy, result.export.passed, result.report.verdict.passed

A failed check or budget is in the result (`ExportReport.passed`, `Report.verdict.passed`,
`RunResult.passed`), never raised; bad input raises an `edgekd.EdgeKDError` with the one line the CLI
would print. Your own teacher (`teacher=` an nn.Module) and data (`data=edgekd.from_datasets(train,
test)`) take the place of the recipe's sections: the recipe then needs no `teacher`, and `data.dataset:
python` says the data comes from here.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from rich.console import Console
from torch import nn
from typing_extensions import Unpack

from edgekd import firmware
from edgekd.benchmarks.bench import BenchPlan
from edgekd.benchmarks.bench import bench as run_bench
from edgekd.benchmarks.fit import Candidate, search
from edgekd.benchmarks.profiles import load_device, parse_budget
from edgekd.benchmarks.report_schema import Report
from edgekd.config import BenchConfig
from edgekd.data import DataBundle, load_data
from edgekd.errors import EdgeKDError
from edgekd.exporters.export import export_run
from edgekd.pipeline import default_run_dir
from edgekd.pipeline import distill as run_distill
from edgekd.recipe import Recipe, apply_override, parse_recipe, read_recipe
from edgekd.rundir import ExportReport, RunDir, Summary

RecipeLike = str | Path | dict[str, Any] | Recipe


def load_recipe(
    recipe: RecipeLike,
    overrides: list[str] | None = None,
    *,
    teacher_given: bool = False,
    data: DataBundle | None = None,
) -> Recipe:
    """A recipe from a file, a bundled name or a dict, with `--set`-style overrides ("distill.epochs=3").
    With `data` handed in, its image size and channels are the recipe's."""
    if isinstance(recipe, Recipe) and not overrides and data is None:
        return recipe
    if isinstance(recipe, Recipe):
        raw, source = recipe.model_dump(mode="json"), f"recipe {recipe.name}"
    elif isinstance(recipe, dict):
        raw, source = copy.deepcopy(recipe), "recipe"
    else:
        raw, source = read_recipe(recipe)
    for override in overrides or []:
        apply_override(raw, override)
    if data is not None:
        section = raw.setdefault("data", {"dataset": "python"}) or {"dataset": "python"}
        raw["data"] = {**section, "image_size": data.image_size, "channels": data.in_chans}
    return parse_recipe(raw, source=source, teacher_given=teacher_given)


def _console(quiet: bool) -> Console:
    return Console(stderr=True, quiet=quiet)


class DistillOptions(TypedDict, total=False):
    """What distill() and run() take besides the recipe and the run directory (all optional)."""

    teacher: nn.Module  # a trained teacher of yours, in place of the recipe's teacher section
    data: DataBundle  # your data (edgekd.from_datasets), in place of the recipe's dataset
    overrides: list[str]  # as the CLI's --set: ["distill.epochs=3"]
    resume: bool  # continue a killed or finished run
    overwrite: bool  # replace an earlier run in run_dir
    quiet: bool  # no progress on stderr
    console: Console  # where progress goes (default: stderr)


def _resolve(recipe: RecipeLike, run_dir: str | Path | None, options: DistillOptions) -> tuple[Recipe, Path]:
    given = options.get("teacher") is not None
    loaded = load_recipe(recipe, options.get("overrides"), teacher_given=given, data=options.get("data"))
    return loaded, Path(run_dir) if run_dir is not None else default_run_dir(loaded)


def _pipeline(options: DistillOptions, data: DataBundle | None) -> dict[str, Any]:
    """The options as edgekd.pipeline.distill takes them."""
    return {
        "resume": options.get("resume", False),
        "overwrite": options.get("overwrite", False),
        "console": options.get("console") or _console(options.get("quiet", False)),
        "data": data,
        "teacher": options.get("teacher"),
    }


def distill(recipe: RecipeLike, run_dir: str | Path | None = None, **options: Unpack[DistillOptions]) -> Summary:
    """Train the teacher (unless handed in), the baseline and the distilled student into `run_dir`
    (default: the recipe's output_dir/name)."""
    loaded, out = _resolve(recipe, run_dir, options)
    return run_distill(loaded, out, **_pipeline(options, options.get("data")))


def export(
    run_dir: str | Path,
    formats: list[str] | None = None,
    *,
    data: DataBundle | None = None,
    recipe: Recipe | None = None,
    quiet: bool = False,
    console: Console | None = None,
) -> ExportReport:
    """Write and verify the run's artefacts (default: the recipe's export.formats). `data`: the data the
    run was distilled on, when it was handed in from Python; `recipe`: the run's recipe, when the caller
    holds it (else it is read from the run directory)."""
    return export_run(Path(run_dir), formats, console=console or _console(quiet), data=data, recipe=recipe)


def bench(
    source: str | Path,
    device: str = "cortex-m4",
    budget: str | None = None,
    *,
    target: str = "auto",
    latency_seconds: float = 1.0,
    device_images: int = 100,
    tflm: str | None = None,
    quiet: bool = False,
    console: Console | None = None,
) -> Report:
    """Benchmark a run directory (after export) or a lone .onnx/.tflite file against a device profile;
    returns the report also written as report.md/report.json."""
    settings = BenchConfig(device=device, budget=budget, target=firmware.check_target(target),
                           latency_seconds=latency_seconds, device_images=device_images)  # fmt: skip
    return run_bench(Path(source), BenchPlan.of(settings, tflm), console=console or _console(quiet))


@dataclass
class RunResult:
    run_dir: Path
    summary: Summary
    export: ExportReport
    report: Report

    @property
    def passed(self) -> bool:
        """Every export check held and the int8 model fits its budget."""
        return self.export.passed and self.report.verdict is not None and self.report.verdict.passed


def run(
    recipe: RecipeLike, run_dir: str | Path | None = None, *, tflm: str | None = None, **options: Unpack[DistillOptions]
) -> RunResult | None:
    """Distil, export and benchmark (against the recipe's `bench:` section), loading the data once.
    `tflm`: a TensorFlow Lite Micro tree for the device run. Under torchrun only rank 0 exports and
    benchmarks; the other ranks return None."""
    loaded, out = _resolve(recipe, run_dir, options)
    plan = BenchPlan.of(loaded.bench, tflm)  # a bad device, budget or target fails here, before training
    data = options["data"] if options.get("data") is not None else load_data(loaded.data, loaded.seed)
    settings = _pipeline(options, data)
    if os.environ.get("RANK", "0") != "0":  # under torchrun: the other processes help train, rank 0 goes on
        run_distill(loaded, out, **settings)
        return None
    with RunDir(out).locked():  # one process owns the run from training to report
        summary = run_distill(loaded, out, **settings)
        exported = export_run(out, console=settings["console"], data=data, recipe=loaded)
        report = run_bench(out, plan, console=settings["console"])
    return RunResult(out, summary, exported, report)


def fit(
    device: str,
    budget: str | None = None,
    *,
    classes: int = 10,
    channels: int = 3,
    min_resolution: int = 64,
    memory: str = "groups",
) -> list[Candidate]:
    """MobileNetV2-Tiny width × resolution configurations that fit the device, most MACs first
    (predicted arena and flash are upper bounds). `memory`: "groups" counts on the export's channel-groups
    rewrite where the arena needs it (as `export.memory: auto` does), "none" on the graph as converted."""
    if channels not in (1, 3):
        raise EdgeKDError(f"channels {channels}: give 1 (greyscale) or 3 (colour)")
    if classes < 2:
        raise EdgeKDError(f"classes {classes}: a classifier needs at least 2")
    profile = load_device(device)
    if memory not in ("groups", "none"):
        raise EdgeKDError(f"memory {memory!r}: give groups or none")
    return search(parse_budget(budget, profile), num_classes=classes, in_chans=channels,
                  min_resolution=min_resolution, groups=memory == "groups")  # fmt: skip
