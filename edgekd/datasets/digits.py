"""scikit-learn's bundled 8×8 digits."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from edgekd.config import DataConfig
from edgekd.data import DataBundle, register_dataset, resized, split_tensors


@register_dataset("digits")
def digits(config: DataConfig, seed: int) -> DataBundle:
    """scikit-learn's 1,797 digits, 8×8, 10 classes (ships with scikit-learn)."""
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    return split_tensors(config, seed, resized(config, images), labels, [str(c) for c in bunch.target_names], None)
