"""No teacher: cross-entropy on the labels. Trains teachers and the baseline student."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.methods.base import DistillMethod


class Plain(DistillMethod):
    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, index=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}
