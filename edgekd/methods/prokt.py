"""ProKT, Shi et al. 2021, "Follow your path: a progressive method for knowledge distillation".

The teacher keeps learning, but towards the student, so that its outputs stay reachable. Each batch:
(a) the student's output q_s (eval mode, detached); the teacher takes one step of its own optimiser on
    (1 − λ)·CE(y, p_T) + λ·KL(q_s ‖ p_T);
(b) the updated teacher's output p_T (eval mode, detached); the student's loss is T²·KL(p_T ‖ q_s) at
    temperature T (+ w_ce·CE), stepped by the training loop.
Teacher outputs are never cached: the teacher changes every step. The teacher and its optimiser are
the method's own (checkpointed through `extra_state`), never exported.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgekd.config import DistillSettings
from edgekd.distributed import World
from edgekd.methods.base import DistillMethod
from edgekd.methods.kd import kd_loss
from edgekd.methods.registry import register_method


class ProKTConfig(DistillSettings):
    """ProKT (Shi et al. 2021): the teacher steps toward the student each batch, the student follows it."""

    method: Literal["prokt"] = "prokt"
    kl_weight: float = Field(0.4, ge=0, le=1, description="λ in the teacher's (1−λ)·CE + λ·KL(student ‖ teacher)")
    temperature: float = Field(1.0, gt=0)
    w_ce: float = Field(0.0, ge=0)
    teacher_lr: float = Field(0.001, gt=0)
    teacher_optimizer: Literal["sgd", "adamw"] = "sgd"


def teacher_loss(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor, kl_weight: float
) -> torch.Tensor:
    """(1 − λ)·CE(y, p_T) + λ·KL(q_s ‖ p_T): the student's distribution is the target."""
    kl = F.kl_div(
        F.log_softmax(teacher_logits, dim=1),
        F.log_softmax(student_logits, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - kl_weight) * F.cross_entropy(teacher_logits, labels) + kl_weight * kl


@register_method("prokt", config=ProKTConfig, trains_teacher=True, recipe="mnist5k_prokt")
class ProKT(DistillMethod):
    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        teacher_optimizer: torch.optim.Optimizer | None = None,
        teacher_lr: float,
        kl_weight: float,
        temperature: float,
        w_ce: float,
    ):
        super().__init__(student)
        self.teacher = teacher.requires_grad_(True)
        self.teacher_optimizer = teacher_optimizer or torch.optim.SGD(teacher.parameters(), lr=teacher_lr, momentum=0.9)
        self.kl_weight, self.temperature, self.w_ce = kl_weight, temperature, w_ce
        self.last_teacher_loss = torch.tensor(0.0)
        self.world = World()  # under torchrun, the process group's: the teacher's gradients are averaged

    @classmethod
    def from_config(cls, config: ProKTConfig, student: nn.Module, teacher: nn.Module, context) -> ProKT:
        optimizer_class = torch.optim.AdamW if config.teacher_optimizer == "adamw" else torch.optim.SGD
        options = {"momentum": 0.9} if config.teacher_optimizer == "sgd" else {}
        method = cls(
            student,
            teacher,
            teacher_optimizer=optimizer_class(teacher.parameters(), lr=config.teacher_lr, **options),
            teacher_lr=config.teacher_lr,
            kl_weight=config.kl_weight,
            temperature=config.temperature,
            w_ce=config.w_ce,
        )
        method.world = context.world
        return method

    def _eval_logits(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(images)
        model.train(was_training)
        return logits

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, index=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.training:
            student_targets = self._eval_logits(self.student, images)
            self.teacher.train()
            loss = teacher_loss(self.teacher(images), student_targets, labels, self.kl_weight)
            self.teacher_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.world.average_gradients(self.teacher.parameters())  # under torchrun: one teacher on every rank
            self.teacher_optimizer.step()
            self.last_teacher_loss = loss.detach()
        teacher_logits = self._eval_logits(self.teacher, images)
        student_logits = self.student(images)
        losses = {"kd": kd_loss(student_logits, teacher_logits, self.temperature)}
        if self.w_ce:
            losses["ce"] = self.w_ce * F.cross_entropy(student_logits, labels)
        return student_logits, losses

    def extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "teacher_optimizer": self.teacher_optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            self.teacher.load_state_dict(state["teacher"])
            self.teacher_optimizer.load_state_dict(state["teacher_optimizer"])
