"""Distillation methods, one file each. Adding a method = a file here and a line in `build_method`."""

from __future__ import annotations

from torch import nn

from edgekd.methods.base import DistillMethod
from edgekd.methods.kd import KD
from edgekd.methods.plain import Plain
from edgekd.recipe import KDConfig


def build_method(config: KDConfig, student: nn.Module, teacher: nn.Module) -> DistillMethod:
    if config.method == "kd":
        return KD(student, teacher, temperature=config.temperature, w_ce=config.w_ce, w_kd=config.w_kd)
    raise ValueError(f"no method '{config.method}'")  # unreachable: the recipe schema lists the methods


__all__ = ["DistillMethod", "KD", "Plain", "build_method"]
