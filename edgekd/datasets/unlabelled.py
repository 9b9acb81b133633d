"""The students' training images: `transfer_set`'s, plus `data.unlabelled`'s folder of images without labels.

Hinton et al. 2015 (§2) note that the transfer set a student learns from need not be labelled: the teacher's
soft targets are the signal. A user typically has far more images than labels; a folder of them (any layout
of subfolders, the same junk rules as an imagefolder) joins the distilled student's training set with the
label UNLABELLED, preprocessed exactly as the labelled images (the recipe's channels, size, resize rule,
augmentation and the dataset's normalisation).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from edgekd.config import DataConfig
from edgekd.data import UNLABELLED, DataBundle, transfer_set
from edgekd.datasets.imagefolder import decoded_images, in_memory, is_junk
from edgekd.errors import DataError


def image_files(root: Path) -> tuple[list[str], int]:
    """Every image file under `root`, sorted, and how many hidden or OS files and folders were skipped."""
    found, skipped = [], 0
    for folder, folders, files in os.walk(root):
        skipped += sum(is_junk(name) for name in folders + files)
        folders[:] = sorted(name for name in folders if not is_junk(name))  # os.walk descends into what is left
        found += [os.path.join(folder, name) for name in files if not is_junk(name)]
    return sorted(path for path in found if has_file_allowed_extension(path, IMG_EXTENSIONS)), skipped


def students_data(bundle: DataBundle, config: DataConfig, seed: int) -> DataBundle:
    """What the students learn from: `transfer_set`, with `data.unlabelled`'s folder when it names one.
    Every file is decoded here (once; `decoded_images` caches them), so that a bad one stops the run
    before its directory exists."""
    transfer = transfer_set(bundle, config, seed)
    if config.unlabelled is None or config.unlabelled == "rest":
        return transfer
    root = Path(config.unlabelled).expanduser()
    if not root.is_dir():
        raise DataError(f"data.unlabelled: {root} is not a folder; point it at a folder of images (or write rest)")
    paths, skipped = image_files(root)
    if not paths:
        raise DataError(
            f"data.unlabelled: {root} holds no image files ({', '.join(sorted(IMG_EXTENSIONS))}); add images or "
            "remove the key"
        )
    notes = [f"{root}: {len(paths):,} unlabelled images"]
    if skipped:
        notes.append(f"{root}: skipped {skipped} hidden or OS file(s) and folder(s)")
    images = decoded_images(paths, config, "data.unlabelled", notes)
    hidden = torch.full((len(paths),), UNLABELLED, dtype=torch.long)
    train, train_eval = in_memory(images, hidden, config, bundle.mean, bundle.std)
    return replace(transfer, unlabelled=train, unlabelled_eval=train_eval, notes=[*transfer.notes, *notes])
