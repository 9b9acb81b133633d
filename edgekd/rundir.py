"""A run directory: the one place that knows its file names, that it is edgekd's, and who writes it.

runs/<name>/
  .edgekd-run          marks a folder edgekd made: only such a folder is resumed or overwritten
  .edgekd-lock         held (flock) by the one process writing the run; says which process
  recipe.yaml          the recipe as resolved
  teacher.pt, teacher_<i>.pt, baseline.pt, student.pt      weights files
  metrics.csv, summary.json
  checkpoints/<stage>.last.pt                               for --resume
  artefacts/           exports, export.json, convert.log, mcu-project/
  device/              firmware built for a lone artefact
  report.md, report.json, *.png
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgekd.errors import RunDirError

MARKER = ".edgekd-run"
LOCK = ".edgekd-lock"
PLOTS = ("training.png", "tradeoffs.png", "memory.png", "device_layers.png")

_held: dict[Path, int] = {}  # run directories this process holds locked, with a nesting count


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
            self.summary,
            self.checkpoints,
            self.artefacts,
            self.device,
            self.report_md,
            self.report_json,
            *(self.path / plot for plot in PLOTS),
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
