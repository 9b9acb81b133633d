"""The "mythical digit" (Hinton, Vinyals & Dean 2015): a student that never saw a class in training
can still recognise it from the teacher's soft targets, once its bias for that class is raised by the
amount that makes its mean predicted probability of the class match the class's prior."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.data import DataBundle, labels_of, make_loader


@torch.no_grad()
def _logits(model: nn.Module, dataset, runtime, batch_size: int) -> torch.Tensor:
    model.eval()
    outputs = []
    for images, labels in make_loader(dataset, batch_size, train=False):
        images, _ = runtime.batch(images, labels)
        outputs.append(model(images).float().cpu())
    return torch.cat(outputs)


def bias_shift(logits: torch.Tensor, klass: int, prior: float) -> float:
    """δ with mean(softmax(logits + δ·e_klass)[:, klass]) = prior, by bisection (it rises with δ)."""
    low, high = -60.0, 60.0
    for _ in range(60):
        middle = (low + high) / 2
        shifted = logits.clone()
        shifted[:, klass] += middle
        if torch.softmax(shifted, dim=1)[:, klass].mean().item() < prior:
            low = middle
        else:
            high = middle
    return (low + high) / 2


@torch.no_grad()
def correct_excluded_bias(model: nn.Module, data: DataBundle, classes: list[int], runtime, batch_size: int) -> dict:
    """Raise each excluded class's classifier bias to match its prior on the validation split; report the
    test accuracy on those classes and overall, before and after."""
    val_source = data.val if len(data.val) else data.train_eval
    val_labels, test_labels = torch.as_tensor(labels_of(val_source)), torch.as_tensor(labels_of(data.test))
    classifier = model.get_classifier()
    test_before = _logits(model, data.test, runtime, batch_size)
    val_logits = _logits(model, val_source, runtime, batch_size)
    shifts = {}
    for klass in classes:
        prior = (val_labels == klass).float().mean().item()
        shifts[klass] = bias_shift(val_logits, klass, prior)
        val_logits[:, klass] += shifts[klass]
        classifier.bias[klass] += shifts[klass]
    test_after = _logits(model, data.test, runtime, batch_size)
    excluded = torch.isin(test_labels, torch.tensor(classes))

    def accuracy(logits: torch.Tensor, mask: torch.Tensor) -> float:
        return (logits.argmax(1)[mask] == test_labels[mask]).float().mean().item() if mask.any() else float("nan")

    everything = torch.ones_like(excluded)
    return {
        "bias_shift": {str(k): round(v, 4) for k, v in shifts.items()},
        "excluded_accuracy_before": accuracy(test_before, excluded),
        "excluded_accuracy_after": accuracy(test_after, excluded),
        "accuracy_before": accuracy(test_before, everything),
        "accuracy_after": accuracy(test_after, everything),
    }
