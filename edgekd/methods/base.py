"""What every distillation method is: given a batch, the student's logits and a dict of named losses.

The training loop sums the losses and steps one optimiser over `trainable_modules()`; it never knows
which method runs. A method that owns more trainable state than those modules (ProKT's moving teacher
and its optimiser) exposes it through `extra_state` / `load_extra_state` for checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.methods.features import logits_and_features


def labelled_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None, **kwargs
) -> torch.Tensor:
    """Cross-entropy over the batch's labelled images (a label of -1, UNLABELLED, has no hard-label loss;
    a batch without a labelled image a loss of 0), `weight`ed per class when given (a weighted mean)."""
    weight = None if weight is None else weight.to(logits.device, logits.dtype)
    labelled = labels >= 0
    if not labelled.all():
        if not labelled.any():
            return logits.sum() * 0.0  # still part of the graph, as DDP wants every loss to be
        logits, labels = logits[labelled], labels[labelled]
    return F.cross_entropy(logits, labels, weight=weight, **kwargs)


class DistillMethod(nn.Module):
    # DDP must look for parameters a step leaves unused (a stage that trains only part of the model).
    skips_parameters = False
    # Where in the run's summary the method's own findings go (see `results`), if it has any.
    results_key: str | None = None

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student
        self.class_weights: torch.Tensor | None = None  # data.balance: weights (set by the training loop)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        """The hard-label loss: weighted per class when the recipe balances by weights (a weighted mean)."""
        return labelled_cross_entropy(logits, labels, self.class_weights, **kwargs)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`index`: the batch's positions in the training set (what a teacher cache is keyed by)."""
        raise NotImplementedError

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the loop before each epoch (1-based): for warm-ups and staged schedules."""
        del epoch, epochs

    def after_step(self) -> None:
        """Called by the loop after each optimiser step (a mean teacher's weight average follows it)."""

    @classmethod
    def check(cls, config, student: nn.Module, teacher: nn.Module | None) -> None:
        """Reject a section the models cannot serve (a stage they lack) before anything is trained:
        raise RecipeError. Runs on freshly built models."""
        del config, student, teacher

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Modules whose parameters the loop's optimiser trains and whose state it checkpoints."""
        return {"student": self.student}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state

    def results(self, batches: Iterable, runtime) -> dict[str, Any]:
        """Findings of the method's own, measured on the test `batches` after training (co-distillation:
        each student and their ensemble); stored under `results_key` in the summary."""
        del batches, runtime
        return {}

    @classmethod
    def results_markdown(cls, results: dict[str, Any]) -> list[str]:
        """The report's lines about `results` (the summary's method_results)."""
        del results
        return []

    def build_teacher_cache(self, batches: Iterable, count: int, runtime, world) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no frozen teacher to cache")

    def drop_teacher_cache(self) -> None:
        pass


def _stored(tensor: torch.Tensor) -> torch.Tensor:
    """Teacher outputs as the cache keeps them (float16), on every path, so that caching never changes
    a result; float16 is ample for logits and feature targets. Also turns inference tensors into
    ordinary ones, which autograd may save."""
    return tensor.to(torch.float16).float()


class FrozenTeacherMethod(DistillMethod):
    """A method whose teacher only gives targets: frozen, always in eval mode, run under inference mode,
    or not run at all when its outputs for every training image were cached once."""

    def __init__(self, student: nn.Module, teacher: nn.Module, teacher_stages: list[int] | None = None):
        super().__init__(student)
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_stages = teacher_stages or []  # the feature stages the loss reads (hints, AT)
        self._cache: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        # Why the teacher's outputs cannot be cached, when the method shows it images that change every step.
        self.cache_refusal: str | None = None

    def train(self, mode: bool = True) -> FrozenTeacherMethod:
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_outputs(
        self, images: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, features at `teacher_stages`) for the batch: from the cache when there is one."""
        if self._cache is not None and index is not None:
            logits, features = self._cache
            device = images.device
            return logits[index].to(device).float(), [f[index].to(device).float() for f in features]
        with torch.inference_mode():
            logits, features = self.teacher_forward(images)
        return _stored(logits), [_stored(f) for f in features]

    def teacher_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The teacher's logits and the features the loss reads (those at `teacher_stages`, unless a
        method reads others: CRD its pooled penultimate features)."""
        if self.teacher_stages:
            return logits_and_features(self.teacher, images, self.teacher_stages)
        return self.teacher(images), []

    def teacher_logits(self, images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return self.teacher_outputs(images, index)[0]

    def build_teacher_cache(self, batches: Iterable, count: int, runtime, world) -> None:
        """The teacher's outputs for every training image (unaugmented, in dataset order), kept in
        memory; under torchrun each rank computes a slice and they share the rest."""
        rows: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        for images, labels, _ in batches:
            logits, features = self.teacher_outputs(runtime.batch(images, labels)[0])
            rows.append((logits.half().cpu(), [f.half().cpu() for f in features]))
        logits = world.gather_rows(torch.cat([r[0] for r in rows]), count)
        outputs = len(rows[0][1]) if rows else 0  # feature tensors per image (stages, or CRD's embedding input)
        features = [world.gather_rows(torch.cat([r[1][i] for r in rows]), count) for i in range(outputs)]
        self._cache = (logits, features)

    def drop_teacher_cache(self) -> None:
        self._cache = None

    def teacher_cache_bytes(self, count: int, in_chans: int, image_size: int) -> int:
        """What caching would hold in memory for `count` images (float16)."""
        probe = torch.zeros(1, in_chans, image_size, image_size, device=next(self.teacher.parameters()).device)
        logits, features = self.teacher_outputs(probe)
        return 2 * count * (logits[0].numel() + sum(f[0].numel() for f in features))
