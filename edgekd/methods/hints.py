"""FitNets hints, Romero et al. 2015, "FitNets: Hints for thin deep nets".

A connector (the paper's regressor) maps a student stage's feature map onto a teacher stage's:
a conv (1×1, or 3×3 when the student map is larger and must be strided down) + BatchNorm to match
channels, and a resize when the spatial sizes still differ. Loss: w_ce·CE + w_hint·MSE(connector(f_s), f_t)
(+ w_kd·KD). `joint` trains everything at once (as in RepDistiller); `stagewise` follows the paper:
for the first `hint_epochs` only the hint is minimised (so only the student's lower part and the
connector learn), then the classification/KD losses take over. The connector is training-only.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from edgekd.config import DistillSettings
from edgekd.methods.base import FrozenTeacherMethod
from edgekd.methods.features import feature_shapes, logits_and_features, stage_index
from edgekd.methods.kd import kd_loss
from edgekd.methods.registry import register_method


class HintsConfig(DistillSettings):
    """FitNets (Romero et al. 2015): a connector maps a student stage onto a teacher stage, L2 between them."""

    method: Literal["hints"] = "hints"
    student_stage: int | str | None = Field(None, description="feature_info index or module name; default: middle")
    teacher_stage: int | str | None = None
    w_ce: float = Field(1.0, ge=0)
    w_hint: float = Field(1.0, ge=0)
    w_kd: float = Field(0.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    hint_schedule: Literal["joint", "stagewise"] = "joint"
    hint_epochs: int = Field(0, ge=0, description="stagewise: epochs on the hint alone before the task losses")

    @model_validator(mode="after")
    def _stagewise_needs_epochs(self) -> HintsConfig:
        if self.hint_schedule == "stagewise" and not 0 < self.hint_epochs < self.epochs:
            raise ValueError("hint_schedule: stagewise needs 0 < hint_epochs < epochs")
        return self


class Connector(nn.Module):
    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        (s_channels, s_height, _), (t_channels, t_height, _) = student_shape, teacher_shape
        stride = s_height // t_height if s_height > t_height and s_height % t_height == 0 else 1
        kernel = 3 if stride > 1 else 1
        self.conv = nn.Conv2d(s_channels, t_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(t_channels)
        self.size = teacher_shape[1:]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mapped = self.bn(self.conv(features))
        if tuple(mapped.shape[-2:]) != tuple(self.size):
            mapped = F.interpolate(mapped, size=self.size, mode="bilinear", align_corners=False)
        return mapped


@register_method("hints", config=HintsConfig, accepts_unlabelled=True, recipe="mnist5k_hints")
class Hints(FrozenTeacherMethod):
    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        in_chans: int,
        image_size: int,
        student_stage: int | str | None,
        teacher_stage: int | str | None,
        w_ce: float,
        w_hint: float,
        w_kd: float,
        temperature: float,
        stagewise: bool,
        hint_epochs: int,
    ):
        student_index, teacher_index = stage_index(student, student_stage), stage_index(teacher, teacher_stage)
        super().__init__(student, teacher, teacher_stages=[teacher_index])
        self.student_index, self.teacher_index = student_index, teacher_index
        student_shape = feature_shapes(student, [self.student_index], in_chans, image_size)[0]
        teacher_shape = feature_shapes(teacher, [self.teacher_index], in_chans, image_size)[0]
        self.connector = Connector(student_shape, teacher_shape)
        self.w_ce, self.w_hint, self.w_kd, self.temperature = w_ce, w_hint, w_kd, temperature
        self.stagewise, self.hint_epochs = stagewise, hint_epochs
        self.hint_only = False
        self.skips_parameters = stagewise  # the hint-only epochs leave the student's head unused

    @classmethod
    def check(cls, config: HintsConfig, student: nn.Module, teacher: nn.Module) -> None:
        stage_index(student, config.student_stage), stage_index(teacher, config.teacher_stage)

    @classmethod
    def from_config(cls, config: HintsConfig, student: nn.Module, teacher: nn.Module, context) -> Hints:
        return cls(
            student,
            teacher,
            in_chans=context.in_chans,
            image_size=context.image_size,
            stagewise=config.hint_schedule == "stagewise",
            **config.method_options(exclude={"hint_schedule"}),
        )

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.hint_only = self.stagewise and epoch <= self.hint_epochs

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "connector": self.connector}

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, index=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student_logits, (student_features,) = logits_and_features(self.student, images, [self.student_index])
        teacher_logits, (teacher_features,) = self.teacher_outputs(images, index)
        hint = self.w_hint * F.mse_loss(self.connector(student_features), teacher_features)
        if self.hint_only:
            return student_logits, {"hint": hint}
        losses = {"ce": self.w_ce * self.cross_entropy(student_logits, labels), "hint": hint}
        if self.w_kd:
            losses["kd"] = self.w_kd * kd_loss(student_logits, teacher_logits, self.temperature)
        if self.stagewise:  # after the hint stage the paper trains on the task losses alone
            losses.pop("hint")
        return student_logits, losses
