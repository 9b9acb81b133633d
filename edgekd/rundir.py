"""A run directory: the one place that knows its file names, that it is edgekd's, and who writes it.

runs/<name>/
  .edgekd-run          marks a folder edgekd made: only such a folder is resumed or overwritten
  .edgekd-lock         held (flock) by the one process writing the run; says which process
  recipe.yaml          the recipe as resolved
  teacher.pt, teacher_<i>.pt, baseline.pt, student.pt      weights files
  metrics.csv, summary.json
  tensorboard/         event files of every metric (log.tensorboard: true)
  checkpoints/<stage>.last.pt                               for --resume
  artefacts/           exports, export.json, convert.log, mcu-project/
  device/              firmware built for a lone artefact
  report.md, report.json, *.png
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from edgekd.checks import Check, holds
from edgekd.errors import RunDirError

MARKER = ".edgekd-run"
LOCK = ".edgekd-lock"
PLOTS = ("training", "tradeoffs", "memory", "device_layers", "confusion")

_held: dict[Path, int] = {}  # run directories this process holds locked, with a nesting count


# ---------------------------------------------------------------- writing files

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a kill never leaves half a file, and a
    full disk leaves the previous version in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        if isinstance(obj, str):
            Path(temporary).write_text(obj)
        else:
            import torch  # noqa: PLC0415 - deferred: the CLI reads run directories at start-up, before it needs torch

            torch.save(obj, temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if _out_of_space(exc, path.parent, obj):
            free = shutil.disk_usage(path.parent).free
            raise RunDirError(
                f"no space left in {path.parent} to write {path.name} (needs about {_bytes_of(obj) / 1e6:,.1f} MB, "
                f"{free / 1e6:,.1f} MB free); free some space and rerun with --resume"
            ) from None
        raise


def _out_of_space(exc: BaseException, folder: Path, obj: Any) -> bool:
    """ENOSPC as Python raises it; torch's writer instead raises a RuntimeError ("unexpected pos",
    "iostream error"), so for those ask the file system whether the object would have fitted."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, RuntimeError) and shutil.disk_usage(folder).free < 1.1 * _bytes_of(obj) + 65536


def _bytes_of(obj: Any) -> int:
    """Roughly what `obj` takes on disk: its tensors' bytes (or its text's)."""
    if isinstance(obj, str):
        return len(obj.encode())
    if hasattr(obj, "element_size"):  # a tensor
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_bytes_of(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_bytes_of(value) for value in obj)
    return 64


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    # ------------------------------------------------------------ names

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    def weights(self, stage: str) -> Path:
        """teacher, teacher_<i>, baseline or student."""
        return self.path / f"{stage}.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, stage: str) -> Path:
        return self.checkpoints / f"{stage}.last.pt"

    @property
    def artefacts(self) -> Path:
        return self.path / "artefacts"

    @property
    def export_json(self) -> Path:
        return self.artefacts / "export.json"

    @property
    def test_sample(self) -> Path:
        """Test images export verified on, kept so that the benchmark need not load the dataset."""
        return self.artefacts / "test_sample.npz"

    @property
    def convert_log(self) -> Path:
        return self.artefacts / "convert.log"

    def artefact(self, file: str) -> Path:
        return self.artefacts / file

    def plot(self, name: str) -> Path:
        """training, tradeoffs, memory, device_layers."""
        return self.path / f"{name}.png"

    def read_summary(self) -> Summary | None:
        return Summary.model_validate_json(self.summary.read_text()) if self.summary.is_file() else None

    def read_export(self) -> ExportReport | None:
        return ExportReport.model_validate_json(self.export_json.read_text()) if self.export_json.is_file() else None

    @property
    def device(self) -> Path:
        return self.path / "device"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def report_json(self) -> Path:
        return self.path / "report.json"

    def owned(self) -> list[Path]:
        """Everything edgekd writes here (what --overwrite may delete); a user's other files stay."""
        names = [
            self.recipe,
            self.metrics,
            self.tensorboard,
            self.summary,
            self.checkpoints,
            self.artefacts,
            self.device,
            self.report_md,
            self.report_json,
            *(self.plot(name) for name in PLOTS),
            *self.path.glob("*.pt"),
            *self.path.glob(".*.tmp"),
            self.path / MARKER,
        ]
        return [path for path in names if path.exists()]

    # ------------------------------------------------------------ what kind of folder

    @property
    def is_run(self) -> bool:
        """Made by edgekd: it carries the marker, or (runs from before the marker) a metrics.csv that
        edgekd wrote beside the recipe."""
        if (self.path / MARKER).is_file():
            return True
        return self.recipe.is_file() and self.metrics.is_file() and self.metrics.read_text()[:12] == "stage,epoch,"

    def has_content(self) -> bool:
        return self.path.is_dir() and any(p.name not in (LOCK,) for p in self.path.iterdir())

    # ------------------------------------------------------------ making, replacing

    def create(self) -> None:
        """Make the folder (if needed), check it is writable, and mark it as edgekd's."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            marker = self.path / MARKER
            marker.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        except OSError as exc:
            raise RunDirError(
                f"cannot write to run directory {self.path} ({exc.strerror}); choose another with --out"
            ) from None

    def clear(self) -> None:
        """--overwrite: delete what edgekd wrote, nothing else."""
        for path in self.owned():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def remove_temporary(self) -> int:
        """Half-written files a killed process left (`.name.XXXX.tmp` beside their target). Returns how many."""
        stale = [p for folder in (self.path, self.checkpoints) if folder.is_dir() for p in folder.glob(".*.tmp")]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    # ------------------------------------------------------------ one writer at a time

    @contextmanager
    def locked(self) -> Iterator[RunDir]:
        """Hold the run directory's lock for the life of the block; nested use in one process is free.
        A second process is refused in one line that names the holder. A lock whose process died is
        free again: the kernel drops flock locks with their process."""
        key = self.path.resolve()
        if key in _held:
            _held[key] += 1
            try:
                yield self
            finally:
                _held[key] -= 1
            return
        made_folder = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(
                f"cannot write to run directory {self.path} ({exc.strerror}); choose another with --out"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(handle)
            raise RunDirError(f"{self.path} is in use by {holder}; wait for it to finish, or use --out DIR") from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"edgekd pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        _held[key] = 1
        try:
            yield self
        finally:
            del _held[key]
            os.ftruncate(handle, 0)
            fcntl.flock(handle, fcntl.LOCK_UN)
            os.close(handle)
            if not (self.path / MARKER).exists():  # refused before it became a run: leave the folder as found
                (self.path / LOCK).unlink(missing_ok=True)
                if made_folder and not any(self.path.iterdir()):
                    self.path.rmdir()


# ---------------------------------------------------------------- what the JSON files hold

SCHEMA_VERSION = 1


class StageSummary(BaseModel):
    model: str
    parameters: int
    macs: int
    accuracy: float = Field(description="test accuracy")
    val_accuracy: float | None
    epochs: int
    seconds: float
    teacher_cache_seconds: float = 0.0


class Summary(BaseModel):
    """summary.json: what `edgekd distill` trained and how well."""

    schema_version: int = SCHEMA_VERSION
    recipe: str
    method: str
    dataset: str
    image_size: int
    in_chans: int
    num_classes: int
    test_images: int
    train_images: dict[str, int] = Field(
        description="{teacher: n, students: n (labelled), unlabelled: n (the distilled student's data.unlabelled)}"
    )
    device: str
    processes: int = 1
    teacher: StageSummary | None = None
    baseline: StageSummary | None = None
    student: StageSummary
    teachers: list[dict[str, Any]] | None = Field(None, description="an ensemble's members and their accuracy")
    excluded_classes: dict[str, Any] | None = None
    method_results: dict[str, Any] = Field(default_factory=dict, description="findings of the method's own")
    kd_gain: float | None = Field(None, description="student − baseline test accuracy")
    wall_seconds: float


class RuntimeResult(BaseModel):
    accuracy: float
    agreement: float = Field(description="top-1 agreement with the PyTorch student")
    max_logit_error: float
    seconds: float
    balanced_accuracy: float | None = Field(None, description="mean per-class recall")
    confusion: list[list[int]] | None = Field(None, description="rows: true class, columns: predicted")


class ArtefactExport(BaseModel):
    path: str = Field(description="relative to the run directory")
    bytes: int
    seconds: float
    passed: bool
    checks: list[Check]
    results: dict[str, RuntimeResult] = Field(default_factory=dict, description="per runtime")
    info: dict[str, Any] = Field(default_factory=dict)

    @field_validator("checks", mode="before")
    @classmethod
    def _older_checks(cls, value: Any) -> Any:
        """export.json files from before checks carried numbers: 1 for a pass, 0 for a failure."""
        older = [isinstance(c, dict) and "value" not in c for c in value]
        return [
            holds(c["name"], c["passed"], c.get("detail", "")) if old else c
            for c, old in zip(value, older, strict=True)
        ]


class StudentInfo(BaseModel):
    model: str
    accuracy: float
    balanced_accuracy: float | None = Field(None, description="mean per-class recall on the verified test images")
    confusion: list[list[int]] | None = Field(None, description="rows: true class, columns: predicted")
    class_names: list[str] = Field(default_factory=list)
    input: list[int] = Field(description="channels, height, width")
    mean: list[float]
    std: list[float]


class ExportReport(BaseModel):
    """artefacts/export.json: every artefact, where it was run and every check it passed or failed."""

    schema_version: int = SCHEMA_VERSION
    student: StudentInfo
    test_images: int
    calibration_images: int
    thresholds: dict[str, float]
    sample: str | None = Field(None, description="test images kept for the benchmark (relative to the run)")
    artefacts: dict[str, ArtefactExport]
    passed: bool

    def failed_checks(self) -> list[str]:
        return [f"{fmt}: {c.name}" for fmt, entry in self.artefacts.items() for c in entry.checks if not c.passed]
