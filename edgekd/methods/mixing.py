"""Mixup and CutMix inside distillation: the student and the teacher see the same mixed images, and the
teacher labels them (its soft targets replace the mixed hard labels, or are added to them).

- mixup (Zhang et al., ICLR 2018): x = λ·x_i + (1 − λ)·x_j, λ ~ Beta(α, α);
- CutMix (Yun et al., ICCV 2019): a box of area (1 − λ)·H·W from x_j pasted into x_i, λ then set to
  the share of x_i's pixels left.

The mixed labels, when used: λ·CE(y_i) + (1 − λ)·CE(y_j). A teacher that sees new pixels every step
cannot be cached; methods with this option say so (`cache_refusal`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from edgekd.config import StrictModel
from edgekd.methods.base import labelled_cross_entropy

MixKind = Literal["none", "mixup", "cutmix"]


class MixOptions(StrictModel):
    """The recipe keys a method with this option adds to its section."""

    mix: MixKind = Field("none", description="mix images inside distillation: none, mixup or cutmix")
    mix_alpha: float = Field(1.0, gt=0, description="λ ~ Beta(α, α)")
    mix_hard_labels: bool = Field(False, description="also train on the mixed hard labels (else the teacher's alone)")

    @model_validator(mode="after")
    def _no_cache_with_mixing(self):
        if self.mix != "none" and getattr(self, "cache_teacher", "auto") == "on":
            raise ValueError(
                f"distill.cache_teacher: on, but distill.mix: {self.mix} shows the teacher new images every "
                "step; use auto or off"
            )
        return self


def mix_batch(
    images: torch.Tensor, kind: MixKind, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mixed images, the partner of each image, λ: the share of each image's own pixels)."""
    partner = torch.randperm(images.shape[0], generator=generator).to(images.device)
    lam = _beta(alpha, generator)
    if kind == "mixup":
        return lam * images + (1 - lam) * images[partner], partner, lam
    height, width = images.shape[-2:]
    cut_h, cut_w = int(height * (1 - lam) ** 0.5), int(width * (1 - lam) ** 0.5)
    centre_y = int(torch.randint(height, (1,), generator=generator))
    centre_x = int(torch.randint(width, (1,), generator=generator))
    top, bottom = max(centre_y - cut_h // 2, 0), min(centre_y + cut_h // 2, height)
    left, right = max(centre_x - cut_w // 2, 0), min(centre_x + cut_w // 2, width)
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = images[partner][..., top:bottom, left:right]
    return mixed, partner, 1 - (bottom - top) * (right - left) / (height * width)


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    """Beta(α, α) from two Gamma draws (torch's Beta distribution takes no generator)."""
    x = torch._standard_gamma(torch.full((2,), alpha), generator=generator)
    return float(x[0] / x.sum())


def mixed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, partner: torch.Tensor, lam: float, weight: torch.Tensor | None = None
):
    return lam * labelled_cross_entropy(logits, labels, weight) + (1 - lam) * labelled_cross_entropy(
        logits, labels[partner], weight
    )
