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

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgekd.config import DistillSettings
from edgekd.methods.base import DistillMethod
from edgekd.methods.registry import register_method
from edgekd.runtime import evaluate


class CoDistillConfig(DistillSettings):
    """Co-distillation: N students teach each other (no teacher); the first is saved and exported."""

    method: Literal["codistill"] = "codistill"
    students: int = Field(2, ge=2, le=8)
    warmup_epochs: int = Field(1, ge=0, description="epochs on the labels alone before the students distil")
    w_ce: float = Field(1.0, ge=0)
    w_kd: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)


def peer_targets(logits: list[torch.Tensor], temperature: float) -> list[torch.Tensor]:
    """For each student, the log of the mean probability of the others (detached)."""
    probs = torch.stack([F.softmax(z.detach() / temperature, dim=1) for z in logits])
    total = probs.sum(0)
    return [((total - probs[i]) / (len(logits) - 1)).clamp_min(1e-12).log() for i in range(len(logits))]


@register_method(
    "codistill", config=CoDistillConfig, accepts_unlabelled=True, needs_teacher=False, recipe="mnist5k_codistill"
)
class CoDistillation(DistillMethod):
    def __init__(self, students: list[nn.Module], *, w_ce: float, w_kd: float, temperature: float, warmup_epochs: int):
        super().__init__(students[0])
        self.peers = nn.ModuleList(students[1:])
        self.w_ce, self.w_kd, self.temperature, self.warmup_epochs = w_ce, w_kd, temperature, warmup_epochs
        self.distilling = warmup_epochs == 0

    @classmethod
    def from_config(cls, config: CoDistillConfig, student: nn.Module, teacher: None, context) -> CoDistillation:
        peers = [context.new_student(k) for k in range(1, config.students)]
        return cls(
            [student, *peers],
            w_ce=config.w_ce,
            w_kd=config.w_kd,
            temperature=config.temperature,
            warmup_epochs=config.warmup_epochs,
        )

    results_key = "codistillation"

    def results(self, batches, runtime) -> dict[str, Any]:
        """Every student's test accuracy and their ensemble's (the first student is the one exported)."""
        accuracies = [evaluate(student, batches, runtime)[1] for student in self.students]
        correct, seen = 0, 0
        for images, labels, *_ in batches:
            images, labels = runtime.batch(images, labels)
            correct += (self.ensemble_logits(images).argmax(1) == labels).sum().item()
            seen += len(labels)
        return {"students": accuracies, "ensemble": correct / max(seen, 1)}

    @classmethod
    def results_markdown(cls, results: dict[str, Any]) -> list[str]:
        community = results.get(cls.results_key)
        if not community:
            return []
        return [
            "Co-distillation: the students "
            + ", ".join(f"{a:.2%}" for a in community["students"])
            + f"; their ensemble {community['ensemble']:.2%} (the first student is the one exported)."
        ]

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
        losses = {"ce": self.w_ce * sum(self.cross_entropy(z, labels) for z in logits)}
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
