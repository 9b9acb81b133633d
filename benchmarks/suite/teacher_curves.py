"""Why a moving-teacher method (ProKT, mean teacher) collapses on a seed: its curves, epoch by epoch.

For each seed, the base recipe's teacher and baseline are trained once (kept in a scratch folder under
edgekd's cache, so variants reuse them) and the method's student is trained with the method's bundled
options plus any `--set KEY=VALUE`. At the start of every epoch and after the last one it records, on the
validation split (never test): the moving teacher's accuracy and cross-entropy in eval mode, the
student's accuracy in eval mode (running BatchNorm statistics) and in train mode (batch statistics), the
KL divergence KL(p_teacher ‖ p_student) at T = 1, and, for ProKT, the teacher's BatchNorm running
statistics' mean distance from where they started. The final test accuracy closes each row.

    python benchmarks/suite/teacher_curves.py --method prokt --base mnist5k_low_data --seeds 0,1,2 [--set teacher_lr=0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from results import write_section
from rich.console import Console

from edgekd.cache import cache_dir
from edgekd.config import TrainConfig
from edgekd.data import Batches, load_data
from edgekd.methods import METHODS
from edgekd.pipeline import Session, train_baseline, train_student, train_teachers
from edgekd.recipe import load_recipe
from edgekd.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]


@torch.no_grad()
def outputs(model: torch.nn.Module, batches, train_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over `batches`; train mode uses batch statistics without updating the running
    ones (momentum 0 for the pass), so measuring changes nothing."""
    was_training = model.training
    saved = {m: m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    model.train(train_mode)
    for module in saved:
        module.momentum = 0.0
    logits, labels = [], []
    for images, batch_labels, *_ in batches:
        logits.append(model(images).float())
        labels.append(batch_labels)
    for module, momentum in saved.items():
        module.momentum = momentum
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def running_statistics(model: torch.nn.Module) -> list[torch.Tensor]:
    return [
        torch.cat([m.running_mean, m.running_var.sqrt()]).clone()
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]


class Recorder:
    """Attached to the method through its `start_epoch`: one row per epoch boundary."""

    def __init__(self, val_batches):
        self.val_batches, self.rows, self.method, self.start_stats = val_batches, [], None, None

    def record(self, epoch: int) -> None:
        method = self.method
        student_logits, labels = outputs(method.student, self.val_batches)
        student_train_logits, _ = outputs(method.student, self.val_batches, train_mode=True)
        row = {
            "epoch": epoch,
            "student_val": (student_logits.argmax(1) == labels).float().mean().item(),
            "student_val_train_mode": (student_train_logits.argmax(1) == labels).float().mean().item(),
        }
        teacher = getattr(method, "teacher", None)
        if teacher is not None:
            teacher_logits, _ = outputs(teacher, self.val_batches)
            row["teacher_val"] = (teacher_logits.argmax(1) == labels).float().mean().item()
            row["teacher_val_ce"] = F.cross_entropy(teacher_logits, labels).item()
            row["kl_teacher_student"] = F.kl_div(
                F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1), reduction="batchmean",
                log_target=True,
            ).item()  # fmt: skip
            stats = running_statistics(teacher)
            if self.start_stats is None:
                self.start_stats = stats
            row["teacher_bn_drift"] = float(
                sum((a - b).abs().mean() for a, b in zip(stats, self.start_stats, strict=True)) / max(len(stats), 1)
            )
        self.rows.append(row)


def run_seed(base: str, method: str, seed: int, options: dict, every: int, console: Console) -> dict:
    reference = load_recipe(base).model_copy(update={"seed": seed})
    training = reference.distill.model_dump(include=set(TrainConfig.model_fields))
    entry = METHODS.get(method)
    distill = load_recipe(entry.recipe).distill.model_copy(update={**training, **options})
    recipe = reference.model_copy(update={"distill": distill})
    data = load_data(recipe.data, seed)
    shared = cache_dir() / "teacher_curves" / f"{reference.name}-seed{seed}"
    variant = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    folder = shared.parent / f"{shared.name}-{method}-{variant}"  # the same name on a rerun, which replaces it
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if not RunDir(shared).weights("baseline").is_file():  # the seed's teacher and baseline, trained once
        shutil.rmtree(shared, ignore_errors=True)
        shared.mkdir(parents=True)
        session = Session.open(reference, RunDir(shared), data, console, resume=True)
        train_teachers(session)
        train_baseline(session)
    for stage in ("teacher", "baseline"):
        shutil.copy(RunDir(shared).weights(stage), RunDir(folder).weights(stage))
    session = Session.open(recipe, RunDir(folder), data, console, resume=True)
    recorder = Recorder(Batches(data.val, 250, shuffle=False))
    method_class = entry.method
    original = method_class.start_epoch

    def start_epoch(self, epoch: int, epochs: int) -> None:
        recorder.method = self
        if (epoch - 1) % every == 0:
            recorder.record(epoch - 1)
        original(self, epoch, epochs)

    method_class.start_epoch = start_epoch
    try:
        started = time.perf_counter()
        teacher = train_teachers(session)[0] if entry.needs_teacher else None
        baseline = train_baseline(session)
        _, result = train_student(session, teacher, baseline[0])
        recorder.record(distill.epochs)
    finally:
        method_class.start_epoch = original
    shutil.rmtree(folder, ignore_errors=True)
    return {"seed": seed, "test": result.test_accuracy, "val": result.val_accuracy, "curve": recorder.rows,
            "seconds": time.perf_counter() - started, **baseline_scores(baseline[1])}  # fmt: skip


def baseline_scores(result) -> dict:
    """The seed's baseline (the student alone, same data and schedule), beside which a variant is judged."""
    return {"baseline_val": result.val_accuracy, "baseline_test": result.test_accuracy}


def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help="a registered method with a moving teacher")
    parser.add_argument("--base", default="mnist5k_low_data")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE: a method option to change")
    parser.add_argument("--every", type=int, default=0, help="record every N epochs (default: 10 records)")
    parser.add_argument("--label", default="", help="the row's name in the section (default: the options)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = {key: parse_value(value) for key, _, value in (item.partition("=") for item in args.set)}
    epochs = load_recipe(args.base).distill.epochs
    every = args.every or max(1, epochs // 10)
    console = Console(stderr=True, quiet=True)
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        run = run_seed(args.base, args.method, seed, options, every, console)
        runs.append(run)
        print(json.dumps(run), flush=True)
    label = args.label or (", ".join(f"{k}={v}" for k, v in options.items()) or "bundled options")
    record = ROOT / "benchmarks" / "results" / f"teacher_curves_{args.method}_{Path(args.base).stem}.jsonl"
    record.parent.mkdir(parents=True, exist_ok=True)
    with record.open("a") as handle:
        handle.write(json.dumps({"label": label, "options": options, "runs": runs}) + "\n")
    write_section(*section(args, record, label))


SHOWN_FRACTIONS = (0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # of the run's epochs, those the section's curves show


def shown_epochs(epochs: int) -> list[int]:
    """0, 10, 20, 30, 50, 70, 100 for a 100-epoch run; the same fractions of a shorter one."""
    return sorted({round(fraction * epochs) for fraction in SHOWN_FRACTIONS})


def per_seed(runs: list[dict], key: str) -> str:
    return " / ".join(f"{run[key]:.1%}" if key in run else "–" for run in runs)


def mean_of(runs: list[dict], key: str) -> str:
    return f"{sum(run[key] for run in runs) / len(runs):.1%}" if all(key in run for run in runs) else "–"


def summary(variants: dict) -> list[str]:
    """Validation (what a choice may look at) and test per seed, beside the baseline of the same seed."""
    lines = [
        "| variant | seeds | val per seed | val mean | baseline val mean | test per seed | baseline test |",
        "| --- | --- | --- | ---: | ---: | --- | --- |",
    ]
    for name, entry in variants.items():
        runs = entry["runs"]
        seeds = ", ".join(str(run["seed"]) for run in runs)
        lines.append(
            f"| {name} | {seeds} | {per_seed(runs, 'val')} | {mean_of(runs, 'val')} | "
            f"{mean_of(runs, 'baseline_val')} | {per_seed(runs, 'test')} | {per_seed(runs, 'baseline_test')} |"
        )
    return lines


def section(args, record: Path, label: str) -> tuple[str, str, str]:
    """A summary of every recorded variant of this method and base, then each one's curves."""
    del label
    variants = {}
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        variants[entry["label"]] = entry  # the latest run of each variant
    blocks = ["\n".join(summary(variants))]
    for name, entry in variants.items():
        runs = entry["runs"]
        keys = [k for k in runs[0]["curve"][0] if k != "epoch"]
        head = "| seed | epoch | " + " | ".join(keys) + " |"
        lines = [f"**{name}**", "", head, "| " + " | ".join(["---:"] * (len(keys) + 2)) + " |"]
        for run in runs:
            shown = shown_epochs(run["curve"][-1]["epoch"])
            for row in run["curve"]:
                if row["epoch"] not in shown:
                    continue
                cells = [f"{row[k]:.1%}" if k.endswith(("val", "mode")) else f"{row[k]:.3f}" for k in keys]
                lines.append(f"| {run['seed']} | {row['epoch']} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    body = (
        f"Method `{args.method}` on base `{args.base}`, one process × 1 thread; every variant recorded in "
        f"`{record.relative_to(ROOT)}` (the latest run of each). Validation split, except the test columns; "
        "*_val are accuracies, teacher_val_ce the teacher's cross-entropy, kl_teacher_student KL(p_T ‖ p_S) "
        "at T = 1, teacher_bn_drift the mean absolute change of the teacher's BatchNorm running means and "
        "standard deviations since epoch 0. Curves at 0, 10, 20, 30, 50, 70 and 100 % of the run's epochs.\n\n"
        + "\n\n".join(blocks)
    )
    script = "python benchmarks/suite/teacher_curves.py"
    command = f"{script} --method {args.method} --base {args.base} --seeds {args.seeds}"
    return f"teacher curves: {args.method} on {args.base}", f"{command} [--set KEY=VALUE --label NAME]", body


if __name__ == "__main__":
    main()
