"""What attention transfer and neuron selectivity transfer share: a loss between the student's and the
teacher's feature maps at [student, teacher] stage pairs, beside cross-entropy and optional KD.

    w_ce · CE(y, z_s) + w_pairs · Σ_pairs pair_loss(student map, teacher map) (+ w_kd · T² · KL)
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.methods.base import FrozenTeacherMethod
from edgekd.methods.features import logits_and_features, stage_pairs
from edgekd.methods.kd import kd_loss


class StagePairMethod(FrozenTeacherMethod):
    loss_name = "pairs"  # the pair loss's name among the step's losses

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        stages: list[tuple[int | str, int | str]],
        w_ce: float,
        w_pairs: float,
        w_kd: float,
        temperature: float,
    ):
        self.student_indices, self.teacher_indices = stage_pairs(student, teacher, stages)
        super().__init__(student, teacher, teacher_stages=self.teacher_indices)
        self.w_ce, self.w_pairs, self.w_kd, self.temperature = w_ce, w_pairs, w_kd, temperature

    @classmethod
    def check(cls, config, student: nn.Module, teacher: nn.Module) -> None:
        stage_pairs(student, teacher, config.stages)

    @classmethod
    def from_config(cls, config, student: nn.Module, teacher: nn.Module, context) -> StagePairMethod:
        return cls(student, teacher, **config.method_options())

    def pair_loss(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images, labels, index=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student_logits, student_features = logits_and_features(self.student, images, self.student_indices)
        teacher_logits, teacher_features = self.teacher_outputs(images, index)
        pairs = sum(self.pair_loss(s, t) for s, t in zip(student_features, teacher_features, strict=True))
        losses = {"ce": self.w_ce * self.cross_entropy(student_logits, labels), self.loss_name: self.w_pairs * pairs}
        if self.w_kd:
            losses["kd"] = self.w_kd * kd_loss(student_logits, teacher_logits, self.temperature)
        return student_logits, losses
