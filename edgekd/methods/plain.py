"""No teacher: cross-entropy on the labels (optionally label-smoothed). Trains teachers and the baseline student."""

from __future__ import annotations

import torch

from edgekd.methods.base import DistillMethod


class Plain(DistillMethod):
    def __init__(self, student: torch.nn.Module, label_smoothing: float = 0.0):
        super().__init__(student)
        self.label_smoothing = label_smoothing  # Szegedy et al. 2016; the baseline's option

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, index=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(images)
        return logits, {"ce": self.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)}
