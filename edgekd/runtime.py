"""Where and how models run: the device, memory format and autocast of a run (`Runtime`), and the
evaluation passes every stage and some methods need (top-1 on a split, precise BatchNorm statistics).
Below the methods and the training loop, which both use it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from edgekd.errors import EdgeKDError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    channels_last: bool
    amp: bool
    torch_compile: bool = False

    @classmethod
    def from_recipe(cls, device: str, channels_last: bool, amp: bool, torch_compile: bool = False) -> Runtime:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise EdgeKDError("device: cuda was asked for but torch sees no CUDA device; use device: auto or cpu")
        return cls(torch.device(device), channels_last, amp, torch_compile)

    @classmethod
    def of(cls, recipe) -> Runtime:
        """The runtime a recipe asks for (its device, channels_last, amp and torch_compile)."""
        return cls.from_recipe(recipe.device, recipe.channels_last, recipe.amp, recipe.torch_compile)

    def place(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, runtime: Runtime) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) in eval mode."""
    model.eval()
    loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
    for images, labels, *_ in loader:  # Batches also yield the samples' indices
        images, labels = runtime.batch(images, labels)
        with runtime.autocast():
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").cpu()
        correct += (logits.argmax(1) == labels).sum().cpu()
        seen += len(labels)
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)


def recalibrate_batchnorm(model: nn.Module, loader: Iterable, runtime: Runtime) -> None:
    """Replace BatchNorm running statistics by their exact average over `loader` ("precise BN"), with
    torch's own `update_bn`; the images go in as training batches would (device, memory format), so
    `loader` should be shuffled as training batches are."""
    with runtime.autocast():
        update_bn((runtime.batch(images, labels)[0] for images, labels, *_ in loader), model)
    model.eval()
