"""A third party's extension, registered through edgekd's public registry API only: a distillation method
(logit matching by mean squared error, Ba & Caruana 2014), an export format (the student's weights as a
NumPy archive, checked by reloading them) and a dataset with an option of its own (stripes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

import edgekd
from edgekd.checks import holds
from edgekd.config import DataConfig, DistillSettings, StrictModel
from edgekd.data import DataBundle, resized, split_tensors
from edgekd.methods import FrozenTeacherMethod


class LogitMatchingConfig(DistillSettings):
    """Ba & Caruana 2014: CE(y, z_s) + w · mean squared error between student and teacher logits."""

    method: Literal["toy-logit-mse"] = "toy-logit-mse"
    weight: float = Field(1.0, ge=0)


@edgekd.register_method("toy-logit-mse", config=LogitMatchingConfig)
class LogitMatching(FrozenTeacherMethod):
    def __init__(self, student, teacher, weight: float):
        super().__init__(student, teacher)
        self.weight = weight

    @classmethod
    def from_config(cls, config: LogitMatchingConfig, student, teacher, context) -> LogitMatching:
        return cls(student, teacher, config.weight)

    def forward(self, images, labels, index=None):
        student_logits = self.student(images)
        teacher_logits = self.teacher_logits(images, index)
        return student_logits, {
            "ce": F.cross_entropy(student_logits, labels),
            "mse": self.weight * F.mse_loss(student_logits, teacher_logits),
        }


@edgekd.register_format("toy-npz", file="student.npz")
def weights_archive(job, path: Path) -> dict[str, Any]:
    """The student's state dict as a NumPy archive (.npz), reloaded to check every tensor."""
    state = {key: value.detach().cpu().numpy() for key, value in job.model.state_dict().items()}
    np.savez(path, **state)
    with np.load(path) as archive:
        same = all(torch.equal(torch.from_numpy(archive[key]), job.model.state_dict()[key]) for key in state)
    return {"info": {"tensors": len(state)}, "checks": [holds("round trip", same, f"{len(state)} tensors reloaded")]}


class StripesOptions(StrictModel):
    period: int = Field(4, ge=2, description="pixels per stripe pair")


class StripesConfig(DataConfig):
    """`dataset: toy-stripes`: the common data keys, and `stripes: {period: N}`."""

    stripes: StripesOptions = StripesOptions()


@edgekd.register_dataset("toy-stripes", config=StripesConfig)
def stripes(config: StripesConfig, seed: int) -> DataBundle:
    """Horizontal or vertical stripes with noise: two classes."""
    generator = torch.Generator().manual_seed(seed)
    coordinate = torch.arange(16) // (config.stripes.period // 2) % 2
    patterns = torch.stack([coordinate[:, None].expand(16, 16), coordinate[None, :].expand(16, 16)]).float()
    labels = torch.arange(2).repeat(40)
    images = (patterns[labels] + 0.2 * torch.randn(len(labels), 16, 16, generator=generator)).clamp(0, 1)
    return split_tensors(config, seed, resized(config, images.unsqueeze(1)), labels, ["horizontal", "vertical"], None)
