"""The export-format registry: what each artefact is, how it is written and checked, and where it runs.

    @register_format("onnx", file="student.onnx", runtimes=("onnxruntime",))
    def onnx_fp32(job: ExportJob, path: Path) -> dict: ...   # returns info, results and checks

A format's function writes its file (or folder) and returns what export.json records for it; `needs`
names formats that must be exported first (their entries are in `job.done`), `runtimes` the host
runtimes `edgekd bench` times it in, `recognise` tells a lone file of this format apart, and
`device` marks the artefact the verdict is about (the int8 TFLite model, which the MCU runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from edgekd import firmware
from edgekd.benchmarks.profiles import load_device, parse_budget
from edgekd.checks import accuracy_drop, check, holds
from edgekd.data import DataBundle
from edgekd.exporters import c_array, mcu_project, memory_rewrite, onnx, tflite
from edgekd.exporters.runtimes import LiteRTRunner, MicroRunner, OnnxRunner, Runner
from edgekd.metrics import balanced_accuracy, confusion_matrix
from edgekd.recipe import Recipe
from edgekd.registry import FORMATS


@dataclass(frozen=True)
class FormatEntry:
    name: str
    file: str  # inside the run's artefacts/ folder
    write: Callable[[ExportJob, Path], dict[str, Any]]
    needs: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ()  # host runtimes the benchmark times it in
    recognise: Callable[[Path], bool] | None = None  # a lone file of this format?
    device: bool = False

    @property
    def summary(self) -> str:
        return (self.write.__doc__ or "").strip().splitlines()[0]


def register_format(name: str, *, file: str, **traits):
    def wrap(write):
        FORMATS.register(name, FormatEntry(name, file, write, **traits))
        return write

    return wrap


def device_format() -> str:
    return next(name for name, entry in FORMATS if entry.device)


def in_order(formats: list[str]) -> list[str]:
    """`formats` and everything they need, prerequisites first."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        for needed in FORMATS.get(name).needs:
            visit(needed)
        if name not in ordered:
            ordered.append(name)

    for name in formats:
        visit(name)
    return ordered


@dataclass
class ExportJob:
    """What every format's writer may use: the student, the data it is verified on, the thresholds."""

    recipe: Recipe
    model: torch.nn.Module
    metadata: dict
    data: DataBundle
    calibration: torch.Tensor
    test_images: torch.Tensor
    test_labels: np.ndarray
    reference: np.ndarray  # the PyTorch student's logits on test_images
    out: Path  # the artefacts folder
    log: Path
    console: Console
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # entries of the formats written so far

    @property
    def student_accuracy(self) -> float:
        return float((self.reference.argmax(1) == self.test_labels).mean())

    @property
    def student_confusion(self) -> list[list[int]]:
        return confusion_matrix(self.test_labels, self.reference.argmax(1), self.reference.shape[1])

    def compare(self, runner: Runner) -> dict[str, Any]:
        """Accuracy of the artefact, top-1 agreement with the PyTorch student, max |logit difference|, and
        which test images it classifies right (`right`, for the accuracy-drop test)."""
        started = time.perf_counter()
        logits = runner.predict(self.test_images.numpy())
        predictions = logits.argmax(1)
        confusion = confusion_matrix(self.test_labels, predictions, self.reference.shape[1])
        return {
            "right": predictions == self.test_labels,
            "accuracy": float((predictions == self.test_labels).mean()),
            "agreement": float((predictions == self.reference.argmax(1)).mean()),
            "max_logit_error": float(np.abs(logits - self.reference).max()),
            "seconds": round(time.perf_counter() - started, 2),
            "balanced_accuracy": balanced_accuracy(confusion),
            "confusion": confusion,
        }

    def verify(self, runners: list[Runner], *, int8: bool) -> dict[str, Any]:
        """Run the artefact in each runtime on the test images: agreement with PyTorch, and for int8 the
        accuracy it gives up."""
        settings = self.recipe.export
        threshold = settings.min_agreement_int8 if int8 else settings.min_agreement_fp32
        results, checks = {}, []
        student_right = self.reference.argmax(1) == self.test_labels
        for runner in runners:
            result = results[runner.name] = self.compare(runner)
            right = result.pop("right")
            basis = f"top-1 predictions equal to PyTorch's on {len(self.test_labels)} test images"
            checks.append(check(f"agreement ({runner.name})", result["agreement"], threshold, "fraction", basis,
                                bound="min"))  # fmt: skip
            if int8:
                context = f"PyTorch student {self.student_accuracy:.2%} → {result['accuracy']:.2%} in {runner.name}"
                checks.append(
                    accuracy_drop(f"accuracy drop ({runner.name})", int((student_right & ~right).sum()),
                                  int((~student_right & right).sum()), len(self.test_labels),
                                  settings.max_int8_accuracy_drop, context)
                )  # fmt: skip
        return {"results": results, "checks": checks}

    def interface(self) -> c_array.ModelInterface:
        """How firmware feeds and reads the int8 TFLite model, with the arena its export step measured."""
        tflite_path = self.out / FORMATS.get(device_format()).file
        arena = self.done[device_format()]["info"]["arena"]["total"]
        micro = MicroRunner(tflite_path, arena_size=arena)
        return c_array.ModelInterface.of(
            micro,
            mean=self.data.mean,
            std=self.data.std,
            class_names=self.data.class_names,
            arena_bytes=arena,
            description=f"{self.recipe.name}, {self.metadata['model']} int8, "
            f"{micro.input_shape[1]}x{micro.input_shape[2]}",
            resize=self.recipe.data.resize,
        )


# ---------------------------------------------------------------- the built-in formats


def _is_onnx(int8: bool) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        return path.suffix == ".onnx" and onnx.is_quantised(path) == int8

    return recognise


def _is_tflite(int8: bool) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        return path.suffix == ".tflite" and tflite.has_int8_input(path) == int8

    return recognise


@register_format("onnx", file="student.onnx", runtimes=("onnxruntime",), recognise=_is_onnx(False))
def onnx_fp32(job: ExportJob, path: Path) -> dict[str, Any]:
    """ONNX fp32 (torch.onnx dynamo exporter, opset 18, one file), checked in onnxruntime."""
    info = onnx.export_fp32(job.model, job.test_images, path, job.log)
    entry = {"info": info, **job.verify([OnnxRunner(path)], int8=False)}
    entry["checks"] += [
        check("opset", info["opset"], onnx.OPSET, "number", "ONNX opset of the graph", bound="min"),
        holds("single file", not path.with_suffix(".onnx.data").exists(), "weights inside the .onnx"),
    ]
    return entry


@register_format(
    "onnx-int8", file="student.int8.onnx", needs=("onnx",), runtimes=("onnxruntime",), recognise=_is_onnx(True)
)
def onnx_int8(job: ExportJob, path: Path) -> dict[str, Any]:
    """ONNX int8: onnxruntime's static QDQ quantisation, per-channel weights, calibrated on training images."""
    info = onnx.quantize_int8(job.out / FORMATS.get("onnx").file, job.calibration.numpy(), path)
    entry = {"info": info, **job.verify([OnnxRunner(path)], int8=True)}
    offenders = onnx.float_compute_nodes(path)
    entry["checks"].append(
        check("int8 compute", len(offenders), 0, "count", "; ".join(offenders[:8]) or "every Conv/Gemm takes int8")
    )
    return entry


@register_format("tflite", file="student.tflite", runtimes=("litert-xnnpack",), recognise=_is_tflite(False))
def tflite_fp32(job: ExportJob, path: Path) -> dict[str, Any]:
    """TFLite fp32 (litert-torch, NHWC input), checked in LiteRT."""
    info = tflite.convert(job.model, job.test_images, path, int8=False, log_path=job.log)
    info["ops"] = tflite.op_counts(path)
    return {"info": info, **job.verify([LiteRTRunner(path)], int8=False)}


@register_format(
    "tflite-int8",
    file="student.int8.tflite",
    runtimes=("litert-xnnpack", "litert-reference", "tflite-micro"),
    recognise=_is_tflite(True),
    device=True,
)
def tflite_int8(job: ExportJob, path: Path) -> dict[str, Any]:
    """TFLite full-integer int8 (litert-torch + PT2E), checked in LiteRT's reference kernels and TFLite Micro."""
    info = tflite.convert(job.model, job.calibration, path, int8=True, log_path=job.log)
    settings, bench = job.recipe.export, job.recipe.bench
    sram_budget = parse_budget(bench.budget, load_device(bench.device)).sram_bytes
    info["memory"] = memory_rewrite.rewrite_for_memory(path, settings, sram_budget)
    job.console.print(f"  memory: {info['memory']['reason']}", highlight=False)
    info["ops"] = tflite.op_counts(path)
    micro = MicroRunner(path)
    info["arena"] = micro.arena
    entry = {"info": info, **job.verify([LiteRTRunner(path, reference_kernels=True), micro], int8=True)}
    rewritten = info["memory"]["rewrite"] != "none"
    # The converter's graph: a rewrite adds only int8 ops, and patches bring PADs of their own (the border
    # zeros of a patch); it is checked against the converter's graph bit for bit instead.
    converted = path.parent / info["memory"]["unrewritten"] if rewritten else path
    problems = tflite.int8_violations(converted)
    basis = "; ".join(problems[:12]) or "int8 input, output and activations; no QUANTIZE, DEQUANTIZE, PAD or TRANSPOSE"
    entry["checks"].append(check("int8 end to end", len(problems), 0, "count", basis))
    if rewritten:
        entry["checks"].append(_same_as_unrewritten(job, path, micro, converted))
    return entry


def _same_as_unrewritten(job: ExportJob, path: Path, rewritten: MicroRunner, original: Path):
    """A memory rewrite changes no output bit: both graphs in TFLite Micro on every test image."""
    images = job.test_images.numpy()
    differing = int((rewritten.predict(images) != MicroRunner(original).predict(images)).any(axis=1).sum())
    basis = f"test images whose outputs differ from {original.name}'s in TFLite Micro, of {len(images)}"
    return check("memory rewrite bit-identical", differing, 0, "count", basis)


@register_format("c-array", file="model_data.cc", needs=("tflite-int8",))
def c_array_source(job: ExportJob, path: Path) -> dict[str, Any]:
    """The int8 model as a C array (model_data.cc/.h) for a TensorFlow Lite Micro firmware; compiled to check."""
    tflite_path = job.out / FORMATS.get("tflite-int8").file
    source, header = c_array.write_c_array(tflite_path, path.parent, job.interface())
    entry: dict[str, Any] = {"header": header.name, "info": {"model_bytes": tflite_path.stat().st_size}}
    try:
        length = c_array.compiled_model_length(source)
    except c_array.CompileError as exc:
        return {**entry, "checks": [holds("compiles", False, str(exc))]}
    if length is None:
        return {**entry, "checks": [holds("compiles", True, "not checked: no C++ compiler (c++) on this machine")]}
    size = tflite_path.stat().st_size
    return {
        **entry,
        "checks": [
            holds("compiles", True, "c++ -std=c++17 builds it"),
            check("length", length, size, "bytes", f"g_model_data_len equals the size of {tflite_path.name}",
                  bound="min"),
        ],
    }  # fmt: skip


@register_format("mcu-project", file="mcu-project", needs=("tflite-int8",))
def firmware_project(job: ExportJob, path: Path) -> dict[str, Any]:
    """A firmware project (C array, TFLM runner with this model's operators only, MPS2 port, Makefile)."""
    tflite_path = job.out / FORMATS.get("tflite-int8").file
    ops = mcu_project.write_mcu_project(tflite_path, path, job.interface())
    try:
        tree = firmware.resolve_tflm_tree()
    except firmware.DeviceSetupError as exc:
        kernels = holds("TFLM kernels", True, f"not checked: {exc}")
    else:
        mcu_project.check_operators(tflite_path, tree)  # an operator TFLM lacks is bad input: one line, exit 2
        kernels = holds("TFLM kernels", True, f"{', '.join(ops)}: every operator has a kernel in {tree}")
    return {"info": {"operators": ops}, "checks": [kernels]}
