"""Mean teacher, Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017.

No separate teacher: the teacher is an exponential moving average of the student's weights, updated
after every optimiser step (θ' ← d·θ' + (1 − d)·θ; as in the authors' code, d = min(1 − 1/(step + 1),
decay), so the average starts as the student and forgets its random start quickly), and it asks the
student to agree with it on every image through a consistency cost on softened outputs:

    L = w_ce · CE(y, z_s) + w(t) · mean (softmax(z_s/T) − softmax(z_t/T))²

w(t) ramps up as exp(−5 (1 − t)²) over the first `rampup_epochs` (the paper's sigmoid ramp-up); the
mean is over batch and classes. With `input_noise` σ > 0 the student and the teacher each see the batch
plus their own draw of Gaussian noise (the paper's independent input noise; σ in normalised-input units).
Batch-norm statistics are averaged like weights. The student is what edgekd saves and exports; the run's
summary also gives the averaged teacher's test accuracy.

Defaults, chosen on the validation split of `mnist5k_low_data` (benchmarks/suite/teacher_curves.py,
RESULTS.md "teacher curves: mean-teacher"): decay 0.95 (an average over about 20 steps) and consistency
weight 1. The paper's 0.999 suits runs of many thousands of steps; ours have 600–800, so with the ramped
decay the "average" was the uniform mean of every weight since the start, at 10–40 % validation accuracy
for most of the run, and a weight of 10 held the student to it. At a peak learning rate of 0.05 even a
100-step average (0.99) stays near chance for 40 epochs.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgekd.config import DistillSettings
from edgekd.methods.base import DistillMethod
from edgekd.methods.registry import register_method
from edgekd.runtime import evaluate


class MeanTeacherConfig(DistillSettings):
    """Mean teacher (Tarvainen & Valpola 2017): an EMA of the student teaches it through a consistency cost."""

    method: Literal["mean-teacher"] = "mean-teacher"
    decay: float = Field(0.95, ge=0, lt=1, description="EMA decay d (0.95: a 20-step window; RESULTS.md)")
    ramp_decay: bool = Field(True, description="d = min(1 − 1/(step + 1), decay), as the authors' code")
    w_ce: float = Field(1.0, ge=0)
    w_consistency: float = Field(1.0, ge=0, description="the weight after the ramp-up")
    rampup_epochs: float = Field(5.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    input_noise: float = Field(
        0.0, ge=0, description="σ of Gaussian noise added to the student's and the teacher's inputs, independently"
    )


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean squared difference of the softened class probabilities."""
    return F.mse_loss(F.softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1))


def sigmoid_rampup(epoch: float, length: float) -> float:
    if length == 0:
        return 1.0
    phase = 1.0 - min(max(epoch, 0.0), length) / length
    return math.exp(-5.0 * phase * phase)


@register_method(
    "mean-teacher",
    config=MeanTeacherConfig,
    accepts_unlabelled=True,
    needs_teacher=False,
    recipe="mnist5k_mean_teacher",
)
class MeanTeacher(DistillMethod):
    results_key = "mean_teacher"

    def __init__(
        self,
        student: nn.Module,
        *,
        decay: float,
        ramp_decay: bool,
        w_ce: float,
        w_consistency: float,
        rampup_epochs: float,
        temperature: float,
        input_noise: float,
    ):
        super().__init__(student)
        self.input_noise = input_noise
        self.teacher = copy.deepcopy(student).requires_grad_(False).eval()
        self.decay, self.ramp_decay = decay, ramp_decay
        self.w_ce, self.w_consistency, self.rampup_epochs, self.temperature = (
            w_ce, w_consistency, rampup_epochs, temperature,
        )  # fmt: skip
        self.steps = 0
        self.weight = 0.0

    @classmethod
    def from_config(cls, config: MeanTeacherConfig, student: nn.Module, teacher: None, context) -> MeanTeacher:
        return cls(student, **config.method_options())

    def train(self, mode: bool = True) -> MeanTeacher:
        super().train(mode)
        self.teacher.eval()
        return self

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.weight = self.w_consistency * sigmoid_rampup(epoch - 1, self.rampup_epochs)

    def noisy(self, images: torch.Tensor) -> torch.Tensor:
        """The paper's input noise: each model sees its own draw, so agreeing means being robust to it."""
        if not self.training or self.input_noise == 0:
            return images
        return images + self.input_noise * torch.randn_like(images)

    def forward(self, images, labels, index=None):
        logits = self.student(self.noisy(images))
        losses = {"ce": self.w_ce * self.cross_entropy(logits, labels)}
        if self.training:
            with torch.no_grad():
                teacher_logits = self.teacher(self.noisy(images))
            losses["consistency"] = self.weight * consistency_loss(logits, teacher_logits, self.temperature)
        return logits, losses

    @torch.no_grad()
    def after_step(self) -> None:
        self.steps += 1
        decay = min(1 - 1 / (self.steps + 1), self.decay) if self.ramp_decay else self.decay
        for average, current in zip(
            self.teacher.state_dict().values(), self.student.state_dict().values(), strict=True
        ):
            if average.is_floating_point():
                average.mul_(decay).add_(current.detach(), alpha=1 - decay)
            else:
                average.copy_(current)

    def extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "steps": self.steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.steps = state["steps"]

    def results(self, batches, runtime) -> dict[str, Any]:
        """The averaged teacher's test accuracy beside the student's."""
        return {"teacher_accuracy": evaluate(self.teacher, batches, runtime)[1], "steps": self.steps}

    @classmethod
    def results_markdown(cls, results: dict[str, Any]) -> list[str]:
        found = results.get(cls.results_key)
        if not found:
            return []
        return [f"Mean teacher: the weight average (EMA) of the student, after {found['steps']:,} steps, scores "
                f"{found['teacher_accuracy']:.2%} on the test split (the student is what is exported)."]  # fmt: skip
