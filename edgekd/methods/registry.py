"""The method registry: one entry per distillation method, declared in the method's own file.

    @register_method("kd", config=KDConfig, accepts_ensemble=True, default=True)
    class KD(FrozenTeacherMethod):
        @classmethod
        def from_config(cls, config, student, teacher, context): ...

An entry says what the rest of edgekd needs to know about a method without naming it: its recipe
section (`config`), whether it distils from a teacher, whether that teacher may be a list (an
ensemble), and whether the method trains its teacher (so its outputs can never be cached).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from edgekd.config import DistillSettings
from edgekd.distributed import World
from edgekd.registry import METHODS


@dataclass(frozen=True)
class MethodEntry:
    name: str
    method: type  # a DistillMethod with a from_config(config, student, teacher, context) classmethod
    config: type[DistillSettings]
    needs_teacher: bool = True
    accepts_ensemble: bool = False
    trains_teacher: bool = False
    accepts_unlabelled: bool = False  # its loss on an image without a label (label -1) needs no label
    needs_baseline: bool = False  # learns from the run's baseline student (teacher-free KD's self-teacher)
    default: bool = False  # what a recipe without `distill.method` uses
    recipe: str | None = None  # the bundled recipe that shows the method (its options for the methods table)

    @property
    def summary(self) -> str:
        return (self.config.__doc__ or self.method.__doc__ or "").strip().splitlines()[0]


def register_method(name: str, *, config: type[DistillSettings], **traits) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        METHODS.register(name, MethodEntry(name, cls, config, **traits))
        return cls

    return wrap


@dataclass
class MethodContext:
    """What building a method may need besides its section, the student and the teacher."""

    in_chans: int
    image_size: int
    new_student: Callable[[int], nn.Module] | None  # the k-th extra student (co-distillation)
    world: World
    train_images: int = 0  # the students' training set (CRD's memory bank has a row per image)
    baseline: nn.Module | None = None  # the run's trained baseline student (needs_baseline)
    data: Any = None  # the teachers' DataBundle (specialists learn from it)
    runtime: Any = None
    seed: int = 0
    train: Callable[..., Any] | None = None  # train(name, method, train_config, data) → StageResult


def build_method(config: DistillSettings, student: nn.Module, teacher: nn.Module | None, context: MethodContext):
    return METHODS.get(config.method).method.from_config(config, student, teacher, context)
