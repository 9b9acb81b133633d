"""Intermediate features through timm's uniform API: `forward_intermediates` and `feature_info`."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import RecipeError


def stage_index(model: nn.Module, stage: int | str | None) -> int:
    """A `feature_info` entry by index (negative counts from the end), by module name, or the middle one."""
    names = [info["module"] for info in model.feature_info]
    if stage is None:
        return len(names) // 2
    if isinstance(stage, str):
        if stage not in names:
            raise RecipeError(
                f"no feature stage '{stage}' in {type(model).__name__}; its stages are {', '.join(names)}"
            )
        return names.index(stage)
    if not -len(names) <= stage < len(names):
        raise RecipeError(
            f"feature stage {stage} out of range: {type(model).__name__} has {len(names)} ({', '.join(names)})"
        )
    return stage % len(names)


def stage_pairs(
    student: nn.Module, teacher: nn.Module, stages: list[tuple[int | str, int | str]]
) -> tuple[list[int], list[int]]:
    """(student indices, teacher indices) of [student, teacher] stage pairs; by default every stage but
    the first, paired by position. A stage either network lacks is bad input."""
    pairs = stages or [(i, i) for i in range(1, len(student.feature_info))]
    return [stage_index(student, s) for s, _ in pairs], [stage_index(teacher, t) for _, t in pairs]


def logits_and_features(
    model: nn.Module, images: torch.Tensor, indices: list[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    final, intermediates = model.forward_intermediates(images, indices=indices)
    return model.forward_head(final), intermediates


@torch.no_grad()
def feature_shapes(model: nn.Module, indices: list[int], in_chans: int, image_size: int) -> list[tuple[int, ...]]:
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    probe = torch.zeros(1, in_chans, image_size, image_size, device=parameter.device)
    _, features = model.forward_intermediates(probe, indices=indices)
    model.train(was_training)
    return [tuple(f.shape[1:]) for f in features]
