"""Teacher ensembles (Hinton, Vinyals & Dean 2015, "dark knowledge"): soft targets from many teachers.

`arithmetic` averages the teachers' probabilities at temperature T; `geometric` averages their
log-probabilities and renormalises (softmax of the mean log-probability). The ensemble returns logits
L with softmax(L / T) equal to that mixture, so every logit-based method (KD, DKD) uses it unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def combine(teacher_logits: list[torch.Tensor], temperature: float, rule: str) -> torch.Tensor:
    log_probs = torch.stack([F.log_softmax(logits / temperature, dim=1) for logits in teacher_logits])
    if rule == "geometric":
        mixed = log_probs.mean(0)
    else:
        mixed = torch.logsumexp(log_probs, dim=0) - math.log(len(teacher_logits))
    return temperature * mixed


class TeacherEnsemble(nn.Module):
    def __init__(self, teachers: list[nn.Module], temperature: float, rule: str):
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        self.temperature, self.rule = temperature, rule

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return combine([teacher(images) for teacher in self.teachers], self.temperature, self.rule)
