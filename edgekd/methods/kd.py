"""Knowledge distillation, Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network".

loss = w_ce · CE(y, z_s) + w_kd · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))

With `mix: mixup | cutmix` (edgekd.methods.mixing), student and teacher see the same mixed images and
the teacher's soft targets replace the mixed hard labels (or are added to them: mix_hard_labels).

T² keeps the soft-target gradients on the same scale as the hard-label ones when T changes. The KL is
summed over classes and averaged over the batch ("batchmean"); "mean" would also divide by the class
count, silently shrinking the KD term.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgekd.config import DistillSettings, EnsembleRule
from edgekd.methods.base import FrozenTeacherMethod
from edgekd.methods.mixing import MixKind, MixOptions, mix_batch, mixed_cross_entropy
from edgekd.methods.registry import register_method


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch."""
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2


class KDConfig(DistillSettings, MixOptions):
    """Hinton et al. 2015: w_ce · CE(y, z_s) + w_kd · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))."""

    method: Literal["kd"] = "kd"
    temperature: float = Field(4.0, gt=0)
    w_ce: float = Field(0.1, ge=0)
    w_kd: float = Field(0.9, ge=0)
    ensemble: EnsembleRule = Field("arithmetic", description="how a teacher list's targets mix")


@register_method(
    "kd", config=KDConfig, accepts_unlabelled=True, accepts_ensemble=True, default=True, recipe="quickstart"
)
class KD(FrozenTeacherMethod):
    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        temperature: float,
        w_ce: float,
        w_kd: float,
        mix: MixKind = "none",
        mix_alpha: float = 1.0,
        mix_hard_labels: bool = False,
    ):
        super().__init__(student, teacher)
        self.temperature, self.w_ce, self.w_kd = temperature, w_ce, w_kd
        self.mix, self.mix_alpha, self.mix_hard_labels = mix, mix_alpha, mix_hard_labels
        if mix != "none":
            self.cache_refusal = f"distill.mix: {mix} shows the teacher new images every step"

    @classmethod
    def from_config(cls, config: KDConfig, student: nn.Module, teacher: nn.Module, context) -> KD:
        return cls(student, teacher, **config.method_options(exclude={"ensemble"}))

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, index=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.mix != "none" and self.training:
            return self._mixed(images, labels)
        student_logits = self.student(images)
        teacher_logits = self.teacher_logits(images, index)
        return student_logits, {
            "ce": self.w_ce * self.cross_entropy(student_logits, labels),
            "kd": self.w_kd * kd_loss(student_logits, teacher_logits, self.temperature),
        }

    def _mixed(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The teacher labels the mixed images; the mixed hard labels count only if asked for."""
        mixed, partner, lam = mix_batch(images, self.mix, self.mix_alpha)
        student_logits = self.student(mixed)
        losses = {"kd": self.w_kd * kd_loss(student_logits, self.teacher_logits(mixed), self.temperature)}
        if self.mix_hard_labels:
            losses["ce"] = self.w_ce * mixed_cross_entropy(student_logits, labels, partner, lam, self.class_weights)
        # The logits of the mixed images, scored against each image's own label in the epoch's accuracy.
        return student_logits, losses
