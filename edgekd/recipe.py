"""The recipe: one YAML file that says what to distil. The only module that knows the YAML's shape."""

from __future__ import annotations

import difflib
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from edgekd.errors import RecipeError

DATASETS = ("digits", "mnist5k", "imagefolder", "cifar10", "cifar100", "synthetic")
FORMATS = ("onnx", "onnx-int8", "tflite", "tflite-int8", "c-array", "mcu-project")


class StrictModel(BaseModel):
    # inf and nan parse as YAML floats (.inf, .nan) but would only fail hours later, as a NaN loss.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


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
    random_crop_padding: int = Field(0, ge=0, description="pad by N pixels, then crop back at random")
    horizontal_flip: bool = False


class SyntheticData(StrictModel):
    """Class-dependent random patterns: for tests and smoke runs only."""

    num_classes: int = Field(4, ge=2)
    samples_per_class: int = Field(64, ge=4)


class DataConfig(StrictModel):
    dataset: Literal[DATASETS]
    root: Path | None = None
    download: bool = False
    image_size: int = Field(32, ge=8, le=1024)
    channels: Literal[1, 3] = 3
    batch_size: int = Field(64, ge=2)
    workers: int = Field(0, ge=0)
    splits: Splits = Splits()
    augmentation: Augmentation = Augmentation()
    mean: list[float] | None = None
    std: list[float] | None = None
    synthetic: SyntheticData = SyntheticData()
    exclude_classes: list[int] = Field(default_factory=list, description="classes the students never see in training")
    transfer_fraction: float = Field(
        1.0, gt=0, le=1, description="share of the training images the students learn from (stratified)"
    )

    @model_validator(mode="after")
    def _root_when_needed(self) -> DataConfig:
        if self.dataset in ("imagefolder", "cifar10", "cifar100") and self.root is None:
            raise ValueError(f"data.root is required for dataset '{self.dataset}'")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != self.channels:
                raise ValueError(f"data.{key} needs {self.channels} values (one per channel)")
        return self


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


class DistillSettings(TrainConfig):
    """What every distillation method's section has besides its own loss settings."""

    cache_teacher: Literal["auto", "on", "off"] = Field(
        "auto",
        description="compute a frozen teacher's outputs once instead of every step; auto: when no random "
        "augmentation changes what the teacher sees",
    )


class KDConfig(DistillSettings):
    """Hinton et al. 2015: w_ce * CE(y, z_s) + w_kd * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))."""

    method: Literal["kd"] = "kd"
    temperature: float = Field(4.0, gt=0)
    w_ce: float = Field(0.1, ge=0)
    w_kd: float = Field(0.9, ge=0)
    ensemble: Literal["arithmetic", "geometric"] = Field("arithmetic", description="how a teacher list's targets mix")


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


class ProKTConfig(DistillSettings):
    """ProKT (Shi et al. 2021): the teacher steps toward the student each batch, the student follows it."""

    method: Literal["prokt"] = "prokt"
    kl_weight: float = Field(0.4, ge=0, le=1, description="λ in the teacher's (1−λ)·CE + λ·KL(student ‖ teacher)")
    temperature: float = Field(1.0, gt=0)
    w_ce: float = Field(0.0, ge=0)
    teacher_lr: float = Field(0.001, gt=0)
    teacher_optimizer: Literal["sgd", "adamw"] = "sgd"


class DKDConfig(DistillSettings):
    """Decoupled KD (Zhao et al. 2022): CE + warm-up · (α·TCKD + β·NCKD) · T²."""

    method: Literal["dkd"] = "dkd"
    w_ce: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    warmup_epochs: float | None = Field(None, ge=0, description="default: the paper's 20 of 240 epochs, scaled")
    ensemble: Literal["arithmetic", "geometric"] = Field("arithmetic", description="how a teacher list's targets mix")

    def warmup(self) -> float:
        return self.warmup_epochs if self.warmup_epochs is not None else max(1.0, 20 * self.epochs / 240)


class ATConfig(DistillSettings):
    """Attention transfer (Zagoruyko & Komodakis 2017) between chosen stage pairs."""

    method: Literal["at"] = "at"
    stages: list[tuple[int | str, int | str]] = Field(default_factory=list, description="[student, teacher] pairs")
    w_ce: float = Field(1.0, ge=0)
    w_at: float = Field(1000.0, ge=0)
    w_kd: float = Field(0.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    p: float = Field(2.0, gt=0)


class CoDistillConfig(DistillSettings):
    """Co-distillation: N students teach each other (no teacher); the first is saved and exported."""

    method: Literal["codistill"] = "codistill"
    students: int = Field(2, ge=2, le=8)
    warmup_epochs: int = Field(1, ge=0, description="epochs on the labels alone before the students distil")
    w_ce: float = Field(1.0, ge=0)
    w_kd: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)


METHODS = {
    "kd": KDConfig,
    "hints": HintsConfig,
    "prokt": ProKTConfig,
    "dkd": DKDConfig,
    "at": ATConfig,
    "codistill": CoDistillConfig,
}


def _method_of(value: Any) -> str:
    return value.get("method", "kd") if isinstance(value, dict) else getattr(value, "method", "kd")


# One union member per method, told apart by `method` (default kd).
DistillConfig = Annotated[
    Union[tuple(Annotated[config, Tag(name)] for name, config in METHODS.items())],  # noqa: UP007
    Discriminator(_method_of),
]


class BaselineConfig(StrictModel):
    """The same student trained without a teacher, on the same data, epochs and optimiser."""

    enabled: bool = True
    lr: float | None = Field(None, gt=0, description="the baseline's own tuned lr; default: distill.lr")


class ExportConfig(StrictModel):
    """Device artefacts and the checks each must pass against the PyTorch student on the test split."""

    formats: list[Literal[FORMATS]] = list(FORMATS)
    calibration_images: int = Field(200, ge=1, description="int8 calibration images from the training split")
    verify_images: int | None = Field(None, ge=1, description="test images to verify on (default: all)")
    min_agreement_fp32: float = Field(0.995, ge=0, le=1)
    min_agreement_int8: float = Field(0.97, ge=0, le=1)
    max_int8_accuracy_drop: float = Field(0.01, ge=0, le=1)


class BenchConfig(StrictModel):
    """What `edgekd run` benchmarks the artefacts against."""

    device: str = "cortex-m4"
    budget: str | None = Field(
        None, description="e.g. sram=256k,flash=1M,latency=100ms,accuracy=95% (default: the device's SRAM and flash)"
    )
    latency_seconds: float = Field(1.0, gt=0, description="length of each of the five latency windows")
    target: Literal["auto", "none", "qemu-m4", "qemu-m7"] = Field(
        "auto", description="run the int8 firmware in QEMU: auto = the device's core, when a toolchain is present"
    )
    device_images: int = Field(100, ge=1, description="test images fed through the firmware in one boot")


class Recipe(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = Field(0, ge=0, le=2**32 - 1, description="numpy and scikit-learn take seeds in 0 .. 2^32-1")
    output_dir: Path = Path("runs")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = True
    amp: bool = False
    data: DataConfig
    teacher: TeacherConfig | list[TeacherConfig] | None = Field(
        None, description="one teacher, or a list (an ensemble); none for codistill"
    )
    student: StudentConfig = StudentConfig()
    distill: DistillConfig
    baseline: BaselineConfig = BaselineConfig()
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()

    @model_validator(mode="after")
    def _teacher_cache_must_be_possible(self) -> Recipe:
        if self.distill.cache_teacher != "on":
            return self
        if self.distill.method in ("prokt", "codistill"):
            reason = "ProKT trains its teacher" if self.distill.method == "prokt" else "co-distillation has no teacher"
            raise ValueError(f"distill.cache_teacher: on, but {reason}; use auto or off")
        augmentation = self.data.augmentation
        if augmentation.random_crop_padding or augmentation.horizontal_flip:
            raise ValueError(
                "distill.cache_teacher: on, but data.augmentation is random (the teacher would see other pixels "
                "than the cached ones); set it to auto or off, or turn the augmentation off"
            )
        return self

    @model_validator(mode="after")
    def _ensembles_need_logit_methods(self) -> Recipe:
        if self.teacher is None and self.distill.method != "codistill":
            raise ValueError(f"missing required key 'teacher' (method {self.distill.method} distils from a teacher)")
        if isinstance(self.teacher, list):
            if not self.teacher:
                raise ValueError("teacher: an empty list; give one teacher or several")
            if self.distill.method not in ("kd", "dkd"):
                raise ValueError(f"a teacher list (ensemble) works with methods kd and dkd, not {self.distill.method}")
        return self

    @property
    def teachers(self) -> list[TeacherConfig]:
        """The teachers the pipeline trains or loads (none for codistill, which needs none)."""
        if self.distill.method == "codistill" or self.teacher is None:
            return []
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]

    def baseline_train_config(self) -> TrainConfig:
        """The distill stage's training settings, with the baseline's own lr if it has one."""
        settings = TrainConfig.model_validate(self.distill.model_dump(include=set(TrainConfig.model_fields)))
        if self.baseline.lr is not None:
            settings = settings.model_copy(update={"lr": self.baseline.lr})
        return settings

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- loading


def bundled_recipes() -> dict[str, Path]:
    """Recipes shipped with edgekd, by name."""
    folder = resources.files("edgekd.recipes")
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def resolve_recipe_path(recipe: str | Path) -> Path:
    path = Path(recipe)
    if path.is_file():
        return path
    bundled = bundled_recipes()
    if str(recipe) in bundled:
        return bundled[str(recipe)]
    if path.exists():
        raise RecipeError(f"recipe {path} is not a file")
    hint = _did_you_mean(str(recipe), list(bundled))
    raise RecipeError(
        f"recipe {recipe} not found: give a YAML path or a bundled name ({', '.join(sorted(bundled))}){hint}"
    )


def load_recipe(recipe: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = resolve_recipe_path(recipe)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}: malformed YAML{where}: {problem}") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path} is not a text file; a recipe is YAML (UTF-8)") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping (name:, data:, teacher:, ...), got {type(raw).__name__}")
    for override in overrides or []:
        apply_override(raw, override)
    return parse_recipe(raw, source=str(path))


def apply_override(raw: dict, override: str) -> None:
    """`distill.epochs=3`: set a dotted key; the value is parsed as YAML (numbers, booleans, lists)."""
    key, sep, text = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"--set {override!r}: expected KEY=VALUE with a dotted key, e.g. distill.epochs=3")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise RecipeError(f"--set {override!r}: the value is not valid YAML") from None
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"--set {override!r}: '{'.'.join(parts[: depth + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_recipe(raw: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        # A misspelt key is also a missing one: the unknown key, with its suggestion, says more.
        errors = sorted(
            exc.errors(), key=lambda error: (error["type"] != "extra_forbidden", error["type"] == "list_type")
        )
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise RecipeError(f"{source}: {_describe(errors[0])}{more}") from None


def _describe(error: dict) -> str:
    # Pydantic names the union member it tried in the path ("function-after[...]", "list[...]"): drop it.
    loc = [str(part) for part in error["loc"] if not re.search(r"[\[(]", str(part))]
    if loc[:1] == ["distill"] and len(loc) > 1 and loc[1] in METHODS:  # pydantic puts the method tag in the path
        method, loc = loc[1], [loc[0], *loc[2:]]
    else:
        method = None
    key = ".".join(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        valid = list(METHODS[method].model_fields) if method else _fields_at(Recipe, loc[:-1])
        return f"unknown key '{key}'{_did_you_mean(loc[-1], valid)}"
    if kind == "union_tag_invalid":
        got = error.get("ctx", {}).get("tag")
        return (
            f"'{key}.method' is {got!r}; expected one of {', '.join(METHODS)}{_did_you_mean(str(got), list(METHODS))}"
        )
    if kind == "missing":
        return f"missing required key '{key}'"
    if kind in ("literal_error", "enum"):
        options = re.findall(r"'([^']*)'|(\d+)", error.get("ctx", {}).get("expected", ""))
        choices = [a or b for a, b in options]
        got = error.get("input")
        return f"'{key}' is {got!r}; expected one of {', '.join(choices)}{_did_you_mean(str(got), choices)}"
    message = error["msg"].removeprefix("Value error, ")
    if not loc:
        return message
    return f"'{key}': {message} (got {error.get('input')!r})"


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The valid keys of the section at `loc` (for suggestions)."""
    for part in loc:
        if part.isdigit():  # an index into a list of sections (a teacher list)
            continue
        field = model.model_fields.get(part)
        nested = _model_in(field.annotation) if field else None
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            found = _model_in(member)
            if found is not None:
                return found
    return None
