"""The recipe's building blocks that method and dataset files need too: strict models, a training
schedule, and what every distillation method's section has in common. (edgekd.recipe holds the
recipe itself; keeping these apart lets a method file define its own section without a cycle.)"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StrictModel(BaseModel):
    # inf and nan parse as YAML floats (.inf, .nan) but would only fail hours later, as a NaN loss.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class TrainConfig(StrictModel):
    epochs: int = Field(ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    schedule: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"
    milestones: list[int] = Field(
        default_factory=list, description="epochs where a step schedule multiplies lr by gamma"
    )
    gamma: float = Field(0.1, gt=0)


class DistillSettings(TrainConfig):
    """What every distillation method's section has besides its own loss settings. A method's section
    subclasses this and fixes `method` to its name."""

    method: str
    cache_teacher: Literal["auto", "on", "off"] = Field(
        "auto",
        description="compute a frozen teacher's outputs once instead of every step; auto: when no random "
        "augmentation changes what the teacher sees",
    )

    @field_validator("cache_teacher", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: object) -> object:
        """YAML 1.1 (PyYAML) reads a bare `on` / `off` as true / false."""
        return ("on" if value else "off") if isinstance(value, bool) else value

    def method_options(self, exclude: set[str] | frozenset[str] = frozenset()) -> dict:
        """The method's own keys (those beyond the settings every method shares), by name: what its
        constructor takes."""
        shared = set(DistillSettings.model_fields)
        return {key: getattr(self, key) for key in type(self).model_fields if key not in shared | set(exclude)}


EnsembleRule = Literal["arithmetic", "geometric"]
