"""An image folder: `root/<class>/*.png`, or `root/train`, `root/val` and `root/test` folders of classes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from rich.console import Console
from rich.progress import track
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from torchvision.transforms import v2

from edgekd.cache import cache_dir
from edgekd.config import DataConfig
from edgekd.data import (
    DataBundle,
    TensorImages,
    augmentations,
    has_random_augmentation,
    labels_of,
    register_dataset,
    stratified,
)
from edgekd.errors import DataError
from edgekd.preprocess import resize_square, to_channels

DECODE_VERSION = 2  # raise when decoding changes what a cached image holds
IN_MEMORY_BYTES = 2 << 30  # decoded images larger than this are memory-mapped from the cache
FLOAT_COPY_BYTES = 2 << 30  # the most a normalised float copy of all images may take
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What operating systems and tools leave in a folder of photos: never an image, never a class. Hidden
# names (starting with "."): macOS's .DS_Store and ._* AppleDouble files, .ipynb_checkpoints/, .git/.
JUNK_FILES = {"thumbs.db", "desktop.ini"}
JUNK_FOLDERS = {"__macosx"}


def is_junk(name: str) -> bool:
    """A file or folder name an image folder ignores (hidden, or left there by an OS or a tool)."""
    return name.startswith(".") or name.lower() in JUNK_FILES | JUNK_FOLDERS


class _ClassFolders(ImageFolder):
    """torchvision's ImageFolder without the junk: hidden and OS folders are no classes, hidden and OS
    files no images. `skipped` counts what was left out."""

    def __init__(self, root: str):
        self.skipped = 0
        super().__init__(root, is_valid_file=self._is_image, allow_empty=True)  # empty classes: named by folder()

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        entries = sorted((entry for entry in os.scandir(directory) if entry.is_dir()), key=lambda entry: entry.name)
        self.skipped += sum(is_junk(entry.name) for entry in entries)
        classes = [entry.name for entry in entries if not is_junk(entry.name)]
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: index for index, name in enumerate(classes)}

    def _is_image(self, path: str) -> bool:
        if any(is_junk(part) for part in Path(path).relative_to(self.root).parts):  # or in a junk folder
            self.skipped += 1
            return False
        return has_file_allowed_extension(path, IMG_EXTENSIONS)


@register_dataset("imagefolder", needs_root=True)
def imagefolder(config: DataConfig, seed: int) -> DataBundle:
    """`root/<class>/*.png`, split by the seed; or `root/train`, `root/val` and `root/test` folders."""
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder: data.root {root} is not a folder; point it at a folder of class subfolders")
    reader = _Reader(config)
    has_train = (root / "train").is_dir()
    train_full, train_eval_full, classes = reader.folder(root / "train" if has_train else root)
    labels = labels_of(train_full)
    indices = np.arange(len(labels))
    if has_train and (root / "test").is_dir():
        test: Dataset = reader.split(root / "test", classes)
    else:
        indices, test_idx = stratified(indices, labels, config.splits.test, seed)
        test = Subset(train_eval_full, test_idx)
    if has_train and (root / "val").is_dir():
        train_idx, val = indices, reader.split(root / "val", classes)
    else:
        train_idx, val_idx = stratified(indices, labels[indices], config.splits.val, seed)
        val = Subset(train_eval_full, val_idx)
    return DataBundle(
        train=Subset(train_full, train_idx),
        val=val,
        test=test,
        train_eval=Subset(train_eval_full, train_idx),
        num_classes=len(classes),
        class_names=classes,
        in_chans=config.channels,
        image_size=config.image_size,
        mean=reader.mean,
        std=reader.std,
        notes=reader.notes,
    )


class _Reader:
    """Class folders, each file checked and decoded once (`decoded_images`), as in-memory images with the
    recipe's transforms."""

    def __init__(self, config: DataConfig):
        self.config = config
        if config.mean is not None and config.std is not None:
            self.mean, self.std = tuple(config.mean), tuple(config.std)
        elif config.channels == 3:
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        else:
            self.mean, self.std = (0.5,), (0.25,)
        self.notes: list[str] = []  # what the log should say about the folders

    def folder(self, path: Path) -> tuple[TensorImages, TensorImages, list[str]]:
        """(the folder's images for training, the same without augmentation, its class names)."""
        try:
            listing = _ClassFolders(str(path))
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"imagefolder: {path}: {exc}; expected one subfolder per class holding images") from None
        if listing.skipped:
            self.notes.append(f"{path}: skipped {listing.skipped} hidden or OS file(s) and folder(s)")
        if len(listing.classes) < 2:
            raise DataError(
                f"imagefolder: {path} has {len(listing.classes)} class folder ({', '.join(listing.classes)}); "
                "a classifier needs at least 2"
            )
        empty = [name for index, name in enumerate(listing.classes) if index not in set(listing.targets)]
        if empty:
            raise DataError(
                f"imagefolder: class folder(s) {', '.join(empty)} in {path} hold no image (hidden and OS files do not "
                "count); add images or remove the folder"
            )
        paths = [file for file, _ in listing.samples]
        images = decoded_images(paths, self.config, "imagefolder", self.notes)
        labels = torch.tensor(listing.targets, dtype=torch.long)
        return (*in_memory(images, labels, self.config, self.mean, self.std), list(listing.classes))

    def split(self, path: Path, classes: list[str]) -> TensorImages:
        """A val/ or test/ folder, which must hold the training folder's classes."""
        _, split, found = self.folder(path)
        if found != classes:
            raise DataError(
                f"imagefolder: {path} has classes {found[:5]}…, the training folder "
                f"{classes[:5]}…; every split needs the same class folders"
            )
        return split


def in_memory(
    images: torch.Tensor, labels: torch.Tensor, config: DataConfig, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[TensorImages, TensorImages]:
    """Decoded uint8 images as (training images, with the recipe's augmentation; the same without). Each
    is normalised once for all when its float copy fits in FLOAT_COPY_BYTES (batches are then slices of one
    tensor), else image by image as batches are drawn."""
    fits = images.numel() * 4 <= FLOAT_COPY_BYTES
    steps = [v2.ToDtype(torch.float32, scale=True)]
    normalise = v2.Normalize(mean, std)
    augment = v2.Compose([*steps, *augmentations(config), normalise])
    train = TensorImages(images, labels, augment, deterministic=fits and not has_random_augmentation(config))
    return train, TensorImages(images, labels, v2.Compose([*steps, normalise]), deterministic=fits)


def decoded_images(paths: list[str], config: DataConfig, key: str, notes: list[str]) -> torch.Tensor:
    """Every file decoded once into N×C×S×S uint8 at the training size (EXIF orientation, `to_rgb`, then the
    recipe's channels and resize rule as `edgekd.preprocess` defines them for host and device alike), through
    a cache in edgekd's cache folder keyed by the files (path, size, modification time) and those settings,
    so a second run decodes nothing. A file that cannot be decoded stops the load with its name (`key`: the
    recipe key that led to it), before any run directory exists. An entry larger than IN_MEMORY_BYTES is
    memory-mapped, not read into memory."""
    shape = (len(paths), config.channels, config.image_size, config.image_size)
    stamp = [DECODE_VERSION, config.channels, config.image_size, config.resize]
    for path in paths:
        status = os.stat(path)
        stamp.append([path, status.st_size, status.st_mtime_ns])
    entry = cache_dir() / "images" / f"{hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:32]}.npy"
    big = int(np.prod(shape)) > IN_MEMORY_BYTES
    if entry.is_file():
        try:
            cached = np.load(entry, mmap_mode="c" if big else None)
            if cached.shape == shape and cached.dtype == np.uint8:
                notes.append(f"{len(paths):,} images from the decode cache ({entry})")
                return torch.from_numpy(cached)
        except (OSError, ValueError):
            pass  # a damaged entry is decoded again
    check_images(paths, key)
    entry.parent.mkdir(parents=True, exist_ok=True)
    partial = entry.with_suffix(f".{os.getpid()}.partial.npy")
    images = np.lib.format.open_memmap(partial, "w+", np.uint8, shape) if big else np.empty(shape, np.uint8)
    shown = track(paths, description=f"decoding {len(paths):,} images", console=Console(stderr=True),
                  transient=True, disable=len(paths) < 1000)  # fmt: skip
    for index, path in enumerate(shown):
        rgb = np.asarray(load_image(path))
        images[index] = resize_square(to_channels(rgb, config.channels), config.image_size, config.resize)
    if big:
        images.flush()
        del images
    else:
        np.save(partial, images)
    os.replace(partial, entry)
    notes.append(f"decoded {len(paths):,} images once, into the decode cache ({entry})")
    return torch.from_numpy(np.load(entry, mmap_mode="c")) if big else torch.from_numpy(images)


def check_images(paths: list[str], key: str) -> None:
    """Stop at the first file that is not a readable image, naming it and the recipe key that led to it
    (before any run directory exists). PIL's verify() reads headers and checksums without decoding every
    pixel, so this stays cheap."""
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
            raise DataError(
                f"{key}: {path} is not a readable image ({type(exc).__name__}); remove or replace it"
            ) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB, the same way every time: 16- and 32-bit greyscale keep their top 8 bits
    of 16 (PIL's own conversion saturates them), transparency is composited over black (PIL's drops the
    alpha and keeps whatever colour lies under it), CMYK, palette and greyscale as PIL converts them."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I"):
        grey = np.right_shift(np.asarray(image).astype(np.int64).clip(0, 65535), 8).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str):
    """torchvision's loader, turned upright by the file's EXIF orientation (as a phone's viewer shows it)
    and converted by `to_rgb`; a damaged file (one that passed the header check) named in one line."""
    try:
        with open(path, "rb") as handle:
            return to_rgb(ImageOps.exif_transpose(Image.open(handle)))
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
        raise DataError(f"image {path} cannot be decoded ({type(exc).__name__}); remove or replace it") from None
