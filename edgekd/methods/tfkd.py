"""Teacher-free knowledge distillation, Yuan, Tay, Li, Wang & Feng, "Revisiting Knowledge Distillation
via Label Smoothing Regularization", CVPR 2020 (reference code: yuanli2333/Teacher-free-Knowledge-
Distillation).

The paper's point: KD works partly as a learned label smoothing, so a teacher may not be needed.

- `tfkd` (Tf-KD_reg), a virtual teacher: for label c over K classes, p^d(c) = a and p^d(k) = (1−a)/(K−1)
  elsewhere, softened like logits (softmax(p^d / T), as the reference code does):

      L = (1 − α) · CE(y, z) + α · m · KL(softmax(p^d/T) ‖ softmax(z/T))

  with the KL averaged over batch and classes (PyTorch's old KLDivLoss default, which the reference
  code's multiplier m was tuned for). Defaults: a = 0.9, T = 20, α = 0.1, m = 100 (the reference
  code's for ResNet-18 on CIFAR-100).
- `tfkd-self` (Tf-KD_self): the student's own architecture, trained alone first (the run's baseline),
  is the teacher: L = (1 − α) · CE + α · T² · KL(softmax(z_t/T) ‖ softmax(z/T)), α = 0.95, T = 6 as in
  the reference code. It needs `baseline.enabled: true`.

Plain label smoothing, the other side of the paper's comparison, is the baseline's
`baseline.label_smoothing`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgekd.config import DistillSettings
from edgekd.methods.base import DistillMethod, FrozenTeacherMethod
from edgekd.methods.kd import kd_loss
from edgekd.methods.registry import register_method


class TFKDConfig(DistillSettings):
    """Teacher-free KD (Yuan et al. 2020), virtual teacher: the true class at probability a, the rest uniform."""

    method: Literal["tfkd"] = "tfkd"
    correct_prob: float = Field(0.9, gt=0, lt=1, description="a: the virtual teacher's probability of the label")
    temperature: float = Field(20.0, gt=0)
    alpha: float = Field(0.1, ge=0, le=1, description="weight of the virtual teacher's term; 1 − α for CE")
    multiplier: float = Field(100.0, gt=0, description="scales the KL term (the reference code's)")


def virtual_teacher(labels: torch.Tensor, num_classes: int, correct_prob: float) -> torch.Tensor:
    """p^d: `correct_prob` on the label, the rest spread evenly over the other classes."""
    rest = (1 - correct_prob) / (num_classes - 1)
    targets = torch.full((labels.shape[0], num_classes), rest, device=labels.device)
    return targets.scatter_(1, labels[:, None], correct_prob)


def tfkd_regularisation(logits: torch.Tensor, labels: torch.Tensor, correct_prob: float, temperature: float):
    """KL(softmax(p^d/T) ‖ softmax(z/T)) averaged over batch and classes."""
    teacher = F.softmax(virtual_teacher(labels, logits.shape[1], correct_prob) / temperature, dim=1)
    log_student = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(log_student, teacher, reduction="batchmean") / logits.shape[1]


@register_method("tfkd", config=TFKDConfig, needs_teacher=False, recipe="mnist5k_tfkd")
class TeacherFreeKD(DistillMethod):
    def __init__(self, student: nn.Module, *, correct_prob: float, temperature: float, alpha: float, multiplier: float):
        super().__init__(student)
        self.correct_prob, self.temperature, self.alpha, self.multiplier = correct_prob, temperature, alpha, multiplier

    @classmethod
    def from_config(cls, config: TFKDConfig, student: nn.Module, teacher: None, context) -> TeacherFreeKD:
        return cls(student, **config.method_options())

    def forward(self, images, labels, index=None):
        logits = self.student(images)
        regularisation = tfkd_regularisation(logits, labels, self.correct_prob, self.temperature)
        return logits, {
            "ce": (1 - self.alpha) * self.cross_entropy(logits, labels),
            "virtual": self.alpha * self.multiplier * regularisation,
        }


class SelfKDConfig(DistillSettings):
    """Teacher-free KD (Yuan et al. 2020), self-teacher: the student trained alone first (the baseline) teaches."""

    method: Literal["tfkd-self"] = "tfkd-self"
    temperature: float = Field(6.0, gt=0)
    alpha: float = Field(0.95, ge=0, le=1, description="weight of the KD term; 1 − α for CE")


@register_method("tfkd-self", config=SelfKDConfig, needs_teacher=False, needs_baseline=True, recipe="mnist5k_tfkd_self")
class SelfKD(FrozenTeacherMethod):
    def __init__(self, student: nn.Module, teacher: nn.Module, *, temperature: float, alpha: float):
        super().__init__(student, teacher)
        self.temperature, self.alpha = temperature, alpha

    @classmethod
    def from_config(cls, config: SelfKDConfig, student: nn.Module, teacher: None, context) -> SelfKD:
        return cls(student, context.baseline, **config.method_options())

    def forward(self, images, labels, index=None):
        logits = self.student(images)
        return logits, {
            "ce": (1 - self.alpha) * self.cross_entropy(logits, labels),
            "kd": self.alpha * kd_loss(logits, self.teacher_logits(images, index), self.temperature),
        }
