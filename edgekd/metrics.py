"""Per-class results: a confusion matrix, and the recall, precision and balanced accuracy it gives. Top-1
accuracy hides a minority class a model gets wrong; these show it."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> list[list[int]]:
    """Rows: the true class; columns: the predicted one."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return counts.tolist()


def recalls(confusion: list[list[int]]) -> list[float | None]:
    """Per true class: the share of its images predicted as it (None for a class with no test image)."""
    counts = np.asarray(confusion)
    return [float(counts[c, c] / row) if (row := counts[c].sum()) else None for c in range(len(counts))]


def precisions(confusion: list[list[int]]) -> list[float | None]:
    """Per predicted class: the share of its predictions that are right (None when never predicted)."""
    counts = np.asarray(confusion)
    return [float(counts[c, c] / column) if (column := counts[:, c].sum()) else None for c in range(len(counts))]


def balanced_accuracy(confusion: list[list[int]]) -> float:
    """The mean recall over the classes that have test images."""
    present = [r for r in recalls(confusion) if r is not None]
    return float(np.mean(present)) if present else 0.0
