"""The one training loop, for teachers, baselines and distilled students alike.

Per epoch: train (the method returns named losses; their sum is minimised), validate, append a row to
metrics.csv, write a checkpoint atomically. A killed stage resumes from its last checkpoint. After the
last epoch BatchNorm statistics are re-estimated on the training images ("precise BN"): with large,
changing learning rates the running averages lag the weights, and eval-mode accuracy can collapse
while the training loss looks fine.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from edgekd.data import DataBundle, make_loader
from edgekd.errors import EdgeKDError, RunDirError
from edgekd.methods.base import DistillMethod
from edgekd.recipe import TrainConfig


class TrainingError(EdgeKDError):
    """Training diverged."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    channels_last: bool
    amp: bool

    @classmethod
    def from_recipe(cls, device: str, channels_last: bool, amp: bool) -> Runtime:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise EdgeKDError("device: cuda was asked for but torch sees no CUDA device; use device: auto or cpu")
        return cls(torch.device(device), channels_last, amp)

    def place(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16)


@dataclass
class StageResult:
    stage: str
    val_accuracy: float | None
    test_accuracy: float
    test_loss: float
    seconds: float
    epochs: int


# ---------------------------------------------------------------- files


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
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_bytes_of(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_bytes_of(value) for value in obj)
    return 64


class MetricsLog:
    """metrics.csv: one row per stage and epoch; columns are the union of what the stages report."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            with path.open(newline="") as handle:
                self.rows = list(csv.DictReader(handle))

    def truncate(self, stage: str, after_epoch: int) -> None:
        """Forget this stage's rows past `after_epoch` (a resumed stage redoes them)."""
        self.rows = [r for r in self.rows if r["stage"] != stage or int(r["epoch"]) <= after_epoch]
        self._write()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()

    def stage_rows(self, stage: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["stage"] == stage]

    def _write(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_save(text.getvalue(), self.path)


# ---------------------------------------------------------------- optimisation


def build_optimizer(parameters: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Stepped once per batch."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "step":
        milestones = [epoch * steps_per_epoch for epoch in config.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, runtime: Runtime) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) in eval mode."""
    model.eval()
    loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
    for images, labels in loader:
        images, labels = runtime.batch(images, labels)
        with runtime.autocast():
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").cpu()
        correct += (logits.argmax(1) == labels).sum().cpu()
        seen += len(labels)
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)


def recalibrate_batchnorm(model: nn.Module, loader: Iterable, runtime: Runtime) -> None:
    """Replace BatchNorm running statistics by their exact average over `loader` ("precise BN"), with
    torch's own `update_bn`; the images go in as training batches would (device, memory format)."""
    from torch.optim.swa_utils import update_bn

    with runtime.autocast():
        update_bn((runtime.batch(images, labels)[0] for images, labels in loader), model)
    model.eval()


def tracked(loader: Iterable, progress: Progress, description: str, total: int) -> Iterator:
    """Iterate `loader` with a progress line of its own, removed when done."""
    task = progress.add_task(description, total=total, status="")
    for batch in loader:
        yield batch
        progress.advance(task)
    progress.remove_task(task)


# ---------------------------------------------------------------- the loop


def train_stage(
    stage: str,
    method: DistillMethod,
    config: TrainConfig,
    data: DataBundle,
    runtime: Runtime,
    *,
    seed: int,
    batch_size: int,
    workers: int,
    checkpoint_dir: Path,
    metrics: MetricsLog,
    resume: bool,
    console: Console,
) -> StageResult:
    """Train `method.student` (and whatever else the method trains) for `config.epochs` epochs."""
    method = runtime.place(method)
    modules = method.trainable_modules()
    parameters = [p for module in modules.values() for p in module.parameters() if p.requires_grad]
    optimizer = build_optimizer(parameters, config)
    steps_per_epoch = len(make_loader(data.train, batch_size, train=True))
    if steps_per_epoch == 0:
        raise EdgeKDError(f"stage '{stage}': the training split is empty; use more data or smaller splits")
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    scaler = torch.amp.GradScaler(enabled=runtime.amp and runtime.device.type == "cuda")
    checkpoint_path = checkpoint_dir / f"{stage}.last.pt"
    val_loader = make_loader(data.val, batch_size, train=False, workers=workers)

    start_epoch, seconds_before = 1, 0.0
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=runtime.device, weights_only=True)
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        method.load_extra_state(state["extra"])
        start_epoch, seconds_before = state["epoch"] + 1, state["seconds"]
        console.print(f"[dim]{stage}: resuming after epoch {state['epoch']}[/dim]")
    metrics.truncate(stage, start_epoch - 1)

    started = time.perf_counter()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        for epoch in range(start_epoch, config.epochs + 1):
            # Seeding per epoch makes a resumed run draw the same shuffles and augmentations.
            torch.manual_seed(seed * 1_000_003 + epoch)
            loader = make_loader(data.train, batch_size, train=True, seed=seed * 1_000_003 + epoch, workers=workers)
            task = progress.add_task(f"{stage:>8} {epoch:>3}/{config.epochs}", total=len(loader), status="")
            method.train()
            method.start_epoch(epoch, config.epochs)
            sums: dict[str, float] = {}
            correct, seen, epoch_started = 0, 0, time.perf_counter()
            for step, (images, labels) in enumerate(loader):
                images, labels = runtime.batch(images, labels)
                with runtime.autocast():
                    logits, losses = method(images, labels)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"stage '{stage}': the loss became {loss.item()} at epoch {epoch}, step {step}; "
                        f"lower the lr (now {config.lr}) or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value.item() * len(labels)
                correct += (logits.argmax(1) == labels).sum().item()
                seen += len(labels)
                images_per_second = seen / (time.perf_counter() - epoch_started)
                progress.update(
                    task,
                    advance=1,
                    status=f"loss {sum(sums.values()) / seen:.3f}  "
                    f"acc {correct / seen:.1%}  {images_per_second:,.0f} img/s",
                )
            epoch_seconds = time.perf_counter() - epoch_started
            progress.update(task, visible=False)
            val_loss, val_accuracy = (
                evaluate(
                    method.student,
                    tracked(val_loader, progress, f"{stage:>8} {epoch:>3}/{config.epochs} validating", len(val_loader)),
                    runtime,
                )
                if len(data.val)
                else (math.nan, math.nan)
            )
            row = {
                "stage": stage,
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": sum(sums.values()) / seen,
                **{f"loss_{name}": value / seen for name, value in sums.items()},
                "train_accuracy": correct / seen,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "images_per_second": seen / epoch_seconds,
                "epoch_seconds": epoch_seconds,
            }
            metrics.add({key: round(value, 6) if isinstance(value, float) else value for key, value in row.items()})
            # One permanent line per epoch, so logs and pipes see progress too (the live bar is terminal-only).
            progress.remove_task(task)
            progress.console.print(
                f"{stage:>8} {epoch:>3}/{config.epochs}  loss {row['train_loss']:.3f}  "
                f"acc {row['train_accuracy']:.1%}  val {val_accuracy:.1%}  "
                f"{row['images_per_second']:,.0f} img/s  {epoch_seconds:.1f} s",
                highlight=False,
            )
            atomic_save(
                {
                    "epoch": epoch,
                    "seconds": seconds_before + time.perf_counter() - started,
                    "modules": {name: module.state_dict() for name, module in modules.items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "extra": method.extra_state(),
                },
                checkpoint_path,
            )

        # Precise BN, then the final validation and test passes: minutes on a busy machine, so shown too.
        statistics = make_loader(data.train_eval, batch_size, train=False, workers=workers)
        recalibrate_batchnorm(
            method.student,
            tracked(statistics, progress, f"{stage:>8} BatchNorm statistics", len(statistics)),
            runtime,
        )
        val_accuracy = (
            evaluate(method.student, tracked(val_loader, progress, f"{stage:>8} validating", len(val_loader)), runtime)[
                1
            ]
            if len(data.val)
            else None
        )
        test_loader = make_loader(data.test, batch_size, train=False, workers=workers)
        test_loss, test_accuracy = evaluate(
            method.student, tracked(test_loader, progress, f"{stage:>8} testing", len(test_loader)), runtime
        )
    return StageResult(
        stage, val_accuracy, test_accuracy, test_loss, seconds_before + time.perf_counter() - started, config.epochs
    )
