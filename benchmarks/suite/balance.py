"""data.balance on an imbalanced training set: does weighting or sampling lift the rare classes?

The quickstart's data and student (MobileNetV2-Tiny on MNIST-5k at 32 px, the baseline's training
settings), with the training split made imbalanced: classes 0-4 keep `--keep` (10 %) of their images, a
10:1 imbalance; validation and test stay as they are. The epochs grow so that the student takes as many
optimiser steps as the quickstart's baseline on the full split (fewer would leave it undertrained, which
says nothing about balance). The student alone (no teacher: only the hard-label
loss, which is what `data.balance` changes) trains with `balance` none, weights and sampler, per seed. On
the test split: the rare classes' mean recall, the balanced accuracy (mean recall over every class) and
top-1.

    python benchmarks/suite/balance.py [--seeds 0,1,2] [--keep 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from results import write_section
from rich.console import Console
from torch.utils.data import Subset

from edgekd.data import Batches, labels_of, load_data
from edgekd.metrics import balanced_accuracy, confusion_matrix
from edgekd.pipeline import Session, train_baseline
from edgekd.recipe import load_recipe
from edgekd.rundir import RunDir

RARE = (0, 1, 2, 3, 4)
MODES = ("none", "weights", "sampler")


def imbalanced(data, keep: float, seed: int):
    """The bundle with classes RARE cut to `keep` of their training images (seeded)."""
    labels = labels_of(data.train)
    rng = np.random.default_rng(seed)
    kept = []
    for label in range(data.num_classes):
        members = np.flatnonzero(labels == label)
        if label in RARE:
            members = np.sort(rng.choice(members, max(1, round(keep * len(members))), replace=False))
        kept.append(members)
    index = np.sort(np.concatenate(kept)).tolist()
    return replace(data, train=Subset(data.train, index), train_eval=Subset(data.train_eval, index))


def scored(model: torch.nn.Module, data, session: Session) -> dict[str, float]:
    model.eval()
    predictions, truth = [], []
    with torch.no_grad():
        for images, labels, _ in Batches(data.test, 256, shuffle=False):
            images, labels = session.runtime.batch(images, labels)
            predictions.append(model(images).argmax(1).cpu())
            truth.append(labels.cpu())
    predicted, actual = torch.cat(predictions).numpy(), torch.cat(truth).numpy()
    confusion = np.array(confusion_matrix(actual, predicted, data.num_classes))
    recall = confusion.diagonal() / confusion.sum(1)
    return {
        "rare_recall": float(recall[list(RARE)].mean()),
        "balanced_accuracy": balanced_accuracy(confusion.tolist()),
        "accuracy": float((predicted == actual).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--keep", type=float, default=0.1)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    base = load_recipe("quickstart")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seeds:
            for mode in MODES:  # alternating, so machine drift hits every mode alike
                data = load_data(base.data, seed)
                transfer = imbalanced(data, args.keep, seed)
                epochs = round(base.distill.epochs * len(data.train) / len(transfer.train))
                recipe = base.model_copy(update={
                    "seed": seed,
                    "data": base.data.model_copy(update={"balance": mode}),
                    "distill": base.distill.model_copy(update={"epochs": epochs}),
                })  # fmt: skip
                folder = Path(scratch) / f"{mode}-{seed}"
                folder.mkdir()
                started = time.perf_counter()
                session = Session.open(recipe, RunDir(folder), data, Console(stderr=True, quiet=True),
                                       transfer=transfer)  # fmt: skip
                student, _ = train_baseline(session)
                row = scored(student, data, session)
                results[mode].append(row)
                print(f"seed {seed} {mode}: {row} ({time.perf_counter() - started:.0f} s)", flush=True)

    def cell(mode: str, key: str) -> str:
        values = [100 * r[key] for r in results[mode]]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {spread:.1f}"

    lines = [
        "| data.balance | rare classes' mean recall (%) | balanced accuracy (%) | top-1 (%) |",
        "| --- | ---: | ---: | ---: |",
        *(f"| `{m}` | {cell(m, 'rare_recall')} | {cell(m, 'balanced_accuracy')} | {cell(m, 'accuracy')} |"
          for m in MODES),
    ]  # fmt: skip
    print("\n".join(lines))
    body = (
        f"MNIST-5k at 32 px, MobileNetV2-Tiny alone with the quickstart's baseline settings; training split with "
        f"classes {RARE[0]}-{RARE[-1]} cut to {args.keep:.0%} of their images (10:1), validation and test "
        f"untouched; {epochs} epochs, as many optimiser steps as the quickstart's "
        f"{base.distill.epochs} on the full split. Mean ± std "
        f"over seeds {args.seeds} (the seed also picks the kept images).\n\n" + "\n".join(lines)
    )
    write_section("data.balance on a 10:1 imbalanced training set", f"python benchmarks/suite/balance.py "
                  f"--seeds {args.seeds} --keep {args.keep:g}", body)  # fmt: skip


if __name__ == "__main__":
    main()
