"""Co-distillation: a community of students teach each other, no teacher needed (Hinton's "dark
knowledge" talk; Anil et al. 2018, "Large scale distributed neural network training through online
distillation"; Zhang et al. 2018, "Deep mutual learning").

N students of the same architecture train together from different initial weights. For the first
`warmup_epochs` each learns from the labels alone; afterwards each also matches the soft targets of
the average of the others (their mean probability at temperature T, detached):
Σ_i [ w_ce·CE(y, z_i) + w_kd·T²·KL(mean_{j≠i} p_j ‖ p_i) ].
The first student is the one that is saved and exported; all of them and their ensemble are reported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.methods.base import DistillMethod


def peer_targets(logits: list[torch.Tensor], temperature: float) -> list[torch.Tensor]:
    """For each student, the log of the mean probability of the others (detached)."""
    probs = torch.stack([F.softmax(z.detach() / temperature, dim=1) for z in logits])
    total = probs.sum(0)
    return [((total - probs[i]) / (len(logits) - 1)).clamp_min(1e-12).log() for i in range(len(logits))]


class CoDistillation(DistillMethod):
    def __init__(self, students: list[nn.Module], *, w_ce: float, w_kd: float, temperature: float, warmup_epochs: int):
        super().__init__(students[0])
        self.peers = nn.ModuleList(students[1:])
        self.w_ce, self.w_kd, self.temperature, self.warmup_epochs = w_ce, w_kd, temperature, warmup_epochs
        self.distilling = warmup_epochs == 0

    @property
    def students(self) -> list[nn.Module]:
        return [self.student, *self.peers]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.distilling = epoch > self.warmup_epochs

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, **{f"peer_{k}": peer for k, peer in enumerate(self.peers, start=1)}}

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, index=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = [student(images) for student in self.students]
        losses = {"ce": self.w_ce * sum(F.cross_entropy(z, labels) for z in logits)}
        if self.distilling:
            T = self.temperature
            targets = peer_targets(logits, T)
            losses["kd"] = (
                self.w_kd
                * T**2
                * sum(
                    F.kl_div(F.log_softmax(z / T, dim=1), target, reduction="batchmean", log_target=True)
                    for z, target in zip(logits, targets, strict=True)
                )
            )
        return logits[0], losses

    @torch.no_grad()
    def ensemble_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The community's prediction: the mean of the students' probabilities (as log-probabilities)."""
        probs = torch.stack([F.softmax(student(images), dim=1) for student in self.students])
        return probs.mean(0).log()
