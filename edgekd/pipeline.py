"""`edgekd distill`: teacher → baseline → distilled student, into one run directory (see
edgekd.rundir for what it holds). Each stage is a function over a Session, so the benchmark suite
can run one stage alone."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from torch import nn

from edgekd.data import Batches, DataBundle, has_random_augmentation, load_data
from edgekd.datasets.unlabelled import students_data
from edgekd.distributed import World
from edgekd.ensemble import TeacherEnsemble
from edgekd.errors import EdgeKDError, RecipeError, RunDirError
from edgekd.methods import FrozenTeacherMethod, MethodContext, Plain, build_method
from edgekd.models import check_model_name, count_macs, count_parameters, create_model, load_weights, probe_model
from edgekd.mythical import correct_excluded_bias
from edgekd.recipe import Recipe
from edgekd.rundir import RunDir, StageSummary, Summary, atomic_save
from edgekd.runtime import Runtime, evaluate
from edgekd.train import MetricsLog, StageOptions, StageResult, train_stage

WEIGHTS_FORMAT = "edgekd.weights/1"


def default_run_dir(recipe: Recipe) -> Path:
    return recipe.output_dir / recipe.name


def prepare_run_dir(run: RunDir, recipe: Recipe, *, resume: bool, overwrite: bool) -> None:
    """Refuse to touch a folder edgekd did not make, or a finished run unless told to; then clean what a
    killed process left and mark the folder as a run. Called with the run directory locked."""
    if run.is_run:
        if overwrite:
            run.clear()
        elif resume:
            saved = yaml.safe_load(run.recipe.read_text()) if run.recipe.is_file() else None
            changed = sorted(_changed_keys(saved, recipe.model_dump(mode="json"))) if saved is not None else []
            if changed:
                raise RunDirError(
                    f"{run.path} was run with a different recipe (changed: {', '.join(changed)}); "
                    "resume with the same recipe, or use --overwrite or --out"
                )
        else:
            raise RunDirError(
                f"{run.path} already holds a run; pass --resume to continue it, --overwrite to "
                "replace it, or --out DIR to write elsewhere"
            )
    elif run.has_content():
        raise RunDirError(
            f"{run.path} is a non-empty folder that edgekd did not make; it is never resumed or overwritten: "
            "choose another with --out"
        )
    run.remove_temporary()
    run.create()


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = set(old) | set(new)
        return [k for key in keys for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def save_weights(
    path: Path, model: nn.Module, model_name: str, model_kwargs: dict, data: DataBundle, result: StageResult
) -> None:
    """Everything needed to rebuild and feed the model later (exporters read this)."""
    state_dict = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    atomic_save(
        {
            "format": WEIGHTS_FORMAT,
            "model": model_name,
            "model_kwargs": model_kwargs,
            "num_classes": data.num_classes,
            "in_chans": data.in_chans,
            "image_size": data.image_size,
            "mean": list(data.mean),
            "std": list(data.std),
            "class_names": data.class_names,
            "test_accuracy": result.test_accuracy,
            "val_accuracy": result.val_accuracy,
            "test_loss": result.test_loss,
            "seconds": result.seconds,
            "epochs": result.epochs,
            "state_dict": state_dict,
        },
        path,
    )


def _result_from_weights(stage: str, metadata: dict) -> StageResult:
    return StageResult(
        stage,
        metadata["val_accuracy"],
        metadata["test_accuracy"],
        metadata["test_loss"],
        metadata["seconds"],
        metadata["epochs"],
    )


def distill(
    recipe: Recipe,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    data: DataBundle | None = None,
    teacher: nn.Module | None = None,
) -> Summary:
    """Teacher(s), baseline, distilled student: trained (or, on --resume, reused) into `run_dir`.

    `data`: the recipe's data, when the caller has loaded it (or brought its own: data.dataset python);
    `teacher`: a trained module to distil from, instead of the recipe's teacher section. Under torchrun
    every process trains its share of each batch; rank 0 alone holds the run directory's lock, writes
    into it and prints."""
    started = time.perf_counter()
    runtime = Runtime.of(recipe)
    world = World.from_environment(runtime.device.type)
    console = console or Console(stderr=True)
    if not world.main:
        console = Console(stderr=True, quiet=True)
    # Everything that can reject the input runs before the run directory is touched.
    check_recipe(recipe)
    data = data if data is not None else load_data(recipe.data, recipe.seed)
    transfer = students_data(data, recipe.data, recipe.seed)  # the teachers learn from all of `data`
    built = build_models(recipe, data, teacher)
    run = RunDir(run_dir)
    with run.locked() if world.main else contextlib.nullcontext():
        open_run_dir(run, recipe, world, resume=resume, overwrite=overwrite)
        session = Session.open(recipe, run, data, console, resume=resume, world=world, transfer=transfer)
        session.given_teacher, session.built = teacher, built
        previous = run.read_summary() if resume else None
        if previous is not None:  # a finished stage resumed keeps what its method measured then
            session.method_results.update(previous.method_results)
        console.print(
            f"[bold]{recipe.name}[/bold]: {recipe.data.dataset} {data.image_size}×{data.image_size}×{data.in_chans}, "
            f"{data.num_classes} classes, {len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
            f"images, on {runtime.device.type}" + (f", {world.size} processes" if world.distributed else "")
        )
        for note in transfer.notes:  # the data's own notes, then the unlabelled folder's
            console.print(f"[dim]data: {note}[/dim]")
        if transfer.unlabelled is not None:
            console.print(
                f"students: {len(transfer.train):,} labelled training images; the distilled student also learns "
                f"from {len(transfer.unlabelled):,} unlabelled ones (data.unlabelled)"
            )
        teacher, results = train_teachers(session)
        if recipe.baseline.enabled:
            results["baseline"] = train_baseline(session)
        baseline = results["baseline"][0] if "baseline" in results else None
        results["student"] = train_student(session, teacher, baseline)
        summary = summarise(session, results, teacher_results=results.pop("teachers", None), started=started)
        if world.main:
            atomic_save(summary.model_dump_json(indent=2) + "\n", run.summary)
        return summary


@dataclass
class Built:
    """A model built (and probed) while checking the input, kept for its stage: with the random state
    its building left, so that the stage goes on exactly as if it had built the model itself."""

    model: nn.Module
    rng_state: torch.Tensor


def check_recipe(recipe: Recipe) -> None:
    """What the recipe asks for that cannot work before any data is loaded: a missing optional package,
    an unknown model name."""
    if recipe.log.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise RecipeError("log.tensorboard: true needs the tensorboard package: pip install 'edgekd[tensorboard]'")
    for model_config in [*recipe.teachers, recipe.student]:
        check_model_name(model_config.model)


def build_models(recipe: Recipe, data: DataBundle, teacher: nn.Module | None) -> dict[str, Built]:
    """The teachers' and the student's models, built and probed on the data's image size (their kwargs
    and checkpoints), and checked against the method's section, before anything is trained. Returned by
    stage name (teacher, teacher_<i>, student) for their stages to train: each is built once."""
    stages = [(teacher_stage(recipe, index), config, teacher_seed(recipe, index))
              for index, config in enumerate(recipe.teachers)]  # fmt: skip
    stages.append(("student", recipe.student, recipe.seed + STUDENT_SEED_OFFSET))
    built = {}
    for name, config, seed in stages:
        model = build_model(config, data, seed)
        built[name] = Built(model, torch.get_rng_state())
        probe_model(model, config.model, config.kwargs, data.in_chans, data.image_size)
    first_teacher = teacher if teacher is not None else (built[teacher_stage(recipe, 0)].model if recipe.teachers
                                                         else None)  # fmt: skip
    recipe.method.method.check(recipe.distill, built["student"].model, first_teacher)
    return built


def open_run_dir(run: RunDir, recipe: Recipe, world: World, *, resume: bool, overwrite: bool) -> None:
    """Rank 0 prepares the run directory and writes the resolved recipe; the other processes stop with
    rank 0's reason if it refuses."""
    refused = None
    if world.main:
        try:
            prepare_run_dir(run, recipe, resume=resume, overwrite=overwrite)
            atomic_save(recipe.to_yaml(), run.recipe)
        except EdgeKDError as exc:
            refused = exc
    refused = world.broadcast(refused)
    if refused is not None:
        raise refused


def build_model(config, data: DataBundle, seed: int) -> nn.Module:
    """A teacher or student model as its recipe section says, from `seed`'s initial weights."""
    torch.manual_seed(seed)
    return create_model(
        config.model,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        pretrained=config.pretrained,
        checkpoint=config.checkpoint,
        kwargs=config.kwargs,
    )


def teacher_stage(recipe: Recipe, index: int) -> str:
    return "teacher" if len(recipe.teachers) == 1 else f"teacher_{index}"


def teacher_seed(recipe: Recipe, index: int) -> int:
    return recipe.seed + 1000 * index


@dataclass
class Session:
    """What every stage of one distill run shares."""

    recipe: Recipe
    run: RunDir
    data: DataBundle  # everything: the teachers learn from its training split
    transfer: DataBundle  # the students' training images (data.transfer_fraction, exclude_classes, unlabelled)
    runtime: Runtime
    world: World
    console: Console
    metrics: MetricsLog
    resume: bool
    corrections: dict[str, dict] = field(default_factory=dict)  # the mythical-digit bias shift, per student
    method_results: dict[str, Any] = field(default_factory=dict)  # what the student's method measured itself
    given_teacher: nn.Module | None = None  # handed in through the Python API
    built: dict[str, Built] = field(default_factory=dict)  # models build_models built, by stage name

    @classmethod
    def open(
        cls,
        recipe: Recipe,
        run: RunDir,
        data: DataBundle,
        console: Console,
        *,
        resume: bool = False,
        world: World | None = None,
        transfer: DataBundle | None = None,
    ) -> Session:
        """A session over a run directory that is ready to write (distill prepares it; the suite uses
        a scratch folder)."""
        runtime = Runtime.of(recipe)
        world = world or World.from_environment(runtime.device.type)
        transfer = transfer if transfer is not None else students_data(data, recipe.data, recipe.seed)
        board = run.tensorboard if recipe.log.tensorboard and world.main else None
        metrics = MetricsLog(run.metrics, tensorboard=board)
        return cls(recipe, run, data, transfer, runtime, world, console, metrics, resume)

    def build(self, config, seed: int, stage: str | None = None) -> nn.Module:
        """The stage's model: the one build_models built for it (once), else a new one."""
        built = self.built.pop(stage, None) if stage is not None else None
        if built is None:
            return build_model(config, self.data, seed)
        torch.set_rng_state(built.rng_state)
        return built.model

    def measure(self, name: str, model: nn.Module, trained: StageResult | None = None) -> StageResult:
        """Test (and validation) accuracy of a model as it is: given weights, or after a correction."""
        timer = time.perf_counter()
        batch = self.recipe.data.batch_size
        test_loss, test_accuracy = evaluate(model, Batches(self.data.test, batch, shuffle=False), self.runtime)
        val = (
            evaluate(model, Batches(self.data.val, batch, shuffle=False), self.runtime)[1]
            if len(self.data.val)
            else None
        )
        if trained is None:
            return StageResult(name, val, test_accuracy, test_loss, time.perf_counter() - timer, 0)
        return StageResult(name, val, test_accuracy, test_loss, trained.seconds, trained.epochs)

    def stage(self, name: str, config, seed: int, train_config, stage_data: DataBundle, method_for=None):
        """Reuse a finished stage's weights on --resume; otherwise build, train (with the method
        `method_for(model)` makes, plain cross-entropy without one) and save. Returns (model, result)."""
        weights = self.run.weights(name)
        model = self.build(config, seed, stage=name)
        if self.resume and weights.is_file():
            result = _result_from_weights(name, load_weights(model, weights))
            self.console.print(f"[dim]{name}: finished earlier, test accuracy {result.test_accuracy:.2%}[/dim]")
            return self.runtime.place(model), result
        if train_config is None:  # given weights, nothing to train: just measure them
            model = self.runtime.place(model)
            return model, self._saved(name, model, config, self.measure(name, model))
        method = method_for(model) if method_for is not None else Plain(model)
        cache, reason = teacher_cache_decision(self.recipe, method, stage_data)
        if isinstance(method, FrozenTeacherMethod):
            self.console.print(f"[dim]{name}: teacher cache {'on' if cache else 'off'} ({reason})[/dim]")
        result = self.train(name, method, train_config, stage_data, teacher_cache=cache)
        if method.results_key is not None:
            batches = Batches(self.data.test, self.recipe.data.batch_size, shuffle=False)
            self.method_results[method.results_key] = method.results(batches, self.runtime)
        excluded = self.recipe.data.exclude_classes
        if excluded and name in ("baseline", "student"):
            self.corrections[name] = correct_excluded_bias(
                model, self.data, excluded, self.runtime, self.recipe.data.batch_size
            )
            result = self.measure(name, model, result)
        return model, self._saved(name, model, config, result)

    def train(self, name: str, method, train_config, data: DataBundle, teacher_cache: bool = False) -> StageResult:
        """One training stage with this run's settings (checkpoints, metrics, resume, processes)."""
        options = StageOptions(
            seed=self.recipe.seed,
            batch_size=self.recipe.data.batch_size,
            workers=self.recipe.data.workers,
            checkpoint=self.run.checkpoint(name),
            metrics=self.metrics,
            console=self.console,
            resume=self.resume,
            world=self.world,
            teacher_cache=teacher_cache,
            balance=self.recipe.data.balance,
        )
        return train_stage(name, method, train_config, data, self.runtime, options)

    def _saved(self, name: str, model: nn.Module, config, result: StageResult) -> StageResult:
        if self.world.main:
            save_weights(self.run.weights(name), model, config.model, config.kwargs, self.data, result)
            # The weights file now stands for the finished stage; its resume checkpoint is dead weight.
            self.run.checkpoint(name).unlink(missing_ok=True)
        self.world.barrier()
        return result


def train_teachers(session: Session) -> tuple[nn.Module | None, dict[str, Any]]:
    """The teacher (or the ensemble of teachers) the student learns from; none for co-distillation."""
    recipe = session.recipe
    if session.given_teacher is not None:
        teacher = session.runtime.place(session.given_teacher.eval())
        return teacher, {"teacher": (teacher, session.measure("teacher", teacher))}
    single = len(recipe.teachers) == 1
    teachers = [
        session.stage(teacher_stage(recipe, index), config, teacher_seed(recipe, index), config.train, session.data)
        for index, config in enumerate(recipe.teachers)
    ]
    if not teachers:  # co-distillation: the students teach each other
        return None, {}
    if single:
        return teachers[0][0], {"teacher": teachers[0]}
    ensemble = session.runtime.place(
        TeacherEnsemble([model for model, _ in teachers], recipe.distill.temperature, recipe.distill.ensemble)
    )
    return ensemble, {"teacher": (ensemble, session.measure("teacher", ensemble)), "teachers": teachers}


STUDENT_SEED_OFFSET = 1  # baseline and distilled student start from the same weights


def train_baseline(session: Session) -> tuple[nn.Module, StageResult]:
    """The student alone, on the same data, epochs and optimiser (its own lr if the recipe gives one)."""
    recipe = session.recipe
    seed = recipe.seed + STUDENT_SEED_OFFSET
    smoothing = recipe.baseline.label_smoothing
    return session.stage("baseline", recipe.student, seed, recipe.baseline_train_config(), session.transfer,
                         lambda model: Plain(model, label_smoothing=smoothing))  # fmt: skip


def train_student(
    session: Session, teacher: nn.Module | None, baseline: nn.Module | None = None
) -> tuple[nn.Module, StageResult]:
    recipe, data = session.recipe, session.data
    learns_from = session.transfer.with_unlabelled()  # the baseline saw the labelled images alone

    def peer(k: int) -> nn.Module:  # co-distillation's extra students, each from its own initial weights
        return session.build(recipe.student.model_copy(update={"pretrained": False, "checkpoint": None}),
                             recipe.seed + 1 + 100 * k)  # fmt: skip

    def method_for(model: nn.Module):
        context = MethodContext(
            data.in_chans,
            data.image_size,
            new_student=peer,
            world=session.world,
            train_images=len(learns_from.train),
            baseline=copy.deepcopy(baseline) if baseline is not None else None,
            data=data,
            runtime=session.runtime,
            seed=recipe.seed,
            train=session.train,
        )
        return build_method(recipe.distill, model, teacher, context)

    seed = recipe.seed + STUDENT_SEED_OFFSET
    return session.stage("student", recipe.student, seed, recipe.distill, learns_from, method_for)


def teacher_cache_decision(recipe: Recipe, method, data: DataBundle) -> tuple[bool, str]:
    """Whether to compute the teacher's outputs once instead of every step, and why. Only a frozen teacher
    that sees each training image the same way every time can be cached (never one the method trains)."""
    wanted = recipe.distill.cache_teacher
    if not isinstance(method, FrozenTeacherMethod):
        return False, f"method {recipe.distill.method} has no frozen teacher"
    if wanted == "off":
        return False, "distill.cache_teacher: off"
    if method.cache_refusal is not None:
        return False, method.cache_refusal
    if has_random_augmentation(recipe.data):
        return False, "random augmentation: the teacher would see other pixels than the cached ones"
    needed = method.teacher_cache_bytes(len(data.train), data.in_chans, data.image_size)
    if needed > TEACHER_CACHE_LIMIT:
        if wanted == "on":
            raise RecipeError(
                f"distill.cache_teacher: on needs {needed / 2**30:,.1f} GiB for {len(data.train):,} images "
                f"(limit {TEACHER_CACHE_LIMIT / 2**30:,.1f} GiB); use auto or off"
            )
        return False, f"it would need {needed / 2**30:,.1f} GiB"
    size = f"{needed / 2**20:,.1f} MiB" if needed >= 2**20 else f"{needed / 2**10:,.1f} KiB"
    return True, f"frozen teacher, no random augmentation; {size} of float16 outputs"


TEACHER_CACHE_LIMIT = 4 * 2**30


def summarise(session: Session, results: dict[str, Any], *, teacher_results: list | None, started: float) -> Summary:
    recipe, data = session.recipe, session.data
    single = len(recipe.teachers) == 1
    teacher_name = (
        type(session.given_teacher).__name__
        if session.given_teacher is not None
        else "–"
        if not recipe.teachers
        else recipe.teachers[0].model
        if single
        else (f"{recipe.distill.ensemble} ensemble of " + " + ".join(c.model for c in recipe.teachers))
    )
    stages = {
        name: StageSummary(
            model=teacher_name if name == "teacher" else recipe.student.model,
            parameters=count_parameters(model),
            macs=count_macs(model, data.in_chans, data.image_size),
            accuracy=result.test_accuracy,
            val_accuracy=result.val_accuracy,
            epochs=result.epochs,
            seconds=round(result.seconds, 1),
            teacher_cache_seconds=round(result.teacher_cache_seconds, 2),
        )
        for name, (model, result) in results.items()
    }
    student, baseline = stages["student"], stages.get("baseline")
    return Summary(
        recipe=recipe.name,
        method=recipe.distill.method,
        dataset=recipe.data.dataset,
        image_size=data.image_size,
        in_chans=data.in_chans,
        num_classes=data.num_classes,
        test_images=len(data.test),
        train_images={
            "teacher": len(data.train),
            "students": len(session.transfer.train),
            "unlabelled": len(session.transfer.unlabelled) if session.transfer.unlabelled is not None else 0,
        },
        device=session.runtime.device.type,
        processes=session.world.size,
        teacher=stages.get("teacher"),
        baseline=baseline,
        student=student,
        teachers=[
            {"model": c.model, "accuracy": r.test_accuracy}
            for c, (_, r) in zip(recipe.teachers, teacher_results, strict=True)
        ]
        if teacher_results
        else None,
        excluded_classes={"classes": recipe.data.exclude_classes, **session.corrections}
        if recipe.data.exclude_classes
        else None,
        method_results=session.method_results,
        kd_gain=round(student.accuracy - baseline.accuracy, 6) if baseline is not None else None,
        wall_seconds=round(time.perf_counter() - started, 1),
    )
