"""ProKT, Shi et al. 2021, "Follow your path: a progressive method for knowledge distillation".

The teacher keeps learning, but towards the student, so that its outputs stay reachable. Each batch:
(a) the student's output q_s (train mode, as the student's loss sees it; detached); the teacher takes one
    step of its own optimiser on (1 − λ)·CE(y, p_T) + λ·KL(q_s ‖ p_T);
(b) the updated teacher's output p_T (eval mode, detached); the student's loss is T²·KL(p_T ‖ q_s) at
    temperature T (+ w_ce·CE), stepped by the training loop.
Teacher outputs are never cached: the teacher changes every step. The teacher and its optimiser are
the method's own (checkpointed through `extra_state`), never exported.

Defaults, chosen on the validation split of `mnist5k_low_data` (benchmarks/suite/teacher_curves.py,
RESULTS.md "teacher curves: prokt"): T = 4, w_ce = 0.1 (as KD's), AdamW at lr 1e-5 for the teacher. A
trained teacher that moves faster (lr 1e-4) is pulled toward the untrained student in the first epochs
(its validation accuracy 98 % → 86–90 %, its outputs flattened), and a student chasing a flattened
teacher learns slowly: 15–30 % at epoch 20 where KD's student has 50–60 %, and ends 2–8 points below
the baseline's validation accuracy. The authors' teacher is not a converged one (their text runs start
the teacher from a pretrained language model, not a fine-tuned one); ours is, so it must barely move.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgekd.config import DistillSettings
from edgekd.distributed import World
from edgekd.methods.base import DistillMethod, labelled_cross_entropy
from edgekd.methods.kd import kd_loss
from edgekd.methods.registry import register_method


class ProKTConfig(DistillSettings):
    """ProKT (Shi et al. 2021): the teacher steps toward the student each batch, the student follows it."""

    method: Literal["prokt"] = "prokt"
    kl_weight: float = Field(0.4, ge=0, le=1, description="λ in the teacher's (1−λ)·CE + λ·KL(student ‖ teacher)")
    temperature: float = Field(4.0, gt=0)
    w_ce: float = Field(0.1, ge=0)
    teacher_lr: float = Field(1e-5, gt=0, description="small: a teacher that moves fast slows the student (RESULTS.md)")
    teacher_optimizer: Literal["sgd", "adamw"] = "adamw"


def teacher_loss(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    kl_weight: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1 − λ)·CE(y, p_T) + λ·KL(q_s ‖ p_T): the student's distribution is the target (CE on the labelled
    images only)."""
    kl = F.kl_div(
        F.log_softmax(teacher_logits, dim=1),
        F.log_softmax(student_logits, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - kl_weight) * labelled_cross_entropy(teacher_logits, labels, weight) + kl_weight * kl


@register_method("prokt", config=ProKTConfig, accepts_unlabelled=True, trains_teacher=True, recipe="mnist5k_prokt")
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
        # The student's outputs in train mode are both the teacher's target and what the student's loss
        # takes: the student's weights do not change between the two, and eval-mode outputs early in
        # training come from running BatchNorm statistics that do not yet describe the activations (val
        # accuracy 6 % at the start, below chance), which dragged the teacher toward noise.
        student_logits = self.student(images)
        if self.training:
            self.teacher.train()
            loss = teacher_loss(
                self.teacher(images), student_logits.detach().float(), labels, self.kl_weight, self.class_weights
            )
            self.teacher_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.world.average_gradients(self.teacher.parameters())  # under torchrun: one teacher on every rank
            self.teacher_optimizer.step()
            self.last_teacher_loss = loss.detach()
        teacher_logits = self._eval_logits(self.teacher, images)
        losses = {"kd": kd_loss(student_logits, teacher_logits, self.temperature)}
        if self.w_ce:
            losses["ce"] = self.w_ce * self.cross_entropy(student_logits, labels)
        return student_logits, losses

    def extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "teacher_optimizer": self.teacher_optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            self.teacher.load_state_dict(state["teacher"])
            self.teacher_optimizer.load_state_dict(state["teacher_optimizer"])
