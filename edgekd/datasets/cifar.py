"""CIFAR-10 and CIFAR-100 from the python-version pickles under data.root (downloaded only when asked)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from edgekd.config import DataConfig
from edgekd.data import DataBundle, register_dataset, split_tensors
from edgekd.errors import DataError

# The published per-channel statistics of each training set (used unless the recipe gives its own).
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


@register_dataset("cifar10", needs_root=True)
def cifar10(config: DataConfig, seed: int) -> DataBundle:
    """CIFAR-10 from the python-version batches under data.root (download: true fetches them)."""
    (train_x, train_y), (test_x, test_y), class_names = read_cifar(config)
    return split_tensors(
        config, seed, train_x, train_y, class_names, test=(test_x, test_y), stats=CIFAR_STATS[config.dataset]
    )


@register_dataset("cifar100", needs_root=True)
def cifar100(config: DataConfig, seed: int) -> DataBundle:
    """CIFAR-100 (fine labels) from the python-version files under data.root."""
    return cifar10(config, seed)


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


def read_cifar(config: DataConfig):
    """CIFAR from the python-version pickles under data.root (downloaded there only if data.download)."""
    folder_name, train_files, test_files, meta_file, label_key, names_key = CIFAR_FILES[config.dataset]
    root = Path(config.root).expanduser()
    folder = root / folder_name
    if config.download and not folder.is_dir():
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
