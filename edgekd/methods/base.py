"""What every distillation method is: given a batch, the student's logits and a dict of named losses.

The training loop sums the losses and steps one optimiser over `trainable_modules()`; it never knows
which method runs. A method that owns more trainable state than those modules (ProKT's moving teacher
and its optimiser) exposes it through `extra_state` / `load_extra_state` for checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class DistillMethod(nn.Module):
    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the loop before each epoch (1-based): for warm-ups and staged schedules."""
        del epoch, epochs

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Modules whose parameters the loop's optimiser trains and whose state it checkpoints."""
        return {"student": self.student}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state


class FrozenTeacherMethod(DistillMethod):
    """A method whose teacher only gives targets: frozen, always in eval mode, run under no_grad."""

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__(student)
        self.teacher = teacher.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenTeacherMethod:
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher(images)
