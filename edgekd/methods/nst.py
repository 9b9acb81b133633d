"""Neuron selectivity transfer, Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron
Selectivity Transfer".

Each channel of a stage's feature map is one neuron; its activations over the H×W positions, L2-
normalised, are one sample of that network's "selectivity" distribution. NST matches the student's
distribution to the teacher's by the squared maximum mean discrepancy between the two sets of channels
(they need not have the same count), with the paper's polynomial kernel k(x, y) = (xᵀy + c)^d, d = 2,
c = 0:

    MMD² = mean k(t_i, t_i') + mean k(s_j, s_j') − 2 mean k(s_j, t_i)

When the spatial sizes differ, the larger map is average-pooled to the smaller (as RepDistiller does).
Per step: w_ce · CE + w_nst · Σ_pairs MMD² (+ w_kd · KD; the paper's best rows combine NST with KD).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgekd.config import DistillSettings
from edgekd.methods.registry import register_method
from edgekd.methods.stage_pairs import StagePairMethod


class NSTConfig(DistillSettings):
    """NST (Huang & Wang 2017): squared MMD between student and teacher channel distributions per stage pair."""

    method: Literal["nst"] = "nst"
    stages: list[tuple[int | str, int | str]] = Field(
        default_factory=list, description="[student, teacher] pairs (default: every stage after the first)"
    )
    w_ce: float = Field(1.0, ge=0)
    w_nst: float = Field(50.0, ge=0, description="the paper's λ for its CIFAR experiments")
    w_kd: float = Field(0.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    degree: int = Field(2, ge=1, description="polynomial kernel (xᵀy + c)^d")
    constant: float = Field(0.0, ge=0)


def polynomial_kernel(a: torch.Tensor, b: torch.Tensor, degree: int, constant: float) -> torch.Tensor:
    """(B, N, D) × (B, M, D) → (B, N, M) of (aᵀb + c)^d."""
    return (torch.bmm(a, b.transpose(1, 2)) + constant).pow(degree)


def nst_loss(student: torch.Tensor, teacher: torch.Tensor, degree: int = 2, constant: float = 0.0) -> torch.Tensor:
    """Squared MMD between the channels of two (B, C, H, W) maps, averaged over the batch."""
    if student.shape[-1] > teacher.shape[-1]:
        student = F.adaptive_avg_pool2d(student, teacher.shape[-2:])
    elif teacher.shape[-1] > student.shape[-1]:
        teacher = F.adaptive_avg_pool2d(teacher, student.shape[-2:])
    s = F.normalize(student.flatten(2), dim=2)
    t = F.normalize(teacher.flatten(2), dim=2)
    mmd = (
        polynomial_kernel(t, t, degree, constant).mean((1, 2))
        + polynomial_kernel(s, s, degree, constant).mean((1, 2))
        - 2 * polynomial_kernel(s, t, degree, constant).mean((1, 2))
    )
    return mmd.mean()


@register_method("nst", config=NSTConfig, accepts_unlabelled=True, recipe="mnist5k_nst")
class NST(StagePairMethod):
    loss_name = "nst"

    def __init__(self, student: nn.Module, teacher: nn.Module, *, w_nst: float, degree: int, constant: float, **common):
        super().__init__(student, teacher, w_pairs=w_nst, **common)  # stages, w_ce, w_kd, temperature
        self.degree, self.constant = degree, constant

    def pair_loss(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        return nst_loss(student_features, teacher_features, self.degree, self.constant)
