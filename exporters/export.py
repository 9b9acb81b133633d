"""`edgekd export RUN_DIR`: student.pt → artefacts/, each artefact run in its own runtime on the test
split and compared with the PyTorch student; the findings go to artefacts/export.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console

from edgekd.checks import Check, check, holds
from edgekd.data import load_data
from edgekd.errors import CheckFailed, DataError, EdgeKDError, ModelError
from edgekd.exporters import c_array, mcu_project, onnx, tflite
from edgekd.exporters.runtimes import LiteRTRunner, MicroRunner, OnnxRunner, Runner
from edgekd.models import create_model
from edgekd.recipe import FORMATS, ExportConfig, Recipe, parse_recipe
from edgekd.rundir import RunDir
from edgekd.train import atomic_save

FILES = {
    "onnx": "student.onnx",
    "onnx-int8": "student.int8.onnx",
    "tflite": "student.tflite",
    "tflite-int8": "student.int8.tflite",
    "c-array": "model_data.cc",
    "mcu-project": "mcu-project",
}
NEEDS = {"onnx-int8": "onnx", "c-array": "tflite-int8", "mcu-project": "tflite-int8"}


def parse_formats(text: str) -> list[str]:
    formats = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise EdgeKDError(f"unknown export format {', '.join(unknown) or repr(text)}; choose from {', '.join(FORMATS)}")
    return formats


def _with_prerequisites(formats: list[str]) -> list[str]:
    wanted = set(formats) | {NEEDS[f] for f in formats if f in NEEDS}
    return [f for f in FORMATS if f in wanted]


def load_run(run_dir: Path) -> tuple[Recipe, torch.nn.Module, dict]:
    """The run's resolved recipe and its student (eval mode) with the weights file's metadata."""
    run = RunDir(run_dir)
    recipe_path, weights_path = run.recipe, run.weights("student")
    if not recipe_path.is_file():
        raise EdgeKDError(
            f"{run_dir} is not an edgekd run directory (no recipe.yaml); give the folder `edgekd distill` wrote"
        )
    if not weights_path.is_file():
        raise ModelError(f"{weights_path} is missing; finish the run first (`edgekd distill ... --resume`)")
    recipe = parse_recipe(yaml.safe_load(recipe_path.read_text()), source=str(recipe_path))
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol warning would print above the one-line error
            warnings.simplefilter("ignore")
            metadata = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        metadata = None
    if not isinstance(metadata, dict) or "state_dict" not in metadata or "num_classes" not in metadata:
        raise ModelError(f"{weights_path} is not an edgekd weights file (corrupt or from elsewhere); re-run distill")
    model = create_model(
        metadata["model"],
        num_classes=metadata["num_classes"],
        in_chans=metadata["in_chans"],
        kwargs=metadata.get("model_kwargs") or {},
    )
    model.load_state_dict(metadata["state_dict"])
    return recipe, model.eval(), metadata


def compare(runner: Runner, images: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Accuracy of the artefact, top-1 agreement with the PyTorch student, max |logit difference|."""
    started = time.perf_counter()
    logits = runner.predict(images)
    predictions = logits.argmax(1)
    return {
        "accuracy": float((predictions == labels).mean()),
        "agreement": float((predictions == reference.argmax(1)).mean()),
        "max_logit_error": float(np.abs(logits - reference).max()),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _shown(c: Check) -> str:
    from edgekd.benchmarks.report import format_value

    if c.unit == "check":
        return c.basis
    relation = "≥" if c.bound == "min" else "≤"
    return f"{format_value(c.unit, c.value)} (need {relation} {format_value(c.unit, c.limit)}): {c.basis}"


def export_run(run_dir: Path, formats: list[str] | None = None, console: Console | None = None) -> dict[str, Any]:
    """Write and verify the artefacts; returns export.json's content, whose `passed` says whether every
    check held (a failed check is reported, not raised: the artefacts and the findings are kept)."""
    with RunDir(run_dir).locked():
        return _export(Path(run_dir), formats, console or Console(stderr=True))


def _export(run_dir: Path, formats: list[str] | None, console: Console) -> dict[str, Any]:
    recipe, model, metadata = load_run(run_dir)
    settings: ExportConfig = recipe.export
    formats = _with_prerequisites(formats or list(settings.formats))

    data = load_data(recipe.data, recipe.seed)
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
    images = test_images.numpy()
    student_accuracy = float((reference.argmax(1) == test_labels).mean())

    out = RunDir(run_dir).artefacts
    out.mkdir(exist_ok=True)
    log = out / "convert.log"
    log.write_text("")
    report: dict[str, Any] = {
        "student": {
            "model": metadata["model"],
            "accuracy": student_accuracy,
            "input": [data.in_chans, data.image_size, data.image_size],
            "mean": list(data.mean),
            "std": list(data.std),
        },
        "test_images": test_count,
        "calibration_images": len(calibration),
        "thresholds": {
            "min_agreement_fp32": settings.min_agreement_fp32,
            "min_agreement_int8": settings.min_agreement_int8,
            "max_int8_accuracy_drop": settings.max_int8_accuracy_drop,
        },
        "artefacts": {},
    }

    def verify(fmt: str, runners: list[Runner], int8: bool) -> dict[str, Any]:
        threshold = settings.min_agreement_int8 if int8 else settings.min_agreement_fp32
        results, checks = {}, []
        for runner in runners:
            result = compare(runner, images, test_labels, reference)
            results[runner.name] = result
            checks.append(
                check(
                    f"agreement ({runner.name})",
                    result["agreement"],
                    threshold,
                    "fraction",
                    f"top-1 predictions equal to PyTorch's on {len(images)} test images",
                    bound="min",
                )
            )
            if int8:
                checks.append(
                    check(
                        f"accuracy drop ({runner.name})",
                        student_accuracy - result["accuracy"],
                        settings.max_int8_accuracy_drop,
                        "fraction",
                        f"PyTorch student {student_accuracy:.2%} → {result['accuracy']:.2%} in {runner.name}",
                    )
                )
        return {"results": results, "checks": checks}

    def interface() -> c_array.ModelInterface:
        arena = report["artefacts"]["tflite-int8"]["info"]["arena"]["total"]
        return _interface(out / FILES["tflite-int8"], arena, data, recipe, metadata)

    for fmt in formats:
        started = time.perf_counter()
        path = out / FILES[fmt]
        console.print(f"[bold]{fmt}[/bold] → {path}")
        entry: dict[str, Any] = {"path": str(path.relative_to(run_dir)), "checks": []}
        if fmt == "onnx":
            entry["info"] = onnx.export_fp32(model, test_images, path, log)
            entry.update(verify(fmt, [OnnxRunner(path)], int8=False))
            entry["checks"].append(
                check("opset", entry["info"]["opset"], onnx.OPSET, "number", "ONNX opset of the graph", bound="min")
            )
            entry["checks"].append(
                holds("single file", not path.with_suffix(".onnx.data").exists(), "weights inside the .onnx")
            )
        elif fmt == "onnx-int8":
            entry["info"] = onnx.quantize_int8(out / FILES["onnx"], calibration.numpy(), path)
            entry.update(verify(fmt, [OnnxRunner(path)], int8=True))
            offenders = onnx.float_compute_nodes(path)
            entry["checks"].append(
                check(
                    "int8 compute", len(offenders), 0, "count", "; ".join(offenders[:8]) or "every Conv/Gemm takes int8"
                )
            )
        elif fmt == "tflite":
            entry["info"] = tflite.convert(model, test_images, path, int8=False, log_path=log)
            entry["info"]["ops"] = tflite.op_counts(path)
            entry.update(verify(fmt, [LiteRTRunner(path)], int8=False))
        elif fmt == "tflite-int8":
            entry["info"] = tflite.convert(model, calibration, path, int8=True, log_path=log)
            entry["info"]["ops"] = tflite.op_counts(path)
            micro = MicroRunner(path)
            entry["info"]["arena"] = micro.arena
            entry.update(verify(fmt, [LiteRTRunner(path, reference_kernels=True), micro], int8=True))
            problems = tflite.int8_violations(path)
            entry["checks"].append(
                check(
                    "int8 end to end",
                    len(problems),
                    0,
                    "count",
                    "; ".join(problems[:12])
                    or "int8 input, output and activations; no QUANTIZE, DEQUANTIZE, PAD or TRANSPOSE",
                )
            )
        elif fmt == "c-array":
            entry.update(_c_array(out, out / FILES["tflite-int8"], interface()))
        elif fmt == "mcu-project":
            entry.update(_mcu_project(path, out / FILES["tflite-int8"], interface()))
        entry["bytes"] = _size(path)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        entry["passed"] = all(c.passed for c in entry["checks"])
        for c in entry["checks"]:
            mark = "[green]ok[/green]" if c.passed else "[red]FAILED[/red]"
            console.print(f"  {mark} {c.name}: {_shown(c)}", highlight=False)
        entry["checks"] = [c.model_dump() for c in entry["checks"]]
        report["artefacts"][fmt] = entry

    # Re-exporting some formats keeps the findings for the others (their files are still there).
    previous = _previous_artefacts(RunDir(run_dir).export_json)
    report["artefacts"] = {
        **{f: e for f, e in previous.items() if (run_dir / e["path"]).exists()},
        **report["artefacts"],
    }
    report["passed"] = all(entry["passed"] for entry in report["artefacts"].values())
    atomic_save(json.dumps(report, indent=2) + "\n", RunDir(run_dir).export_json)
    return report


def failed_checks(report: dict[str, Any]) -> list[str]:
    """'format: check' for every failed check of an export.json."""
    return [f"{fmt}: {c['name']}" for fmt, e in report["artefacts"].items() for c in e["checks"] if not c["passed"]]


def _size(path: Path) -> int:
    """A file's size; for a project folder, its sources (not what a build left in it)."""
    if not path.is_dir():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "build" not in p.relative_to(path).parts)


def _previous_artefacts(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()).get("artefacts", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _interface(tflite_path: Path, arena: int, data, recipe: Recipe, metadata: dict) -> c_array.ModelInterface:
    micro = MicroRunner(tflite_path, arena_size=arena)
    return c_array.ModelInterface.of(
        micro,
        mean=data.mean,
        std=data.std,
        class_names=data.class_names,
        arena_bytes=arena,  # measured by the int8 step
        description=f"{recipe.name}, {metadata['model']} int8, {micro.input_shape[1]}x{micro.input_shape[2]}",
    )


def _c_array(out: Path, tflite_path: Path, interface: c_array.ModelInterface) -> dict[str, Any]:
    source, header = c_array.write_c_array(tflite_path, out, interface)
    entry: dict[str, Any] = {"header": str(header.name), "info": {"model_bytes": tflite_path.stat().st_size}}
    try:
        length = compiled_model_length(source)
    except CheckFailed as exc:
        entry["checks"] = [holds("compiles", False, str(exc))]
        return entry
    if length is None:
        entry["checks"] = [holds("compiles", True, "not checked: no C++ compiler (c++) on this machine")]
    else:
        entry["checks"] = [
            holds("compiles", True, "c++ -std=c++17 builds it"),
            check(
                "length",
                length,
                tflite_path.stat().st_size,
                "bytes",
                f"g_model_data_len equals the size of {tflite_path.name}",
                bound="min",
            ),
        ]
    return entry


def _mcu_project(folder: Path, tflite_path: Path, interface: c_array.ModelInterface) -> dict[str, Any]:
    """The firmware project; its operators checked against a TFLM tree when one is configured (building
    and running it is `edgekd bench --target`'s job)."""
    from edgekd.benchmarks import firmware
    from edgekd.benchmarks.device import check_operators

    ops = mcu_project.write_mcu_project(tflite_path, folder, interface)
    try:
        tree = firmware.resolve_tflm_tree()
    except firmware.DeviceSetupError as exc:
        kernels = holds("TFLM kernels", True, f"not checked: {exc}")
    else:
        check_operators(tflite_path, tree)  # an operator TFLM lacks is bad input: one line, exit 2
        kernels = holds("TFLM kernels", True, f"{', '.join(ops)}: every operator has a kernel in {tree}")
    return {"info": {"operators": ops}, "checks": [kernels]}


def compiled_model_length(source: Path) -> int | None:
    """Compile model_data.cc with a tiny main that prints g_model_data_len; None without a compiler."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        main = Path(scratch) / "main.cc"
        main.write_text(
            '#include <cstdio>\n#include "model_data.h"\n'
            'int main() { std::printf("%u", g_model_data_len); '
            "return (reinterpret_cast<unsigned long>(g_model_data) % 16) != 0; }\n"
        )
        binary = Path(scratch) / "main"
        build = subprocess.run(
            [compiler, "-std=c++17", "-O0", f"-I{source.parent}", str(main), str(source), "-o", str(binary)],
            capture_output=True,
            text=True,
        )
        if build.returncode != 0:
            raise CheckFailed(f"{source} does not compile: {build.stderr.strip().splitlines()[0][:200]}")
        run = subprocess.run([str(binary)], capture_output=True, text=True)
        if run.returncode != 0:
            raise CheckFailed(f"{source}: g_model_data is not 16-byte aligned")
        return int(run.stdout)
