"""The recipe's sections: strict models, a training schedule, what every distillation method's section
has in common, and the data, model, export and bench sections. Method and dataset files build on these,
and names of registered things (datasets, methods, formats) are checked against the registries, so this
module sits below every one of them. (edgekd.recipe assembles the recipe and reads its YAML.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edgekd.firmware import TARGET_CHOICES
from edgekd.registry import DATASETS, FORMATS, METHODS, did_you_mean


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


def registered(kind: str, value: str, where: str = "") -> str:
    """`value`, if the registry of `kind` (dataset, format, method) has it; the error lists the known
    names. `where`: the key to name in the error, when pydantic's location is not it."""
    registry = {"dataset": DATASETS, "format": FORMATS, "method": METHODS}[kind]
    return value if value in registry else one_of(value, registry.names(), where)


def one_of(value: str, names: list[str], where: str = "") -> str:
    """`value` if it is one of `names`; else the error edgekd.recipe turns into "'key' is 'x'; expected
    one of …; did you mean …?"."""
    if value not in names:
        raise PydanticCustomError(
            "unknown_name", "{got}; expected one of {names}{hint}",
            {"got": repr(value), "names": ", ".join(names), "hint": did_you_mean(str(value), names), "where": where},
        )  # fmt: skip
    return value


class Splits(StrictModel):
    """Fractions of the data held out. Datasets with an official test set (CIFAR, an imagefolder with
    a test/ folder) use it and ignore `test`."""

    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, ge=0, lt=1)
    order: Literal["random", "ordered"] = Field(
        "random",
        description="random: a stratified seeded draw; ordered: per class, the first images train, then "
        "validation, the last test, in the dataset's own order (to reproduce another tool's split)",
    )

    @model_validator(mode="after")
    def _leave_training_data(self) -> Splits:
        if self.val + self.test >= 0.9:
            raise ValueError("splits.val + splits.test must leave at least 10% of the data to train on")
        return self


class Augmentation(StrictModel):
    """Random changes to each training image, drawn anew each time it is seen: a preset and explicit keys
    (both apply: the preset first)."""

    preset: Literal["none", "light", "standard", "strong"] = Field(
        "none",
        description="light = random resized crop (85-100 % of the area), rotation up to 8°, brightness and "
        "contrast ±10 %; standard = random resized crop (60-100 %) and TrivialAugmentWide; strong = random "
        "resized crop (35-100 %), RandAugment (2 operations, magnitude 9), colour jitter ±30 % and random "
        "erasing. Flips only with horizontal_flip (a digit or a text is not itself mirrored)",
    )
    random_crop_padding: int = Field(0, ge=0, description="pad by N pixels, then crop back at random")
    horizontal_flip: bool = False

    @property
    def random(self) -> bool:
        """Whether a training image looks different each time it is drawn."""
        return self.preset != "none" or bool(self.random_crop_padding or self.horizontal_flip)


class DataConfig(StrictModel):
    """The recipe's data section: the keys every dataset takes. A dataset with options of its own registers
    a subclass (see edgekd.datasets.synthetic), and `data_section` picks it by `dataset`."""

    dataset: str = Field(description="a registered dataset (`edgekd list datasets`)")
    root: Path | None = None
    download: bool = False
    image_size: int = Field(32, ge=8, le=1024)
    resize: Literal["crop", "pad", "squash"] = Field(
        "crop",
        description="how an image that is not square becomes image_size × image_size: crop = keep the aspect, "
        "shorter side to image_size, centre crop; pad = keep the aspect, longer side to image_size, black borders; "
        "squash = stretch",
    )
    channels: Literal[1, 3] = 3
    balance: Literal["none", "weights", "sampler"] = Field(
        "none",
        description="for a training set whose classes are not equally common: weights = each image's hard-label "
        "loss weighted by 1 / its class's share (mean weight 1); sampler = each epoch draws images with "
        "probability 1 / their class's count, with replacement, so every class is seen about equally often",
    )
    batch_size: int = Field(64, ge=2)
    workers: int = Field(0, ge=0)
    splits: Splits = Splits()
    augmentation: Augmentation = Augmentation()
    mean: list[float] | None = None
    std: list[float] | None = None
    exclude_classes: list[int] = Field(default_factory=list, description="classes the students never see in training")
    transfer_fraction: float = Field(
        1.0, gt=0, le=1, description="share of the training images the students learn from (stratified)"
    )
    unlabelled: str | None = Field(
        None,
        description="images without labels that a distilled student also learns from, by the teacher's soft "
        "targets alone: a folder (images in any layout of subfolders) or `rest` = the training images "
        "transfer_fraction leaves out, their labels dropped. The baseline never sees them",
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return registered("dataset", value)

    @model_validator(mode="after")
    def _root_when_needed(self) -> DataConfig:
        if DATASETS.get(self.dataset).needs_root and self.root is None:
            raise ValueError(f"data.root is required for dataset '{self.dataset}'")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != self.channels:
                raise ValueError(f"data.{key} needs {self.channels} values (one per channel)")
        return self


class TeacherConfig(StrictModel):
    model: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    pretrained: bool = False
    checkpoint: Path | None = None
    train: TrainConfig | None = None

    @model_validator(mode="after")
    def _has_weights(self) -> TeacherConfig:
        if self.pretrained and self.checkpoint is not None:
            raise ValueError("teacher: give either pretrained: true or checkpoint, not both")
        if not self.pretrained and self.checkpoint is None and self.train is None:
            raise ValueError("teacher needs weights: pretrained: true, a checkpoint path, or a train block")
        return self


class StudentConfig(StrictModel):
    model: str = "mobilenetv2_tiny"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    pretrained: bool = False
    checkpoint: Path | None = None


class BaselineConfig(StrictModel):
    """The same student trained without a teacher, on the same data, epochs and optimiser."""

    enabled: bool = True
    lr: float | None = Field(None, gt=0, description="the baseline's own tuned lr; default: distill.lr")
    epochs: int | None = Field(
        None, ge=1, description="the baseline's own epoch count (it sees no unlabelled images); default: distill.epochs"
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="label smoothing (Szegedy et al. 2016): KD against smoothing, measured"
    )


class ExportConfig(StrictModel):
    """Device artefacts and the checks each must pass against the PyTorch student on the test split."""

    formats: list[str] = Field(
        default_factory=lambda: ["onnx", "onnx-int8", "tflite", "tflite-int8", "c-array", "mcu-project"],
        description="registered export formats (`edgekd list formats`)",
    )
    calibration_images: int = Field(200, ge=1, description="int8 calibration images from the training split")
    verify_images: int | None = Field(None, ge=1, description="test images to verify on (default: all)")
    min_agreement_fp32: float = Field(0.995, ge=0, le=1)
    min_agreement_int8: float = Field(0.97, ge=0, le=1)
    max_int8_accuracy_drop: float = Field(0.01, ge=0, le=1)
    memory: Literal["auto", "none", "groups", "patches"] = Field(
        "auto",
        description="rewrite the int8 graph so TFLite Micro needs less arena, outputs bit-identical: auto = only "
        "when the arena exceeds the bench device's SRAM budget, with the least extra work; groups = channel "
        "groups wherever they lower the peak; patches = spatial patches (then groups) for the smallest arena; "
        "none = as converted",
    )
    memory_groups: int | None = Field(
        None, ge=2, le=10, description="channel groups per rewritten block (default: the fewest that reach the goal)"
    )
    memory_grid: tuple[int, int] | None = Field(
        None, description="patches: rows and columns of the grid, e.g. [3, 3] (default: searched)"
    )
    memory_cut: int | None = Field(
        None, ge=0, description="patches: the operator after which the patches join (default: searched)"
    )

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        return [registered("format", name) for name in value]


class BenchConfig(StrictModel):
    """What `edgekd run` benchmarks the artefacts against."""

    device: str = "cortex-m4"
    budget: str | None = Field(
        None, description="e.g. sram=256k,flash=1M,latency=100ms,accuracy=95% (default: the device's SRAM and flash)"
    )
    latency_seconds: float = Field(1.0, gt=0, description="length of each of the five latency windows")
    target: str = Field(
        "auto",
        description="run the int8 firmware in QEMU (qemu-m4, qemu-m7, qemu-m33): auto = the device's core, when a "
        "toolchain is present; none = no device run",
    )
    device_images: int = Field(100, ge=1, description="test images fed through the firmware in one boot")

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        return one_of(value, list(TARGET_CHOICES))


class LogConfig(StrictModel):
    """Logs beside metrics.csv, for tools that read them."""

    tensorboard: bool = Field(False, description="TensorBoard event files of every metric (pip install tensorboard)")


def data_section(raw: object) -> DataConfig:
    """Validate a data section with the section class its dataset registered. Options of other datasets
    are ignored, as a `--set data.dataset=…` override leaves them behind; a section that names no
    registered dataset is left to DataConfig, whose error names the dataset."""
    if isinstance(raw, DataConfig) or not isinstance(raw, dict):
        return raw
    name = raw.get("dataset")
    section = DATASETS.get(name).config if isinstance(name, str) and name in DATASETS else DataConfig
    others = {key for _, entry in DATASETS for key in entry.config.model_fields} - set(section.model_fields)
    kept = {key: value for key, value in raw.items() if key not in others}
    return section.model_validate(kept)
