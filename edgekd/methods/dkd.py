"""Decoupled knowledge distillation, Zhao et al. 2022.

KD splits into target-class KD (TCKD: the binary "target vs. the rest" distributions) and non-target
KD (NCKD: the distribution among the non-target classes). DKD weights them separately:
w_ce·CE + min(epoch / warmup, 1) · (α·TCKD + β·NCKD) · T².
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgekd.config import DistillSettings, EnsembleRule
from edgekd.methods.base import FrozenTeacherMethod
from edgekd.methods.registry import register_method


def dkd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each a batch-mean KL times T²."""
    target = F.one_hot(labels, student_logits.shape[1]).bool()
    p_student = F.softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)

    def binary(p: torch.Tensor) -> torch.Tensor:  # [p(target), p(non-target)]
        p_target = (p * target).sum(1, keepdim=True)
        return torch.cat([p_target, 1 - p_target], dim=1).clamp_min(1e-12)

    b_student, b_teacher = binary(p_student), binary(p_teacher)
    tckd = (b_teacher * (b_teacher.log() - b_student.log())).sum(1).mean() * temperature**2
    # Among non-target classes: mask the target logit out (−∞ → probability 0) before the softmax.
    masked_student = (student_logits / temperature).masked_fill(target, float("-inf"))
    masked_teacher = (teacher_logits / temperature).masked_fill(target, float("-inf"))
    log_q_student = F.log_softmax(masked_student, dim=1).masked_fill(target, 0.0)
    log_q_teacher = F.log_softmax(masked_teacher, dim=1).masked_fill(target, 0.0)
    nckd = (log_q_teacher.exp() * (log_q_teacher - log_q_student)).sum(1).mean() * temperature**2
    return tckd, nckd


class DKDConfig(DistillSettings):
    """Decoupled KD (Zhao et al. 2022): CE + warm-up · (α·TCKD + β·NCKD) · T²."""

    method: Literal["dkd"] = "dkd"
    w_ce: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    warmup_epochs: float | None = Field(None, ge=0, description="default: the paper's 20 of 240 epochs, scaled")
    ensemble: EnsembleRule = Field("arithmetic", description="how a teacher list's targets mix")

    def warmup(self) -> float:
        return self.warmup_epochs if self.warmup_epochs is not None else max(1.0, 20 * self.epochs / 240)


@register_method("dkd", config=DKDConfig, accepts_ensemble=True, recipe="mnist5k_dkd")
class DKD(FrozenTeacherMethod):
    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        w_ce: float,
        alpha: float,
        beta: float,
        temperature: float,
        warmup_epochs: float,
    ):
        super().__init__(student, teacher)
        self.w_ce, self.alpha, self.beta, self.temperature = w_ce, alpha, beta, temperature
        self.warmup_epochs = warmup_epochs
        self.warmup = 1.0

    @classmethod
    def from_config(cls, config: DKDConfig, student: nn.Module, teacher: nn.Module, context) -> DKD:
        options = config.method_options(exclude={"ensemble"})
        return cls(student, teacher, **{**options, "warmup_epochs": config.warmup()})

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.warmup = min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, index=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student_logits = self.student(images)
        tckd, nckd = dkd_terms(student_logits, self.teacher_logits(images, index), labels, self.temperature)
        return student_logits, {
            "ce": self.w_ce * self.cross_entropy(student_logits, labels),
            "tckd": self.warmup * self.alpha * tckd,
            "nckd": self.warmup * self.beta * nckd,
        }
