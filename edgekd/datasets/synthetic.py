"""Class-dependent random patterns: a dataset with options of its own (`data.synthetic:`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from edgekd.config import DataConfig, StrictModel
from edgekd.data import DataBundle, register_dataset, resized, split_tensors


class SyntheticOptions(StrictModel):
    num_classes: int = Field(4, ge=2)
    samples_per_class: int = Field(64, ge=4)


class SyntheticConfig(DataConfig):
    """The data section of `dataset: synthetic`: the common keys, and the patterns under `synthetic:`."""

    synthetic: SyntheticOptions = SyntheticOptions()


@register_dataset("synthetic", config=SyntheticConfig)
def synthetic(config: SyntheticConfig, seed: int) -> DataBundle:
    """Class-dependent random patterns, learnable in seconds: for tests and smoke runs."""
    images, labels = patterns(config.synthetic, seed)
    names = [f"class_{c}" for c in range(config.synthetic.num_classes)]
    return split_tensors(config, seed, resized(config, images), labels, names, None)


def patterns(options: SyntheticOptions, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class is a smooth random pattern; samples are that pattern plus noise. Learnable in seconds."""
    generator = torch.Generator().manual_seed(seed)
    n_classes, per_class = options.num_classes, options.samples_per_class
    templates = torch.rand(n_classes, 1, 4, 4, generator=generator)
    templates = F.interpolate(templates, size=(16, 16), mode="bilinear", align_corners=False)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    noise = 0.25 * torch.randn(len(labels), 1, 16, 16, generator=generator)
    return (templates[labels] + noise).clamp(0, 1), labels
