"""Knowledge distillation, Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network".

loss = w_ce · CE(y, z_s) + w_kd · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))

T² keeps the soft-target gradients on the same scale as the hard-label ones when T changes. The KL is
summed over classes and averaged over the batch ("batchmean"); "mean" would also divide by the class
count, silently shrinking the KD term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.methods.base import FrozenTeacherMethod


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch."""
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2


class KD(FrozenTeacherMethod):
    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float, w_ce: float, w_kd: float):
        super().__init__(student, teacher)
        self.temperature, self.w_ce, self.w_kd = temperature, w_ce, w_kd

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, index=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student_logits = self.student(images)
        teacher_logits = self.teacher_logits(images, index)
        return student_logits, {
            "ce": self.w_ce * F.cross_entropy(student_logits, labels),
            "kd": self.w_kd * kd_loss(student_logits, teacher_logits, self.temperature),
        }
