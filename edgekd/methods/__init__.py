"""Distillation methods, one file each. Adding a method = a file here, its config in recipe.py, and a
branch in `build_method`."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.methods.at import AttentionTransfer
from edgekd.methods.base import DistillMethod
from edgekd.methods.codistill import CoDistillation
from edgekd.methods.dkd import DKD
from edgekd.methods.hints import Hints
from edgekd.methods.kd import KD
from edgekd.methods.plain import Plain
from edgekd.methods.prokt import ProKT
from edgekd.recipe import ATConfig, CoDistillConfig, DKDConfig, HintsConfig, KDConfig, ProKTConfig


def build_method(
    config, student: nn.Module, teacher: nn.Module | None, *, in_chans: int, image_size: int, new_student=None
) -> DistillMethod:
    """`new_student(k)` builds the k-th extra student (co-distillation)."""
    if isinstance(config, KDConfig):
        return KD(student, teacher, temperature=config.temperature, w_ce=config.w_ce, w_kd=config.w_kd)
    if isinstance(config, HintsConfig):
        return Hints(
            student,
            teacher,
            in_chans=in_chans,
            image_size=image_size,
            student_stage=config.student_stage,
            teacher_stage=config.teacher_stage,
            w_ce=config.w_ce,
            w_hint=config.w_hint,
            w_kd=config.w_kd,
            temperature=config.temperature,
            stagewise=config.hint_schedule == "stagewise",
            hint_epochs=config.hint_epochs,
        )
    if isinstance(config, ProKTConfig):
        optimizer_class = torch.optim.AdamW if config.teacher_optimizer == "adamw" else torch.optim.SGD
        options = {"momentum": 0.9} if config.teacher_optimizer == "sgd" else {}
        return ProKT(
            student,
            teacher,
            teacher_optimizer=optimizer_class(teacher.parameters(), lr=config.teacher_lr, **options),
            teacher_lr=config.teacher_lr,
            kl_weight=config.kl_weight,
            temperature=config.temperature,
            w_ce=config.w_ce,
        )
    if isinstance(config, DKDConfig):
        return DKD(
            student,
            teacher,
            w_ce=config.w_ce,
            alpha=config.alpha,
            beta=config.beta,
            temperature=config.temperature,
            warmup_epochs=config.warmup(),
        )
    if isinstance(config, ATConfig):
        return AttentionTransfer(
            student,
            teacher,
            stages=config.stages,
            w_ce=config.w_ce,
            w_at=config.w_at,
            w_kd=config.w_kd,
            temperature=config.temperature,
            p=config.p,
        )
    if isinstance(config, CoDistillConfig):
        peers = [new_student(k) for k in range(1, config.students)]
        return CoDistillation(
            [student, *peers],
            w_ce=config.w_ce,
            w_kd=config.w_kd,
            temperature=config.temperature,
            warmup_epochs=config.warmup_epochs,
        )
    raise ValueError(f"no method for {type(config).__name__}")  # unreachable: the schema lists the methods


__all__ = [
    "CoDistillation",
    "DKD",
    "KD",
    "AttentionTransfer",
    "DistillMethod",
    "Hints",
    "Plain",
    "ProKT",
    "build_method",
]
