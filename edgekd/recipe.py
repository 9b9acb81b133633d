"""The recipe: one YAML file that says what to distil. The only module that knows the YAML's shape."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgekd.config import (
    BaselineConfig,
    BenchConfig,
    DataConfig,
    DistillSettings,
    ExportConfig,
    LogConfig,
    StrictModel,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    data_section,
    registered,
)
from edgekd.errors import RecipeError
from edgekd.registry import DATASETS, METHODS, bundled_files, default_method, did_you_mean

__all__ = ["DataConfig", "DistillSettings", "Recipe", "StrictModel", "TrainConfig", "load_recipe", "parse_recipe"]


class Recipe(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = Field(0, ge=0, le=2**32 - 1, description="numpy and scikit-learn take seeds in 0 .. 2^32-1")
    output_dir: Path = Path("runs")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool | Literal["auto"] = Field(
        "auto",
        description="train in the channels_last memory format; auto: each stage measures both on its first "
        "batch and takes channels_last if it is at least 10 % faster (which wins depends on the CPU), once per "
        "machine and model",
    )
    amp: bool = False
    torch_compile: bool = Field(
        False,
        description="torch.compile each training step (opt-in: compiling comes before the first step; "
        "benchmarks/suite/throughput.py --compile measures whether it pays)",
    )
    data: SerializeAsAny[DataConfig] = Field(description="the dataset's section: `dataset` picks it")
    teacher: TeacherConfig | list[TeacherConfig] | None = Field(
        None, description="one teacher, or a list (an ensemble); none for methods without a teacher"
    )
    student: StudentConfig = StudentConfig()
    distill: SerializeAsAny[DistillSettings] = Field(description="the method's section: `method` picks it")
    baseline: BaselineConfig = BaselineConfig()
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()
    log: LogConfig = LogConfig()

    @field_validator("data", mode="before")
    @classmethod
    def _dataset_section(cls, value: Any) -> Any:
        """Validate `data` with the section of the dataset it names (its own options beside the common keys)."""
        return data_section(value)

    @field_validator("distill", mode="before")
    @classmethod
    def _method_section(cls, value: Any) -> Any:
        """Validate `distill` with the section of the method it names (the registry's default if none)."""
        if isinstance(value, DistillSettings) or not isinstance(value, dict):
            return value
        name = registered("method", value.get("method", default_method()), where="distill.method")
        return METHODS.get(name).config.model_validate({**value, "method": name})

    @property
    def method(self):
        """The registry entry of the distillation method: what it needs and does."""
        return METHODS.get(self.distill.method)

    @model_validator(mode="after")
    def _teacher_cache_must_be_possible(self) -> Recipe:
        if self.distill.cache_teacher != "on":
            return self
        method = self.method
        if method.trains_teacher or not method.needs_teacher:
            reason = "trains its teacher" if method.trains_teacher else "has no teacher"
            raise ValueError(f"distill.cache_teacher: on, but method {method.name} {reason}; use auto or off")
        augmentation = self.data.augmentation
        if augmentation.random:
            raise ValueError(
                "distill.cache_teacher: on, but data.augmentation is random (the teacher would see other pixels "
                "than the cached ones); set it to auto or off, or turn the augmentation off"
            )
        return self

    @model_validator(mode="after")
    def _teachers_fit_the_method(self, info: ValidationInfo) -> Recipe:
        method = self.method
        given = (info.context or {}).get("teacher_given", False)  # the Python API handed in a teacher module
        if method.needs_baseline and not self.baseline.enabled:
            raise ValueError(f"method {method.name} learns from the baseline student; set baseline.enabled: true")
        if self.teacher is None and method.needs_teacher and not given:
            raise ValueError(f"missing required key 'teacher' (method {method.name} distils from a teacher)")
        if isinstance(self.teacher, list):
            if not self.teacher:
                raise ValueError("teacher: an empty list; give one teacher or several")
            if not method.accepts_ensemble:
                able = ", ".join(name for name, entry in METHODS if entry.accepts_ensemble)
                raise ValueError(f"a teacher list (ensemble) works with methods {able}, not {method.name}")
        if self.data.unlabelled is not None and not method.accepts_unlabelled:
            able = ", ".join(name for name, entry in METHODS if entry.accepts_unlabelled)
            raise ValueError(
                f"data.unlabelled: method {method.name} needs every image's label; methods that learn from "
                f"unlabelled images: {able}"
            )
        return self

    @property
    def teachers(self) -> list[TeacherConfig]:
        """The teachers the pipeline trains or loads (none for a method that needs none)."""
        if not self.method.needs_teacher or self.teacher is None:
            return []
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]

    def baseline_train_config(self) -> TrainConfig:
        """The distill stage's training settings, with the baseline's own lr and epochs if it has them."""
        settings = TrainConfig.model_validate(self.distill.model_dump(include=set(TrainConfig.model_fields)))
        own = {key: getattr(self.baseline, key) for key in ("lr", "epochs") if getattr(self.baseline, key) is not None}
        return settings.model_copy(update=own) if own else settings

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- loading


def bundled_recipes() -> dict[str, Path]:
    """Recipes shipped with edgekd, by name."""
    return bundled_files("edgekd.recipes")


def resolve_recipe_path(recipe: str | Path) -> Path:
    path = Path(recipe)
    if path.is_file():
        return path
    bundled = bundled_recipes()
    if str(recipe) in bundled:
        return bundled[str(recipe)]
    if path.exists():
        raise RecipeError(f"recipe {path} is not a file")
    hint = did_you_mean(str(recipe), list(bundled))
    raise RecipeError(
        f"recipe {recipe} not found: give a YAML path or a bundled name ({', '.join(sorted(bundled))}){hint}"
    )


def load_recipe(recipe: str | Path, overrides: list[str] | None = None, *, teacher_given: bool = False) -> Recipe:
    """A recipe file (or bundled name) with `--set` overrides, validated."""
    raw, source = read_recipe(recipe, overrides)
    return parse_recipe(raw, source=source, teacher_given=teacher_given)


def read_recipe(recipe: str | Path, overrides: list[str] | None = None) -> tuple[dict, str]:
    """The recipe file's mapping with the overrides applied, not yet validated, and where it came from."""
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
    return raw, str(path)


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


def parse_recipe(raw: dict, source: str = "recipe", *, teacher_given: bool = False) -> Recipe:
    """Validate a recipe; `teacher_given`: the caller hands in the teacher module (the Python API)."""
    try:
        return Recipe.model_validate(raw, context={"teacher_given": teacher_given})
    except ValidationError as exc:
        # A misspelt key is also a missing one: the unknown key, with its suggestion, says more.
        errors = sorted(
            exc.errors(), key=lambda error: (error["type"] != "extra_forbidden", error["type"] == "list_type")
        )
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise RecipeError(f"{source}: {_describe(errors[0], raw)}{more}") from None


def _describe(error: dict, raw: dict) -> str:
    # Pydantic names the union member it tried in the path ("function-after[...]", "list[...]"): drop it.
    loc = [str(part) for part in error["loc"] if not re.search(r"[\[(]", str(part))]
    key = ".".join(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{key}'{did_you_mean(loc[-1], _fields_at(Recipe, loc[:-1], raw))}"
    if kind == "unknown_name":
        return f"'{error['ctx']['where'] or key}' is {error['msg']}"
    if kind == "missing":
        return f"missing required key '{key}'"
    if kind in ("literal_error", "enum"):
        options = re.findall(r"'([^']*)'|(\d+)", error.get("ctx", {}).get("expected", ""))
        choices = [a or b for a, b in options]
        got = error.get("input")
        return f"'{key}' is {got!r}; expected one of {', '.join(choices)}{did_you_mean(str(got), choices)}"
    message = error["msg"].removeprefix("Value error, ")
    if not loc:
        return message
    return f"'{key}': {message} (got {error.get('input')!r})"


def _fields_at(model: type[BaseModel], loc: list[str], raw: dict) -> list[str]:
    """The valid keys of the section at `loc` (for suggestions); `data` is the named dataset's section,
    `distill` the named method's."""
    if loc[:1] == ["data"] and model is Recipe:
        name = (raw.get("data") or {}).get("dataset")
        return _fields_at(DATASETS.get(name).config if name in DATASETS else DataConfig, loc[1:], raw)
    if loc[:1] == ["distill"]:
        name = (raw.get("distill") or {}).get("method", default_method())
        return list(METHODS.get(name).config.model_fields) if name in METHODS else []
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
