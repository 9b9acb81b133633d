"""`edgekd export RUN_DIR`: student.pt → artefacts/, each artefact written by its format (see
`formats.py`), run in its own runtimes on the test split and compared with the PyTorch student; the
findings go to artefacts/export.json, and the test images verified on to artefacts/test_sample.npz."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console

from edgekd.checks import format_value
from edgekd.data import DataBundle, load_data, pixels_of
from edgekd.errors import DataError, EdgeKDError, ModelError
from edgekd.exporters.formats import FORMATS, ExportJob, in_order
from edgekd.metrics import balanced_accuracy
from edgekd.models import create_model
from edgekd.recipe import Recipe, parse_recipe
from edgekd.rundir import ArtefactExport, ExportReport, RunDir, StudentInfo, atomic_save

SAMPLE_IMAGES = 100  # test images kept with the export for the benchmark (latency inputs, the device run)


def load_run(run_dir: Path, recipe: Recipe | None = None) -> tuple[Recipe, torch.nn.Module, dict]:
    """The run's recipe (`recipe` when the caller holds it, else the resolved one in the run directory)
    and its student (eval mode) with the weights file's metadata."""
    run = RunDir(run_dir)
    if not run.recipe.is_file():
        raise EdgeKDError(
            f"{run_dir} is not an edgekd run directory (no {run.recipe.name}); give the folder `edgekd distill` wrote"
        )
    weights = run.weights("student")
    if not weights.is_file():
        raise ModelError(f"{weights} is missing; finish the run first (`edgekd distill ... --resume`)")
    if recipe is None:
        recipe = parse_recipe(yaml.safe_load(run.recipe.read_text()), source=str(run.recipe), teacher_given=True)
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol warning would print above the one-line error
            warnings.simplefilter("ignore")
            metadata = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        metadata = None
    if not isinstance(metadata, dict) or "state_dict" not in metadata or "num_classes" not in metadata:
        raise ModelError(f"{weights} is not an edgekd weights file (corrupt or from elsewhere); re-run distill")
    model = create_model(
        metadata["model"],
        num_classes=metadata["num_classes"],
        in_chans=metadata["in_chans"],
        kwargs=metadata.get("model_kwargs") or {},
    )
    model.load_state_dict(metadata["state_dict"])
    return recipe, model.eval(), metadata


def export_run(
    run_dir: Path,
    formats: list[str] | None = None,
    console: Console | None = None,
    data: DataBundle | None = None,
    recipe: Recipe | None = None,
) -> ExportReport:
    """Write and verify the artefacts (with their prerequisites); returns export.json's content, whose
    `passed` says whether every check held (a failed check is reported, not raised: the artefacts and
    the findings are kept). `data` and `recipe`: the run's, when the caller has them already."""
    run = RunDir(run_dir)
    with run.locked():
        recipe, model, metadata = load_run(run.path, recipe)
        data = data or load_data(recipe.data, recipe.seed)
        job = _job(run, recipe, model, metadata, data, console or Console(stderr=True))
        written = {name: _write(job, run, name) for name in in_order(formats or list(recipe.export.formats))}
        # Re-exporting some formats keeps the findings for the others (their files are still there).
        previous = _previous_artefacts(run)
        artefacts = {**{f: e for f, e in previous.items() if (run.path / e.path).exists()}, **written}
        settings = recipe.export
        report = ExportReport(
            student=StudentInfo(
                model=metadata["model"],
                accuracy=job.student_accuracy,
                balanced_accuracy=balanced_accuracy(job.student_confusion),
                confusion=job.student_confusion,
                class_names=list(data.class_names),
                input=[data.in_chans, data.image_size, data.image_size],
                mean=list(data.mean),
                std=list(data.std),
            ),
            test_images=len(job.test_labels),
            calibration_images=len(job.calibration),
            thresholds={
                "min_agreement_fp32": settings.min_agreement_fp32,
                "min_agreement_int8": settings.min_agreement_int8,
                "max_int8_accuracy_drop": settings.max_int8_accuracy_drop,
            },
            sample=str(run.test_sample.relative_to(run.path)),
            artefacts=artefacts,
            passed=all(e.passed for e in artefacts.values()),
        )
        atomic_save(report.model_dump_json(indent=2) + "\n", run.export_json)
        return report


def _job(run: RunDir, recipe: Recipe, model: torch.nn.Module, metadata: dict, data: DataBundle,
         console: Console) -> ExportJob:  # fmt: skip
    """What the formats work from: calibration images from the training split, the test images verified
    on with the PyTorch student's logits; the test sample the benchmark reads is saved beside them."""
    settings = recipe.export
    if len(data.train_eval) == 0:
        raise DataError("the training split is empty: nothing to calibrate int8 on")
    if len(data.test) == 0:
        raise DataError("the test split is empty: nothing to verify the artefacts on")
    order = torch.randperm(len(data.train_eval), generator=torch.Generator().manual_seed(recipe.seed))
    calibration = torch.stack([data.train_eval[int(i)][0] for i in order[: settings.calibration_images]])
    test_count = len(data.test) if settings.verify_images is None else min(settings.verify_images, len(data.test))
    test_images = torch.stack([data.test[i][0] for i in range(test_count)])
    test_labels = np.array([int(data.test[i][1]) for i in range(test_count)])
    with torch.no_grad():
        reference = model(test_images).numpy()
    run.artefacts.mkdir(exist_ok=True)
    run.convert_log.write_text("")
    kept = max(SAMPLE_IMAGES, recipe.bench.device_images)
    frames = pixels_of(data.test, min(kept, test_count))
    np.savez_compressed(
        run.test_sample,
        images=test_images[:kept].numpy(),
        labels=test_labels[:kept],
        mean=np.array(data.mean),
        std=np.array(data.std),
        **({"frames": frames, "resize": np.array(recipe.data.resize)} if frames is not None else {}),
    )
    return ExportJob(recipe, model, metadata, data, calibration, test_images, test_labels, reference, run.artefacts,
                     run.convert_log, console)  # fmt: skip


def _write(job: ExportJob, run: RunDir, name: str) -> ArtefactExport:
    """One format's artefact, written and checked, as export.json records it."""
    entry = FORMATS.get(name)
    started = time.perf_counter()
    path = run.artefact(entry.file)
    job.console.print(f"[bold]{name}[/bold] → {path}")
    found = entry.write(job, path)
    job.done[name] = dict(found)  # what later formats read (the int8 model's arena)
    checks = found.pop("checks")
    for c in checks:
        mark = "[green]ok[/green]" if c.passed else "[red]FAILED[/red]"
        job.console.print(f"  {mark} {c.name}: {_shown(c)}", highlight=False)
    return ArtefactExport(
        path=str(path.relative_to(run.path)),
        bytes=_size(path),
        seconds=round(time.perf_counter() - started, 1),
        passed=all(c.passed for c in checks),
        checks=checks,
        results=found.pop("results", {}),
        info={**found.pop("info", {}), **found},
    )


def _shown(c) -> str:
    if c.unit == "check":
        return c.basis
    relation = "≥" if c.bound == "min" else "≤"
    return f"{format_value(c.unit, c.value)} (need {relation} {format_value(c.unit, c.limit)}): {c.basis}"


def _size(path: Path) -> int:
    """A file's size; for a project folder, its sources (not what a build left in it)."""
    if not path.is_dir():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "build" not in p.relative_to(path).parts)


def _previous_artefacts(run: RunDir) -> dict[str, ArtefactExport]:
    try:
        return run.read_export().artefacts if run.export_json.is_file() else {}
    except (ValueError, OSError):  # an export.json from another version: its findings are not kept
        return {}


@dataclass(frozen=True)
class ExportSample:
    """The test images the export kept: as the model takes them (normalised NCHW floats), with their labels,
    and as 8-bit pixels (N×H×W×C uint8, what the firmware's SetImage() is fed) when the dataset keeps them,
    with how training turned pixels into the model's input (data.resize, then the normalisation)."""

    images: np.ndarray
    labels: np.ndarray | None = None
    frames: np.ndarray | None = None
    resize: str = "crop"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def test_sample(run: RunDir) -> ExportSample | None:
    """What the export kept of the test split, or None."""
    if not run.test_sample.is_file():
        return None
    with np.load(run.test_sample) as sample:
        if "frames" not in sample:  # written before frames were kept, or a dataset without 8-bit pixels
            return ExportSample(sample["images"], sample["labels"])
        return ExportSample(sample["images"], sample["labels"], sample["frames"], str(sample["resize"]),
                            tuple(sample["mean"].tolist()), tuple(sample["std"].tolist()))  # fmt: skip
