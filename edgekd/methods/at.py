"""Attention transfer, Zagoruyko & Komodakis 2017, "Paying more attention to attention".

An attention map is the mean over channels of |activation|^p (p = 2), flattened and L2-normalised; the
loss is the mean squared difference between student and teacher maps of each chosen stage pair
(resized to the teacher's size when they differ), summed over pairs: w_ce·CE + w_at·Σ AT (+ w_kd·KD).
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


class ATConfig(DistillSettings):
    """Attention transfer (Zagoruyko & Komodakis 2017) between chosen stage pairs."""

    method: Literal["at"] = "at"
    stages: list[tuple[int | str, int | str]] = Field(default_factory=list, description="[student, teacher] pairs")
    w_ce: float = Field(1.0, ge=0)
    w_at: float = Field(1000.0, ge=0)
    w_kd: float = Field(0.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    p: float = Field(2.0, gt=0)


def attention_map(features: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    attention = features.abs().pow(p).mean(dim=1, keepdim=True)
    if size is not None and tuple(attention.shape[-2:]) != tuple(size):
        attention = F.interpolate(attention, size=size, mode="bilinear", align_corners=False)
    return F.normalize(attention.flatten(1), dim=1)


def attention_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    size = tuple(teacher_features.shape[-2:])
    return (attention_map(student_features, p, size) - attention_map(teacher_features, p)).pow(2).mean()


@register_method("at", config=ATConfig, accepts_unlabelled=True, recipe="mnist5k_at")
class AttentionTransfer(StagePairMethod):
    loss_name = "at"

    def __init__(self, student: nn.Module, teacher: nn.Module, *, w_at: float, p: float, **common):
        super().__init__(student, teacher, w_pairs=w_at, **common)  # stages, w_ce, w_kd, temperature
        self.p = p

    def pair_loss(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        return attention_loss(student_features, teacher_features, self.p)
